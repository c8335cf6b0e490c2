/**
 * End-to-end: the client against a real wsedge process (`$WSEDGE_BIN`).
 * Skipped, loudly, when the binary is not there.
 */
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { after, test } from 'node:test';

import {
  Client,
  ServerError,
  type ClientOptions,
  type DisconnectedEvent,
  type Publication,
  type ReconnectingEvent,
  type SubscribedEvent,
} from '../../src/index.js';
import { EdgeServer, freePort, gatedWebSocket, skipReason, waitFor, waitForAsync, WSEDGE_BIN } from '../helpers/server.js';

const skip = skipReason();
if (skip) process.stderr.write(`\n!!! ${skip}\n\n`);
else process.stderr.write(`e2e: using ${WSEDGE_BIN}\n`);

/** A namespace with history, recovery and presence; other channels use the defaults. */
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
  c.on('error', () => {}); // asserted where it matters
  clients.push(c);
  return c;
}

async function start(toml = CONFIG, options: { port?: number; env?: Record<string, string> } = {}): Promise<EdgeServer> {
  const s = await EdgeServer.start(toml, options);
  servers.push(s);
  return s;
}

function collect(sub: { on(e: 'publication', l: (p: Publication) => void): unknown }): Publication[] {
  const out: Publication[] = [];
  sub.on('publication', (p) => out.push(p));
  return out;
}

test('connect, subscribe, publish, receive; history, presence, idempotency', { skip }, async () => {
  const server = await start();
  const alice = client(server.url, { user: 'alice', info: { name: 'Alice' } });
  const bob = client(server.url, { user: 'bob' });
  alice.connect();
  bob.connect();
  const sub = alice.subscribe('chat:room-1');
  const got = collect(sub);
  const subscribed: SubscribedEvent[] = [];
  sub.on('subscribed', (e) => subscribed.push(e));
  await waitFor('alice subscribed', () => sub.state === 'subscribed');
  assert.equal(subscribed[0]?.recoverable, true);
  assert.equal(subscribed[0]?.recovering, false);
  assert.match(subscribed[0]?.epoch ?? '', /^[0-9a-f]{16}$/);

  const offsets = [];
  for (const text of ['one', 'two', 'three']) offsets.push((await bob.publish('chat:room-1', { text })).offset);
  assert.deepEqual(offsets, [1, 2, 3]);
  await waitFor('3 publications at alice', () => got.length >= 3);
  assert.deepEqual(
    got.map((p) => [p.offset, p.data, p.replayed]),
    [
      [1, { text: 'one' }, false],
      [2, { text: 'two' }, false],
      [3, { text: 'three' }, false],
    ],
  );

  // The same idempotency key twice: one publication, the same offset.
  const a = await bob.publish('chat:room-1', 'once', { idempotencyKey: 'e2e-key-1' });
  const b = await bob.publish('chat:room-1', 'once', { idempotencyKey: 'e2e-key-1' });
  assert.equal(a.offset, 4);
  assert.equal(b.offset, 4);

  const hist = await bob.history('chat:room-1', { limit: 10 });
  assert.deepEqual(
    hist.publications.map((p) => [p.offset, p.data]),
    [
      [1, { text: 'one' }],
      [2, { text: 'two' }],
      [3, { text: 'three' }],
      [4, 'once'],
    ],
  );
  assert.equal(hist.epoch, subscribed[0]?.epoch);
  assert.equal(hist.offset, 4);

  const presence = await bob.presence('chat:room-1');
  const members = Object.values(presence.clients);
  assert.equal(members.length, 1);
  assert.equal(members[0]?.user, 'alice');
  assert.deepEqual(members[0]?.info, { name: 'Alice' });
  assert.equal(members[0]?.client, alice.connection?.client);
  assert.deepEqual(await bob.presenceStats('chat:room-1'), { num_clients: 1, num_users: 1 });

  await sub.setPresenceState('typing', 10);
  const withState = await bob.presence('chat:room-1');
  assert.equal(Object.values(withState.clients)[0]?.state, 'typing');

  // What the server says when something is refused, as a typed error.
  await assert.rejects(bob.presence('plain'), (e: unknown) => e instanceof ServerError && e.code === 103);
  await assert.rejects(bob.rpc('rooms.list'), (e: unknown) => e instanceof ServerError && e.code === 127);
  await bob.ping();

  // Wait for alice to see the last publication before unsubscribing.
  await waitFor('4 publications at alice', () => got.length >= 4);
  assert.equal(got.length, 4, 'the repeated key was not published twice');
  sub.unsubscribe();
  await waitForAsync('alice left presence', async () => (await bob.presenceStats('chat:room-1')).num_clients === 0);
});

test('a connection dropped by the server: reconnect by itself and recover what was missed (recovered: true)', { skip }, async () => {
  const server = await start();
  const gate = gatedWebSocket(await freePort());
  const alice = client(server.url, { user: 'alice2', WebSocket: gate.ctor });
  const bob = client(server.url, { user: 'bob2' });
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

  // Keep alice away until bob has published, then let her back.
  gate.open = false;
  await server.callApi('disconnect', { user: 'alice2' });
  await waitFor('alice disconnected', () => lost.length >= 1);
  assert.equal(lost[0]?.code, 3006, 'the server API disconnect code (from the disconnect push)');
  assert.equal(lost[0]?.reconnect, true);
  assert.equal(sub.state, 'subscribing');
  const offsets = [];
  for (const d of ['missed-2', 'missed-3', 'missed-4']) offsets.push((await bob.publish('chat:room-2', d)).offset);
  assert.deepEqual(offsets, [2, 3, 4]);
  gate.open = true;

  await waitFor('alice resubscribed', () => subscribed.length === 2, 30_000);
  assert.equal(alice.state, 'connected');
  const again = subscribed[1] as SubscribedEvent;
  assert.equal(again.recovering, true);
  assert.equal(again.recovered, true);
  assert.equal(again.replayed, 3);
  assert.equal(again.epoch, subscribed[0]?.epoch);
  assert.equal(again.offset, 4);
  await bob.publish('chat:room-2', 'live-5');
  await waitFor('live-5 at alice', () => got.length >= 5);
  assert.deepEqual(
    got.map((p) => [p.offset, p.data, p.replayed]),
    [
      [1, 'live-1', false],
      [2, 'missed-2', true],
      [3, 'missed-3', true],
      [4, 'missed-4', true],
      [5, 'live-5', false],
    ],
  );
  assert.deepEqual(sub.position, { epoch: again.epoch, offset: 5 });
});

test('server killed (SIGKILL) and restarted on the same port: reconnect with backoff, resubscribe, flush the outbox once', { skip }, async () => {
  const first = await start();
  const port = first.port;
  const gate = gatedWebSocket(await freePort());
  const alice = client(first.url, { user: 'alice3' });
  const bob = client(first.url, { user: 'bob3', WebSocket: gate.ctor });
  const retries: ReconnectingEvent[] = [];
  alice.on('reconnecting', (e) => retries.push(e));
  alice.connect();
  bob.connect();
  const sub = alice.subscribe('chat:room-3');
  const got = collect(sub);
  const subscribed: SubscribedEvent[] = [];
  sub.on('subscribed', (e) => subscribed.push(e));
  await waitFor('alice subscribed', () => sub.state === 'subscribed');
  await waitFor('bob connected', () => bob.state === 'connected');
  assert.equal((await bob.publish('chat:room-3', 'before')).offset, 1);
  await waitFor('"before" at alice', () => got.length === 1);
  const oldEpoch = subscribed[0]?.epoch;

  gate.open = false; // bob stays away until alice is back, so alice sees the flush live
  await first.kill('SIGKILL');
  await waitFor('both clients lost the server', () => alice.state === 'connecting' && bob.state === 'connecting');
  assert.equal(sub.state, 'subscribing');

  // Published while the server is down: they wait in bob's outbox.
  const sentEvents: number[] = [];
  bob.on('outboxSent', (e) => sentEvents.push(e.offset));
  const pending = ['offline-1', 'offline-2', 'offline-3'].map((d) => bob.publish('chat:room-3', d));
  assert.equal(bob.outboxSize, 3);
  await new Promise((r) => setTimeout(r, 300)); // a few failed attempts with the server down
  assert.equal(bob.outboxSize, 3, 'nothing leaves the outbox while the server is down');

  await start(CONFIG, { port });
  await waitFor('alice resubscribed after the restart', () => subscribed.length === 2, 30_000);
  assert.equal(alice.state, 'connected');
  // The restarted node lost its in-memory history: a new epoch, nothing recovered.
  const again = subscribed[1] as SubscribedEvent;
  assert.equal(again.recovering, true);
  assert.equal(again.recovered, false);
  assert.notEqual(again.epoch, oldEpoch);
  assert.equal(again.offset, 0);
  assert.equal(again.replayed, 0);
  // Every retry waited within the full-jitter bounds (min 100, max 1000).
  assert.ok(retries.length >= 1);
  for (const r of retries) assert.ok(r.delay >= 100 && r.delay <= 1000, `delay ${r.delay}`);

  gate.open = true;
  const results = await Promise.all(pending);
  assert.deepEqual(
    results.map((r) => r.offset),
    [1, 2, 3],
  );
  assert.equal(bob.outboxSize, 0);
  assert.deepEqual(sentEvents, [1, 2, 3]);
  await waitFor('the flushed publications at alice', () => got.length >= 4);
  // Give a duplicate a chance to show up before checking there is none.
  await bob.ping();
  await new Promise((r) => setTimeout(r, 200));
  assert.deepEqual(
    got.map((p) => [p.offset, p.data]),
    [
      [1, 'before'],
      [1, 'offline-1'],
      [2, 'offline-2'],
      [3, 'offline-3'],
    ],
  );
  const hist = await alice.history('chat:room-3');
  assert.deepEqual(
    hist.publications.map((p) => [p.offset, p.data]),
    [
      [1, 'offline-1'],
      [2, 'offline-2'],
      [3, 'offline-3'],
    ],
    'each offline publication published exactly once',
  );
  assert.equal(hist.epoch, again.epoch);
});

/** An HS256 JWT. */
function hs256(secret: string, claims: Record<string, unknown>): string {
  const enc = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const head = `${enc({ alg: 'HS256', typ: 'JWT' })}.${enc(claims)}`;
  return `${head}.${createHmac('sha256', secret).update(head).digest('base64url')}`;
}

test('JWT auth: getToken refreshes before exp and the connection lives on; a static token is closed with 3007', { skip }, async () => {
  const secret = 'e2e-secret-0123456789abcdef0123456789';
  const server = await start(
    `ping_interval = "2s"\npong_timeout = "1s"\n[auth]\nmode = "jwt"\nleeway = "0s"\nrefresh_grace = "1s"\n${CONFIG}`,
    { env: { WSEDGE_AUTH_HMAC_SECRET: secret } },
  );
  const lifetime = 6; // seconds
  const token = () => hs256(secret, { sub: 'carol', exp: Math.floor(Date.now() / 1000) + lifetime });
  let tokens = 0;
  const carol = client(server.url, {
    getToken: async () => {
      tokens++;
      return token();
    },
  });
  const dave = client(server.url, { token: hs256(secret, { sub: 'dave', exp: Math.floor(Date.now() / 1000) + 5 }) });
  const carolLost: DisconnectedEvent[] = [];
  const daveLost: DisconnectedEvent[] = [];
  const refreshed: unknown[] = [];
  carol.on('disconnected', (e) => carolLost.push(e));
  carol.on('refreshed', (e) => refreshed.push(e));
  dave.on('disconnected', (e) => daveLost.push(e));
  carol.connect();
  dave.connect();
  await waitFor('both connected', () => carol.state === 'connected' && dave.state === 'connected');
  assert.equal(carol.connection?.user, 'carol');
  assert.equal(carol.connection?.expires, true);
  assert.ok((carol.connection?.ttl ?? 0) > 0 && (carol.connection?.ttl ?? 0) <= lifetime);

  // dave cannot renew: the server closes him with 3007 and, without
  // getToken, the client does not come back.
  await waitFor('dave closed for an expired token', () => daveLost.length > 0, 30_000);
  assert.equal(daveLost[0]?.code, 3007);
  assert.equal(daveLost[0]?.reconnect, false);
  assert.equal(dave.state, 'disconnected');

  // carol refreshed (at 85 % of 6 s) at least once and is still there.
  await waitFor('two refreshes', () => refreshed.length >= 2, 30_000);
  assert.ok(tokens >= 3, `getToken calls: ${tokens}`);
  assert.equal(carol.state, 'connected');
  assert.deepEqual(carolLost, []);
  await carol.ping();
});
