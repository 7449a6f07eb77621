// Policy on Docker containers (a private dockerd, the agent hosting the Membrane network plugin):
// containers are selected by their Docker labels once the agent learns them; until then (identity
// init) they are closed, so a container a policy will select is never open. Everything is removed.
import t from 'tap';
import { dockerFixture, dockerSubnet, eventually, type DockerTestEnv } from './lib/docker-env.ts';
import { PolicyClient } from '../shared/src/policy/client.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}
t.setTimeout(15 * 60_000);

const { env } = dockerFixture(t);

/** One TCP exchange with nc: true when the echo came back. */
async function tcp(e: DockerTestEnv, from: string, ip: string): Promise<boolean> {
  const r = await e.exec(from, ['sh', '-c', `echo policy-ok | nc -w 2 ${ip} 7000`]);
  return /policy-ok/.test(r.stdout);
}

t.test('Docker containers: selected by their labels, closed until the labels are known', async (t) => {
  const e = await env(t);
  const pc = new PolicyClient(e.agent.client);
  const net = await e.network(['--subnet', dockerSubnet().cidr]);
  const web = await e.run(['--network', net, '--label', 'app=web'], ['nc', '-ll', '-p', '7000', '-e', 'cat']);
  const cli = await e.run(['--network', net, '--label', 'app=client']);
  const other = await e.run(['--network', net, '--label', 'app=other']);
  const webIp = (await e.addressOf(web, net)).ip;
  t.ok(await e.pingEventually(cli, webIp), 'no policy: connectivity');
  t.ok(
    await eventually(async () => (await e.agent.client.listEndpoints()).every((x) => x.labels['container:app']), 30_000),
    'labels learnt from Docker',
  );

  await pc.import(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: docker-web}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "7000", protocol: TCP}]}]
`);
  t.ok(await tcp(e, cli, webIp), 'client -> web:7000 allowed');
  t.notOk(await tcp(e, other, webIp), 'other -> web denied');
  t.notOk(await e.ping(cli, webIp), 'ICMP to web denied (only 7000/tcp)');
  const tr = await pc.trace({ labels: { app: 'other' } }, { labels: { app: 'web' } }, '7000/tcp');
  t.equal(tr.verdict, 'deny', 'trace agrees');

  // A second web container: open to the client, closed to the others, from the start.
  const web2 = await e.run(['--network', net, '--label', 'app=web'], ['nc', '-ll', '-p', '7000', '-e', 'cat']);
  const web2Ip = (await e.addressOf(web2, net)).ip;
  t.ok(await eventually(() => tcp(e, cli, web2Ip), 30_000), 'client -> new web container, once labelled');
  t.notOk(await tcp(e, other, web2Ip), 'other -> new web container denied');
  const eps = await e.agent.client.listEndpoints();
  const web2Ep = eps.find((x) => x.docker?.containerName === web2)!;
  t.match(await pc.endpoint(web2Ep.docker!.endpointId, web2Ep.ifName), {
    enforcement: { ingress: 'default-deny' },
    policies: [{ name: 'docker-web' }],
  });
  await pc.delete('all');
  t.ok(await tcp(e, other, web2Ip), 'policy deleted: open again');
});
