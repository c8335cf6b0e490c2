import type { WireFormat } from './codec.js';
import type { DropReason } from './errors.js';
import type { DropPolicy, OutboxEntry, OutboxStorage } from './outbox.js';
import type { ConnectResult, RefreshResult } from './protocol.js';
import type { PresenceEvent, PresenceStateEvent, Publication } from './subscription.js';
import type { EventSourceConstructor, FetchFunction } from './sse.js';
import type { Clock, Random } from './timers.js';
import type { TransportKind, WebSocketConstructor } from './transport.js';

/** The states of a client. */
export type ClientState = 'disconnected' | 'connecting' | 'connected';

/** Options of {@link Client}. Durations are in milliseconds. */
export interface ClientOptions {
  /** A connection token (JWT) for nodes with `[auth] mode = "jwt"`. */
  token?: string;
  /**
   * Gets a new connection token: before the first connect when there is no
   * `token`, before a reconnect when the token expired, and ahead of `exp`
   * to `refresh` the connection. Throw {@link UnauthorizedError} to stop
   * the client; any other error is retried with backoff. `""` = anonymous.
   */
  getToken?: () => Promise<string>;
  /** Client name sent in `connect` (default `js`). */
  name?: string;
  /** Client version sent in `connect`. */
  version?: string;
  /** The user id, taken as given only by nodes with `[auth] mode = "none"`. */
  user?: string;
  /** Any JSON shown to others in presence (`[auth] mode = "none"` only). */
  info?: unknown;
  /**
   * The wire form on WebSocket connections: `json` (default, subprotocol
   * `edu-matrix-v1.json`) or `binary` (FlatBuffers, `edu-matrix-v1`, loaded
   * on first use). The API is the same; SSE connections always use JSON.
   */
  format?: WireFormat;
  /**
   * The transports the client may use (default both). WebSocket always
   * comes first; `sse` is the fallback for networks that block WebSockets.
   * `['websocket']` never falls back; `['sse']` never tries a WebSocket.
   * One the environment lacks (no `WebSocket`, no `EventSource`) is left out.
   */
  transports?: TransportKind[];
  /**
   * WebSocket attempts in a row that end before the server answered anything
   * (refused, not open within `timeout`, or open but silent), after which
   * the client tries SSE (default 2).
   */
  fallbackAfter?: number;
  /**
   * While on SSE, how often the client checks whether a WebSocket opens
   * (the first check comes right after connecting); when one does, the
   * client reconnects over WebSocket and recovers. Default 60 000; 0 = never.
   */
  webSocketRetryInterval?: number;
  /** The WebSocket constructor when there is no global one (Node 20 without `--experimental-websocket`: e.g. `ws`). */
  WebSocket?: WebSocketConstructor;
  /** The EventSource constructor for the SSE fallback when there is no global one (Node: e.g. the `eventsource` package). */
  EventSource?: EventSourceConstructor;
  /** The `fetch` the SSE fallback posts commands with (default the global one). */
  fetch?: FetchFunction;
  /** How long a command may wait for its reply (default 10 000). */
  timeout?: number;
  /** Smallest reconnect delay (default 500). */
  minReconnectDelay?: number;
  /** Largest reconnect delay (default 20 000). */
  maxReconnectDelay?: number;
  /** Reconnect attempts after a loss before giving up (default unlimited). */
  maxReconnectAttempts?: number;
  /**
   * After this long without any message from the server the client sends a
   * `ping` command; no reply within `timeout` means a dead link and the
   * client reconnects. Default: the server's ping interval from the
   * `connect` reply (25 s); 0 turns it off.
   */
  pingInterval?: number;
  /** Refresh credentials after this fraction of their remaining lifetime (default 0.85). */
  refreshRatio?: number;
  /**
   * At most this many commands in any second (default 100; the server's
   * default limit is 200 and it closes a connection that sends twice that).
   * 0 = no limit.
   */
  maxCommandsPerSecond?: number;
  /** Publications the outbox holds, sent or not yet answered (default 1000). */
  outboxLimit?: number;
  /** When the outbox is full: drop the oldest unsent publication (default) or refuse the new one. */
  outboxDropPolicy?: DropPolicy;
  /** Where the outbox keeps publications (default in memory; {@link IndexedDBOutboxStorage} in browsers). */
  outboxStorage?: OutboxStorage;
  /** How many times a publication answered with a temporary error is retried before it fails (default 5). */
  publishRetries?: number;
  /** Time source (tests pass a fake one). */
  clock?: Clock;
  /** Random source (tests pass a fixed one). */
  random?: Random;
}

/** Payload of `connected` events: the `connect` reply, and what carries the connection. */
export interface ConnectedEvent extends ConnectResult {
  /** `websocket`, or `sse` after a fallback. */
  transport: TransportKind;
  /** The wire form: `binary` only on a WebSocket with `format: 'binary'`. */
  format: WireFormat;
}

/** Payload of `disconnected` events: the connection (or an attempt) ended. */
export interface DisconnectedEvent {
  /** A close code, an error code of the `connect` reply, or a {@link LocalCode}. */
  code: number;
  reason: string;
  /** Whether the client will reconnect by itself. */
  reconnect: boolean;
  /** The error behind it, when there is one. */
  error?: Error;
}

/** Payload of `reconnecting` events. */
export interface ReconnectingEvent {
  /** 1 for the first retry after a loss, then 2, 3, … */
  attempt: number;
  /** The delay before it, in milliseconds. */
  delay: number;
}

/** Payload of `serverSubscribed` events: the server subscribed the connection to a channel. */
export interface ServerSubscribedEvent {
  channel: string;
  epoch: string;
  offset: number;
  recoverable: boolean;
}

/** Events of a {@link Client}. */
export interface ClientEvents {
  state: { oldState: ClientState; newState: ClientState };
  connected: ConnectedEvent;
  disconnected: DisconnectedEvent;
  reconnecting: ReconnectingEvent;
  /** The connection's credentials were renewed (`refresh`). */
  refreshed: RefreshResult;
  error: { error: Error; context: string };
  /** A publication on a channel the client has no {@link Subscription} for (server-side subscriptions). */
  publication: Publication;
  join: PresenceEvent;
  leave: PresenceEvent;
  presenceState: PresenceStateEvent;
  serverSubscribed: ServerSubscribedEvent;
  serverUnsubscribed: { channel: string };
  /** An outbox publication was acknowledged. */
  outboxSent: { entry: OutboxEntry; offset: number };
  /** An outbox publication failed for good (its promise rejects with `error`). */
  outboxFailed: { entry: OutboxEntry; error: Error };
  /** An outbox publication was dropped unsent. */
  outboxDropped: { entry: OutboxEntry; reason: DropReason };
}

/** Options of `publish()`. */
export interface PublishOptions {
  /** Sent with every attempt so the server publishes it once (default: a random UUID). */
  idempotencyKey?: string;
}

/** Result of `rpc()`: the backend's reply, as JSON or as bytes. */
export interface RpcResult {
  data?: unknown;
  bytes?: Uint8Array;
}
