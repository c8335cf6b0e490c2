/**
 * End-to-end: the SSE fallback (`transports: ['sse']`) against a real
 * wsedge process (`$WSEDGE_BIN`) serving it (`WSEDGE_SSE=true`; the event
 * stream on `GET /ws/sse`, commands on `POST /ws/sse/<session>`), with
 * Node's own `EventSource` (`--experimental-eventsource`) and `fetch`.
 * Skipped, loudly, when the binary is not there.
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';

import {
  Client,
  ServerError,
  type ClientOptions,
  type ConnectedEvent,
  type DisconnectedEvent,
  type Publication,
  type SubscribedEvent,
} from '../../src/index.js';
import { EdgeServer, freePort, gatedEventSource, skipReason, waitFor, waitForAsync, WSEDGE_BIN } from '../helpers/server.js';

const skip = skipReason();
if (skip) process.stderr.write(`\n!!! ${skip}\n\n`);
else process.stderr.write(`e2e (SSE): using ${WSEDGE_BIN}\n`);

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

/** The node's SSE fallback, switched on explicitly. */
const SSE_ON = { WSEDGE_SSE: 'true' };

const clients: Client[] = [];
const servers: EdgeServer[] = [];
after(async () => {
  for (const c of clients) c.disconnect();
  for (const s of servers) await s.stop();
});

function client(url: string, options: ClientOptions = {}): Client {
  const c = new Client(url, { minReconnectDelay: 100, maxReconnectDelay: 1000, ...options });
  c.on('error', () => {}); // asserted where it matters
  clients.push(c);
  return c;
}

/** A client on SSE only, through `gate` (a {@link gatedEventSource}). */
function sseClient(url: string, gate: { ctor: ClientOptions['EventSource'] }, options: ClientOptions = {}): Client {
  return client(url, { transports: ['sse'], EventSource: gate.ctor, ...options });
}

async function start(port?: number): Promise<EdgeServer> {
  const s = await EdgeServer.start(CONFIG, { env: SSE_ON, ...(port === undefined ? {} : { port }) });
  servers.push(s);
  return s;
}

function collect(sub: { on(e: 'publication', l: (p: Publication) => void): unknown }): Publication[] {
  const out: Publication[] = [];
  sub.on('publication', (p) => out.push(p));
  return out;
}

test('SSE only: connect, subscribe, publish both ways with a WebSocket client; history, presence, typed errors', { skip }, async () => {
  const server = await start();
  const gate = gatedEventSource(await freePort());
  const postUrls: string[] = [];
  const alice = sseClient(server.url, gate, {
    user: 'alice',
    info: { name: 'Alice' },
    fetch: (url, init) => {
      postUrls.push(url);
      return fetch(url, init);
    },
  });
  const bob = client(server.url, { user: 'bob', transports: ['websocket'] });
  const connected: ConnectedEvent[] = [];
  alice.on('connected', (e) => connected.push(e));
  alice.connect();
  bob.connect();
  const sub = alice.subscribe('chat:room-1');
  const got = collect(sub);
  const subscribed: SubscribedEvent[] = [];
  sub.on('subscribed', (e) => subscribed.push(e));
  const bobSub = bob.subscribe('chat:room-1');
  const atBob = collect(bobSub);
  await waitFor('both subscribed', () => sub.state === 'subscribed' && bobSub.state === 'subscribed');

  assert.equal(alice.transport, 'sse');
  assert.equal(connected.length, 1);
  assert.equal(connected[0]?.transport, 'sse');
  assert.equal(connected[0]?.format, 'json');
  assert.equal(gate.sessions.length, 1);
  assert.ok((gate.sessions[0] ?? '') !== '', 'the node named the session');
  assert.equal(await server.metric('wsedge_sse_streams'), 1, "the node holds one event stream: alice's");
  assert.equal(subscribed[0]?.recoverable, true);
  assert.match(subscribed[0]?.epoch ?? '', /^[0-9a-f]{16}$/);

  // Both directions: the WebSocket client's publication down alice's
  // stream, alice's (a POST) to the WebSocket client.
  assert.equal((await bob.publish('chat:room-1', { text: 'from-ws' })).offset, 1);
  assert.equal((await alice.publish('chat:room-1', { text: 'from-sse' })).offset, 2);
  await waitFor('two publications at each', () => got.length === 2 && atBob.length === 2);
  const seen = (pubs: Publication[]) => pubs.map((p) => [p.offset, p.data, p.replayed]);
  const want = [
    [1, { text: 'from-ws' }, false],
    [2, { text: 'from-sse' }, false],
  ];
  assert.deepEqual(seen(got), want);
  assert.deepEqual(seen(atBob), want);

  // The same idempotency key twice over SSE: one publication.
  const a = await alice.publish('chat:room-1', 'once', { idempotencyKey: 'sse-key-1' });
  const b = await alice.publish('chat:room-1', 'once', { idempotencyKey: 'sse-key-1' });
  assert.equal(a.offset, 3);
  assert.equal(b.offset, 3);

  // Calls over SSE, each after the last one's reply: history, presence
  // (both members) with stats, a state, an error, a ping.
  const postsBefore = await server.metric('wsedge_sse_posts_total', { result: 'ok' });
  const hist = await alice.history('chat:room-1', { limit: 10 });
  assert.deepEqual(
    hist.publications.map((p) => [p.offset, p.data]),
    [
      [1, { text: 'from-ws' }],
      [2, { text: 'from-sse' }],
      [3, 'once'],
    ],
  );
  assert.equal(hist.epoch, subscribed[0]?.epoch);
  assert.equal(hist.offset, 3);
  // Several commands sent in one tick share a POST; each gets its reply.
  const [presence, stats] = await Promise.all([alice.presence('chat:room-1'), alice.presenceStats('chat:room-1')]);
  const members = Object.values(presence.clients).sort((x, y) => x.user.localeCompare(y.user));
  assert.deepEqual(
    members.map((m) => [m.user, m.client]),
    [
      ['alice', alice.connection?.client],
      ['bob', bob.connection?.client],
    ],
  );
  assert.deepEqual(members[0]?.info, { name: 'Alice' });
  assert.deepEqual(stats, { num_clients: 2, num_users: 2 });
  await sub.setPresenceState('typing', 10);
  const fromBob = await bob.presence('chat:room-1');
  assert.equal(fromBob.clients[alice.connection?.client ?? '']?.state, 'typing', "alice's state, set over SSE, as bob sees it");

  // What the server refuses arrives as a typed error, as on WebSocket.
  await assert.rejects(alice.presence('plain'), (e: unknown) => e instanceof ServerError && e.code === 103);
  await alice.ping();
  const posts = (await server.metric('wsedge_sse_posts_total', { result: 'ok' })) - postsBefore;
  assert.ok(posts >= 5, `the calls went up as POSTs the node took (${posts})`);

  // Still one stream, one session: nothing above lost the connection, and
  // every command went to that session's path.
  assert.equal(gate.sessions.length, 1);
  assert.deepEqual(new Set(postUrls), new Set([`http://127.0.0.1:${server.port}/ws/sse/${gate.sessions[0]}`]));
  assert.equal(connected.length, 1);
  assert.equal(alice.state, 'connected');

  // disconnect() closes the EventSource: the node ends the stream and
  // alice leaves the channel.
  alice.disconnect();
  await waitForAsync('the node to end the stream', async () => (await server.metric('wsedge_sse_streams')) === 0);
  await waitForAsync('alice gone from presence', async () => (await bob.presenceStats('chat:room-1')).num_clients === 1);
});

test('SSE: the node closes the stream (a close event with its code); reconnect over SSE and recover (recovered: true); a close with a no-reconnect code ends it', { skip }, async () => {
  const server = await start();
  const gate = gatedEventSource(await freePort());
  const alice = sseClient(server.url, gate, { user: 'alice2' });
  const bob = client(server.url, { user: 'bob2', transports: ['websocket'] });
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

  // Keep alice's streams away until bob has published, then let her back.
  gate.open = false;
  await server.callApi('disconnect', { user: 'alice2' });
  await waitFor('the close event', () => gate.closeEvents.length === 1);
  assert.equal(gate.closeEvents[0]?.code, 3006, 'the server API disconnect code, in the stream');
  await waitFor('alice disconnected', () => lost.length >= 1);
  assert.equal(lost[0]?.code, 3006);
  assert.equal(lost[0]?.reconnect, true);
  assert.equal(sub.state, 'subscribing');
  const offsets = [];
  for (const d of ['missed-2', 'missed-3', 'missed-4']) offsets.push((await bob.publish('chat:room-2', d)).offset);
  assert.deepEqual(offsets, [2, 3, 4]);
  gate.open = true;

  await waitFor('alice resubscribed', () => subscribed.length === 2, 30_000);
  assert.equal(alice.state, 'connected');
  assert.equal(alice.transport, 'sse');
  assert.equal(gate.sessions.length, 2, 'a new stream, a new session');
  assert.notEqual(gate.sessions[1], gate.sessions[0]);
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

  // A code that says not to come back (4500–4999): the client stays away.
  await server.callApi('disconnect', { user: 'alice2', code: 4501, reason: 'kicked' });
  await waitFor('the second close event', () => gate.closeEvents.length === 2);
  assert.deepEqual(gate.closeEvents[1], { code: 4501, reason: 'kicked' });
  await waitFor('alice disconnected for good', () => alice.state === 'disconnected');
  assert.deepEqual(lost.at(-1), { code: 4501, reason: 'kicked', reconnect: false });
  await waitForAsync('the node forgot the stream', async () => (await server.metric('wsedge_sse_streams')) === 0);
});

test('SSE: node killed (SIGKILL) and restarted on the same port: reconnect over SSE, resubscribe (a new epoch), flush the outbox once', { skip }, async () => {
  const first = await start();
  const port = first.port;
  const aliceGate = gatedEventSource(await freePort());
  const bobGate = gatedEventSource(await freePort());
  const alice = sseClient(first.url, aliceGate, { user: 'alice3' });
  const bob = sseClient(first.url, bobGate, { user: 'bob3' });
  const connected: ConnectedEvent[] = [];
  alice.on('connected', (e) => connected.push(e));
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

  bobGate.open = false; // bob stays away until alice is back, so alice sees the flush live
  await first.kill('SIGKILL');
  await waitFor('both clients lost the node', () => alice.state === 'connecting' && bob.state === 'connecting');
  assert.equal(sub.state, 'subscribing');
  assert.deepEqual(aliceGate.closeEvents, [], 'a killed node sends no close event: the stream just ends');

  // Published while the node is down: they wait in bob's outbox.
  const sentEvents: number[] = [];
  bob.on('outboxSent', (e) => sentEvents.push(e.offset));
  const pending = ['offline-1', 'offline-2', 'offline-3'].map((d) => bob.publish('chat:room-3', d));
  assert.equal(bob.outboxSize, 3);

  await start(port);
  await waitFor('alice resubscribed after the restart', () => subscribed.length === 2, 30_000);
  assert.equal(alice.state, 'connected');
  assert.deepEqual(
    connected.map((e) => e.transport),
    ['sse', 'sse'],
  );
  assert.equal(aliceGate.sessions.length, 2);
  // The restarted node lost its in-memory history: a new epoch, nothing recovered.
  const again = subscribed[1] as SubscribedEvent;
  assert.equal(again.recovering, true);
  assert.equal(again.recovered, false);
  assert.notEqual(again.epoch, oldEpoch);
  assert.equal(again.offset, 0);
  assert.equal(again.replayed, 0);

  bobGate.open = true;
  const results = await Promise.all(pending);
  assert.deepEqual(
    results.map((r) => r.offset),
    [1, 2, 3],
  );
  assert.equal(bob.outboxSize, 0);
  assert.deepEqual(sentEvents, [1, 2, 3]);
  await waitFor('the flushed publications at alice', () => got.length >= 4);
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
  assert.deepEqual(
    got.map((p) => [p.offset, p.data]),
    [
      [1, 'before'],
      [1, 'offline-1'],
      [2, 'offline-2'],
      [3, 'offline-3'],
    ],
  );
});

test('SSE: a POST over max_message_size is answered 413: the batch is split, and a command too large alone ends the connection with 1009', { skip }, async () => {
  const server = await start();
  const gate = gatedEventSource(await freePort());
  const alice = sseClient(server.url, gate, { user: 'alice4' });
  const lost: DisconnectedEvent[] = [];
  alice.on('disconnected', (e) => lost.push(e));
  alice.connect();
  await waitFor('alice connected', () => alice.state === 'connected');
  const tooLarge = await server.metric('wsedge_handshakes_total', { kind: 'payload_too_large' });
  const posted = await server.metric('wsedge_sse_posts_total', { result: 'ok' });

  // One tick, one POST: the outbox sends a small publication and one over
  // the node's max_message_size (64 KiB), in that order.
  alice.publish('chat:room-4', 'small').catch(() => {});
  alice.publish('chat:room-4', 'x'.repeat(70_000)).catch(() => {});
  await waitFor('alice disconnected', () => lost.length === 1);
  assert.deepEqual(lost[0], { code: 1009, reason: 'message too big', reconnect: false });
  assert.equal(alice.state, 'disconnected');
  // Two 413s (both publications, then the large one alone) and one more
  // POST taken (the small one alone, split off the batch).
  await waitForAsync(
    'the node to count the two 413s',
    async () => (await server.metric('wsedge_handshakes_total', { kind: 'payload_too_large' })) === tooLarge + 2,
  );
  assert.equal(await server.metric('wsedge_sse_posts_total', { result: 'ok' }), posted + 1);
});
