/**
 * Story collaboration (docs/COLLABORATION.md): a {@link Story} joins a
 * channel of a `collaboration = true` namespace as an editor or a viewer
 * (waiting in line when the editors are full), keeps every section's
 * version, data and lock holder current from the story's events, takes and
 * renews section locks, and sends versioned updates that survive
 * reconnects without being applied twice.
 */
import { backoffDelay } from './backoff.js';
import { Emitter } from './emitter.js';
import { DisconnectedError, ServerError, TimeoutError } from './errors.js';
import { ErrorCode, type ClientInfo, type ConnectResult, type StreamPosition, type WirePublication } from './protocol.js';
import type { CommandCallbacks, SubscriptionHost } from './subscription.js';
import type { TimerHandle } from './timers.js';

/** A member's role in a story: `queued` waits in line for an editor slot (and reads like a viewer). */
export type StoryRole = 'editor' | 'viewer' | 'queued';

/**
 * The states of a {@link Story}: `joining` until the server answers
 * `collab_join` (and again while reconnecting), `joined`, and `left` after
 * `leave()`, a refusal or the server ending it.
 */
export type StoryState = 'joining' | 'joined' | 'left';

/** Who holds a lock, or wrote a version. */
export interface Holder {
  user: string;
  client: string;
}

/** One section as the story knows it. Objects are replaced, never changed, when the section changes. */
export interface SectionState {
  /** The section id. */
  readonly id: string;
  /** Its version: +1 per accepted update; 0 while locked but never written. */
  readonly version: number;
  /** Its data (any JSON); `null` when never written. */
  readonly data: unknown;
  /** Who holds its lock, or `null`. */
  readonly holder: Holder | null;
  /** When the lock lapses unless renewed (Unix ms), when known. */
  readonly expires?: number;
  /** Who wrote the current version, when an event or this client's own update said so. */
  readonly by?: ClientInfo;
}

/** Options of `client.story()`. */
export interface StoryOptions {
  /** Join as an editor (default) or a viewer; `setRole()` changes it later. */
  role?: 'editor' | 'viewer';
  /**
   * When the editor slots are full, wait in line (`role: 'queued'`, with a
   * `position`) and become an editor when a slot frees (default true).
   * With `false`, the join is refused with error 117 (temporary) and
   * retried with backoff: join as a viewer meanwhile if the user should
   * see the story.
   */
  queue?: boolean;
  /**
   * After a reconnect, re-join with `recover` and the last position seen,
   * so the story events missed come back in order (default true; needs a
   * namespace with history and `recover = true`).
   */
  recover?: boolean;
  /** How many times an update answered with a temporary error (100, 112, 113, 114) is resent, with its `op_id` (default 5). */
  updateRetries?: number;
  /**
   * How long an update event may wait for the versions before it (a gap
   * in a section's versions) before the story asks the server for a fresh
   * snapshot (default 5000 ms).
   */
  gapTimeout?: number;
}

/** Options of `story.update()`. */
export interface StoryUpdateOptions {
  /**
   * The version the change was made on. Default: the version the section
   * has when the update is sent, i.e. after this story's earlier updates of
   * the section (they are sent one at a time, in order).
   */
  baseVersion?: number;
  /** The `op_id` (1–64 bytes, unique per user and story). Default: a random UUID. */
  opId?: string;
}

/** What `story.update()` resolves with. */
export interface StoryUpdateResult {
  section: string;
  /** The version the update got (the original one when `duplicate`). */
  version: number;
  /** The server had applied this `op_id` already (a resend after a lost answer): nothing was applied again. */
  duplicate: boolean;
  /** The `op_id` it was sent with. */
  opId: string;
}

/** Options of `story.lock()`. */
export interface StoryLockOptions {
  /** Lock for this many seconds (server default `lock_ttl`, 30 s; at most `lock_ttl_max`, 5 min). */
  ttl?: number;
  /** Renew the lock before it lapses, until `unlock()` or until it is lost (default true). */
  renew?: boolean;
}

/** What `story.lock()` resolves with. */
export interface StoryLockResult {
  section: string;
  holder: Holder;
  /** When it lapses unless renewed (Unix ms, the server's clock). */
  expires: number;
}

/** Payload of `joined`: the server answered a (re)join; `sections` and `editors` are current. */
export interface StoryJoinedEvent {
  channel: string;
  role: StoryRole;
  /** The place in line (1 = next), when queued. */
  position?: number;
  /** How many members wait in line for an editor slot (absent from an older server). */
  queued?: number;
  /** The story channel's position the snapshot was taken at. */
  epoch: string;
  offset: number;
  /** This join asked to recover (a re-join after a reconnect with a position). */
  recovering: boolean;
  /** Every story event missed was replayed (as `update`, `lock` and `member` events before this one). */
  recovered: boolean;
  /** How many events were replayed. */
  replayed: number;
}

/** Payload of `role`: this member's role changed (promoted from the line, `setRole()`, or a re-join). */
export interface StoryRoleEvent {
  channel: string;
  role: StoryRole;
  /** The role before, if any. */
  previous: StoryRole | undefined;
  position?: number;
}

/** Where an `update` event's version came from. */
export type StoryUpdateSource =
  /** an `update` story event as it happened */
  | 'live'
  /** an `update` story event missed while disconnected, replayed by a recovering join */
  | 'replay'
  /** the answer to this story's own update, ahead of its event */
  | 'reply'
  /** a snapshot (join, gap repair) or a 119 answer: the state, without the event that made it */
  | 'sync';

/** Payload of `update`: a section got a new version (applied to `sections` already). */
export interface StoryUpdateEvent {
  channel: string;
  section: string;
  version: number;
  data: unknown;
  /** Who wrote it, when known. */
  by?: ClientInfo;
  source: StoryUpdateSource;
  /** Written by this story (this connection or an earlier one of it). */
  mine: boolean;
}

/** Payload of `lock`: a section's lock holder changed (renewals are silent). */
export interface StoryLockEvent {
  channel: string;
  section: string;
  /** The new holder, or `null` when released (or lapsed). */
  holder: Holder | null;
  previous: Holder | null;
  expires?: number;
  /** This connection holds it now. */
  mine: boolean;
}

/**
 * Payload of `conflict`. `overwritten` (namespaces with `conflict = "lww"`):
 * someone else's update replaced a version this story wrote before they had
 * seen it; `overwritten` is the data lost, to offer back. `rejected`
 * (`conflict = "reject"`, or a base ahead of the section): this story's
 * update was refused with error 119; `version` and `data` are the section's
 * current state (already applied to `sections`): rebase `attempted` on it
 * and call `update()` again.
 */
export type StoryConflictEvent =
  | { kind: 'overwritten'; channel: string; section: string; version: number; overwritten: unknown; by: ClientInfo }
  | {
      kind: 'rejected';
      channel: string;
      section: string;
      version: number;
      data: unknown;
      attempted: unknown;
      baseVersion: number;
      opId: string;
      error: ServerError;
    };

/** Payload of `member`: a `story.user.join` or `story.user.leave` event. */
export interface StoryMemberEvent {
  channel: string;
  kind: 'join' | 'leave';
  user: string;
  client: string;
  info?: unknown;
  /** The role joined with (joins only). */
  role?: StoryRole;
}

/** Payload of `left`. */
export interface StoryLeftEvent {
  channel: string;
  /** `client`: `leave()`; `server`: the server unsubscribed the connection; `error`: the join was refused. */
  reason: 'client' | 'server' | 'error';
  error?: Error;
}

/** Events of a {@link Story}. */
export interface StoryEvents {
  state: { oldState: StoryState; newState: StoryState };
  joined: StoryJoinedEvent;
  role: StoryRoleEvent;
  /** A queued member became an editor. */
  promoted: { channel: string };
  /** The place in line changed (the server's `queue` push, or a re-join's answer). */
  position: { channel: string; position: number };
  update: StoryUpdateEvent;
  lock: StoryLockEvent;
  conflict: StoryConflictEvent;
  member: StoryMemberEvent;
  left: StoryLeftEvent;
  /** A temporary join refusal being retried, a lock renewal that failed, … */
  error: { channel: string; error: Error };
}

/** `update()` on a story that is not (or no longer) meant to edit: joined as a viewer. */
export class NotEditorError extends Error {
  override readonly name = 'NotEditorError';
  constructor(message = 'the story was joined as a viewer') {
    super(message);
  }
}

/** What a story needs from its client. Internal: applications use `client.story()`. */
export interface StoryHost
  extends Pick<SubscriptionHost, 'clock' | 'random' | 'minDelay' | 'maxDelay' | 'isConnected' | 'connectionId' | 'command'> {
  /** The current `connect` reply, while connected. */
  connection(): ConnectResult | undefined;
  /** The story wants to be (re)registered under its channel; false if the channel is taken. */
  attach(story: Story): boolean;
  /** The story ended: the client forgets it. */
  release(story: Story): void;
}

// ---- the wire (docs/PROTOCOL.md, story collaboration) ----

interface WireSection {
  version: number;
  data: unknown;
  holder?: Holder;
}

interface WireJoinResult {
  role: StoryRole;
  position?: number;
  editors?: ClientInfo[];
  viewers?: number;
  queued?: number;
  sections?: Record<string, WireSection>;
  epoch: string;
  offset: number;
  recovered?: boolean;
  publications?: WirePublication[];
}

interface WireUpdateEvent {
  section: string;
  version: number;
  data: unknown;
  by?: ClientInfo;
}

/** Error codes an update is resent after, with its op_id. */
const TEMPORARY = new Set<number>([ErrorCode.internal, ErrorCode.overloaded, ErrorCode.shuttingDown, ErrorCode.tooManyRequests]);

interface PendingUpdate {
  readonly section: string;
  readonly data: unknown;
  readonly opId: string;
  /** Fixed at the first send (or given): a resend carries the same one. */
  base: number | undefined;
  readonly explicitBase: boolean;
  inFlight: boolean;
  retries: number;
  retryTimer: TimerHandle | undefined;
  resolve(r: StoryUpdateResult): void;
  reject(e: Error): void;
}

interface WantedLock {
  ttl: number | undefined;
  timer: TimerHandle | undefined;
  attempts: number;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function holderOf(v: unknown): Holder | null {
  return isObject(v) && typeof v.user === 'string' && typeof v.client === 'string' ? { user: v.user, client: v.client } : null;
}

function sameHolder(a: Holder | null, b: Holder | null): boolean {
  return a === b || (a !== null && b !== null && a.user === b.user && a.client === b.client);
}

function sameJson(a: unknown, b: unknown): boolean {
  return a === b || JSON.stringify(a) === JSON.stringify(b);
}

/**
 * A live story session on one channel (see docs/COLLABORATION.md). Made by
 * `client.story(channel, options)`; joins whenever the client is
 * connected and re-joins, recovering, after every reconnect.
 *
 * ```ts
 * const story = client.story('story:42', { role: 'editor' });
 * story.on('update', (e) => render(e.section, e.data));
 * story.on('conflict', (e) => { if (e.kind === 'rejected') story.update(e.section, rebase(e.attempted, e.data)); });
 * await story.lock('intro');
 * await story.update('intro', { text: 'Once upon a time' });
 * ```
 *
 * The story's state (`sections`, `editors`, `role`) changes only with an
 * event announcing it: `update` for a section's version and data, `lock`
 * for its holder, `role` / `position` for this member, `member` for others.
 */
export class Story extends Emitter<StoryEvents> {
  /** The story's channel. */
  readonly channel: string;
  private readonly opts: StoryOptions;
  private readonly updateRetries: number;
  private readonly gapTimeout: number;
  private desired: 'editor' | 'viewer';

  private _state: StoryState = 'joining';
  private _role: StoryRole | undefined;
  private _position: number | undefined;
  private _editors: ClientInfo[] = [];
  private _viewers = 0;
  private readonly roles = new Map<string, StoryRole>();
  private readonly _sections = new Map<string, SectionState>();
  private pos: StreamPosition | undefined;
  /** Client ids this story has had: their versions and locks are its own. */
  private readonly ownClients = new Set<string>();

  /** Bumped at every loss of the connection and at `leave()`: answers for an older one are ignored. */
  private session = 0;
  private joinSentOn = -1;
  private joinAttempts = 0;
  private joinRetryTimer: TimerHandle | undefined;
  /** Pushes that came while a (re)join was unanswered: handled after its answer. */
  private early: Array<[string, unknown]> = [];

  private readonly queues = new Map<string, PendingUpdate[]>();
  /** Update events ahead of a gap in their section's versions, by section and version. */
  private readonly held = new Map<string, Map<number, WireUpdateEvent>>();
  private gapTimer: TimerHandle | undefined;
  private readonly wanted = new Map<string, WantedLock>();
  /** Sections `unlock()`ed while not joined: released if this story holds them after the re-join. */
  private readonly unlockOnJoin = new Set<string>();

  /** Internal: use `client.story()`. */
  constructor(
    private readonly host: StoryHost,
    channel: string,
    options: StoryOptions = {},
  ) {
    super();
    this.channel = channel;
    this.opts = options;
    this.desired = options.role ?? 'editor';
    this.updateRetries = options.updateRetries ?? 5;
    this.gapTimeout = options.gapTimeout ?? 5000;
  }

  // ---------------------------------------------------------------- state

  /** The current state. */
  get state(): StoryState {
    return this._state;
  }

  /** This member's role, as the server last said (undefined before the first join answer). */
  get role(): StoryRole | undefined {
    return this._role;
  }

  /** The place in line while queued (1 = next), else undefined. */
  get position(): number | undefined {
    return this._position;
  }

  /** The editors, in the order they got their slots. */
  get editors(): readonly ClientInfo[] {
    return this._editors;
  }

  /**
   * How many viewers the story has: exact in every join answer, then kept
   * up from viewers' join and leave events (which the server stops sending
   * above `join_leave_max_subscribers` members).
   */
  get viewers(): number {
    return this._viewers;
  }

  /** Every section known (written, or locked), by id. */
  get sections(): ReadonlyMap<string, SectionState> {
    return this._sections;
  }

  /** One section, if known. */
  section(id: string): SectionState | undefined {
    return this._sections.get(id);
  }

  /** The version of a section this story has seen (0 when never written). */
  version(id: string): number {
    return this._sections.get(id)?.version ?? 0;
  }

  /** Whether this connection holds the section's lock. */
  holdsLock(id: string): boolean {
    return this.isMe(this._sections.get(id)?.holder ?? null);
  }

  /** The last story channel position seen (what a re-join recovers from). */
  get streamPosition(): StreamPosition | undefined {
    return this.pos ? { ...this.pos } : undefined;
  }

  /** Updates not answered yet (waiting, in flight, or waiting to be resent). */
  get pendingUpdates(): number {
    let n = 0;
    for (const q of this.queues.values()) n += q.length;
    return n;
  }

  // ---------------------------------------------------------------- commands

  /**
   * Replaces a section's data. The update carries the version it was made
   * on (see {@link StoryUpdateOptions.baseVersion}) and an `op_id`; it
   * waits while the story is not joined as an editor (reconnecting, in
   * line), and an update whose answer was lost (connection lost, timeout)
   * or refused for a while (100, 112, 113, 114) is sent again with the same
   * `op_id`, so the server applies it once (`duplicate: true`). Updates of
   * one section go one at a time, in order.
   *
   * Rejects with the {@link ServerError} that refused it: 119 (a
   * `rejected` `conflict` event says what to rebase on; the section's later
   * updates that relied on this one's base are rejected with it), 118
   * (locked by someone else: `error.body.holder`), 121, 107, …; with
   * {@link NotEditorError} when the story is (or becomes) a viewer's; with
   * {@link DisconnectedError} after `leave()`.
   *
   * Deduplication is per user: a connection without a user id (anonymous)
   * loses it across a reconnect.
   */
  update(section: string, data: unknown, options: StoryUpdateOptions = {}): Promise<StoryUpdateResult> {
    if (this._state === 'left') return Promise.reject(new DisconnectedError('the story was left'));
    if (this.desired === 'viewer') return Promise.reject(new NotEditorError());
    if (data === undefined) return Promise.reject(new TypeError('update data must be a JSON value, not undefined'));
    return new Promise<StoryUpdateResult>((resolve, reject) => {
      const u: PendingUpdate = {
        section,
        data,
        opId: options.opId ?? this.host.random.uuid(),
        base: options.baseVersion,
        explicitBase: options.baseVersion !== undefined,
        inFlight: false,
        retries: 0,
        retryTimer: undefined,
        resolve,
        reject,
      };
      let q = this.queues.get(section);
      if (!q) {
        q = [];
        this.queues.set(section, q);
      }
      q.push(u);
      this.flush();
    });
  }

  /** Resolves once the story is joined (at once when it is); rejects with {@link DisconnectedError} if it is left first. */
  ready(): Promise<void> {
    if (this._state === 'joined') return Promise.resolve();
    if (this._state === 'left') return Promise.reject(new DisconnectedError('the story was left'));
    return new Promise<void>((resolve, reject) => {
      const offJoined = this.once('joined', () => {
        offLeft();
        resolve();
      });
      const offLeft = this.once('left', () => {
        offJoined();
        reject(new DisconnectedError('the story was left'));
      });
    });
  }

  /**
   * Locks a section (several may be held), once the story is joined.
   * Resolves when the server granted it; a `lock` event tells everyone,
   * this member included. Unless `renew: false`, the lock is renewed before
   * it lapses until `unlock()`, and taken back after a reconnect within the
   * server's `lock_grace` (same user). Rejects with {@link ServerError} 118
   * when someone else holds it (`error.body.holder`), 120 when not an
   * editor (a viewer, or still in line), or with {@link DisconnectedError}
   * when the connection is lost before the answer or the story is left.
   */
  async lock(section: string, options: StoryLockOptions = {}): Promise<StoryLockResult> {
    await this.ready();
    this.unlockOnJoin.delete(section);
    return new Promise<StoryLockResult>((resolve, reject) => {
      this.sendLock(section, options.ttl, {
        ok: (r) => {
          if (options.renew !== false) this.want(section, options.ttl, r.expires);
          resolve(r);
        },
        fail: reject,
      });
    });
  }

  /**
   * Releases a section's lock and stops renewing it. While the story is not
   * joined (reconnecting), resolves at once and releases the lock after
   * the re-join if the server gave it back. Rejects with 118 when someone
   * else holds it.
   */
  unlock(section: string): Promise<void> {
    this.unwant(section);
    if (this._state === 'left') return Promise.resolve();
    if (this._state !== 'joined') {
      this.unlockOnJoin.add(section);
      return Promise.resolve();
    }
    return new Promise<void>((resolve, reject) => {
      this.host.command<unknown>('unlock', { channel: this.channel, section }, { ok: () => resolve(), fail: reject });
    });
  }

  /**
   * Changes the role this story asks for: `viewer` gives the editor slot
   * up (the server releases its locks; waiting updates reject with
   * {@link NotEditorError}); `editor` asks for a slot (or a place in line
   * with `queue`). Takes effect at once when joined, else at the next join.
   */
  setRole(role: 'editor' | 'viewer'): void {
    if (this._state === 'left' || role === this.desired) return;
    this.desired = role;
    if (role === 'viewer') this.rejectWaiting(() => new NotEditorError('the story became a viewer\'s'));
    if (this._state === 'joined') this.refresh();
  }

  /**
   * Sets this connection's presence state in the story (e.g.
   * `editing:<section>`, `viewing`, `typing`; `""` clears it) for `ttl`
   * seconds, in namespaces with `presence`, once the story is joined.
   */
  async setPresenceState(state: string, ttl?: number): Promise<void> {
    await this.ready();
    const params: Record<string, unknown> = { channel: this.channel, state };
    if (ttl !== undefined) params.ttl = ttl;
    return new Promise<void>((resolve, reject) => {
      this.host.command<unknown>('presence_state', params, { ok: () => resolve(), fail: reject });
    });
  }

  /**
   * Leaves the story (`collab_leave`: the server releases this member's
   * locks at once and promotes the first in line). Updates not answered
   * yet reject with {@link DisconnectedError}.
   */
  leave(): void {
    if (this._state === 'left') return;
    const sent = this.joinSentOn === this.host.connectionId() && this.joinSentOn >= 0;
    if (sent && this.host.isConnected()) {
      this.host.command<unknown>('collab_leave', { channel: this.channel }, { ok: () => {}, fail: () => {} });
    }
    this.end({ channel: this.channel, reason: 'client' });
  }

  /**
   * Joins again after the story was left (a new story starts joining at
   * once). Throws if the client has another story or a subscription on the
   * channel now.
   */
  join(): void {
    if (this._state !== 'left') return;
    if (!this.host.attach(this)) throw new Error(`the client already has ${this.channel}`);
    this.start();
  }

  // ---------------------------------------------------------------- driven by the client

  /** @internal Registered: join now if connected, else when connected. */
  start(): void {
    this.joinAttempts = 0;
    this.setState('joining');
    if (this.host.isConnected()) this.sendJoin();
  }

  /** @internal The client is connected (again). */
  connected(): void {
    if (this._state === 'left' || this.joinSentOn === this.host.connectionId()) return;
    this.joinAttempts = 0;
    this.sendJoin();
  }

  /** @internal The connection ended: wait for the next one and re-join. */
  disconnected(): void {
    this.session++;
    this.joinSentOn = -1;
    this.early = [];
    this.clearTimers();
    for (const q of this.queues.values()) for (const u of q) u.inFlight = false;
    if (this._state === 'joined') this.setState('joining');
  }

  /** @internal A push for this channel. */
  push(type: string, body: unknown): void {
    if (this._state === 'left') return;
    if (this._state === 'joining') {
      this.early.push([type, body]);
      return;
    }
    const b = isObject(body) ? body : {};
    switch (type) {
      case 'pub':
        this.onPublication(b as unknown as WirePublication, false);
        return;
      case 'promoted':
        this.setRoleFromServer('editor', undefined);
        return;
      case 'queue':
        // A new place in line; one for a line this member has left since is stale.
        if (this._role === 'queued' && typeof b.position === 'number') this.setRoleFromServer('queued', b.position);
        return;
      case 'conflict':
        this.emit('conflict', {
          kind: 'overwritten',
          channel: this.channel,
          section: String(b.section),
          version: Number(b.version),
          overwritten: b.overwritten,
          by: b.by as ClientInfo,
        });
        return;
      case 'unsubscribe':
        this.end({ channel: this.channel, reason: 'server' });
        return;
      default:
        return; // presence pushes, or a push type from a newer server
    }
  }

  // ---------------------------------------------------------------- joining

  private joinParams(recovering: boolean): Record<string, unknown> {
    const params: Record<string, unknown> = { channel: this.channel, role: this.desired };
    if (this.desired === 'editor' && this.opts.queue !== false) params.queue = true;
    if (recovering && this.pos) {
      params.recover = true;
      params.epoch = this.pos.epoch;
      params.offset = this.pos.offset;
    }
    return params;
  }

  private sendJoin(): void {
    this.clearJoinRetry();
    this.early = [];
    const session = this.session;
    const recovering = this.opts.recover !== false && this.pos !== undefined;
    this.joinSentOn = this.host.connectionId();
    this.host.command<WireJoinResult>('collab_join', this.joinParams(recovering), {
      ok: (res) => {
        if (session !== this.session || this._state !== 'joining') return;
        this.onJoined(res, recovering);
      },
      fail: (err) => {
        if (session !== this.session || this._state !== 'joining') return;
        this.joinSentOn = -1;
        this.onJoinError(err);
      },
    });
  }

  private onJoinError(err: Error): void {
    if (err instanceof DisconnectedError || err instanceof TimeoutError) return; // the client reconnects
    if (err instanceof ServerError && err.temporary) {
      this.emit('error', { channel: this.channel, error: err });
      const delay = backoffDelay(this.joinAttempts++, this.host.minDelay, this.host.maxDelay, this.host.random.random());
      this.joinRetryTimer = this.host.clock.setTimeout(() => {
        this.joinRetryTimer = undefined;
        if (this._state === 'joining' && this.host.isConnected()) this.sendJoin();
      }, delay);
      return;
    }
    this.emit('error', { channel: this.channel, error: err });
    this.end({ channel: this.channel, reason: 'error', error: err });
  }

  /** A (re)join's answer on a new connection: replay what was missed, then take the snapshot as the truth. */
  private onJoined(res: WireJoinResult, recovering: boolean): void {
    this.joinAttempts = 0;
    const me = this.host.connection();
    if (me) this.ownClients.add(me.client);
    const from = this.pos;
    const pubs = Array.isArray(res.publications) ? res.publications : [];
    let replayed = 0;
    if (recovering && res.recovered === true && from && from.epoch === res.epoch) {
      for (const p of pubs) {
        if (this.onPublication(p, true)) replayed++;
      }
    }
    this.held.clear();
    this.reconcile(res.sections ?? {}, true);
    this.setMembers(res);
    this.pos = { epoch: res.epoch, offset: res.offset };

    const event: StoryJoinedEvent = {
      channel: this.channel,
      role: res.role,
      epoch: res.epoch,
      offset: res.offset,
      recovering,
      recovered: res.recovered === true,
      replayed,
    };
    if (res.position !== undefined) event.position = res.position;
    if (typeof res.queued === 'number') event.queued = res.queued;
    this.setState('joined');
    this.setRoleFromServer(res.role, res.position);
    if (this._state !== 'joined') return; // a listener left
    this.emit('joined', event);

    // Locks: keep renewing those the server gave back; drop the others.
    for (const [section, w] of [...this.wanted]) {
      if (this.holdsLock(section)) this.renewSoon(section, w);
      else this.unwant(section);
    }
    for (const section of this.unlockOnJoin) {
      if (this.holdsLock(section)) this.host.command<unknown>('unlock', { channel: this.channel, section }, { ok: () => {}, fail: () => {} });
    }
    this.unlockOnJoin.clear();

    const early = this.early;
    this.early = [];
    for (const [type, body] of early) this.push(type, body);
    this.flush();
  }

  /** Editors and viewers from a join answer. */
  private setMembers(res: WireJoinResult): void {
    this._editors = Array.isArray(res.editors) ? res.editors.map((e) => ({ ...e })) : [];
    this._viewers = typeof res.viewers === 'number' ? res.viewers : 0;
    this.roles.clear();
    for (const e of this._editors) this.roles.set(e.client, 'editor');
  }

  /**
   * Asks the server for this member's snapshot again without changing
   * anything (a `collab_join` with the role it has: the server answers the
   * snapshot), or for the role change `setRole()` asked for.
   */
  private refresh(): void {
    if (this._state !== 'joined' || !this.host.isConnected()) return;
    const session = this.session;
    this.host.command<WireJoinResult>('collab_join', this.joinParams(false), {
      ok: (res) => {
        if (session !== this.session || this._state !== 'joined') return;
        this.onRefreshed(res);
      },
      fail: (err) => {
        if (session !== this.session || err instanceof DisconnectedError || err instanceof TimeoutError) return;
        this.emit('error', { channel: this.channel, error: err });
        if (err instanceof ServerError && err.code === ErrorCode.editorsFull && this._role === 'viewer') {
          // `setRole('editor')` without `queue`, and the editors are full: still a viewer.
          this.desired = 'viewer';
          this.rejectWaiting(() => err);
        }
      },
    });
  }

  /** A snapshot on the same connection: merge it (events may be ahead of it, or behind). */
  private onRefreshed(res: WireJoinResult): void {
    const newer = !this.pos || this.pos.epoch !== res.epoch || res.offset >= this.pos.offset;
    this.reconcile(res.sections ?? {}, false, newer);
    if (newer) {
      this.setMembers(res);
      this.pos = { epoch: res.epoch, offset: res.offset };
    }
    this.setRoleFromServer(res.role, res.position);
    // Whatever is still held after the snapshot cannot fill its gap: apply it in version order.
    for (const [section, byVersion] of [...this.held]) {
      this.held.delete(section);
      for (const v of [...byVersion.keys()].sort((a, b) => a - b)) {
        const e = byVersion.get(v) as WireUpdateEvent;
        if (e.version > this.version(section)) this.applyUpdate(e, 'live');
      }
    }
    this.flush();
  }

  private setRoleFromServer(role: StoryRole, position: number | undefined): void {
    const previous = this._role;
    const pos = role === 'queued' ? position : undefined;
    const changedRole = previous !== role;
    const changedPos = this._position !== pos;
    this._role = role;
    this._position = pos;
    if (changedRole) {
      const e: StoryRoleEvent = { channel: this.channel, role, previous };
      if (pos !== undefined) e.position = pos;
      this.emit('role', e);
      if (previous === 'queued' && role === 'editor') this.emit('promoted', { channel: this.channel });
      if (role === 'editor') this.flush();
    } else if (changedPos && pos !== undefined) {
      this.emit('position', { channel: this.channel, position: pos });
    }
  }

  // ---------------------------------------------------------------- story events

  /** Handles one story event; false when it was seen already. */
  private onPublication(p: WirePublication, replayed: boolean): boolean {
    if (typeof p.offset !== 'number') return false;
    if (this.pos && p.offset <= this.pos.offset) return false;
    if (this.pos) this.pos.offset = p.offset;
    const d = p.data;
    if (!isObject(d)) return true;
    if (isObject(d.update)) this.onUpdateEvent(d.update as unknown as WireUpdateEvent, replayed);
    else if (isObject(d.lock)) this.onLockEvent(d.lock);
    else if (isObject(d['story.user.join'])) this.onMember('join', d['story.user.join']);
    else if (isObject(d['story.user.leave'])) this.onMember('leave', d['story.user.leave']);
    return true;
  }

  /** Applies update events in version order: one ahead of a gap waits for the versions before it. */
  private onUpdateEvent(e: WireUpdateEvent, replayed: boolean): void {
    if (typeof e.section !== 'string' || typeof e.version !== 'number') return;
    const known = this.version(e.section);
    if (e.version <= known) return; // this story's own update, answered first, or a repeat
    if (e.version > known + 1) {
      let byVersion = this.held.get(e.section);
      if (!byVersion) {
        byVersion = new Map();
        this.held.set(e.section, byVersion);
      }
      byVersion.set(e.version, e);
      this.armGapTimer();
      return;
    }
    this.applyUpdate(e, replayed ? 'replay' : 'live');
  }

  /** Writes an update into the section, tells the listeners, and applies held versions that now follow. */
  private applyUpdate(e: WireUpdateEvent, source: StoryUpdateSource): void {
    const prev = this._sections.get(e.section);
    const next: SectionState = {
      id: e.section,
      version: e.version,
      data: e.data,
      holder: prev?.holder ?? null,
      ...(prev?.expires !== undefined ? { expires: prev.expires } : {}),
      ...(e.by ? { by: e.by } : {}),
    };
    this._sections.set(e.section, next);
    const event: StoryUpdateEvent = {
      channel: this.channel,
      section: e.section,
      version: e.version,
      data: e.data,
      source,
      mine: e.by !== undefined && this.ownClients.has(e.by.client),
    };
    if (e.by) event.by = e.by;
    this.emit('update', event);
    this.drainHeld(e.section);
  }

  private drainHeld(section: string): void {
    const byVersion = this.held.get(section);
    if (!byVersion) return;
    for (const v of [...byVersion.keys()]) if (v <= this.version(section)) byVersion.delete(v);
    const next = byVersion.get(this.version(section) + 1);
    if (byVersion.size === 0) this.held.delete(section);
    if (next) {
      byVersion.delete(next.version);
      this.applyUpdate(next, 'live');
    }
    if (this.held.size === 0 && this.gapTimer !== undefined) {
      this.host.clock.clearTimeout(this.gapTimer);
      this.gapTimer = undefined;
    }
  }

  private armGapTimer(): void {
    if (this.gapTimer !== undefined) return;
    this.gapTimer = this.host.clock.setTimeout(() => {
      this.gapTimer = undefined;
      if (this.held.size > 0) this.refresh();
    }, this.gapTimeout);
  }

  private onLockEvent(l: Record<string, unknown>): void {
    if (typeof l.section !== 'string') return;
    const expires = typeof l.expires === 'number' ? l.expires : undefined;
    this.setHolder(l.section, holderOf(l.holder), expires);
  }

  /** Sets a section's lock holder, with a `lock` event when the holder changed. */
  private setHolder(section: string, holder: Holder | null, expires: number | undefined): void {
    const prev = this._sections.get(section);
    const previous = prev?.holder ?? null;
    const same = sameHolder(previous, holder);
    if (same && (holder === null || expires === undefined || expires === prev?.expires)) return;
    if (holder === null && (prev === undefined || prev.version === 0)) {
      this._sections.delete(section); // a section never written exists only while locked
    } else {
      const next: SectionState = {
        id: section,
        version: prev?.version ?? 0,
        data: prev?.data ?? null,
        holder,
        ...(holder && expires !== undefined ? { expires } : {}),
        ...(prev?.by ? { by: prev.by } : {}),
      };
      this._sections.set(section, next);
    }
    if (same) return; // a renewal: only `expires` moved
    if (!this.isMe(holder)) this.unwant(section);
    const event: StoryLockEvent = { channel: this.channel, section, holder, previous, mine: this.isMe(holder) };
    if (holder && expires !== undefined) event.expires = expires;
    this.emit('lock', event);
  }

  private onMember(kind: 'join' | 'leave', m: Record<string, unknown>): void {
    if (typeof m.client !== 'string') return;
    const info: ClientInfo = { user: typeof m.user === 'string' ? m.user : '', client: m.client };
    if (m.info !== undefined) info.info = m.info;
    const before = this.roles.get(m.client);
    const event: StoryMemberEvent = { channel: this.channel, kind, user: info.user, client: info.client };
    if (m.info !== undefined) event.info = m.info;
    if (kind === 'join') {
      const role = m.role === 'editor' || m.role === 'viewer' || m.role === 'queued' ? m.role : 'viewer';
      event.role = role;
      this.roles.set(m.client, role);
      if (before === 'viewer' && role !== 'viewer') this._viewers = Math.max(0, this._viewers - 1);
      if (before !== 'viewer' && role === 'viewer') this._viewers++;
      if (before === 'editor' && role !== 'editor') this._editors = this._editors.filter((e) => e.client !== m.client);
      if (role === 'editor' && !this._editors.some((e) => e.client === m.client)) this._editors = [...this._editors, info];
    } else {
      this.roles.delete(m.client);
      if (before === 'editor') this._editors = this._editors.filter((e) => e.client !== m.client);
      else if (before === 'viewer' || before === undefined) this._viewers = Math.max(0, this._viewers - 1);
    }
    this.emit('member', event);
  }

  /**
   * Makes the sections match a snapshot. `full` (a join on a new
   * connection): the snapshot is the truth, versions may even go back (a
   * new epoch). Otherwise only newer versions are taken, and lock holders
   * only from a snapshot at least as new as the events seen (`holders`).
   */
  private reconcile(snapshot: Record<string, WireSection>, full: boolean, holders = true): void {
    const ids = new Set(Object.keys(snapshot));
    if (full) {
      for (const [id, s] of [...this._sections]) {
        if (ids.has(id)) continue;
        if (s.version > 0) this.applyUpdate({ section: id, version: 0, data: null }, 'sync');
        this.setHolder(id, null, undefined);
        this._sections.delete(id);
      }
    }
    for (const id of ids) {
      const w = snapshot[id] as WireSection;
      if (typeof w.version !== 'number') continue;
      const have = this._sections.get(id);
      const version = have?.version ?? 0;
      const differs = full ? w.version !== version || (w.version > 0 && !sameJson(w.data, have?.data)) : w.version > version;
      if (differs) this.applyUpdate({ section: id, version: w.version, data: w.version === 0 ? null : w.data }, 'sync');
      if (full || holders) this.setHolder(id, holderOf(w.holder), undefined);
    }
  }

  // ---------------------------------------------------------------- updates

  /** Sends the first waiting update of each section, when joined as an editor. */
  private flush(): void {
    if (this._state !== 'joined' || this._role !== 'editor' || !this.host.isConnected()) return;
    for (const q of this.queues.values()) {
      const u = q[0];
      if (u && !u.inFlight && u.retryTimer === undefined) this.sendUpdate(u);
    }
  }

  private sendUpdate(u: PendingUpdate): void {
    if (u.base === undefined) u.base = this.version(u.section);
    u.inFlight = true;
    const session = this.session;
    const params = { channel: this.channel, section: u.section, base_version: u.base, data: u.data, op_id: u.opId };
    this.host.command<{ version: number; duplicate?: boolean }>('update', params, {
      ok: (r) => {
        u.inFlight = false;
        if (!this.dequeue(u)) return;
        if (session === this.session && typeof r.version === 'number' && r.version > this.version(u.section)) {
          const me = this.host.connection();
          this.applyUpdate(
            { section: u.section, version: r.version, data: u.data, ...(me ? { by: { user: me.user, client: me.client } } : {}) },
            'reply',
          );
        }
        u.resolve({ section: u.section, version: r.version, duplicate: r.duplicate === true, opId: u.opId });
        this.flush();
      },
      fail: (err) => {
        u.inFlight = false;
        if (!this.queues.get(u.section)?.includes(u)) return;
        // The answer was lost: the outcome is unknown; the same op_id goes out after the re-join.
        if (err instanceof DisconnectedError || err instanceof TimeoutError) return;
        if (err instanceof ServerError && (err.temporary || TEMPORARY.has(err.code)) && u.retries < this.updateRetries) {
          const delay = backoffDelay(u.retries++, this.host.minDelay, this.host.maxDelay, this.host.random.random());
          u.retryTimer = this.host.clock.setTimeout(() => {
            u.retryTimer = undefined;
            this.flush();
          }, delay);
          return;
        }
        this.dequeue(u);
        u.reject(err);
        if (err instanceof ServerError && err.code === ErrorCode.versionConflict) this.onRejected(u, err);
        this.flush();
      },
    });
  }

  /** Error 119: take the section's current state, tell the app, and reject the updates built on this one. */
  private onRejected(u: PendingUpdate, err: ServerError): void {
    const version = typeof err.body.version === 'number' ? err.body.version : this.version(u.section);
    const data = err.body.data ?? null;
    if (version > this.version(u.section)) this.applyUpdate({ section: u.section, version, data }, 'sync');
    const rejected = [u];
    const q = this.queues.get(u.section) ?? [];
    for (const f of [...q]) {
      if (f.explicitBase || f.inFlight) continue;
      this.dequeue(f);
      if (f.retryTimer !== undefined) this.host.clock.clearTimeout(f.retryTimer);
      f.reject(err);
      rejected.push(f);
    }
    for (const r of rejected) {
      this.emit('conflict', {
        kind: 'rejected',
        channel: this.channel,
        section: u.section,
        version,
        data,
        attempted: r.data,
        baseVersion: u.base ?? 0,
        opId: r.opId,
        error: err,
      });
    }
  }

  /** Removes an update from its section's queue; false when it was not there (rejected meanwhile). */
  private dequeue(u: PendingUpdate): boolean {
    const q = this.queues.get(u.section);
    const i = q ? q.indexOf(u) : -1;
    if (!q || i < 0) return false;
    q.splice(i, 1);
    if (q.length === 0) this.queues.delete(u.section);
    return true;
  }

  /** Rejects every update not in flight (a role change to viewer); those in flight get their answer. */
  private rejectWaiting(error: () => Error): void {
    for (const q of [...this.queues.values()]) {
      for (const u of [...q]) {
        if (u.inFlight) continue;
        this.dequeue(u);
        if (u.retryTimer !== undefined) this.host.clock.clearTimeout(u.retryTimer);
        u.reject(error());
      }
    }
  }

  // ---------------------------------------------------------------- locks

  private sendLock(section: string, ttl: number | undefined, callbacks: CommandCallbacks<StoryLockResult>): void {
    const params: Record<string, unknown> = { channel: this.channel, section };
    if (ttl !== undefined) params.ttl = ttl;
    const session = this.session;
    this.host.command<StoryLockResult>('lock', params, {
      ok: (r) => {
        if (session === this.session) this.setHolder(section, holderOf(r.holder), r.expires);
        callbacks.ok({ section: r.section, holder: { user: r.holder.user, client: r.holder.client }, expires: r.expires });
      },
      fail: callbacks.fail,
    });
  }

  /** Keeps renewing a lock this connection holds. */
  private want(section: string, ttl: number | undefined, expires: number): void {
    const w = this.wanted.get(section) ?? { ttl, timer: undefined, attempts: 0 };
    w.ttl = ttl;
    w.attempts = 0;
    this.wanted.set(section, w);
    this.scheduleRenewal(section, w, this.lifetime(ttl, expires) / 2);
  }

  /** How long a lock lives: the ttl asked for, else what `expires` says (clocks may differ: bounded). */
  private lifetime(ttl: number | undefined, expires: number): number {
    if (ttl !== undefined && ttl > 0) return ttl * 1000;
    const left = expires - this.host.clock.now();
    return Number.isFinite(left) && left > 0 ? Math.min(300_000, Math.max(1000, left)) : 30_000;
  }

  private renewSoon(section: string, w: WantedLock): void {
    this.scheduleRenewal(section, w, 0);
  }

  private scheduleRenewal(section: string, w: WantedLock, delay: number): void {
    if (w.timer !== undefined) this.host.clock.clearTimeout(w.timer);
    w.timer = this.host.clock.setTimeout(() => {
      w.timer = undefined;
      if (this._state !== 'joined' || this.wanted.get(section) !== w) return;
      this.sendLock(section, w.ttl, {
        ok: (r) => {
          if (this.wanted.get(section) !== w) return;
          w.attempts = 0;
          this.scheduleRenewal(section, w, this.lifetime(w.ttl, r.expires) / 2);
        },
        fail: (err) => {
          if (this.wanted.get(section) !== w || err instanceof DisconnectedError || err instanceof TimeoutError) return;
          this.emit('error', { channel: this.channel, error: err });
          if (err instanceof ServerError && err.temporary && w.attempts < 5) {
            this.scheduleRenewal(section, w, backoffDelay(w.attempts++, this.host.minDelay, this.host.maxDelay, this.host.random.random()));
          } else {
            this.unwant(section); // lost (118, 120): the `lock` events say who has it
          }
        },
      });
    }, delay);
  }

  private unwant(section: string): void {
    const w = this.wanted.get(section);
    if (!w) return;
    if (w.timer !== undefined) this.host.clock.clearTimeout(w.timer);
    this.wanted.delete(section);
  }

  private isMe(holder: Holder | null): boolean {
    const me = this.host.connection();
    return holder !== null && me !== undefined && holder.client === me.client;
  }

  // ---------------------------------------------------------------- internals

  private end(event: StoryLeftEvent): void {
    this.session++;
    this.joinSentOn = -1;
    this.early = [];
    this.clearTimers();
    for (const section of [...this.wanted.keys()]) this.unwant(section);
    this.unlockOnJoin.clear();
    this.held.clear();
    const left = new DisconnectedError('the story was left');
    for (const q of [...this.queues.values()]) {
      for (const u of q) {
        if (u.retryTimer !== undefined) this.host.clock.clearTimeout(u.retryTimer);
        u.reject(left);
      }
    }
    this.queues.clear();
    this.host.release(this);
    this.setState('left');
    this.emit('left', event);
  }

  private clearJoinRetry(): void {
    if (this.joinRetryTimer !== undefined) this.host.clock.clearTimeout(this.joinRetryTimer);
    this.joinRetryTimer = undefined;
  }

  private clearTimers(): void {
    this.clearJoinRetry();
    if (this.gapTimer !== undefined) this.host.clock.clearTimeout(this.gapTimer);
    this.gapTimer = undefined;
    for (const w of this.wanted.values()) {
      if (w.timer !== undefined) this.host.clock.clearTimeout(w.timer);
      w.timer = undefined;
    }
    for (const q of this.queues.values()) {
      for (const u of q) {
        if (u.retryTimer !== undefined) this.host.clock.clearTimeout(u.retryTimer);
        u.retryTimer = undefined;
      }
    }
  }

  private setState(next: StoryState): void {
    const prev = this._state;
    if (prev === next) return;
    this._state = next;
    this.emit('state', { oldState: prev, newState: next });
  }
}
