// Errors the plugin answers with. dockerd shows the text to the user ("Error response from daemon: …"),
// so every message says what failed, on which Docker object, and what to do about it when we know.
// libnetwork has no error codes: the kind of a core error only adds its Docker hint (shared/src/errors.ts).
import { kindInfo, MembraneError } from '../../shared/src/errors.ts';

export class PluginError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PluginError';
  }
}

/** First 12 hex of a Docker id, as `docker network ls` / `docker ps` print them. */
export function short(id: string): string {
  return id.slice(0, 12);
}

/** Text of any error thrown by the core, with the hint its kind carries for Docker users. */
export function coreMessage(err: unknown): string {
  const msg = err instanceof Error && err.message ? err.message : String(err);
  const hint = err instanceof MembraneError ? kindInfo(err.code).docker : undefined;
  return hint ? `${msg} (${hint})` : msg;
}

/** Wraps a core failure as "<what we were doing>: <why>". */
export function wrap(what: string, err: unknown): PluginError {
  if (err instanceof PluginError) return err;
  return new PluginError(`${what}: ${coreMessage(err)}`);
}
