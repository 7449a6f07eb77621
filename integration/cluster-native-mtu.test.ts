// A pod whose MTU is smaller than the cluster's (native routing over a jumbo-frame underlay: MTU 9000,
// --mtu 9000: pods get 9000 unless they ask for less): integration/lib/pod-mtu.ts says what is tested and why.
// from_underlay (bpf/underlay.c) hands what does not fit the pod to the stack once the pod's policy
// (and the underlay's anti-spoofing) admitted it.
import t from 'tap';
import { clusterForFile } from './lib/cluster-file.ts';
import { podMtuTests } from './lib/pod-mtu.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

podMtuTests(
  t,
  clusterForFile(t, { nodes: 2, underlayMtu: 9000, agentArgs: ['--routing-mode', 'native', '--mtu', '9000'] }),
  9000,
);
