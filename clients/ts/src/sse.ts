/**
 * The SSE fallback transport, for networks that block WebSockets, as
 * wsedge serves it on the WebSocket's own port (docs/PROTOCOL.md, "SSE
 * fallback"): the server's frames come down an `EventSource`
 * (`GET <ws_path>/sse`), the client's commands go up as
 * `POST <ws_path>/sse/<session>`. Always the JSON form: each message event
 * carries exactly the text a JSON WebSocket frame would (one `data:` line
 * per object, which `EventSource` joins with `\n`).
 */
import { backoffDelay } from './backoff.js';
import { jsonCodec, type EncodedCommand } from './codec.js';
import { FrameError, type ServerMessage } from './protocol.js';
import type { Clock, Random, TimerHandle } from './timers.js';
import type { Transport, TransportHandlers } from './transport.js';

/** A server-sent event as the client reads it. */
export interface SseEvent {
  readonly data: unknown;
}

/**
 * The part of an `EventSource` the client uses (the browser's, or a Node
 * package's): listeners for `message`, `error` and the named events
 * `session` and `close`, and `close()`.
 */
export interface EventSourceLike {
  addEventListener(type: string, listener: (ev: SseEvent) => void): void;
  close(): void;
}

/** An `EventSource` constructor, e.g. `globalThis.EventSource` (assignable as it is). */
export type EventSourceConstructor = new (url: string) => EventSourceLike;

/** What the client passes to `fetch` for a `POST`. */
export interface SsePostInit {
  method: 'POST';
  headers: Record<string, string>;
  body: string;
}

/** The part of a `fetch` response the client reads. */
export interface SsePostResponse {
  readonly status: number;
  readonly headers: { get(name: string): string | null };
  /** Read (and ignored) to release the connection, when present. */
  text?(): Promise<string>;
}

/** A `fetch` function, e.g. `globalThis.fetch`. */
export type FetchFunction = (url: string, init: SsePostInit) => Promise<SsePostResponse>;

/** What an {@link SseTransport} needs besides its URL. */
export interface SseDeps {
  EventSource: EventSourceConstructor;
  fetch: FetchFunction;
  clock: Clock;
  random: Random;
}

/** The stream URL for a WebSocket URL: same host and port, `http(s)`, path + `/sse`, no query (a token never goes in a URL). */
export function sseUrl(wsUrl: string): string {
  const u = new URL(wsUrl);
  if (u.protocol === 'wss:') u.protocol = 'https:';
  else if (u.protocol === 'ws:') u.protocol = 'http:';
  u.pathname = `${u.pathname.replace(/\/+$/, '')}/sse`;
  u.search = '';
  u.hash = '';
  return u.toString();
}

/** `Content-Type` of the POSTs: a CORS-simple request, no preflight. */
const CONTENT_TYPE = 'text/plain;charset=UTF-8';

/** Retry delays after 429/503 without `Retry-After`: full jitter from 250 ms, at most 5 s. */
const RETRY_MIN = 250;
const RETRY_MAX = 5000;
/** A `Retry-After` longer than this is cut to it (the command timeouts decide before). */
const RETRY_AFTER_MAX = 60_000;

/**
 * One SSE session. Opens once the `session` event names it; then commands
 * go up in order: at most one `POST` in flight (the server runs a stream's
 * posts in the order it answered them), commands sent meanwhile wait and go
 * together, one per line, in the next one. A `POST` refused for load (429,
 * 503) is retried, same body, after `Retry-After` or a short backoff; one
 * over the server's `max_message_size` (413) is split; an unknown session
 * (404) or a failed request ends the connection as a lost one. The
 * stream's `close` event ends it as a WebSocket close would.
 */
export class SseTransport implements Transport {
  readonly kind = 'sse';
  readonly format = 'json';
  private readonly es: EventSourceLike;
  private readonly streamUrl: string;
  private session: string | undefined;
  private ended = false;
  /** Commands (one JSON object each, no newline in it) not yet posted, in order. */
  private queue: string[] = [];
  private posting = false;
  private retryTimer: TimerHandle | undefined;
  private retries = 0;

  constructor(
    wsUrl: string,
    private readonly deps: SseDeps,
    private readonly handlers: TransportHandlers,
  ) {
    this.streamUrl = sseUrl(wsUrl);
    this.es = new deps.EventSource(this.streamUrl);
    this.es.addEventListener('session', (ev) => {
      if (this.ended) return;
      if (this.session !== undefined) return this.fail(new FrameError('a second session event'));
      const body = parseJson(ev.data);
      if (typeof body?.session !== 'string' || body.session === '') {
        return this.fail(new FrameError(`a session event without a session: ${String(ev.data).slice(0, 200)}`));
      }
      this.session = body.session;
      this.handlers.onOpen();
    });
    this.es.addEventListener('message', (ev) => {
      if (this.ended) return;
      let messages: ServerMessage[];
      try {
        if (this.session === undefined) throw new FrameError('a message before the session event');
        if (typeof ev.data !== 'string') throw new FrameError('a message event without text');
        messages = jsonCodec.decode(ev.data);
      } catch (err) {
        return this.fail(err instanceof Error ? err : new FrameError(String(err)));
      }
      this.handlers.onMessages(messages);
    });
    this.es.addEventListener('close', (ev) => {
      if (this.ended) return;
      const body = parseJson(ev.data);
      const code = typeof body?.code === 'number' ? body.code : 1006;
      const reason = typeof body?.reason === 'string' ? body.reason : '';
      this.end(code, reason);
    });
    // The stream failed or ended without a close event. EventSource would
    // reconnect by itself; the client's backoff decides instead.
    this.es.addEventListener('error', () => {
      if (!this.ended) this.end(1006, this.session === undefined ? 'event stream failed' : 'event stream lost');
    });
  }

  get open(): boolean {
    return !this.ended && this.session !== undefined;
  }

  encode(id: number, method: string, params: unknown): EncodedCommand {
    return jsonCodec.encode(id, method, params);
  }

  send(commands: readonly EncodedCommand[]): void {
    if (!this.open || commands.length === 0) return;
    // A JSON frame is its commands joined by `\n`, and so is a POST body:
    // queued one by one, they can be split when a body is too large.
    this.queue.push(...jsonCodec.frame(commands).split('\n'));
    this.post();
  }

  close(): void {
    if (this.ended) return;
    this.detach();
  }

  /**
   * Posts `lines`, or every queued command, in one request (unless one is in
   * flight or waiting to be retried). The server does not unescape the
   * path: its ids (digits, dots, base64url) pass `encodeURIComponent`
   * unchanged, which only guards against an id that would break the URL.
   */
  private post(lines?: string[]): void {
    if (this.ended || this.session === undefined) return;
    if (!lines) {
      if (this.posting || this.retryTimer !== undefined || this.queue.length === 0) return;
      lines = this.queue.splice(0);
    }
    this.posting = true;
    const url = `${this.streamUrl}/${encodeURIComponent(this.session)}`;
    const init: SsePostInit = { method: 'POST', headers: { 'Content-Type': CONTENT_TYPE }, body: lines.join('\n') };
    const sent = lines;
    const fetchFn = this.deps.fetch;
    fetchFn(url, init).then(
      (res) => {
        if (typeof res.text === 'function') res.text().catch(() => {});
        if (this.ended) return;
        this.posting = false;
        this.answered(res, sent);
      },
      () => {
        if (this.ended) return;
        this.posting = false;
        this.end(1006, 'POST failed');
      },
    );
  }

  private answered(res: SsePostResponse, sent: string[]): void {
    const status = res.status;
    if (status >= 200 && status < 300) {
      this.retries = 0;
      this.post();
      return;
    }
    if (status === 429 || status === 503) {
      const delay = retryAfter(res.headers.get('Retry-After'), this.deps.clock.now()) ??
        backoffDelay(this.retries, RETRY_MIN, RETRY_MAX, this.deps.random.random());
      this.retries++;
      this.retryTimer = this.deps.clock.setTimeout(() => {
        this.retryTimer = undefined;
        this.post(sent);
      }, delay);
      return;
    }
    if (status === 413) {
      // Over `max_message_size`: the first half alone, the rest behind it.
      // A single command too large is what a WebSocket would close with
      // 1009 (message too big).
      if (sent.length > 1) {
        const half = Math.ceil(sent.length / 2);
        this.queue.unshift(...sent.slice(half));
        this.post(sent.slice(0, half));
        return;
      }
      this.end(1009, 'message too big');
      return;
    }
    // 404: the session is unknown or over. Anything else: the server is
    // not answering as it should. Either way the connection is lost.
    this.end(1006, status === 404 ? 'session not found' : `POST answered ${status}`);
  }

  /** The connection ended on the server's or the network's side. */
  private end(code: number, reason: string): void {
    this.detach();
    this.handlers.onClose(code, reason);
  }

  private fail(err: Error): void {
    this.detach();
    this.handlers.onProtocolError(err);
  }

  private detach(): void {
    this.ended = true;
    this.queue = [];
    if (this.retryTimer !== undefined) this.deps.clock.clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    try {
      this.es.close();
    } catch {
      // already closed
    }
  }
}

function parseJson(data: unknown): Record<string, unknown> | undefined {
  if (typeof data !== 'string') return undefined;
  try {
    const v = JSON.parse(data) as unknown;
    return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/** A `Retry-After` header in milliseconds (seconds, or an HTTP date), or undefined. */
function retryAfter(header: string | null, now: number): number | undefined {
  if (header === null || header.trim() === '') return undefined;
  const seconds = Number(header);
  const ms = Number.isFinite(seconds) ? seconds * 1000 : Date.parse(header) - now;
  return Number.isFinite(ms) ? Math.min(RETRY_AFTER_MAX, Math.max(0, ms)) : undefined;
}
