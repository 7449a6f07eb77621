import t from 'tap';
import { buildNetwork } from '../src/network/index.ts';

t.test('networks validate subnets, gateways and overlap', async (t) => {
  const a = buildNetwork({ name: 'a', subnets: ['10.5.0.0/24', 'fd00:5::/64'] }, []);
  t.same(a.subnets.map((s) => s.gateway), ['10.5.0.1', 'fd00:5::1'], 'default gateway: first usable address');
  t.equal(buildNetwork({ name: 'g', subnets: ['10.6.0.0/24'], gateways: ['10.6.0.254'] }, []).subnets[0].gateway, '10.6.0.254');
  t.throws(() => buildNetwork({ name: 'b', subnets: ['10.5.0.128/25'] }, [a]), /overlaps 10.5.0.0\/24 of network "a"/);
  t.throws(() => buildNetwork({ name: 'c', subnets: ['10.7.0.0/24'], gateways: ['10.8.0.1'] }, []), /outside subnet/);
  t.throws(() => buildNetwork({ name: 'c', subnets: ['10.7.0.0/24'], gateways: ['10.7.0.255'] }, []), /broadcast/);
  t.throws(() => buildNetwork({ name: 'd', subnets: ['10.7.0.0/24', '10.8.0.0/24'] }, []), /more than one IPv4/);
  t.throws(() => buildNetwork({ name: 'bad name!', subnets: ['10.7.0.0/24'] }, []), /name "bad name!" is invalid/);
  t.throws(() => buildNetwork({ name: 'e', subnets: ['10.7.0.0/31'] }, []), /too small/);
  t.throws(() => buildNetwork({ name: 'f', subnets: ['10.7.0.0/24'], mtu: 100 }, []), /mtu 100/);
});
