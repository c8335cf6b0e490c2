/**
 * The transport policy: WebSocket first, SSE when WebSockets cannot be
 * established, and back to WebSocket once a probe shows they can.
 */
import type { EventSourceConstructor, FetchFunction } from './sse.js';
import type { Clock, TimerHandle } from './timers.js';
import type { TransportKind, WebSocketConstructor, WebSocketLike } from './transport.js';

/** The transports a client can use here, and what they need. */
export interface Transports {
  /** At least one. */
  allowed: ReadonlySet<TransportKind>;
  /** Set when `allowed` has `websocket`. */
  WebSocket: WebSocketConstructor | undefined;
  /** Set when `allowed` has `sse`. */
  sse: { EventSource: EventSourceConstructor; fetch: FetchFunction } | undefined;
}

/**
 * The transports among `wanted` that this environment has: a WebSocket
 * constructor (given, or global) for `websocket`; an `EventSource`
 * constructor and a `fetch` (given, or global) for `sse`. Throws when none is left.
 */
export function resolveTransports(
  wanted: readonly TransportKind[],
  given: { WebSocket?: WebSocketConstructor; EventSource?: EventSourceConstructor; fetch?: FetchFunction },
): Transports {
  if (wanted.length === 0) throw new Error('options.transports is empty');
  const g = globalThis as { WebSocket?: WebSocketConstructor; EventSource?: EventSourceConstructor; fetch?: unknown };
  const ws = wanted.includes('websocket') ? (given.WebSocket ?? g.WebSocket) : undefined;
  const es = wanted.includes('sse') ? (given.EventSource ?? g.EventSource) : undefined;
  const globalFetch = typeof g.fetch === 'function' ? g.fetch : undefined;
  // Called as a plain function: a browser's fetch refuses any other `this`.
  const fetchFn: FetchFunction | undefined =
    given.fetch ?? (globalFetch ? (url, init) => (globalFetch as FetchFunction)(url, init) : undefined);
  const allowed = new Set<TransportKind>();
  if (ws) allowed.add('websocket');
  if (es && fetchFn) allowed.add('sse');
  if (allowed.size === 0) {
    throw new Error(
      wanted.includes('websocket')
        ? 'no WebSocket: pass options.WebSocket (on Node 20, or run node with --experimental-websocket)' +
            (wanted.includes('sse') ? ', or options.EventSource for the SSE fallback' : '')
        : 'no EventSource or fetch for the SSE transport: pass options.EventSource (and options.fetch)',
    );
  }
  return { allowed, WebSocket: ws, sse: es && fetchFn ? { EventSource: es, fetch: fetchFn } : undefined };
}

/**
 * Which transport the next connection attempt uses.
 *
 * - WebSocket whenever it is allowed, until `fallbackAfter` WebSocket
 *   attempts in a row failed before the server answered anything on them
 *   (refused, not open within the timeout, or open but silent, as behind a
 *   proxy that passes the upgrade and nothing else): then SSE.
 * - An SSE attempt that fails before its session event makes the next one a
 *   WebSocket again (both failing means the server is away, not that
 *   WebSockets are blocked); its failure sends the client back to SSE.
 * - A WebSocket the server answers on, or a probe that opens, resets the count.
 * - Losing a connection the server answered on changes nothing: the next
 *   attempt uses the same transport.
 */
export class TransportPolicy {
  private failures = 0;
  private current: TransportKind;

  /**
   * @param allowed the transports the client may use (at least one)
   * @param fallbackAfter WebSocket failures before opening, in a row, that switch to SSE
   */
  constructor(
    private readonly allowed: ReadonlySet<TransportKind>,
    private readonly fallbackAfter: number,
  ) {
    this.current = allowed.has('websocket') ? 'websocket' : 'sse';
  }

  /** The transport of the next attempt. */
  next(): TransportKind {
    return this.current;
  }

  /** Whether the client may switch between transports at all. */
  get canFallBack(): boolean {
    return this.allowed.has('websocket') && this.allowed.has('sse');
  }

  /** The server answered on an attempt's transport (a WebSocket frame, the SSE `session` event). */
  opened(kind: TransportKind): void {
    if (kind === 'websocket') this.failures = 0;
    this.current = kind;
  }

  /** An attempt ended before the server answered anything on it. */
  failed(kind: TransportKind): void {
    if (!this.canFallBack) return;
    if (kind === 'websocket') {
      this.failures++;
      if (this.failures >= this.fallbackAfter) this.current = 'sse';
    } else {
      this.current = 'websocket';
    }
  }

  /** A probe opened a WebSocket while the client was on SSE: the next attempt uses WebSocket. */
  webSocketWorks(): void {
    this.failures = 0;
    this.current = 'websocket';
  }
}

/**
 * While the client is on SSE, tries now and then whether a WebSocket
 * opens: a socket that opens is closed at once (nothing is sent on it) and
 * `onOpen` is called; one that fails or does not open within `timeout` is
 * dropped and the next try is scheduled.
 */
export class WebSocketProber {
  private timer: TimerHandle | undefined;
  private socket: WebSocketLike | undefined;
  private running = false;

  constructor(
    private readonly ctor: WebSocketConstructor,
    private readonly url: string,
    private readonly subprotocol: string,
    private readonly clock: Clock,
    /** How long a probe may take to open. */
    private readonly timeout: number,
    private readonly onOpen: () => void,
  ) {}

  /** Probes after `first` ms, then every `every` ms until it succeeds or {@link stop}. */
  start(first: number, every: number): void {
    this.stop();
    this.running = true;
    this.schedule(first, every);
  }

  /** Stops probing and drops a probe in flight. */
  stop(): void {
    this.running = false;
    if (this.timer !== undefined) this.clock.clearTimeout(this.timer);
    this.timer = undefined;
    this.drop();
  }

  private schedule(delay: number, every: number): void {
    this.timer = this.clock.setTimeout(() => {
      this.timer = undefined;
      this.probe(every);
    }, delay);
  }

  private probe(every: number): void {
    if (!this.running) return;
    const retry = () => {
      if (!this.running) return;
      this.drop();
      this.schedule(every, every);
    };
    let ws: WebSocketLike;
    try {
      ws = new this.ctor(this.url, this.subprotocol);
    } catch {
      retry();
      return;
    }
    this.socket = ws;
    ws.onopen = () => {
      if (this.socket !== ws) return;
      this.running = false;
      this.drop();
      this.onOpen();
    };
    ws.onerror = retry;
    ws.onclose = retry;
    this.timer = this.clock.setTimeout(() => {
      this.timer = undefined;
      retry();
    }, this.timeout);
  }

  private drop(): void {
    const ws = this.socket;
    this.socket = undefined;
    if (this.timer !== undefined) this.clock.clearTimeout(this.timer);
    this.timer = undefined;
    if (!ws) return;
    ws.onopen = null;
    ws.onmessage = null;
    ws.onerror = null;
    ws.onclose = null;
    try {
      ws.close(1000, 'probe');
    } catch {
      // not open yet, or already closing
    }
  }
}
