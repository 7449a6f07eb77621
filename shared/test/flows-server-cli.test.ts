// The `membrane observe` CLI end to end against an observer without a kernel (the setup:
// lib/observer-file.ts): compact, json, table, dict output, status, nodes, raw filters, errors,
// hubble observe's filter and format flags, and --follow until interrupted.
import t from 'tap';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { EventType } from '../src/flows/event.ts';
import { observerForFile, REPO, waitFor } from './lib/observer-file.ts';

const o = observerForFile(t);
const { ring, dir, socket, push, dropFlow, run, cli, env } = o;

t.test('membrane observe: compact drop lines, json, table, status, errors', async (t) => {
  dropFlow(3003);
  dropFlow(3004); // the two newest drops, whatever else the ring holds
  const drops = await run(['observe', '--observer-socket', socket, '--verdict', 'DROPPED', '--last', '2', '--utc']);
  t.equal(drops.status, 0, drops.stderr);
  const lines = drops.stdout.trim().split('\n');
  t.equal(lines.length, 2);
  t.match(
    lines[1],
    /^\w{3} [ \d]\d \d\d:\d\d:\d\d\.\d{3}: 10\.2\.0\.2:3004 \(ID:0\) -> 10\.2\.0\.3:5432 \(ID:0\) Policy denied by denylist DROPPED \(TCP; denied by policy deny-legacy \(ingress deny rule 1\)\)$/,
  );
  const json = await run([
    'observe',
    '--observer-socket',
    socket,
    '--type',
    'trace',
    '--to-port',
    '80',
    '--last',
    '3',
    '-o',
    'json',
  ]);
  const objs = json.stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  t.equal(objs.length, 3);
  t.ok(
    objs.every(
      (o) =>
        o.flow.event_type.type === 4 &&
        o.flow.membrane.event === 'FLOW_NEW' &&
        o.flow.l4.TCP.destination_port === 80 &&
        /Z$/.test(o.flow.time),
    ),
  );
  const table = await run(['observe', '--observer-socket', socket, '--last', '1', '-o', 'table']);
  t.match(table.stdout, /^TIMESTAMP +SOURCE +DESTINATION +TYPE +VERDICT +SUMMARY\n/);
  const st = await run(['observe', 'status', '--observer-socket', socket, '-o', 'json']);
  t.equal(JSON.parse(st.stdout).membrane.nodeName, 'node-t');
  const text = await run(['observe', 'status', '--observer-socket', socket]);
  t.match(text.stdout, /^Healthcheck \(via unix:.*\): Ok\nCurrent\/Max Flows: [\d,]+\/1,000 \([\d.]+%\)\nFlows\/s: [\d.]+\n/);
  const nodes = await run(['observe', 'nodes', '--observer-socket', socket]);
  t.match(nodes.stdout, /^NAME +STATUS +AGE +FLOWS\/S +CURRENT\/MAX-FLOWS\nnode-t +Connected +\S+ +N\/A +[\d,]+\/1,000\n$/);
  const raw = await run(['observe', '--print-raw-filters', '--ip', '10.0.0.1', '--not', '--type', 'drop']);
  t.same(JSON.parse(raw.stdout), {
    allowlist: [{ sourceIp: ['10.0.0.1'] }, { destinationIp: ['10.0.0.1'] }],
    denylist: [{ eventType: [{ type: 1 }] }],
  });
  const refused = await run(['observe', '--observer-socket', socket, '--service', 'web']);
  t.equal(refused.status, 1);
  t.match(refused.stderr, /source_service: cannot be applied: Membrane has no service load-balancing/);
  const bad = await run(['observe', '--observer-socket', socket, '--from-ip', 'nope']);
  t.equal(bad.status, 1);
  t.match(bad.stderr, /source_ip: "nope" is not an IP address/);
  const gone = await run(['observe', '--observer-socket', path.join(dir, 'missing.sock')]);
  t.equal(gone.status, 1);
  t.match(gone.stderr, /cannot reach the flow observer at unix:.*missing\.sock[\s\S]*hint:/);
});

t.test("membrane observe: hubble observe's filter and format flags, end to end", async (t) => {
  // Three distinct flows: IPv6 UDP egress from endpoint 9 (namespace shop), an IPv4 TCP SYN+ACK ingress
  // to it from identity 2 (world), and a drop.
  push({
    type: EventType.FLOW_NEW,
    family: 6,
    saddr: 'fd00::9',
    daddr: 'fd00::1',
    proto: 17,
    sport: 6001,
    dport: 53,
    endpointId: 9,
    direction: 1,
    srcIdentity: 300,
  });
  push({
    type: EventType.FLOW_NEW,
    saddr: '198.18.0.5',
    daddr: '10.2.0.9',
    sport: 6002,
    dport: 443,
    tcpFlags: 0x12,
    endpointId: 9,
    direction: 0,
    srcIdentity: 2,
    dstIdentity: 300,
  });
  dropFlow(6003);
  const sportsOf = async (...args: string[]) => {
    const r = await run(['observe', '--observer-socket', socket, '--last', '50', '-o', 'jsonpb', ...args]);
    if (r.status !== 0) return [r.stderr];
    return r.stdout
      .trim()
      .split('\n')
      .filter(Boolean)
      .map((l) => {
        const f = JSON.parse(l).flow;
        return (f.l4.TCP ?? f.l4.UDP).source_port as number;
      })
      .filter((p) => p >= 6001 && p <= 6003);
  };
  t.same(await sportsOf('-6'), [6001], '-6');
  t.same(await sportsOf('-4', '--from-identity', 'world'), [6002], '-4 --from-identity world');
  t.same(
    await sportsOf('--identity', '300', '--traffic-direction', 'egress'),
    [6001],
    '--identity (either end) --traffic-direction',
  );
  t.same(await sportsOf('--tcp-flags', 'syn,ack'), [6002], '--tcp-flags');
  t.same(await sportsOf('-n', 'shop'), [6001, 6002], '-n: either end in the namespace');
  t.same(await sportsOf('--from-namespace', 'shop'), [6001], '--from-namespace');
  t.same(await sportsOf('--to-namespace', 'shop'), [6002], '--to-namespace');
  t.same(await sportsOf('--node-name', 'node-*', '--not', '--protocol', 'tcp'), [6001], '--node-name, --not');
  t.same(await sportsOf('--drop-reason-desc', 'POLICY_DENY'), [6003], '--drop-reason-desc');
  t.same(await sportsOf('-t', 'drop'), [6003], '-t drop');
  t.same(await sportsOf('-t', 'trace:from-endpoint'), [6001], '-t trace:from-endpoint');
  t.same(await sportsOf('--node-name', 'other-*'), [], 'another node: nothing');
  const dict = await run(['observe', '--observer-socket', socket, '--last', '1', '-o', 'dict', '--print-node-name']);
  t.match(dict.stdout, /^ {2}TIMESTAMP: .+\n {7}NODE: node-t\n {5}SOURCE: 10\.2\.0\.2:6003\n/);
  const compact = await run(['observe', '--observer-socket', socket, '--last', '1', '--print-node-name', '--print-policy-names']);
  t.match(compact.stdout, /^\w{3} [ \d]\d [\d:.]+ \[node-t\]: 10\.2\.0\.2:6003 /);
  const ns = await run(['observe', 'namespaces', '--observer-socket', socket, '-o', 'json']);
  t.same(JSON.parse(ns.stdout), [{ namespace: 'shop' }]);
});

t.test('membrane observe --follow streams until interrupted', async (t) => {
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', ...cli(['observe', '--observer-socket', socket, '-f', '--protocol', 'tcp', '--to-port', '9999'])],
    { cwd: REPO, env: env() },
  );
  let out = '';
  child.stdout.on('data', (d) => {
    out += d;
  });
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  await waitFor(() => ring.followers === 1, 20_000);
  push({ type: EventType.FLOW_NEW, sport: 7777, dport: 9999 });
  push({ type: EventType.FLOW_NEW, sport: 7778, dport: 80 });
  await waitFor(() => out.includes(':7777'));
  child.kill('SIGINT');
  t.equal(await exited, 0);
  t.equal(out.trim().split('\n').length, 1, 'only the matching flow');
});
