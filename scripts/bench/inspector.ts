// A minimal Chrome DevTools protocol client for the bench scripts that profile a running worker or agent
// (l7-alloc.ts, l7-agent-cpu.ts) through its inspector.
import fs from 'node:fs';
import { sleep } from './lib.ts';
import { stdoutPath } from './v8-gc-trace.ts';

export type Inspector = { call(method: string, params?: object): Promise<unknown>; close(): void };

/** The inspector of process `pid`, started with --inspect=127.0.0.1:0: its URL read from the process's
 *  stdout log (`what` names the process in the error when it is not there within 5 s). */
export async function inspectorOf(pid: number, what: string): Promise<Inspector> {
  const log = stdoutPath(pid);
  let url: string | undefined;
  for (let i = 0; i < 50 && !url; i++, await sleep(100))
    url = log && /Debugger listening on (ws:\/\/127\.0\.0\.1:\d+\/[\w-]+)/.exec(fs.readFileSync(log, 'utf8'))?.[1];
  if (!url) throw new Error(`no inspector URL in the ${what}'s log (${log})`);
  return inspector(url);
}

/** A minimal Chrome DevTools protocol client over the inspector's WebSocket (Node 20's WebSocket is
 *  behind --experimental-websocket). */
export async function inspector(
  url: string,
): Promise<{ call(method: string, params?: object): Promise<unknown>; close(): void }> {
  if (typeof WebSocket === 'undefined') throw new Error('run with node --experimental-websocket');
  const ws = new WebSocket(url);
  await new Promise((ok, fail) => {
    ws.onopen = ok;
    ws.onerror = fail;
  });
  let id = 0;
  const waiting = new Map<number, (r: unknown) => void>();
  ws.onmessage = (e) => {
    const m = JSON.parse(String(e.data)) as { id?: number; result?: unknown; error?: unknown };
    if (m.id !== undefined) waiting.get(m.id)?.(m.error ? Promise.reject(new Error(JSON.stringify(m.error))) : m.result);
  };
  return {
    call: (method, params = {}) =>
      new Promise((ok) => {
        waiting.set(++id, ok);
        ws.send(JSON.stringify({ id, method, params }));
      }),
    close: () => ws.close(),
  };
}
