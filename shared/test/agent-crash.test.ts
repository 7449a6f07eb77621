// An error nobody handled is logged with its origin and ends the process (status 70) so that the
// supervisor restarts the agent from its journal: never swallowed.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const SRC = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../src');

function run(trigger: string) {
  const script = `import { exitOnUnexpectedErrors } from ${JSON.stringify(path.join(SRC, 'agent/crash.ts'))};
import { createLogger } from ${JSON.stringify(path.join(SRC, 'log.ts'))};
exitOnUnexpectedErrors(createLogger({ name: 'membrane-agent' }));
setTimeout(() => { console.log('still running'); }, 500);
${trigger}`;
  const env = { ...process.env };
  delete env.NODE_EXTRA_CA_CERTS;
  return spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    encoding: 'utf8',
    env,
    timeout: 30_000,
  });
}

t.test('an unhandled rejection: logged fatal with its reason, exit 70', async (t) => {
  const r = run("void Promise.reject(new Error('boom in a create'));");
  t.equal(r.status, 70);
  t.notMatch(r.stdout, /still running/, 'the process does not go on');
  const line = r.stderr.split('\n').find((l) => l.startsWith('{'));
  t.match(JSON.parse(line ?? '{}'), {
    level: 60,
    origin: 'unhandledRejection',
    err: { message: 'boom in a create' },
    msg: /exiting so that the agent restarts/,
  });
});

t.test('an uncaught exception in a callback: the same', async (t) => {
  const r = run("setImmediate(() => { throw new TypeError('bad map write'); });");
  t.equal(r.status, 70);
  t.match(r.stderr, /"origin":"uncaughtException"/);
  t.match(r.stderr, /TypeError: bad map write/);
});
