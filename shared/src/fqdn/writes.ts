// The datapath and store writes of DNS answers still under way. An answer that teaches nothing new may
// carry addresses an earlier answer is still writing (two pods asking one new name at once): it must
// not reach its pod before them, so it waits for the writes under way (all of them: they take
// microseconds, and which carry its addresses is not worth tracking). Pure.

export class WritesInFlight {
  private readonly writing = new Set<Promise<void>>();

  /** `w` counts until it settles; returned as is. */
  track(w: Promise<void>): Promise<void> {
    this.writing.add(w);
    const done = () => {
      this.writing.delete(w);
    };
    w.then(done, done);
    return w;
  }

  /** Settles once every write tracked so far has (rejects when one fails); undefined when none is under way. */
  settled(): Promise<void> | undefined {
    return this.writing.size ? Promise.all(this.writing).then(() => undefined) : undefined;
  }
}
