// The runtime side of CNI, as libcni does it for a conflist: ADD in order threading prevResult, DEL in
// reverse with the final result, CHECK in order, runtimeConfig injected per plugin from its capabilities.
import { invokeCni, type Outcome } from './exec.ts';

export interface ConfList {
  cniVersion: string;
  name: string;
  plugins: ({ type: string; capabilities?: Record<string, boolean> } & Record<string, unknown>)[];
}
export interface Attachment {
  containerId: string;
  netns: string;
  ifName?: string;
  args?: string;
  capabilityArgs?: Record<string, unknown>;
}

export class ChainError extends Error {
  constructor(
    readonly plugin: string,
    readonly outcome: Outcome,
  ) {
    super(`${plugin} failed (${outcome.code}): ${outcome.stdout}${outcome.stderr}`);
  }
}

export function pluginConf(
  list: ConfList,
  i: number,
  att: Attachment | undefined,
  prevResult?: unknown,
): Record<string, unknown> {
  const p = list.plugins[i];
  const conf: Record<string, unknown> = { ...p, cniVersion: list.cniVersion, name: list.name };
  const rc: Record<string, unknown> = {};
  for (const [cap, on] of Object.entries(p.capabilities ?? {}))
    if (on && att?.capabilityArgs?.[cap] !== undefined) rc[cap] = att.capabilityArgs[cap];
  if (Object.keys(rc).length) conf.runtimeConfig = rc;
  if (prevResult !== undefined) conf.prevResult = prevResult;
  return conf;
}

/** `binFor(type)` gives the executable; CNI_PATH is `cniPath`. */
export function makeRuntime(binFor: (type: string) => string, cniPath: string) {
  const call = async (verb: string, list: ConfList, i: number, att: Attachment, prev?: unknown) => {
    const type = list.plugins[i].type;
    const r = await invokeCni(verb, pluginConf(list, i, att, prev), {
      containerId: att.containerId,
      netns: att.netns,
      ifName: att.ifName ?? 'eth0',
      args: att.args ?? '',
      path: cniPath,
      bin: binFor(type),
    });
    if (r.code !== 0) throw new ChainError(`${type} ${verb}`, r);
    return r;
  };
  return {
    async add(list: ConfList, att: Attachment): Promise<any> {
      let prev: unknown;
      for (let i = 0; i < list.plugins.length; i++) prev = (await call('ADD', list, i, att, prev)).out;
      return prev;
    },
    /** `skip`: plugin types not to CHECK (a reference plugin's own CHECK bug). */
    async check(list: ConfList, att: Attachment, result: unknown, skip: string[] = []): Promise<void> {
      for (let i = 0; i < list.plugins.length; i++)
        if (!skip.includes(list.plugins[i].type)) await call('CHECK', list, i, att, result);
    },
    async del(list: ConfList, att: Attachment, result?: unknown): Promise<void> {
      for (let i = list.plugins.length - 1; i >= 0; i--) await call('DEL', list, i, att, result);
    },
  };
}
