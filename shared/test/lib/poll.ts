// Waiting for something a test cannot be told about: poll a condition until it holds or the time is
// up. The answer is whether it held, for the test to assert with its own message.

/** Polls `cond` every `every` ms for up to `ms` ms (and once more at the end): whether it held. */
export async function pollUntil(cond: () => boolean | Promise<boolean>, ms = 5000, every = 50): Promise<boolean> {
  for (const end = Date.now() + ms; Date.now() < end; await new Promise((r) => setTimeout(r, every)))
    if (await cond()) return true;
  return cond();
}
