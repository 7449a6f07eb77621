// An agent restart under toFQDNs (the setup: lib/dns-fqdn-file.ts): DNS with the proxy down fails
// closed; established connections and what was learned survive the restart.
import t from 'tap';
import { probe } from './lib/probe.ts';
import { pollUntil } from '../shared/test/lib/poll.ts';
import { startFlow } from './lib/tcp.ts';
import { resolveAndConnect } from './lib/dns.ts';
import { dnsFqdnForFile, until } from './lib/dns-fqdn-file.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const f = dnsFqdnForFile(t);

t.test('agent restart: established connections and learned names survive; the proxy down fails closed', async (t) => {
  const { agent, W, nsOf, cacheList } = f;
  const r = await resolveAndConnect(nsOf.client, W.dns, 'www.pattern.test', 80);
  t.equal(r.connect, 'ok');
  const flow = startFlow(nsOf.client, W.www, 80);
  t.teardown(() => flow.stop());
  await until('the flow to echo', async () => (flow.echoed() > 0 ? true : undefined), 10_000);
  await agent.kill9();
  const down = await resolveAndConnect(nsOf.client, W.dns, 'www.pattern.test', 0);
  t.ok(down.error, `with the agent (and its DNS proxy) down, DNS fails closed (${down.error})`);
  await agent.restart();
  const before = flow.echoed();
  await pollUntil(() => flow.echoed() > before || flow.failed() !== null, 20_000, 100);
  t.ok(flow.echoed() > before && !flow.failed(), 'the established connection kept working through the restart');
  t.ok(
    (await cacheList('www.pattern.test')).some((e) => e.ip === W.www),
    'the learned name is still known',
  );
  t.equal(await probe(nsOf.client, W.www, 80, 5000), 'ok', 'a new connection to a cached answer still works');
  const again = await resolveAndConnect(nsOf.client, W.dns, 'api.test.internal', 80);
  t.equal(again.connect, 'ok', 'and the proxy is back');
});
