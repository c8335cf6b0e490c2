import assert from 'node:assert/strict';
import { test } from 'node:test';

import { DisconnectedError, LocalCode, ServerError, TimeoutError, type DisconnectedEvent } from '../../src/index.js';
import { settle } from '../helpers/fake-clock.js';
import { accept, connected, harness, record } from '../helpers/setup.js';

test('a command without a reply rejects with TimeoutError after `timeout`, not before', async () => {
  const h = await connected({ timeout: 3000 });
  let result: unknown = 'pending';
  const outcome = (): unknown => result;
  h.client.history('chat:a', { limit: 5 }).then(
    (v) => (result = v),
    (e: unknown) => (result = e),
  );
  await settle();
  assert.deepEqual(h.socket.sent('history')[0]?.params, { channel: 'chat:a', limit: 5 });
  await h.clock.advance(2999);
  assert.equal(outcome(), 'pending');
  await h.clock.advance(1);
  assert.ok(outcome() instanceof TimeoutError, String(outcome()));
  // An application command's timeout does not end the connection.
  assert.equal(h.client.state, 'connected');
  h.client.disconnect();
});

test('replies are matched by id, whatever their order; errors reject with ServerError', async () => {
  const h = await connected();
  const p1 = h.client.presenceStats('chat:a');
  const p2 = h.client.history('chat:a');
  await settle();
  const [stats, hist] = [h.socket.sent('presence_stats')[0], h.socket.sent('history')[0]];
  assert.ok(stats && hist);
  h.socket.receive(
    { id: hist.id, error: { code: 103, message: 'permission denied', temporary: false } },
    { id: stats.id, presence_stats: { num_clients: 2, num_users: 1 } },
  );
  assert.deepEqual(await p1, { num_clients: 2, num_users: 1 });
  await assert.rejects(p2, (e: unknown) => e instanceof ServerError && e.code === 103 && !e.temporary);
  h.client.disconnect();
});

test('commands fail with DisconnectedError when the connection drops before the reply', async () => {
  const h = await connected();
  const p = h.client.presence('chat:a');
  await settle();
  h.socket.serverClose(1006);
  await assert.rejects(p, DisconnectedError);
  h.client.disconnect();
  await assert.rejects(h.client.ping(), DisconnectedError, 'disconnected: rejected at once');
});

test('a command made while connecting waits for the connection', async () => {
  const h = harness();
  h.client.connect();
  const p = h.client.rpc('rooms.list', { page: 2 });
  const s = await accept(h);
  await settle();
  assert.deepEqual(s.sent('rpc')[0]?.params, { method: 'rooms.list', data: { page: 2 } });
  s.reply('rpc', { data: { rooms: ['lobby'] } });
  assert.deepEqual(await p, { data: { rooms: ['lobby'] } });
  const p2 = h.client.rpc('blob');
  await settle();
  s.reply('rpc', { b64data: '/wA=' });
  assert.deepEqual(await p2, { bytes: new Uint8Array([0xff, 0x00]) });
  h.client.disconnect();
});

test('a dead link: after pingInterval of silence a ping; no reply within timeout → reconnect', async () => {
  const h = await connected({ pingInterval: 5000, timeout: 2000 });
  const lost = record<DisconnectedEvent>((l) => h.client.on('disconnected', l));
  await h.clock.advance(4000);
  h.socket.receive({ push: { channel: 'x', pub: { offset: 1, data: 1 } } }); // traffic resets the idle timer
  await h.clock.advance(4999);
  assert.equal(h.socket.sent('ping').length, 0);
  await h.clock.advance(1);
  assert.equal(h.socket.sent('ping').length, 1, 'ping after 5 s of silence');
  h.socket.reply('ping', {});
  await h.clock.advance(5000);
  assert.equal(h.socket.sent('ping').length, 2);
  await h.clock.advance(1999);
  assert.equal(h.client.state, 'connected');
  await h.clock.advance(1);
  assert.equal(h.client.state, 'connecting', 'the unanswered ping ended the connection');
  assert.equal(lost[0]?.code, LocalCode.timeout);
  assert.equal(lost[0]?.reconnect, true);
  assert.ok(h.socket.closedByClient);
  h.client.disconnect();
});

test('the ping interval defaults to the server\'s from the connect reply', async () => {
  const h = await connected();
  await h.clock.advance(24_999);
  assert.equal(h.socket.sent('ping').length, 0);
  await h.clock.advance(1);
  assert.equal(h.socket.sent('ping').length, 1);
  h.client.disconnect();
});

test('connect without a reply times out and reconnects', async () => {
  const h = harness({ timeout: 4000 });
  h.client.connect();
  await settle();
  h.ws.last().accept();
  await h.clock.advance(4000);
  assert.equal(h.client.state, 'connecting');
  await h.clock.advance(1000);
  assert.equal(h.ws.sockets.length, 2);
  h.client.disconnect();
});

test('at most maxCommandsPerSecond commands go out in any second', async () => {
  const h = await connected({ maxCommandsPerSecond: 5 });
  const framesBefore = h.socket.frames.length;
  for (let i = 0; i < 12; i++) void h.client.publish('chat:a', i);
  await settle();
  // The connect command counted too: 4 more fit in this second.
  assert.equal(h.socket.sent('publish').length, 4);
  assert.equal(h.socket.frames.length, framesBefore + 1, 'in one frame');
  await h.clock.advance(999);
  assert.equal(h.socket.sent('publish').length, 4);
  await h.clock.advance(1);
  assert.equal(h.socket.sent('publish').length, 9);
  await h.clock.advance(1000);
  assert.equal(h.socket.sent('publish').length, 12);
  assert.deepEqual(
    h.socket.sent('publish').map((c) => c.params.data),
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
  );
  h.client.disconnect();
});
