import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

import type { EventSourceConstructor, EventSourceLike, SseEvent, WebSocketConstructor, WebSocketLike } from '../../src/index.js';

/**
 * The server binary: `$WSEDGE_BIN`, else the repository's release build
 * (`npm test` runs in `clients/ts`).
 */
export const WSEDGE_BIN =
  process.env.WSEDGE_BIN || resolve(process.cwd(), '../../target/release/wsedge');

/** Why the end-to-end tests cannot run here, or `false` when they can. */
export function skipReason(): string | false {
  try {
    accessSync(WSEDGE_BIN, constants.X_OK);
    return false;
  } catch {
    return `no wsedge binary at ${WSEDGE_BIN} (set WSEDGE_BIN): end-to-end tests SKIPPED`;
  }
}

/** A loopback port nobody listens on right now. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

/** How long the server may take to start (a loaded 2-core machine). */
const START_TIMEOUT = 30_000;

/** The API key the test servers accept. */
const API_KEY = 'sdk-ts-e2e-key';

/** A wsedge process on loopback ports, with its config in a temp directory. */
export class EdgeServer {
  private exited: Promise<void>;
  private logText = '';

  private constructor(
    private readonly child: ChildProcess,
    readonly port: number,
    readonly api: string,
    /** The admin listener (`/metrics`, `/healthz`), `host:port`. */
    readonly admin: string,
    private readonly dir: string,
  ) {
    this.exited = new Promise((resolve) => child.once('exit', () => resolve()));
  }

  /** `ws://127.0.0.1:<port>/ws` */
  get url(): string {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  /** Everything the server logged so far. */
  get log(): string {
    return this.logText;
  }

  /**
   * Starts `wsedge --config <toml> --listen 127.0.0.1:<port>` (a free port
   * unless given) with its admin and API listeners on free ports, and waits
   * for its "listening" line.
   */
  static async start(toml: string, options: { port?: number; env?: Record<string, string> } = {}): Promise<EdgeServer> {
    const port = options.port ?? (await freePort());
    const dir = mkdtempSync(join(tmpdir(), 'wsedge-sdk-ts-'));
    const config = join(dir, 'wsedge.toml');
    writeFileSync(config, toml);
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('WSEDGE_')) env[k] = v;
    Object.assign(env, {
      WSEDGE_LOG_LEVEL: 'info',
      WSEDGE_API_LISTEN: '127.0.0.1:0',
      WSEDGE_API_KEY: API_KEY,
      ...options.env,
    });
    const child = spawn(
      WSEDGE_BIN,
      ['--config', config, '--listen', `127.0.0.1:${port}`, '--admin-listen', '127.0.0.1:0', '--shards', '2'],
      { env, stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let log = '';
    const [api, admin] = await new Promise<[string, string]>((resolve, reject) => {
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`wsedge did not start within ${START_TIMEOUT} ms; log:\n${log}`));
      }, START_TIMEOUT);
      child.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`wsedge exited (${code}) before listening; log:\n${log}`));
      });
      let buf = '';
      child.stderr?.setEncoding('utf8');
      child.stderr?.on('data', (chunk: string) => {
        log += chunk;
        buf += chunk;
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          const m = /listening .*api=(\S+)/.exec(line);
          if (m) {
            clearTimeout(timer);
            resolve([m[1] as string, /admin=(\S+)/.exec(line)?.[1] ?? '']);
          }
        }
      });
    });
    const server = new EdgeServer(child, port, api, admin, dir);
    server.logText = log;
    child.stderr?.on('data', (chunk: string) => (server.logText += chunk));
    return server;
  }

  /** Calls the server HTTP API (`POST /api/<method>`); returns its `result` or throws its error. */
  async callApi(method: string, body: unknown): Promise<unknown> {
    const res = await fetch(`http://${this.api}/api/${method}`, {
      method: 'POST',
      headers: { Authorization: `apikey ${API_KEY}`, 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
    });
    const json = (await res.json()) as { result?: unknown; error?: unknown };
    if (json.error !== undefined) throw new Error(`api ${method}: ${JSON.stringify(json.error)}`);
    return json.result;
  }

  /**
   * The sum over shards of a counter or gauge from `GET /metrics`, over the
   * series whose labels include every `labels` pair (e.g. `{kind: 'json_deflate'}`).
   */
  async metric(name: string, labels: Record<string, string> = {}): Promise<number> {
    if (!this.admin) throw new Error('the admin address was not in the listening line');
    const text = await (await fetch(`http://${this.admin}/metrics`)).text();
    let sum = 0;
    for (const line of text.split('\n')) {
      const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
      if (!m || m[1] !== name) continue;
      const have = m[2] ?? '';
      if (Object.entries(labels).every(([k, v]) => have.includes(`${k}="${v}"`))) sum += Number(m[3]);
    }
    return sum;
  }

  /** Kills the process (SIGKILL by default: no drain, no goodbye) and waits for it to exit. */
  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    await this.exited;
  }

  /** Kills the process and removes its config. */
  async stop(): Promise<void> {
    await this.kill();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * A WebSocket constructor with a gate: while closed, every connection goes
 * to a port nobody listens on (refused at once), so the client keeps
 * retrying; once opened, connections reach the real URL.
 */
export function gatedWebSocket(deadPort: number): { ctor: WebSocketConstructor; open: boolean } {
  const gate = { open: true, ctor: undefined as unknown as WebSocketConstructor };
  const Real = globalThis.WebSocket as unknown as WebSocketConstructor;
  gate.ctor = function GatedWebSocket(url: string, protocols?: string | string[]): WebSocketLike {
    const target = gate.open ? url : url.replace(/127\.0\.0\.1:\d+/, `127.0.0.1:${deadPort}`);
    return new Real(target, protocols);
  } as unknown as WebSocketConstructor;
  return gate;
}

/** What a {@link gatedEventSource} saw on the streams it opened. */
export interface EventSourceGate {
  ctor: EventSourceConstructor;
  /** Whether streams reach the real URL (else the dead port). */
  open: boolean;
  /** The session id of every `session` event, in order. */
  readonly sessions: string[];
  /** The body of every `close` event, in order. */
  readonly closeEvents: { code: number; reason: string }[];
}

/**
 * Node's own `EventSource` (global with `node --experimental-eventsource`,
 * which the test scripts pass), gated like {@link gatedWebSocket}: while
 * closed, streams go to a port nobody listens on. It records the session
 * and close events the node sent, before the client sees them.
 */
export function gatedEventSource(deadPort: number): EventSourceGate {
  const Real = (globalThis as { EventSource?: new (url: string) => EventSourceLike }).EventSource;
  if (!Real) throw new Error('no global EventSource: run node with --experimental-eventsource (Node 20.18+, 22.3+)');
  const gate: EventSourceGate = { open: true, sessions: [], closeEvents: [], ctor: undefined as unknown as EventSourceConstructor };
  const json = (ev: SseEvent) => JSON.parse(String(ev.data)) as Record<string, unknown>;
  gate.ctor = function GatedEventSource(url: string): EventSourceLike {
    const es = new Real(gate.open ? url : url.replace(/127\.0\.0\.1:\d+/, `127.0.0.1:${deadPort}`));
    es.addEventListener('session', (ev) => gate.sessions.push(String(json(ev).session)));
    es.addEventListener('close', (ev) => {
      const body = json(ev);
      gate.closeEvents.push({ code: Number(body.code), reason: String(body.reason) });
    });
    return es;
  } as unknown as EventSourceConstructor;
  return gate;
}

/** Polls `check` until it holds; fails with `what` after `timeout` ms (generous: a noisy 2-core machine). */
export async function waitFor(what: string, check: () => boolean, timeout = 20_000): Promise<void> {
  const deadline = Date.now() + timeout;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** {@link waitFor} with an asynchronous check (e.g. a command to the server). */
export async function waitForAsync(what: string, check: () => Promise<boolean>, timeout = 20_000): Promise<void> {
  const deadline = Date.now() + timeout;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
