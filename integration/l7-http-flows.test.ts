// Every L7 HTTP request and response is a flow: over gRPC, in membrane observe, in the metrics
// (the setup: lib/l7-http-file.ts).
import t from 'tap';
import { ObserverClient } from '../shared/src/flows/client.ts';
import { randomId } from './lib/agent.ts';
import { curl } from './lib/http.ts';
import { metricsText } from './lib/metrics.ts';
import { API, ip4, l7HttpForFile } from './lib/l7-http-file.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const f = l7HttpForFile(t);

t.test('every request and response is an L7 flow: gRPC, membrane observe, metrics', async (t) => {
  const { agent, eps, nsOf, importL7, reset, url, cli } = f;
  t.teardown(reset);
  await importL7(API());
  const marker = `/public/flow-${randomId()}`;
  t.equal((await curl(nsOf.good, url('web', 80, marker))).status, 200);
  t.equal((await curl(nsOf.good, url('web', 80, `${marker}-denied`), ['-X', 'DELETE'])).status, 403);
  const observer = new ObserverClient(agent.observerSocket);
  t.teardown(() => observer.close());
  const l7Flows = async () =>
    (await observer.collect({ number: 1000, whitelist: [{ eventType: [{ type: 129 }], httpPath: [`^${marker}`] }] })).map(
      (r) => r.flow!,
    );
  let flows = await l7Flows();
  for (const end = Date.now() + 20_000; Date.now() < end && flows.length < 4; ) {
    await new Promise((r) => setTimeout(r, 100));
    flows = await l7Flows();
  }
  const req = flows.find((f) => f.l7?.type === 'REQUEST' && f.l7.http?.method === 'GET');
  const res = flows.find((f) => f.l7?.type === 'RESPONSE' && f.l7.http?.method === 'GET');
  const denied = flows.find((f) => f.l7?.type === 'REQUEST' && f.l7.http?.method === 'DELETE');
  const deniedRes = flows.find((f) => f.l7?.type === 'RESPONSE' && f.l7.http?.method === 'DELETE');
  t.match(
    req,
    {
      Type: 'L7',
      verdict: 'FORWARDED',
      trafficDirection: 'INGRESS',
      IP: { source: ip4(eps.good), destination: ip4(eps.web) },
      l4: { TCP: { destinationPort: 80 } },
      l7: {
        type: 'REQUEST',
        http: { method: 'GET', url: `http://${ip4(eps.web)}:80${marker}`.replace(':80/', '/'), protocol: 'HTTP/1.1' },
      },
      source: { ID: eps.good.id, identity: eps.good.identity, labels: ['app=checkout', 'stage=live'] },
      destination: { ID: eps.web.id, identity: eps.web.identity },
      ingressAllowedBy: [{ name: 'api', membraneRulePath: 'spec.ingress[0].toPorts[0].rules.http[0]' }],
    },
    'the request: endpoints, identities, labels, the HTTP rule that allowed it',
  );
  t.match(res, {
    verdict: 'FORWARDED',
    isReply: { value: true },
    IP: { source: ip4(eps.web), destination: ip4(eps.good) },
    l7: { type: 'RESPONSE', http: { code: 200 } },
  });
  t.ok((res?.l7?.latencyNs ?? 0) > 0, `the response has a latency (${res?.l7?.latencyNs} ns)`);
  t.match(denied, { verdict: 'DROPPED', ingressDeniedBy: [{ name: 'api' }], Summary: /denied by ingress HTTP rules of api/ });
  t.match(deniedRes, { l7: { http: { code: 403 } } });
  const line = await cli(['observe', '--type', 'l7', '--http-method', 'DELETE', '--http-path', `^${marker}`, '--last', '10']);
  t.match(
    line.out,
    /http-request DROPPED \(HTTP\/1\.1 DELETE http:\/\/[^ ]+-denied/,
    `membrane observe --type l7 --http-method: ${line.out.trim()}`,
  );
  const status = await cli([
    'observe',
    '--type',
    'l7',
    '--http-status',
    '403',
    '--http-path',
    `^${marker}`,
    '--last',
    '10',
    '-o',
    'json',
  ]);
  t.equal(status.out.trim().split('\n').length, 1, '--http-status 403: the one denied response');
  const text = await metricsText(agent.client);
  t.match(text, /membrane_l7_requests_total\{method="DELETE",status="403",verdict="denied"\} [1-9]/);
  t.match(text, /membrane_l7_request_duration_seconds_count\{endpoint="[^"]+"\} [1-9]/);
});

t.test(
  'nobody following: the workers hold their flows, yet a query or a scrape right after a request has it; a follower gets them as they come',
  async (t) => {
    const { agent, nsOf, importL7, reset, url } = f;
    t.teardown(reset);
    await importL7(API());
    const observer = new ObserverClient(agent.observerSocket);
    t.teardown(() => observer.close());
    const marker = `/public/held-${randomId()}`;
    const byMarker = (m: string) => ({ number: 100, whitelist: [{ eventType: [{ type: 129 }], httpPath: [`^${m}`] }] });
    const before = (await observer.status()).seenFlows ?? 0;
    // Three requests, then at once (no polling: the workers send what they hold twice a second, and a
    // query asks them first) the query, the server status and the metrics.
    for (let i = 0; i < 3; i++) t.equal((await curl(nsOf.good, url('web', 80, `${marker}-${i}`))).status, 200);
    t.equal(
      (await observer.collect(byMarker(marker))).length,
      6,
      "the query right after them has the 3 requests' and 3 responses' flows",
    );
    t.ok(((await observer.status()).seenFlows ?? 0) - before >= 6, 'the server status counts them');
    const quick = `/public/scrape-${randomId()}`;
    t.equal((await curl(nsOf.good, url('web', 80, quick), ['-X', 'PUT'])).status, 403);
    t.match(
      await metricsText(agent.client),
      /membrane_l7_requests_total\{method="PUT",status="403",verdict="denied"\} 1\n/,
      'a scrape right after the request counts it',
    );

    // A follower: each batch is sent at once while it follows (50 ms at most), not held for up to 0.5 s.
    const live = `/public/live-${randomId()}`;
    const follow = observer.flows({ follow: true, whitelist: [{ eventType: [{ type: 129 }], httpPath: [`^${live}`] }] });
    t.teardown(() => follow.cancel());
    await new Promise((r) => setTimeout(r, 300)); // the follow has reached the agent
    const delays: number[] = [];
    const it = follow.responses[Symbol.asyncIterator]();
    for (let i = 0; i < 7; i++) {
      t.equal((await curl(nsOf.good, url('web', 80, `${live}-${i}`))).status, 200);
      const answered = Date.now(); // the response flow is made as its head goes out: before curl ends
      for (let got = 0; got < 2; got++) {
        const next = await Promise.race([it.next(), new Promise<undefined>((r) => setTimeout(r, 5000))]);
        t.ok(next && !next.done, 'a flow came to the follower');
      }
      delays.push(Date.now() - answered);
    }
    delays.sort((a, b) => a - b);
    t.ok(
      delays[3] < 150,
      `the follower's flows came ${delays.join(', ')} ms after curl had its answer (median under 150; held, up to 500)`,
    );
  },
);
