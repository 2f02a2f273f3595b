// A counting gate: at most `slots` holders at once, the rest waiting in a bounded FIFO queue for a
// bounded time. It must never let a waiter hold anything but its place in the queue, nor hand a
// slot to a waiter that has already given up.

/** Gives the slot back; calling it again does nothing. */
export type Release = () => void;

export interface GateOptions {
  slots: number;
  /** Waiters beyond this many are refused at once. */
  queue: number;
  /** How long a waiter waits for a slot before it is refused. */
  waitMs: number;
  /** How long an urgent waiter waits (by default as long as any other). */
  urgentWaitMs?: number;
  /** The error a refused waiter gets: the queue was full, or its wait of `waitedMs` ran out. */
  refuse: (reason: "full" | "timeout", retryAfterSeconds: number, waitedMs: number) => Error;
}

interface Waiter {
  grant: (release: Release) => void;
  urgent: boolean;
}

export class Gate {
  private held = 0;
  private waiting: Waiter[] = [];
  /** A moving average of how long a slot is held, to tell a refused caller when to come back. */
  private holdMs = 1000;

  constructor(private options: GateOptions) {}

  get slots(): number {
    return this.options.slots;
  }

  /** Holders now, for tests and the benchmark's report. */
  get inUse(): number {
    return this.held;
  }

  get queued(): number {
    return this.waiting.length;
  }

  /** True when a new waiter would be refused at once. */
  private get full(): boolean {
    return this.held >= this.options.slots && this.waiting.length >= this.options.queue;
  }

  /** Refuses at once when a new waiter would be refused: before work is accepted to wait later. */
  assertRoom(): void {
    if (this.full) throw this.options.refuse("full", this.retryAfter(), 0);
  }

  /**
   * Waits for a slot. `urgent` waiters (work already accepted, such as a recorded restore) go
   * ahead of the others, in their own arrival order, and wait `urgentWaitMs`.
   */
  acquire(options: { urgent?: boolean; waitMs?: number } = {}): Promise<Release> {
    if (this.options.slots < 1) {
      return Promise.reject(new Error("this gate has no slot: it can never be entered"));
    }
    if (this.held < this.options.slots && this.waiting.length === 0) {
      return Promise.resolve(this.take());
    }
    const urgent = options.urgent ?? false;
    // Accepted work is never refused for a full queue: it is checked before it is accepted
    // (assertRoom), and there is at most one such waiter per tenant.
    if (!urgent && this.waiting.length >= this.options.queue) {
      return Promise.reject(this.options.refuse("full", this.retryAfter(), 0));
    }
    const waitMs = options.waitMs ??
      (urgent ? this.options.urgentWaitMs : undefined) ?? this.options.waitMs;
    return new Promise<Release>((resolve, reject) => {
      const waiter: Waiter = {
        urgent,
        grant: (release) => {
          clearTimeout(timer);
          resolve(release);
        },
      };
      const timer = setTimeout(() => {
        const i = this.waiting.indexOf(waiter);
        if (i >= 0) this.waiting.splice(i, 1);
        reject(this.options.refuse("timeout", this.retryAfter(), waitMs));
      }, waitMs);
      const after = waiter.urgent ? this.waiting.findIndex((w) => !w.urgent) : -1;
      if (after >= 0) this.waiting.splice(after, 0, waiter);
      else this.waiting.push(waiter);
    });
  }

  private take(): Release {
    this.held++;
    const since = performance.now();
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.holdMs = 0.8 * this.holdMs + 0.2 * (performance.now() - since);
      this.held--;
      // Handed straight to the first waiter, so that a newcomer cannot overtake the queue.
      const next = this.waiting.shift();
      if (next) next.grant(this.take());
    };
  }

  /** Seconds until a slot is likely free for one more waiter: the queue ahead, served in turn. */
  private retryAfter(): number {
    const rounds = (this.waiting.length + 1) / this.options.slots;
    return Math.min(60, Math.max(1, Math.ceil((rounds * this.holdMs) / 1000)));
  }
}
