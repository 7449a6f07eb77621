// membrane-proxy: one L7 proxy worker, started by the agent (see l7/manager.ts), never by hand.
//   membrane-proxy --control SOCKET --port PORT --index N --watch DIR [--listeners MAP_PIN]
//                  [--max-conns-per-source N]
import { createLogger } from '../../log.ts';
import { VERSION } from '../../version.ts';
import { enableLinearRegexps } from '../http/regex.ts';
import { ProxyWorker } from './worker.ts';

function arg(name: string): string {
  const i = process.argv.indexOf(`--${name}`);
  const v = i >= 0 ? process.argv[i + 1] : undefined;
  if (!v) {
    process.stderr.write(`membrane-proxy: --${name} is required (the agent starts this process)\n`);
    process.exit(2);
  }
  return v;
}

function optionalArg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

const index = Number(arg('index'));
const log = createLogger({ name: `membrane-proxy-${index}`, level: process.env.MEMBRANE_LOG_LEVEL ?? 'info' });
process.title = `membrane-proxy ${index}`;
enableLinearRegexps();
new ProxyWorker({
  control: arg('control'),
  port: Number(arg('port')),
  index,
  version: VERSION,
  watchPath: arg('watch'),
  listenersMap: optionalArg('listeners'),
  maxConnsPerSource: Number(optionalArg('max-conns-per-source') ?? 0),
  log: (msg, extra) => log.info(extra ?? {}, msg),
}).start();
process.on('SIGTERM', () => process.exit(0));
process.on('uncaughtException', (err) => {
  log.fatal({ err }, 'proxy worker crashed');
  process.exit(1);
});
