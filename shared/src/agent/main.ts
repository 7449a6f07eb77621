// membrane-agent entry point.
import fs from 'node:fs';
import { helpText, parseFlags, resolveConfig } from './config.ts';
import { clusterSettings } from './cluster.ts';
import { createLogger } from '../log.ts';
import { Agent } from './agent.ts';

async function main(): Promise<void> {
  let cfg;
  try {
    if (parseFlags(process.argv.slice(2)).help) { process.stdout.write(helpText()); return; }
    cfg = resolveConfig(process.argv.slice(2), process.env, (p) => fs.readFileSync(p, 'utf8'));
    clusterSettings(cfg);
  } catch (e) {
    process.stderr.write(`membrane-agent: ${(e as Error).message}\n`);
    process.exit(2);
  }
  const log = createLogger({ level: cfg.logLevel, name: 'membrane-agent' });
  let agent: Agent;
  try {
    agent = await Agent.start(cfg, log);
  } catch (err) {
    log.fatal({ err }, 'agent failed to start');
    process.stderr.write(`membrane-agent: ${(err as Error).message}\n`);
    process.exit(1);
  }
  let stopping = false;
  const shutdown = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'shutting down; the datapath keeps forwarding');
    agent.stop().then(() => process.exit(0), (err) => { log.error({ err }, 'unclean shutdown'); process.exit(1); });
  };
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
}

void main();
