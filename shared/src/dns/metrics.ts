// Prometheus metrics of the DNS proxy and the name cache: queries by verdict (forwarded, refused,
// error) and response code, the time from an answer's arrival to its addresses being in the datapath,
// and the cache's size (names, addresses).
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { rcodeName } from './message.ts';
import type { DnsRecord } from './types.ts';

export interface DnsMetrics {
  observe(r: DnsRecord): void;
}

export function registerDnsMetrics(registry: Registry, size: () => { names: number; addresses: number }): DnsMetrics {
  const registers = [registry];
  // Counted in plain maps on the proxy's path, handed to the counters when scraped (a labelled
  // inc() hashes its labels on every call).
  const byVerdict = new Map<string, number>();
  const byRcode = new Map<string, number>();
  const totals = (m: Map<string, number>, label: 'verdict' | 'rcode') =>
    function (this: Counter<string>) {
      this.reset();
      for (const [v, n] of m) this.inc({ [label]: v }, n);
    };
  new Counter({
    name: 'membrane_dns_queries_total',
    help: 'DNS queries through the DNS proxy, by verdict (forwarded, refused, error)',
    labelNames: ['verdict'] as const,
    registers,
    collect: totals(byVerdict, 'verdict'),
  });
  new Counter({
    name: 'membrane_dns_responses_total',
    help: 'DNS responses the DNS proxy passed or made, by rcode',
    labelNames: ['rcode'] as const,
    registers,
    collect: totals(byRcode, 'rcode'),
  });
  const count = (m: Map<string, number>, key: string) => m.set(key, (m.get(key) ?? 0) + 1);
  const learn = new Histogram({
    name: 'membrane_fqdn_answer_to_datapath_seconds',
    help: 'From a DNS answer reaching the proxy to its addresses being in the ipcache (then it goes to the pod)',
    buckets: [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25],
    registers,
  });
  new Gauge({
    name: 'membrane_fqdn_cache_names',
    help: 'Names in the FQDN cache',
    registers,
    collect() {
      this.set(size().names);
    },
  });
  new Gauge({
    name: 'membrane_fqdn_cache_addresses',
    help: 'Addresses in the FQDN cache',
    registers,
    collect() {
      this.set(size().addresses);
    },
  });
  return {
    observe(r) {
      if (r.kind === 'query') count(byVerdict, r.verdict);
      if (r.kind === 'query' && r.verdict === 'refused') count(byRcode, 'REFUSED');
      if (r.kind === 'response') {
        if (r.verdict === 'error') count(byVerdict, 'error');
        count(byRcode, r.answer && r.verdict === 'forwarded' ? rcodeName(r.answer.rcode) : 'SERVFAIL');
        if (r.learnNs !== undefined) learn.observe(r.learnNs / 1e9);
      }
    },
  };
}
