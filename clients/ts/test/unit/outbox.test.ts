import assert from 'node:assert/strict';
import { test } from 'node:test';

import { MemoryOutboxStorage, OutboxDroppedError, ServerError, type OutboxEntry } from '../../src/index.js';
import { settle } from '../helpers/fake-clock.js';
import { accept, connected, harness, record } from '../helpers/setup.js';

type Fate = { ok: number } | { err: Error } | 'pending';

function track(p: Promise<{ offset: number }>): { fate: Fate } {
  const t: { fate: Fate } = { fate: 'pending' };
  p.then(
    (r) => (t.fate = { ok: r.offset }),
    (e: Error) => (t.fate = { err: e }),
  );
  return t;
}

test('drop-oldest: a full outbox drops its oldest unsent publication', async () => {
  const h = harness({ outboxLimit: 3 });
  const dropped = record<{ entry: OutboxEntry; reason: string }>((l) => h.client.on('outboxDropped', l));
  const fates = [1, 2, 3, 4, 5].map((n) => track(h.client.publish('chat:a', n)));
  await settle();
  assert.equal(h.client.outboxSize, 3);
  for (const i of [0, 1]) {
    const f = fates[i]?.fate;
    assert.ok(typeof f === 'object' && 'err' in f && f.err instanceof OutboxDroppedError && f.err.reason === 'evicted', `publication ${i + 1}`);
  }
  assert.deepEqual(
    dropped.map((d) => [d.entry.data, d.reason]),
    [
      [1, 'evicted'],
      [2, 'evicted'],
    ],
  );
  assert.deepEqual(
    fates.slice(2).map((f) => f.fate),
    ['pending', 'pending', 'pending'],
  );
  h.client.connect();
  const s = await accept(h);
  await settle();
  assert.deepEqual(
    s.sent('publish').map((c) => c.params.data),
    [3, 4, 5],
  );
  h.client.disconnect();
});

test('reject-new: a full outbox refuses the new publication and keeps the old ones', async () => {
  const h = harness({ outboxLimit: 2, outboxDropPolicy: 'reject-new' });
  const fates = [1, 2, 3].map((n) => track(h.client.publish('chat:a', n)));
  await settle();
  assert.equal(h.client.outboxSize, 2);
  const f = fates[2]?.fate;
  assert.ok(typeof f === 'object' && 'err' in f && f.err instanceof OutboxDroppedError && f.err.reason === 'full');
  assert.equal(fates[0]?.fate, 'pending');
  assert.equal(fates[1]?.fate, 'pending');
});

test('offline publications are sent in order once connected, each with its own idempotency key', async () => {
  const h = harness();
  const fates = ['a', 'b', 'c'].map((d) => track(h.client.publish('chat:x', d)));
  const custom = track(h.client.publish('chat:x', 'd', { idempotencyKey: 'order-42' }));
  h.client.connect();
  const s = await accept(h);
  await settle();
  const sent = s.sent('publish');
  assert.deepEqual(
    sent.map((c) => [c.params.channel, c.params.data, c.params.idempotency_key]),
    [
      ['chat:x', 'a', 'uuid-1'],
      ['chat:x', 'b', 'uuid-3'],
      ['chat:x', 'c', 'uuid-5'],
      ['chat:x', 'd', 'order-42'],
    ],
  );
  for (let i = 0; i < 4; i++) s.reply('publish', { offset: 10 + i });
  await settle();
  assert.deepEqual(
    [...fates, custom].map((f) => f.fate),
    [{ ok: 10 }, { ok: 11 }, { ok: 12 }, { ok: 13 }],
  );
  assert.equal(h.client.outboxSize, 0);
  h.client.disconnect();
});

test('a connection lost before the answers: the same keys go out again, in the same order, after the reconnect', async () => {
  const h = await connected();
  const fates = [1, 2, 3].map((n) => track(h.client.publish('chat:x', n)));
  await settle();
  const first = h.socket.sent('publish');
  assert.equal(first.length, 3);
  h.socket.reply('publish', { offset: 7 }); // the first one is answered
  h.socket.serverClose(1006); // the other two: outcome unknown
  await settle();
  assert.deepEqual(fates[0]?.fate, { ok: 7 });
  assert.equal(fates[1]?.fate, 'pending', 'a lost answer is not a failure');
  await h.clock.advance(1000);
  const s2 = await accept(h);
  await settle();
  const again = s2.sent('publish');
  assert.deepEqual(
    again.map((c) => [c.params.data, c.params.idempotency_key]),
    first.slice(1).map((c) => [c.params.data, c.params.idempotency_key]),
  );
  s2.reply('publish', { offset: 8 });
  s2.reply('publish', { offset: 9 });
  await settle();
  assert.deepEqual(
    fates.map((f) => f.fate),
    [{ ok: 7 }, { ok: 8 }, { ok: 9 }],
  );
  h.client.disconnect();
});

test('a publish timeout ends the connection; the publication is resent with its key', async () => {
  const h = await connected({ timeout: 1000 });
  const f = track(h.client.publish('chat:x', 'slow'));
  await settle();
  const key = h.socket.sent('publish')[0]?.params.idempotency_key;
  await h.clock.advance(1000);
  assert.equal(h.client.state, 'connecting');
  assert.equal(f.fate, 'pending');
  await h.clock.advance(1000);
  const s2 = await accept(h);
  await settle();
  assert.equal(s2.sent('publish')[0]?.params.idempotency_key, key);
  s2.reply('publish', { offset: 3 });
  await settle();
  assert.deepEqual(f.fate, { ok: 3 });
  h.client.disconnect();
});

test('a temporary error is retried with the same key after a backoff; a permanent one fails the publication', async () => {
  const h = await connected({}, [0]);
  const failed = record<{ error: Error }>((l) => h.client.on('outboxFailed', l));
  const f1 = track(h.client.publish('chat:x', 1));
  const f2 = track(h.client.publish('chat:x', 2));
  await settle();
  const [c1] = h.socket.sent('publish');
  h.socket.replyError('publish', 112, true, 'overloaded');
  h.socket.replyError('publish', 103, false, 'permission denied');
  await settle();
  assert.ok(typeof f2.fate === 'object' && 'err' in f2.fate && f2.fate.err instanceof ServerError && f2.fate.err.code === 103);
  assert.equal(failed.length, 1);
  assert.equal(f1.fate, 'pending');
  await h.clock.advance(499);
  assert.equal(h.socket.sent('publish').length, 2);
  await h.clock.advance(1);
  const retry = h.socket.sent('publish')[2];
  assert.equal(retry?.params.idempotency_key, c1?.params.idempotency_key);
  h.socket.reply('publish', { offset: 5 });
  await settle();
  assert.deepEqual(f1.fate, { ok: 5 });
  h.client.disconnect();
});

test('temporary errors beyond publishRetries fail the publication', async () => {
  const h = await connected({ publishRetries: 2 }, [0]);
  const f = track(h.client.publish('chat:x', 1));
  for (let i = 0; i < 3; i++) {
    await settle();
    h.socket.replyError('publish', 114, true, 'too many requests');
    await h.clock.advance(2000);
  }
  assert.ok(typeof f.fate === 'object' && 'err' in f.fate && f.fate.err instanceof ServerError && f.fate.err.code === 114);
  assert.equal(h.socket.sent('publish').length, 3);
  h.client.disconnect();
});

test('entries a storage kept from an earlier session are sent first, and reported by events', async () => {
  const storage = new MemoryOutboxStorage();
  await storage.put({ id: 'old-1', seq: 1, channel: 'chat:x', data: 'old', idempotencyKey: 'k-old', createdAt: 1 });
  const h = harness({ outboxStorage: storage });
  const sentEvents = record<{ entry: OutboxEntry; offset: number }>((l) => h.client.on('outboxSent', l));
  const f = track(h.client.publish('chat:x', 'new'));
  h.client.connect();
  const s = await accept(h);
  await settle();
  assert.deepEqual(
    s.sent('publish').map((c) => [c.params.data, c.params.idempotency_key]),
    [
      ['old', 'k-old'],
      ['new', 'uuid-1'],
    ],
  );
  s.reply('publish', { offset: 1 });
  s.reply('publish', { offset: 2 });
  await settle();
  assert.deepEqual(f.fate, { ok: 2 });
  assert.deepEqual(
    sentEvents.map((e) => [e.entry.data, e.offset]),
    [
      ['old', 1],
      ['new', 2],
    ],
  );
  await h.client.outboxFlushed();
  assert.deepEqual(await storage.load(), [], 'storage emptied as entries are acknowledged');
  h.client.disconnect();
});

test('the storage holds exactly the unacknowledged entries, in order', async () => {
  const storage = new MemoryOutboxStorage();
  const h = harness({ outboxStorage: storage, outboxLimit: 2 });
  const fates = [1, 2, 3].map((n) => track(h.client.publish('a', n)));
  await h.client.outboxFlushed();
  const stored = (await storage.load()).sort((x, y) => x.seq - y.seq);
  assert.deepEqual(
    stored.map((e) => e.data),
    [2, 3],
  );
  assert.ok((stored[0]?.seq ?? 0) < (stored[1]?.seq ?? 0));
  h.client.clearOutbox();
  await h.client.outboxFlushed();
  assert.deepEqual(await storage.load(), []);
  assert.deepEqual(
    fates.map((f) => (typeof f.fate === 'object' && 'err' in f.fate && f.fate.err instanceof OutboxDroppedError ? f.fate.err.reason : f.fate)),
    ['evicted', 'cleared', 'cleared'],
  );
});
