/**
 * The plain browser test page: `@wsedge/client` loaded as an ES module
 * straight from `dist/` (an import map names it), driven by the tests
 * through `window.edge`.
 */
import {
  Client,
  IndexedDBOutboxStorage,
  type ClientOptions,
  type ClientState,
  type SubscribedEvent,
  type TransportKind,
  type WireFormat,
} from '@wsedge/client';

import { testWebSocket, type SocketGate } from './socket.js';

/** A publication as the page saw it. */
export interface SeenPublication {
  offset: number;
  data: unknown;
  replayed: boolean;
}

/** Everything the page's client reported. */
export interface PageLog {
  states: ClientState[];
  /** The transport of every `connected` event. */
  connected: TransportKind[];
  disconnected: { code: number; reconnect: boolean }[];
  reconnecting: { attempt: number; delay: number }[];
  subscribed: Record<string, SubscribedEvent[]>;
  publications: Record<string, SeenPublication[]>;
  /** `outboxSent` events, including entries restored from IndexedDB. */
  outboxSent: { data: unknown; offset: number }[];
  /** Settled `publish()` calls, by the key the test gave: the offset or the error. */
  published: Record<string, number | string>;
  /** The `session` and `close` events of the client's event streams (with `recordSse`), in order. */
  sseEvents: { type: string; data: string }[];
  /** Client `error` events and dropped or failed outbox entries. */
  errors: string[];
}

/** How the test starts the page's client. */
export interface StartOptions {
  url: string;
  user: string;
  /** A loopback port with no listener, for the closed gate. */
  deadPort: number;
  /** Whether the gate starts open (default true). */
  gateOpen?: boolean;
  /** Keep the outbox in this IndexedDB database (default: in memory). */
  outboxDb?: string;
  /** The wire form (default JSON). */
  format?: WireFormat;
  /** Client options for the SSE fallback (default: the client's). */
  transports?: TransportKind[];
  fallbackAfter?: number;
  webSocketRetryInterval?: number;
  /**
   * Leave the client the browser's own `WebSocket` (no gate, no recording;
   * `gate` stays undefined), as an app would.
   */
  nativeWebSocket?: boolean;
  /** Give the client the browser's `EventSource`, subclassed only to record its `session` and `close` events in `log.sseEvents`. */
  recordSse?: boolean;
}

/** What the tests call through `page.evaluate`. */
export interface PlainPageApi {
  log: PageLog;
  gate: SocketGate | undefined;
  /** Creates and connects the client; resolves once its outbox has loaded. */
  start(options: StartOptions): Promise<void>;
  state(): ClientState | undefined;
  /** What carries the client's connection now. */
  transport(): TransportKind | undefined;
  subscribe(channel: string): void;
  /** Publishes without waiting; the outcome lands in `log.published[key]`. */
  publish(channel: string, data: unknown, key: string): void;
  outboxSize(): number;
  outboxFlushed(): Promise<void>;
  /** The data of the entries stored in an IndexedDB outbox database, in order. */
  storedEntries(dbName: string): Promise<unknown[]>;
  /** The negotiated `extensions` of every socket that opened. */
  extensions(): string[];
}

declare global {
  interface Window {
    edge: PlainPageApi;
  }
}

let client: Client | undefined;
const log: PageLog = {
  states: [],
  connected: [],
  disconnected: [],
  reconnecting: [],
  subscribed: {},
  publications: {},
  outboxSent: [],
  published: {},
  sseEvents: [],
  errors: [],
};

window.edge = {
  log,
  gate: undefined,
  async start(o) {
    const options: ClientOptions = { user: o.user, minReconnectDelay: 100, maxReconnectDelay: 1000 };
    if (!o.nativeWebSocket) {
      const { ctor, gate } = testWebSocket(o.deadPort, o.gateOpen ?? true);
      window.edge.gate = gate;
      options.WebSocket = ctor;
    }
    if (o.outboxDb) options.outboxStorage = new IndexedDBOutboxStorage({ dbName: o.outboxDb });
    if (o.format) options.format = o.format;
    if (o.recordSse) {
      class RecordingEventSource extends EventSource {
        constructor(url: string | URL) {
          super(url);
          for (const type of ['session', 'close']) {
            this.addEventListener(type, (ev) => log.sseEvents.push({ type, data: String((ev as MessageEvent).data) }));
          }
        }
      }
      options.EventSource = RecordingEventSource;
    }
    if (o.transports) options.transports = o.transports;
    if (o.fallbackAfter !== undefined) options.fallbackAfter = o.fallbackAfter;
    if (o.webSocketRetryInterval !== undefined) options.webSocketRetryInterval = o.webSocketRetryInterval;
    const c = new Client(o.url, options);
    client = c;
    c.on('state', ({ newState }) => log.states.push(newState));
    c.on('connected', ({ transport }) => log.connected.push(transport));
    c.on('disconnected', ({ code, reconnect }) => log.disconnected.push({ code, reconnect }));
    c.on('reconnecting', (e) => log.reconnecting.push(e));
    c.on('outboxSent', ({ entry, offset }) => log.outboxSent.push({ data: entry.data, offset }));
    c.on('outboxDropped', ({ entry, reason }) => log.errors.push(`dropped ${JSON.stringify(entry.data)}: ${reason}`));
    c.on('outboxFailed', ({ entry, error }) => log.errors.push(`failed ${JSON.stringify(entry.data)}: ${error.message}`));
    c.on('error', ({ error, context }) => log.errors.push(`${context}: ${error.message}`));
    c.connect();
    await c.outboxFlushed();
  },
  state: () => client?.state,
  transport: () => client?.transport,
  subscribe(channel) {
    if (!client) throw new Error('start first');
    const subscribed: SubscribedEvent[] = (log.subscribed[channel] = []);
    const pubs: SeenPublication[] = (log.publications[channel] = []);
    const sub = client.subscribe(channel);
    sub.on('subscribed', (e) => subscribed.push(e));
    sub.on('publication', (p) => pubs.push({ offset: p.offset, data: p.data, replayed: p.replayed }));
  },
  publish(channel, data, key) {
    if (!client) throw new Error('start first');
    client.publish(channel, data).then(
      (r) => (log.published[key] = r.offset),
      (e: unknown) => (log.published[key] = `error: ${e instanceof Error ? e.message : String(e)}`),
    );
  },
  outboxSize: () => client?.outboxSize ?? 0,
  outboxFlushed: () => client?.outboxFlushed() ?? Promise.resolve(),
  async storedEntries(dbName) {
    return (await new IndexedDBOutboxStorage({ dbName }).load()).map((e) => e.data);
  },
  extensions: () => [...(window.edge.gate?.opened ?? [])],
};
