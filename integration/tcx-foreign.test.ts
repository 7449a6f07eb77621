// Another tool's tcx program that passes every packet (TCX_PASS ends a tcx chain) sits on the pods'
// host veths before the agent attaches there: the agent's links go to the head of each chain, so
// policy still decides (denied dropped, allowed through), also after another restart. A program a tool
// inserts ahead of ours later is reported: membrane_tcx_hooks_behind_foreign, a warning at start, and
// membrane status (the device, the hook and the program ids ahead; -o json too).
import fs from 'node:fs';
import t from 'tap';
import { ip4, restoreVerified, startAgent, type TestAgent } from './lib/agent.ts';
import { membrane } from './lib/cli.ts';
import { scrapeMetrics } from './lib/metrics.ts';
import type { TestNetns } from './lib/netns.ts';
import { clientWebOther, WEB_FROM_CLIENT as POLICY } from './lib/three-pods.ts';
import { probe } from './lib/probe.ts';
import { killAll, startEchoServer } from './lib/tcp.ts';
import { sampleValue } from '../shared/src/metrics/parse.ts';
import { PolicyClient } from '../shared/src/policy/client.ts';
import { tcxAhead, tcxPinPath } from '../shared/src/bpf/tcx.ts';
import type { AgentStatus } from '../shared/src/types.ts';
import { foreignPassProgram, linkForeign, type ForeignProgram } from '../shared/test/lib/foreign-tcx.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const PORT = 8080;
const DIRECTIONS = ['ingress', 'egress'] as const;

let agent: TestAgent | undefined;
const nss: TestNetns[] = [];
const children: { kill(sig?: NodeJS.Signals): boolean; exitCode: number | null }[] = [];
const links: number[] = [];
const programs: ForeignProgram[] = [];

t.teardown(async () => {
  killAll(children as never[]);
  for (const fd of links) fs.closeSync(fd); // detaches the other tool's links
  for (const p of programs) p.close();
  await agent?.cleanup();
  for (const ns of nss) ns.remove();
});

t.test("policy holds with another tool's passing program attached first on the host veths", async (t) => {
  const a = await startAgent();
  agent = a;
  const pc = new PolicyClient(a.client);
  const pods = await clientWebOther(a.client, 'tcxf', nss);
  children.push(await startEchoServer(pods.web.ns, PORT, '0.0.0.0'));
  await pc.import(POLICY);
  const web = ip4(pods.web.ep);
  const check = async (what: string) => {
    t.equal(await probe(pods.client.ns, web, PORT, 5000), 'ok', `${what}: allowed passes`);
    t.equal(await probe(pods.other.ns, web, PORT, 700), 'timeout', `${what}: denied is dropped`);
  };
  await check('before');

  // The agent down, its links gone (pins removed with no fd left: detached), and the other tool's
  // program on every hook of the three host veths: the state a node is in when a tool was first.
  await a.kill9();
  const foreign = foreignPassProgram();
  programs.push(foreign);
  for (const { ep } of Object.values(pods))
    for (const direction of DIRECTIONS) {
      fs.rmSync(tcxPinPath(a.bpffsDir, { ifindex: ep.hostIfIndex, direction }));
      links.push(linkForeign(foreign, ep.hostIfIndex, direction));
    }
  t.equal(await probe(pods.other.ns, web, PORT, 5000), 'ok', 'with only the other tool there, nothing is enforced');

  await a.restart(); // restore finds no link of ours on the veths and attaches them
  await restoreVerified(a.client);
  for (const { ep } of Object.values(pods))
    for (const direction of DIRECTIONS)
      t.same(tcxAhead(a.bpffsDir, { ifindex: ep.hostIfIndex, direction }), [], `${ep.hostIfName} ${direction}: ours first`);
  await check('attached after the other tool');
  t.equal(sampleValue(await scrapeMetrics(a.client), 'membrane_tcx_hooks_behind_foreign'), 0, 'no hook reported');
  t.same((await a.client.status()).datapath.behindForeign, [], 'nor listed by membrane status');

  await a.restart();
  await restoreVerified(a.client);
  await check('after another restart');

  // A tool that inserts itself ahead later (we cannot prevent it) is reported.
  const later = foreignPassProgram();
  programs.push(later);
  links.push(linkForeign(later, pods.other.ep.hostIfIndex, 'ingress', true));
  t.equal(sampleValue(await scrapeMetrics(a.client), 'membrane_tcx_hooks_behind_foreign'), 1, 'one hook reported');
  const behind = [
    { device: pods.other.ep.hostIfName, ifindex: pods.other.ep.hostIfIndex, direction: 'ingress', aheadProgramIds: [later.id] },
  ];
  t.same((await a.client.status()).datapath.behindForeign, behind, 'membrane status lists it: device, hook, the program ahead');
  await a.restart();
  t.match(fs.readFileSync(a.logFile, 'utf8'), /another tool's tcx program runs ahead of ours/, 'warned at start');
  t.same((await a.client.status()).datapath.behindForeign, behind, 'still listed after a restart');
  const cli = await membrane(['--socket', a.socket, 'status']);
  t.match(
    cli.out,
    new RegExp(`\\n\\s+${pods.other.ep.hostIfName} ingress:\\s+behind another tool's tcx program ${later.id} \\(run first\\)\\n`),
    'and so does the CLI, under Datapath',
  );
  const json = JSON.parse((await membrane(['--socket', a.socket, 'status', '-o', 'json'])).out) as AgentStatus;
  t.same(json.datapath.behindForeign, behind, 'and its JSON');
});
