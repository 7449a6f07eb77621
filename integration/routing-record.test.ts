// The single-node start's cleanup of an earlier cluster run (shared/src/routing/record.ts) removes only
// what is provably that run's, in a netns of our own: a VXLAN device named by the record but without
// our from_tunnel on it (a record someone edited, a device of that name someone else made) stays, as do
// an admin's route and another program at our tc handle on the device holding the recorded address;
// our own device, routes and from_underlay go, and a second start
// (the record gone, or the cleanup repeated after a crash) removes nothing more.
import { tcFilters } from './lib/inspect.ts';
import t from 'tap';
import { execFileSync } from 'node:child_process';
import type { Test } from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { bpfHarness, requireBpf } from '../shared/test/lib/bpf-harness.ts';
import { randomId } from './lib/agent.ts';
import { createNetns, type TestNetns } from './lib/netns.ts';

requireBpf();

const h = bpfHarness();
const CHILD = path.join(import.meta.dirname, 'lib/routing-record-child.ts');
const RTPROT_MEMBRANE_CLUSTER = '196';

function inNs(ns: TestNetns, args: string[]): string {
  return execFileSync('nsenter', [`--net=${ns.path}`, ...args], { encoding: 'utf8' });
}
const child = (ns: TestNetns, ...args: string[]) => inNs(ns, [process.execPath, '--import', 'tsx', CHILD, ...args]);

function setup(t: Test) {
  const ns = createNetns('mbr');
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbr-record-'));
  t.teardown(() => {
    ns.remove();
    fs.rmSync(stateDir, { recursive: true, force: true });
  });
  const device = `mbrvx${randomId(2)}`;
  inNs(ns, ['ip', 'link', 'add', 'name', 'ul0', 'type', 'veth', 'peer', 'name', 'ul1']);
  inNs(ns, ['ip', 'addr', 'add', '198.18.77.1/24', 'dev', 'ul0']);
  inNs(ns, ['ip', 'link', 'set', 'ul0', 'up']);
  inNs(ns, ['ip', 'link', 'add', 'name', device, 'type', 'vxlan', 'external', 'dstport', '8472']);
  inNs(ns, ['ip', 'link', 'set', device, 'up']);
  fs.writeFileSync(path.join(stateDir, 'cluster-routing.json'), JSON.stringify({ tunnelDevice: device, nodeIp: '198.18.77.1' }));
  const linkThere = () => inNs(ns, ['ip', '-o', 'link', 'show']).includes(`${device}:`);
  const routes = () => inNs(ns, ['ip', '-4', 'route', 'show']);
  return { ns, stateDir, device, linkThere, routes };
}

t.test('a tunnel device the record names but our programs are not on stays', async (t) => {
  const s = setup(t);
  inNs(s.ns, ['ip', 'route', 'add', '198.18.78.0/24', 'dev', s.device, 'proto', 'static']);
  // Another program at our handle on the device holding the recorded address: not our from_underlay.
  child(s.ns, 'attach', h.pinDir, 'ul0', 'prog_to_container');
  const removed = JSON.parse(child(s.ns, 'single', s.stateDir, h.pinDir)) as string[];
  t.same(removed, [], 'nothing removed');
  t.ok(s.linkThere(), `the collect-metadata VXLAN device ${s.device} stays`);
  t.match(s.routes(), /198\.18\.78\.0\/24/, "the admin's route through it stays");
  t.match(tcFilters('ul0', 'ingress', s.ns.path), /to_container/, 'the other program on ul0 stays');
  t.notOk(fs.existsSync(path.join(s.stateDir, 'cluster-routing.json')), 'the record is gone');
});

t.test('our own device (our from_tunnel on it) and routes go; a repeated start removes nothing more', async (t) => {
  const s = setup(t);
  child(s.ns, 'attach', h.pinDir, s.device);
  child(s.ns, 'attach', h.pinDir, 'ul0', 'prog_from_underlay');
  inNs(s.ns, ['ip', 'route', 'add', '10.203.7.0/24', 'dev', s.device, 'proto', RTPROT_MEMBRANE_CLUSTER]);
  inNs(s.ns, ['ip', 'route', 'add', '198.18.79.0/24', 'dev', 'ul0', 'proto', 'static']);
  const record = fs.readFileSync(path.join(s.stateDir, 'cluster-routing.json'));
  const tunnelIndex = (JSON.parse(inNs(s.ns, ['ip', '-j', 'link', 'show', s.device])) as { ifindex: number }[])[0].ifindex;
  const tunnelPin = path.join(h.pinDir, `link_tcx_${tunnelIndex}_ingress`);
  t.ok(fs.existsSync(tunnelPin), 'from_tunnel is linked through a pin');
  const removed = JSON.parse(child(s.ns, 'single', s.stateDir, h.pinDir)) as string[];
  t.same(
    removed.sort(),
    [`link ${s.device}`, 'route 10.203.7.0/24', 'from_underlay on ul0 ingress'].sort(),
    'the device, our route and from_underlay',
  );
  t.notMatch(tcFilters('ul0', 'ingress', s.ns.path), /from_underlay/, 'from_underlay is off ul0');
  t.notOk(s.linkThere(), 'the device is gone');
  t.notOk(fs.existsSync(tunnelPin), "and its link's pin (the kernel detached the link with the device)");
  t.match(s.routes(), /198\.18\.79\.0\/24/, "the admin's route stays");
  // A crash after the removal but before the record went: the next start does it again, harmlessly.
  fs.writeFileSync(path.join(s.stateDir, 'cluster-routing.json'), record);
  t.same(JSON.parse(child(s.ns, 'single', s.stateDir, h.pinDir)), [], 'repeated: nothing left to remove');
});
