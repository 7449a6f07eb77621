// The observer's protobuf schema (shared/proto: flow, relay, observer, grpc health) as protobufjs
// reflection, loaded offline. The bundled agent and CLI cannot read .proto files from the source
// tree at run time, so their text is embedded in protos.generated.ts; shared/test/flows-proto.test.ts
// fails when the two drift and rewrites the copy with UPDATE_PROTO=1.
//
// Two roots: one with lowerCamelCase field names (what grpc-js and our TS types use) and one with
// the proto names (what protobuf's JSON mapping and field masks use, and what Hubble prints).
import protobuf from 'protobufjs';
import { PROTO_FILES } from './protos.generated.ts';

const WELL_KNOWN = [
  'google/protobuf/any.proto',
  'google/protobuf/field_mask.proto',
  'google/protobuf/timestamp.proto',
  'google/protobuf/wrappers.proto',
];
/** Dependencies first: protobufjs resolves types across files once all are in the root. */
const ORDER = ['flow/flow.proto', 'relay/relay.proto', 'observer/observer.proto', 'health/health.proto'];

export function buildRoot(files: Record<string, string>, keepCase: boolean): protobuf.Root {
  const root = new protobuf.Root();
  for (const file of WELL_KNOWN) root.addJSON(protobuf.common.get(file)!.nested!);
  for (const name of ORDER) {
    const text = files[name];
    if (text === undefined) throw new Error(`proto file ${name} is missing`);
    protobuf.parse(text, root, { keepCase });
  }
  root.resolveAll();
  return root;
}

let camelRoot: protobuf.Root | undefined;
let protoRoot: protobuf.Root | undefined;

/** Field names in lowerCamelCase (ipVersion, sourcePort; IP, TCP, ID and Summary stay as written). */
export function camelCaseRoot(): protobuf.Root {
  return (camelRoot ??= buildRoot(PROTO_FILES, false));
}

/** Field names as in the .proto files (source_port, pod_name). */
export function protoNameRoot(): protobuf.Root {
  return (protoRoot ??= buildRoot(PROTO_FILES, true));
}

let dropNames: Record<number, string> | undefined;

/** Hubble's DropReason enum: number -> name. */
export function dropReasonNames(): Record<number, string> {
  return (dropNames ??= { ...camelCaseRoot().lookupEnum('flow.DropReason').valuesById });
}

/** Hubble's DropReason enum: name -> number (undefined for an unknown name). */
export function dropReasonCode(name: string): number | undefined {
  return camelCaseRoot().lookupEnum('flow.DropReason').values[name];
}
