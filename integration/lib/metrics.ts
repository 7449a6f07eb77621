// The agent's Prometheus page as a test reads it: from the address the agent's status reports (port 0
// resolved), as text or parsed by our strict parser (which also proves the page is valid).
import http from 'node:http';
import type { AgentClient } from '../../shared/src/api/client.ts';
import { type MetricFamily, parsePrometheusText } from '../../shared/src/metrics/parse.ts';

/** The metrics page as text. */
export async function metricsText(client: AgentClient): Promise<string> {
  const address = (await client.status()).metrics.address;
  if (!address) throw new Error('the agent serves no metrics (--metrics-address off)');
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

/** The metrics page, parsed (throws on anything that is not valid Prometheus text). */
export async function scrapeMetrics(client: AgentClient): Promise<Map<string, MetricFamily>> {
  return parsePrometheusText(await metricsText(client));
}
