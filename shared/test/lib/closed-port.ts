// A loopback TCP port nobody listens on: bound, then closed, so a connect to it is refused (as to a
// server that cannot be reached). Another process may take the port meanwhile; the tests that use it
// need it only for the one connect that follows.
import { once } from 'node:events';
import net from 'node:net';

export async function closedLoopbackPort(): Promise<number> {
  const s = net.createServer();
  s.listen(0, '127.0.0.1');
  await once(s, 'listening');
  const port = (s.address() as net.AddressInfo).port;
  s.close();
  await once(s, 'close');
  return port;
}
