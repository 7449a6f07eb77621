// membrane-agent entry point.
import fs from 'node:fs';
import { helpText, parseFlags, resolveConfig } from './config.ts';
import { clusterSettings } from './cluster.ts';
import { createLogger } from '../log.ts';
import { Agent } from './agent.ts';
import { exitOnUnexpectedErrors } from './crash.ts';
import { limitMallocArenas, singleReducerGc } from './idle-memory.ts';

async function main(): Promise<void> {
  limitMallocArenas();
  singleReducerGc();
  let cfg;
  try {
    if (parseFlags(process.argv.slice(2)).help) {
      process.stdout.write(helpText());
      return;
    }
    cfg = resolveConfig(process.argv.slice(2), process.env, (p) => fs.readFileSync(p, 'utf8'));
    clusterSettings(cfg);
  } catch (e) {
    process.stderr.write(`membrane-agent: ${(e as Error).message}\n`);
    process.exit(2);
  }
  const log = createLogger({ level: cfg.logLevel, name: 'membrane-agent' });
  exitOnUnexpectedErrors(log);
  let agent: Agent;
  try {
    agent = await Agent.start(cfg, log);
  } catch (err) {
    log.fatal({ err }, 'agent failed to start');
    process.stderr.write(`membrane-agent: ${(err as Error).message}\n`);
    process.exit(1);
  }
  // The launcher (scripts/compile-cache-launcher.cjs) keeps what the start compiled for the next one.
  (process as NodeJS.EventEmitter).emit('membrane:ready');
  let stopping = false;
  const shutdown = (signal: string) => {
    if (stopping) {
      // A second signal: the operator will not wait. Nothing is lost: every acknowledged change is
      // on disk, the datapath is pinned, and the next start restores from both.
      log.warn({ signal }, 'second signal: exiting now');
      process.exit(1);
    }
    stopping = true;
    log.info({ signal }, 'shutting down; the datapath keeps forwarding');
    // A part that never finishes closing (a hung netns, an unreachable etcd) must not keep a dead
    // agent holding the state-dir lock: the stop has a deadline.
    const deadline = setTimeout(() => {
      log.error({ seconds: STOP_DEADLINE_MS / 1000 }, 'shutdown did not finish in time: exiting anyway');
      process.exit(1);
    }, STOP_DEADLINE_MS);
    deadline.unref();
    agent.stop().then(
      () => process.exit(0),
      (err) => {
        log.error({ err }, 'unclean shutdown');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
}

/** How long SIGTERM waits for the parts to close (systemd's TimeoutStopSec is 90 s by default). */
const STOP_DEADLINE_MS = 20_000;

void main();
