// Measurement only (cross-node-prog-ab.ts, a cell spec ending in "+tcx"): what classic tc's dispatch
// (sch_handle_ingress/egress -> tcf_classify -> cls_bpf_classify) costs Membrane's programs against tcx
// links. Every tc program the agents attached in a node's netns is also linked with tcx on the same
// device and direction (the same loaded program, from its pin). tcx runs before classic tc, and a
// verdict other than TCX_NEXT skips classic tc, which Membrane's programs never return: the classic
// filters stay in place, unused, and the agents know nothing of the links. The links live as long as
// their fds, which close() closes.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { linkCreate, objGet } from '../../shared/src/bpf/libbpf.ts';
import { PROGRAM_PINS } from '../../shared/src/bpf/layout.ts';
import { openNetns, withNetns } from '../../shared/src/netns/index.ts';

const BPF_TCX_INGRESS = 46; // enum bpf_attach_type (libbpf 1.1 has no tcx API)
const BPF_TCX_EGRESS = 47;

interface TcEntry {
  devname: string;
  ifindex: number;
  kind: string; // "clsact/ingress" | "clsact/egress"
  name: string; // the program's name and id: "from_container:[42]"
}

/** Links each tc program attached in the netns with tcx; returns how to take the links down again. */
export function swapToTcx(nodes: { netnsPath: string; bpffsDir: string }[]): () => void {
  const fds: number[] = [];
  for (const n of nodes) {
    const out = execFileSync('nsenter', [`--net=${n.netnsPath}`, 'bpftool', 'net', 'show', '-j'], { encoding: 'utf8' });
    const ns = openNetns(n.netnsPath);
    try {
      for (const e of JSON.parse(out) as { tc?: TcEntry[] }[]) {
        for (const t of e.tc ?? []) {
          const pin = PROGRAM_PINS[t.name.split(':')[0] as keyof typeof PROGRAM_PINS]; // "from_container:[id]"
          if (!pin) continue;
          const prog = objGet(path.join(n.bpffsDir, pin));
          try {
            const type = t.kind.endsWith('ingress') ? BPF_TCX_INGRESS : BPF_TCX_EGRESS;
            // The ifindex is the netns's own: the link is made from inside it.
            fds.push(withNetns(ns, () => linkCreate(prog, t.ifindex, type, `tcx ${t.devname} ${t.kind}`)));
          } finally {
            fs.closeSync(prog);
          }
        }
      }
    } finally {
      ns.close();
    }
  }
  // None: the agents attach with tcx themselves (bpf/tcx.ts), so the cell runs as the plain one does.
  if (!fds.length) console.error('tcx-swap: no classic tc program of ours found (the agents attach with tcx): nothing swapped');
  return () => {
    for (const fd of fds.splice(0)) fs.closeSync(fd);
  };
}
