// What the agent does about errors nobody handled.
import type { Logger } from '../log.ts';

/**
 * An exception nobody caught, or a promise rejection nobody handled, means the agent's memory may no
 * longer match what it did: a create that will never finish still holds its endpoint's lock, a map
 * write may be half done. Going on would serve answers from that state. So it is logged (with the
 * error and where it came from) and the agent exits with status 70; the supervisor (systemd
 * Restart=always) starts it again, and the restart rebuilds memory from the journal and the kernel
 * (restore). Nothing is lost meanwhile: the datapath is pinned and keeps forwarding, membrane-cni
 * queues DELs, ADDs get "try again later". Never ignored silently.
 */
export function exitOnUnexpectedErrors(log: Logger): void {
  let exiting = false;
  const die = (err: unknown, origin: string) => {
    if (exiting) return;
    exiting = true;
    try {
      log.fatal(
        { err, origin },
        'unexpected error: exiting so that the agent restarts from its journal; the datapath keeps forwarding',
      );
    } catch {
      /* logging itself failed */
    }
    try {
      process.stderr.write(`membrane-agent: ${origin}: ${(err as Error)?.stack ?? String(err)}\n`);
    } catch {
      /* stderr gone */
    }
    process.exit(70);
  };
  process.on('uncaughtException', (err, origin) => die(err, origin));
  process.on('unhandledRejection', (reason) => die(reason, 'unhandledRejection'));
}
