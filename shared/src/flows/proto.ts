// The gRPC services of the observer (Hubble's observer.Observer and the standard health service),
// built from the schema in schema.ts for grpc-js.
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { PROTO_FILES } from './protos.generated.ts';
import { buildRoot, camelCaseRoot } from './schema.ts';

/** Hubble's package and service names: the gRPC paths are /observer.Observer/GetFlows etc. */
export const OBSERVER_SERVICE = 'observer.Observer';
export const HEALTH_SERVICE = 'grpc.health.v1.Health';

/** lowerCamelCase fields, enums by name, 64-bit numbers as JS numbers, unset fields absent. */
export const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: false,
  longs: Number,
  enums: String,
  defaults: false,
  oneofs: false,
};

let cachedDef: protoLoader.PackageDefinition | undefined;

export function observerPackageDefinition(files = PROTO_FILES): protoLoader.PackageDefinition {
  if (files === PROTO_FILES && cachedDef) return cachedDef;
  const root = files === PROTO_FILES ? camelCaseRoot() : buildRoot(files, false);
  const def = protoLoader.fromJSON(root.toJSON(), LOADER_OPTIONS);
  if (files === PROTO_FILES) cachedDef = def;
  return def;
}

export type ServiceClientConstructor = grpc.ServiceClientConstructor;

function lookupService(name: string): ServiceClientConstructor {
  let node: unknown = grpc.loadPackageDefinition(observerPackageDefinition());
  for (const part of name.split('.')) node = (node as Record<string, unknown>)[part];
  return node as ServiceClientConstructor;
}

export function observerService(): { service: grpc.ServiceDefinition; Client: ServiceClientConstructor } {
  const Client = lookupService(OBSERVER_SERVICE);
  return { service: Client.service, Client };
}

export function healthService(): { service: grpc.ServiceDefinition; Client: ServiceClientConstructor } {
  const Client = lookupService(HEALTH_SERVICE);
  return { service: Client.service, Client };
}
