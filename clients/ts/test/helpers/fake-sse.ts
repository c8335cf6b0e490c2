/**
 * The SSE fallback's server side, faked: an `EventSource` the test pushes
 * events into, and a `fetch` whose POSTs the test answers.
 */
import type { EventSourceConstructor, EventSourceLike, FetchFunction, SseEvent, SsePostInit, SsePostResponse } from '../../src/index.js';
import type { SentCommand } from './fake-websocket.js';

/** An EventSource the test plays the server for. */
export class FakeEventSource implements EventSourceLike {
  /** Set when the client closed it. */
  closed = false;
  private readonly listeners = new Map<string, Array<(ev: SseEvent) => void>>();

  constructor(readonly url: string) {}

  addEventListener(type: string, listener: (ev: SseEvent) => void): void {
    const list = this.listeners.get(type) ?? [];
    list.push(listener);
    this.listeners.set(type, list);
  }

  close(): void {
    this.closed = true;
  }

  // ---- the test's side ----

  /** An event (`message`, or a named one: `session`, `close`, …). */
  dispatch(type: string, data: string): void {
    if (this.closed) return;
    for (const l of this.listeners.get(type) ?? []) l({ data });
  }

  /** The first event: the session's id and node. */
  session(session = 'sess-1', node = 'n'): void {
    this.dispatch('session', JSON.stringify({ session, node }));
  }

  /** A message event holding these objects, as a JSON frame would. */
  receive(...objects: unknown[]): void {
    this.dispatch('message', objects.map((o) => JSON.stringify(o)).join('\n'));
  }

  /** `event: close` and the end of the stream (which an EventSource reports as an error). */
  serverClose(code: number, reason = ''): void {
    this.dispatch('close', JSON.stringify({ code, reason }));
    this.fail();
  }

  /** The stream fails or ends. */
  fail(): void {
    if (this.closed) return;
    for (const l of this.listeners.get('error') ?? []) l({ data: undefined });
  }
}

/** One POST the client made. */
export interface Post {
  url: string;
  init: SsePostInit;
  /** Whether the test answered it yet. */
  settled: boolean;
  /** The status it was answered with. */
  status?: number;
  /** Answers it with `status` (204 = queued). */
  respond(status: number, headers?: Record<string, string>): void;
  /** The request fails (network error). */
  fail(): void;
}

/** A fake SSE server: its EventSources, its POSTs, and the commands in them. */
export interface SseFake {
  EventSource: EventSourceConstructor;
  fetch: FetchFunction;
  sources: FakeEventSource[];
  posts: Post[];
  /** The newest EventSource. */
  last(): FakeEventSource;
  /** Every command posted, in order (POSTs refused with a status other than 2xx left out). */
  commands(): SentCommand[];
  /** Commands of one method, in order. */
  sent(method: string): SentCommand[];
  /** Answers the oldest unanswered `method` command on the newest stream; returns it. */
  reply(method: string, result: unknown): SentCommand;
  /** Answers the oldest unanswered `method` command with an error. */
  replyError(method: string, code: number, temporary: boolean, message?: string): SentCommand;
}

/**
 * A fake SSE server. With `autoStatus` every POST is answered with it at
 * once (a microtask later); without, the test answers each.
 */
export function fakeSse(autoStatus?: number): SseFake {
  const sources: FakeEventSource[] = [];
  const posts: Post[] = [];
  const answered = new Set<number>();
  class Source extends FakeEventSource {
    constructor(url: string) {
      super(url);
      sources.push(this);
    }
  }
  const fetch: FetchFunction = (url, init) =>
    new Promise<SsePostResponse>((resolve, reject) => {
      const post: Post = {
        url,
        init,
        settled: false,
        respond(status, headers = {}) {
          if (post.settled) throw new Error('POST answered twice');
          post.settled = true;
          post.status = status;
          const h = new Map(Object.entries(headers).map(([k, v]) => [k.toLowerCase(), v]));
          resolve({ status, headers: { get: (name) => h.get(name.toLowerCase()) ?? null } });
        },
        fail() {
          post.settled = true;
          reject(new TypeError('fetch failed'));
        },
      };
      posts.push(post);
      if (autoStatus !== undefined) queueMicrotask(() => post.respond(autoStatus));
    });
  const last = (): FakeEventSource => {
    const s = sources[sources.length - 1];
    if (!s) throw new Error('no EventSource yet');
    return s;
  };
  const commands = (): SentCommand[] => {
    const out: SentCommand[] = [];
    for (const p of posts) {
      if (p.status !== undefined && (p.status < 200 || p.status > 299)) continue;
      for (const line of p.init.body.split('\n')) {
        const obj = JSON.parse(line) as Record<string, unknown>;
        const method = Object.keys(obj).find((k) => k !== 'id') as string;
        out.push({ id: obj.id as number, method, params: obj[method] as Record<string, unknown> });
      }
    }
    return out;
  };
  const unanswered = (method: string): SentCommand[] =>
    commands().filter((c) => c.method === method && !answered.has(c.id));
  return {
    EventSource: Source,
    fetch,
    sources,
    posts,
    last,
    commands,
    sent: (method) => commands().filter((c) => c.method === method),
    reply(method, result) {
      const c = unanswered(method)[0];
      if (!c) throw new Error(`no unanswered ${method}`);
      answered.add(c.id);
      last().receive({ id: c.id, [method]: result });
      return c;
    },
    replyError(method, code, temporary, message = 'error') {
      const c = unanswered(method)[0];
      if (!c) throw new Error(`no unanswered ${method}`);
      answered.add(c.id);
      last().receive({ id: c.id, error: { code, message, temporary } });
      return c;
    },
  };
}
