// Errors the plugin answers with. dockerd shows the text to the user ("Error response from daemon: …"),
// so every message says what failed, on which Docker object, and what to do about it when we know.

export class PluginError extends Error {
  constructor(message: string) { super(message); this.name = 'PluginError'; }
}

/** First 12 hex of a Docker id, as `docker network ls` / `docker ps` print them. */
export function short(id: string): string {
  return id.slice(0, 12);
}

/** Text of any error thrown by the core (NetworkError, EndpointError, IpamError carry a `code`). */
export function coreMessage(err: unknown): string {
  const e = err as { code?: unknown; message?: unknown };
  const msg = typeof e?.message === 'string' && e.message ? e.message : String(err);
  switch (e?.code) {
    case 'pool_exhausted': return `${msg} (remove unused containers or create the network with a larger --subnet)`;
    case 'address_in_use': return `${msg} (pick another --ip)`;
    case 'address_out_of_range': return `${msg} (--ip must lie inside the network's --subnet)`;
    default: return msg;
  }
}

/** Wraps a core failure as "<what we were doing>: <why>". */
export function wrap(what: string, err: unknown): PluginError {
  if (err instanceof PluginError) return err;
  return new PluginError(`${what}: ${coreMessage(err)}`);
}

export function errorCode(err: unknown): string | undefined {
  const c = (err as { code?: unknown })?.code;
  return typeof c === 'string' ? c : undefined;
}
