import t from 'tap';
import { buildNetwork } from '../src/network/index.ts';

t.test('networks validate subnets, gateways and overlap', async (t) => {
  const a = buildNetwork({ name: 'a', subnets: ['10.5.0.0/24', 'fd00:5::/64'] }, []);
  t.same(
    a.subnets.map((s) => s.gateway),
    ['10.5.0.1', 'fd00:5::1'],
    'default gateway: first usable address',
  );
  t.equal(buildNetwork({ name: 'g', subnets: ['10.6.0.0/24'], gateways: ['10.6.0.254'] }, []).subnets[0].gateway, '10.6.0.254');
  t.throws(() => buildNetwork({ name: 'b', subnets: ['10.5.0.128/25'] }, [a]), /overlaps 10.5.0.0\/24 of network "a"/);
  t.throws(() => buildNetwork({ name: 'c', subnets: ['10.7.0.0/24'], gateways: ['10.8.0.1'] }, []), /outside subnet/);
  t.throws(() => buildNetwork({ name: 'c', subnets: ['10.7.0.0/24'], gateways: ['10.7.0.255'] }, []), /broadcast/);
  t.throws(() => buildNetwork({ name: 'd', subnets: ['10.7.0.0/24', '10.8.0.0/24'] }, []), /more than one IPv4/);
  t.throws(() => buildNetwork({ name: 'bad name!', subnets: ['10.7.0.0/24'] }, []), /name "bad name!" is invalid/);
  t.throws(() => buildNetwork({ name: 'e', subnets: ['10.7.0.0/31'] }, []), /too small/);
  t.throws(() => buildNetwork({ name: 'f', subnets: ['10.7.0.0/24'], mtu: 100 }, []), /mtu 100/);
});

t.test('a network that exists with another MTU says so (cluster mode switched between tunnel and native routing)', async (t) => {
  const { Networks } = await import('../src/network/index.ts');
  const { Ipam } = await import('../src/ipam/index.ts');
  const { MemoryStore } = await import('../src/store/index.ts');
  const store = new MemoryStore();
  const nets = await Networks.open(store, await Ipam.open(store));
  await nets.create({ name: 'default', subnets: ['10.9.0.0/24'], mtu: 1450 });
  t.equal((await nets.create({ name: 'default', subnets: ['10.9.0.0/24'], mtu: 1450 })).mtu, 1450, 'the same again: idempotent');
  await t.rejects(
    nets.create({ name: 'default', subnets: ['10.9.0.0/24'], mtu: 1500 }),
    /already exists with subnets 10\.9\.0\.0\/24 and MTU 1450 \(asked: 1500\)/,
  );
  await t.rejects(nets.create({ name: 'default', subnets: ['10.10.0.0/24'] }), /already exists with subnets 10\.9\.0\.0\/24$/);
});
