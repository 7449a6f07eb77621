// The observer's gRPC definitions, built from shared/proto/observer.proto. The bundled agent and CLI
// (esbuild, dist/bin) cannot read the .proto from the source tree at run time, so its text is
// embedded in observer-proto.ts; shared/test/flows-proto.test.ts fails when the two drift and
// rewrites the copy with UPDATE_PROTO=1.
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import protobuf from 'protobufjs';
import { OBSERVER_PROTO } from './observer-proto.ts';

export const PACKAGE = 'membrane.observer.v1';

/** lowerCamelCase fields, enums by name, 64-bit numbers as JS numbers, unset fields absent. */
export const LOADER_OPTIONS: protoLoader.Options = { keepCase: false, longs: Number, enums: String, defaults: false, oneofs: false };

let cached: protoLoader.PackageDefinition | undefined;

export function observerPackageDefinition(text = OBSERVER_PROTO): protoLoader.PackageDefinition {
  if (cached && text === OBSERVER_PROTO) return cached;
  const root = new protobuf.Root();
  // Well-known types ship with protobufjs; add them before parsing so the imports resolve offline.
  for (const file of ['google/protobuf/timestamp.proto', 'google/protobuf/wrappers.proto']) {
    root.addJSON(protobuf.common.get(file)!.nested!);
  }
  protobuf.parse(text, root, { keepCase: false }); // fields in lowerCamelCase, as types.ts has them
  const def = protoLoader.fromJSON(root.toJSON(), LOADER_OPTIONS);
  if (text === OBSERVER_PROTO) cached = def;
  return def;
}

export type ObserverClientConstructor = grpc.ServiceClientConstructor;

export function observerService(): { service: grpc.ServiceDefinition; Client: ObserverClientConstructor } {
  const pkg = grpc.loadPackageDefinition(observerPackageDefinition()) as unknown as Record<string, Record<string, Record<string, Record<string, ObserverClientConstructor>>>>;
  const Client = pkg.membrane.observer.v1.Observer;
  return { service: Client.service, Client };
}
