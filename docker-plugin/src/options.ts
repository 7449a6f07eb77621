// `docker network create -o key=value` options and the core NetworkSpec built from a CreateNetwork.
import type { NetworkSpec } from '../../shared/src/types.ts';
import {
  addressOnly,
  cidrContains,
  formatCidr,
  normalizeIp,
  parseCidr,
  type Cidr,
  type Family,
} from '../../shared/src/net/index.ts';
import type { CreateNetworkRequest, IpamData } from './schemas.ts';
import { PluginError, short } from './errors.ts';

export const GENERIC = 'com.docker.network.generic';
/** Options we understand; `membrane.*` keys outside this list are refused (typos must not pass silently). */
export const KNOWN_OPTIONS: Record<string, string> = {
  'membrane.mtu': "MTU of the containers' interfaces, 576-65535 (1280+ with IPv6)",
};
/** Bridge-driver spelling of the MTU, accepted so `-o com.docker.network.driver.mtu=` works too. */
const MTU_ALIASES = ['membrane.mtu', 'com.docker.network.driver.mtu'];

export interface ParsedOptions {
  mtu?: number;
  /** Options that are not ours (kept for `docker network inspect` users; not interpreted). */
  foreign: Record<string, string>;
}

export function coreNetworkName(networkId: string): string {
  return `docker-${short(networkId)}`;
}

/** Validates the driver options (-o). Throws PluginError naming the bad option. */
export function parseDriverOptions(options: Record<string, unknown>, networkId: string, hasV6: boolean): ParsedOptions {
  const raw = options[GENERIC];
  const generic: Record<string, unknown> = raw && typeof raw === 'object' ? (raw as Record<string, unknown>) : {};
  const out: ParsedOptions = { foreign: {} };
  const net = `network ${short(networkId)}`;
  for (const [key, value] of Object.entries(generic)) {
    if (typeof value !== 'string') throw new PluginError(`${net}: option ${key} must be a string, got ${JSON.stringify(value)}`);
    if (key.startsWith('membrane.') && !(key in KNOWN_OPTIONS)) {
      const known = Object.entries(KNOWN_OPTIONS)
        .map(([k, v]) => `${k} (${v})`)
        .join(', ');
      throw new PluginError(`${net}: unknown option -o ${key}; membrane networks accept: ${known}`);
    }
    if (MTU_ALIASES.includes(key)) {
      const mtu = Number(value);
      const min = hasV6 ? 1280 : 576;
      if (!/^\d+$/.test(value.trim()) || !Number.isInteger(mtu) || mtu < min || mtu > 65535) {
        throw new PluginError(
          `${net}: -o ${key}=${value} is not a valid MTU (an integer from ${min} to 65535${hasV6 ? ', IPv6 needs 1280 or more' : ''})`,
        );
      }
      if (out.mtu !== undefined && out.mtu !== mtu)
        throw new PluginError(`${net}: two different MTUs given (${out.mtu} and ${mtu})`);
      out.mtu = mtu;
      continue;
    }
    if (!key.startsWith('membrane.')) out.foreign[key] = value;
  }
  return out;
}

/** "10.1.0.1/24" -> "10.1.0.1"; "" stays "". Throws on anything that is not an address. */
export function stripPrefix(cidrOrIp: string, what: string): string {
  if (!cidrOrIp) return '';
  try {
    return normalizeIp(addressOnly(cidrOrIp));
  } catch {
    throw new PluginError(`${what} "${cidrOrIp}" is not an IP address`);
  }
}

export interface NetworkPlan {
  spec: NetworkSpec;
  subnets: { pool: string; gateway: string; family: Family }[];
  options: ParsedOptions;
}

/** Turns a CreateNetwork request into the core network spec, checking what the core cannot phrase for Docker. */
export function planNetwork(req: CreateNetworkRequest): NetworkPlan {
  const net = `network ${short(req.NetworkID)}`;
  const v4 = req.IPv4Data.filter((d) => d.Pool);
  const v6 = req.IPv6Data.filter((d) => d.Pool);
  if (v4.length > 1 || v6.length > 1) {
    throw new PluginError(
      `${net}: a membrane network takes at most one IPv4 and one IPv6 subnet (got ${v4.length} IPv4, ${v6.length} IPv6); create one network per subnet`,
    );
  }
  if (!v4.length && !v6.length) throw new PluginError(`${net}: no subnet given (use --subnet)`);
  const subnets: NetworkPlan['subnets'] = [];
  for (const [data, family] of [...v4.map((d) => [d, 4] as const), ...v6.map((d) => [d, 6] as const)]) {
    subnets.push(checkSubnet(data, family, net));
  }
  const options = parseDriverOptions(req.Options, req.NetworkID, v6.length > 0);
  const spec: NetworkSpec = {
    name: coreNetworkName(req.NetworkID),
    subnets: subnets.map((s) => s.pool),
    gateways: subnets.map((s) => s.gateway).filter(Boolean),
    options: { 'docker.network-id': req.NetworkID },
    ...(options.mtu !== undefined ? { mtu: options.mtu } : {}),
  };
  return { spec, subnets, options };
}

function checkSubnet(data: IpamData, family: Family, net: string): { pool: string; gateway: string; family: Family } {
  let c: Cidr;
  try {
    c = parseCidr(data.Pool);
  } catch (e) {
    throw new PluginError(`${net}: subnet ${(e as Error).message}`);
  }
  if (c.family !== family) throw new PluginError(`${net}: subnet ${data.Pool} is not an IPv${family} subnet`);
  const pool = formatCidr(c);
  if (pool !== data.Pool) throw new PluginError(`${net}: subnet ${data.Pool} has host bits set (did you mean ${pool}?)`);
  const gateway = stripPrefix(data.Gateway, `${net}: gateway`);
  if (gateway && !cidrContains(c, gateway)) throw new PluginError(`${net}: gateway ${gateway} is outside subnet ${pool}`);
  return { pool, gateway, family };
}
