import assert from 'node:assert/strict';
import { test } from 'node:test';

import { CloseCode, closeCodeReconnects, type DisconnectedEvent } from '../../src/index.js';
import { settle } from '../helpers/fake-clock.js';
import { accept, connected, harness, record } from '../helpers/setup.js';

test('closeCodeReconnects follows the close code table of PROTOCOL.md', () => {
  for (const c of [1000, 1001, 1006, 1011, 3001, 3002, 3003, 3004, 3005, 3006, 3007, 3008, 3499, 4000, 4499]) {
    assert.equal(closeCodeReconnects(c), true, `${c} reconnects`);
  }
  for (const c of [1002, 1003, 1007, 1009, 3500, 3501, 3502, 3503, 3504, 3999, 4500, 4999]) {
    assert.equal(closeCodeReconnects(c), false, `${c} does not reconnect`);
  }
});

for (const code of [CloseCode.badRequest, CloseCode.invalidToken, CloseCode.tooManyRequests, CloseCode.connectionLimit, 4500, 1002, 1009]) {
  test(`close ${code} (do not reconnect): the client stops`, async () => {
    const h = await connected();
    const lost = record<DisconnectedEvent>((l) => h.client.on('disconnected', l));
    h.socket.serverClose(code, 'bye');
    assert.equal(h.client.state, 'disconnected');
    assert.deepEqual(lost, [{ code, reason: 'bye', reconnect: false }]);
    await h.clock.advance(60_000);
    assert.equal(h.ws.sockets.length, 1, 'no new socket');
    assert.equal(h.clock.pendingTimers, 0);
  });
}

for (const code of [CloseCode.noPong, CloseCode.disconnected, CloseCode.insufficientState, 4000, 1006, 1011]) {
  test(`close ${code} (reconnect): the client reconnects by itself`, async () => {
    const h = await connected();
    const lost = record<DisconnectedEvent>((l) => h.client.on('disconnected', l));
    h.socket.serverClose(code, 'x');
    assert.equal(h.client.state, 'connecting');
    assert.deepEqual(lost, [{ code, reason: 'x', reconnect: true }]);
    await h.clock.advance(1000);
    assert.equal(h.ws.sockets.length, 2);
    await accept(h);
    assert.equal(h.client.state, 'connected');
    h.client.disconnect();
  });
}

test('a disconnect push decides: its code, reason and reconnect flag win over the close frame', async () => {
  const h = await connected();
  const lost = record<DisconnectedEvent>((l) => h.client.on('disconnected', l));
  // Shutdown announces 3001 and closes with 1001.
  h.socket.receive({ push: { disconnect: { code: 3001, reason: 'shutdown', reconnect: true } } });
  h.socket.serverClose(1001, '');
  assert.deepEqual(lost, [{ code: 3001, reason: 'shutdown', reconnect: true }]);
  await h.clock.advance(1000);
  const s2 = await accept(h);
  // A backend's code in 4500–4999 says: do not reconnect.
  s2.receive({ push: { disconnect: { code: 4501, reason: 'banned', reconnect: false } } });
  s2.serverClose(4501, 'banned');
  assert.deepEqual(lost[1], { code: 4501, reason: 'banned', reconnect: false });
  assert.equal(h.client.state, 'disconnected');
});

test('connect answered with a temporary error reconnects; a permanent one stops', async () => {
  const h = await connected();
  h.socket.serverClose(1006);
  await h.clock.advance(1000);
  await settle();
  const s2 = h.ws.last();
  s2.accept();
  await settle();
  s2.replyError('connect', 100, true, 'internal');
  assert.equal(h.client.state, 'connecting');
  assert.ok(s2.closedByClient, 'the client closed the refused connection');
  await h.clock.advance(2000);
  await settle();
  const s3 = h.ws.last();
  assert.notEqual(s3, s2);
  s3.accept();
  await settle();
  const lost = record<DisconnectedEvent>((l) => h.client.on('disconnected', l));
  s3.replyError('connect', 107, false, 'bad request');
  assert.equal(h.client.state, 'disconnected');
  assert.equal(lost[0]?.code, 107);
  assert.equal(lost[0]?.reconnect, false);
});

test('disconnect() stops everything; connect() starts again', async () => {
  const h = await connected();
  const states = record<{ newState: string }>((l) => h.client.on('state', l));
  h.client.disconnect();
  assert.ok(h.socket.closedByClient);
  assert.equal(h.clock.pendingTimers, 0, 'no timer left behind');
  h.client.connect();
  await accept(h);
  assert.deepEqual(
    states.map((s) => s.newState),
    ['disconnected', 'connecting', 'connected'],
  );
  h.client.disconnect();
});

test('the client offers the JSON subprotocol and sends connect with name, user and info', async () => {
  const h = await connected({ user: 'ann', info: { name: 'Ann' }, name: 'web', version: '1.2.3' });
  assert.equal(h.socket.protocols, 'edu-matrix-v1.json');
  assert.deepEqual(h.socket.sent('connect')[0]?.params, { name: 'web', version: '1.2.3', user: 'ann', info: { name: 'Ann' } });
  assert.equal(h.client.connection?.client, 'c.0.1');
  h.client.disconnect();
});

test('garbage from the server is a protocol error: close and reconnect', async () => {
  const h = await connected();
  const errors = record<{ context: string }>((l) => h.client.on('error', l));
  h.socket.onmessage?.({ data: 'not json' });
  assert.equal(h.client.state, 'connecting');
  assert.equal(errors[0]?.context, 'protocol');
  assert.ok(h.socket.closedByClient);
  h.client.disconnect();
});

test('an error event without a close event still ends the attempt, and the client retries', async () => {
  const h = harness({}, [0]);
  const lost = record<DisconnectedEvent>((l) => h.client.on('disconnected', l));
  h.client.connect();
  await settle();
  h.ws.last().errorOnly();
  assert.deepEqual(lost, [{ code: 1006, reason: 'connection error', reconnect: true }]);
  assert.ok(h.ws.last().closedByClient);
  await h.clock.advance(500);
  await settle();
  assert.equal(h.ws.sockets.length, 2);
  h.client.disconnect();
});
