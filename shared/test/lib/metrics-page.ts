// The agent's Prometheus page fetched the way Prometheus does: GET /metrics on the address the agent
// serves it on. Tests and benchmarks read it through here (integration/lib/metrics.ts adds the
// address from the agent's status).
import http from 'node:http';

/** The text of http://ADDRESS/metrics (ADDRESS as the agent's status reports it: null when it serves none). */
export function metricsPageAt(address: string | null | undefined): Promise<string> {
  if (!address) return Promise.reject(new Error('the agent serves no metrics (--metrics-address off)'));
  return new Promise<string>((resolve, reject) => {
    http
      .get(`http://${address}/metrics`, (res) => {
        let b = '';
        res.on('data', (d) => {
          b += d;
        });
        res.on('end', () => resolve(b));
      })
      .on('error', reject);
  });
}
