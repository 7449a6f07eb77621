// What the runtime told us about the attachment (CNI_ARGS, runtimeConfig, args.cni) turned into the
// agent's EndpointRequest: labels, metadata, requested addresses and MAC. Case-insensitive runtimeConfig
// keys: containerd sends Go field names (HostPort, IngressRate), podman and Multus lower camel case.
import type { EndpointRequest } from '../../shared/src/types.ts';
import type { NetConf } from './config.ts';
import type { CniEnv } from './env.ts';
import { addressOnly } from '../../shared/src/net/index.ts';

/** Label and metadata keys (documented in the README). */
export const K = {
  namespace: 'k8s:io.kubernetes.pod.namespace',
  podName: 'k8s:io.kubernetes.pod.name',
  podUid: 'k8s:io.kubernetes.pod.uid',
  infraId: 'k8s:io.kubernetes.pod.infra-container-id',
  network: 'cni:network',
  plugin: 'cni:plugin',
  portMappings: 'cni:port-mappings',
  bandwidth: 'cni:bandwidth',
} as const;

export interface PortMapping {
  hostPort: number;
  containerPort: number;
  protocol: string;
  hostIP?: string;
}
export interface Bandwidth {
  ingressRate?: number;
  ingressBurst?: number;
  egressRate?: number;
  egressBurst?: number;
}

export interface RuntimeOptions {
  ips: string[];
  mac?: string;
  portMappings: PortMapping[];
  bandwidth?: Bandwidth;
}

/** Looks a key up ignoring case. */
export function getCI(o: unknown, key: string): unknown {
  if (!o || typeof o !== 'object') return undefined;
  const want = key.toLowerCase();
  for (const [k, v] of Object.entries(o)) if (k.toLowerCase() === want) return v;
  return undefined;
}

export function readRuntimeOptions(conf: NetConf, env: CniEnv): RuntimeOptions {
  const rc = conf.runtimeConfig ?? {};
  const cniArgs = getCI(conf.args, 'cni');
  const strings = (v: unknown): string[] => (Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : []);
  // precedence: runtimeConfig (capabilities) > args.cni (CONVENTIONS) > CNI_ARGS (podman's IP=/MAC=)
  let ips = strings(getCI(rc, 'ips'));
  if (!ips.length) ips = strings(getCI(cniArgs, 'ips'));
  if (!ips.length && env.args.IP) ips = env.args.IP.split(',');
  const mac = str(getCI(rc, 'mac')) ?? str(getCI(cniArgs, 'mac')) ?? env.args.MAC ?? undefined;
  const pm = getCI(rc, 'portMappings');
  const portMappings = Array.isArray(pm) ? pm.map(readPortMapping).filter((p): p is PortMapping => p !== undefined) : [];
  const bw = getCI(rc, 'bandwidth');
  const bandwidth =
    bw && typeof bw === 'object'
      ? compactNums({
          ingressRate: num(getCI(bw, 'ingressRate')),
          ingressBurst: num(getCI(bw, 'ingressBurst')),
          egressRate: num(getCI(bw, 'egressRate')),
          egressBurst: num(getCI(bw, 'egressBurst')),
        })
      : undefined;
  return {
    ips: ips.map((s) => addressOnly(s.trim())).filter(Boolean),
    mac: mac || undefined,
    portMappings,
    ...(bandwidth ? { bandwidth } : {}),
  };
}

function readPortMapping(p: unknown): PortMapping | undefined {
  const hostPort = num(getCI(p, 'hostPort'));
  const containerPort = num(getCI(p, 'containerPort'));
  if (hostPort === undefined || containerPort === undefined) return undefined;
  const hostIP = str(getCI(p, 'hostIP'));
  return { hostPort, containerPort, protocol: (str(getCI(p, 'protocol')) ?? 'tcp').toLowerCase(), ...(hostIP ? { hostIP } : {}) };
}

/** The caller's labels (the network config's "labels", args.cni.labels): the agent files them under
 *  the cni: source and refuses the ones a caller may not set (reserved:*, the namespace, ...). */
export function labelsFor(conf: NetConf, _env: CniEnv): Record<string, string> {
  const labels: Record<string, string> = { ...(conf.labels ?? {}) };
  const cniArgs = getCI(conf.args, 'cni');
  const argLabels = getCI(cniArgs, 'labels');
  if (Array.isArray(argLabels)) {
    for (const l of argLabels) {
      const key = str(getCI(l, 'key'));
      const value = str(getCI(l, 'value'));
      if (key && value !== undefined) labels[key] = value;
    }
  }
  // The pod namespace is not a caller label: the agent derives k8s:io.kubernetes.pod.namespace from
  // the metadata below (CNI_ARGS K8S_POD_NAMESPACE) and refuses a label that claims it.
  return labels;
}

export function metadataFor(conf: NetConf, env: CniEnv, rt: RuntimeOptions): Record<string, string> {
  const md: Record<string, string> = { [K.network]: conf.name, [K.plugin]: 'membrane-cni' };
  const a = env.args;
  if (a.K8S_POD_NAMESPACE) md[K.namespace] = a.K8S_POD_NAMESPACE;
  if (a.K8S_POD_NAME) md[K.podName] = a.K8S_POD_NAME;
  if (a.K8S_POD_UID) md[K.podUid] = a.K8S_POD_UID;
  if (a.K8S_POD_INFRA_CONTAINER_ID) md[K.infraId] = a.K8S_POD_INFRA_CONTAINER_ID;
  if (rt.portMappings.length) md[K.portMappings] = JSON.stringify(rt.portMappings);
  if (rt.bandwidth) md[K.bandwidth] = JSON.stringify(rt.bandwidth);
  return md;
}

/** The agent request for this ADD; `ipamIps` are addresses a delegated IPAM plugin already allocated. */
export function endpointRequest(conf: NetConf, env: CniEnv, ipamIps?: string[]): EndpointRequest {
  const rt = readRuntimeOptions(conf, env);
  const req: EndpointRequest = {
    containerId: env.containerId,
    netns: env.netns,
    ifName: env.ifName,
    labels: labelsFor(conf, env),
    metadata: metadataFor(conf, env, rt),
  };
  if (conf.network) req.network = conf.network;
  if (conf.mtu) req.mtu = conf.mtu;
  const mac = rt.mac ?? (typeof conf.mac === 'string' ? conf.mac : undefined);
  if (mac) req.mac = mac;
  if (ipamIps) {
    req.ips = ipamIps;
    req.externalIpam = true;
  } else if (rt.ips.length) {
    req.ips = rt.ips;
  }
  return req;
}

function str(v: unknown): string | undefined {
  return typeof v === 'string' ? v : undefined;
}

function num(v: unknown): number | undefined {
  return typeof v === 'number' && Number.isFinite(v) ? v : undefined;
}

function compactNums(b: Bandwidth): Bandwidth | undefined {
  const out: Bandwidth = {};
  for (const [k, v] of Object.entries(b)) if (v !== undefined) out[k as keyof Bandwidth] = v;
  return Object.keys(out).length ? out : undefined;
}
