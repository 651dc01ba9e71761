/** A binary min-heap of timed events, the simulator's clock. Ties keep insertion order. */
export interface TimedEvent {
  at: number;
  seq: number;
  run: () => void | Promise<void>;
}

export class EventQueue {
  private readonly items: TimedEvent[] = [];
  private seq = 0;
  now = 0;

  get size(): number {
    return this.items.length;
  }

  at(time: number, run: () => void | Promise<void>): void {
    const item = { at: Math.max(time, this.now), seq: this.seq++, run };
    const items = this.items;
    items.push(item);
    let i = items.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!before(item, items[parent]!)) break;
      items[i] = items[parent]!;
      i = parent;
    }
    items[i] = item;
  }

  after(delay: number, run: () => void | Promise<void>): void {
    this.at(this.now + delay, run);
  }

  /**
   * Runs events in time order until none are left, awaiting each, so an event that awaits (a scheduler
   * decision) finishes before the next one starts, exactly as one scheduler applies one request at a time.
   */
  async runAsync(): Promise<void> {
    while (this.items.length > 0) {
      const next = this.pop();
      this.now = next.at;
      const result = next.run();
      if (result) await result;
    }
  }

  private pop(): TimedEvent {
    const items = this.items;
    const top = items[0]!;
    const last = items.pop()!;
    if (items.length > 0) {
      let i = 0;
      for (;;) {
        const left = 2 * i + 1;
        if (left >= items.length) break;
        const right = left + 1;
        const child = right < items.length && before(items[right]!, items[left]!) ? right : left;
        if (!before(items[child]!, last)) break;
        items[i] = items[child]!;
        i = child;
      }
      items[i] = last;
    }
    return top;
  }
}

function before(a: TimedEvent, b: TimedEvent): boolean {
  return a.at < b.at || (a.at === b.at && a.seq < b.seq);
}
