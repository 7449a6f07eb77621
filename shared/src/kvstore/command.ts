// What the cluster executables (membrane-operator, membrane-relay) share on their command line: the
// kvstore flags (checked by kvstoreOptions), whole-number and duration arguments, and how they stop.
// The agent has its own option table (agent/config-options.ts): it also reads a config file.
import { type Command, InvalidArgumentError, Option } from 'commander';

/** --cluster-name, --kvstore, --kvstore-endpoints and the etcd client TLS files. */
export function addKvstoreFlags(cmd: Command): Command {
  return cmd
    .option('--cluster-name <name>', 'cluster name (env MEMBRANE_CLUSTER_NAME)', process.env.MEMBRANE_CLUSTER_NAME ?? 'default')
    .addOption(new Option('--kvstore <type>', 'cluster store').choices(['etcd']).default('etcd'))
    .option(
      '--kvstore-endpoints <urls>',
      'etcd client URLs, comma-separated (env MEMBRANE_KVSTORE_ENDPOINTS)',
      process.env.MEMBRANE_KVSTORE_ENDPOINTS,
    )
    .option('--kvstore-ca <file>', 'CA bundle for https endpoints')
    .option('--kvstore-cert <file>', 'client certificate')
    .option('--kvstore-key <file>', 'client key');
}

/** A whole number from `min` to `max`. */
export const wholeNumber = (flag: string, min: number, max: number) => (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max)
    throw new InvalidArgumentError(`${flag} "${v}" must be a whole number from ${min} to ${max}`);
  return n;
};

/** "500ms", "30s", "5m", or a bare number meaning `unit`: the duration in `unit`. */
export const duration = (flag: string, unit: 's' | 'ms') => (v: string) => {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(v);
  if (!m) throw new InvalidArgumentError(`${flag} "${v}" is not a duration (e.g. 500ms, 30s, 5m)`);
  const n = Number(m[1]);
  const suffix = m[2] ?? unit;
  if (unit === 's') return suffix === 'ms' ? n / 1000 : suffix === 'm' ? n * 60 : n;
  return suffix === 's' ? n * 1000 : suffix === 'm' ? n * 60_000 : n;
};

/** On SIGTERM or SIGINT: logs `message`, runs `stop` once (3 s at most), exits 0. Returns whether
 *  stopping has begun (for loops that must not start another round). */
export function stopOnSignal(
  log: { info(o: object, msg: string): void },
  message: string,
  stop: () => Promise<void>,
): () => boolean {
  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, message);
    // Stopping is a courtesy (peers and leases time out anyway); never hang on it.
    setTimeout(() => process.exit(0), 3_000).unref();
    await stop().catch(() => undefined);
    process.exit(0);
  };
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  process.on('SIGINT', () => void shutdown('SIGINT'));
  return () => stopping;
}

/** Runs an executable's main: an error that escapes it is one line on stderr and exit code 1. */
export function runMain(name: string, main: () => Promise<void>): void {
  main().catch((err) => {
    process.stderr.write(`${name}: ${(err as Error).message}\n`);
    process.exit(1);
  });
}
