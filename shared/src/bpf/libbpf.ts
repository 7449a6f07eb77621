// The libbpf API the rest of the agent uses: koffi bindings to the system libbpf.so.1, one module
// per concern under ./libbpf/ (native bindings and errors, objects, tc hooks, maps, test runs).
export { BpfError, type Pointer, setLibbpfLogSink, strerror, takeLibbpfLog } from './libbpf/native.ts';
export {
  closeObject,
  loadObject,
  type MapDescription,
  mapFd,
  objectMaps,
  objGet,
  objInfo,
  objPin,
  openObject,
  programFd,
  progId,
  setMapMaxEntries,
  setMapPinPath,
  setProgramAutoload,
} from './libbpf/objects.ts';
export { BPF_TC_EGRESS, BPF_TC_F_REPLACE, BPF_TC_INGRESS, tcAttach, tcDetach, tcHookCreate, tcQuery } from './libbpf/tc.ts';
export {
  BPF_ANY,
  BPF_NOEXIST,
  mapDelete,
  mapDeleteBatch,
  mapDeleteEach,
  mapDumpBatch,
  mapDumpPacked,
  mapCount,
  mapKeys,
  mapLookup,
  mapUpdate,
  mapUpdateBatch,
} from './libbpf/maps.ts';
export { progTestRun, type TestRunResult } from './libbpf/test-run.ts';
export {
  BPF_F_BEFORE,
  BPF_SK_LOOKUP,
  BPF_TCX_EGRESS,
  BPF_TCX_INGRESS,
  linkCreate,
  linkDetach,
  linkUpdate,
  tcxLinkInfo,
  tcxProgramIds,
  type TcxLinkInfo,
} from './libbpf/links.ts';
