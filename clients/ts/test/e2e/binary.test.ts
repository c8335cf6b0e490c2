/**
 * End-to-end, binary form (`format: 'binary'`, subprotocol `edu-matrix-v1`)
 * against a real wsedge process (`$WSEDGE_BIN`), side by side with JSON
 * clients. Skipped, loudly, when the binary is not there.
 *
 * `WSEDGE_CAPTURE_FIXTURE=1 npm run test:e2e` also rewrites
 * test/fixtures/server-frames.json, the real-server frames the unit tests decode.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import {
  Client,
  ServerError,
  type ClientOptions,
  type ConnectedEvent,
  type DisconnectedEvent,
  type Publication,
  type SubscribedEvent,
  type WebSocketConstructor,
  type WebSocketLike,
} from '../../src/index.js';
import { captureServerFrames } from '../helpers/capture.js';
import { framesParity } from '../helpers/parity.js';
import { EdgeServer, freePort, gatedWebSocket, skipReason, waitFor } from '../helpers/server.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

const skip = skipReason();
if (skip) process.stderr.write(`\n!!! ${skip}\n\n`);

const CONFIG = `
[[namespace]]
name = "chat"
history_size = 100
history_ttl = "10m"
recover = true
presence = true
join_leave = true
`;

const clients: Client[] = [];
const servers: EdgeServer[] = [];
after(async () => {
  for (const c of clients) c.disconnect();
  for (const s of servers) await s.stop();
});

function client(url: string, options: ClientOptions = {}): Client {
  // WebSocket only: these tests cut and gate the WebSocket path, and with the
  // SSE fallback allowed a client would reconnect around the gate (or over SSE
  // while the restarted node comes up, then move back). The fallback has its
  // own tests (sse.test.ts, unit/fallback.test.ts).
  const c = new Client(url, { minReconnectDelay: 100, maxReconnectDelay: 1000, transports: ['websocket'], ...options });
  c.on('error', () => {});
  clients.push(c);
  return c;
}

async function start(): Promise<EdgeServer> {
  const s = await EdgeServer.start(CONFIG);
  servers.push(s);
  return s;
}

function collect(sub: { on(e: 'publication', l: (p: Publication) => void): unknown }): Publication[] {
  const out: Publication[] = [];
  sub.on('publication', (p) => out.push(p));
  return out;
}

/** A WebSocket constructor that records the subprotocol the server chose and every frame received. */
function recordingWebSocket(): { ctor: WebSocketConstructor; protocols: string[]; frames: unknown[] } {
  const rec = { ctor: undefined as unknown as WebSocketConstructor, protocols: [] as string[], frames: [] as unknown[] };
  const Real = globalThis.WebSocket as unknown as WebSocketConstructor;
  rec.ctor = function RecordingWebSocket(url: string, protocols?: string | string[]): WebSocketLike {
    const ws = new Real(url, protocols);
    const socket = ws as WebSocketLike & { addEventListener(t: string, l: (ev: { data?: unknown }) => void): void };
    socket.addEventListener('open', () => rec.protocols.push(ws.protocol));
    socket.addEventListener('message', (ev) => rec.frames.push(ev.data));
    return ws;
  } as unknown as WebSocketConstructor;
  return rec;
}

test('binary: connect, subscribe, publish, receive, history, presence, errors, side by side with a JSON client', { skip }, async () => {
  const server = await start();
  const rec = recordingWebSocket();
  const alice = client(server.url, { format: 'binary', user: 'alice', info: { name: 'Alice' }, WebSocket: rec.ctor });
  const bob = client(server.url, { user: 'bob' }); // JSON
  const connected: ConnectedEvent[] = [];
  alice.on('connected', (e) => connected.push(e));
  alice.connect();
  bob.connect();
  const aliceSub = alice.subscribe('chat:room-1');
  const bobSub = bob.subscribe('chat:room-1');
  const atAlice = collect(aliceSub);
  const atBob = collect(bobSub);
  const subscribed: SubscribedEvent[] = [];
  aliceSub.on('subscribed', (e) => subscribed.push(e));
  await waitFor('both subscribed', () => aliceSub.state === 'subscribed' && bobSub.state === 'subscribed');
  assert.equal(connected[0]?.format, 'binary');
  assert.equal(connected[0]?.transport, 'websocket');
  assert.equal(alice.connection?.user, 'alice');
  assert.deepEqual(rec.protocols, ['edu-matrix-v1'], 'the server chose the binary subprotocol');
  assert.equal(subscribed[0]?.recoverable, true);
  assert.match(subscribed[0]?.epoch ?? '', /^[0-9a-f]{16}$/);

  // Publications cross the forms both ways, in order.
  assert.equal((await alice.publish('chat:room-1', { text: 'from binary', n: [1, 2] })).offset, 1);
  assert.equal((await bob.publish('chat:room-1', 'from json')).offset, 2);
  assert.equal((await alice.publish('chat:room-1', null, { idempotencyKey: 'k-1' })).offset, 3);
  assert.equal((await alice.publish('chat:room-1', null, { idempotencyKey: 'k-1' })).offset, 3, 'published once');
  await waitFor('3 publications at both', () => atAlice.length >= 3 && atBob.length >= 3);
  const expected = [
    [1, { text: 'from binary', n: [1, 2] }],
    [2, 'from json'],
    [3, null],
  ];
  assert.deepEqual(
    atAlice.map((p) => [p.offset, p.data]),
    expected,
  );
  assert.deepEqual(
    atBob.map((p) => [p.offset, p.data]),
    expected,
  );
  assert.ok(
    rec.frames.length > 0 && rec.frames.every((f) => f instanceof ArrayBuffer),
    'every frame alice got was binary',
  );

  // The same queries give the same answers in both forms.
  const [hb, hj] = await Promise.all([alice.history('chat:room-1', { limit: 10 }), bob.history('chat:room-1', { limit: 10 })]);
  assert.deepEqual(hb, hj);
  assert.equal(hb.publications.length, 3);
  const since = await alice.history('chat:room-1', { since: { epoch: hb.epoch, offset: 1 }, reverse: true, limit: 2 });
  assert.deepEqual(
    since.publications.map((p) => p.offset),
    [3, 2],
  );
  await aliceSub.setPresenceState('typing', 10);
  const [pb, pj] = await Promise.all([alice.presence('chat:room-1'), bob.presence('chat:room-1')]);
  assert.deepEqual(pb, pj);
  const aliceEntry = pb.clients[alice.connection?.client ?? ''];
  assert.deepEqual(aliceEntry, { user: 'alice', client: alice.connection?.client, info: { name: 'Alice' }, state: 'typing' });
  assert.deepEqual(await alice.presenceStats('chat:room-1'), { num_clients: 2, num_users: 2 });

  // Refusals are the same typed errors.
  await assert.rejects(alice.presence('plain'), (e: unknown) => e instanceof ServerError && e.code === 103);
  await assert.rejects(alice.rpc('rooms.list'), (e: unknown) => e instanceof ServerError && e.code === 127);
  await assert.rejects(alice.request('no_such_method', {}), (e: unknown) => e instanceof ServerError && e.code === 104);
  await alice.ping();
  assert.equal(alice.state, 'connected');
});

test('binary: a connection dropped by the server reconnects and recovers what was missed', { skip }, async () => {
  const server = await start();
  const gate = gatedWebSocket(await freePort());
  const alice = client(server.url, { format: 'binary', user: 'alice2', WebSocket: gate.ctor });
  const bob = client(server.url, { format: 'binary', user: 'bob2' });
  const lost: DisconnectedEvent[] = [];
  alice.on('disconnected', (e) => lost.push(e));
  alice.connect();
  bob.connect();
  const sub = alice.subscribe('chat:room-2');
  const got = collect(sub);
  const subscribed: SubscribedEvent[] = [];
  sub.on('subscribed', (e) => subscribed.push(e));
  await waitFor('alice subscribed', () => sub.state === 'subscribed');
  await bob.publish('chat:room-2', 'live-1');
  await waitFor('live-1 at alice', () => got.length === 1);

  gate.open = false;
  await server.callApi('disconnect', { user: 'alice2' });
  await waitFor('alice disconnected', () => lost.length >= 1);
  assert.equal(lost[0]?.code, 3006, 'the code of the binary disconnect push');
  assert.equal(lost[0]?.reconnect, true);
  for (const d of ['missed-2', 'missed-3']) await bob.publish('chat:room-2', d);
  gate.open = true;

  await waitFor('alice resubscribed', () => subscribed.length === 2, 30_000);
  const again = subscribed[1] as SubscribedEvent;
  assert.equal(again.recovering, true);
  assert.equal(again.recovered, true);
  assert.equal(again.replayed, 2);
  await bob.publish('chat:room-2', 'live-4');
  await waitFor('live-4 at alice', () => got.length >= 4);
  assert.deepEqual(
    got.map((p) => [p.offset, p.data, p.replayed]),
    [
      [1, 'live-1', false],
      [2, 'missed-2', true],
      [3, 'missed-3', true],
      [4, 'live-4', false],
    ],
  );
});

test('binary: frames a real server sends decode exactly as the JSON form (every reply and push type)', { skip }, async () => {
  const server = await start();
  const captured = await captureServerFrames(server);
  const seen = framesParity(captured);
  for (const p of ['pub', 'pub/b64data', 'join', 'leave', 'state', 'subscribe', 'unsubscribe', 'disconnect']) {
    assert.ok(seen.pushes.has(p), `a ${p} push`);
  }
  if (process.env.WSEDGE_CAPTURE_FIXTURE) {
    const file = join(ROOT, 'test/fixtures/server-frames.json');
    writeFileSync(file, `${JSON.stringify(captured, null, 2)}\n`);
    process.stderr.write(`wrote ${file}\n`);
  }
});
