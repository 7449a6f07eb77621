// Serving on a unix socket path: never over a live server's socket, always over a stale one (a killed
// process leaves its socket file behind), and with the mode set before anyone is told it is ready.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';

/** Does something accept connections on this socket path? */
export function isSocketLive(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(socketPath);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/**
 * Makes `socketPath` free to bind: creates its directory, removes a stale socket file, and refuses
 * (naming `who`) when a live server answers there. For servers that bind themselves (gRPC).
 */
export async function claimUnixSocket(socketPath: string, who = 'another process'): Promise<void> {
  fs.mkdirSync(path.dirname(socketPath), { recursive: true, mode: 0o755 });
  if (!fs.existsSync(socketPath)) return;
  if (await isSocketLive(socketPath)) throw new Error(`${who} is already serving ${socketPath}`);
  fs.rmSync(socketPath, { force: true });
}

/** Claims the path, listens, and sets the socket's mode (default 0660: root and the socket's group). */
export async function listenUnix<S extends net.Server>(
  server: S,
  socketPath: string,
  opts: { mode?: number; who?: string } = {},
): Promise<S> {
  await claimUnixSocket(socketPath, opts.who);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => {
      server.off('error', reject);
      resolve();
    });
  });
  fs.chmodSync(socketPath, opts.mode ?? 0o660);
  return server;
}
