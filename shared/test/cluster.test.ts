// Pure parts of cluster mode: the kvstore layout, the kvstore flags, the pod CIDR pool, the agent's
// cluster settings. (Everything that talks to etcd is tested against a real one in integration/.)
import t from 'tap';
import { blockCidr, labelsDigest, layout, tail, validClusterName } from '../src/kvstore/layout.ts';
import { kvstoreOptions, parseEndpoints } from '../src/kvstore/config.ts';
import { prefixEnd } from '../src/kvstore/kv.ts';
import { PodCidrPool } from '../src/operator/podcidr.ts';
import { resolveConfig } from '../src/agent/config.ts';
import { clusterSettings } from '../src/agent/cluster.ts';
import { CniCode, kindInfo } from '../src/errors.ts';
import { IdentityUnavailableError } from '../src/cluster/identities.ts';
import { KvUnavailableError } from '../src/kvstore/kv.ts';

const noFile = () => {
  throw new Error('ENOENT');
};

t.test('layout: one prefix per cluster, prefixes that never match a longer sibling', async (t) => {
  const L = layout('prod');
  t.equal(L.node('n1'), 'membrane/v1/prod/nodes/n1');
  t.ok(L.nodes.endsWith('/'), 'list prefixes end with / (n1 never lists n10)');
  t.equal(L.identityRef(300, 'n2'), 'membrane/v1/prod/identities/refs/300/n2');
  t.ok(L.identityRef(300, 'n2').startsWith(L.identityRefsOf(300)));
  t.notOk(L.identityRef(3000, 'n2').startsWith(L.identityRefsOf(300)), 'refs of 300 do not include 3000');
  t.equal(L.podCidrBlock('10.1.2.0/24'), 'membrane/v1/prod/podcidrs/blocks/v4/10.1.2.0_24');
  t.equal(L.podCidrBlock('fd00::/112'), 'membrane/v1/prod/podcidrs/blocks/v6/fd00::_112');
  t.equal(blockCidr('fd00::_112'), 'fd00::/112');
  t.equal(tail(L.ipcacheEntry('10.0.0.1'), L.ipcache), '10.0.0.1');
  t.throws(() => layout('Prod/x'), /cluster name "Prod\/x"/);
  t.notOk(validClusterName('-a'));
  t.equal(labelsDigest({ b: '2', a: '1' }), labelsDigest({ a: '1', b: '2' }), 'label order does not matter');
  t.not(labelsDigest({ a: '1' }), labelsDigest({ a: '2' }));
  t.equal(prefixEnd('a/b/').toString(), 'a/b0', 'range end of a prefix: last byte + 1');
});

t.test('kvstore flags: etcd only, URLs with ports, TLS files go together', async (t) => {
  t.equal(kvstoreOptions({}), undefined, 'no --kvstore: single node');
  t.throws(() => kvstoreOptions({ kvstoreEndpoints: 'http://a:2379' }), /--kvstore-endpoints needs --kvstore etcd/);
  t.throws(() => kvstoreOptions({ kvstore: 'consul', kvstoreEndpoints: 'http://a:2379' }), /"consul" is not supported/);
  t.throws(() => kvstoreOptions({ kvstore: 'etcd' }), /needs --kvstore-endpoints/);
  t.throws(() => parseEndpoints('a:2379'), /"a:2379" must be http:\/\/ or https:\/\//);
  t.throws(() => parseEndpoints('http://a'), /needs a port/);
  t.throws(
    () => kvstoreOptions({ kvstore: 'etcd', kvstoreEndpoints: 'https://a:2379' }),
    /https:\/\/ endpoints need --kvstore-ca/,
  );
  t.throws(
    () => kvstoreOptions({ kvstore: 'etcd', kvstoreEndpoints: 'http://a:2379', kvstoreCert: '/c' }, () => Buffer.from('x')),
    /go together/,
  );
  t.throws(
    () =>
      kvstoreOptions({ kvstore: 'etcd', kvstoreEndpoints: 'https://a:2379', kvstoreCa: '/nope' }, () => {
        throw new Error('ENOENT');
      }),
    /--kvstore-ca \/nope: ENOENT/,
  );
  t.throws(
    () => kvstoreOptions({ kvstore: 'etcd', kvstoreEndpoints: 'http://a:2379', clusterName: 'A B' }),
    /--cluster-name "A B"/,
  );
  const ok = kvstoreOptions(
    {
      kvstore: 'etcd',
      kvstoreEndpoints: 'https://a:2379, https://b:2379',
      kvstoreCa: '/ca',
      kvstoreCert: '/c',
      kvstoreKey: '/k',
    },
    (p) => Buffer.from(p),
  );
  t.same(ok?.kv.endpoints, ['https://a:2379', 'https://b:2379']);
  t.equal(ok?.cluster, 'default');
  t.equal(ok?.kv.tls?.cert?.toString(), '/c');
});

t.test('agent: cluster flags from flags, env and file; --node-ip required and checked', async (t) => {
  const base = ['--kvstore', 'etcd', '--kvstore-endpoints', 'http://10.0.0.1:2379', '--cluster-name', 'prod'];
  const c = resolveConfig([...base, '--node-ip', '192.0.2.1', '--kvstore-lease-ttl', '7'], {}, noFile);
  t.equal(c.cluster?.clusterName, 'prod');
  t.equal(c.cluster?.leaseTtlSeconds, 7);
  t.equal(c.cluster?.maxStaleSeconds, 0, '--kvstore-max-stale: off unless given');
  t.equal(resolveConfig([...base, '--kvstore-max-stale', '30'], {}, noFile).cluster?.maxStaleSeconds, 30);
  t.throws(() => resolveConfig([...base, '--kvstore-max-stale', '-1'], {}, noFile), /kvstore-max-stale/);
  t.equal(c.cluster?.explicitDefaultPool, false);
  t.equal(clusterSettings(c)?.nodeIp, '192.0.2.1');
  t.equal(
    resolveConfig([...base, '--pool', '10.9.0.0/16'], {}, noFile).cluster?.explicitDefaultPool,
    true,
    'a --pool for default is noticed (and ignored with a warning)',
  );
  t.throws(() => clusterSettings(resolveConfig(base, {}, noFile)), /needs --node-ip/);
  t.throws(
    () => clusterSettings(resolveConfig([...base, '--node-ip', 'nope'], {}, noFile)),
    /--node-ip "nope" is not an IP address/,
  );
  t.throws(() => resolveConfig(['--node-ip', '192.0.2.1'], {}, noFile), /need --kvstore etcd/);
  const env = resolveConfig(
    [],
    { MEMBRANE_KVSTORE: 'etcd', MEMBRANE_KVSTORE_ENDPOINTS: 'http://e:2379', MEMBRANE_NODE_IP: '192.0.2.9' },
    noFile,
  );
  t.equal(clusterSettings(env)?.kv.endpoints[0], 'http://e:2379');
  const file = resolveConfig(
    ['--config', '/m.yaml'],
    {},
    () => 'kvstore: etcd\nkvstoreEndpoints: http://f:2379\nnodeIp: 192.0.2.8\nclusterName: filed\n',
  );
  t.equal(clusterSettings(file)?.cluster, 'filed');
  t.equal(resolveConfig([], {}, noFile).cluster, undefined, 'single node by default');
});

t.test('pod CIDR pool: equal blocks, next free one, the requested one when free, never one taken', async (t) => {
  const p = new PodCidrPool('10.8.0.0/16', 24);
  t.equal(p.blocks, 256n);
  t.equal(p.propose(), '10.8.0.0/24');
  p.markTaken('10.8.0.0/24', 'n1');
  t.equal(p.propose(), '10.8.1.0/24');
  p.markTaken('10.8.1.0/24', 'n2');
  t.equal(p.propose('10.8.7.0/24'), '10.8.7.0/24', 'a free requested block is granted');
  t.equal(p.propose('10.8.0.0/24'), '10.8.2.0/24', 'a taken requested block is not');
  t.equal(p.propose('10.9.0.0/24'), '10.8.3.0/24', 'a block outside the pool is not');
  t.equal(p.indexOf('10.8.5.0/24'), 5n);
  t.equal(p.indexOf('10.8.5.128/25'), undefined, 'wrong mask: not a block');
  t.equal(p.indexOf('10.8.5.7/24'), undefined, 'host bits: not a block');
  p.markFree('10.8.0.0/24');
  t.equal(p.ownerOf('10.8.0.0/24'), undefined);
  const tiny = new PodCidrPool('10.7.0.0/30', 30);
  t.equal(tiny.propose(), '10.7.0.0/30');
  tiny.markTaken('10.7.0.0/30', 'x');
  t.equal(tiny.propose(), undefined, 'exhausted: nothing to propose');
  const v6 = new PodCidrPool('fd00:10::/64', 112);
  t.equal(v6.propose(), 'fd00:10::/112');
  v6.markTaken('fd00:10::/112', 'a');
  t.equal(v6.propose(), 'fd00:10::1:0/112');
  t.throws(() => new PodCidrPool('10.0.0.0/16', 8), /between the pool's prefix length \(16\) and 32/);
  t.throws(() => new PodCidrPool('10.0.0.0/16', 31), /leaves no room for pods/);
});

t.test('an unreachable cluster store is "try again later" at every front door', async (t) => {
  const info = kindInfo('kvstore_unavailable');
  t.equal(info.http, 503, 'agent API: 503');
  t.equal(info.cni, CniCode.TRY_AGAIN_LATER, 'membrane-cni: code 11');
  t.match(info.docker ?? '', /etcd/, 'Docker users are told the cluster store is unreachable');
  t.equal(new IdentityUnavailableError('x').code, 'kvstore_unavailable');
  t.equal(new KvUnavailableError('x').code, 'kvstore_unavailable');
});

t.test('a large policy record is stored gzipped (etcd refuses requests over 1.5 MiB), a small one as JSON', async (t) => {
  const { encodeRecord, decodeRecord, RECORD_GZIP_ABOVE } = await import('../src/cluster/policies.ts');
  const rules = Array.from({ length: 10_000 }, (_, i) => ({
    fromCIDR: [`198.18.${i >> 8}.${i & 255}/32`],
    toPorts: [{ ports: [{ port: '443', protocol: 'TCP' }] }],
  }));
  const big = {
    name: 'big',
    number: 7,
    revision: 3,
    policy: { specs: rules },
    source: JSON.stringify(rules),
  } as unknown as Parameters<typeof encodeRecord>[0];
  const v = encodeRecord(big);
  t.ok(
    JSON.stringify(big).length > 1.5 * 1024 * 1024,
    `the record is ${(JSON.stringify(big).length / 1e6).toFixed(1)} MB of JSON`,
  );
  t.ok(v.startsWith('gz:') && v.length < 1024 * 1024, `stored as ${(v.length / 1024).toFixed(0)} KiB`);
  t.same(decodeRecord(v), big, 'and read back as it was');
  const small = { ...big, policy: { specs: rules.slice(0, 3) }, source: '' } as unknown as typeof big;
  t.ok(encodeRecord(small).length < RECORD_GZIP_ABOVE && encodeRecord(small).startsWith('{'), 'a small one stays plain JSON');
  t.same(decodeRecord(encodeRecord(small)), small);
  t.equal(decodeRecord('gz:not-gzip'), undefined, 'a damaged value is skipped, never fatal');
});
