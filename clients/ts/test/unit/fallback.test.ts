/**
 * The transport policy: WebSocket first, SSE after WebSockets fail to open,
 * back to WebSocket when a probe opens one.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { TransportPolicy } from '../../src/fallback.js';
import { Client, LocalCode, type ConnectedEvent, type DisconnectedEvent, type ReconnectingEvent, type TransportKind } from '../../src/index.js';
import { settle } from '../helpers/fake-clock.js';
import { fakeSse } from '../helpers/fake-sse.js';
import { CONNECT_REPLY, accept, acceptSse, record, sseHarness } from '../helpers/setup.js';

const BOTH = new Set<TransportKind>(['websocket', 'sse']);

test('policy: WebSocket until `fallbackAfter` failures before open in a row, then SSE', () => {
  const p = new TransportPolicy(BOTH, 3);
  assert.equal(p.next(), 'websocket');
  p.failed('websocket');
  p.failed('websocket');
  assert.equal(p.next(), 'websocket');
  p.failed('websocket');
  assert.equal(p.next(), 'sse');
  p.opened('sse');
  assert.equal(p.next(), 'sse', 'stays on SSE once a session opened');
});

test('policy: a WebSocket that opens resets the count; SSE failing too gives WebSocket another try', () => {
  const p = new TransportPolicy(BOTH, 2);
  p.failed('websocket');
  p.opened('websocket'); // e.g. then lost after opening
  p.failed('websocket');
  assert.equal(p.next(), 'websocket', 'the count started again');
  p.failed('websocket');
  assert.equal(p.next(), 'sse');
  p.failed('sse'); // both fail: the server is away
  assert.equal(p.next(), 'websocket');
  p.failed('websocket');
  assert.equal(p.next(), 'sse', 'alternates while both fail');
  p.webSocketWorks();
  assert.equal(p.next(), 'websocket');
  p.failed('websocket');
  assert.equal(p.next(), 'websocket', 'a probe that opened resets the count too');
});

test('policy: with one transport there is no switching', () => {
  const ws = new TransportPolicy(new Set<TransportKind>(['websocket']), 1);
  for (let i = 0; i < 5; i++) ws.failed('websocket');
  assert.equal(ws.next(), 'websocket');
  assert.equal(ws.canFallBack, false);
  const sse = new TransportPolicy(new Set<TransportKind>(['sse']), 1);
  sse.failed('sse');
  assert.equal(sse.next(), 'sse');
});

test('fallback: two WebSocket attempts that never open, then SSE; the connected event says so', async () => {
  const h = sseHarness({ webSocketRetryInterval: 0 }, [0]);
  const connected = record<ConnectedEvent>((l) => h.client.on('connected', l));
  const lost = record<DisconnectedEvent>((l) => h.client.on('disconnected', l));
  h.client.connect();
  await settle();
  assert.equal(h.client.transport, 'websocket');
  h.ws.last().refuse();
  await h.clock.advance(500);
  assert.equal(h.ws.sockets.length, 2);
  h.ws.last().refuse();
  await h.clock.advance(1000);
  assert.equal(h.ws.sockets.length, 2, 'no third WebSocket');
  assert.equal(h.sse.sources.length, 1, 'an SSE stream instead');
  assert.equal(h.client.transport, 'sse');
  await acceptSse(h);
  assert.equal(h.client.state, 'connected');
  assert.equal(connected[0]?.transport, 'sse');
  assert.deepEqual(
    lost.map((l) => l.code),
    [1006, 1006],
  );
  h.client.disconnect();
});

test('fallback: a WebSocket that never opens within `timeout` counts as a failure', async () => {
  const h = sseHarness({ fallbackAfter: 1, timeout: 3000, webSocketRetryInterval: 0 }, [0]);
  const lost = record<DisconnectedEvent>((l) => h.client.on('disconnected', l));
  h.client.connect();
  await h.clock.advance(2999);
  assert.equal(lost.length, 0);
  await h.clock.advance(1);
  assert.equal(lost[0]?.code, LocalCode.timeout);
  assert.ok(h.ws.last().closedByClient, 'the hanging socket was closed');
  await h.clock.advance(500);
  assert.equal(h.sse.sources.length, 1);
  h.client.disconnect();
});

test('fallback: a WebSocket that opens but where nothing arrives (a proxy passing only the upgrade) counts as a failure', async () => {
  const h = sseHarness({ fallbackAfter: 1, timeout: 3000, webSocketRetryInterval: 0 }, [0]);
  h.client.connect();
  await settle();
  h.ws.last().accept();
  await settle();
  assert.equal(h.ws.last().sent('connect').length, 1);
  await h.clock.advance(3000); // connect unanswered
  await h.clock.advance(500);
  assert.equal(h.ws.sockets.length, 1);
  assert.equal(h.sse.sources.length, 1, 'SSE next');
  h.client.disconnect();
});

test('fallback: a WebSocket the server answered on is not a failure, even when connect is refused', async () => {
  const h = sseHarness({ fallbackAfter: 1 }, [0]);
  h.client.connect();
  await settle();
  h.ws.last().accept();
  await settle();
  h.ws.last().replyError('connect', 100, true, 'internal');
  await h.clock.advance(500);
  assert.equal(h.ws.sockets.length, 2, 'WebSocket again');
  assert.equal(h.sse.sources.length, 0);
  h.client.disconnect();
});

test('fallback: a WebSocket lost after the server answered on it is not a reason to fall back', async () => {
  const h = sseHarness({ fallbackAfter: 1 }, [0]);
  h.client.connect();
  await accept(h);
  for (let i = 0; i < 3; i++) {
    h.ws.last().serverClose(1006);
    await h.clock.advance(2000);
    await accept(h);
  }
  assert.equal(h.ws.sockets.length, 4);
  assert.equal(h.sse.sources.length, 0);
  h.client.disconnect();
});

test("fallback: transports ['websocket'] never uses SSE", async () => {
  const h = sseHarness({ transports: ['websocket'] }, [0]);
  h.client.connect();
  for (let i = 0; i < 5; i++) {
    await settle();
    h.ws.last().refuse();
    await h.clock.advance(500);
  }
  assert.equal(h.sse.sources.length, 0);
  assert.equal(h.ws.sockets.length, 6);
  h.client.disconnect();
});

test('fallback: no WebSocket in the environment: SSE from the start; neither: the constructor throws', async () => {
  const g = globalThis as { WebSocket?: unknown };
  const saved = g.WebSocket;
  delete g.WebSocket;
  try {
    const sse = fakeSse(204);
    const client = new Client('ws://edge.test/ws', { EventSource: sse.EventSource, fetch: sse.fetch });
    client.connect();
    await settle();
    assert.equal(client.transport, 'sse');
    assert.equal(sse.sources.length, 1);
    client.disconnect();
    assert.throws(() => new Client('ws://edge.test/ws', { fetch: sse.fetch }), /no WebSocket/);
  } finally {
    g.WebSocket = saved;
  }
});

test('fallback: while on SSE a probe WebSocket opens; the client moves to WebSocket and recovers its subscriptions', async () => {
  const h = sseHarness({ fallbackAfter: 1, webSocketRetryInterval: 30_000, pingInterval: 0 }, [0]);
  const lost = record<DisconnectedEvent>((l) => h.client.on('disconnected', l));
  const retries = record<ReconnectingEvent>((l) => h.client.on('reconnecting', l));
  const connected = record<ConnectedEvent>((l) => h.client.on('connected', l));
  h.client.connect();
  await settle();
  h.ws.last().refuse();
  await h.clock.advance(500);
  const es = await acceptSse(h);
  const sub = h.client.subscribe('chat:a');
  await settle();
  h.sse.reply('subscribe', { epoch: '9d3c1f0a7b2e4c55', offset: 4, recoverable: true, recovered: false, publications: [] });
  assert.equal(sub.state, 'subscribed');

  // The first probe goes out right after connecting over SSE; it fails.
  await h.clock.advance(0);
  assert.equal(h.ws.sockets.length, 2, 'a probe');
  h.ws.last().refuse();
  await h.clock.advance(29_999);
  assert.equal(h.ws.sockets.length, 2);
  await h.clock.advance(1);
  assert.equal(h.ws.sockets.length, 3, 'the next probe after webSocketRetryInterval');
  const probe = h.ws.last();
  probe.accept();
  await settle();
  assert.deepEqual(probe.closedByClient, { code: 1000, reason: 'probe' }, 'the probe is closed, nothing sent on it');
  assert.equal(probe.frames.length, 0);
  assert.ok(es.closed, 'the SSE session is closed');
  assert.equal(lost.at(-1)?.code, LocalCode.transportSwitch);
  assert.equal(lost.at(-1)?.reconnect, true);
  assert.equal(retries.at(-1)?.delay, 0, 'at once');

  await h.clock.advance(0);
  const ws = await accept(h);
  assert.equal(h.ws.sockets.length, 4);
  assert.equal(h.client.transport, 'websocket');
  assert.equal(connected.at(-1)?.transport, 'websocket');
  await settle();
  assert.deepEqual(ws.sent('subscribe')[0]?.params, { channel: 'chat:a', recover: true, epoch: '9d3c1f0a7b2e4c55', offset: 4 });
  ws.reply('subscribe', { epoch: '9d3c1f0a7b2e4c55', offset: 4, recoverable: true, recovered: true, publications: [] });
  assert.equal(sub.state, 'subscribed');
  // Back on WebSocket: no more probes.
  await h.clock.advance(120_000);
  assert.equal(h.ws.sockets.length, 4);
  h.client.disconnect();
});

test('fallback: a probe that opens while a publish is in flight over SSE waits for its reply, then switches', async () => {
  const h = sseHarness({ fallbackAfter: 1, webSocketRetryInterval: 5_000, pingInterval: 0 }, [0]);
  const lost = record<DisconnectedEvent>((l) => h.client.on('disconnected', l));
  h.client.connect();
  await settle();
  h.ws.last().refuse();
  await h.clock.advance(500);
  const es = await acceptSse(h);
  lost.length = 0; // the refused WebSocket
  await h.clock.advance(0);
  h.ws.last().refuse(); // the first probe fails
  const published = h.client.publish('chat:a', 'x');
  await settle();
  assert.equal(h.sse.sent('publish').length, 1, 'the publish went over SSE');

  await h.clock.advance(5_000); // within the command timeout (10 s)
  h.ws.last().accept(); // the next probe opens while the publish waits for its reply
  await settle();
  assert.equal(lost.length, 0, 'no loss yet');
  assert.equal(es.closed, false, 'SSE stays until the publish is answered');
  assert.equal(lost.length, 0);
  h.sse.reply('publish', { offset: 7 });
  assert.deepEqual(await published, { offset: 7 }, 'the publish is answered, not cut short');
  await settle();
  assert.ok(es.closed, 'then the SSE session is closed');
  assert.equal(lost.at(-1)?.code, LocalCode.transportSwitch);
  await h.clock.advance(0);
  await accept(h);
  assert.equal(h.client.transport, 'websocket');
  h.client.disconnect();
});

test('fallback: a probe that hangs is dropped after `timeout`; probes stop when the SSE connection ends', async () => {
  const h = sseHarness({ fallbackAfter: 1, webSocketRetryInterval: 10_000, timeout: 2000, pingInterval: 0 }, [0]);
  h.client.connect();
  await settle();
  h.ws.last().refuse();
  await h.clock.advance(500);
  await acceptSse(h);
  await h.clock.advance(0);
  const probe = h.ws.last();
  assert.equal(h.ws.sockets.length, 2);
  await h.clock.advance(2000);
  assert.ok(probe.closedByClient, 'the hanging probe was closed');
  await h.clock.advance(10_000);
  assert.equal(h.ws.sockets.length, 3, 'and another one tried');
  h.client.disconnect();
  assert.ok(h.ws.last().closedByClient, 'disconnect() drops the probe in flight');
  await h.clock.advance(60_000);
  assert.equal(h.ws.sockets.length, 3, 'no probe after disconnect()');
  assert.equal(h.clock.pendingTimers, 0);
});

test('fallback: webSocketRetryInterval 0 never probes; an SSE failure before its session tries WebSocket again', async () => {
  const h = sseHarness({ fallbackAfter: 1, webSocketRetryInterval: 0, pingInterval: 0 }, [0]);
  h.client.connect();
  await settle();
  h.ws.last().refuse();
  await h.clock.advance(500);
  h.sse.last().fail(); // the stream fails before its session: the server may be away
  await h.clock.advance(1000);
  assert.equal(h.ws.sockets.length, 2, 'WebSocket again');
  h.ws.last().refuse();
  await h.clock.advance(2000);
  assert.equal(h.sse.sources.length, 2, 'then SSE');
  await acceptSse(h, CONNECT_REPLY);
  await h.clock.advance(600_000);
  assert.equal(h.ws.sockets.length, 2, 'no probes');
  h.client.disconnect();
});
