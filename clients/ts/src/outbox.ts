import { OutboxDroppedError, type DropReason } from './errors.js';
import type { PublishResult } from './protocol.js';

/** A publication waiting in the outbox, as stored. */
export interface OutboxEntry {
  /** Storage key (random). */
  id: string;
  /** Order of the entry: entries are sent by increasing `seq`. */
  seq: number;
  channel: string;
  /** The publication's data (any JSON value; kept by structured clone in IndexedDB). */
  data: unknown;
  /** Sent with every attempt, so the server publishes the entry at most once. */
  idempotencyKey: string;
  /** When `publish` was called (ms since the epoch). */
  createdAt: number;
}

/**
 * Where the outbox keeps its entries. Every method may be asynchronous; the
 * outbox calls them one at a time, in order, and keeps its own copy in memory.
 */
export interface OutboxStorage {
  /** Every stored entry (any order: the outbox sorts them by `seq`). */
  load(): Promise<OutboxEntry[]>;
  /** Stores or replaces an entry (by `id`). */
  put(entry: OutboxEntry): Promise<void>;
  /** Removes an entry by `id`; a missing one is not an error. */
  delete(id: string): Promise<void>;
  /** Removes every entry. */
  clear(): Promise<void>;
}

/** Keeps entries in memory only: the default (they end with the process or page). */
export class MemoryOutboxStorage implements OutboxStorage {
  private readonly entries = new Map<string, OutboxEntry>();

  async load(): Promise<OutboxEntry[]> {
    return [...this.entries.values()].map((e) => ({ ...e }));
  }
  async put(entry: OutboxEntry): Promise<void> {
    this.entries.set(entry.id, { ...entry });
  }
  async delete(id: string): Promise<void> {
    this.entries.delete(id);
  }
  async clear(): Promise<void> {
    this.entries.clear();
  }
}

/** Options of {@link IndexedDBOutboxStorage}. */
export interface IndexedDBOutboxOptions {
  /** Database name (default `wsedge-outbox`); one per client/user if several share an origin. */
  dbName?: string;
  /** Object store name (default `entries`). */
  storeName?: string;
  /** The IndexedDB factory (default the global `indexedDB`). */
  indexedDB?: IDBFactory;
}

/**
 * Keeps entries in the browser's IndexedDB, so publications made offline
 * survive a page reload and are sent by the next client that uses the same
 * database. Entries restored this way have no caller waiting on a promise:
 * their fate is reported by the client's `outboxSent` / `outboxFailed` /
 * `outboxDropped` events.
 */
export class IndexedDBOutboxStorage implements OutboxStorage {
  private readonly dbName: string;
  private readonly storeName: string;
  private readonly factory: IDBFactory | undefined;
  private db: Promise<IDBDatabase> | undefined;

  constructor(options: IndexedDBOutboxOptions = {}) {
    this.dbName = options.dbName ?? 'wsedge-outbox';
    this.storeName = options.storeName ?? 'entries';
    this.factory = options.indexedDB ?? (globalThis as { indexedDB?: IDBFactory }).indexedDB;
  }

  async load(): Promise<OutboxEntry[]> {
    const all = await this.run('readonly', (s) => s.getAll());
    return (all as OutboxEntry[]).sort((a, b) => a.seq - b.seq);
  }
  async put(entry: OutboxEntry): Promise<void> {
    await this.run('readwrite', (s) => s.put(entry));
  }
  async delete(id: string): Promise<void> {
    await this.run('readwrite', (s) => s.delete(id));
  }
  async clear(): Promise<void> {
    await this.run('readwrite', (s) => s.clear());
  }

  private open(): Promise<IDBDatabase> {
    if (!this.db) {
      const factory = this.factory;
      if (!factory) return Promise.reject(new Error('IndexedDB is not available'));
      this.db = new Promise<IDBDatabase>((resolve, reject) => {
        const req = factory.open(this.dbName, 1);
        req.onupgradeneeded = () => {
          const db = req.result;
          if (!db.objectStoreNames.contains(this.storeName)) db.createObjectStore(this.storeName, { keyPath: 'id' });
        };
        req.onsuccess = () => resolve(req.result);
        req.onerror = () => reject(req.error ?? new Error('IndexedDB open failed'));
      });
      // A failed open may be retried by a later call.
      this.db.catch(() => {
        this.db = undefined;
      });
    }
    return this.db;
  }

  /** Runs one request in its own transaction; resolves once the transaction commits. */
  private async run(mode: IDBTransactionMode, op: (store: IDBObjectStore) => IDBRequest): Promise<unknown> {
    const db = await this.open();
    return new Promise<unknown>((resolve, reject) => {
      const tx = db.transaction(this.storeName, mode);
      const req = op(tx.objectStore(this.storeName));
      tx.oncomplete = () => resolve(req.result);
      tx.onerror = () => reject(tx.error ?? req.error ?? new Error('IndexedDB transaction failed'));
      tx.onabort = () => reject(tx.error ?? new Error('IndexedDB transaction aborted'));
    });
  }
}

/** What to do with a publication when the outbox is full. */
export type DropPolicy = 'drop-oldest' | 'reject-new';

/** One entry in memory, with its caller's promise (absent for restored entries). */
export interface OutboxItem {
  entry: OutboxEntry;
  /** Sent and not yet answered. */
  inFlight: boolean;
  /** Attempts answered with a temporary error. */
  retries: number;
  /** Came from storage (a previous session): nobody awaits it. */
  restored: boolean;
  resolve?: (r: PublishResult) => void;
  reject?: (e: Error) => void;
}

/** Receives entries the outbox gives up on by itself (evicted, or restored beyond the limit). */
export type DropListener = (item: OutboxItem, reason: DropReason) => void;

/**
 * The bounded, ordered list of publications not yet acknowledged by the
 * server. The client sends its pending items in order and settles each
 * with its outcome; the outbox only keeps the list, the promises and the
 * storage in step.
 */
export class Outbox {
  private items: OutboxItem[] = [];
  private nextSeq = 1;
  private chain: Promise<void>;
  private loaded = false;
  /** Resolves once stored entries are loaded (at most once). */
  readonly ready: Promise<void>;

  constructor(
    private readonly storage: OutboxStorage,
    private readonly limit: number,
    private readonly policy: DropPolicy,
    private readonly onDrop: DropListener,
    private readonly onStorageError: (err: unknown) => void,
  ) {
    this.ready = this.storage
      .load()
      .catch((err: unknown) => {
        this.onStorageError(err);
        return [] as OutboxEntry[];
      })
      .then((stored) => this.restore(stored));
    this.chain = this.ready;
  }

  /** Entries in the outbox, in or out of flight. */
  get size(): number {
    return this.items.length;
  }

  /** Whether {@link ready} has resolved. */
  get isReady(): boolean {
    return this.loaded;
  }

  /** Every item, in send order. */
  all(): readonly OutboxItem[] {
    return this.items;
  }

  /**
   * Adds a publication; the promise settles with its fate: the server's
   * `{offset}`, or an {@link OutboxDroppedError}, or the error that failed it.
   */
  add(entry: Omit<OutboxEntry, 'seq'>): Promise<PublishResult> {
    return new Promise<PublishResult>((resolve, reject) => {
      if (this.items.length >= this.limit && !this.makeRoom()) {
        reject(new OutboxDroppedError('full'));
        return;
      }
      const item: OutboxItem = { entry: { ...entry, seq: 0 }, inFlight: false, retries: 0, restored: false, resolve, reject };
      this.items.push(item);
      this.enqueue(async () => {
        if (!this.items.includes(item)) return;
        item.entry.seq = this.nextSeq++;
        await this.storage.put(item.entry);
      });
    });
  }

  /** Settles an item as sent and removes it; false if it was no longer there (cleared). */
  succeed(item: OutboxItem, result: PublishResult): boolean {
    if (!this.remove(item)) return false;
    item.resolve?.(result);
    return true;
  }

  /** Settles an item as failed and removes it; false if it was no longer there. */
  fail(item: OutboxItem, error: Error): boolean {
    if (!this.remove(item)) return false;
    item.reject?.(error);
    return true;
  }

  /** Marks every item as not in flight (the connection ended: their outcome is unknown, resend them). */
  resetInFlight(): void {
    for (const it of this.items) it.inFlight = false;
  }

  /**
   * Removes every item, in flight or not, rejecting each promise with an
   * {@link OutboxDroppedError} (`cleared`). A reply that comes later for an
   * item in flight changes nothing.
   */
  clear(): void {
    const all = this.items;
    this.items = [];
    this.enqueue(() => this.storage.clear());
    for (const it of all) {
      this.onDrop(it, 'cleared');
      it.reject?.(new OutboxDroppedError('cleared'));
    }
  }

  private makeRoom(): boolean {
    if (this.policy === 'reject-new') return false;
    const victim = this.items.find((it) => !it.inFlight);
    if (!victim) return false;
    this.remove(victim);
    this.onDrop(victim, 'evicted');
    victim.reject?.(new OutboxDroppedError('evicted'));
    return true;
  }

  private remove(item: OutboxItem): boolean {
    const i = this.items.indexOf(item);
    if (i < 0) return false;
    this.items.splice(i, 1);
    this.enqueue(() => this.storage.delete(item.entry.id));
    return true;
  }

  private restore(stored: OutboxEntry[]): void {
    stored.sort((a, b) => a.seq - b.seq);
    for (const e of stored) this.nextSeq = Math.max(this.nextSeq, e.seq + 1);
    const restored: OutboxItem[] = stored.map((entry) => ({ entry, inFlight: false, retries: 0, restored: true }));
    // Stored entries are older than anything added since the client started.
    this.items = [...restored, ...this.items];
    this.loaded = true;
    while (this.items.length > this.limit) {
      const victim = this.items.find((it) => it.restored && !it.inFlight) ?? this.items.find((it) => !it.inFlight);
      if (!victim) break;
      this.remove(victim);
      this.onDrop(victim, 'evicted');
      victim.reject?.(new OutboxDroppedError('evicted'));
    }
  }

  private enqueue(op: () => Promise<void>): void {
    this.chain = this.chain.then(op).catch((err: unknown) => this.onStorageError(err));
  }

  /** Resolves once every storage write so far has finished (for tests and shutdown). */
  flushed(): Promise<void> {
    return this.chain;
  }
}
