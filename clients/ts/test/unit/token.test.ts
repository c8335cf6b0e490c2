import assert from 'node:assert/strict';
import { test } from 'node:test';

import { jwtExpiry, refreshDelay, UnauthorizedError, type DisconnectedEvent } from '../../src/index.js';
import { settle } from '../helpers/fake-clock.js';
import { accept, fakeJwt, harness, record } from '../helpers/setup.js';

test('jwtExpiry reads exp without verifying; anything else has none', () => {
  assert.equal(jwtExpiry(fakeJwt({ sub: 'ann', exp: 1234567890 })), 1234567890);
  assert.equal(jwtExpiry(fakeJwt({ sub: 'ann', name: 'Zoë ✓' , exp: 42 })), 42);
  assert.equal(jwtExpiry(fakeJwt({ sub: 'ann' })), undefined);
  assert.equal(jwtExpiry(fakeJwt({ exp: '1' })), undefined);
  assert.equal(jwtExpiry('opaque-token'), undefined);
  assert.equal(jwtExpiry('a.b.c'), undefined);
});

test('refreshDelay: ratio of the smaller of the server ttl and exp − now', () => {
  const now = 1_000_000_000_000;
  const token = fakeJwt({ exp: now / 1000 + 100 });
  assert.equal(refreshDelay(now, 0.85, undefined, token), 85_000);
  assert.equal(refreshDelay(now, 0.85, 40, token), 34_000, 'the server ttl is shorter');
  assert.equal(refreshDelay(now, 0.9, 200, token), 90_000, 'the token exp is shorter');
  assert.equal(refreshDelay(now, 0.85, 60, 'opaque'), 51_000);
  assert.equal(refreshDelay(now, 0.85, undefined, 'opaque'), undefined);
  assert.equal(refreshDelay(now, 0.85, undefined, fakeJwt({ exp: now / 1000 - 5 })), 0, 'already expired: now');
});

test('the connection token is refreshed at 85 % of its lifetime, with the refresh command', async () => {
  let calls = 0;
  const lifetime = 100; // seconds
  const h = harness({
    pingInterval: 0,
    getToken: async () => {
      calls++;
      return fakeJwt({ sub: 'ann', exp: Math.floor(h.clock.now() / 1000) + lifetime });
    },
  });
  const { client, clock, ws } = h;
  const refreshed = record<{ expires: boolean }>((l) => client.on('refreshed', l));
  client.connect();
  await settle();
  assert.equal(calls, 1, 'getToken before the first connect');
  const s = ws.last();
  s.accept();
  await settle();
  const sentToken = s.sent('connect')[0]?.params.token as string;
  assert.equal(jwtExpiry(sentToken), Math.floor(clock.now() / 1000) + lifetime);
  s.reply('connect', { client: 'c', node: 'n', ping: 25, user: 'ann', expires: true, ttl: lifetime });
  await settle();
  assert.equal(client.state, 'connected');

  await clock.advance(84_999);
  assert.equal(s.sent('refresh').length, 0, 'not before 85 %');
  assert.equal(calls, 1);
  await clock.advance(1);
  assert.equal(calls, 2, 'getToken at 85 %');
  const r1 = s.sent('refresh');
  assert.equal(r1.length, 1);
  assert.equal(jwtExpiry(r1[0]?.params.token as string), Math.floor(clock.now() / 1000) + lifetime);
  s.reply('refresh', { expires: true, ttl: lifetime });
  await settle();
  assert.equal(refreshed.length, 1);
  // The next refresh is 85 % of the new lifetime later.
  await clock.advance(84_999);
  assert.equal(s.sent('refresh').length, 1);
  await clock.advance(1);
  assert.equal(s.sent('refresh').length, 2);
  client.disconnect();
});

test('a refresh answered with a temporary error is retried with backoff', async () => {
  const h = harness({ pingInterval: 0, getToken: async () => fakeJwt({ exp: 9_999_999_999 }) }, [0]);
  h.client.connect();
  await settle();
  const s = h.ws.last();
  s.accept();
  await settle();
  s.reply('connect', { client: 'c', node: 'n', ping: 25, user: 'ann', expires: true, ttl: 10 });
  await h.clock.advance(8_500);
  s.replyError('refresh', 100, true);
  await h.clock.advance(499);
  assert.equal(s.sent('refresh').length, 1);
  await h.clock.advance(1);
  assert.equal(s.sent('refresh').length, 2, 'retried after the minimum backoff');
  assert.equal(h.client.state, 'connected');
  h.client.disconnect();
});

test('close 3007 (token expired): the client gets a new token before reconnecting', async () => {
  let calls = 0;
  const h = harness({ getToken: async () => `token-${++calls}` });
  h.client.connect();
  const s1 = await accept(h);
  assert.equal(s1.sent('connect')[0]?.params.token, 'token-1');
  s1.receive({ push: { disconnect: { code: 3007, reason: 'token expired', reconnect: true } } });
  s1.serverClose(3007, 'token expired');
  assert.equal(h.client.state, 'connecting');
  await h.clock.advance(1000);
  const s2 = await accept(h);
  assert.equal(s2.sent('connect')[0]?.params.token, 'token-2');
  h.client.disconnect();
});

test('connect answered 116 (token expired): new token and retry; without getToken the client stops', async () => {
  let calls = 0;
  const h = harness({ getToken: async () => `token-${++calls}` });
  h.client.connect();
  await settle();
  const s1 = h.ws.last();
  s1.accept();
  await settle();
  s1.replyError('connect', 116, true, 'token expired');
  assert.equal(h.client.state, 'connecting');
  await h.clock.advance(1000);
  const s2 = await accept(h);
  assert.equal(s2.sent('connect')[0]?.params.token, 'token-2');
  h.client.disconnect();

  const h2 = harness({ token: 'static' });
  const lost = record<DisconnectedEvent>((l) => h2.client.on('disconnected', l));
  h2.client.connect();
  await settle();
  const t1 = h2.ws.last();
  t1.accept();
  await settle();
  t1.replyError('connect', 116, true, 'token expired');
  assert.equal(h2.client.state, 'disconnected');
  assert.equal(lost[0]?.code, 116);
  assert.equal(lost[0]?.reconnect, false);
});

test('getToken throwing UnauthorizedError stops the client; other errors are retried', async () => {
  let n = 0;
  const h = harness({
    getToken: async () => {
      n++;
      if (n === 1) throw new Error('network down');
      throw new UnauthorizedError('logged out');
    },
  });
  const lost = record<DisconnectedEvent>((l) => h.client.on('disconnected', l));
  h.client.on('error', () => {});
  h.client.connect();
  await settle();
  assert.equal(h.client.state, 'connecting');
  assert.equal(lost[0]?.reconnect, true);
  await h.clock.advance(1000);
  assert.equal(h.client.state, 'disconnected');
  assert.equal(lost[1]?.reconnect, false);
  assert.equal(h.ws.sockets.length, 0, 'never opened a socket without a token');
});
