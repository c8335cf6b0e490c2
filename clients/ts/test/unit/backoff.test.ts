import assert from 'node:assert/strict';
import { test } from 'node:test';

import { backoffDelay, LocalCode, type ReconnectingEvent } from '../../src/index.js';
import { settle } from '../helpers/fake-clock.js';
import { harness, record } from '../helpers/setup.js';

const MIN = 500;
const MAX = 20_000;

/** The full-jitter window of an attempt: [min, min(max, min + min(max, min·2^n))]. */
function bounds(n: number): [number, number] {
  return [MIN, Math.min(MAX, MIN + Math.min(MAX, MIN * 2 ** n))];
}

test('backoffDelay stays within the full-jitter window and never exceeds max', () => {
  for (let n = 0; n < 40; n++) {
    const [lo, hi] = bounds(n);
    for (const r of [0, 0.25, 0.5, 0.999999]) {
      const d = backoffDelay(n, MIN, MAX, r);
      assert.ok(d >= lo && d <= hi, `attempt ${n}, random ${r}: ${d} not in [${lo}, ${hi}]`);
      assert.ok(d <= MAX);
    }
  }
  // The window doubles, then stops at max.
  assert.equal(backoffDelay(0, MIN, MAX, 0.999999), 1000);
  assert.equal(backoffDelay(1, MIN, MAX, 0.999999), 1500);
  assert.equal(backoffDelay(2, MIN, MAX, 0.999999), 2500);
  assert.equal(backoffDelay(10, MIN, MAX, 0.999999), MAX);
  assert.equal(backoffDelay(1000, MIN, MAX, 0), MIN);
  assert.equal(backoffDelay(1000, MIN, MAX, 0.999999), MAX);
});

test('a client whose server is down retries with growing full-jitter delays capped at max', async () => {
  const h = harness({}, [0.999999]);
  const retries = record<ReconnectingEvent>((l) => h.client.on('reconnecting', l));
  h.client.connect();
  for (let i = 0; i < 12; i++) {
    await settle();
    assert.equal(h.ws.sockets.length, i + 1, 'one socket per attempt');
    h.ws.last().refuse();
    await settle();
    const ev = retries[i] as ReconnectingEvent;
    assert.equal(ev.attempt, i + 1);
    const [lo, hi] = bounds(i);
    assert.ok(ev.delay >= lo && ev.delay <= hi, `retry ${i}: ${ev.delay}`);
    // Not a moment earlier than the delay…
    await h.clock.advance(ev.delay - 1);
    assert.equal(h.ws.sockets.length, i + 1, `retry ${i} came early`);
    await h.clock.advance(1);
  }
  assert.deepEqual(
    retries.map((r) => r.delay),
    [1000, 1500, 2500, 4500, 8500, 16500, 20000, 20000, 20000, 20000, 20000, 20000],
  );
  assert.equal(h.client.state, 'connecting');
  h.client.disconnect();
  assert.equal(h.client.state, 'disconnected');
  assert.equal(h.clock.pendingTimers, 0);
});

test('random 0 gives min every time; the delays differ with the random source', async () => {
  const h = harness({ minReconnectDelay: 100, maxReconnectDelay: 1000 }, [0, 0.3, 0.7]);
  const retries = record<ReconnectingEvent>((l) => h.client.on('reconnecting', l));
  h.client.connect();
  for (let i = 0; i < 3; i++) {
    await settle();
    h.ws.last().refuse();
    await h.clock.advance((retries[i] as ReconnectingEvent).delay);
  }
  assert.deepEqual(
    retries.map((r) => r.delay),
    [100, 100 + Math.floor(0.3 * 201), 100 + Math.floor(0.7 * 401)],
  );
  h.client.disconnect();
});

test('maxReconnectAttempts: after that many failed retries the client gives up', async () => {
  const h = harness({ maxReconnectAttempts: 3 });
  const lost = record<{ reconnect: boolean; code: number }>((l) => h.client.on('disconnected', l));
  h.client.connect();
  for (let i = 0; i < 4; i++) {
    await settle();
    h.ws.last().refuse();
    await h.clock.advance(MAX);
  }
  assert.equal(h.ws.sockets.length, 4, 'the first attempt and 3 retries');
  assert.deepEqual(
    lost.map((e) => e.reconnect),
    [true, true, true, false],
  );
  assert.equal(h.client.state, 'disconnected');
  await h.clock.advance(10 * MAX);
  assert.equal(h.ws.sockets.length, 4, 'no attempt after giving up');
  assert.equal(h.clock.pendingTimers, 0);
});

test('a successful connect resets the attempt count', async () => {
  const h = harness({ maxReconnectAttempts: 1 }, [0]);
  h.client.connect();
  await settle();
  h.ws.last().refuse();
  await h.clock.advance(MIN);
  await settle();
  const s = h.ws.last();
  s.accept();
  await settle();
  s.reply('connect', { client: 'c', node: 'n', ping: 25, user: '', expires: false });
  assert.equal(h.client.state, 'connected');
  s.serverClose(1006);
  assert.equal(h.client.state, 'connecting', 'one more retry allowed after a success');
  h.client.disconnect();
  assert.equal(LocalCode.disconnectCalled, 0);
});
