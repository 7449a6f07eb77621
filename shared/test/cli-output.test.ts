// The CLI's pure pieces: output formats, the bpf table rows, and the bash completion script run by
// bash itself.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { Command } from 'commander';
import { parse as parseYaml } from 'yaml';
import { ctRows, metricsRows, policyRows, portProto } from '../src/cli/bpf.ts';
import { bashCompletion } from '../src/cli/completion.ts';
import { render, shortIds, table } from '../src/cli/output.ts';
import { buildProgram } from '../src/cli/program.ts';
import { statusLines } from '../src/cli/status.ts';
import { briefLine, statusProblems } from '../src/health/status.ts';
import type { AgentStatus, ClusterStatusView } from '../src/types.ts';

t.test('-o json|yaml print the data; tables line up, --no-headers drops the header', async (t) => {
  const data = [{ a: 1, b: 'x' }];
  t.same(JSON.parse(render('json', data, () => 'never')), data);
  t.same(parseYaml(render('yaml', data, () => 'never')), data);
  t.equal(
    render('table', data, () => 'text'),
    'text',
  );
  t.equal(
    table(
      ['ID', 'NAME'],
      [
        ['1', 'web'],
        ['22', 'db'],
      ],
    ),
    'ID  NAME\n1   web\n22  db\n',
  );
  t.equal(table(['ID', 'NAME'], [['1', 'web']], false), '1  web\n');
  t.equal(table(['ID'], [], false), '');
});

t.test('bpf rows', async (t) => {
  t.equal(portProto(80, 6), '80/TCP');
  t.equal(portProto(0, 0), 'ANY');
  t.equal(portProto(0, 17), 'ANY/UDP');
  t.equal(portProto(0x108, 1), '8/ICMP', 'ICMP entries carry 0x100 | type');
  t.same(
    ctRows([
      {
        family: 4,
        proto: 6,
        scope: 1,
        saddr: '10.0.0.1',
        daddr: '10.0.0.2',
        sport: 4000,
        dport: 80,
        owner: 3,
        peer: 0,
        policyPort: 80,
        flags: 8,
        srcIdentity: 300,
        dstIdentity: 301,
        state: 1,
        ruleId: 0,
        packets: [5, 4],
        bytes: [500, 400],
        tcpFlags: [2, 18],
        ifindex: 9,
        expiresInSeconds: 21599.6,
        ageSeconds: 1,
      },
    ]),
    [['TCP', 'EGRESS', '10.0.0.1:4000', '10.0.0.2:80', 'ESTABLISHED', '21600s', '5/4', '500/400', '3', '300->301', 'revoked']],
  );
  t.same(
    policyRows(
      [
        {
          endpoint: 3,
          direction: 'egress',
          identity: 0,
          proto: 17,
          port: 53,
          action: 'deny',
          ruleId: 0x1c01,
          packets: 2,
          bytes: 120,
        },
      ],
      true,
    ),
    [['3', 'Deny', 'Egress', 'ANY', 'ANY', '53/UDP', '-', '120', '2', '0x1c01']],
  );
  t.same(
    metricsRows({
      drops: [{ code: 133, reason: 'POLICY_DENIED', packets: 3, bytes: 180 }],
      endpoints: [
        { endpoint: 1, ifindex: 5, rxPackets: 1, rxBytes: 10, txPackets: 2, txBytes: 20 },
        { endpoint: 2, ifindex: 6, rxPackets: 3, rxBytes: 30, txPackets: 4, txBytes: 40 },
      ],
      eventsLost: 0,
    }),
    [
      ['Success', 'EGRESS', '6', '60'],
      ['Success', 'INGRESS', '4', '40'],
      ['Policy denied', '-', '3', '180'],
    ],
  );
});

t.test('the bash completion script completes the real command tree', async (t) => {
  const script = bashCompletion(buildProgram());
  const complete = (...words: string[]) =>
    execFileSync('bash', [
      '-c',
      `${script}\nCOMP_WORDS=(${words.map((w) => `'${w}'`).join(' ')}); COMP_CWORD=${words.length - 1}; _membrane; echo "\${COMPREPLY[*]}"`,
    ])
      .toString()
      .trim();
  t.match(complete('membrane', ''), /^status version endpoint identity network ipam policy bpf observe node completion /);
  t.equal(complete('membrane', 'endpoint', ''), 'list get labels delete --help');
  t.equal(complete('membrane', '--socket', '/tmp/x', 'identity', 'g'), 'get', 'an option value is not taken for a verb');
  t.equal(complete('membrane', 'status', '-o', ''), 'json yaml table');
  t.equal(complete('membrane', 'observe', '-o', 'j'), 'json jsonpb');
  t.equal(complete('membrane', 'observe', 'agent-events', '-o', ''), 'compact json jsonpb', "the subcommand's own choices");
  t.equal(complete('membrane', 'policy', 'audit', 'c1', '--mode', ''), 'on off default');
  t.match(complete('membrane', 'bpf', 'policy', 'get', '--'), /--all/);
  const other = new Command('tool');
  other.command('go').option('--fast');
  t.match(bashCompletion(other), /complete -o default -F _tool tool/, 'named after the program');
});

t.test('tables print 64-hex ids short, as Docker does', async (t) => {
  t.equal(shortIds(`ep:${'ab'.repeat(32)}/eth0`), 'ep:abababababab/eth0');
  t.equal(shortIds('docker-address:0123456789ab'), 'docker-address:0123456789ab', 'short ids and other text untouched');
});

t.test('status --brief: OK only when every part is healthy, else each degraded part named', async (t) => {
  const base: AgentStatus = {
    version: 'v',
    uptimeSeconds: 5,
    endpoints: 2,
    unhealthyEndpoints: [],
    networks: 1,
    stateDir: '/s',
    socket: '/s/a.sock',
    nodeName: 'n',
    datapath: { pinDir: '/sys/fs/bpf/m', attach: 'tc-clsact', hostDevice: 'membrane0', problems: [] },
    store: {},
    observer: { socket: '/o.sock', flowBufferSize: 1 },
    metrics: { address: null },
    policy: {},
    l7: { port: 1, needed: false, workers: [{ index: 0, connected: false, restarts: 0 }] },
    dns: { port: 2, running: true },
  };
  const brief = (s: Partial<AgentStatus>) => briefLine(statusProblems({ ...base, ...s }));
  t.equal(brief({}), 'OK', 'healthy; L7 workers not running while no policy needs them is healthy too');
  t.match(statusLines(base)[0], ['Agent', /^Ok /]);
  t.equal(
    brief({ datapath: { ...base.datapath, problems: ['host device membrane0 is down'] } }),
    'DEGRADED: Datapath: host device membrane0 is down',
  );
  t.match(statusLines({ ...base, datapath: { ...base.datapath, problems: ['x'] } }).slice(0, 2), [
    ['Agent', /^Degraded /],
    ['  Datapath', 'x'],
  ]);
  t.equal(brief({ store: { problem: 'the state disk is full' } }), 'DEGRADED: Store: the state disk is full');
  t.equal(
    brief({
      l7: {
        needed: true,
        workers: [
          { index: 0, connected: true, restarts: 0 },
          { index: 1, connected: false, restarts: 3 },
        ],
      },
    }),
    'DEGRADED: L7 proxy: worker 1 is not connected (3 restarts)',
  );
  t.equal(brief({ dns: { running: false } }), 'DEGRADED: DNS proxy: not running');
  t.equal(
    brief({ unhealthyEndpoints: [{ id: 7, endpoint: 'c1/eth0', problems: ['host interface lxc1 is missing'], since: 't' }] }),
    'DEGRADED: Endpoints: 1 unhealthy (7 c1/eth0: host interface lxc1 is missing)',
  );
  const cluster = (kv: Partial<ClusterStatusView['kvstore']>, routing?: ClusterStatusView['routing']): ClusterStatusView => ({
    name: 'c',
    node: 'n',
    nodeIp: '198.18.0.1',
    podCidrs: {},
    nodeId: 1,
    nodes: 2,
    remoteEndpoints: 0,
    identitiesReferenced: 0,
    kvstore: {
      type: 'etcd',
      endpoints: ['http://127.0.0.1:2379'],
      connected: true,
      leaseTtlSeconds: 15,
      revision: 1,
      pendingWrites: 0,
      watches: [{ prefix: 'nodes/', live: true, revision: 1 }],
      ...kv,
    },
    ...(routing ? { routing } : {}),
  });
  t.equal(brief({ cluster: cluster({}) }), 'OK');
  t.equal(
    brief({ cluster: cluster({ connected: false, lastError: 'deadline exceeded' }) }),
    'DEGRADED: KVStore: not connected to http://127.0.0.1:2379: deadline exceeded',
  );
  t.equal(
    brief({ cluster: cluster({ watches: [{ prefix: 'nodes/', live: false, revision: 1 }] }) }),
    'DEGRADED: KVStore: watch on nodes/ is not live',
  );
  t.equal(
    brief({
      cluster: cluster(
        {},
        {
          mode: 'native',
          underlay: { device: 'eth0', mtu: 1500 },
          nodes: 2,
          routes: 1,
          tunnelEntries: 0,
          unreachable: [{ node: 'b', cidr: 'fd00::/64' }],
        },
      ),
    }),
    'DEGRADED: Routing: pods of b (fd00::/64) are unreachable',
  );
  t.equal(
    brief({ dns: { running: false }, store: { problem: 'p' } }),
    'DEGRADED: Store: p; DNS proxy: not running',
    'several parts: all on the one line',
  );
});
