// A Node TCP byte pipe on the proxy workers' own RawSockets (proxy/raw-socket.ts): each accepted
// connection gets one upstream connection and bytes are copied both ways, with no HTTP framing, no
// policy, no records. bench:l7:floor runs it in bench:l7's world to measure what a Node proxy costs
// per request before it does anything (the floor under the L7 workers' CPU per request).
// Usage: node --import tsx scripts/bench/l7-pipe.ts LISTEN_IP LISTEN_PORT DST_IP DST_PORT
import { RawListener } from '../../shared/src/l7/proxy/raw-listener.ts';
import { RawSocket } from '../../shared/src/l7/proxy/raw-socket.ts';

const [listenIp, listenPort, dstIp, dstPort] = process.argv.slice(2);

function pipe(from: RawSocket, to: RawSocket): void {
  from.on('data', (d: Buffer) => {
    if (!to.write(d)) from.pause();
  });
  to.on('drain', () => from.resume());
  from.on('end', () => to.end());
  from.on('error', () => to.destroy());
}

RawListener.bind(listenIp, Number(listenPort), (client) => {
  const up = RawSocket.connect(dstIp, Number(dstPort), 10_000);
  up.setNoDelay(true);
  client.setNoDelay(true);
  pipe(client, up);
  pipe(up, client);
  client.on('close', () => up.destroy());
  up.on('close', () => client.destroy());
  client.start();
});
process.stdout.write('listening\n');
