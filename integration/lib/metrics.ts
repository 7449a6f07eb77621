// The agent's Prometheus page as a test reads it: from the address the agent's status reports (port 0
// resolved), as text or parsed by our strict parser (which also proves the page is valid).
import type { AgentClient } from '../../shared/src/api/client.ts';
import { type MetricFamily, parsePrometheusText } from '../../shared/src/metrics/parse.ts';
import { metricsPageAt } from '../../shared/test/lib/metrics-page.ts';

/** The metrics page as text. */
export async function metricsText(client: AgentClient): Promise<string> {
  return metricsPageAt((await client.status()).metrics.address);
}

/** The metrics page, parsed (throws on anything that is not valid Prometheus text). */
export async function scrapeMetrics(client: AgentClient): Promise<Map<string, MetricFamily>> {
  return parsePrometheusText(await metricsText(client));
}
