// A pod whose MTU is smaller than the overlay's (tunnel mode over a jumbo-frame underlay: MTU 9000,
// pods get 8950 unless they ask for less): integration/lib/pod-mtu.ts says what is tested and why. The
// short-cut (bpf/vxlan_rx.c) leaves what does not fit the pod to the tunnel device, whose from_tunnel
// hands it to the stack once the pod's policy admitted it.
import t from 'tap';
import { clusterForFile } from './lib/cluster-file.ts';
import { podMtuTests } from './lib/pod-mtu.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

podMtuTests(t, clusterForFile(t, { nodes: 2, underlayMtu: 9000 }), 8950);
