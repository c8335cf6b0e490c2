/**
 * React bindings of `@wsedge/client` (import from `@wsedge/client/react`):
 * {@link RealtimeProvider}, {@link useRealtime}, {@link useSubscription},
 * {@link usePresence} and {@link useStory}. React ≥ 18 is an optional peer dependency: only this
 * entry imports it.
 *
 * ```tsx
 * const client = new Client('wss://edge.example.com/ws', { getToken });
 * root.render(<RealtimeProvider client={client}><Room /></RealtimeProvider>);
 *
 * function Room() {
 *   const { isOnline } = useRealtime();
 *   const { publications, recovered } = useSubscription('chat:room-42', { limit: 50 });
 *   const { members } = usePresence('chat:room-42');
 *   …
 * }
 * ```
 *
 * @packageDocumentation
 */
import {
  createContext,
  createElement,
  useContext,
  useEffect,
  useMemo,
  useSyncExternalStore,
  type ReactElement,
  type ReactNode,
} from 'react';

import type { Client } from './client.js';
import type { ClientState } from './options.js';
import type { ClientInfo, PresenceEntry } from './protocol.js';
import type { SectionState, Story, StoryConflictEvent, StoryOptions, StoryRole, StoryState } from './story.js';
import type {
  PresenceEvent,
  PresenceStateEvent,
  Publication,
  SubscribedEvent,
  Subscription,
  SubscriptionOptions,
  SubscriptionState,
} from './subscription.js';

const ClientContext = createContext<Client | null>(null);

/** Props of {@link RealtimeProvider}. */
export interface RealtimeProviderProps {
  /** The client the hooks below use. The application creates it and owns its lifetime. */
  client: Client;
  /**
   * Call `client.connect()` on mount when the client is `disconnected`
   * (default true). The provider never disconnects the client: call
   * `client.disconnect()` yourself when the application is done with it.
   */
  connect?: boolean;
  children?: ReactNode;
}

/**
 * Makes a {@link Client} available to {@link useRealtime},
 * {@link useSubscription} and {@link usePresence} below it. On mount it
 * connects the client if it is `disconnected` (unless `connect={false}`);
 * on unmount it leaves the client as it is (connected): the client belongs
 * to the application, which may share it with code outside React.
 */
export function RealtimeProvider(props: RealtimeProviderProps): ReactElement {
  const { client, connect = true, children } = props;
  useEffect(() => {
    if (connect && client.state === 'disconnected') client.connect();
  }, [client, connect]);
  return createElement(ClientContext.Provider, { value: client }, children);
}

/** The client of the nearest {@link RealtimeProvider}; throws outside one. */
export function useClient(): Client {
  const client = useContext(ClientContext);
  if (!client) throw new Error('@wsedge/client/react: wrap the component in <RealtimeProvider client={…}>');
  return client;
}

/** What {@link useRealtime} returns. */
export interface RealtimeStatus {
  /** The provider's client. */
  client: Client;
  /** The client's state: `connected`, `connecting` (including waits between reconnects) or `disconnected`. */
  connectionStatus: ClientState;
  /** `connectionStatus === 'connected'`. */
  isOnline: boolean;
}

/**
 * The connection status of the provider's client. The component re-renders
 * only when the client's state changes.
 */
export function useRealtime(): RealtimeStatus {
  const client = useClient();
  const store = useMemo(
    () => ({
      subscribe: (onChange: () => void) => client.on('state', onChange),
      getSnapshot: () => client.state,
    }),
    [client],
  );
  const connectionStatus = useSyncExternalStore(store.subscribe, store.getSnapshot, store.getSnapshot);
  return useMemo(() => ({ client, connectionStatus, isOnline: connectionStatus === 'connected' }), [client, connectionStatus]);
}

// ---------------------------------------------------------------- shared subscriptions

/**
 * One channel's {@link Subscription}, shared by every hook of one client
 * that uses the channel (the client allows one subscription per channel).
 */
interface SharedSubscription {
  readonly sub: Subscription;
  /** Made by the hooks (they unsubscribe it when the last one lets go), or adopted from the application. */
  readonly owned: boolean;
  refs: number;
}

const shared = new WeakMap<Client, Map<string, SharedSubscription>>();

function acquire(client: Client, channel: string, options: SubscriptionOptions): SharedSubscription {
  let byChannel = shared.get(client);
  if (!byChannel) {
    byChannel = new Map();
    shared.set(client, byChannel);
  }
  let entry = byChannel.get(channel);
  if (!entry) {
    const existing = client.getSubscription(channel);
    entry = existing
      ? { sub: existing, owned: false, refs: 0 }
      : { sub: client.subscribe(channel, options), owned: true, refs: 0 };
    byChannel.set(channel, entry);
  } else if (entry.owned && entry.sub.state === 'unsubscribed' && !client.getSubscription(channel)) {
    // Ended by the server or refused: a component that mounts tries again.
    entry.sub.subscribe();
  }
  entry.refs++;
  return entry;
}

function release(client: Client, channel: string, entry: SharedSubscription): void {
  entry.refs--;
  if (entry.refs > 0) return;
  // Wait a microtask: a component that unmounts and mounts again in the same
  // commit (StrictMode, a changed `limit`) keeps the subscription.
  queueMicrotask(() => {
    if (entry.refs > 0) return;
    const byChannel = shared.get(client);
    if (byChannel?.get(channel) === entry) byChannel.delete(channel);
    if (entry.owned) entry.sub.unsubscribe();
  });
}

/** A tiny external store: a snapshot and the listeners React gave `useSyncExternalStore`. */
abstract class Store<T> {
  protected snapshot: T;
  private readonly listeners = new Set<() => void>();

  constructor(initial: T) {
    this.snapshot = initial;
  }

  readonly getSnapshot = (): T => this.snapshot;

  readonly subscribe = (onChange: () => void): (() => void) => {
    this.listeners.add(onChange);
    const stop = this.listeners.size === 1 ? this.start() : undefined;
    return () => {
      this.listeners.delete(onChange);
      if (this.listeners.size === 0) stop?.();
    };
  };

  /** Attaches to the client when the first listener comes; returns the detach. */
  protected abstract start(): () => void;

  protected set(patch: Partial<T>): void {
    this.snapshot = { ...this.snapshot, ...patch };
    for (const l of [...this.listeners]) l();
  }
}

// ---------------------------------------------------------------- useSubscription

/** Options of {@link useSubscription}. */
export interface UseSubscriptionOptions extends Pick<SubscriptionOptions, 'recover' | 'since' | 'token' | 'getToken'> {
  /** Keep at most this many publications, the newest (default 100). */
  limit?: number;
}

/** What {@link useSubscription} returns. */
export interface SubscriptionSnapshot {
  /** `subscribing` until the server answers (and again while reconnecting), then `subscribed`; `unsubscribed` after the server ended it or refused it. */
  state: SubscriptionState;
  /** The publications received since the component mounted, oldest first, at most `limit` (the newest). */
  publications: readonly Publication[];
  /**
   * The last subscribe reply's `recovered`: true when a resubscribe (after a
   * reconnect) replayed every missed publication. False after a recovering
   * subscribe means a gap: reload the channel's state (see `lastSubscribed.recovering`).
   */
  recovered: boolean;
  /** The last subscribe reply, when there was one. */
  lastSubscribed: SubscribedEvent | undefined;
  /** The last error of the subscription (a refusal, a token failure, a temporary error being retried); cleared by the next successful subscribe. */
  error: Error | undefined;
  /** The underlying subscription, once the component is mounted. */
  subscription: Subscription | undefined;
}

class SubscriptionStore extends Store<SubscriptionSnapshot> {
  constructor(
    private readonly client: Client,
    private readonly channel: string,
    private readonly limit: number,
    private readonly options: SubscriptionOptions,
  ) {
    const existing = client.getSubscription(channel);
    super({
      state: existing?.state ?? 'subscribing',
      publications: [],
      recovered: false,
      lastSubscribed: undefined,
      error: undefined,
      subscription: existing,
    });
  }

  protected start(): () => void {
    const entry = acquire(this.client, this.channel, this.options);
    const sub = entry.sub;
    const offs = [
      sub.on('state', ({ newState }) => this.set({ state: newState })),
      sub.on('subscribed', (e) => this.set({ recovered: e.recovered, lastSubscribed: e, error: undefined })),
      sub.on('publication', (p) => {
        if (this.limit <= 0) return;
        const prev = this.snapshot.publications;
        const next = prev.length >= this.limit ? prev.slice(prev.length - this.limit + 1) : prev.slice();
        next.push(p);
        this.set({ publications: next });
      }),
      sub.on('error', ({ error }) => this.set({ error })),
    ];
    if (this.snapshot.state !== sub.state || this.snapshot.subscription !== sub) {
      this.set({ state: sub.state, subscription: sub });
    }
    return () => {
      for (const off of offs) off();
      release(this.client, this.channel, entry);
    };
  }
}

/**
 * Subscribes to `channel` while the component is mounted (and resubscribes
 * when `channel` changes), with recovery across reconnects. Components of
 * one client that use the same channel share one subscription; it is
 * unsubscribed when the last of them unmounts. A subscription the
 * application made itself with `client.subscribe()` is used as it is and
 * never unsubscribed by the hook.
 *
 * The component re-renders only when this subscription's state,
 * publications, recovery flag or error change. `recover`, `since`, `token`
 * and `getToken` are read when the subscription is made; a new `limit`
 * starts a new, empty list.
 */
export function useSubscription(channel: string, options: UseSubscriptionOptions = {}): SubscriptionSnapshot {
  const client = useClient();
  const limit = Math.max(0, Math.floor(options.limit ?? 100));
  const store = useMemo(
    () => {
      const opts: SubscriptionOptions = {};
      if (options.recover !== undefined) opts.recover = options.recover;
      if (options.since !== undefined) opts.since = options.since;
      if (options.token !== undefined) opts.token = options.token;
      if (options.getToken !== undefined) opts.getToken = options.getToken;
      return new SubscriptionStore(client, channel, limit, opts);
    },
    // Options other than `limit` are read once, when the subscription is made.
    [client, channel, limit],
  );
  return useSyncExternalStore(store.subscribe, store.getSnapshot, store.getSnapshot);
}

// ---------------------------------------------------------------- usePresence

/** Options of {@link usePresence}. */
export interface UsePresenceOptions {
  /**
   * Also fetch the member list every this many milliseconds (default 0 =
   * never). Only needed for namespaces without `join_leave`, where no
   * join/leave pushes keep the list current.
   */
  refreshInterval?: number;
}

/** What {@link usePresence} returns. */
export interface PresenceSnapshot {
  /** The channel's members (one per connection), with their presence state when set. */
  members: readonly PresenceEntry[];
  /** Whether a member list has been fetched since mount. */
  loaded: boolean;
  /** The last failed fetch (e.g. error 103: the namespace has no presence); cleared by the next good one. */
  error: Error | undefined;
  /** Fetches the member list now; resolves when it is applied (failures go to `error`, the promise never rejects). */
  refresh: () => Promise<void>;
}

type PresenceChange =
  | { kind: 'join' | 'leave'; event: PresenceEvent }
  | { kind: 'state'; event: PresenceStateEvent };

class PresenceStore extends Store<PresenceSnapshot> {
  private members = new Map<string, PresenceEntry>();
  /** Changes seen while a fetch is in flight: replayed over its answer. */
  private pending: PresenceChange[] | undefined;
  private fetchGen = 0;
  private active = false;

  constructor(
    private readonly client: Client,
    private readonly channel: string,
    private readonly refreshInterval: number,
  ) {
    super({ members: [], loaded: false, error: undefined, refresh: () => Promise.resolve() });
    this.snapshot = { ...this.snapshot, refresh: this.refresh };
  }

  readonly refresh = (): Promise<void> => {
    const gen = ++this.fetchGen;
    this.pending = [];
    return this.client.presence(this.channel).then(
      (res) => {
        if (gen !== this.fetchGen || !this.active) return;
        const changes = this.pending ?? [];
        this.pending = undefined;
        const before = this.members;
        this.members = new Map(Object.entries(res.clients ?? {}).map(([id, m]) => [id, { ...m }]));
        for (const c of changes) this.applyChange(c);
        const same =
          this.snapshot.loaded &&
          this.snapshot.error === undefined &&
          before.size === this.members.size &&
          [...this.members].every(([id, m]) => {
            const b = before.get(id);
            return b !== undefined && sameEntry(b, m);
          });
        if (same) this.members = before; // nothing new: no re-render
        else this.set({ members: [...this.members.values()], loaded: true, error: undefined });
      },
      (err: unknown) => {
        if (gen !== this.fetchGen || !this.active) return;
        this.pending = undefined;
        this.set({ error: err instanceof Error ? err : new Error(String(err)) });
      },
    );
  };

  protected start(): () => void {
    this.active = true;
    const entry = acquire(this.client, this.channel, {});
    const sub = entry.sub;
    const change = (c: PresenceChange) => {
      this.pending?.push(c);
      if (this.applyChange(c)) this.set({ members: [...this.members.values()] });
    };
    const offs = [
      // Joins and leaves missed while disconnected are not replayed: fetch
      // the list after every (re)subscribe.
      sub.on('subscribed', () => void this.refresh()),
      sub.on('join', (event) => change({ kind: 'join', event })),
      sub.on('leave', (event) => change({ kind: 'leave', event })),
      sub.on('presenceState', (event) => change({ kind: 'state', event })),
    ];
    if (sub.state === 'subscribed') void this.refresh();
    let timer: ReturnType<typeof setInterval> | undefined;
    if (this.refreshInterval > 0) {
      timer = setInterval(() => {
        if (this.client.state === 'connected') void this.refresh();
      }, this.refreshInterval);
    }
    return () => {
      this.active = false;
      this.fetchGen++;
      this.pending = undefined;
      if (timer !== undefined) clearInterval(timer);
      for (const off of offs) off();
      release(this.client, this.channel, entry);
    };
  }

  /** Applies a push to the member map; false when it changed nothing (e.g. this connection's own join after the fetch). */
  private applyChange(c: PresenceChange): boolean {
    const info = c.event.info;
    if (!info || typeof info.client !== 'string') return false;
    const prev = this.members.get(info.client);
    let next: PresenceEntry | undefined;
    if (c.kind === 'state') {
      next = { ...prev, ...info };
      if (c.event.state) next.state = c.event.state;
      else delete next.state;
    } else if (c.kind === 'join') {
      next = prev?.state ? { ...info, state: prev.state } : { ...info };
    }
    if (next === undefined) return this.members.delete(info.client);
    if (prev && sameEntry(prev, next)) return false;
    this.members.set(info.client, next);
    return true;
  }
}

function sameEntry(a: PresenceEntry, b: PresenceEntry): boolean {
  return a.user === b.user && a.client === b.client && a.state === b.state && JSON.stringify(a.info) === JSON.stringify(b.info);
}

/**
 * The members of a channel (namespaces with `presence`). The hook
 * subscribes to the channel (sharing the subscription with
 * {@link useSubscription}), so this connection is one of the members; it
 * fetches the list after every (re)subscribe and keeps it current from
 * join, leave and state pushes (namespaces with `join_leave = true`).
 * Without `join_leave`, use `refresh()` or the `refreshInterval` option.
 */
export function usePresence(channel: string, options: UsePresenceOptions = {}): PresenceSnapshot {
  const client = useClient();
  const every = Math.max(0, options.refreshInterval ?? 0);
  const store = useMemo(() => new PresenceStore(client, channel, every), [client, channel, every]);
  return useSyncExternalStore(store.subscribe, store.getSnapshot, store.getSnapshot);
}

// ---------------------------------------------------------------- useStory

/** One channel's {@link Story}, shared by every {@link useStory} of one client that uses the channel. */
interface SharedStory {
  readonly story: Story;
  /** Made by the hooks (they leave it when the last one lets go), or adopted from the application. */
  readonly owned: boolean;
  refs: number;
}

const sharedStories = new WeakMap<Client, Map<string, SharedStory>>();

/** What {@link useStory} returns. */
export interface StorySnapshot {
  /** `joining` until the server answers (and again while reconnecting), then `joined`; `left` after a refusal. */
  state: StoryState;
  /** This member's role, once the server said it. */
  role: StoryRole | undefined;
  /** The place in line (1 = next) while queued. */
  position: number | undefined;
  /** Every section known, by id; a new map whenever a section's version, data or lock holder changes. */
  sections: ReadonlyMap<string, SectionState>;
  /** The editors, in the order they got their slots. */
  editors: readonly ClientInfo[];
  /** How many viewers the story has (see `Story.viewers`). */
  viewers: number;
  /** The last `conflict` event since mount (a `rejected` update to rebase, or an `overwritten` version to offer back). */
  lastConflict: StoryConflictEvent | undefined;
  /** The last error of the story (a refusal, a temporary one being retried); cleared by the next join. */
  error: Error | undefined;
  /** The story, once the component is mounted: call `update`, `lock`, `unlock`, `setRole` on it. */
  story: Story | undefined;
}

class StoryStore extends Store<StorySnapshot> {
  constructor(
    private readonly client: Client,
    private readonly channel: string,
    private readonly options: StoryOptions,
  ) {
    const existing = client.getStory(channel);
    super({
      state: existing?.state ?? 'joining',
      role: existing?.role,
      position: existing?.position,
      sections: new Map(existing?.sections ?? []),
      editors: existing?.editors ?? [],
      viewers: existing?.viewers ?? 0,
      lastConflict: undefined,
      error: undefined,
      story: existing,
    });
  }

  protected start(): () => void {
    let entry = sharedStories.get(this.client)?.get(this.channel);
    if (!entry) {
      const existing = this.client.getStory(this.channel);
      entry = existing ? { story: existing, owned: false, refs: 0 } : { story: this.client.story(this.channel, this.options), owned: true, refs: 0 };
      let byChannel = sharedStories.get(this.client);
      if (!byChannel) {
        byChannel = new Map();
        sharedStories.set(this.client, byChannel);
      }
      byChannel.set(this.channel, entry);
    } else if (entry.owned && entry.story.state === 'left' && !this.client.getStory(this.channel)) {
      entry.story.join(); // refused before: a component that mounts tries again
    }
    entry.refs++;
    const shared = entry;
    const story = shared.story;
    const sync = () =>
      this.set({
        state: story.state,
        role: story.role,
        position: story.position,
        sections: new Map(story.sections),
        editors: story.editors,
        viewers: story.viewers,
        story,
      });
    const offs = [
      story.on('state', sync),
      story.on('joined', () => {
        this.snapshot = { ...this.snapshot, error: undefined };
        sync();
      }),
      story.on('role', sync),
      story.on('position', sync),
      story.on('update', sync),
      story.on('lock', sync),
      story.on('member', sync),
      story.on('conflict', (lastConflict) => this.set({ lastConflict })),
      story.on('error', ({ error }) => this.set({ error })),
    ];
    sync();
    return () => {
      for (const off of offs) off();
      shared.refs--;
      if (shared.refs > 0) return;
      queueMicrotask(() => {
        if (shared.refs > 0) return;
        const byChannel = sharedStories.get(this.client);
        if (byChannel?.get(this.channel) === shared) byChannel.delete(this.channel);
        if (shared.owned) shared.story.leave();
      });
    };
  }
}

/**
 * Joins the story on `channel` while the component is mounted (as an
 * editor by default: `options` are read when the story is joined) and
 * leaves it when the last component using it unmounts. Components of one
 * client share one {@link Story}; one the application joined itself with
 * `client.story()` is used as it is and never left by the hook. Re-renders
 * when the story's state, role, place in line, sections, members, last
 * conflict or error change.
 *
 * ```tsx
 * const { sections, role, story } = useStory('story:42');
 * <textarea disabled={role !== 'editor'} value={String(sections.get('intro')?.data ?? '')}
 *   onChange={(e) => void story?.update('intro', e.target.value)} />
 * ```
 */
export function useStory(channel: string, options: StoryOptions = {}): StorySnapshot {
  const client = useClient();
  // Options are read once, when the story is joined.
  const store = useMemo(() => new StoryStore(client, channel, { ...options }), [client, channel]);
  return useSyncExternalStore(store.subscribe, store.getSnapshot, store.getSnapshot);
}
