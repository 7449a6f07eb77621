// Revoked connections and the conntrack share (--ct-max-per-endpoint 12 here). C's ingress is closed;
// C holds 10 connections to D; then D's ingress closes too, so the policy denies those flows both ways
// as new flows. Before, their entries stayed revoked for the flows' 6 h lifetime (C's sockets'
// retransmits kept them alive) and held 10 of C's 12 slots: C could open 2 of 10 connections to E,
// which the policy admits. Now such entries are forgotten (deleted) at revalidation: C opens all 10,
// and what C's old sockets send still never reaches D (its data meets D's closed ingress as a new
// flow). attack-conntrack-fin.test.ts holds the other direction (D on the old tuple, never at C).
import t from 'tap';
import { spawn } from 'node:child_process';
import { castOf, closedIngress } from './lib/attack-pods.ts';
import { killAll, startEchoServer } from './lib/tcp.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const cast = castOf(['c', 'd', 'e'], { extraArgs: ['--ct-max-per-endpoint', '12'] });
const PORT = 8080;
const kids: ReturnType<typeof spawn>[] = [];
t.teardown(() => killAll(kids));

// Opens `n` connections to argv[1]:PORT, prints how many connected; on a line on stdin, sends one
// line on each and prints how many were echoed within 2 s.
const HOLDER = (n: number) => `import socket,sys,select,time
ss=[]
for i in range(${n}):
  s=socket.socket(); s.settimeout(2)
  try:
    s.connect((sys.argv[1],${PORT})); ss.append(s)
  except Exception: pass
print(len(ss),flush=True)
sys.stdin.readline()
for s in ss:
  try: s.send(b"again\\n")
  except Exception: pass
got=set();end=time.time()+2
while len(got)<len(ss) and time.time()<end:
  r,_,_=select.select([s for s in ss if s not in got],[],[],max(0,end-time.time()))
  got.update(r)
print("echoed",len(got),flush=True)
sys.stdin.readline()`;

function holder(nsPath: string, ip: string, n: number) {
  const child = spawn('nsenter', [`--net=${nsPath}`, 'python3', '-c', HOLDER(n), ip], { stdio: ['pipe', 'pipe', 'ignore'] });
  kids.push(child);
  let text = '';
  const lines: string[] = [];
  const waiters: (() => void)[] = [];
  child.stdout!.on('data', (d: Buffer) => {
    text += d.toString();
    const parts = text.split('\n');
    text = parts.pop()!;
    lines.push(...parts);
    for (const w of waiters.splice(0)) w();
  });
  const line = (i: number) =>
    new Promise<string>((resolve) => {
      const check = () => (lines.length > i ? resolve(lines[i]) : waiters.push(check));
      check();
    });
  return { line, next: () => child.stdin!.write('\n') };
}

t.test('flows the policy denies both ways give their share back', async (t) => {
  const { c, d, e } = cast.pods;
  for (const p of [d, e]) kids.push(await startEchoServer(p.ns, PORT, '0.0.0.0'));
  await cast.pc.import(closedIngress('c'));
  const held = holder(c.ns.path, d.ip4, 10);
  t.equal(await held.line(0), '10', 'C holds 10 connections to D (D admits C)');

  await cast.pc.import(closedIngress('d'));
  await new Promise((r) => setTimeout(r, 1500)); // revalidated within a second
  const toE = holder(c.ns.path, e.ip4, 10);
  t.equal(await toE.line(0), '10', "C opens 10 connections to E: the revoked flows hold none of C's 12 slots");
  toE.next();
  t.equal(await toE.line(1), 'echoed 10', 'and they work');

  held.next();
  t.equal(await held.line(1), 'echoed 0', "C's old connections to D stay cut: nothing echoed");
  toE.next();
  held.next();
});
