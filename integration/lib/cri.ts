// A minimal CRI v1 client (the kubelet's side of the kubelet path) over @grpc/grpc-js, from cri.proto.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

const PROTO = path.join(path.dirname(fileURLToPath(import.meta.url)), 'cri.proto');

export interface PodSpec {
  name: string;
  uid: string;
  namespace: string;
  logDirectory: string;
  annotations?: Record<string, string>;
  labels?: Record<string, string>;
  portMappings?: { protocol: 'TCP' | 'UDP'; container_port: number; host_port: number; host_ip?: string }[];
}

export interface SandboxStatus {
  id: string;
  state: 'SANDBOX_READY' | 'SANDBOX_NOTREADY';
  ip: string;
  /** The pod netns path, from the verbose info (runtimeSpec.linux.namespaces). */
  netns?: string;
  info: Record<string, unknown>;
}

type Rpc = (req: object, opts: { deadline: Date }, cb: (err: grpc.ServiceError | null, res: any) => void) => void;

export class CriClient {
  private readonly rt: grpc.Client & Record<string, Rpc>;
  private readonly im: grpc.Client & Record<string, Rpc>;

  constructor(
    socket: string,
    private readonly deadlineMs = 60_000,
  ) {
    const def = protoLoader.loadSync(PROTO, { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true });
    const pkg = grpc.loadPackageDefinition(def) as any;
    const target = `unix://${socket}`;
    this.rt = new pkg.runtime.v1.RuntimeService(target, grpc.credentials.createInsecure());
    this.im = new pkg.runtime.v1.ImageService(target, grpc.credentials.createInsecure());
  }

  call<T = any>(service: 'rt' | 'im', rpc: string, req: object): Promise<T> {
    const client = service === 'rt' ? this.rt : this.im;
    return new Promise((resolve, reject) => {
      client[rpc].call(client, req, { deadline: new Date(Date.now() + this.deadlineMs) }, (err, res) => {
        if (err) reject(Object.assign(new Error(`CRI ${rpc}: ${err.details || err.message}`), { grpcCode: err.code }));
        else resolve(res as T);
      });
    });
  }

  version() {
    return this.call<{ runtime_name: string; runtime_version: string }>('rt', 'Version', { version: 'v1' });
  }

  async conditions(): Promise<Record<string, boolean>> {
    const r = await this.call<{ status: { conditions: { type: string; status: boolean }[] } }>('rt', 'Status', {
      verbose: false,
    });
    return Object.fromEntries(r.status.conditions.map((c) => [c.type, c.status]));
  }

  async images(): Promise<string[]> {
    const r = await this.call<{ images: { repo_tags: string[] }[] }>('im', 'ListImages', {});
    return r.images.flatMap((i) => i.repo_tags);
  }

  async runPodSandbox(p: PodSpec): Promise<string> {
    const config = {
      metadata: { name: p.name, uid: p.uid, namespace: p.namespace, attempt: 0 },
      hostname: p.name,
      log_directory: p.logDirectory,
      labels: p.labels ?? {},
      annotations: p.annotations ?? {},
      port_mappings: p.portMappings ?? [],
      linux: { security_context: { namespace_options: { network: 'POD', pid: 'CONTAINER', ipc: 'POD' } } },
    };
    const r = await this.call<{ pod_sandbox_id: string }>('rt', 'RunPodSandbox', { config, runtime_handler: '' });
    return r.pod_sandbox_id;
  }

  async status(id: string): Promise<SandboxStatus> {
    const r = await this.call<any>('rt', 'PodSandboxStatus', { pod_sandbox_id: id, verbose: true });
    let info: Record<string, unknown> = {};
    try {
      info = JSON.parse(r.info?.info ?? '{}');
    } catch {
      /* older layout */
    }
    const nss = (info as any).runtimeSpec?.linux?.namespaces as { type: string; path?: string }[] | undefined;
    return {
      id,
      state: r.status.state,
      ip: r.status.network?.ip ?? '',
      netns: nss?.find((n) => n.type === 'network')?.path,
      info,
    };
  }

  stopPodSandbox(id: string) {
    return this.call('rt', 'StopPodSandbox', { pod_sandbox_id: id });
  }
  removePodSandbox(id: string) {
    return this.call('rt', 'RemovePodSandbox', { pod_sandbox_id: id });
  }

  async listPodSandbox(): Promise<{ id: string; state: string }[]> {
    return (await this.call<{ items: { id: string; state: string }[] }>('rt', 'ListPodSandbox', {})).items;
  }

  close(): void {
    this.rt.close();
    this.im.close();
  }
}
