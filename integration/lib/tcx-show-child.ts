// Run inside a netns (nsenter) or not. bpftool 7.1 (libbpf 1.1) does not list tcx programs, so the
// tests and benchmarks ask the kernel (bpf_prog_query):
//   DEVICE DIR   the programs on DEVICE's tcx hook DIR (ingress | egress): `tcx <name> id <id>` lines
//   --ids        the ids of every tcx program on every link of the netns, as a JSON array
import { execFileSync } from 'node:child_process';
import * as bpf from '../../shared/src/bpf/libbpf.ts';
import { openNetlink } from '../../shared/src/netlink/index.ts';

const [dev, dir] = process.argv.slice(2);
const host = openNetlink();
const ids = (index: number, type: number) => bpf.tcxProgramIds(index, type, `tcx ifindex ${index}`);
if (dev === '--ids') {
  const all = new Set<number>();
  for (const l of host.linkList())
    for (const type of [bpf.BPF_TCX_INGRESS, bpf.BPF_TCX_EGRESS]) for (const id of ids(l.index, type)) all.add(id);
  process.stdout.write(JSON.stringify([...all]));
} else {
  const link = host.linkByName(dev);
  for (const id of link ? ids(link.index, dir === 'egress' ? bpf.BPF_TCX_EGRESS : bpf.BPF_TCX_INGRESS) : []) {
    const info = JSON.parse(execFileSync('bpftool', ['-j', 'prog', 'show', 'id', String(id)], { encoding: 'utf8' })) as {
      name: string;
    };
    process.stdout.write(`tcx ${info.name} id ${id}\n`);
  }
}
host.close();
