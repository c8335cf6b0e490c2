import type { EncodedCommand } from './codec.js';
import { DisconnectedError, ServerError, TimeoutError } from './errors.js';
import type { ServerMessage } from './protocol.js';
import type { CommandCallbacks } from './subscription.js';
import type { Clock, TimerHandle } from './timers.js';

/** Where commands are written: the current connection's transport. */
export interface CommandSink {
  /** Whether frames can be written now. */
  readonly open: boolean;
  /** Encodes one command in the connection's wire form (throws when it cannot). */
  encode(id: number, method: string, params: unknown): EncodedCommand;
  /** Writes encoded commands as one frame. */
  send(commands: readonly EncodedCommand[]): void;
}

interface PendingCommand {
  method: string;
  /** A missing reply means a dead link (see {@link Commands}). */
  internal: boolean;
  callbacks: CommandCallbacks<unknown>;
  timer?: TimerHandle;
}

/**
 * The command layer of one client: ids, the write queue with its
 * per-second budget, reply matching by id, and timeouts.
 *
 * Commands queued in the same tick go out in one frame. A command's
 * timeout starts when it is written (not while it waits for budget). When
 * an `internal` command times out, {@link onDeadLink} is told: the
 * connection is not answering and should be replaced.
 */
export class Commands {
  private nextId = 1;
  private readonly pending = new Map<number, PendingCommand>();
  private queue: Array<{ id: number; command: EncodedCommand }> = [];
  private writeScheduled = false;
  private writeTimer: TimerHandle | undefined;
  private readonly sentTimes: number[] = [];
  private sink: CommandSink | undefined;

  /**
   * @param timeout reply timeout in milliseconds
   * @param rate at most this many commands written in any second (0 = no limit)
   * @param onDeadLink an internal command got no reply in time
   */
  constructor(
    private readonly clock: Clock,
    private readonly timeout: number,
    private readonly rate: number,
    private readonly onDeadLink: (method: string) => void,
  ) {}

  /** Commands sent and not answered, or waiting to be written. */
  get size(): number {
    return this.pending.size;
  }

  /** Writes go to `sink` from now on (a new connection). */
  attach(sink: CommandSink): void {
    this.sink = sink;
    this.queue = []; // encoded for the previous connection (empty: `failAll` ran)
  }

  /** Queues one command; exactly one of `callbacks` is called later. */
  send<T>(method: string, params: unknown, callbacks: CommandCallbacks<T>, internal: boolean): void {
    if (!this.sink) {
      callbacks.fail(new DisconnectedError('not connected'));
      return;
    }
    const id = this.nextId;
    let command: EncodedCommand;
    try {
      command = this.sink.encode(id, method, params);
    } catch (err) {
      callbacks.fail(err instanceof Error ? err : new Error(String(err)));
      return;
    }
    this.nextId = this.nextId >= 0xffff_fffe ? 1 : this.nextId + 1; // u32, 0xffffffff is the server's
    this.pending.set(id, { method, internal, callbacks: callbacks as CommandCallbacks<unknown> });
    this.queue.push({ id, command });
    if (!this.writeScheduled) {
      this.writeScheduled = true;
      queueMicrotask(() => {
        this.writeScheduled = false;
        this.write();
      });
    }
  }

  /** Settles the command a reply or error answers; false when none waits for it. */
  settle(message: Exclude<ServerMessage, { kind: 'push' }>): boolean {
    const p = this.pending.get(message.id);
    if (!p) return false; // timed out, or from before a loss
    this.pending.delete(message.id);
    if (p.timer !== undefined) this.clock.clearTimeout(p.timer);
    if (message.kind === 'error') p.callbacks.fail(new ServerError(message.error));
    else p.callbacks.ok(message.result);
    return true;
  }

  /** The connection is gone: drop the queue and fail every command with `error`. */
  failAll(error: Error): void {
    this.sink = undefined;
    this.queue = [];
    if (this.writeTimer !== undefined) this.clock.clearTimeout(this.writeTimer);
    this.writeTimer = undefined;
    const all = [...this.pending.values()];
    this.pending.clear();
    for (const p of all) {
      if (p.timer !== undefined) this.clock.clearTimeout(p.timer);
      p.callbacks.fail(error);
    }
  }

  /** Writes queued commands in one frame, within the per-second budget; the rest wait for it. */
  private write(): void {
    if (this.writeTimer !== undefined) return; // waiting for budget
    const sink = this.sink;
    if (!sink || !sink.open || this.queue.length === 0) return;
    const now = this.clock.now();
    let batch: Array<{ id: number; command: EncodedCommand }>;
    if (this.rate > 0) {
      while (this.sentTimes.length > 0 && (this.sentTimes[0] as number) <= now - 1000) this.sentTimes.shift();
      batch = this.queue.splice(0, Math.max(0, this.rate - this.sentTimes.length));
      for (let i = 0; i < batch.length; i++) this.sentTimes.push(now);
    } else {
      batch = this.queue.splice(0);
    }
    if (batch.length > 0) {
      sink.send(batch.map((b) => b.command));
      for (const { id } of batch) {
        const p = this.pending.get(id);
        if (p) p.timer = this.clock.setTimeout(() => this.expire(id), this.timeout);
      }
    }
    if (this.queue.length > 0 && this.rate > 0) {
      const wait = Math.max(1, (this.sentTimes[0] as number) + 1000 - now);
      this.writeTimer = this.clock.setTimeout(() => {
        this.writeTimer = undefined;
        this.write();
      }, wait);
    }
  }

  private expire(id: number): void {
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    p.callbacks.fail(new TimeoutError(p.method, this.timeout));
    if (p.internal) this.onDeadLink(p.method);
  }
}
