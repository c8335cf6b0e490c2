/**
 * The SSE transport, on a fake EventSource and a fake fetch: the session
 * event, `connect` first, ordered and batched POSTs, 429/503 retries,
 * 404/413, and close events handled as WebSocket closes are.
 */
import assert from 'node:assert/strict';
import { before, test } from 'node:test';

import { loadBinaryCodec } from '../../src/codec.js';
import { sseUrl } from '../../src/sse.js';
import { CloseCode, LocalCode, type ConnectedEvent, type DisconnectedEvent, type Publication } from '../../src/index.js';
import { settle } from '../helpers/fake-clock.js';
import { CONNECT_REPLY, acceptSse, record, sseHarness, type SseHarness } from '../helpers/setup.js';

before(async () => {
  await loadBinaryCodec();
});

/** A client on SSE only, connected. */
async function onSse(options: Parameters<typeof sseHarness>[0] = {}, autoStatus: number | null = 204): Promise<SseHarness> {
  const h = sseHarness({ transports: ['sse'], ...options }, [0.5], autoStatus);
  h.client.connect();
  if (autoStatus === null) {
    await settle();
    h.sse.last().session();
    await settle();
    h.sse.posts[0]?.respond(204);
    await settle();
    h.sse.reply('connect', CONNECT_REPLY);
    await settle();
  } else {
    await acceptSse(h);
  }
  assert.equal(h.client.state, 'connected');
  return h;
}

test('sseUrl: http(s), the WebSocket path + /sse, no query or fragment', () => {
  assert.equal(sseUrl('ws://edge.test/ws'), 'http://edge.test/ws/sse');
  assert.equal(sseUrl('wss://edge.test:8443/realtime/ws/?token=secret#x'), 'https://edge.test:8443/realtime/ws/sse');
  assert.equal(sseUrl('ws://127.0.0.1:9000/'), 'http://127.0.0.1:9000/sse');
});

test('SSE: the stream opens, the session event names it, connect is the first POST (token in the body)', async () => {
  const h = sseHarness({ transports: ['sse'], token: 'secret.jwt.token', user: 'ann' }, [0.5], null);
  const connectedEvents = record<ConnectedEvent>((l) => h.client.on('connected', l));
  h.client.connect();
  await settle();
  assert.equal(h.ws.sockets.length, 0, 'no WebSocket');
  const es = h.sse.last();
  assert.equal(es.url, 'http://edge.test/ws/sse');
  assert.equal(h.client.transport, 'sse');
  await settle();
  assert.equal(h.sse.posts.length, 0, 'nothing is posted before the session event');
  es.session('s-42', 'edge-7');
  await settle();
  const [post] = h.sse.posts;
  assert.ok(post);
  assert.equal(post.url, 'http://edge.test/ws/sse/s-42');
  assert.deepEqual(post.init.method, 'POST');
  assert.deepEqual(post.init.headers, { 'Content-Type': 'text/plain;charset=UTF-8' });
  assert.ok(!post.url.includes('secret'), 'no token in the URL');
  assert.deepEqual(h.sse.commands(), [{ id: 1, method: 'connect', params: { name: 'js', token: 'secret.jwt.token', user: 'ann' } }]);
  post.respond(204);
  await settle();
  h.sse.reply('connect', CONNECT_REPLY);
  assert.equal(h.client.state, 'connected');
  assert.deepEqual(connectedEvents, [{ ...CONNECT_REPLY, transport: 'sse', format: 'json' }]);
  assert.equal(h.client.connection?.transport, 'sse');
  h.client.disconnect();
  assert.ok(es.closed, 'disconnect() closes the EventSource');
});

test('SSE: replies and pushes come as message events, parsed like JSON frames', async () => {
  const h = await onSse();
  const sub = h.client.subscribe('chat:a');
  const pubs = record<Publication>((l) => sub.on('publication', l));
  await settle();
  h.sse.reply('subscribe', { epoch: '9d3c1f0a7b2e4c55', offset: 0, recoverable: true, recovered: false, publications: [] });
  h.sse.last().receive(
    { push: { channel: 'chat:a', pub: { offset: 1, data: 'one' } } },
    { push: { channel: 'chat:a', pub: { offset: 2, b64data: '/wA=' } } },
  );
  assert.deepEqual(
    pubs.map((p) => p.offset),
    [1, 2],
  );
  const hist = h.client.history('chat:a', { limit: 1 });
  await settle();
  h.sse.reply('history', { publications: [{ offset: 2, data: 'x' }], epoch: '9d3c1f0a7b2e4c55', offset: 2 });
  assert.equal((await hist).offset, 2);
  h.client.disconnect();
});

test('SSE: at most one POST in flight; what is sent meanwhile goes, in order, in the next one', async () => {
  const h = await onSse({}, null);
  const first = h.client.presence('a');
  await settle();
  assert.equal(h.sse.posts.length, 2, 'connect, then presence');
  const p2 = h.client.presence('b');
  await settle();
  const p3 = h.client.presenceStats('c');
  await settle();
  assert.equal(h.sse.posts.length, 2, 'nothing more while the POST is in flight');
  h.sse.posts[1]?.respond(204);
  await settle();
  assert.equal(h.sse.posts.length, 3);
  const body = h.sse.posts[2]?.init.body ?? '';
  assert.deepEqual(
    body.split('\n').map((l) => Object.keys(JSON.parse(l) as object)[1]),
    ['presence', 'presence_stats'],
    'the two later commands in one body, in order',
  );
  assert.deepEqual(
    h.sse.commands().map((c) => [c.method, c.params.channel]),
    [
      ['connect', undefined],
      ['presence', 'a'],
      ['presence', 'b'],
      ['presence_stats', 'c'],
    ],
  );
  h.sse.posts[2]?.respond(204);
  h.sse.reply('presence', { clients: {} });
  h.sse.reply('presence', { clients: {} });
  h.sse.reply('presence_stats', { num_clients: 0, num_users: 0 });
  await Promise.all([first, p2, p3]);
  h.client.disconnect();
});

test('SSE: 503 with Retry-After and 429 without: the same body again after the delay, later commands behind it', async () => {
  const h = await onSse({}, null);
  void h.client.ping().catch(() => {});
  await settle();
  const refused = h.sse.posts[1];
  assert.ok(refused);
  refused.respond(503, { 'Retry-After': '2' });
  await settle();
  void h.client.presence('later').catch(() => {});
  await h.clock.advance(1999);
  assert.equal(h.sse.posts.length, 2, 'waits Retry-After');
  await h.clock.advance(1);
  assert.equal(h.sse.posts.length, 3);
  assert.equal(h.sse.posts[2]?.init.body, refused.init.body, 'the same body');
  h.sse.posts[2]?.respond(429); // no Retry-After: a short backoff (250 ms up, with jitter)
  await h.clock.advance(200);
  assert.equal(h.sse.posts.length, 3);
  await h.clock.advance(5000);
  assert.equal(h.sse.posts.length, 4);
  assert.equal(h.sse.posts[3]?.init.body, refused.init.body);
  h.sse.posts[3]?.respond(204);
  await settle();
  assert.equal(h.sse.posts.length, 5, 'then the command sent meanwhile');
  assert.match(h.sse.posts[4]?.init.body ?? '', /"presence":\{"channel":"later"\}/);
  assert.equal(h.client.state, 'connected');
  h.client.disconnect();
});

test('SSE: 404 (session unknown) is a lost connection: reconnect with a new stream', async () => {
  const h = await onSse({}, null);
  const lost = record<DisconnectedEvent>((l) => h.client.on('disconnected', l));
  const rejected = assert.rejects(h.client.ping(), { name: 'DisconnectedError' });
  await settle();
  h.sse.posts[1]?.respond(404);
  await settle();
  await rejected;
  assert.deepEqual(lost, [{ code: 1006, reason: 'session not found', reconnect: true }]);
  assert.ok(h.sse.sources[0]?.closed, 'the SDK closed the EventSource');
  await h.clock.advance(1500);
  assert.equal(h.sse.sources.length, 2, 'a new stream');
  h.client.disconnect();
});

test('SSE: a failed POST (network) is a lost connection too', async () => {
  const h = await onSse({}, null);
  const lost = record<DisconnectedEvent>((l) => h.client.on('disconnected', l));
  void h.client.ping().catch(() => {});
  await settle();
  h.sse.posts[1]?.fail();
  await settle();
  assert.equal(lost[0]?.code, 1006);
  assert.equal(lost[0]?.reconnect, true);
  h.client.disconnect();
});

test('SSE: 413 halves a batch; one command too large is a 1009 close (no reconnect)', async () => {
  const h = await onSse({}, null);
  const lost = record<DisconnectedEvent>((l) => h.client.on('disconnected', l));
  void h.client.presence('a').catch(() => {});
  await settle();
  void h.client.presence('b').catch(() => {});
  await settle();
  void h.client.presence('c').catch(() => {});
  await settle();
  h.sse.posts[1]?.respond(204);
  await settle();
  const batch = h.sse.posts[2];
  assert.equal(batch?.init.body.split('\n').length, 2);
  batch?.respond(413);
  await settle();
  assert.equal(h.sse.posts[3]?.init.body.split('\n').length, 1, 'the first half alone');
  assert.match(h.sse.posts[3]?.init.body ?? '', /"b"/);
  h.sse.posts[3]?.respond(204);
  await settle();
  assert.match(h.sse.posts[4]?.init.body ?? '', /"c"/);
  h.sse.posts[4]?.respond(413);
  await settle();
  assert.deepEqual(lost, [{ code: 1009, reason: 'message too big', reconnect: false }]);
  assert.equal(h.client.state, 'disconnected');
});

test('SSE: 413 on one frame of several commands splits it by command, in order', async () => {
  const h = await onSse({}, null);
  // Sent in one tick: one frame, three commands.
  const done = Promise.all([h.client.presence('x'), h.client.presence('y'), h.client.presenceStats('z')]);
  await settle();
  assert.equal(h.sse.posts[1]?.init.body.split('\n').length, 3);
  h.sse.posts[1]?.respond(413);
  await settle();
  assert.equal(h.sse.posts[2]?.init.body.split('\n').length, 2, 'the first half (two of three)');
  h.sse.posts[2]?.respond(413);
  await settle();
  assert.match(h.sse.posts[3]?.init.body ?? '', /^\{[^\n]*"presence":\{"channel":"x"\}\}$/);
  h.sse.posts[3]?.respond(204);
  await settle();
  assert.equal(h.sse.posts[4]?.init.body.split('\n').length, 2, 'the rest together again');
  h.sse.posts[4]?.respond(204);
  await settle();
  assert.deepEqual(
    h.sse.commands().map((c) => [c.method, c.params.channel]),
    [
      ['connect', undefined],
      ['presence', 'x'],
      ['presence', 'y'],
      ['presence_stats', 'z'],
    ],
    'each command posted once (the refused bodies left out), in order',
  );
  h.sse.reply('presence', { clients: {} });
  h.sse.reply('presence', { clients: {} });
  h.sse.reply('presence_stats', { num_clients: 0, num_users: 0 });
  await done;
  assert.equal(h.client.state, 'connected');
  h.client.disconnect();
});

for (const [code, reconnect] of [
  [CloseCode.disconnected, true],
  [CloseCode.noPong, true],
  [4000, true],
  [CloseCode.invalidToken, false],
  [CloseCode.tooManyRequests, false],
  [4500, false],
] as const) {
  test(`SSE: a close event with ${code} is handled as a WebSocket close (reconnect: ${reconnect})`, async () => {
    const h = await onSse();
    const lost = record<DisconnectedEvent>((l) => h.client.on('disconnected', l));
    const es = h.sse.last();
    es.serverClose(code, 'bye');
    assert.deepEqual(lost, [{ code, reason: 'bye', reconnect }]);
    assert.ok(es.closed);
    assert.equal(h.client.state, reconnect ? 'connecting' : 'disconnected');
    await h.clock.advance(1000);
    assert.equal(h.sse.sources.length, reconnect ? 2 : 1);
    if (!reconnect) {
      await h.clock.advance(60_000);
      assert.equal(h.sse.sources.length, 1, 'never again');
    }
    h.client.disconnect();
  });
}

test('SSE: a disconnect push before the close event decides, as on WebSocket', async () => {
  const h = await onSse();
  const lost = record<DisconnectedEvent>((l) => h.client.on('disconnected', l));
  h.sse.last().receive({ push: { disconnect: { code: 3001, reason: 'shutdown', reconnect: true } } });
  h.sse.last().serverClose(1001, '');
  assert.deepEqual(lost, [{ code: 3001, reason: 'shutdown', reconnect: true }]);
  h.client.disconnect();
});

test('SSE: the stream failing without a close event is a 1006 loss, and EventSource does not retry by itself', async () => {
  const h = await onSse();
  const lost = record<DisconnectedEvent>((l) => h.client.on('disconnected', l));
  const es = h.sse.last();
  es.fail();
  assert.deepEqual(lost, [{ code: 1006, reason: 'event stream lost', reconnect: true }]);
  assert.ok(es.closed, 'closed by the SDK: the backoff decides when to retry');
  await h.clock.advance(1500);
  const es2 = h.sse.last();
  assert.notEqual(es2, es);
  es2.session('s-2');
  await settle();
  h.sse.reply('connect', CONNECT_REPLY);
  await settle();
  assert.equal(h.client.state, 'connected');
  h.client.disconnect();
});

test('SSE: a message before the session event, or a session event without a session, is a protocol error', async () => {
  const h = sseHarness({ transports: ['sse'] }, [0]);
  const lost = record<DisconnectedEvent>((l) => h.client.on('disconnected', l));
  h.client.connect();
  await settle();
  h.sse.last().receive({ id: 1, ping: {} });
  assert.equal(lost[0]?.code, LocalCode.badProtocol);
  await h.clock.advance(500);
  h.sse.last().dispatch('session', '{"node":"n"}');
  assert.equal(lost[1]?.code, LocalCode.badProtocol);
  h.client.disconnect();
});

test('SSE: the idle ping goes out as a POST; no reply within timeout → reconnect', async () => {
  const h = await onSse({ pingInterval: 5000, timeout: 2000 });
  const lost = record<DisconnectedEvent>((l) => h.client.on('disconnected', l));
  await h.clock.advance(5000);
  assert.equal(h.sse.sent('ping').length, 1);
  await h.clock.advance(2000);
  assert.equal(lost[0]?.code, LocalCode.timeout);
  assert.equal(h.client.state, 'connecting');
  h.client.disconnect();
});

test('SSE with format binary: JSON on the stream and in the POSTs', async () => {
  const h = await onSse({ format: 'binary' });
  assert.equal(h.client.connection?.format, 'json');
  assert.equal(h.client.connection?.transport, 'sse');
  assert.doesNotThrow(() => JSON.parse(h.sse.posts[0]?.init.body ?? ''));
  h.client.disconnect();
});
