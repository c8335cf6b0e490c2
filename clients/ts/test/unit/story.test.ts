/**
 * Story collaboration on the fake socket: join and queue, promotion, lock
 * events and renewal, op_id reuse on resend, conflicts, version order and
 * recovery after a reconnect. The fake server answers as the real one does
 * (the story event before the command's reply, as tests/e2e shows).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  DisconnectedError,
  NotEditorError,
  ServerError,
  type StoryConflictEvent,
  type StoryJoinedEvent,
  type StoryLeftEvent,
  type StoryLockEvent,
  type StoryRoleEvent,
  type StoryUpdateEvent,
  type StoryUpdateResult,
} from '../../src/index.js';
import { settle } from '../helpers/fake-clock.js';
import type { FakeSocket } from '../helpers/fake-websocket.js';
import { accept, connected, harness, record } from '../helpers/setup.js';

const EPOCH = '9d3c1f0a7b2e4c55';
const CH = 'story:42';
const ME = { user: 'ann', client: 'c.0.1' };
const BOB = { user: 'bob', client: 'c.1.7' };

function joinReply(offset: number, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { role: 'editor', editors: [ME], viewers: 0, sections: {}, epoch: EPOCH, offset, ...extra };
}

function pub(offset: number, data: unknown): Record<string, unknown> {
  return { push: { channel: CH, pub: { offset, data } } };
}

function updateEvent(offset: number, section: string, version: number, data: unknown, by = BOB): Record<string, unknown> {
  return pub(offset, { update: { section, version, data, by } });
}

function lockEvent(offset: number, section: string, holder: { user: string; client: string } | null, expires?: number): Record<string, unknown> {
  return pub(offset, { lock: { section, holder, ...(expires !== undefined ? { expires } : {}) } });
}

/** Answers the oldest unanswered `method` command after the story events it caused (the server's order). */
function replyAfter(s: FakeSocket, method: string, result: unknown, ...pushes: Record<string, unknown>[]): void {
  if (pushes.length > 0) s.receive(...pushes);
  s.reply(method, result);
}

test('join as an editor: the snapshot becomes sections, lock holders and editors, announced before `joined`', async () => {
  const h = await connected();
  const story = h.client.story(CH);
  const order: string[] = [];
  story.on('update', (e) => order.push(`update ${e.section} v${e.version} ${e.source}`));
  story.on('lock', (e) => order.push(`lock ${e.section} ${e.holder?.user ?? '-'}`));
  story.on('joined', (e) => order.push(`joined ${e.role} @${e.offset} recovering=${e.recovering}`));
  assert.equal(story.state, 'joining');
  await settle();
  assert.deepEqual(h.socket.sent('collab_join')[0]?.params, { channel: CH, role: 'editor', queue: true });
  h.socket.reply(
    'collab_join',
    joinReply(9, {
      editors: [BOB, ME],
      viewers: 3,
      sections: {
        intro: { version: 4, data: { text: 'Once' }, holder: BOB },
        p2: { version: 0, data: null, holder: BOB },
        p3: { version: 1, data: 'x' },
      },
    }),
  );
  assert.equal(story.state, 'joined');
  assert.equal(story.role, 'editor');
  assert.deepEqual(story.editors, [BOB, ME]);
  assert.equal(story.viewers, 3);
  assert.deepEqual(order, [
    'update intro v4 sync',
    'lock intro bob',
    'lock p2 bob',
    'update p3 v1 sync',
    'joined editor @9 recovering=false',
  ]);
  assert.deepEqual(story.section('intro'), { id: 'intro', version: 4, data: { text: 'Once' }, holder: BOB });
  assert.equal(story.version('p2'), 0);
  assert.equal(story.section('p2')?.data, null);
  assert.deepEqual(story.streamPosition, { epoch: EPOCH, offset: 9 });
  assert.equal(h.client.getStory(CH), story);
  assert.throws(() => h.client.subscribe(CH), /already subscribed/);
  assert.throws(() => h.client.story(CH), /already subscribed/);
  h.client.disconnect();
});

test('queued: the place in line follows the `queue` pushes, then promotion sends the updates made meanwhile', async () => {
  const h = await connected();
  const story = h.client.story(CH);
  const roles = record<StoryRoleEvent>((l) => story.on('role', l));
  const positions = record<{ position: number }>((l) => story.on('position', l));
  const joined = record<StoryJoinedEvent>((l) => story.on('joined', l));
  let promoted = 0;
  story.on('promoted', () => promoted++);
  await settle();
  h.socket.reply('collab_join', joinReply(5, { role: 'queued', position: 2, queued: 2, editors: [BOB] }));
  assert.equal(story.role, 'queued');
  assert.equal(story.position, 2);
  assert.equal(joined[0]?.queued, 2);
  assert.deepEqual(roles, [{ channel: CH, role: 'queued', previous: undefined, position: 2 }]);

  // An update made while in line waits for the editor slot.
  const done = story.update('intro', 'draft');
  await settle();
  assert.equal(h.socket.sent('update').length, 0);

  // Someone ahead leaves the line: the server pushes the new place.
  h.socket.receive(pub(6, { 'story.user.leave': { user: 'cy', client: 'c.1.2' } }), {
    push: { channel: CH, queue: { position: 1 } },
  });
  assert.equal(story.position, 1);
  assert.deepEqual(positions.map((p) => p.position), [1]);
  // The same place again is no change; nothing asks the server for it.
  h.socket.receive({ push: { channel: CH, queue: { position: 1 } } });
  assert.deepEqual(positions.map((p) => p.position), [1]);
  await h.clock.advance(1000);
  assert.equal(h.socket.sent('collab_join').length, 1, 'no re-join to learn the place');

  // The editor leaves: this member is promoted.
  h.socket.receive(
    pub(7, { 'story.user.leave': BOB }),
    pub(8, { 'story.user.join': { ...ME, role: 'editor' } }),
    { push: { channel: CH, promoted: { role: 'editor' } } },
  );
  assert.equal(story.role, 'editor');
  assert.equal(story.position, undefined);
  assert.equal(promoted, 1);
  assert.deepEqual(roles[1], { channel: CH, role: 'editor', previous: 'queued' });
  assert.deepEqual(story.editors, [ME]);
  await settle();
  const sent = h.socket.sent('update');
  assert.equal(sent.length, 1);
  assert.deepEqual(sent[0]?.params, { channel: CH, section: 'intro', base_version: 0, data: 'draft', op_id: 'uuid-1' });
  replyAfter(h.socket, 'update', { version: 1 }, updateEvent(9, 'intro', 1, 'draft', ME));
  assert.deepEqual(await done, { section: 'intro', version: 1, duplicate: false, opId: 'uuid-1' });
  await h.clock.advance(1000);
  // A `queue` push after the promotion (a stale one) changes nothing.
  h.socket.receive({ push: { channel: CH, queue: { position: 1 } } });
  assert.equal(story.position, undefined);
  assert.equal(story.role, 'editor');
  assert.equal(h.socket.sent('collab_join').length, 1);
  h.client.disconnect();
});

test('locks: lock events say who holds what, the holder renews before expiry, release drops an unwritten section', async () => {
  const h = await connected();
  const story = h.client.story(CH);
  await settle();
  h.socket.reply('collab_join', joinReply(1));
  const locks = record<StoryLockEvent>((l) => story.on('lock', l));
  const expires = h.clock.now() + 10_000;
  const p = story.lock('intro', { ttl: 10 });
  await settle();
  assert.deepEqual(h.socket.sent('lock')[0]?.params, { channel: CH, section: 'intro', ttl: 10 });
  replyAfter(h.socket, 'lock', { section: 'intro', holder: ME, expires }, lockEvent(2, 'intro', ME, expires));
  assert.deepEqual(await p, { section: 'intro', holder: ME, expires });
  assert.deepEqual(locks, [{ channel: CH, section: 'intro', holder: ME, previous: null, expires, mine: true }]);
  assert.equal(story.holdsLock('intro'), true);
  assert.equal(story.section('intro')?.version, 0);

  // Renewed at half the ttl, silently.
  await h.clock.advance(4_999);
  assert.equal(h.socket.sent('lock').length, 1);
  await h.clock.advance(1);
  assert.equal(h.socket.sent('lock').length, 2);
  h.socket.reply('lock', { section: 'intro', holder: ME, expires: expires + 5_000 });
  assert.equal(locks.length, 1, 'a renewal is no lock event');
  assert.equal(story.section('intro')?.expires, expires + 5_000);

  // Someone else's lock, refused to us with 118 and the holder.
  h.socket.receive(lockEvent(3, 'p2', BOB, expires));
  assert.deepEqual(locks[1], { channel: CH, section: 'p2', holder: BOB, previous: null, expires, mine: false });
  const refused = story.lock('p2');
  await settle();
  h.socket.replyError('lock', 118, false, 'section locked', { holder: BOB });
  await assert.rejects(refused, (e: unknown) => e instanceof ServerError && e.code === 118 && (e.body.holder as { user: string }).user === 'bob');

  // unlock: the release event ends the lock; a section never written goes with it.
  const u = story.unlock('intro');
  await settle();
  assert.deepEqual(h.socket.sent('unlock')[0]?.params, { channel: CH, section: 'intro' });
  replyAfter(h.socket, 'unlock', {}, lockEvent(4, 'intro', null));
  await u;
  assert.deepEqual(locks[2], { channel: CH, section: 'intro', holder: null, previous: ME, mine: false });
  assert.equal(story.section('intro'), undefined);
  await h.clock.advance(60_000);
  assert.equal(h.socket.sent('lock').length, 3, 'no renewal after unlock');
  h.client.disconnect();
});

test('an update whose answer was lost goes out again after the re-join with the same op_id and base, once', async () => {
  const h = await connected({}, [0]);
  const story = h.client.story(CH);
  await settle();
  h.socket.reply('collab_join', joinReply(3, { sections: { intro: { version: 2, data: 'old' } } }));
  const updates = record<StoryUpdateEvent>((l) => story.on('update', l));
  const p = story.update('intro', 'new');
  await settle();
  const first = h.socket.sent('update')[0]?.params;
  assert.deepEqual(first, { channel: CH, section: 'intro', base_version: 2, data: 'new', op_id: 'uuid-1' });

  // The server applied it, but the connection dropped before anything came back.
  h.socket.serverClose(1006);
  assert.equal(story.state, 'joining');
  assert.equal(story.pendingUpdates, 1);
  await h.clock.advance(500);
  const s2 = await accept(h, { ...ME, node: 'n', ping: 25, client: 'c.0.2', expires: false });
  await settle();
  assert.deepEqual(s2.sent('collab_join')[0]?.params, { channel: CH, role: 'editor', queue: true, recover: true, epoch: EPOCH, offset: 3 });
  assert.equal(s2.sent('update').length, 0, 'updates wait for the join answer');
  s2.reply(
    'collab_join',
    joinReply(5, {
      editors: [{ user: 'ann', client: 'c.0.2' }],
      sections: { intro: { version: 3, data: 'new' } },
      recovered: true,
      publications: [
        { offset: 4, data: { update: { section: 'intro', version: 3, data: 'new', by: ME } } },
        { offset: 5, data: { 'story.user.join': { user: 'ann', client: 'c.0.2', role: 'editor' } } },
      ],
    }),
  );
  await settle();
  assert.deepEqual(s2.sent('update')[0]?.params, first, 'the same op_id and base_version');
  s2.reply('update', { version: 3, duplicate: true });
  assert.deepEqual(await p, { section: 'intro', version: 3, duplicate: true, opId: 'uuid-1' });
  assert.deepEqual(
    updates.map((e) => [e.version, e.data, e.source, e.mine]),
    [[3, 'new', 'replay', true]],
    'one update event for version 3: the replayed one',
  );
  assert.equal(story.pendingUpdates, 0);
  h.client.disconnect();
});

test('a temporary refusal (112) is resent with the same op_id after a backoff; a permanent one rejects', async () => {
  const h = await connected({}, [0]);
  const story = h.client.story(CH);
  await settle();
  h.socket.reply('collab_join', joinReply(1));
  const p = story.update('intro', 'a', { opId: 'my-op' });
  await settle();
  h.socket.replyError('update', 112, true, 'overloaded');
  await settle();
  assert.equal(h.socket.sent('update').length, 1);
  await h.clock.advance(500);
  const sent = h.socket.sent('update');
  assert.equal(sent.length, 2);
  assert.equal(sent[1]?.params.op_id, 'my-op');
  assert.equal(sent[1]?.params.base_version, 0);
  h.socket.reply('update', { version: 1 });
  assert.equal((await p).version, 1);

  const bad = story.update('intro', 'b');
  await settle();
  h.socket.replyError('update', 121, false, 'story limit');
  await assert.rejects(bad, (e: unknown) => e instanceof ServerError && e.code === 121);
  h.client.disconnect();
});

test('updates of one section go one at a time, each on the version the previous one left', async () => {
  const h = await connected();
  const story = h.client.story(CH);
  await settle();
  h.socket.reply('collab_join', joinReply(1, { sections: { a: { version: 7, data: 0 } } }));
  const results: StoryUpdateResult[] = [];
  for (const d of [1, 2, 3]) void story.update('a', d).then((r) => results.push(r));
  void story.update('b', 'other');
  await settle();
  assert.deepEqual(
    h.socket.sent('update').map((c) => [c.params.section, c.params.base_version, c.params.data]),
    [['a', 7, 1], ['b', 0, 'other']],
  );
  h.socket.reply('update', { version: 8 });
  await settle();
  assert.deepEqual(h.socket.sent('update')[2]?.params.base_version, 8);
  h.socket.reply('update', { version: 1 }); // b
  h.socket.reply('update', { version: 9 });
  await settle();
  assert.deepEqual(h.socket.sent('update')[3]?.params.base_version, 9);
  h.socket.reply('update', { version: 10 });
  await settle();
  assert.deepEqual(results.map((r) => r.version), [8, 9, 10]);
  assert.equal(story.version('a'), 10);
  assert.equal(story.section('a')?.data, 3);
  h.client.disconnect();
});

test('error 119: the update and those built on it reject, a conflict event carries what to rebase on', async () => {
  const h = await connected();
  const story = h.client.story(CH);
  await settle();
  h.socket.reply('collab_join', joinReply(1, { sections: { p3: { version: 4, data: 'base' } } }));
  const conflicts = record<StoryConflictEvent>((l) => story.on('conflict', l));
  const updates = record<StoryUpdateEvent>((l) => story.on('update', l));
  const mine = story.update('p3', 'B');
  const onTop = story.update('p3', 'B+');
  const explicit = story.update('p3', 'C', { baseVersion: 5 });
  const rejections = [mine, onTop].map((q) => q.catch((e: unknown) => e));
  await settle();
  h.socket.replyError('update', 119, false, 'version conflict', { version: 5, data: 'A' });
  const [e1, e2] = await Promise.all(rejections);
  assert.ok(e1 instanceof ServerError && e1.code === 119);
  assert.equal(e2, e1, 'the update made on top of it rejects with it');
  assert.deepEqual(
    conflicts.map((e) => (e.kind === 'rejected' ? [e.section, e.version, e.data, e.attempted, e.baseVersion] : e.kind)),
    [
      ['p3', 5, 'A', 'B', 4],
      ['p3', 5, 'A', 'B+', 4],
    ],
  );
  // The section now says what the server has, so a rebased update bases on it.
  assert.deepEqual(updates.map((e) => [e.version, e.data, e.source]), [[5, 'A', 'sync']]);
  await settle();
  const next = h.socket.sent('update');
  assert.deepEqual(next[1]?.params.base_version, 5, 'the explicit base is kept');
  h.socket.reply('update', { version: 6 });
  assert.equal((await explicit).version, 6);

  // Under lww the server tells the overwritten writer instead.
  h.socket.receive({ push: { channel: CH, conflict: { section: 'p3', version: 7, overwritten: 'C', by: BOB } } });
  assert.deepEqual(conflicts[2], { kind: 'overwritten', channel: CH, section: 'p3', version: 7, overwritten: 'C', by: BOB });
  h.client.disconnect();
});

test('update events apply in version order: one ahead of a gap waits for the missing version', async () => {
  const h = await connected();
  const story = h.client.story(CH, { gapTimeout: 2000 });
  await settle();
  h.socket.reply('collab_join', joinReply(1, { sections: { s: { version: 1, data: 'v1' } } }));
  const updates = record<StoryUpdateEvent>((l) => story.on('update', l));
  h.socket.receive(updateEvent(2, 's', 3, 'v3'));
  assert.equal(story.version('s'), 1, 'v3 waits for v2');
  assert.equal(updates.length, 0);
  h.socket.receive(updateEvent(3, 's', 2, 'v2'), updateEvent(4, 's', 2, 'v2 again'));
  assert.deepEqual(updates.map((e) => [e.version, e.data]), [[2, 'v2'], [3, 'v3']]);
  assert.equal(story.section('s')?.data, 'v3');

  // This story's own update answered before its event: one update event.
  const p = story.update('s', 'v4');
  await settle();
  h.socket.reply('update', { version: 4 });
  await p;
  h.socket.receive(updateEvent(5, 's', 4, 'v4', ME));
  assert.deepEqual(updates.slice(2).map((e) => [e.version, e.source, e.mine]), [[4, 'reply', true]]);

  // A gap that does not fill: after gapTimeout the story asks for a snapshot.
  h.socket.receive(updateEvent(6, 's', 6, 'v6'));
  await h.clock.advance(1999);
  assert.equal(h.socket.sent('collab_join').length, 1);
  await h.clock.advance(1);
  assert.equal(h.socket.sent('collab_join').length, 2);
  h.socket.reply('collab_join', joinReply(6, { sections: { s: { version: 6, data: 'v6' } } }));
  assert.deepEqual(updates.slice(3).map((e) => [e.version, e.data, e.source]), [[6, 'v6', 'sync']]);
  h.client.disconnect();
});

test('a re-join that could not recover takes the snapshot: versions may go back, vanished sections are announced', async () => {
  const h = await connected();
  const story = h.client.story(CH);
  await settle();
  h.socket.reply('collab_join', joinReply(2, { sections: { a: { version: 3, data: 'a3' }, b: { version: 1, data: 'b1' } } }));
  const updates = record<StoryUpdateEvent>((l) => story.on('update', l));
  const joined = record<StoryJoinedEvent>((l) => story.on('joined', l));
  h.socket.serverClose(3001);
  await h.clock.advance(1000);
  const s2 = await accept(h);
  await settle();
  s2.reply(
    'collab_join',
    joinReply(0, { epoch: 'aaaaaaaaaaaaaaaa', sections: { a: { version: 2, data: 'a2' } }, recovered: false, publications: [] }),
  );
  assert.deepEqual(
    updates.map((e) => [e.section, e.version, e.data, e.source]),
    [
      ['b', 0, null, 'sync'],
      ['a', 2, 'a2', 'sync'],
    ],
  );
  assert.equal(joined[0]?.recovering, true);
  assert.equal(joined[0]?.recovered, false);
  assert.deepEqual([...story.sections.keys()], ['a']);
  assert.deepEqual(story.streamPosition, { epoch: 'aaaaaaaaaaaaaaaa', offset: 0 });
  h.client.disconnect();
});

test('story events that arrive before the join answer are not applied twice', async () => {
  const h = await connected();
  const story = h.client.story(CH);
  await settle();
  const updates = record<StoryUpdateEvent>((l) => story.on('update', l));
  const c = h.socket.unanswered('collab_join')[0];
  h.socket.receive(
    updateEvent(4, 's', 1, 'in the snapshot'),
    { id: c?.id, collab_join: joinReply(4, { sections: { s: { version: 1, data: 'in the snapshot' } } }) },
    updateEvent(5, 's', 2, 'after'),
  );
  assert.deepEqual(updates.map((e) => [e.version, e.source]), [[1, 'sync'], [2, 'live']]);
  h.client.disconnect();
});

test('locks come back after a reconnect within the grace and are renewed; lock and unlock while away go out after the re-join', async () => {
  const h = await connected();
  const story = h.client.story(CH);
  await settle();
  h.socket.reply('collab_join', joinReply(1));
  const exp = h.clock.now() + 30_000;
  for (const section of ['a', 'b']) {
    const p = story.lock(section);
    await settle();
    replyAfter(h.socket, 'lock', { section, holder: ME, expires: exp });
    await p;
  }
  h.socket.serverClose(1006);
  const later = story.lock('c'); // waits for the re-join
  await story.unlock('b'); // resolves at once while away
  await h.clock.advance(1000);
  const me2 = { user: 'ann', client: 'c.0.2' };
  const s2 = await accept(h, { ...me2, node: 'n', ping: 25, expires: false });
  await settle();
  const locks = record<StoryLockEvent>((l) => story.on('lock', l));
  s2.reply(
    'collab_join',
    joinReply(5, { sections: { a: { version: 0, data: null, holder: me2 }, b: { version: 0, data: null, holder: me2 } }, recovered: false }),
  );
  assert.deepEqual(locks.map((e) => [e.section, e.holder?.client, e.mine]), [['a', 'c.0.2', true], ['b', 'c.0.2', true]]);
  await settle();
  assert.deepEqual(s2.sent('unlock').map((c) => c.params.section), ['b']);
  await h.clock.advance(0);
  assert.deepEqual(
    s2.sent('lock').map((c) => c.params.section).sort(),
    ['a', 'c'],
    'c is asked for now; a is renewed at once to learn its expiry',
  );
  const c = s2.sent('lock').find((x) => x.params.section === 'c');
  s2.receive({ id: c?.id, lock: { section: 'c', holder: me2, expires: exp } });
  assert.deepEqual(await later, { section: 'c', holder: me2, expires: exp });
  h.client.disconnect();
});

test('viewers cannot update; setRole asks the server; leave sends collab_leave and rejects what waits', async () => {
  const h = await connected();
  const viewer = h.client.story(CH, { role: 'viewer' });
  await settle();
  assert.deepEqual(h.socket.sent('collab_join')[0]?.params, { channel: CH, role: 'viewer' });
  h.socket.reply('collab_join', joinReply(1, { role: 'viewer', viewers: 1, editors: [BOB] }));
  await assert.rejects(viewer.update('a', 1), NotEditorError);
  viewer.setRole('editor');
  await settle();
  assert.deepEqual(h.socket.sent('collab_join')[1]?.params, { channel: CH, role: 'editor', queue: true });
  h.socket.reply('collab_join', joinReply(3, { role: 'queued', position: 1, viewers: 0, editors: [BOB] }));
  assert.equal(viewer.role, 'queued');

  const waiting = assert.rejects(viewer.update('a', 1), DisconnectedError);
  const left = record<StoryLeftEvent>((l) => viewer.on('left', l));
  viewer.leave();
  await settle();
  assert.deepEqual(h.socket.sent('collab_leave')[0]?.params, { channel: CH });
  await waiting;
  assert.equal(viewer.state, 'left');
  assert.deepEqual(left, [{ channel: CH, reason: 'client' }]);
  assert.equal(h.client.getStory(CH), undefined);
  h.client.subscribe(CH).unsubscribe(); // the channel is free again
  h.client.disconnect();
});

test('a refused join ends the story; editors full without a queue is retried with backoff', async () => {
  const h = await connected({}, [0]);
  const story = h.client.story('chat:1');
  story.on('error', () => {});
  const left = record<StoryLeftEvent>((l) => story.on('left', l));
  const lock = assert.rejects(story.lock('a'), DisconnectedError);
  await settle();
  h.socket.replyError('collab_join', 122, false, 'not a collaborative channel');
  await lock;
  assert.equal(story.state, 'left');
  assert.equal(left[0]?.reason, 'error');
  assert.ok(left[0]?.error instanceof ServerError && left[0].error.code === 122);

  const full = h.client.story(CH, { queue: false });
  full.on('error', () => {});
  await settle();
  assert.deepEqual(h.socket.sent('collab_join')[1]?.params, { channel: CH, role: 'editor' });
  h.socket.replyError('collab_join', 117, true, 'editors full');
  assert.equal(full.state, 'joining');
  await h.clock.advance(500);
  assert.equal(h.socket.sent('collab_join').length, 3);
  h.socket.reply('collab_join', joinReply(1));
  assert.equal(full.state, 'joined');
  h.client.disconnect();
});

test('member events keep editors and the viewer count', async () => {
  const h = harness();
  const story = h.client.story(CH);
  h.client.connect();
  const s = await accept(h);
  await settle();
  s.reply('collab_join', joinReply(1, { viewers: 2 }));
  s.receive(
    pub(2, { 'story.user.join': { ...BOB, info: { name: 'Bob' }, role: 'editor' } }),
    pub(3, { 'story.user.join': { user: '', client: 'c.1.9', role: 'viewer' } }),
    pub(4, { 'story.user.leave': BOB }),
  );
  assert.deepEqual(story.editors, [ME]);
  assert.equal(story.viewers, 3);
  h.client.disconnect();
});
