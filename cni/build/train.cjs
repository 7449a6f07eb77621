// Records a V8 code cache for the membrane-cni bundle after running it through its main paths in this
// process (VERSION, ADD, CHECK, DEL, STATUS, GC, a decode error) against an in-process fake agent.
//   node cni/build/train.cjs BUNDLE CACHE_OUT
// Must run on the node binary the SEA is made from, without V8 flags (the cache records them).
'use strict';
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');
const vm = require('node:vm');

const [bundleFile, cacheFile] = process.argv.slice(2);
const source = fs.readFileSync(bundleFile, 'utf8');
const script = new vm.Script(`(function (exports, require, module, __filename, __dirname) {${source}\n})`, {
  filename: 'membrane-cni.js',
});
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'membrane-cni-train-'));
const socket = path.join(dir, 'agent.sock');

const ep = {
  id: 1,
  containerId: 'train',
  ifName: 'eth0',
  network: 'default',
  netns: '/proc/self/ns/net',
  hostIfName: 'mbr0train',
  hostIfIndex: 2,
  hostMac: '02:00:00:00:00:01',
  mac: '02:00:00:00:00:02',
  mtu: 1500,
  ips: [{ address: '10.0.0.2/32', gateway: '10.0.0.1', family: 4, subnet: '10.0.0.0/24' }],
  routes: [{ dst: '0.0.0.0/0', gw: '10.0.0.1' }],
  labels: {},
  metadata: { 'cni:network': 'train' },
  identity: 0,
  externalIpam: false,
  createdAt: '',
};
const agent = http.createServer((req, res) => {
  req.resume();
  req.on('end', () => {
    const send = (status, body) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    if (req.method === 'POST') return send(201, ep);
    if (req.method === 'DELETE') return send(200, { deleted: true });
    if (req.url === '/v1/healthz') return send(200, { ok: true });
    if (req.url === '/v1/ipam')
      return send(200, {
        pools: [
          {
            name: 'default',
            subnets: [{ cidr: '10.0.0.0/24', gateway: '10.0.0.1', size: '253', allocated: 1 }],
            allocations: [],
          },
        ],
      });
    if (req.url.startsWith('/v1/endpoints?') || req.url === '/v1/endpoints') return send(200, { items: [ep] });
    if (req.url.endsWith('?check=1')) return send(200, { endpoint: ep, healthy: true, problems: [] });
    return send(200, ep);
  });
});

/** One plugin invocation: the bundle's main() with this env and stdin; output swallowed. */
function invoke(env, stdin) {
  const saved = { env: process.env, exit: process.exit, read: fs.readFileSync, readSync: fs.readSync, write: fs.writeSync };
  process.env = { PATH: saved.env.PATH, ...env };
  fs.readFileSync = (f, ...rest) => (f === 0 ? Buffer.from(stdin) : saved.read(f, ...rest));
  // stdin as main.ts reads it: chunks from fd 0 until a complete document or EOF
  let stdinAt = 0;
  const input = Buffer.from(stdin);
  fs.readSync = (fd, buf, off, len, ...rest) => {
    if (fd !== 0) return saved.readSync(fd, buf, off, len, ...rest);
    const n = input.copy(buf, off, stdinAt, Math.min(input.length, stdinAt + len));
    stdinAt += n;
    return n;
  };
  fs.writeSync = (fd, ...rest) => (fd === 1 || fd === 2 ? 0 : saved.write(fd, ...rest));
  return new Promise((resolve) => {
    process.exit = (code) => {
      Object.assign(process, { env: saved.env, exit: saved.exit });
      Object.assign(fs, { readFileSync: saved.read, readSync: saved.readSync, writeSync: saved.write });
      resolve(code ?? 0);
    };
    const module = { exports: {} };
    script.runInThisContext()(module.exports, require, module, bundleFile, path.dirname(bundleFile));
  });
}

agent.listen(socket, async () => {
  try {
    const conf = {
      cniVersion: '1.0.0',
      name: 'train',
      type: 'membrane-cni',
      agentSocket: socket,
      stateDir: dir,
      runtimeConfig: { portMappings: [{ hostPort: 1, containerPort: 2 }] },
    };
    const att = {
      CNI_CONTAINERID: 'train',
      CNI_NETNS: '/proc/self/ns/net',
      CNI_IFNAME: 'eth0',
      CNI_PATH: '/usr/lib/cni',
      CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAMESPACE=a;K8S_POD_NAME=b',
    };
    const codes = [];
    codes.push(await invoke({ CNI_COMMAND: 'VERSION' }, '{"cniVersion":"1.0.0"}'));
    codes.push(await invoke({ ...att, CNI_COMMAND: 'ADD' }, JSON.stringify(conf)));
    const prevResult = {
      cniVersion: '1.0.0',
      interfaces: [
        { name: ep.hostIfName, mac: ep.hostMac },
        { name: 'eth0', mac: ep.mac, sandbox: '/proc/self/ns/net' },
      ],
      ips: [{ address: '10.0.0.2/32', gateway: '10.0.0.1', interface: 1 }],
      routes: ep.routes,
    };
    codes.push(await invoke({ ...att, CNI_COMMAND: 'CHECK' }, JSON.stringify({ ...conf, prevResult })));
    codes.push(await invoke({ ...att, CNI_COMMAND: 'DEL' }, JSON.stringify({ ...conf, prevResult })));
    codes.push(
      await invoke({ CNI_COMMAND: 'STATUS', CNI_PATH: '/usr/lib/cni' }, JSON.stringify({ ...conf, cniVersion: '1.1.0' })),
    );
    codes.push(
      await invoke(
        { CNI_COMMAND: 'GC', CNI_PATH: '/usr/lib/cni' },
        JSON.stringify({ ...conf, cniVersion: '1.1.0', 'cni.dev/valid-attachments': [{ containerID: 'train', ifname: 'eth0' }] }),
      ),
    );
    codes.push(await invoke({ ...att, CNI_COMMAND: 'ADD' }, '{"not json'));
    const want = [0, 0, 0, 0, 0, 0, 1];
    if (codes.join() !== want.join()) throw new Error(`training runs exited ${codes}, expected ${want}`);
    fs.writeFileSync(cacheFile, script.createCachedData());
  } catch (e) {
    process.stderr.write(`train: ${e.stack ?? e}\n`);
    process.exitCode = 1;
  } finally {
    agent.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
