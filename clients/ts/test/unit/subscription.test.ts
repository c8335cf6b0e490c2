import assert from 'node:assert/strict';
import { test } from 'node:test';

import { ServerError, type Publication, type SubscribedEvent, type UnsubscribedEvent } from '../../src/index.js';
import { settle } from '../helpers/fake-clock.js';
import { accept, connected, harness, record } from '../helpers/setup.js';

const EPOCH = '9d3c1f0a7b2e4c55';

function subReply(offset: number, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { epoch: EPOCH, offset, recoverable: true, recovered: false, publications: [], ...extra };
}

test('subscribe, receive, and after a reconnect recover from the last position seen', async () => {
  const h = await connected();
  const pubs: Publication[] = [];
  const sub = h.client.subscribe('chat:a', { onPublication: (p) => pubs.push(p) });
  const subscribed = record<SubscribedEvent>((l) => sub.on('subscribed', l));
  assert.equal(sub.state, 'subscribing');
  await settle();
  assert.deepEqual(h.socket.sent('subscribe')[0]?.params, { channel: 'chat:a' });
  // The reply and the first publications in one frame: none is lost.
  const c = h.socket.unanswered('subscribe')[0];
  h.socket.receive(
    { id: c?.id, subscribe: subReply(118) },
    { push: { channel: 'chat:a', pub: { offset: 119, data: { text: 'hi' } } } },
  );
  assert.equal(sub.state, 'subscribed');
  assert.deepEqual(subscribed[0], {
    channel: 'chat:a', epoch: EPOCH, offset: 118, recoverable: true, recovering: false, recovered: false, replayed: 0,
  });
  h.socket.receive({ push: { channel: 'chat:a', pub: { offset: 119, data: { text: 'hi' } } } }); // a duplicate
  assert.deepEqual(
    pubs.map((p) => [p.offset, p.data, p.replayed]),
    [[119, { text: 'hi' }, false]],
  );
  assert.deepEqual(sub.position, { epoch: EPOCH, offset: 119 });

  h.socket.serverClose(3004, 'insufficient state');
  assert.equal(sub.state, 'subscribing');
  await h.clock.advance(1000);
  const s2 = await accept(h);
  await settle();
  assert.deepEqual(s2.sent('subscribe')[0]?.params, { channel: 'chat:a', recover: true, epoch: EPOCH, offset: 119 });
  s2.reply('subscribe', subReply(121, {
    recovered: true,
    publications: [
      { offset: 120, data: { text: 'yo' } },
      { offset: 121, b64data: '/wA=' },
    ],
  }));
  assert.equal(subscribed[1]?.recovered, true);
  assert.equal(subscribed[1]?.recovering, true);
  assert.equal(subscribed[1]?.replayed, 2);
  assert.deepEqual(
    pubs.map((p) => [p.offset, p.replayed]),
    [[119, false], [120, true], [121, true]],
  );
  assert.deepEqual(pubs[2]?.bytes, new Uint8Array([0xff, 0]));
  assert.deepEqual(sub.position, { epoch: EPOCH, offset: 121 });
  h.client.disconnect();
});

test('recovered: false takes the new position (a new epoch after a server restart)', async () => {
  const h = await connected();
  const sub = h.client.subscribe('chat:a', { since: { epoch: EPOCH, offset: 5 } });
  const subscribed = record<SubscribedEvent>((l) => sub.on('subscribed', l));
  await settle();
  assert.deepEqual(h.socket.sent('subscribe')[0]?.params, { channel: 'chat:a', recover: true, epoch: EPOCH, offset: 5 });
  h.socket.reply('subscribe', { epoch: 'aaaaaaaaaaaaaaaa', offset: 0, recoverable: true, recovered: false, publications: [] });
  assert.equal(subscribed[0]?.recovered, false);
  assert.deepEqual(sub.position, { epoch: 'aaaaaaaaaaaaaaaa', offset: 0 });
  h.client.disconnect();
});

test('recover: false resubscribes without a position', async () => {
  const h = await connected();
  h.client.subscribe('feed', { recover: false });
  await settle();
  h.socket.reply('subscribe', subReply(3));
  h.socket.serverClose(1006);
  await h.clock.advance(1000);
  const s2 = await accept(h);
  await settle();
  assert.deepEqual(s2.sent('subscribe')[0]?.params, { channel: 'feed' });
  h.client.disconnect();
});

test('subscriptions made while disconnected subscribe once connected', async () => {
  const h = harness();
  const sub = h.client.subscribe('chat:a');
  const sub2 = h.client.subscribe('chat:b');
  assert.throws(() => h.client.subscribe('chat:a'), /already subscribed/);
  h.client.connect();
  const s = await accept(h);
  await settle();
  assert.deepEqual(
    s.sent('subscribe').map((c) => c.params.channel),
    ['chat:a', 'chat:b'],
  );
  assert.equal(sub.state, 'subscribing');
  assert.equal(sub2.state, 'subscribing');
  h.client.disconnect();
});

test('a permanent subscribe error ends the subscription; a temporary one is retried', async () => {
  const h = await connected({}, [0]);
  const sub = h.client.subscribe('chat:a');
  const gone = record<UnsubscribedEvent>((l) => sub.on('unsubscribed', l));
  sub.on('error', () => {});
  const sub2 = h.client.subscribe('chat:b');
  sub2.on('error', () => {});
  await settle();
  h.socket.replyError('subscribe', 103, false, 'permission denied');
  h.socket.replyError('subscribe', 100, true, 'internal');
  assert.equal(sub.state, 'unsubscribed');
  assert.equal(gone[0]?.reason, 'error');
  assert.ok(gone[0]?.error instanceof ServerError);
  assert.equal(h.client.getSubscription('chat:a'), undefined);
  assert.equal(sub2.state, 'subscribing');
  await h.clock.advance(500);
  assert.equal(h.socket.sent('subscribe').filter((c) => c.params.channel === 'chat:b').length, 2);
  h.client.disconnect();
});

test('unsubscribe sends unsubscribe; one made while the subscribe is in flight undoes it on the reply', async () => {
  const h = await connected();
  const sub = h.client.subscribe('chat:a');
  await settle();
  h.socket.reply('subscribe', subReply(1));
  sub.unsubscribe();
  await settle();
  assert.deepEqual(h.socket.sent('unsubscribe')[0]?.params, { channel: 'chat:a' });
  assert.equal(h.client.getSubscription('chat:a'), undefined);

  const sub2 = h.client.subscribe('chat:b');
  await settle();
  sub2.unsubscribe();
  await settle();
  assert.equal(h.socket.sent('unsubscribe').length, 1, 'nothing to undo yet');
  h.socket.reply('subscribe', subReply(1));
  await settle();
  assert.deepEqual(h.socket.sent('unsubscribe')[1]?.params, { channel: 'chat:b' });
  assert.equal(sub2.state, 'unsubscribed');
  h.client.disconnect();
});

test('pushes: join, leave, presence state; an unsubscribe push ends the subscription', async () => {
  const h = await connected();
  const sub = h.client.subscribe('chat:a');
  await settle();
  h.socket.reply('subscribe', subReply(0));
  const joins = record<{ info: { user: string } }>((l) => sub.on('join', l));
  const states = record<{ state: string }>((l) => sub.on('presenceState', l));
  const gone = record<UnsubscribedEvent>((l) => sub.on('unsubscribed', l));
  const info = { user: 'bob', client: 'c.1.1' };
  h.socket.receive(
    { push: { channel: 'chat:a', join: { info } } },
    { push: { channel: 'chat:a', state: { info, state: 'typing' } } },
    { push: { channel: 'chat:a', unsubscribe: {} } },
  );
  assert.equal(joins[0]?.info.user, 'bob');
  assert.equal(states[0]?.state, 'typing');
  assert.equal(gone[0]?.reason, 'server');
  assert.equal(sub.state, 'unsubscribed');
  h.client.disconnect();
});

test('server-side subscriptions reach the client\'s events', async () => {
  const h = await connected();
  const subs = record<{ channel: string }>((l) => h.client.on('serverSubscribed', l));
  const pubs = record<Publication>((l) => h.client.on('publication', l));
  h.socket.receive(
    { push: { channel: '#ann', subscribe: subReply(0) } },
    { push: { channel: '#ann', pub: { offset: 1, data: 'hello' } } },
  );
  assert.equal(subs[0]?.channel, '#ann');
  assert.deepEqual(
    pubs.map((p) => [p.channel, p.offset, p.data]),
    [['#ann', 1, 'hello']],
  );
  h.client.disconnect();
});

test('subscription tokens: getToken before subscribing, again after 116', async () => {
  let n = 0;
  const h = await connected({}, [0]);
  const sub = h.client.subscribe('secret:a', { getToken: async (ch) => `${ch}-${++n}` });
  sub.on('error', () => {});
  await settle();
  assert.equal(h.socket.sent('subscribe')[0]?.params.token, 'secret:a-1');
  h.socket.replyError('subscribe', 116, true, 'token expired');
  await h.clock.advance(500);
  assert.equal(h.socket.sent('subscribe')[1]?.params.token, 'secret:a-2');
  h.client.disconnect();
});

test('setPresenceState sends presence_state', async () => {
  const h = await connected();
  const sub = h.client.subscribe('chat:a');
  await settle();
  h.socket.reply('subscribe', subReply(0));
  const p = sub.setPresenceState('editing:intro', 10);
  await settle();
  assert.deepEqual(h.socket.sent('presence_state')[0]?.params, { channel: 'chat:a', state: 'editing:intro', ttl: 10 });
  h.socket.reply('presence_state', {});
  await p;
  h.client.disconnect();
});
