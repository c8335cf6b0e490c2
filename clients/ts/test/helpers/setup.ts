import { Client, type ClientOptions } from '../../src/index.js';
import { FakeClock, FakeRandom, settle } from './fake-clock.js';
import { fakeSse, type FakeEventSource, type SseFake } from './fake-sse.js';
import { fakeWebSocket, type FakeSocket } from './fake-websocket.js';

/** A client on a fake clock and fake sockets. */
export interface Harness {
  client: Client;
  clock: FakeClock;
  random: FakeRandom;
  ws: ReturnType<typeof fakeWebSocket>;
}

export function harness(options: ClientOptions = {}, randoms: number[] = [0.5]): Harness {
  const clock = new FakeClock();
  const random = new FakeRandom(randoms);
  const ws = fakeWebSocket();
  const client = new Client('ws://edge.test/ws', { clock, random, WebSocket: ws.ctor, ...options });
  return { client, clock, random, ws };
}

export const CONNECT_REPLY = { client: 'c.0.1', node: 'n', ping: 25, user: 'ann', expires: false };

/** Accepts the newest socket and answers its `connect`; returns the socket. */
export async function accept(h: Harness, reply: Record<string, unknown> = CONNECT_REPLY): Promise<FakeSocket> {
  await settle();
  const s = h.ws.last();
  s.accept();
  await settle();
  s.reply('connect', reply);
  await settle();
  return s;
}

/** A connected client. */
export async function connected(options: ClientOptions = {}, randoms?: number[]): Promise<Harness & { socket: FakeSocket }> {
  const h = harness(options, randoms);
  h.client.connect();
  const socket = await accept(h);
  return { ...h, socket };
}

/** A client on a fake clock, fake sockets and a fake SSE server. */
export interface SseHarness extends Harness {
  sse: SseFake;
}

/**
 * A client that may use the SSE fallback (fake EventSource and fetch; POSTs
 * answered with `autoStatus` at once, or by the test when null).
 */
export function sseHarness(options: ClientOptions = {}, randoms?: number[], autoStatus: number | null = 204): SseHarness {
  const sse = fakeSse(autoStatus ?? undefined);
  const h = harness({ EventSource: sse.EventSource, fetch: sse.fetch, ...options }, randoms);
  return { ...h, sse };
}

/** Opens the newest event stream's session and answers its `connect`; returns the stream. */
export async function acceptSse(h: SseHarness, reply: Record<string, unknown> = CONNECT_REPLY): Promise<FakeEventSource> {
  await settle();
  const es = h.sse.last();
  es.session();
  await settle();
  h.sse.reply('connect', reply);
  await settle();
  return es;
}

/** Records every event of one kind. */
export function record<T>(on: (listener: (e: T) => void) => unknown): T[] {
  const out: T[] = [];
  on((e) => out.push(e));
  return out;
}

/** A compact JWS with the given claims (unsigned: the client never verifies). */
export function fakeJwt(claims: Record<string, unknown>): string {
  const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');
  return `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}.sig`;
}
