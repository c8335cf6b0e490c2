import type { Codec, EncodedCommand, IncomingFrame, WireFormat } from './codec.js';
import { FrameError, type ServerMessage } from './protocol.js';

/** The part of a WebSocket the client uses (the browser `WebSocket`, Node's global one, or `ws`). */
export interface WebSocketLike {
  readonly readyState: number;
  readonly protocol: string;
  /** Set to `'arraybuffer'` for the binary form, when the implementation has it. */
  binaryType?: string;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
}

/** A WebSocket constructor, e.g. `globalThis.WebSocket` or `ws`'s. */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/** How a connection reaches the server: a WebSocket, or the SSE fallback (an `EventSource` down, `POST`s up). */
export type TransportKind = 'websocket' | 'sse';

/** What a transport reports to its owner. */
export interface TransportHandlers {
  /** The connection is open: commands can be sent (`connect` first). */
  onOpen(): void;
  /** One frame arrived, already decoded. */
  onMessages(messages: ServerMessage[]): void;
  /** The connection ended (by the server or the network); not called after {@link Transport.close}. */
  onClose(code: number, reason: string): void;
  /** The server sent something that is not the protocol; the transport is already closed. */
  onProtocolError(error: Error): void;
}

/**
 * One connection to the server, whatever carries it. Each instance is used
 * once; reconnecting makes a new one.
 */
export interface Transport {
  readonly kind: TransportKind;
  /** The wire form spoken on it. */
  readonly format: WireFormat;
  /** Whether commands can be sent now. */
  readonly open: boolean;
  /** Encodes one command in this connection's form (throws when it cannot). */
  encode(id: number, method: string, params: unknown): EncodedCommand;
  /** Sends encoded commands, in order, in one frame. */
  send(commands: readonly EncodedCommand[]): void;
  /**
   * Closes the connection from the client's side. The owner is not told
   * (it closed it); later events are ignored.
   */
  close(reason?: string): void;
}

/** `WebSocket.OPEN`. */
const OPEN = 1;

/**
 * One WebSocket connection in either wire form: the codec encodes and
 * frames the commands and decodes what arrives.
 */
export class WebSocketTransport implements Transport {
  readonly kind = 'websocket';
  private readonly ws: WebSocketLike;
  private ended = false;

  constructor(
    ctor: WebSocketConstructor,
    url: string,
    private readonly codec: Codec,
    private readonly handlers: TransportHandlers,
  ) {
    this.ws = new ctor(url, codec.subprotocol);
    if (codec.format === 'binary' && 'binaryType' in this.ws) this.ws.binaryType = 'arraybuffer';
    this.ws.onopen = () => {
      if (this.ended) return;
      const proto = this.ws.protocol;
      // A server that echoes no subprotocol speaks JSON: fine for a JSON client only.
      if (proto !== codec.subprotocol && !(proto === '' && codec.format === 'json')) {
        this.fail(new FrameError(`asked for subprotocol ${codec.subprotocol}, the server chose ${proto || 'none'}`));
        return;
      }
      this.handlers.onOpen();
    };
    this.ws.onmessage = (ev) => {
      if (this.ended) return;
      let messages: ServerMessage[];
      try {
        if (!isFrame(ev.data)) throw new FrameError(`a frame of type ${Object.prototype.toString.call(ev.data)} (binaryType is not arraybuffer?)`);
        messages = this.codec.decode(ev.data);
      } catch (err) {
        this.fail(err instanceof Error ? err : new FrameError(String(err)));
        return;
      }
      this.handlers.onMessages(messages);
    };
    this.ws.onclose = (ev) => {
      if (this.ended) return;
      this.detach();
      this.handlers.onClose(typeof ev.code === 'number' ? ev.code : 1006, ev.reason ?? '');
    };
    // An error event means the connection failed (the close that should
    // follow says 1006). Some implementations (Node 20's undici after a
    // failed handshake) never send that close: end here, on the error.
    this.ws.onerror = () => {
      if (this.ended) return;
      this.detach();
      try {
        this.ws.close();
      } catch {
        // already closing
      }
      this.handlers.onClose(1006, 'connection error');
    };
  }

  get format(): WireFormat {
    return this.codec.format;
  }

  get open(): boolean {
    return !this.ended && this.ws.readyState === OPEN;
  }

  encode(id: number, method: string, params: unknown): EncodedCommand {
    return this.codec.encode(id, method, params);
  }

  send(commands: readonly EncodedCommand[]): void {
    if (!this.open || commands.length === 0) return;
    this.ws.send(this.codec.frame(commands));
  }

  close(reason = ''): void {
    if (this.ended) return;
    this.detach();
    try {
      this.ws.close(1000, reason.slice(0, 100));
    } catch {
      // already closing
    }
  }

  private fail(err: Error): void {
    this.close('protocol error');
    this.handlers.onProtocolError(err);
  }

  private detach(): void {
    this.ended = true;
    this.ws.onopen = null;
    this.ws.onmessage = null;
    this.ws.onclose = null;
    this.ws.onerror = null;
  }
}

function isFrame(data: unknown): data is IncomingFrame {
  return typeof data === 'string' || data instanceof ArrayBuffer || ArrayBuffer.isView(data);
}
