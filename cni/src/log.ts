// Logging for a short-lived plugin: synchronous appends to the configured file (one JSON line per event),
// never to stdout. Errors also go to stderr, which runtimes copy into their own logs.
import fs from 'node:fs';
import path from 'node:path';

export type Level = 'debug' | 'info' | 'warn' | 'error';
const RANK: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
  /** Fields added to every later line (verb, container id, ...). */
  bind(fields: Record<string, unknown>): void;
}

export function createLogger(opts: { file?: string; level?: Level; stderr?: (line: string) => void }): Logger {
  const min = RANK[opts.level ?? 'info'];
  const bound: Record<string, unknown> = { pid: process.pid };
  const toStderr =
    opts.stderr ??
    ((line: string) => {
      try {
        fs.writeSync(2, line);
      } catch {
        /* nowhere left */
      }
    });
  let fileOk = Boolean(opts.file);

  const write = (level: Level, msg: string, fields?: Record<string, unknown>) => {
    if (level === 'error') toStderr(`membrane-cni: ${msg}${fields?.details ? ` (${String(fields.details)})` : ''}\n`);
    if (!fileOk || RANK[level] < min) return;
    const line = JSON.stringify({ time: new Date().toISOString(), level, msg, ...bound, ...fields }) + '\n';
    try {
      appendLine(opts.file!, line);
    } catch (e) {
      fileOk = false;
      toStderr(`membrane-cni: cannot write log file ${opts.file}: ${(e as Error).message}\n`);
    }
  };
  return {
    debug: (m, f) => write('debug', m, f),
    info: (m, f) => write('info', m, f),
    warn: (m, f) => write('warn', m, f),
    error: (m, f) => write('error', m, f),
    bind: (f) => {
      Object.assign(bound, f);
    },
  };
}

function appendLine(file: string, line: string): void {
  try {
    fs.appendFileSync(file, line);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.appendFileSync(file, line);
  }
}
