import { backoffDelay } from './backoff.js';
import { jsonCodec, loadBinaryCodec, type Codec, type WireFormat } from './codec.js';
import { Commands } from './commands.js';
import { Emitter } from './emitter.js';
import { DisconnectedError, ServerError, TimeoutError, UnauthorizedError } from './errors.js';
import { resolveTransports, TransportPolicy, WebSocketProber, type Transports } from './fallback.js';
import { MemoryOutboxStorage, Outbox, type OutboxItem } from './outbox.js';
import type {
  ClientEvents,
  ClientOptions,
  ClientState,
  ConnectedEvent,
  DisconnectedEvent,
  PublishOptions,
  RpcResult,
} from './options.js';
import {
  BINARY_SUBPROTOCOL,
  closeCodeReconnects,
  CloseCode,
  decodeBase64,
  ErrorCode,
  LocalCode,
  SUBPROTOCOL,
  type ClientInfo,
  type ConnectParams,
  type ConnectResult,
  type DisconnectPush,
  type PresenceResult,
  type PresenceStatsResult,
  type PublishResult,
  type RefreshResult,
  type ServerMessage,
  type SubscribeResult,
  type WirePublication,
  type WireRpcResult,
} from './protocol.js';
import { Story, type StoryHost, type StoryOptions } from './story.js';
import {
  historyOf,
  Subscription,
  toPublication,
  type CommandCallbacks,
  type HistoryOptions,
  type HistoryResult,
  type SubscriptionHost,
  type SubscriptionOptions,
} from './subscription.js';
import { SseTransport } from './sse.js';
import { systemClock, systemRandom, type Clock, type Random, type TimerHandle } from './timers.js';
import { jwtExpiry, refreshDelay } from './token.js';
import { WebSocketTransport, type Transport, type TransportHandlers, type TransportKind } from './transport.js';

/** Publications the client sends before waiting for answers. */
const OUTBOX_WINDOW = 32;

interface Waiter {
  resolve(): void;
  reject(err: Error): void;
  timer: TimerHandle;
}

/**
 * A wsedge client: one connection (a WebSocket in the JSON or binary form,
 * or the SSE fallback), reconnecting with full-jitter backoff, renewing its
 * token, resubscribing with recovery and sending offline publications from
 * its outbox.
 *
 * ```ts
 * const client = new Client('wss://edge.example.com/ws', { getToken });
 * client.connect();
 * const sub = client.subscribe('chat:room-42', { onPublication: (p) => show(p.data) });
 * await client.publish('chat:room-42', { text: 'hi' });
 * ```
 */
export class Client extends Emitter<ClientEvents> {
  /** The server URL (`ws://` or `wss://`, path `/ws` by default). */
  readonly url: string;
  private readonly opts: ClientOptions;
  private readonly clock: Clock;
  private readonly random: Random;
  private readonly transports: Transports;
  private readonly format: WireFormat;
  private readonly policy: TransportPolicy;
  private readonly prober: WebSocketProber | undefined;
  private readonly probeInterval: number;
  private readonly timeout: number;
  private readonly minDelay: number;
  private readonly maxDelay: number;
  private readonly maxAttempts: number;
  private readonly refreshRatio: number;
  private readonly rate: number;
  private readonly publishRetries: number;

  private _state: ClientState = 'disconnected';
  private conn: Transport | undefined;
  /**
   * The transport of the current attempt, and whether the server has
   * answered on it yet (an SSE session event, a WebSocket frame): an attempt
   * lost before that counts against the transport in the fallback policy.
   */
  private attempt: { kind: TransportKind; answered: boolean } | undefined;
  /** Bumped at every attempt and every loss: work for an older one is ignored. */
  private connId = 0;
  private attempts = 0;
  private reconnectTimer: TimerHandle | undefined;
  private openTimer: TimerHandle | undefined;
  private pingTimer: TimerHandle | undefined;
  private pingOutstanding = false;
  private lastReceived = 0;
  private refreshTimer: TimerHandle | undefined;
  private refreshAttempts = 0;
  private token: string | undefined;
  private tokenRequired = false;
  private disconnectPush: DisconnectPush | undefined;
  private info: ConnectedEvent | undefined;

  private readonly commands: Commands;
  private waiters: Waiter[] = [];

  private readonly subs = new Map<string, Subscription>();
  private readonly host: SubscriptionHost;
  private readonly stories = new Map<string, Story>();
  private readonly storyHost: StoryHost;

  private readonly outbox: Outbox;
  private publishesInFlight = 0;
  private flushPauseTimer: TimerHandle | undefined;
  /** A switch from SSE to WebSocket waits for the commands in flight (see `leaveSse`). */
  private switchWaiting = false;
  private switchTimer: TimerHandle | undefined;

  /**
   * @param url the server's WebSocket URL, e.g. `ws://127.0.0.1:8080/ws`
   * @param options see {@link ClientOptions}
   */
  constructor(url: string, options: ClientOptions = {}) {
    super();
    this.url = url;
    this.opts = options;
    this.clock = options.clock ?? systemClock;
    this.random = options.random ?? systemRandom;
    this.transports = resolveTransports(options.transports ?? ['websocket', 'sse'], options);
    this.format = options.format ?? 'json';
    this.policy = new TransportPolicy(this.transports.allowed, Math.max(1, options.fallbackAfter ?? 2));
    this.timeout = options.timeout ?? 10_000;
    this.probeInterval = options.webSocketRetryInterval ?? 60_000;
    const ws = this.transports.WebSocket;
    this.prober =
      ws && this.policy.canFallBack && this.probeInterval > 0
        ? new WebSocketProber(ws, url, this.format === 'binary' ? BINARY_SUBPROTOCOL : SUBPROTOCOL, this.clock, this.timeout, () =>
            this.leaveSse(),
          )
        : undefined;
    this.minDelay = options.minReconnectDelay ?? 500;
    this.maxDelay = Math.max(this.minDelay, options.maxReconnectDelay ?? 20_000);
    this.maxAttempts = options.maxReconnectAttempts ?? Infinity;
    this.refreshRatio = options.refreshRatio ?? 0.85;
    this.rate = options.maxCommandsPerSecond ?? 100;
    this.publishRetries = options.publishRetries ?? 5;
    this.token = options.token;
    this.commands = new Commands(this.clock, this.timeout, this.rate, (method) =>
      this.lose(LocalCode.timeout, `no reply to ${method}`, true),
    );

    this.host = {
      clock: this.clock,
      random: this.random,
      minDelay: this.minDelay,
      maxDelay: this.maxDelay,
      refreshRatio: this.refreshRatio,
      isConnected: () => this._state === 'connected',
      connectionId: () => this.connId,
      command: (method, params, callbacks) => this.command(method, params, callbacks as CommandCallbacks<unknown>, true),
      request: (method, params) => this.request(method, params),
      attach: (sub) => {
        if (this.subs.has(sub.channel) || this.stories.has(sub.channel)) return false;
        this.subs.set(sub.channel, sub);
        return true;
      },
      detach: (sub) => {
        if (this.subs.get(sub.channel) === sub) this.subs.delete(sub.channel);
      },
    };
    this.storyHost = {
      ...this.host,
      connection: () => this.connection,
      attach: (story) => {
        if (this.subs.has(story.channel) || this.stories.has(story.channel)) return false;
        this.stories.set(story.channel, story);
        return true;
      },
      release: (story) => {
        if (this.stories.get(story.channel) === story) this.stories.delete(story.channel);
      },
    };

    this.outbox = new Outbox(
      options.outboxStorage ?? new MemoryOutboxStorage(),
      Math.max(1, options.outboxLimit ?? 1000),
      options.outboxDropPolicy ?? 'drop-oldest',
      (item, reason) => this.emit('outboxDropped', { entry: item.entry, reason }),
      (err) => this.reportError(err, 'outbox storage'),
    );
    void this.outbox.ready.then(() => this.flushOutbox());
  }

  /** The current state. */
  get state(): ClientState {
    return this._state;
  }

  /** The last `connect` reply (client id, node, user, …) and the transport, while connected. */
  get connection(): ConnectedEvent | undefined {
    return this._state === 'connected' ? this.info : undefined;
  }

  /** What carries the current connection or attempt (`websocket` or `sse`); undefined between attempts. */
  get transport(): TransportKind | undefined {
    return this.conn?.kind;
  }

  /** Publications waiting in the outbox (unsent or unanswered). */
  get outboxSize(): number {
    return this.outbox.size;
  }

  /** Resolves once the outbox has loaded its stored entries and written everything so far. */
  outboxFlushed(): Promise<void> {
    return this.outbox.flushed();
  }

  /** Starts connecting (and keeps reconnecting until {@link disconnect}). */
  connect(): void {
    if (this._state !== 'disconnected') return;
    this.attempts = 0;
    this.setState('connecting');
    this.openTransport();
  }

  /**
   * Closes the connection and stops reconnecting. Subscriptions stay and
   * resubscribe at the next `connect()`; the outbox keeps its publications.
   */
  disconnect(): void {
    if (this._state === 'disconnected') return;
    this.lose(LocalCode.disconnectCalled, 'disconnect called', false);
  }

  /**
   * Subscribes to a channel; the subscription lives until `unsubscribe()`
   * (or the server refuses or ends it), across reconnects.
   * Throws if the client already has a subscription to the channel.
   */
  subscribe(channel: string, options: SubscriptionOptions = {}): Subscription {
    const sub = new Subscription(this.host, channel, options);
    if (!this.host.attach(sub)) throw new Error(`already subscribed to ${channel}`);
    sub.start();
    return sub;
  }

  /** The client's subscription to `channel`, if any. */
  getSubscription(channel: string): Subscription | undefined {
    return this.subs.get(channel);
  }

  /** Every subscription, by channel. */
  subscriptions(): ReadonlyMap<string, Subscription> {
    return this.subs;
  }

  /**
   * Joins a story (a channel of a `collaboration = true` namespace) as an
   * editor or a viewer; the {@link Story} lives until `leave()` (or a
   * refusal), re-joining with recovery after every reconnect. Throws if the
   * client already has a story or a subscription on the channel.
   */
  story(channel: string, options: StoryOptions = {}): Story {
    const story = new Story(this.storyHost, channel, options);
    if (!this.storyHost.attach(story)) throw new Error(`already subscribed to ${channel} (a subscription or a story)`);
    story.start();
    return story;
  }

  /** The client's story on `channel`, if any. */
  getStory(channel: string): Story | undefined {
    return this.stories.get(channel);
  }

  /**
   * Publishes `data` (any JSON value) to a channel. While the client is not
   * connected the publication waits in the outbox and is sent, in order,
   * once it is; it carries an idempotency key so a resend after a lost
   * answer is published once. Resolves with the publication's offset;
   * rejects with an {@link OutboxDroppedError} if the outbox dropped it, or
   * with the {@link ServerError} that refused it.
   */
  publish(channel: string, data: unknown, options: PublishOptions = {}): Promise<PublishResult> {
    const idempotencyKey = options.idempotencyKey ?? this.random.uuid();
    const p = this.outbox.add({ id: this.random.uuid(), channel, data, idempotencyKey, createdAt: this.clock.now() });
    this.flushOutbox();
    return p;
  }

  /** Drops every publication in the outbox (their promises reject with `cleared`). */
  clearOutbox(): void {
    this.outbox.clear();
  }

  /** The channel's kept publications (namespaces with history). */
  history(channel: string, options: HistoryOptions = {}): Promise<HistoryResult> {
    return historyOf(this.host, channel, options);
  }

  /** Who is in a channel now (namespaces with presence). */
  presence(channel: string): Promise<PresenceResult> {
    return this.request<PresenceResult>('presence', { channel });
  }

  /** How many connections and distinct users are in a channel. */
  presenceStats(channel: string): Promise<PresenceStatsResult> {
    return this.request<PresenceStatsResult>('presence_stats', { channel });
  }

  /**
   * Sets this connection's presence state in a subscribed channel (e.g.
   * `typing`, `viewing`, `editing:<section>`; `""` clears it) for `ttl` seconds.
   */
  setPresenceState(channel: string, state: string, ttl?: number): Promise<void> {
    const params: Record<string, unknown> = { channel, state };
    if (ttl !== undefined) params.ttl = ttl;
    return this.request<unknown>('presence_state', params).then(() => undefined);
  }

  /** A backend call: the backends' reply (JSON as `data`, anything else as `bytes`). */
  async rpc(method: string, data?: unknown): Promise<RpcResult> {
    const params: Record<string, unknown> = { method };
    if (data !== undefined) params.data = data;
    const r = await this.request<WireRpcResult>('rpc', params);
    if (typeof r.b64data === 'string') return { bytes: decodeBase64(r.b64data) };
    return { data: r.data };
  }

  /** A message to the backends, without a reply (resolves once the node has handed it on). */
  send(data?: unknown): Promise<void> {
    return this.request<unknown>('send', data === undefined ? {} : { data }).then(() => undefined);
  }

  /** An application-level round trip. */
  ping(): Promise<void> {
    return this.request<unknown>('ping', {}).then(() => undefined);
  }

  /**
   * Sends any command and resolves with its result: the escape hatch for
   * methods this client has no wrapper for yet (e.g. story collaboration).
   * Waits for the connection while connecting (up to `timeout`); rejects at
   * once when disconnected.
   */
  request<T = unknown>(method: string, params: unknown): Promise<T> {
    return this.whenConnected().then(
      () =>
        new Promise<T>((resolve, reject) => {
          this.command<T>(method, params, { ok: resolve, fail: reject }, false);
        }),
    );
  }

  // ---------------------------------------------------------------- connection

  private setState(next: ClientState): void {
    const prev = this._state;
    if (prev === next) return;
    this._state = next;
    this.emit('state', { oldState: prev, newState: next });
  }

  private openTransport(): void {
    const id = ++this.connId;
    this.disconnectPush = undefined;
    const kind = this.policy.next();
    this.connectToken().then(
      (token) => {
        if (id !== this.connId || this._state !== 'connecting') return;
        if (kind === 'websocket' && this.format === 'binary') {
          loadBinaryCodec().then(
            (codec) => {
              if (id === this.connId && this._state === 'connecting') this.startTransport(id, kind, codec, token);
            },
            (err: unknown) => {
              if (id !== this.connId || this._state !== 'connecting') return;
              const error = err instanceof Error ? err : new Error(String(err));
              this.reportError(error, 'binary codec');
              this.lose(CloseCode.abnormal, `the binary codec did not load: ${error.message}`, true, error);
            },
          );
        } else {
          this.startTransport(id, kind, jsonCodec, token);
        }
      },
      (err: unknown) => {
        if (id !== this.connId || this._state !== 'connecting') return;
        const error = err instanceof Error ? err : new Error(String(err));
        if (error instanceof UnauthorizedError) {
          this.lose(LocalCode.unauthorized, error.message, false, error);
          return;
        }
        this.reportError(error, 'getToken');
        this.lose(LocalCode.unauthorized, `getToken failed: ${error.message}`, true, error);
      },
    );
  }

  /**
   * Opens attempt `id` over `kind`; gives it `timeout` to open. An attempt
   * lost before the server answered anything on it counts against `kind`
   * (see {@link lose}).
   */
  private startTransport(id: number, kind: TransportKind, codec: Codec, token: string | undefined): void {
    const attempt = { kind, answered: false };
    this.attempt = attempt;
    const answered = () => {
      if (attempt.answered) return;
      attempt.answered = true;
      this.policy.opened(kind);
    };
    const handlers: TransportHandlers = {
      onOpen: () => {
        if (id !== this.connId) return;
        this.clearOpenTimer();
        if (kind === 'sse') answered(); // the session event came from the server
        this.sendConnect(id, token);
      },
      onMessages: (msgs) => {
        if (id !== this.connId) return;
        answered();
        this.dispatch(msgs);
      },
      onClose: (code, reason) => {
        if (id === this.connId) this.onClose(code, reason);
      },
      onProtocolError: (err) => {
        if (id !== this.connId) return;
        this.reportError(err, 'protocol');
        this.lose(LocalCode.badProtocol, err.message, true, err);
      },
    };
    let transport: Transport;
    try {
      const { WebSocket: ws, sse } = this.transports;
      if (kind === 'sse' && sse) {
        transport = new SseTransport(this.url, { ...sse, clock: this.clock, random: this.random }, handlers);
      } else if (kind === 'websocket' && ws) {
        transport = new WebSocketTransport(ws, this.url, codec, handlers);
      } else {
        throw new Error(`no ${kind} transport`); // the policy only picks allowed ones
      }
    } catch (err) {
      // A constructor that throws (a bad URL, a page's security policy).
      const error = err instanceof Error ? err : new Error(String(err));
      this.reportError(error, kind);
      this.lose(CloseCode.abnormal, error.message, true, error);
      return;
    }
    this.conn = transport;
    this.commands.attach(transport);
    this.openTimer = this.clock.setTimeout(() => {
      this.openTimer = undefined;
      if (id !== this.connId) return;
      this.lose(LocalCode.timeout, `${kind === 'sse' ? 'the SSE session' : 'the WebSocket'} did not open within ${this.timeout} ms`, true);
    }, this.timeout);
  }

  private clearOpenTimer(): void {
    if (this.openTimer !== undefined) this.clock.clearTimeout(this.openTimer);
    this.openTimer = undefined;
  }

  /**
   * A WebSocket probe opened while on SSE: reconnect over WebSocket
   * (subscriptions recover as after any reconnect). The switch is the
   * client's own choice, so it does not cut commands short: it waits until
   * every command sent over SSE is answered (or, with commands never
   * pausing, at most the command timeout).
   */
  private leaveSse(): void {
    if (this._state !== 'connected' || this.conn?.kind !== 'sse') return;
    this.policy.webSocketWorks();
    if (this.commands.size > 0) {
      if (this.switchWaiting) return;
      this.switchWaiting = true;
      this.switchTimer = this.clock.setTimeout(() => {
        this.switchTimer = undefined;
        this.switchNow();
      }, this.timeout);
      return;
    }
    this.switchNow();
  }

  /** Leaves SSE for WebSocket at once (see {@link leaveSse}). */
  private switchNow(): void {
    if (this._state !== 'connected' || this.conn?.kind !== 'sse') return;
    this.lose(LocalCode.transportSwitch, 'a WebSocket opened: leaving SSE', true, undefined, true);
  }

  /** The token for the next `connect`: the current one, or a new one from `getToken` when needed. */
  private async connectToken(): Promise<string | undefined> {
    const getToken = this.opts.getToken;
    const stale =
      this.token !== undefined && (jwtExpiry(this.token) ?? Infinity) * 1000 <= this.clock.now();
    if (!getToken) {
      if (this.tokenRequired) throw new UnauthorizedError('the token expired and there is no getToken to renew it');
      return this.token;
    }
    if (this.token === undefined || this.tokenRequired || stale) {
      this.token = await getToken();
      this.tokenRequired = false;
    }
    return this.token === '' ? undefined : this.token;
  }

  private sendConnect(id: number, token: string | undefined): void {
    const params: ConnectParams = { name: this.opts.name ?? 'js' };
    if (this.opts.version !== undefined) params.version = this.opts.version;
    if (token) params.token = token;
    if (this.opts.user !== undefined) params.user = this.opts.user;
    if (this.opts.info !== undefined) params.info = this.opts.info;
    this.lastReceived = this.clock.now();
    this.command<ConnectResult>(
      'connect',
      params,
      {
        ok: (res) => {
          if (id === this.connId) this.onConnected(res);
        },
        fail: (err) => {
          if (id !== this.connId || !(err instanceof ServerError)) return; // timeouts and losses handled elsewhere
          let reconnect = err.temporary;
          if (err.code === ErrorCode.tokenExpired) {
            this.tokenRequired = true;
            reconnect = this.opts.getToken !== undefined;
          }
          this.reportError(err, 'connect');
          this.lose(err.code, err.message, reconnect, err);
        },
      },
      true,
      true,
    );
  }

  private onConnected(res: ConnectResult): void {
    const conn = this.conn as Transport;
    const info: ConnectedEvent = { ...res, transport: conn.kind, format: conn.format };
    this.info = info;
    this.attempts = 0;
    this.refreshAttempts = 0;
    this.setState('connected');
    for (const w of this.waiters.splice(0)) {
      this.clock.clearTimeout(w.timer);
      w.resolve();
    }
    if (res.expires) this.scheduleRefresh(res.ttl);
    this.armPing();
    for (const sub of [...this.subs.values()]) sub.connected();
    for (const story of [...this.stories.values()]) story.connected();
    this.flushOutbox();
    if (conn.kind === 'sse') this.prober?.start(0, this.probeInterval);
    this.emit('connected', info);
  }

  private onClose(code: number, reason: string): void {
    const push = this.disconnectPush;
    this.disconnectPush = undefined;
    const c = push?.code ?? code;
    const r = push?.reason ?? reason;
    let reconnect = push ? push.reconnect : closeCodeReconnects(code);
    if (c === CloseCode.tokenExpired) {
      this.tokenRequired = true;
      if (!this.opts.getToken) reconnect = false;
    }
    this.lose(c, r, reconnect);
  }

  /**
   * The connection (or an attempt) ended: clean up, tell the listeners, and
   * reconnect with backoff unless told not to or out of attempts.
   * `immediate`: reconnect at once, whatever the attempts (a transport switch).
   */
  private lose(code: number, reason: string, reconnect: boolean, error?: Error, immediate = false): void {
    this.connId++;
    const t = this.conn;
    this.conn = undefined;
    t?.close(reason);
    const attempt = this.attempt;
    this.attempt = undefined;
    if (attempt && !attempt.answered && code !== LocalCode.disconnectCalled) this.policy.failed(attempt.kind);
    this.prober?.stop();
    this.clearConnectionTimers();
    this.commands.failAll(new DisconnectedError(`connection lost: ${code} ${reason}`.trim()));
    this.publishesInFlight = 0;
    this.outbox.resetInFlight();
    for (const sub of [...this.subs.values()]) sub.disconnected();
    for (const story of [...this.stories.values()]) story.disconnected();

    const willReconnect = reconnect && (immediate || this.attempts < this.maxAttempts);
    const event: DisconnectedEvent = { code, reason, reconnect: willReconnect };
    if (error) event.error = error;
    if (willReconnect) {
      const delay = immediate ? 0 : backoffDelay(this.attempts, this.minDelay, this.maxDelay, this.random.random());
      this.attempts++;
      this.setState('connecting');
      this.emit('disconnected', event);
      this.emit('reconnecting', { attempt: this.attempts, delay });
      this.reconnectTimer = this.clock.setTimeout(() => {
        this.reconnectTimer = undefined;
        if (this._state === 'connecting') this.openTransport();
      }, delay);
    } else {
      this.setState('disconnected');
      for (const w of this.waiters.splice(0)) {
        this.clock.clearTimeout(w.timer);
        w.reject(new DisconnectedError('disconnected'));
      }
      this.emit('disconnected', event);
    }
  }

  private clearConnectionTimers(): void {
    for (const t of [this.reconnectTimer, this.openTimer, this.pingTimer, this.refreshTimer, this.flushPauseTimer, this.switchTimer]) {
      if (t !== undefined) this.clock.clearTimeout(t);
    }
    this.reconnectTimer = this.openTimer = this.pingTimer = this.refreshTimer = this.flushPauseTimer = this.switchTimer = undefined;
    this.switchWaiting = false;
    this.pingOutstanding = false;
  }

  private whenConnected(): Promise<void> {
    if (this._state === 'connected') return Promise.resolve();
    if (this._state === 'disconnected') return Promise.reject(new DisconnectedError('not connected'));
    return new Promise<void>((resolve, reject) => {
      const w: Waiter = {
        resolve,
        reject,
        timer: this.clock.setTimeout(() => {
          const i = this.waiters.indexOf(w);
          if (i >= 0) this.waiters.splice(i, 1);
          reject(new TimeoutError('connect', this.timeout));
        }, this.timeout),
      };
      this.waiters.push(w);
    });
  }

  private reportError(error: unknown, context: string): void {
    this.emit('error', { error: error instanceof Error ? error : new Error(String(error)), context });
  }

  // ---------------------------------------------------------------- liveness and credentials

  private pingEvery(): number {
    if (this.opts.pingInterval !== undefined) return this.opts.pingInterval;
    const server = this.info?.ping;
    return typeof server === 'number' && server > 0 ? server * 1000 : 25_000;
  }

  /** Arms the idle timer: after `pingInterval` without a message, a `ping` command checks the link. */
  private armPing(): void {
    const every = this.pingEvery();
    if (every <= 0) return;
    if (this.pingTimer !== undefined) this.clock.clearTimeout(this.pingTimer);
    const wait = Math.max(0, this.lastReceived + every - this.clock.now());
    this.pingTimer = this.clock.setTimeout(() => {
      this.pingTimer = undefined;
      if (this._state !== 'connected') return;
      if (this.clock.now() - this.lastReceived < every) {
        this.armPing();
        return;
      }
      if (this.pingOutstanding) return;
      this.pingOutstanding = true;
      const id = this.connId;
      const done = () => {
        if (id !== this.connId) return;
        this.pingOutstanding = false;
        this.armPing();
      };
      // No reply within `timeout`: `command` treats the link as dead and reconnects.
      this.command<unknown>('ping', {}, { ok: done, fail: done }, true);
    }, wait);
  }

  private scheduleRefresh(ttl: number | undefined): void {
    if (this.refreshTimer !== undefined) this.clock.clearTimeout(this.refreshTimer);
    this.refreshTimer = undefined;
    if (!this.opts.getToken) return;
    const delay = refreshDelay(this.clock.now(), this.refreshRatio, ttl, this.token);
    if (delay === undefined) return;
    this.refreshTimer = this.clock.setTimeout(() => {
      this.refreshTimer = undefined;
      this.refresh();
    }, delay);
  }

  private retryRefresh(): void {
    const delay = backoffDelay(this.refreshAttempts++, this.minDelay, this.maxDelay, this.random.random());
    this.refreshTimer = this.clock.setTimeout(() => {
      this.refreshTimer = undefined;
      this.refresh();
    }, delay);
  }

  private refresh(): void {
    const getToken = this.opts.getToken;
    if (!getToken || this._state !== 'connected') return;
    const id = this.connId;
    getToken().then(
      (token) => {
        if (id !== this.connId || this._state !== 'connected') return;
        this.token = token;
        this.command<RefreshResult>(
          'refresh',
          { token },
          {
            ok: (r) => {
              if (id !== this.connId) return;
              this.refreshAttempts = 0;
              this.emit('refreshed', r);
              if (r.expires) this.scheduleRefresh(r.ttl);
            },
            fail: (err) => {
              if (id !== this.connId || !(err instanceof ServerError)) return;
              this.reportError(err, 'refresh');
              if (err.temporary) this.retryRefresh();
            },
          },
          true,
        );
      },
      (err: unknown) => {
        if (id !== this.connId) return;
        const error = err instanceof Error ? err : new Error(String(err));
        if (error instanceof UnauthorizedError) {
          this.lose(LocalCode.unauthorized, error.message, false, error);
          return;
        }
        this.reportError(error, 'getToken');
        this.retryRefresh();
      },
    );
  }

  // ---------------------------------------------------------------- commands

  /**
   * Sends one command. `internal` commands (connect, subscribe, publish,
   * ping, refresh) mean a dead link when unanswered: their timeout also
   * closes the connection, which reconnects. `beforeConnect` lets `connect`
   * itself through.
   */
  private command<T>(method: string, params: unknown, callbacks: CommandCallbacks<T>, internal: boolean, beforeConnect = false): void {
    if (!this.conn || (this._state !== 'connected' && !beforeConnect)) {
      callbacks.fail(new DisconnectedError('not connected'));
      return;
    }
    this.commands.send(method, params, callbacks, internal);
  }

  private dispatch(messages: ServerMessage[]): void {
    this.lastReceived = this.clock.now();
    for (const m of messages) {
      if (m.kind === 'push') {
        this.onPush(m.channel, m.type, m.body);
        continue;
      }
      this.commands.settle(m);
    }
    // A switch to WebSocket waits for the commands in flight (leaveSse).
    if (this.switchWaiting && this.commands.size === 0) this.switchNow();
  }

  private onPush(channel: string | undefined, type: string, body: unknown): void {
    if (type === 'disconnect') {
      const b = (body ?? {}) as Partial<DisconnectPush>;
      const code = typeof b.code === 'number' ? b.code : 0;
      this.disconnectPush = {
        code,
        reason: typeof b.reason === 'string' ? b.reason : '',
        reconnect: typeof b.reconnect === 'boolean' ? b.reconnect : closeCodeReconnects(code),
      };
      return;
    }
    if (channel === undefined) return;
    const story = this.stories.get(channel);
    if (story) {
      story.push(type, body);
      return;
    }
    const sub = this.subs.get(channel);
    if (sub && sub.state === 'subscribed') {
      sub.push(type, body);
      return;
    }
    const b = (body ?? {}) as Record<string, unknown>;
    switch (type) {
      case 'pub':
        if (typeof b.offset === 'number') this.emit('publication', toPublication(channel, b as unknown as WirePublication, false));
        return;
      case 'join':
      case 'leave':
        this.emit(type, { channel, info: b.info as ClientInfo });
        return;
      case 'state':
        this.emit('presenceState', { channel, info: b.info as ClientInfo, state: typeof b.state === 'string' ? b.state : '' });
        return;
      case 'subscribe': {
        const r = b as unknown as SubscribeResult;
        this.emit('serverSubscribed', { channel, epoch: r.epoch, offset: r.offset, recoverable: r.recoverable === true });
        return;
      }
      case 'unsubscribe':
        this.emit('serverUnsubscribed', { channel });
        return;
      default:
        return; // a push type from a newer server
    }
  }

  // ---------------------------------------------------------------- outbox

  /** Sends unsent outbox publications in order, up to {@link OUTBOX_WINDOW} awaiting answers. */
  private flushOutbox(): void {
    if (this._state !== 'connected' || !this.outbox.isReady || this.flushPauseTimer !== undefined) return;
    for (const item of this.outbox.all()) {
      if (this.publishesInFlight >= OUTBOX_WINDOW) break;
      if (!item.inFlight) this.sendPublication(item);
    }
  }

  private sendPublication(item: OutboxItem): void {
    item.inFlight = true;
    this.publishesInFlight++;
    const id = this.connId;
    const { channel, data, idempotencyKey } = item.entry;
    this.command<PublishResult>(
      'publish',
      { channel, data, idempotency_key: idempotencyKey },
      {
        ok: (r) => {
          if (id === this.connId) this.publishesInFlight--;
          item.inFlight = false;
          if (this.outbox.succeed(item, r)) this.emit('outboxSent', { entry: item.entry, offset: r.offset });
          this.flushOutbox();
        },
        fail: (err) => {
          if (id === this.connId) this.publishesInFlight--;
          item.inFlight = false;
          // Lost connection or no answer: the outcome is unknown; the
          // same key goes out again after the reconnect.
          if (err instanceof DisconnectedError || err instanceof TimeoutError) return;
          if (err instanceof ServerError && err.temporary && item.retries < this.publishRetries) {
            item.retries++;
            this.pauseFlush(backoffDelay(item.retries - 1, this.minDelay, this.maxDelay, this.random.random()));
            return;
          }
          if (this.outbox.fail(item, err)) this.emit('outboxFailed', { entry: item.entry, error: err });
          this.flushOutbox();
        },
      },
      true,
    );
  }

  /** Holds the outbox back after a temporary error (overloaded, rate limited), keeping its order. */
  private pauseFlush(delay: number): void {
    if (this.flushPauseTimer !== undefined) return;
    this.flushPauseTimer = this.clock.setTimeout(() => {
      this.flushPauseTimer = undefined;
      this.flushOutbox();
    }, delay);
  }
}
