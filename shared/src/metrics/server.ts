// Serves the registry as a Prometheus page over plain HTTP (loopback by default).
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';

/** "127.0.0.1:9962", "[::1]:9962", "localhost:0" -> host and port. */
export function parseListenAddress(text: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]*)):(\d+)$/.exec(text.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new Error(`metrics address "${text}" is not host:port (or "off")`);
  return { host: m[1] ?? (m[2] || '0.0.0.0'), port };
}

export interface MetricsServer {
  /** Bound host:port (the real port when 0 was asked for). */
  address: string;
  close(): Promise<void>;
}

/** `beforeScrape`: brings in what other processes count until asked (the L7 workers), before each scrape. */
export async function serveMetrics(
  registry: Registry,
  listen: string,
  beforeScrape?: () => Promise<void>,
): Promise<MetricsServer> {
  const { host, port } = parseListenAddress(listen);
  const server = http.createServer((req, res) => {
    const url = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    if (url !== '/metrics') {
      res
        .writeHead(url === '/' ? 200 : 404, { 'content-type': 'text/plain' })
        .end(url === '/' ? 'membrane agent metrics: /metrics\n' : 'not found\n');
      return;
    }
    (beforeScrape?.() ?? Promise.resolve())
      .then(() => registry.metrics())
      .then(
        (text) => {
          res.writeHead(200, { 'content-type': registry.contentType }).end(req.method === 'HEAD' ? undefined : text);
        },
        (err: Error) => {
          res.writeHead(500, { 'content-type': 'text/plain' }).end(`metrics collection failed: ${err.message}\n`);
        },
      );
  });
  server.keepAliveTimeout = 5000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const bound = server.address() as AddressInfo;
  const address = bound.family === 'IPv6' ? `[${bound.address}]:${bound.port}` : `${bound.address}:${bound.port}`;
  return {
    address,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
