/**
 * End-to-end story collaboration: `client.story()` against a real wsedge
 * process (`$WSEDGE_BIN`) with two or three clients. Skipped, loudly, when
 * the binary is not there.
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';

import {
  Client,
  ServerError,
  type ClientOptions,
  type Story,
  type StoryConflictEvent,
  type StoryJoinedEvent,
  type StoryLockEvent,
  type StoryRoleEvent,
  type StoryUpdateEvent,
  type WebSocketConstructor,
  type WebSocketLike,
} from '../../src/index.js';
import { EdgeServer, freePort, skipReason, waitFor, WSEDGE_BIN } from '../helpers/server.js';

const skip = skipReason();
if (skip) process.stderr.write(`\n!!! ${skip}\n\n`);
else process.stderr.write(`e2e (stories): using ${WSEDGE_BIN}\n`);

/** `story`: last-write-wins, two editors; `strict`: conflicts are refused (119). Both keep history for recovery. */
const CONFIG = `
[[namespace]]
name = "story"
collaboration = true
max_editors = 2
history_size = 1000
history_ttl = "10m"
recover = true
presence = true

[[namespace]]
name = "strict"
collaboration = true
conflict = "reject"
max_editors = 2
history_size = 1000
history_ttl = "10m"
recover = true
`;

const clients: Client[] = [];
const servers: EdgeServer[] = [];
after(async () => {
  for (const c of clients) c.disconnect();
  for (const s of servers) await s.stop();
});

async function start(): Promise<EdgeServer> {
  const s = await EdgeServer.start(CONFIG);
  servers.push(s);
  return s;
}

function client(url: string, user: string, options: ClientOptions = {}): Client {
  const c = new Client(url, { user, minReconnectDelay: 100, maxReconnectDelay: 1000, ...options });
  c.on('error', () => {}); // asserted where it matters
  clients.push(c);
  c.connect();
  return c;
}

function collect<T>(story: Story, event: 'update' | 'lock' | 'conflict' | 'role' | 'joined'): T[] {
  const out: T[] = [];
  story.on(event, (e: unknown) => out.push(e as T));
  return out;
}

/**
 * A WebSocket whose link the test can break at a chosen moment: after the
 * client sends a frame matching `swallowAfter`, nothing the server sends
 * reaches the client any more (the server still gets and runs the
 * command: its answer is lost on the way back); `cut()` then ends the
 * socket as a dead network would (1006). While `open` is false new
 * sockets go to a port nobody listens on.
 */
function breakableWebSocket(deadPort: number) {
  const Real = globalThis.WebSocket as unknown as WebSocketConstructor;
  const ctl = {
    open: true,
    swallowAfter: undefined as RegExp | undefined,
    current: undefined as Breakable | undefined,
    ctor: undefined as unknown as WebSocketConstructor,
    /** Ends the current socket as a lost network would. */
    cut(): void {
      ctl.current?.cut();
    },
  };
  class Breakable implements WebSocketLike {
    onopen: ((ev: unknown) => void) | null = null;
    onmessage: ((ev: { data: unknown }) => void) | null = null;
    onclose: ((ev: { code: number; reason: string }) => void) | null = null;
    onerror: ((ev: unknown) => void) | null = null;
    private readonly real: WebSocketLike;
    private swallowing = false;
    private ended = false;

    constructor(url: string, protocols?: string | string[]) {
      this.real = new Real(ctl.open ? url : url.replace(/127\.0\.0\.1:\d+/, `127.0.0.1:${deadPort}`), protocols);
      this.real.onopen = (ev) => this.onopen?.(ev);
      this.real.onmessage = (ev) => {
        if (!this.swallowing) this.onmessage?.(ev);
      };
      this.real.onclose = (ev) => {
        if (!this.ended) this.onclose?.(ev);
      };
      this.real.onerror = (ev) => {
        if (!this.ended) this.onerror?.(ev);
      };
      ctl.current = this;
    }

    get readyState(): number {
      return this.ended ? 3 : this.real.readyState;
    }

    get protocol(): string {
      return this.real.protocol;
    }

    send(data: string): void {
      this.real.send(data);
      if (ctl.swallowAfter?.test(data)) {
        ctl.swallowAfter = undefined;
        this.swallowing = true;
      }
    }

    close(code?: number, reason?: string): void {
      this.ended = true;
      this.real.close(code, reason);
    }

    cut(): void {
      if (this.ended) return;
      this.ended = true;
      this.real.close();
      this.onclose?.({ code: 1006, reason: 'link cut by the test' });
    }
  }
  ctl.ctor = Breakable as unknown as WebSocketConstructor;
  return ctl;
}

test('queue and promotion: the third editor waits in line and takes the slot an editor leaves', { skip }, async () => {
  const server = await start();
  const ann = client(server.url, 'ann');
  const bob = client(server.url, 'bob');
  const cy = client(server.url, 'cy');
  const ch = 'story:queue';
  const a = ann.story(ch);
  await waitFor('ann joined', () => a.state === 'joined');
  const b = bob.story(ch);
  await waitFor('bob joined', () => b.state === 'joined');
  const c = cy.story(ch);
  const cRoles = collect<StoryRoleEvent>(c, 'role');
  let promoted = 0;
  c.on('promoted', () => promoted++);
  await waitFor('cy joined', () => c.state === 'joined');
  assert.deepEqual([a.role, b.role, c.role], ['editor', 'editor', 'queued']);
  assert.equal(c.position, 1);
  assert.deepEqual(c.editors.map((e) => e.user), ['ann', 'bob']);
  assert.deepEqual(
    a.editors.map((e) => e.user),
    ['ann', 'bob'],
    'ann saw bob join as an editor',
  );

  // cy writes while in line: the update waits for the editor slot.
  const bUpdates = collect<StoryUpdateEvent>(b, 'update');
  const pending = c.update('intro', { text: 'from the line' });
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(c.pendingUpdates, 1);
  assert.equal(bUpdates.length, 0, 'nothing was sent while queued');

  a.leave();
  await waitFor('cy promoted', () => c.role === 'editor');
  assert.equal(promoted, 1);
  assert.deepEqual(
    cRoles.map((e) => [e.role, e.previous]),
    [
      ['queued', undefined],
      ['editor', 'queued'],
    ],
  );
  assert.equal(c.position, undefined);
  const r = await pending;
  assert.deepEqual([r.version, r.duplicate], [1, false]);
  await waitFor('bob saw the update', () => bUpdates.length === 1);
  assert.deepEqual(
    bUpdates.map((e) => [e.section, e.version, e.data, e.by?.user, e.source]),
    [['intro', 1, { text: 'from the line' }, 'cy', 'live']],
  );
  await waitFor('bob saw the editors change', () => b.editors.map((e) => e.user).join() === 'bob,cy');
  assert.equal(ann.getStory(ch), undefined);
});

test('lock contention: one holder at a time, refusals name the holder, everyone sees who holds what', { skip }, async () => {
  const server = await start();
  const ann = client(server.url, 'ann');
  const bob = client(server.url, 'bob');
  const ch = 'story:locks';
  const a = ann.story(ch);
  const b = bob.story(ch);
  await waitFor('both joined', () => a.state === 'joined' && b.state === 'joined');
  const aLocks = collect<StoryLockEvent>(a, 'lock');
  const bLocks = collect<StoryLockEvent>(b, 'lock');

  // Both ask at once: the story's home picks one.
  const [ra, rb] = await Promise.allSettled([a.lock('intro', { ttl: 30 }), b.lock('intro', { ttl: 30 })]);
  const winner = ra.status === 'fulfilled' ? a : b;
  const loser = winner === a ? b : a;
  const [won, lost] = ra.status === 'fulfilled' ? [ra, rb] : [rb, ra];
  assert.equal(won.status, 'fulfilled');
  assert.equal(lost.status, 'rejected');
  const refusal = (lost as PromiseRejectedResult).reason as unknown;
  const winnerUser = winner === a ? 'ann' : 'bob';
  assert.ok(refusal instanceof ServerError && refusal.code === 118, String(refusal));
  assert.equal((refusal.body.holder as { user: string }).user, winnerUser);
  await waitFor('both saw the lock', () => aLocks.length === 1 && bLocks.length === 1);
  assert.equal(winner.holdsLock('intro'), true);
  assert.equal(loser.holdsLock('intro'), false);
  assert.equal(loser.section('intro')?.holder?.user, winnerUser);
  assert.deepEqual(
    [aLocks[0]?.mine, bLocks[0]?.mine],
    [winner === a, winner === b],
  );

  // The loser cannot write the locked section either.
  await assert.rejects(loser.update('intro', 'sneaky'), (e: unknown) => e instanceof ServerError && e.code === 118);
  assert.equal((await winner.update('intro', 'by the holder')).version, 1);

  // Released: the other takes it, and both see the hand-over.
  await winner.unlock('intro');
  await waitFor('both saw the release', () => aLocks.length === 2 && bLocks.length === 2);
  assert.equal(loser.section('intro')?.holder, null);
  const taken = await loser.lock('intro');
  assert.equal(taken.holder.user, winnerUser === 'ann' ? 'bob' : 'ann');
  await waitFor('both saw the new holder', () => aLocks.length === 3 && bLocks.length === 3);
  assert.deepEqual(
    aLocks.map((e) => e.holder?.user ?? null),
    [winnerUser, null, taken.holder.user],
  );
  assert.equal(winner.section('intro')?.version, 1, 'the section keeps its version through lock changes');
});

test('concurrent updates under "reject": the loser gets a conflict with the winner\'s text, rebases and lands next', { skip }, async () => {
  const server = await start();
  const ann = client(server.url, 'ann');
  const bob = client(server.url, 'bob');
  const ch = 'strict:conflict';
  const a = ann.story(ch);
  const b = bob.story(ch);
  await waitFor('both joined', () => a.state === 'joined' && b.state === 'joined');
  assert.equal((await a.update('p3', 'v1')).version, 1);
  await waitFor('bob has version 1', () => b.version('p3') === 1);

  // Both edit version 1 at the same moment.
  const conflicts: StoryConflictEvent[] = [];
  const rebased: Array<Promise<unknown>> = [];
  for (const s of [a, b]) {
    s.on('conflict', (e) => {
      conflicts.push(e);
      if (e.kind !== 'rejected') return;
      // The loser merges its text into the winner's and tries again on the winner's version.
      rebased.push(s.update(e.section, `${String(e.data)} + ${String(e.attempted)}`, { baseVersion: e.version }));
    });
  }
  const results = await Promise.allSettled([a.update('p3', 'ann edit'), b.update('p3', 'bob edit')]);
  const ok = results.filter((r) => r.status === 'fulfilled');
  const failed = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
  assert.equal(ok.length, 1);
  assert.equal(failed.length, 1);
  assert.ok(failed[0]?.reason instanceof ServerError && failed[0].reason.code === 119);
  assert.equal(conflicts.length, 1);
  const c = conflicts[0];
  assert.ok(c?.kind === 'rejected');
  const winnerText = results[0]?.status === 'fulfilled' ? 'ann edit' : 'bob edit';
  const loserText = winnerText === 'ann edit' ? 'bob edit' : 'ann edit';
  assert.deepEqual([c.version, c.data, c.attempted, c.baseVersion], [2, winnerText, loserText, 1]);
  await Promise.all(rebased);
  const merged = `${winnerText} + ${loserText}`;
  await waitFor('both at version 3', () => a.version('p3') === 3 && b.version('p3') === 3);
  assert.equal(a.section('p3')?.data, merged);
  assert.equal(b.section('p3')?.data, merged);
});

test('under "lww" the overwritten writer is told what it lost', { skip }, async () => {
  const server = await start();
  const ann = client(server.url, 'ann');
  const bob = client(server.url, 'bob');
  const ch = 'story:lww';
  const a = ann.story(ch);
  const b = bob.story(ch);
  await waitFor('both joined', () => a.state === 'joined' && b.state === 'joined');
  const aConflicts = collect<StoryConflictEvent>(a, 'conflict');
  assert.equal((await a.update('p3', 'A', { baseVersion: 0 })).version, 1);
  assert.equal((await b.update('p3', 'B', { baseVersion: 0 })).version, 2, 'a stale base is accepted under lww');
  await waitFor('ann alerted', () => aConflicts.length === 1);
  assert.deepEqual(aConflicts[0], {
    kind: 'overwritten',
    channel: ch,
    section: 'p3',
    version: 2,
    overwritten: 'A',
    by: { user: 'bob', client: bob.connection?.client },
  });
  await waitFor('ann has B', () => a.section('p3')?.data === 'B');
});

test('a reconnect resends an update whose answer was lost: applied exactly once; missed events are replayed; the lock comes back', { skip }, async () => {
  const server = await start();
  const link = breakableWebSocket(await freePort());
  const ann = client(server.url, 'ann', { WebSocket: link.ctor });
  const bob = client(server.url, 'bob');
  const ch = 'story:resend';
  const a = ann.story(ch);
  const b = bob.story(ch);
  await waitFor('both joined', () => a.state === 'joined' && b.state === 'joined');
  const firstClient = ann.connection?.client;
  await a.lock('intro', { ttl: 60 });
  assert.equal((await a.update('intro', 'one')).version, 1);
  await waitFor('bob has version 1', () => b.version('intro') === 1);
  const aUpdates = collect<StoryUpdateEvent>(a, 'update');
  const aJoined = collect<StoryJoinedEvent>(a, 'joined');
  const bUpdates = collect<StoryUpdateEvent>(b, 'update');

  // ann's update reaches the server, its answer does not reach ann.
  link.swallowAfter = /"update"/;
  const pending = a.update('intro', 'two');
  await waitFor('bob saw version 2', () => bUpdates.some((e) => e.version === 2));
  assert.equal(a.pendingUpdates, 1, 'ann has no answer');
  link.open = false;
  link.cut();
  await waitFor('ann reconnecting', () => a.state === 'joining');

  // While ann is away bob writes another section.
  assert.equal((await b.update('outro', 'bye')).version, 1);
  link.open = true;

  const r = await pending;
  assert.deepEqual([r.version, r.duplicate, r.section], [2, true, 'intro']);
  assert.equal(aJoined.length, 1);
  assert.deepEqual([aJoined[0]?.recovering, aJoined[0]?.recovered], [true, true]);
  assert.notEqual(ann.connection?.client, firstClient);
  assert.deepEqual(
    aUpdates.map((e) => [e.section, e.version, e.data, e.source, e.mine]),
    [
      ['intro', 2, 'two', 'replay', true],
      ['outro', 1, 'bye', 'replay', false],
    ],
  );
  assert.equal(a.version('intro'), 2);
  // The same user re-joined within lock_grace: the lock is this connection's again, and renewable.
  assert.equal(a.holdsLock('intro'), true);
  assert.equal((await a.update('intro', 'three')).version, 3);

  // Exactly once: the story's history holds one update per version, and bob saw each once.
  const hist = await bob.history(ch, { limit: 100 });
  const introVersions = hist.publications
    .map((p) => (p.data as { update?: { section: string; version: number } }).update)
    .filter((u) => u?.section === 'intro')
    .map((u) => u?.version);
  assert.deepEqual(introVersions, [1, 2, 3]);
  await waitFor('bob saw version 3', () => b.version('intro') === 3);
  assert.deepEqual(
    bUpdates.filter((e) => e.section === 'intro').map((e) => [e.version, e.data]),
    [
      [2, 'two'],
      [3, 'three'],
    ],
  );
});
