import { BINARY_SUBPROTOCOL, type WebSocketConstructor, type WebSocketLike } from '../../src/index.js';
import { decodeClientFrame, encodeServerFrame } from './fb-frames.js';

/** A command as the client sent it. */
export interface SentCommand {
  id: number;
  method: string;
  params: Record<string, unknown>;
}

/**
 * A WebSocket the test plays the server for, in either wire form: once
 * accepted with the binary subprotocol, what the test sends goes out as
 * binary `ServerFrame`s and the client's frames are read as `ClientFrame`s.
 */
export class FakeSocket implements WebSocketLike {
  readyState = 0;
  protocol = '';
  binaryType = 'blob';
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  /** Frames the client sent: text (JSON form) or bytes (binary form). */
  readonly frames: Array<string | Uint8Array> = [];
  /** Set when the client closed the socket. */
  closedByClient: { code: number | undefined; reason: string | undefined } | undefined;
  private answered = new Set<number>();

  constructor(
    readonly url: string,
    readonly protocols: string | string[] | undefined,
  ) {}

  send(data: string | Uint8Array): void {
    if (this.readyState !== 1) throw new Error('send on a socket that is not open');
    this.frames.push(typeof data === 'string' ? data : data.slice());
  }

  /** Whether the connection speaks the binary form (accepted with its subprotocol). */
  get binary(): boolean {
    return this.protocol === BINARY_SUBPROTOCOL;
  }

  close(code?: number, reason?: string): void {
    this.closedByClient = { code, reason };
    this.readyState = 3;
  }

  // ---- the test's side ----

  /** Completes the handshake, choosing the first subprotocol offered (or `protocol`). */
  accept(protocol?: string): void {
    this.readyState = 1;
    this.protocol = protocol ?? (Array.isArray(this.protocols) ? (this.protocols[0] ?? '') : (this.protocols ?? ''));
    this.onopen?.({});
  }

  /** The handshake fails (server down): an error, then close 1006. */
  refuse(): void {
    this.readyState = 3;
    this.onerror?.({});
    this.onclose?.({ code: 1006, reason: '' });
  }

  /** An error event and no close event (Node 20's WebSocket after some failed handshakes). */
  errorOnly(): void {
    this.onerror?.({});
  }

  /** The server sends these objects (JSON-form messages) in one frame, in the connection's form. */
  receive(...objects: unknown[]): void {
    if (this.binary) {
      const bytes = encodeServerFrame(objects);
      this.onmessage?.({ data: this.binaryType === 'arraybuffer' ? bytes.buffer : new Blob([bytes]) });
      return;
    }
    this.onmessage?.({ data: objects.map((o) => JSON.stringify(o)).join('\n') });
  }

  /** The server closes the connection. */
  serverClose(code: number, reason = ''): void {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  /** Every command sent, in order. */
  commands(): SentCommand[] {
    const out: SentCommand[] = [];
    for (const frame of this.frames) {
      if (typeof frame !== 'string') {
        out.push(...decodeClientFrame(frame));
        continue;
      }
      for (const line of frame.split('\n')) {
        const obj = JSON.parse(line) as Record<string, unknown>;
        const method = Object.keys(obj).find((k) => k !== 'id') as string;
        out.push({ id: obj.id as number, method, params: obj[method] as Record<string, unknown> });
      }
    }
    return out;
  }

  /** Commands of one method, in order. */
  sent(method: string): SentCommand[] {
    return this.commands().filter((c) => c.method === method);
  }

  /** Commands of `method` not answered yet by {@link reply} / {@link replyError}. */
  unanswered(method: string): SentCommand[] {
    return this.sent(method).filter((c) => !this.answered.has(c.id));
  }

  /** Answers the oldest unanswered `method` command with `result`; returns it. */
  reply(method: string, result: unknown): SentCommand {
    const c = this.unanswered(method)[0];
    if (!c) throw new Error(`no unanswered ${method}; sent: ${this.frames.join(' | ')}`);
    this.answered.add(c.id);
    this.receive({ id: c.id, [method]: result });
    return c;
  }

  /** Answers the oldest unanswered `method` command with an error (with `extra` fields, e.g. 118's `holder`). */
  replyError(method: string, code: number, temporary: boolean, message = 'error', extra: Record<string, unknown> = {}): SentCommand {
    const c = this.unanswered(method)[0];
    if (!c) throw new Error(`no unanswered ${method}`);
    this.answered.add(c.id);
    this.receive({ id: c.id, error: { code, message, temporary, ...extra } });
    return c;
  }
}

/** A WebSocket constructor whose sockets the test can reach. */
export function fakeWebSocket(): { ctor: WebSocketConstructor; sockets: FakeSocket[]; last(): FakeSocket } {
  const sockets: FakeSocket[] = [];
  class Ctor extends FakeSocket {
    constructor(url: string, protocols?: string | string[]) {
      super(url, protocols);
      sockets.push(this);
    }
  }
  return {
    ctor: Ctor,
    sockets,
    last(): FakeSocket {
      const s = sockets[sockets.length - 1];
      if (!s) throw new Error('no socket yet');
      return s;
    },
  };
}
