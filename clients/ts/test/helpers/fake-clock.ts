import type { Clock, Random } from '../../src/index.js';

interface FakeTimer {
  id: number;
  at: number;
  fn: () => void;
}

/** Lets every pending promise continuation and microtask run. */
export async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise<void>((r) => setImmediate(r));
}

/** A clock whose time moves only when the test says so. */
export class FakeClock implements Clock {
  private t = 1_700_000_000_000;
  private nextId = 1;
  private timers: FakeTimer[] = [];

  now(): number {
    return this.t;
  }

  setTimeout(fn: () => void, ms: number): number {
    const id = this.nextId++;
    this.timers.push({ id, at: this.t + Math.max(0, ms), fn });
    return id;
  }

  clearTimeout(handle: unknown): void {
    this.timers = this.timers.filter((t) => t.id !== handle);
  }

  /** Timers not yet fired. */
  get pendingTimers(): number {
    return this.timers.length;
  }

  /**
   * Moves time forward by `ms`, firing due timers in order (and letting
   * promise continuations run after each).
   */
  async advance(ms: number): Promise<void> {
    const target = this.t + ms;
    await settle();
    for (;;) {
      let next: FakeTimer | undefined;
      for (const t of this.timers) if (t.at <= target && (!next || t.at < next.at || (t.at === next.at && t.id < next.id))) next = t;
      if (!next) break;
      this.timers = this.timers.filter((t) => t !== next);
      this.t = next.at;
      next.fn();
      await settle();
    }
    this.t = target;
    await settle();
  }
}

/** Randomness from a fixed list of values (repeating the last), and counting UUIDs. */
export class FakeRandom implements Random {
  private i = 0;
  private n = 0;
  constructor(private readonly values: number[] = [0.5]) {}
  random(): number {
    const v = this.values[Math.min(this.i, this.values.length - 1)] as number;
    this.i++;
    return v;
  }
  uuid(): string {
    this.n++;
    return `uuid-${this.n}`;
  }
}
