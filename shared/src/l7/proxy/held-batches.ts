// A worker's record batches while nobody follows flows: kept here instead of sent one by one, and
// handed to the agent twice a second or when it asks (a flow query, a metrics scrape). Each batch the
// agent takes costs it a wakeup and a run, and under keep-alive load those runs, ~0.3-0.5 ms every
// 20-30 ms on a machine the load keeps busy, were the proxy's whole p99 excess over nginx (README:
// "The keep-alive-10 tail and the agent"). Only as many flows as the agent's ring holds are kept
// (--flow-buffer): older batches would be written over there unread; they are let go here and
// counted (skipped: the agent counts them as seen). Pure.

export class HeldBatches {
  private batches: Buffer[] = [];
  private flowsOf: number[] = [];
  private total = 0;
  private skippedFlows = 0;

  /** `keep`: the flows worth keeping (the agent's ring size). */
  constructor(private keep: number) {}

  setKeep(keep: number): void {
    this.keep = keep;
    this.trim();
  }

  get flows(): number {
    return this.total;
  }
  get size(): number {
    return this.batches.length;
  }

  /** Keeps a batch standing for `flows` flows (copied: the writer's buffer is larger than the batch). */
  hold(batch: Buffer, flows: number): void {
    this.batches.push(Buffer.from(batch));
    this.flowsOf.push(flows);
    this.total += flows;
    this.trim();
  }

  /** Everything held (oldest first) and how many flows were let go before them; starts over. */
  take(): { skipped: number; batches: Buffer[] } {
    const out = { skipped: this.skippedFlows, batches: this.batches };
    this.batches = [];
    this.flowsOf = [];
    this.total = 0;
    this.skippedFlows = 0;
    return out;
  }

  /** Lets the oldest batches go while the newer ones alone hold `keep` flows. */
  private trim(): void {
    let drop = 0;
    while (drop < this.batches.length - 1 && this.total - this.flowsOf[drop] >= this.keep) {
      this.total -= this.flowsOf[drop];
      this.skippedFlows += this.flowsOf[drop];
      drop++;
    }
    if (drop) {
      this.batches.splice(0, drop);
      this.flowsOf.splice(0, drop);
    }
  }
}
