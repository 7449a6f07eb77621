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

function tryClaim(file: string): boolean {
  try {
    fs.writeFileSync(file, String(process.pid), { flag: 'wx' });
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
  }
  const owner = Number(fs.readFileSync(file, 'utf8').trim() || 0);
  if (owner && (owner === process.pid || alive(owner))) return false;
  // The claimer died without releasing: take it over (if another process races us, one wins).
  fs.rmSync(file, { force: true });
  try {
    fs.writeFileSync(file, String(process.pid), { flag: 'wx' });
    return true;
  } catch {
    return false;
  }
}

/** Claims the first free prefix `pick()` proposes (64 tries) for this process; returns it. */
export function claimSubnet(pick: () => string): string {
  fs.mkdirSync(CLAIM_DIR, { recursive: true });
  if (!hooked) {
    hooked = true;
    process.once('exit', () => {
      for (const f of mine) fs.rmSync(f, { force: true });
    });
  }
  for (let i = 0; i < 64; i++) {
    const prefix = pick();
    const file = path.join(CLAIM_DIR, prefix.replace(/[^0-9a-f.]/gi, '_'));
    if (tryClaim(file)) {
      mine.push(file);
      return prefix;
    }
  }
  throw new Error(`no free test subnet after 64 tries (claims in ${CLAIM_DIR})`);
}

/** Claims a random 10.<a>.<b> with lo <= a < hi for this process; the caller carves its subnets
 *  (a /24 or smaller) from it, so two files running at once never hand out the same addresses. */
export function claimPrefix24(lo: number, hi: number): string {
  return claimSubnet(() => `10.${lo + crypto.randomInt(0, hi - lo)}.${crypto.randomInt(0, 256)}`);
}
