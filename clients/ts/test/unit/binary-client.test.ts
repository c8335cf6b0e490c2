/**
 * The client with `format: 'binary'`, on a fake socket speaking the
 * FlatBuffers form: the same behaviour as JSON, binary frames on the wire.
 */
import assert from 'node:assert/strict';
import { before, test } from 'node:test';

import { loadBinaryCodec } from '../../src/codec.js';
import { LocalCode, type ConnectedEvent, type DisconnectedEvent, type Publication, type SubscribedEvent } from '../../src/index.js';
import { settle } from '../helpers/fake-clock.js';
import { accept, connected, harness, record } from '../helpers/setup.js';

before(async () => {
  await loadBinaryCodec(); // the fake clock's settle() does not wait for a first module load
});

test('binary: offers edu-matrix-v1, asks for ArrayBuffers, sends connect in a ClientFrame', async () => {
  const h = harness({ format: 'binary', user: 'ann', info: { name: 'Ann' }, name: 'web' });
  const events = record<ConnectedEvent>((l) => h.client.on('connected', l));
  h.client.connect();
  const s = await accept(h);
  assert.equal(s.protocols, 'edu-matrix-v1');
  assert.equal(s.binaryType, 'arraybuffer');
  assert.ok(s.frames.length > 0 && s.frames.every((f) => f instanceof Uint8Array), 'binary frames only');
  assert.deepEqual(s.sent('connect')[0]?.params, { name: 'web', user: 'ann', info: { name: 'Ann' } });
  assert.equal(h.client.state, 'connected');
  assert.equal(events[0]?.format, 'binary');
  assert.equal(events[0]?.transport, 'websocket');
  assert.equal(h.client.transport, 'websocket');
  h.client.disconnect();
});

test('binary: subscribe, publications (JSON and bytes), publish, request, errors', async () => {
  const h = await connected({ format: 'binary' });
  const sub = h.client.subscribe('chat:a');
  const pubs = record<Publication>((l) => sub.on('publication', l));
  await settle();
  h.socket.reply('subscribe', {
    epoch: '9d3c1f0a7b2e4c55',
    offset: 2,
    recoverable: true,
    recovered: false,
    publications: [],
  });
  assert.equal(sub.state, 'subscribed');
  h.socket.receive({ push: { channel: 'chat:a', pub: { offset: 3, data: { text: 'hi' } } } });
  h.socket.receive({ push: { channel: 'chat:a', pub: { offset: 4, b64data: '/wA=' } } });
  assert.deepEqual(
    pubs.map((p) => [p.offset, p.data, p.bytes]),
    [
      [3, { text: 'hi' }, undefined],
      [4, undefined, new Uint8Array([0xff, 0x00])],
    ],
  );
  const published = h.client.publish('chat:a', { n: 1 }, { idempotencyKey: 'k1' });
  await settle();
  assert.deepEqual(h.socket.sent('publish')[0]?.params, { channel: 'chat:a', data: { n: 1 }, idempotency_key: 'k1' });
  h.socket.reply('publish', { offset: 5 });
  assert.deepEqual(await published, { offset: 5 });
  const stats = h.client.presenceStats('chat:a');
  await settle();
  h.socket.replyError('presence_stats', 103, false, 'permission denied');
  await assert.rejects(stats, (e: unknown) => e instanceof Error && e.name === 'ServerError' && (e as { code?: number }).code === 103);
  h.client.disconnect();
});

test('binary: after a reconnect the subscription recovers from its position', async () => {
  const h = await connected({ format: 'binary' });
  const sub = h.client.subscribe('chat:a');
  const subscribed = record<SubscribedEvent>((l) => sub.on('subscribed', l));
  await settle();
  h.socket.reply('subscribe', { epoch: '9d3c1f0a7b2e4c55', offset: 7, recoverable: true, recovered: false, publications: [] });
  h.socket.serverClose(1006);
  await h.clock.advance(1000);
  const s2 = await accept(h);
  await settle();
  assert.deepEqual(s2.sent('subscribe')[0]?.params, { channel: 'chat:a', recover: true, epoch: '9d3c1f0a7b2e4c55', offset: 7 });
  s2.reply('subscribe', {
    epoch: '9d3c1f0a7b2e4c55',
    offset: 8,
    recoverable: true,
    recovered: true,
    publications: [{ offset: 8, data: 'missed' }],
  });
  assert.equal(subscribed[1]?.recovered, true);
  assert.deepEqual(sub.position, { epoch: '9d3c1f0a7b2e4c55', offset: 8 });
  h.client.disconnect();
});

test('binary: a server that does not choose edu-matrix-v1, or sends text, is a protocol error', async () => {
  const h = harness({ format: 'binary' }, [0]);
  const lost = record<DisconnectedEvent>((l) => h.client.on('disconnected', l));
  h.client.connect();
  await settle();
  h.ws.last().accept(''); // no subprotocol: the server would speak JSON
  assert.equal(lost[0]?.code, LocalCode.badProtocol);
  assert.match(lost[0]?.reason ?? '', /edu-matrix-v1/);
  await h.clock.advance(500);
  const s2 = await accept(h);
  s2.onmessage?.({ data: '{"push":{"channel":"a","pub":{"offset":1,"data":1}}}' });
  assert.equal(lost[1]?.code, LocalCode.badProtocol);
  assert.ok(s2.closedByClient);
  h.client.disconnect();
});

test('binary: data JSON cannot encode fails that publication alone', async () => {
  const h = await connected({ format: 'binary' });
  const failed = record<{ error: Error }>((l) => h.client.on('outboxFailed', l));
  const bad = h.client.publish('chat:a', { n: 10n });
  const good = h.client.publish('chat:a', 'fine');
  await assert.rejects(bad, TypeError);
  await settle();
  assert.deepEqual(
    h.socket.sent('publish').map((c) => c.params.data),
    ['fine'],
  );
  h.socket.reply('publish', { offset: 1 });
  assert.deepEqual(await good, { offset: 1 });
  assert.equal(failed.length, 1);
  h.client.disconnect();
});
