// ADD: (delegated IPAM) -> agent creates the endpoint -> Result in the request's version.
import fs from 'node:fs';
import type { Endpoint, EndpointRequest } from '../../../shared/src/types.ts';
import { AgentUnreachableError } from '../../../shared/src/api/client.ts';
import { ipamType, type Invocation } from '../context.ts';
import { CniCode, CniError, fromAgentError } from '../errors.ts';
import { endpointRequest } from '../request.ts';
import { addressOnly } from '../../../shared/src/net/index.ts';
import { appendResult, endpointToResult, formatResult, mergeDns, parseResult, type Result } from '../result.ts';

export async function cmdAdd(inv: Invocation): Promise<string> {
  requireNetns(inv.env.netns);
  const prev = inv.conf.prevResult ? parseResult(inv.conf.prevResult, 'prevResult') : undefined;
  const ipam = ipamType(inv) ? ipamAdd(inv) : undefined;
  try {
    const ep = await createEndpoint(
      inv,
      endpointRequest(
        inv.conf,
        inv.env,
        ipam?.ips.map((ip) => addressOnly(ip.address)),
      ),
    );
    const ours = endpointToResult(ep, inv.env.netns, mergeDns(inv.conf.dns, ipam?.dns));
    inv.log.info('endpoint created', { ips: ep.ips.map((i) => i.address), hostIf: ep.hostIfName });
    return JSON.stringify(formatResult(appendResult(prev, ours), inv.version));
  } catch (e) {
    if (ipam) ipamRelease(inv);
    throw e;
  }
}

function requireNetns(netns: string): void {
  try {
    fs.statSync(netns);
  } catch (e) {
    throw new CniError(CniCode.INVALID_ENV, `CNI_NETNS ${netns} cannot be opened`, (e as Error).message);
  }
}

function ipamAdd(inv: Invocation): Result {
  const type = ipamType(inv)!;
  const { stdout } = inv.exec({ type, verb: 'ADD', stdin: inv.stdin, cniPath: inv.env.path });
  let json: unknown;
  try {
    json = JSON.parse(stdout);
  } catch {
    throw new CniError(CniCode.DELEGATE_FAILED, `ipam plugin ${type} ADD printed no JSON result`, stdout.slice(0, 300));
  }
  const r = parseResult(json, `ipam plugin ${type} result`);
  if (!r.ips.length)
    throw new CniError(
      CniCode.DELEGATE_FAILED,
      `ipam plugin ${type} allocated no address for ${inv.env.containerId}/${inv.env.ifName}`,
    );
  inv.log.info('ipam allocated', { type, ips: r.ips.map((i) => i.address) });
  return r;
}

/** Undo of a delegated allocation after a failed ADD (best effort: the runtime's DEL repeats it). */
function ipamRelease(inv: Invocation): void {
  const type = ipamType(inv)!;
  try {
    inv.exec({ type, verb: 'DEL', stdin: inv.stdin, cniPath: inv.env.path });
  } catch (e) {
    inv.log.warn('ipam release after failed ADD failed', { type, err: (e as Error).message });
  }
}

async function createEndpoint(inv: Invocation, req: EndpointRequest): Promise<Endpoint> {
  try {
    return await inv.agent().createEndpoint(req);
  } catch (e) {
    if (e instanceof AgentUnreachableError && /no answer within/.test(e.reason)) await cleanupAfterTimeout(inv);
    const err = fromAgentError(e, `ADD ${inv.env.containerId}/${inv.env.ifName}`);
    throw new CniError(err.code, err.message, `${err.details ?? ''}; netns ${inv.env.netns}`);
  }
}

/** The agent may still finish a create we stopped waiting for: ask it to undo (the runtime's DEL follows too). */
async function cleanupAfterTimeout(inv: Invocation): Promise<void> {
  try {
    await inv.agent(2_000).deleteEndpoint(inv.env.containerId, inv.env.ifName);
  } catch (e) {
    inv.log.warn('delete after ADD timeout failed', { err: (e as Error).message });
  }
}
