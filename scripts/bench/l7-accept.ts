// node --import tsx scripts/bench/l7-accept.ts — not a test: what the proxy worker pays to learn an
// accepted IPv4 connection's addresses, as RawSocket gets them (raw-socket.ts): from the SYN the
// listener saved (sockets.ts synAddresses, one getsockopt) against getsockname and getpeername (two
// system calls, each answered by Node with a new object's address string). A child process opens
// ACCEPT_N (10,000) loopback connections to a transparent listener of the worker's kind and keeps
// them open; the accepted handles are then made RawSockets in batches of 100, the two ways taking
// turns, and the medians of the batches (the first four of each left out: JIT) are printed, in ns per
// connection. CPU-bound and in one process, so a loaded machine moves both alike. As root.
import { spawn } from 'node:child_process';
import { RawSocket } from '../../shared/src/l7/proxy/raw-socket.ts';
import { pickProxyPort, portFree, transparentListener } from '../../shared/src/l7/proxy/sockets.ts';
import { type TcpHandle, tcpWrap } from '../../shared/src/l7/proxy/uv.ts';

const N = Number(process.env.ACCEPT_N ?? 10_000);
const BATCH = 100;

async function main(): Promise<void> {
  const port = pickProxyPort(portFree);
  const h = new tcpWrap.TCP(tcpWrap.constants.SERVER);
  if (h.open(transparentListener(4, port)) || h.listen(4096)) throw new Error('cannot listen');
  const handles: TcpHandle[] = [];
  const all = new Promise<void>((resolve) => {
    h.onconnection = (_err, c) => {
      if (c) handles.push(c);
      if (handles.length === N) resolve();
    };
  });
  const connect = `const net = require('node:net'); const open = []; let n = 0;
    const next = () => { if (n++ < ${N}) open.push(net.connect(${port}, '127.0.0.1', next)); };
    next(); setInterval(() => {}, 1000);`;
  const client = spawn(process.execPath, ['-e', connect], { stdio: 'inherit' });
  try {
    await all;
    const ns: Record<'syn' | 'names', number[]> = { syn: [], names: [] };
    for (let i = 0; i + 2 * BATCH <= N; i += 2 * BATCH) {
      const order: ['syn' | 'names', number][] =
        (i / (2 * BATCH)) % 2
          ? [
              ['names', 0],
              ['syn', BATCH],
            ]
          : [
              ['syn', 0],
              ['names', BATCH],
            ];
      for (const [way, off] of order) {
        const t = process.hrtime.bigint();
        for (let j = 0; j < BATCH; j++) new RawSocket(handles[i + off + j], true, way === 'syn');
        ns[way].push(Number(process.hrtime.bigint() - t) / BATCH);
      }
    }
    const med = (a: number[]) => a.slice(4).sort((x, y) => x - y)[(a.length - 4) >> 1];
    console.log(
      `RawSocket of an accepted connection, ns, median of ${ns.syn.length - 4} batches of ${BATCH}: addresses from the saved SYN ${med(ns.syn).toFixed(0)}, from getsockname + getpeername ${med(ns.names).toFixed(0)}`,
    );
  } finally {
    client.kill();
  }
  process.exit(0);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
