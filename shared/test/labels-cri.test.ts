// The CRI label source against a fake CRI runtime service (grpc-js on a unix socket): a sandbox the
// runtime does not know yet is asked for until it answers, its labels become k8s: labels (protected
// keys dropped), and a label change on a running pod is reported by the next poll.
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { CRI_PROTO } from '../src/labels/cri-proto.ts';
import { CriLabels } from '../src/labels/cri.ts';
import type { LabelSink, RuntimeLabels } from '../src/labels/resolver.ts';
import type { Endpoint } from '../src/types.ts';
import { pollUntil } from './lib/poll.ts';

const log = { info: () => undefined, warn: () => undefined, debug: () => undefined };

t.test('a pod sandbox is asked for until it exists; its labels follow the runtime', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbr-labels-cri-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const socket = path.join(dir, 'cri.sock');
  const sandboxes = new Map<string, { labels: Record<string, string>; annotations: Record<string, string> }>();
  let statusCalls = 0;
  const def = protoLoader.fromJSON(CRI_PROTO as unknown as Parameters<typeof protoLoader.fromJSON>[0], {});
  const pkg = grpc.loadPackageDefinition(def) as unknown as {
    runtime: { v1: { RuntimeService: grpc.ServiceClientConstructor } };
  };
  const server = new grpc.Server();
  server.addService(pkg.runtime.v1.RuntimeService.service, {
    PodSandboxStatus: (call: grpc.ServerUnaryCall<{ podSandboxId: string }, unknown>, cb: grpc.sendUnaryData<unknown>) => {
      statusCalls++;
      const sb = sandboxes.get(call.request.podSandboxId);
      if (!sb) {
        cb({
          code: grpc.status.NOT_FOUND,
          details: `an error occurred when try to find sandbox "${call.request.podSandboxId}": not found`,
        });
        return;
      }
      cb(null, {
        status: { id: call.request.podSandboxId, state: 'SANDBOX_READY', labels: sb.labels, annotations: sb.annotations },
      });
    },
    ListPodSandbox: (_call: unknown, cb: grpc.sendUnaryData<unknown>) => {
      cb(null, {
        items: [...sandboxes].map(([id, sb]) => ({ id, state: 'SANDBOX_READY', labels: sb.labels, annotations: sb.annotations })),
      });
    },
  });
  await new Promise<void>((resolve, reject) =>
    server.bindAsync(`unix://${socket}`, grpc.ServerCredentials.createInsecure(), (e) => (e ? reject(e) : resolve())),
  );
  t.teardown(() => server.forceShutdown());

  const src = new CriLabels({ socket, log, pollMs: 200 });
  t.teardown(() => src.close());
  const metadata = {
    'k8s:io.kubernetes.pod.namespace': 'shop',
    'k8s:io.kubernetes.pod.name': 'web-0',
    'k8s:io.kubernetes.pod.infra-container-id': 'sb1',
  };
  t.ok(src.owns({ metadata }), 'a kubelet pod, and the runtime socket is there');
  t.notOk(src.owns({ metadata: { 'cni:plugin': 'membrane-cni' } }), 'not a pod: no K8S_POD_* args');
  t.notOk(new CriLabels({ socket: path.join(dir, 'absent.sock'), log }).owns({ metadata }), 'no runtime socket: nothing to ask');

  const found: RuntimeLabels[] = [];
  const sink: LabelSink = {
    found: async (u) => {
      found.push(u);
    },
    expired: async () => undefined,
  };
  const ep = {
    containerId: 'sb1',
    ifName: 'eth0',
    metadata,
    labels: { 'k8s:io.kubernetes.pod.namespace': 'shop' },
    labelsPending: { source: 'cri', since: new Date().toISOString() },
  } as unknown as Endpoint;
  src.watch(ep, sink);
  t.ok(await pollUntil(() => statusCalls >= 2), 'asked while the runtime does not know the sandbox yet');
  t.equal(found.length, 0);
  sandboxes.set('sb1', {
    labels: {
      app: 'web',
      'io.kubernetes.pod.name': 'web-0',
      'io.kubernetes.pod.namespace': 'prod',
      'io.cilium.k8s.policy.serviceaccount': 'admin',
    },
    annotations: {},
  });
  t.ok(await pollUntil(() => found.length === 1), 'reported once the sandbox exists');
  t.same(
    found[0],
    { attachment: 'sb1', ifName: 'eth0', source: 'k8s', labels: { 'k8s:app': 'web', 'k8s:io.kubernetes.pod.name': 'web-0' } },
    'pod labels as k8s: labels; a namespace or service account claimed by a pod label is dropped',
  );
  const calls = statusCalls;
  await new Promise((r) => setTimeout(r, 300));
  t.equal(statusCalls, calls, 'no more status calls once found');
  t.equal(found.length, 1, 'an unchanged pod is not reported again');

  sandboxes.get('sb1')!.labels.app = 'web2';
  t.ok(await pollUntil(() => found.length === 2), 'a label change the runtime reports is noticed by the poll');
  t.equal(found[1].labels['k8s:app'], 'web2');
  src.forget(ep);
  sandboxes.get('sb1')!.labels.app = 'web3';
  await new Promise((r) => setTimeout(r, 400));
  t.equal(found.length, 2, 'a forgotten pod is not followed');
  t.match(src.status(), { pods: 0, found: 1, changes: 1 });
});
