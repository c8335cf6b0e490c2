import { backoffDelay } from './backoff.js';
import { Emitter } from './emitter.js';
import { DisconnectedError, ServerError, TimeoutError, UnauthorizedError } from './errors.js';
import {
  decodeBase64,
  ErrorCode,
  type ClientInfo,
  type PresenceResult,
  type PresenceStatsResult,
  type RefreshResult,
  type StreamPosition,
  type SubscribeResult,
  type WireHistoryResult,
  type WirePublication,
} from './protocol.js';
import type { Clock, Random, TimerHandle } from './timers.js';
import { refreshDelay } from './token.js';

/** A publication as the client hands it to the application. */
export interface Publication {
  channel: string;
  /** Its offset in the channel (+1 per publication). */
  offset: number;
  /** The data, when it is JSON (always, unless a binary client published bytes). */
  data?: unknown;
  /** The bytes, when the server sent them as `b64data` (not JSON). */
  bytes?: Uint8Array;
  /** True when it came from a recovering subscribe's replay rather than live. */
  replayed: boolean;
}

/** Turns a wire publication into a {@link Publication}. */
export function toPublication(channel: string, p: WirePublication, replayed: boolean): Publication {
  const out: Publication = { channel, offset: p.offset, replayed };
  if (typeof p.b64data === 'string') out.bytes = decodeBase64(p.b64data);
  else out.data = p.data;
  return out;
}

/** The states of a subscription. */
export type SubscriptionState = 'unsubscribed' | 'subscribing' | 'subscribed';

/** Options of `client.subscribe()`. */
export interface SubscriptionOptions {
  /**
   * Resubscribe with `recover` and the last position seen after every
   * reconnect, so missed publications are replayed (default true). Only
   * namespaces with `recover = true` can recover; elsewhere it is a plain
   * subscribe.
   */
  recover?: boolean;
  /** Start from this position (e.g. one saved with the application's state): the first subscribe recovers from it. */
  since?: StreamPosition;
  /** A subscription token, for namespaces with `subscribe = "token"`. */
  token?: string;
  /** Gets a (new) subscription token; called before the first subscribe when there is no `token`, and to renew it. */
  getToken?: (channel: string) => Promise<string>;
  /** Shortcut for `sub.on('publication', …)`. */
  onPublication?: (publication: Publication) => void;
}

/** Payload of a subscription's `subscribed` event. */
export interface SubscribedEvent {
  channel: string;
  /** The channel's epoch and the offset the subscription starts after. */
  epoch: string;
  offset: number;
  /** Whether the channel's namespace keeps history and allows recovery. */
  recoverable: boolean;
  /** Whether this subscribe asked to recover (it had a position). */
  recovering: boolean;
  /**
   * Whether every publication missed since the position was replayed. False
   * after a recovering subscribe means a gap: reload the channel's state.
   */
  recovered: boolean;
  /** How many publications the reply replayed (they follow as `publication` events). */
  replayed: number;
}

/** Payload of a subscription's `unsubscribed` event. */
export interface UnsubscribedEvent {
  channel: string;
  /** `client`: `unsubscribe()`; `server`: an `unsubscribe` push; `error`: the subscribe was refused. */
  reason: 'client' | 'server' | 'error';
  error?: Error;
}

/** Payload of `join` / `leave` events. */
export interface PresenceEvent {
  channel: string;
  info: ClientInfo;
}

/** Payload of `presenceState` events (a member set or cleared its state). */
export interface PresenceStateEvent {
  channel: string;
  info: ClientInfo;
  /** The new state; `""` when cleared or expired. */
  state: string;
}

/** Events of a {@link Subscription}. */
export interface SubscriptionEvents {
  state: { oldState: SubscriptionState; newState: SubscriptionState };
  subscribed: SubscribedEvent;
  publication: Publication;
  unsubscribed: UnsubscribedEvent;
  join: PresenceEvent;
  leave: PresenceEvent;
  presenceState: PresenceStateEvent;
  error: { channel: string; error: Error };
}

/** Options of `history()`. */
export interface HistoryOptions {
  /** At most this many publications (server default and cap: `history_max_publications`); 0 = the position only. */
  limit?: number;
  /** Only publications after this position. */
  since?: StreamPosition;
  /** Newest first. */
  reverse?: boolean;
}

/** Result of `history()`. */
export interface HistoryResult {
  publications: Publication[];
  /** The channel's current position. */
  epoch: string;
  offset: number;
}

/** Callbacks for one command: exactly one of them is called, synchronously with the reply. */
export interface CommandCallbacks<T> {
  ok(result: T): void;
  fail(error: Error): void;
}

/**
 * What a subscription needs from its client. Internal: applications use
 * `client.subscribe()`.
 */
export interface SubscriptionHost {
  readonly clock: Clock;
  readonly random: Random;
  readonly minDelay: number;
  readonly maxDelay: number;
  readonly refreshRatio: number;
  /** Whether the client is connected now. */
  isConnected(): boolean;
  /** Identifies the current connection (changes at every reconnect). */
  connectionId(): number;
  /** Sends a command whose missing reply means a dead link. */
  command<T>(method: string, params: unknown, callbacks: CommandCallbacks<T>): void;
  /** Sends an application command (waits for the connection, rejects on timeout). */
  request<T>(method: string, params: unknown): Promise<T>;
  /** The subscription wants to be (re)registered under its channel; false if the channel is taken. */
  attach(sub: Subscription): boolean;
  /** The subscription is over; the client forgets it. */
  detach(sub: Subscription): void;
}

/**
 * A client-side subscription to one channel. It subscribes whenever the
 * client is connected, keeps the last position seen, and after a reconnect
 * resubscribes with `recover` so missed publications are replayed in order.
 *
 * Events: `state`, `subscribed` (with `recovered`), `publication`,
 * `unsubscribed`, `join`, `leave`, `presenceState`, `error`.
 */
export class Subscription extends Emitter<SubscriptionEvents> {
  /** The channel. */
  readonly channel: string;
  private _state: SubscriptionState = 'unsubscribed';
  private pos: StreamPosition | undefined;
  private readonly recover: boolean;
  private token: string | undefined;
  private tokenRequired = false;
  /** Bumped whenever an answer in flight must be ignored (unsubscribe, lost connection, new attempt). */
  private gen = 0;
  /** The connection the last subscribe went out on, while it is unanswered or answered. */
  private sentOn = -1;
  /** A subscribe is in flight that `unsubscribe()` overtook: undo it once answered. */
  private undoOnReply = false;
  private attempts = 0;
  private retryTimer: TimerHandle | undefined;
  private refreshTimer: TimerHandle | undefined;
  private refreshAttempts = 0;

  /** Internal: use `client.subscribe()`. */
  constructor(
    private readonly host: SubscriptionHost,
    channel: string,
    private readonly options: SubscriptionOptions = {},
  ) {
    super();
    this.channel = channel;
    this.recover = options.recover !== false;
    this.pos = options.since ? { ...options.since } : undefined;
    this.token = options.token;
    if (options.onPublication) this.on('publication', options.onPublication);
  }

  /** The current state. */
  get state(): SubscriptionState {
    return this._state;
  }

  /** The last position seen (epoch and offset), if any: what a resubscribe recovers from. */
  get position(): StreamPosition | undefined {
    return this.pos ? { ...this.pos } : undefined;
  }

  /**
   * Subscribes again after `unsubscribe()` (a new subscription starts
   * subscribing at once). Throws if another subscription took the channel.
   */
  subscribe(): void {
    if (this._state !== 'unsubscribed') return;
    if (!this.host.attach(this)) throw new Error(`already subscribed to ${this.channel}`);
    this.start();
  }

  /** Ends the subscription (sending `unsubscribe` when the server has it). */
  unsubscribe(): void {
    if (this._state === 'unsubscribed') return;
    const wasSubscribed = this._state === 'subscribed';
    const inFlight = this._state === 'subscribing' && this.sentOn === this.host.connectionId() && this.sentOn >= 0;
    this.gen++;
    this.clearTimers();
    this.host.detach(this);
    if (this.host.isConnected()) {
      if (wasSubscribed) this.sendUnsubscribe();
      else if (inFlight) this.undoOnReply = true;
    }
    this.setState('unsubscribed');
    this.emit('unsubscribed', { channel: this.channel, reason: 'client' });
  }

  /** The channel's kept publications (namespaces with history). */
  history(options: HistoryOptions = {}): Promise<HistoryResult> {
    return historyOf(this.host, this.channel, options);
  }

  /** Who is in the channel now (namespaces with presence). */
  presence(): Promise<PresenceResult> {
    return this.host.request<PresenceResult>('presence', { channel: this.channel });
  }

  /** How many connections and users are in the channel. */
  presenceStats(): Promise<PresenceStatsResult> {
    return this.host.request<PresenceStatsResult>('presence_stats', { channel: this.channel });
  }

  /**
   * Sets this connection's presence state in the channel (e.g. `typing`,
   * `viewing`, `editing:<section>`; `""` clears it), for `ttl` seconds.
   * Members get a `presenceState` event. Needs the subscription.
   */
  setPresenceState(state: string, ttl?: number): Promise<void> {
    const params: Record<string, unknown> = { channel: this.channel, state };
    if (ttl !== undefined) params.ttl = ttl;
    return this.host.request<unknown>('presence_state', params).then(() => undefined);
  }

  // ---- driven by the client ----

  /** @internal Registered: subscribe now if connected, else when connected. */
  start(): void {
    this.attempts = 0;
    this.setState('subscribing');
    if (this.host.isConnected()) void this.send();
  }

  /** @internal The client is connected (again). */
  connected(): void {
    if (this._state === 'unsubscribed') return;
    if (this.sentOn === this.host.connectionId()) return; // already sent on this connection
    this.attempts = 0;
    void this.send();
  }

  /** @internal The connection ended; wait for the next one. */
  disconnected(): void {
    this.gen++;
    this.sentOn = -1;
    this.undoOnReply = false;
    this.clearTimers();
    if (this._state === 'subscribed') this.setState('subscribing');
  }

  /** @internal A push for this channel. */
  push(type: string, body: unknown): void {
    if (this._state !== 'subscribed') return;
    const b = (body ?? {}) as Record<string, unknown>;
    switch (type) {
      case 'pub': {
        const p = b as unknown as WirePublication;
        if (typeof p.offset !== 'number') return;
        if (this.pos && p.offset <= this.pos.offset) return; // seen already
        if (this.pos) this.pos.offset = p.offset;
        this.emit('publication', toPublication(this.channel, p, false));
        return;
      }
      case 'join':
      case 'leave':
        this.emit(type, { channel: this.channel, info: b.info as ClientInfo });
        return;
      case 'state':
        this.emit('presenceState', {
          channel: this.channel,
          info: b.info as ClientInfo,
          state: typeof b.state === 'string' ? b.state : '',
        });
        return;
      case 'unsubscribe':
        this.gen++;
        this.clearTimers();
        this.host.detach(this);
        this.setState('unsubscribed');
        this.emit('unsubscribed', { channel: this.channel, reason: 'server' });
        return;
      default:
        return; // a push type from a newer server
    }
  }

  // ---- internals ----

  private async send(): Promise<void> {
    const gen = ++this.gen;
    this.clearRetry();
    let token = this.token;
    if (this.options.getToken && (token === undefined || this.tokenRequired)) {
      try {
        token = await this.options.getToken(this.channel);
      } catch (err) {
        if (gen !== this.gen) return;
        this.onGetTokenError(err);
        return;
      }
      if (gen !== this.gen) return;
      this.token = token;
      this.tokenRequired = false;
    }
    if (!this.host.isConnected()) return; // `connected()` will send
    const params: Record<string, unknown> = { channel: this.channel };
    const recovering = this.recover && this.pos !== undefined;
    if (recovering && this.pos) {
      params.recover = true;
      params.epoch = this.pos.epoch;
      params.offset = this.pos.offset;
    }
    if (token) params.token = token;
    const conn = this.host.connectionId();
    this.sentOn = conn;
    this.host.command<SubscribeResult>('subscribe', params, {
      ok: (res) => {
        if (gen !== this.gen) {
          if (this.undoOnReply && conn === this.host.connectionId() && this.host.isConnected()) {
            this.undoOnReply = false;
            this.sendUnsubscribe();
          }
          return;
        }
        this.onSubscribed(res, recovering);
      },
      fail: (err) => {
        if (gen !== this.gen) return;
        this.sentOn = -1;
        this.onSubscribeError(err);
      },
    });
  }

  private onSubscribed(res: SubscribeResult, recovering: boolean): void {
    this.attempts = 0;
    const pubs = Array.isArray(res.publications) ? res.publications : [];
    const from = this.pos;
    // Replayed publications continue from the old position; the reply's
    // position is where the live ones start.
    this.pos =
      res.recovered && from && from.epoch === res.epoch
        ? { epoch: res.epoch, offset: from.offset }
        : { epoch: res.epoch, offset: res.offset };
    this.setState('subscribed');
    this.emit('subscribed', {
      channel: this.channel,
      epoch: res.epoch,
      offset: res.offset,
      recoverable: res.recoverable === true,
      recovering,
      recovered: res.recovered === true,
      replayed: pubs.length,
    });
    const gen = this.gen;
    for (const p of pubs) {
      if (gen !== this.gen || !this.pos) return; // a listener unsubscribed
      if (p.offset <= this.pos.offset) continue;
      this.pos.offset = p.offset;
      this.emit('publication', toPublication(this.channel, p, true));
    }
    if (this.pos && this.pos.offset < res.offset) this.pos.offset = res.offset;
    this.scheduleTokenRefresh(undefined);
  }

  private onSubscribeError(err: Error): void {
    // A lost connection or a timeout: the client reconnects and calls `connected()`.
    if (err instanceof DisconnectedError || err instanceof TimeoutError) return;
    if (err instanceof ServerError) {
      if (err.code === ErrorCode.tokenExpired) {
        if (this.options.getToken) {
          this.tokenRequired = true;
          this.scheduleRetry();
        } else this.fail(err);
        return;
      }
      if (err.temporary) {
        this.emit('error', { channel: this.channel, error: err });
        this.scheduleRetry();
        return;
      }
    }
    this.fail(err);
  }

  private onGetTokenError(err: unknown): void {
    const error = err instanceof Error ? err : new Error(String(err));
    if (error instanceof UnauthorizedError) {
      this.fail(error);
      return;
    }
    this.emit('error', { channel: this.channel, error });
    this.scheduleRetry();
  }

  /** The subscribe was refused for good: the subscription ends. */
  private fail(error: Error): void {
    this.gen++;
    this.clearTimers();
    this.host.detach(this);
    this.setState('unsubscribed');
    this.emit('error', { channel: this.channel, error });
    this.emit('unsubscribed', { channel: this.channel, reason: 'error', error });
  }

  private scheduleRetry(): void {
    this.clearRetry();
    const delay = backoffDelay(this.attempts++, this.host.minDelay, this.host.maxDelay, this.host.random.random());
    this.retryTimer = this.host.clock.setTimeout(() => {
      this.retryTimer = undefined;
      if (this._state === 'subscribing' && this.host.isConnected()) void this.send();
    }, delay);
  }

  private scheduleTokenRefresh(ttl: number | undefined): void {
    if (this.refreshTimer !== undefined) this.host.clock.clearTimeout(this.refreshTimer);
    this.refreshTimer = undefined;
    if (!this.token || !this.options.getToken) return;
    const delay = refreshDelay(this.host.clock.now(), this.host.refreshRatio, ttl, this.token);
    if (delay === undefined) return;
    this.refreshTimer = this.host.clock.setTimeout(() => {
      this.refreshTimer = undefined;
      void this.refreshToken();
    }, delay);
  }

  private async refreshToken(): Promise<void> {
    const gen = this.gen;
    const getToken = this.options.getToken;
    if (!getToken || this._state !== 'subscribed') return;
    let token: string;
    try {
      token = await getToken(this.channel);
    } catch (err) {
      if (gen !== this.gen) return;
      const error = err instanceof Error ? err : new Error(String(err));
      if (error instanceof UnauthorizedError) {
        this.unsubscribe();
        return;
      }
      this.emit('error', { channel: this.channel, error });
      this.retryRefresh();
      return;
    }
    if (gen !== this.gen || !this.host.isConnected()) return;
    this.token = token;
    this.host.command<RefreshResult>('sub_refresh', { channel: this.channel, token }, {
      ok: (r) => {
        if (gen !== this.gen) return;
        this.refreshAttempts = 0;
        if (r.expires) this.scheduleTokenRefresh(r.ttl);
      },
      fail: (err) => {
        if (gen !== this.gen || err instanceof DisconnectedError || err instanceof TimeoutError) return;
        this.emit('error', { channel: this.channel, error: err });
        if (err instanceof ServerError && err.temporary) this.retryRefresh();
      },
    });
  }

  private retryRefresh(): void {
    const delay = backoffDelay(this.refreshAttempts++, this.host.minDelay, this.host.maxDelay, this.host.random.random());
    this.refreshTimer = this.host.clock.setTimeout(() => {
      this.refreshTimer = undefined;
      void this.refreshToken();
    }, delay);
  }

  private sendUnsubscribe(): void {
    this.host.command<unknown>('unsubscribe', { channel: this.channel }, { ok: () => {}, fail: () => {} });
  }

  private clearRetry(): void {
    if (this.retryTimer !== undefined) this.host.clock.clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
  }

  private clearTimers(): void {
    this.clearRetry();
    if (this.refreshTimer !== undefined) this.host.clock.clearTimeout(this.refreshTimer);
    this.refreshTimer = undefined;
  }

  private setState(next: SubscriptionState): void {
    const prev = this._state;
    if (prev === next) return;
    this._state = next;
    this.emit('state', { oldState: prev, newState: next });
  }
}

/** `history` for a channel, with publications decoded. */
export async function historyOf(host: Pick<SubscriptionHost, 'request'>, channel: string, options: HistoryOptions): Promise<HistoryResult> {
  const params: Record<string, unknown> = { channel };
  if (options.limit !== undefined) params.limit = options.limit;
  if (options.since) params.since = { epoch: options.since.epoch, offset: options.since.offset };
  if (options.reverse) params.reverse = true;
  const r = await host.request<WireHistoryResult>('history', params);
  return {
    publications: (r.publications ?? []).map((p) => toPublication(channel, p, false)),
    epoch: r.epoch,
    offset: r.offset,
  };
}
