// Talks to the plugin exactly as dockerd does: POST, no Content-Type, empty body for the handshake.
import http from 'node:http';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import crypto from 'node:crypto';
import pino from 'pino';
import { startDockerPlugin, type DockerPlugin } from '../src/index.ts';
import { fakeCore, type FakeCore } from './fake-core.ts';

export interface Reply {
  status: number;
  body: any;
  contentType: string | undefined;
}

export function call(socketPath: string, p: string, body?: unknown, method = 'POST'): Promise<Reply> {
  const payload = body === undefined ? Buffer.alloc(0) : Buffer.from(typeof body === 'string' ? body : JSON.stringify(body));
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        socketPath,
        path: p,
        method,
        headers: { Accept: 'application/vnd.docker.plugins.v1.2+json', 'Content-Length': payload.length, Host: '' },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let parsed: unknown = text;
          try {
            parsed = JSON.parse(text);
          } catch {
            /* keep the text */
          }
          resolve({ status: res.statusCode ?? 0, body: parsed, contentType: res.headers['content-type'] });
        });
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}

export const hex64 = () => crypto.randomBytes(32).toString('hex');

export interface Harness {
  core: FakeCore;
  plugin: DockerPlugin;
  dir: string;
  stateDir: string;
  name: string;
  call(p: string, body?: unknown): Promise<Reply>;
  /** Stop and start the plugin on the same state dir and core (an agent restart). */
  restart(): Promise<void>;
  close(): Promise<void>;
}

export async function harness(opts: { core?: FakeCore } = {}): Promise<Harness> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbr-dp-unit-'));
  const stateDir = path.join(dir, 'state');
  const core = opts.core ?? (await fakeCore());
  const name = `mbrunit${crypto.randomBytes(3).toString('hex')}`;
  const log = pino({ level: process.env.PLUGIN_LOG ?? 'silent' });
  const start = () => startDockerPlugin({ core, name, pluginDir: dir, stateDir, log });
  const h: Harness = {
    core,
    dir,
    stateDir,
    name,
    plugin: await start(),
    call: (p, body) => call(h.plugin.socketPath, p, body),
    async restart() {
      await h.plugin.close();
      h.plugin = await start();
    },
    async close() {
      await h.plugin.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  return h;
}

/** A CreateNetwork body shaped like the trace. */
export function createNetworkBody(
  networkId: string,
  v4?: { pool: string; gateway: string; space?: string },
  opts: {
    generic?: Record<string, unknown>;
    v6?: { pool: string; gateway: string; space?: string };
  } = {},
) {
  const data = (d: { pool: string; gateway: string; space?: string }) => ({
    AddressSpace: d.space ?? 'LocalDefault',
    Gateway: `${d.gateway}/${d.pool.split('/')[1]}`,
    Pool: d.pool,
  });
  return {
    NetworkID: networkId,
    Options: { 'com.docker.network.enable_ipv6': !!opts.v6, 'com.docker.network.generic': opts.generic ?? {} },
    IPv4Data: v4 ? [data(v4)] : [],
    IPv6Data: opts.v6 ? [data(opts.v6)] : [],
  };
}

export function createEndpointBody(networkId: string, endpointId: string, address: string, addressV6 = '', mac = '') {
  return {
    NetworkID: networkId,
    EndpointID: endpointId,
    Interface: { Address: address, AddressIPv6: addressV6, MacAddress: mac },
    Options: { 'com.docker.network.endpoint.exposedports': [], 'com.docker.network.portmap': [] },
  };
}

export function joinBody(networkId: string, endpointId: string) {
  return {
    NetworkID: networkId,
    EndpointID: endpointId,
    SandboxKey: `/var/run/docker/netns/${endpointId.slice(0, 12)}`,
    Options: { 'com.docker.network.endpoint.exposedports': [], 'com.docker.network.portmap': [] },
  };
}
