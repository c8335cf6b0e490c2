/**
 * A reverse proxy in front of a wsedge node that, like the corporate
 * proxies the SSE fallback is for, refuses WebSocket upgrades (403, then
 * the connection is closed) and passes every other HTTP request through:
 * each answer is relayed as the node sends it, chunk by chunk and unbuffered
 * (so an event stream stays live), request bodies with their
 * `Content-Length`. Switches let a test unblock upgrades (they are then
 * tunnelled to the node, bytes both ways) or make the event stream path
 * unavailable for a while (503).
 */
import { connect, type Socket } from 'node:net';
import {
  createServer,
  request as httpRequest,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type OutgoingHttpHeaders,
  type Server,
  type ServerResponse,
} from 'node:http';
import type { Duplex } from 'node:stream';

/** Hop-by-hop headers (RFC 9110 7.6.1): never relayed. */
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'transfer-encoding',
  'te',
  'trailer',
  'upgrade',
]);

function endToEnd(headers: IncomingHttpHeaders): OutgoingHttpHeaders {
  const out: OutgoingHttpHeaders = {};
  for (const [k, v] of Object.entries(headers)) if (v !== undefined && !HOP_BY_HOP.has(k)) out[k] = v;
  return out;
}

/** The proxy: its URL for clients, switches and counters for the tests. */
export class HttpOnlyProxy {
  /** While true (the default), WebSocket upgrades are answered 403 and closed. */
  refuseUpgrades = true;
  /** While true, `GET <path>/sse` is answered 503 without reaching the node. */
  refuseStreams = false;
  /** Event streams answered 503 (`refuseStreams`) so far. */
  refusedStreams = 0;
  /** Upgrade requests refused so far. */
  refusedUpgrades = 0;
  /** Upgrades tunnelled to the node so far. */
  tunnelledUpgrades = 0;
  /** Event streams (`GET …/sse`) passed to the node and answered 200. */
  streams = 0;
  /** `POST …/sse/<session>` requests passed: the node's status, by request. */
  readonly posts: number[] = [];
  /** The path of each of those POSTs. */
  readonly postPaths: string[] = [];
  /** The `Content-Type` of every POST passed. */
  readonly contentTypes = new Set<string>();
  private readonly sockets = new Set<Duplex>();

  private constructor(
    private readonly server: Server,
    readonly port: number,
    /** The node, `127.0.0.1:<port>`. */
    private readonly target: { host: string; port: number },
  ) {}

  /** Listens on a free loopback port in front of the node at `127.0.0.1:targetPort`. */
  static async start(targetPort: number): Promise<HttpOnlyProxy> {
    let proxy: HttpOnlyProxy | undefined;
    const server = createServer((req, res) => proxy?.relay(req, res));
    server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => proxy?.upgrade(req, socket, head));
    server.on('connection', (s: Socket) => {
      proxy?.sockets.add(s);
      s.on('close', () => proxy?.sockets.delete(s));
    });
    await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
    const addr = server.address();
    proxy = new HttpOnlyProxy(server, typeof addr === 'object' && addr ? addr.port : 0, { host: '127.0.0.1', port: targetPort });
    return proxy;
  }

  /** The URL a client is given: `ws://127.0.0.1:<proxy port>/ws`. */
  get url(): string {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    this.server.closeAllConnections();
    await new Promise<void>((ok) => this.server.close(() => ok()));
  }

  private upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    this.sockets.add(socket);
    socket.on('close', () => this.sockets.delete(socket));
    socket.on('error', () => {});
    if (this.refuseUpgrades) {
      this.refusedUpgrades++;
      socket.end('HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 26\r\nConnection: close\r\n\r\nWebSockets are not allowed');
      return;
    }
    this.tunnelledUpgrades++;
    const upstream = connect(this.target.port, this.target.host);
    this.sockets.add(upstream);
    upstream.on('close', () => {
      this.sockets.delete(upstream);
      socket.destroy();
    });
    socket.on('close', () => upstream.destroy());
    upstream.on('error', () => socket.destroy());
    // The request head as the client sent it, then whatever followed it.
    let text = `${req.method} ${req.url} HTTP/${req.httpVersion}\r\n`;
    for (let i = 0; i < req.rawHeaders.length; i += 2) text += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
    upstream.write(`${text}\r\n`);
    if (head.length > 0) upstream.write(head);
    upstream.pipe(socket);
    socket.pipe(upstream);
  }

  private relay(req: IncomingMessage, res: ServerResponse): void {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    const isStream = req.method === 'GET' && /\/sse$/.test(path);
    const isPost = req.method === 'POST' && /\/sse\/[^/]+$/.test(path);
    if (isStream && this.refuseStreams) {
      this.refusedStreams++;
      // With the CORS headers the node would send, so that a page sees the 503 itself.
      const cors = req.headers.origin ? { 'Access-Control-Allow-Origin': req.headers.origin, Vary: 'Origin' } : {};
      res.writeHead(503, { 'Content-Type': 'text/plain', 'Retry-After': '1', ...cors }).end('the event stream is unavailable');
      return;
    }
    if (isPost) {
      this.contentTypes.add(req.headers['content-type'] ?? '');
      this.postPaths.push(req.url ?? '');
    }
    const upstream = httpRequest({
      host: this.target.host,
      port: this.target.port,
      method: req.method,
      path: req.url,
      headers: endToEnd(req.headers),
      agent: false,
    });
    upstream.on('response', (up: IncomingMessage) => {
      if (isStream && up.statusCode === 200) this.streams++;
      if (isPost) this.posts.push(up.statusCode ?? 0);
      res.writeHead(up.statusCode ?? 502, endToEnd(up.headers));
      // Every chunk on at once: an event must not wait for the next one.
      res.flushHeaders();
      up.on('data', (chunk: Buffer) => res.write(chunk));
      up.on('end', () => res.end());
      up.on('error', () => res.destroy());
    });
    upstream.on('error', () => {
      if (!res.headersSent) res.writeHead(502).end();
      else res.destroy();
    });
    // The client went away (an EventSource closed): so does the node's stream.
    res.on('close', () => upstream.destroy());
    req.pipe(upstream);
  }
}
