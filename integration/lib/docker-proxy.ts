// An HTTP proxy in front of a dockerd API socket, for the agent's Docker label source: it forwards
// everything (the event stream included) and can hold the container list, the call that answers an
// endpoint's labels, until released: a Docker API that is slow or stuck, on demand.
import fs from 'node:fs';
import http from 'node:http';

export interface DockerApiProxy {
  socket: string;
  /** Hold (true) or forward (false) container list requests; releasing forwards the held ones. */
  hold(on: boolean): void;
  /** Container list requests seen. */
  listCalls(): number;
  close(): Promise<void>;
}

export async function startDockerApiProxy(socket: string, target: string): Promise<DockerApiProxy> {
  let holding = false;
  let lists = 0;
  const held: (() => void)[] = [];
  const server = http.createServer((req, res) => {
    const forward = () => {
      const up = http.request({ socketPath: target, path: req.url, method: req.method, headers: req.headers }, (r) => {
        res.writeHead(r.statusCode ?? 502, r.headers);
        r.pipe(res);
      });
      up.on('error', () => {
        if (!res.headersSent) res.writeHead(502);
        res.end();
      });
      req.pipe(up);
      res.on('close', () => up.destroy());
    };
    if (/\/containers\/json/.test(req.url ?? '')) {
      lists++;
      if (holding) {
        held.push(forward);
        return;
      }
    }
    forward();
  });
  fs.rmSync(socket, { force: true });
  await new Promise<void>((resolve) => server.listen(socket, () => resolve()));
  return {
    socket,
    hold(on) {
      holding = on;
      if (!on) for (const f of held.splice(0)) f();
    },
    listCalls: () => lists,
    close: () =>
      new Promise<void>((resolve) => {
        for (const f of held.splice(0)) f();
        server.close(() => resolve());
        server.closeAllConnections();
        fs.rmSync(socket, { force: true });
      }),
  };
}
