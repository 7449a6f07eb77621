// The plugin takes the configuration once it is a complete JSON document: it does not wait for the
// runtime to close stdin (that close comes a scheduling round of the runtime later), and a document
// split over several writes is still read whole.
import t from 'tap';
import { spawn } from 'node:child_process';
import { CNI_BIN, ensureCniBinary, runtimeEnv } from './lib/exec.ts';

ensureCniBinary();

/** Runs VERSION with stdin fed by `feed` and never closed; resolves with stdout once it exits. */
function versionWithOpenStdin(feed: (write: (s: string) => void) => void): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(CNI_BIN, [], { env: runtimeEnv({ CNI_COMMAND: 'VERSION' }), stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (c) => {
      out += c;
    });
    child.on('error', reject);
    child.stdin.on('error', () => undefined);
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, out });
    });
    feed((s) => child.stdin.write(s));
  });
}

t.test('a complete configuration is taken while stdin stays open', async (t) => {
  const r = await versionWithOpenStdin((write) => write('{"cniVersion":"0.4.0"}\n'));
  t.equal(r.code, 0, 'exits by itself (killed after 20 s otherwise)');
  t.equal(JSON.parse(r.out).cniVersion, '0.4.0', "answers in the caller's version: it read the document");
});

t.test('a document split over writes is read whole', async (t) => {
  const r = await versionWithOpenStdin((write) => {
    write('{"cniVersion":');
    setTimeout(() => write('"1.0.0"}'), 200);
  });
  t.equal(r.code, 0);
  t.equal(JSON.parse(r.out).cniVersion, '1.0.0', 'the version from the second part');
});
