// Reading one setting's text (a number in range, on/off, --pool networks, the cluster routing and
// observer TLS combinations) with errors that name where the value came from.
import { TCP_CLIENT_LIMITS, type TcpClientLimits } from '../dns/tcp-clients.ts';
import { ifNameProblem, parseCidr } from '../net/index.ts';
import type { NetworkSpec } from '../types.ts';
import type { FileConfig } from './config-options.ts';
import type { ClusterFlags } from './config.ts';

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

/** A setting's text with where it came from (a flag or an environment variable), for errors. */
export type Given = { text: string; from: string };

/** Turns --pool values into networks: "CIDR", "CIDR,CIDR6" or "NAME=CIDR[,CIDR6]". */
export function poolsToNetworks(pools: string[], mtu?: number): NetworkSpec[] {
  const byName = new Map<string, string[]>();
  for (const p of pools) {
    const eq = p.indexOf('=');
    const name = eq > 0 ? p.slice(0, eq) : 'default';
    const cidrs = (eq > 0 ? p.slice(eq + 1) : p)
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean);
    if (!cidrs.length) throw new ConfigError(`--pool "${p}" names no CIDR`);
    for (const c of cidrs) {
      try {
        parseCidr(c);
      } catch (e) {
        throw new ConfigError(`--pool "${p}": ${(e as Error).message}`);
      }
    }
    byName.set(name, [...(byName.get(name) ?? []), ...cidrs]);
  }
  return [...byName].map(([name, subnets]) => ({ name, subnets, ...(mtu ? { mtu } : {}) }));
}

export function observerTls(
  certFile?: string,
  keyFile?: string,
  clientCaFile?: string,
  address?: string,
): { observerTls?: { certFile: string; keyFile: string; clientCaFile?: string } } {
  if (!certFile && !keyFile && !clientCaFile) return {};
  if (!certFile || !keyFile) throw new ConfigError('--observer-tls-cert-file and --observer-tls-key-file go together');
  if (!address) throw new ConfigError('--observer-tls-* secure the TCP listener: give --observer-address HOST:PORT too');
  return { observerTls: { certFile, keyFile, ...(clientCaFile ? { clientCaFile } : {}) } };
}

type TextOf = (key: 'routingMode' | 'tunnel' | 'tunnelPort' | 'tunnelDevice') => Given | undefined;

type DnsTcpKey = 'dnsProxyTcpMax' | 'dnsProxyTcpMaxPerClient' | 'dnsProxyTcpIdleTimeout';

/** --dns-proxy-tcp-max, --dns-proxy-tcp-max-per-client, --dns-proxy-tcp-idle-timeout. A per-client
 *  limit above the total could never bind: refused when given, and its default follows a total
 *  set below it (a node that allows 16 connections allows one pod all 16, not 64). */
export function dnsTcpLimits(text: (key: DnsTcpKey) => Given | undefined, file: FileConfig): TcpClientLimits {
  const RANGE = { min: 1, max: 65_536 };
  const max = int(text('dnsProxyTcpMax'), file.dnsProxyTcpMax, RANGE) ?? TCP_CLIENT_LIMITS.max;
  const given = text('dnsProxyTcpMaxPerClient');
  const perClient = int(given, file.dnsProxyTcpMaxPerClient, RANGE);
  if (perClient !== undefined && perClient > max)
    throw new ConfigError(
      `${given?.from ?? "the config file's dnsProxyTcpMaxPerClient"} ${perClient} is more than the ${max} TCP connections the DNS proxy keeps in all (--dns-proxy-tcp-max)`,
    );
  const idle = int(text('dnsProxyTcpIdleTimeout'), file.dnsProxyTcpIdleTimeout, { min: 1, max: 3600 });
  return {
    max,
    perClient: perClient ?? Math.min(TCP_CLIENT_LIMITS.perClient, max),
    idleMs: idle !== undefined ? idle * 1000 : TCP_CLIENT_LIMITS.idleMs,
  };
}

/** --routing-mode, --tunnel (Cilium's older spelling: `--tunnel disabled` is native routing), --tunnel-port, --tunnel-device. */
export function routingFlags(text: TextOf, file: FileConfig): Pick<ClusterFlags, 'routingMode' | 'tunnelPort' | 'tunnelDevice'> {
  const mode = text('routingMode');
  if (mode && mode.text !== 'tunnel' && mode.text !== 'native')
    throw new ConfigError(`${mode.from} "${mode.text}" is not tunnel or native`);
  const tunnel = text('tunnel');
  if (tunnel && tunnel.text !== 'vxlan' && tunnel.text !== 'disabled')
    throw new ConfigError(`${tunnel.from} "${tunnel.text}" is not vxlan or disabled (the overlay speaks VXLAN)`);
  const routingMode = (mode?.text ?? file.routingMode) as 'tunnel' | 'native' | undefined;
  const tunnelProto = tunnel?.text ?? file.tunnel;
  if (routingMode === 'tunnel' && tunnelProto === 'disabled')
    throw new ConfigError('--routing-mode tunnel needs a tunnel: drop --tunnel disabled (or use --routing-mode native)');
  if (routingMode === 'native' && tunnelProto === 'vxlan' && tunnel)
    throw new ConfigError('--routing-mode native uses no tunnel: drop --tunnel vxlan');
  const device = text('tunnelDevice')?.text ?? file.tunnelDevice ?? 'membrane_vxlan';
  const problem = ifNameProblem(device);
  if (problem) throw new ConfigError(`--tunnel-device "${device}" is not a valid interface name: it ${problem}`);
  return {
    routingMode: routingMode ?? (tunnelProto === 'disabled' ? 'native' : 'tunnel'),
    tunnelPort: int(text('tunnelPort'), file.tunnelPort, { min: 1, max: 65535 }) ?? 8472,
    tunnelDevice: device,
  };
}

export function int(
  v: Given | undefined,
  fallback: number | undefined,
  range: { min: number; max?: number },
): number | undefined {
  if (v === undefined) return fallback;
  const n = Number(v.text);
  if (!/^\d+$/.test(v.text.trim()) || n < range.min || (range.max !== undefined && n > range.max)) {
    throw new ConfigError(
      `${v.from} "${v.text}" is not a whole number from ${range.min}${range.max !== undefined ? ` to ${range.max}` : ' up'}`,
    );
  }
  return n;
}

export function onOff(v: Given | undefined, fallback: boolean): boolean {
  if (v === undefined) return fallback;
  if (['on', 'true', '1', 'yes'].includes(v.text)) return true;
  if (['off', 'false', '0', 'no'].includes(v.text)) return false;
  throw new ConfigError(`${v.from} "${v.text}" is not on or off`);
}
