// Random test subnets that two test files running at once (tap --jobs=2) never both hold. A random
// /24 alone collides now and then (the agent's pools: 32,768 choices, a few hundred agents a suite):
// two agents with one pool both hand out .2 and route it on the host, and one of them fails. A
// subnet is claimed by creating a file named after it (O_EXCL) holding the claiming process's pid;
// a claim whose process is gone (SIGKILL) is taken over. Claims last until the process exits.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

/** Claim files, on tmpfs (a reboot forgets them with everything else). */
export const CLAIM_DIR = '/run/membrane-test-subnets';

const mine: string[] = [];
let hooked = false;

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function create(file: string): boolean {
  try {
    fs.writeFileSync(file, String(process.pid), { flag: 'wx' });
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    return false;
  }
}

/** The claim's process is gone. Not a claim removed meanwhile (whoever removed it claims), nor an
 *  empty one younger than 10 s: a claim is created empty, then its pid is written. */
function stale(file: string): boolean {
  let text: string;
  let age: number;
  try {
    text = fs.readFileSync(file, 'utf8').trim();
    age = Date.now() - fs.statSync(file).mtimeMs;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw e;
  }
  const owner = Number(text || 0);
  if (!owner) return age > 10_000;
  return owner !== process.pid && !alive(owner);
}

function tryClaim(file: string): boolean {
  if (create(file)) return true;
  if (!stale(file)) return false;
  // The claimer died without releasing: take it over. Taking over is claimed too (mkdir is atomic):
  // of two processes that both found the claim stale, the second would otherwise remove the claim
  // the first had just written, and both would hold the prefix (2 of 8 processes at once, 1 in 200
  // takeovers). A process killed while holding the lock leaves it: that prefix is then skipped.
  const lock = `${file}.takeover`;
  try {
    fs.mkdirSync(lock);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw e;
  }
  try {
    if (!stale(file)) return false; // taken over by another before we held the lock
    fs.rmSync(file, { force: true });
    return create(file);
  } finally {
    fs.rmdirSync(lock);
  }
}

/** Claims the first free prefix `pick()` proposes (64 tries) for this process; returns it. `dir`:
 *  where the claims are (another for a test of the claims themselves). */
export function claimSubnet(pick: () => string, dir = CLAIM_DIR): string {
  fs.mkdirSync(dir, { recursive: true });
  if (!hooked) {
    hooked = true;
    process.once('exit', () => {
      for (const f of mine) fs.rmSync(f, { force: true });
    });
  }
  for (let i = 0; i < 64; i++) {
    const prefix = pick();
    const file = path.join(dir, prefix.replace(/[^0-9a-f.]/gi, '_'));
    if (tryClaim(file)) {
      mine.push(file);
      return prefix;
    }
  }
  throw new Error(`no free test subnet after 64 tries (claims in ${dir})`);
}

/** Claims a random 10.<a>.<b> with lo <= a < hi for this process; the caller carves its subnets
 *  (a /24 or smaller) from it, so two files running at once never hand out the same addresses. */
export function claimPrefix24(lo: number, hi: number): string {
  return claimSubnet(() => `10.${lo + crypto.randomInt(0, hi - lo)}.${crypto.randomInt(0, 256)}`);
}
