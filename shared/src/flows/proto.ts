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

/**
 * A service's methods read off its .proto text: their paths, stream flags and names are all grpc-js
 * needs to route calls and a client to name them. The messages' (de)serializers come from the
 * protobufjs reflection, built on their first use (or by warmObserverProto) rather than when the
 * service is registered: building it is the biggest single part of an agent start (bench:restore
 * --cpu-prof), and nothing needs it before a flows client calls.
 */
function lazyService(name: string): grpc.ServiceDefinition {
  const dot = name.lastIndexOf('.');
  const [pkg, svc] = [name.slice(0, dot), name.slice(dot + 1)];
  const text = Object.values(PROTO_FILES).find((f) => f.includes(`package ${pkg};`) && f.includes(`service ${svc} {`));
  if (!text) throw new Error(`no .proto declares service ${name}`);
  const body = text.slice(text.indexOf(`service ${svc} {`)).split('\n}')[0];
  const service: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  const full = () => observerPackageDefinition()[name] as unknown as grpc.ServiceDefinition;
  for (const m of body.matchAll(/^\s*rpc\s+(\w+)\s*\(\s*(stream\s+)?[\w.]+\s*\)\s*returns\s*\(\s*(stream\s+)?[\w.]+\s*\)/gm)) {
    const method = m[1];
    const real = () => full()[method];
    service[method] = {
      path: `/${name}/${method}`,
      requestStream: !!m[2],
      responseStream: !!m[3],
      originalName: method[0].toLowerCase() + method.slice(1),
      requestSerialize: (v: unknown) => real().requestSerialize(v),
      requestDeserialize: (b: Buffer) => real().requestDeserialize(b),
      responseSerialize: (v: unknown) => real().responseSerialize(v),
      responseDeserialize: (b: Buffer) => real().responseDeserialize(b),
    };
  }
  return service;
}

const clients = new Map<string, ServiceClientConstructor>();

function lookupService(name: string): ServiceClientConstructor {
  let Client = clients.get(name);
  if (!Client) clients.set(name, (Client = grpc.makeClientConstructor(lazyService(name), name)));
  return Client;
}

export function observerService(): { service: grpc.ServiceDefinition; Client: ServiceClientConstructor } {
  const Client = lookupService(OBSERVER_SERVICE);
  return { service: Client.service, Client };
}

export function healthService(): { service: grpc.ServiceDefinition; Client: ServiceClientConstructor } {
  const Client = lookupService(HEALTH_SERVICE);
  return { service: Client.service, Client };
}

/** Builds the reflection the services' (de)serializers use now (the agent: once its API serves). */
export function warmObserverProto(): void {
  observerPackageDefinition();
}
