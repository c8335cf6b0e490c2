import { FrameError, parseFrame, SUBPROTOCOL, type ServerMessage } from './protocol.js';

/** The part of a WebSocket the client uses (the browser `WebSocket`, Node's global one, or `ws`). */
export interface WebSocketLike {
  readonly readyState: number;
  readonly protocol: string;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

/** A WebSocket constructor, e.g. `globalThis.WebSocket` or `ws`'s. */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/** What the transport reports to its owner. */
export interface TransportHandlers {
  /** The WebSocket is open. */
  onOpen(): void;
  /** One text frame arrived, already split and classified. */
  onMessages(messages: ServerMessage[]): void;
  /** The connection ended (by the server or the network); not called after {@link Transport.close}. */
  onClose(code: number, reason: string): void;
  /** The server sent something that is not the JSON protocol; the transport is already closed. */
  onProtocolError(error: Error): void;
}

/** `WebSocket.OPEN`. */
const OPEN = 1;

/**
 * One WebSocket connection speaking the JSON form: it sends objects as
 * `\n`-joined text frames and splits incoming frames into messages.
 * Each instance is used once; reconnecting makes a new one.
 */
export class Transport {
  private readonly ws: WebSocketLike;
  private ended = false;

  constructor(ctor: WebSocketConstructor, url: string, private readonly handlers: TransportHandlers) {
    this.ws = new ctor(url, SUBPROTOCOL);
    this.ws.onopen = () => {
      if (this.ended) return;
      const proto = this.ws.protocol;
      if (proto !== '' && proto !== SUBPROTOCOL) {
        this.fail(new FrameError(`the server chose subprotocol ${proto}`));
        return;
      }
      this.handlers.onOpen();
    };
    this.ws.onmessage = (ev) => {
      if (this.ended) return;
      if (typeof ev.data !== 'string') {
        this.fail(new FrameError('a binary frame on a JSON connection'));
        return;
      }
      let messages: ServerMessage[];
      try {
        messages = parseFrame(ev.data);
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

  /** Whether frames can be sent now. */
  get open(): boolean {
    return !this.ended && this.ws.readyState === OPEN;
  }

  /** Sends the given encoded commands in one text frame. */
  send(lines: string[]): void {
    if (!this.open || lines.length === 0) return;
    this.ws.send(lines.join('\n'));
  }

  /**
   * Closes the connection from the client's side. The owner is not told
   * (it closed it); later events of the socket are ignored.
   */
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
