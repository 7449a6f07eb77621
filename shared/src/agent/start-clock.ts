// Where an agent start spends its time, phase by phase, logged with "membrane agent ready": a restore
// after a crash is downtime for the API (not for the datapath), so its parts are worth seeing.

export class StartClock {
  private last = performance.now();
  private readonly phases: Record<string, number> = {};

  /** The time since the previous mark (or since the clock started) goes to `phase`. */
  mark(phase: string): void {
    const now = performance.now();
    this.phases[phase] = Math.round((this.phases[phase] ?? 0) + now - this.last);
    this.last = now;
  }

  /** Milliseconds by phase, since the process started (module loading included), and the CPU the
   *  process used meanwhile (what a loaded machine does not inflate the way it inflates wall time). */
  summary(): Record<string, number> {
    const cpu = process.cpuUsage();
    return { ...this.phases, sinceProcessStart: Math.round(performance.now()), cpu: Math.round((cpu.user + cpu.system) / 1000) };
  }
}
