'use strict';
// node-ws: a comparison target for the wsedge benchmarks. An idiomatic
// Node.js + `ws` broadcast server speaking the same JSON subset of the wire
// protocol (`edu-matrix-v1.json`) as wsedge: connect, subscribe,
// unsubscribe, publish, ping; replies {"id":N,"<method>":{..}} or
// {"id":N,"error":{..}}; pushes {"push":{"channel":..,"pub":{"offset":K,"data":..}}}
// with offsets counted per channel.
//
// Design: one WebSocketServer, a Map of channel -> { offset, subs: Set of
// sockets }; a publication is JSON.stringify'd once and ws.send(str) to
// every subscriber. permessage-deflate follows --compression (ws's own
// defaults when on: threshold 1024 bytes, compression per socket).
//
//   node server.js --listen 127.0.0.1:0 [--compression on|off] [--backlog 4096]
//   -> prints "listening client=ADDR" on stderr

const { WebSocketServer, WebSocket } = require('ws');

const PROTOCOL = 'edu-matrix-v1.json';
const PING_INTERVAL = 25;

function parseArgs(argv) {
  const opts = { listen: '127.0.0.1:8080', compression: 'off', backlog: 4096 };
  for (let i = 0; i < argv.length; i += 2) {
    const k = argv[i];
    const v = argv[i + 1];
    if (k === '--listen') opts.listen = v;
    else if (k === '--compression') opts.compression = v;
    else if (k === '--backlog') opts.backlog = Number(v);
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
const channels = new Map(); // name -> { offset, subs: Set<WebSocket> }
const epoch = (process.pid * 0x9e3779b9).toString(16).padStart(16, '0');
let nextClient = 1;

function error(id, code, message) {
  return { id, error: { code, message, temporary: false } };
}

function execute(ws, session, cmd) {
  const id = typeof cmd.id === 'number' ? cmd.id : 0;
  if (cmd.connect !== undefined) {
    if (session.connected) return error(id, 111, 'already connected');
    session.connected = true;
    const client = (nextClient++).toString(16).padStart(16, '0');
    return { id, connect: { client, node: 'node-ws', ping: PING_INTERVAL } };
  }
  if (!session.connected) return error(id, 110, 'connect first');
  if (cmd.subscribe !== undefined) {
    const name = cmd.subscribe.channel;
    if (typeof name !== 'string') return error(id, 107, 'bad request');
    if (session.channels.has(name)) return error(id, 105, 'already subscribed');
    let ch = channels.get(name);
    if (!ch) {
      ch = { offset: 0, subs: new Set() };
      channels.set(name, ch);
    }
    ch.subs.add(ws);
    session.channels.add(name);
    return { id, subscribe: { epoch, offset: ch.offset } };
  }
  if (cmd.unsubscribe !== undefined) {
    const name = cmd.unsubscribe.channel;
    if (!session.channels.has(name)) return error(id, 108, 'not subscribed');
    session.channels.delete(name);
    const ch = channels.get(name);
    if (ch) ch.subs.delete(ws);
    return { id, unsubscribe: {} };
  }
  if (cmd.publish !== undefined) {
    const { channel: name, data } = cmd.publish;
    if (typeof name !== 'string' || data === undefined) return error(id, 107, 'bad request');
    let ch = channels.get(name);
    if (!ch) {
      ch = { offset: 0, subs: new Set() };
      channels.set(name, ch);
    }
    ch.offset += 1;
    // Serialized once, sent to every subscriber.
    const str = JSON.stringify({ push: { channel: name, pub: { offset: ch.offset, data } } });
    for (const sub of ch.subs) {
      if (sub.readyState === WebSocket.OPEN) sub.send(str);
    }
    return { id, publish: { offset: ch.offset } };
  }
  if (cmd.ping !== undefined) return { id, ping: {} };
  return error(id, 104, 'unknown method');
}

const wss = new WebSocketServer({
  host: opts.host,
  port: opts.port,
  // Same deliberate departure as the Rust baselines: a backlog of 4096
  // (wsedge's default) so 256 concurrent handshakes per worker do not
  // overflow the accept queue.
  backlog: opts.backlog,
  handleProtocols: (protocols) => (protocols.has(PROTOCOL) ? PROTOCOL : false),
  perMessageDeflate: opts.compression === 'on',
});

wss.on('listening', () => {
  const a = wss.address();
  process.stderr.write(`listening client=${a.address}:${a.port}\n`);
});

wss.on('connection', (ws) => {
  const session = { connected: false, channels: new Set() };
  ws.on('message', (data, isBinary) => {
    if (isBinary) return;
    const out = [];
    for (const line of data.toString().split('\n')) {
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
  });
  ws.on('close', () => {
    for (const name of session.channels) {
      const ch = channels.get(name);
      if (ch) ch.subs.delete(ws);
    }
    session.channels.clear();
  });
  ws.on('error', () => {});
});

process.on('SIGTERM', () => process.exit(0));
