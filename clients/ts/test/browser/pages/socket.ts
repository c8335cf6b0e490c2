/**
 * Page side of the browser tests: a WebSocket constructor for the client
 * that keeps every socket it made (so a test can read `ws.extensions`)
 * and has a gate: while closed, connections go to a port nobody listens
 * on, so the client keeps retrying until the test opens it.
 */
import type { WebSocketConstructor } from '@wsedge/client';

/** The gate and the sockets of a {@link testWebSocket}. */
export interface SocketGate {
  /** Whether connections reach the real URL (else the dead port). */
  open: boolean;
  /** Every socket made, oldest first. */
  readonly sockets: WebSocket[];
  /** The negotiated `extensions` of each socket that opened, in order. */
  readonly opened: string[];
}

/**
 * A recording, gated WebSocket constructor; `deadPort` is a loopback port
 * with no listener.
 */
export function testWebSocket(deadPort: number, open = true): { ctor: WebSocketConstructor; gate: SocketGate } {
  const gate: SocketGate = { open, sockets: [], opened: [] };
  class TestWebSocket extends WebSocket {
    constructor(url: string | URL, protocols?: string | string[]) {
      const target = gate.open ? String(url) : String(url).replace(/\/\/[^/]+/, `//127.0.0.1:${deadPort}`);
      super(target, protocols);
      gate.sockets.push(this);
      this.addEventListener('open', () => gate.opened.push(this.extensions));
    }
  }
  return { ctor: TestWebSocket as unknown as WebSocketConstructor, gate };
}
