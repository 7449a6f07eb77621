// Waiting for something a test cannot be told about: poll until it holds or the time is up. pollUntil
// answers whether a condition held, for the test to assert with its own message; pollFor waits for a
// value and throws, naming what it waited for, when none came. The default deadlines are generous (30 s):
// a loaded 2-vCPU CI machine can take seconds to start a process, and a deadline costs nothing when the
// condition holds at once.

/** Polls `cond` every `every` ms for up to `ms` ms (and once more at the end): whether it held. */
export async function pollUntil(cond: () => boolean | Promise<boolean>, ms = 30_000, every = 50): Promise<boolean> {
  for (const end = Date.now() + ms; Date.now() < end; await new Promise((r) => setTimeout(r, every)))
    if (await cond()) return true;
  return cond();
}

/** Polls `get` every `every` ms until it returns a value (anything but undefined), which it resolves
 *  with; throws naming `what` after `ms` ms. */
export async function pollFor<T>(what: string, get: () => Promise<T | undefined>, ms = 30_000, every = 100): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await get();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, every));
  }
}

/** Polls `cond` every `every` ms until it holds; throws naming `what` after `ms` ms (a throw from
 *  `cond` ends the wait with that error). */
export async function waitUntil(what: string, cond: () => boolean | Promise<boolean>, ms = 30_000, every = 50): Promise<void> {
  await pollFor(what, async () => ((await cond()) ? true : undefined), ms, every);
}
