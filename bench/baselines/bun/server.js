'use strict';
// bun: a comparison target for the wsedge benchmarks. Bun's built-in
// WebSocket server (uWebSockets underneath) written the way its docs show
// a pub/sub server, speaking the same JSON subset of the wire protocol
// (`edu-matrix-v1.json`) as wsedge and node-ws: connect, subscribe,
// unsubscribe, publish, ping; replies {"id":N,"<method>":{..}} or
// {"id":N,"error":{..}}; pushes {"push":{"channel":..,"pub":{"offset":K,"data":..}}}
// with offsets counted per channel.
//
// Design: Bun.serve with `websocket: { open, message, close }`; a channel
// is a Bun topic (`ws.subscribe(channel)`, `ws.isSubscribed(channel)` for
// the already/not-subscribed errors), a Map of channel -> { offset } keeps
// the offsets; a publication is JSON.stringify'd once and sent to
// every subscriber with `server.publish(channel, str)` (uWebSockets frames
// it once and writes it to each subscriber, corked). Slow consumers are
// dropped like wsedge drops a connection over its 1 MiB outbound budget:
// `backpressureLimit: 1 MiB, closeOnBackpressureLimit: true`.
// permessage-deflate follows --compression (off by default).
//
//   bun server.js --listen 127.0.0.1:0 [--compression on|off]
//   -> prints "listening client=ADDR" on stderr

const PROTOCOL = 'edu-matrix-v1.json';
const PING_INTERVAL = 25;
// wsedge's default outbound_budget.
const BACKPRESSURE_LIMIT = 1024 * 1024;

function parseArgs(argv) {
  const opts = { listen: '127.0.0.1:8080', compression: 'off' };
  for (let i = 0; i < argv.length; i += 2) {
    const k = argv[i];
    const v = argv[i + 1];
    if (k === '--listen') opts.listen = v;
    else if (k === '--compression') opts.compression = v;
    else {
      process.stderr.write(`unknown option ${k}\n`);
      process.exit(2);
    }
  }
  const colon = opts.listen.lastIndexOf(':');
  opts.host = opts.listen.slice(0, colon);
  opts.port = Number(opts.listen.slice(colon + 1));
  if (opts.compression !== 'on' && opts.compression !== 'off') {
    process.stderr.write('--compression must be on or off\n');
    process.exit(2);
  }
  return opts;
}

const opts = parseArgs(process.argv.slice(2));
const channels = new Map(); // name -> { offset }
const epoch = (process.pid * 0x9e3779b9).toString(16).padStart(16, '0');
let nextClient = 1;
let server;

function error(id, code, message) {
  return { id, error: { code, message, temporary: false } };
}

function execute(ws, session, cmd) {
  const id = typeof cmd.id === 'number' ? cmd.id : 0;
  if (cmd.connect !== undefined) {
    if (session.connected) return error(id, 111, 'already connected');
    session.connected = true;
    const client = (nextClient++).toString(16).padStart(16, '0');
    return { id, connect: { client, node: 'bun', ping: PING_INTERVAL } };
  }
  if (!session.connected) return error(id, 110, 'connect first');
  if (cmd.subscribe !== undefined) {
    const name = cmd.subscribe.channel;
    if (typeof name !== 'string') return error(id, 107, 'bad request');
    if (ws.isSubscribed(name)) return error(id, 105, 'already subscribed');
    let ch = channels.get(name);
    if (!ch) {
      ch = { offset: 0 };
      channels.set(name, ch);
    }
    ws.subscribe(name);
    return { id, subscribe: { epoch, offset: ch.offset } };
  }
  if (cmd.unsubscribe !== undefined) {
    const name = cmd.unsubscribe.channel;
    if (!ws.isSubscribed(name)) return error(id, 108, 'not subscribed');
    ws.unsubscribe(name);
    return { id, unsubscribe: {} };
  }
  if (cmd.publish !== undefined) {
    const { channel: name, data } = cmd.publish;
    if (typeof name !== 'string' || data === undefined) return error(id, 107, 'bad request');
    let ch = channels.get(name);
    if (!ch) {
      ch = { offset: 0 };
      channels.set(name, ch);
    }
    ch.offset += 1;
    // Serialized once, sent to every subscriber of the topic (the
    // publisher too if it subscribed, as with node-ws).
    const str = JSON.stringify({ push: { channel: name, pub: { offset: ch.offset, data } } });
    server.publish(name, str);
    return { id, publish: { offset: ch.offset } };
  }
  if (cmd.ping !== undefined) return { id, ping: {} };
  return error(id, 104, 'unknown method');
}

function offersProtocol(req) {
  const h = req.headers.get('sec-websocket-protocol');
  return h !== null && h.split(',').some((p) => p.trim() === PROTOCOL);
}

server = Bun.serve({
  hostname: opts.host,
  port: opts.port,
  fetch(req, srv) {
    const headers = offersProtocol(req) ? { 'Sec-WebSocket-Protocol': PROTOCOL } : undefined;
    // The session is one flag: Bun keeps each socket's topics itself
    // (`ws.isSubscribed`) and drops them when it closes.
    const data = { connected: false };
    if (srv.upgrade(req, { headers, data })) return undefined;
    return new Response('WebSocket upgrade expected', { status: 426 });
  },
  websocket: {
    perMessageDeflate: opts.compression === 'on',
    backpressureLimit: BACKPRESSURE_LIMIT,
    closeOnBackpressureLimit: true,
    open() {},
    message(ws, message) {
      if (typeof message !== 'string') return; // binary: ignored, as node-ws does
      const session = ws.data;
      const out = [];
      for (const line of message.split('\n')) {
        if (line.trim() === '') continue;
        let cmd;
        try {
          cmd = JSON.parse(line);
        } catch {
          out.push(JSON.stringify(error(0, 107, 'bad request')));
          continue;
        }
        out.push(JSON.stringify(execute(ws, session, cmd)));
      }
      if (out.length > 0) ws.send(out.join('\n'));
    },
    close() {
      // Bun unsubscribes a closed socket from its topics itself.
    },
  },
});

process.stderr.write(`listening client=${server.hostname}:${server.port}\n`);

process.on('SIGTERM', () => process.exit(0));
