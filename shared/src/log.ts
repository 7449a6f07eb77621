import pino from 'pino';

export type Logger = pino.Logger;

export function createLogger(opts: { level?: string; name?: string; destination?: number | string } = {}): Logger {
  return pino(
    { level: opts.level ?? 'info', name: opts.name ?? 'membrane', base: { pid: process.pid } },
    pino.destination({ dest: opts.destination ?? 2, sync: true }),
  );
}
