/**
 * The FlatBuffers form of the wire protocol (`edu-matrix-v1`,
 * schemas/edge.fbs): one `ClientFrame` per binary frame sent, one
 * `ServerFrame` per binary frame received.
 *
 * Commands take the same JSON-shaped parameters as in the JSON form, and
 * replies and pushes are decoded into the same JSON shapes the JSON form's
 * server writes (bytes that are JSON text become `data`, other bytes
 * `b64data`), so everything above the codec is the same for both forms.
 * Loaded lazily (see `loadBinaryCodec`): it pulls in the generated tables.
 */
import type { Codec, EncodedCommand, IncomingFrame } from './codec.js';
import * as fb from './fb/wsedge/proto.js';
import { BINARY_SUBPROTOCOL, encodeBase64, FrameError, type ErrorBody, type ServerMessage } from './protocol.js';
import { Builder, ByteBuffer } from './vendor/flatbuffers/flatbuffers.js';

// ---------------------------------------------------------------- encoding

/** Writes a command's request table into a builder; returns its union tag and offset. */
type RequestWriter = (b: Builder) => [fb.Method, number];

/** Writes a whole `Command` table; what the binary codec's {@link EncodedCommand}s are. */
type CommandWriter = (b: Builder) => number;

type Params = Record<string, unknown>;

const utf8 = new TextEncoder();

/** A string parameter, or undefined when absent or not a string (the server then answers as for a missing one). */
function str(v: unknown): string | undefined {
  return typeof v === 'string' ? v : undefined;
}

/** An unsigned 32-bit parameter, or null. */
function u32(v: unknown): number | null {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 0xffff_ffff ? v : null;
}

/** An unsigned 64-bit parameter, or null. */
function u64(v: unknown): bigint | null {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? BigInt(v) : null;
}

/** A JSON value as the UTF-8 bytes of its text (what the binary form carries), or undefined when absent. */
function jsonBytes(v: unknown): Uint8Array | undefined {
  if (v === undefined) return undefined;
  const text = JSON.stringify(v) as string | undefined; // undefined for functions and symbols
  return text === undefined ? undefined : utf8.encode(text);
}

/** A string in the builder (0 = absent, which the generated `add…` calls skip). */
function s(b: Builder, v: string | undefined): number {
  return v === undefined ? 0 : b.createString(v);
}

/** A byte vector in the builder (0 = absent). */
function bytes(b: Builder, v: Uint8Array | undefined): number {
  return v === undefined ? 0 : b.createByteVector(v);
}

/** For each method: reads its JSON-shaped parameters now and returns what writes them later. */
const requests: Record<string, (p: Params) => RequestWriter> = {
  connect(p) {
    const [token, name, version, user, ticket] = [str(p.token), str(p.name), str(p.version), str(p.user), str(p.ticket)];
    const info = jsonBytes(p.info);
    return (b) => [
      fb.Method.Connect,
      fb.ConnectRequest.createConnectRequest(b, s(b, token), s(b, name), s(b, version), s(b, user), bytes(b, info), s(b, ticket)),
    ];
  },
  subscribe(p) {
    const [channel, epoch, token] = [str(p.channel), str(p.epoch), str(p.token)];
    const recover = p.recover === true;
    const offset = u64(p.offset);
    return (b) => [
      fb.Method.Subscribe,
      fb.SubscribeRequest.createSubscribeRequest(b, s(b, channel), recover, s(b, epoch), offset, s(b, token)),
    ];
  },
  unsubscribe(p) {
    const channel = str(p.channel);
    return (b) => [fb.Method.Unsubscribe, fb.UnsubscribeRequest.createUnsubscribeRequest(b, s(b, channel))];
  },
  publish(p) {
    const [channel, key] = [str(p.channel), str(p.idempotency_key)];
    const data = jsonBytes(p.data);
    const durableAck = p.durable_ack === true;
    return (b) => [
      fb.Method.Publish,
      fb.PublishRequest.createPublishRequest(b, s(b, channel), bytes(b, data), s(b, key), durableAck),
    ];
  },
  ping() {
    return (b) => [fb.Method.Ping, fb.PingRequest.createPingRequest(b)];
  },
  history(p) {
    const channel = str(p.channel);
    const limit = u32(p.limit);
    const since = typeof p.since === 'object' && p.since !== null ? (p.since as Params) : undefined;
    const sinceEpoch = str(since?.epoch);
    const sinceOffset = since ? u64(since.offset) : null;
    const reverse = p.reverse === true;
    return (b) => {
      const ch = s(b, channel);
      const pos = since ? fb.StreamPosition.createStreamPosition(b, s(b, sinceEpoch), sinceOffset) : 0;
      fb.HistoryRequest.startHistoryRequest(b);
      fb.HistoryRequest.addChannel(b, ch);
      if (limit !== null) fb.HistoryRequest.addLimit(b, limit);
      fb.HistoryRequest.addSince(b, pos);
      fb.HistoryRequest.addReverse(b, reverse);
      return [fb.Method.History, fb.HistoryRequest.endHistoryRequest(b)];
    };
  },
  presence(p) {
    const channel = str(p.channel);
    return (b) => [fb.Method.Presence, fb.PresenceRequest.createPresenceRequest(b, s(b, channel))];
  },
  presence_stats(p) {
    const channel = str(p.channel);
    return (b) => [fb.Method.PresenceStats, fb.PresenceStatsRequest.createPresenceStatsRequest(b, s(b, channel))];
  },
  presence_state(p) {
    const [channel, state] = [str(p.channel), str(p.state)];
    const ttl = u32(p.ttl);
    return (b) => [
      fb.Method.PresenceState,
      fb.PresenceStateRequest.createPresenceStateRequest(b, s(b, channel), s(b, state), ttl),
    ];
  },
  refresh(p) {
    const token = str(p.token);
    return (b) => [fb.Method.Refresh, fb.RefreshRequest.createRefreshRequest(b, s(b, token))];
  },
  sub_refresh(p) {
    const [channel, token] = [str(p.channel), str(p.token)];
    return (b) => [fb.Method.SubRefresh, fb.SubRefreshRequest.createSubRefreshRequest(b, s(b, channel), s(b, token))];
  },
  collab_join(p) {
    const [channel, epoch] = [str(p.channel), str(p.epoch)];
    const role = p.role === 'editor' ? fb.CollabRole.Editor : p.role === 'viewer' ? fb.CollabRole.Viewer : null;
    const [queue, recover] = [p.queue === true, p.recover === true];
    const offset = u64(p.offset);
    return (b) => [
      fb.Method.CollabJoin,
      fb.CollabJoinRequest.createCollabJoinRequest(b, s(b, channel), role, queue, recover, s(b, epoch), offset),
    ];
  },
  collab_leave(p) {
    const channel = str(p.channel);
    return (b) => [fb.Method.CollabLeave, fb.CollabLeaveRequest.createCollabLeaveRequest(b, s(b, channel))];
  },
  lock(p) {
    const [channel, section] = [str(p.channel), str(p.section)];
    const ttl = u32(p.ttl);
    return (b) => [fb.Method.Lock, fb.LockRequest.createLockRequest(b, s(b, channel), s(b, section), ttl)];
  },
  unlock(p) {
    const [channel, section] = [str(p.channel), str(p.section)];
    return (b) => [fb.Method.Unlock, fb.UnlockRequest.createUnlockRequest(b, s(b, channel), s(b, section))];
  },
  update(p) {
    const [channel, section, opId] = [str(p.channel), str(p.section), str(p.op_id)];
    const base = u64(p.base_version);
    const data = jsonBytes(p.data);
    return (b) => [
      fb.Method.Update,
      fb.UpdateRequest.createUpdateRequest(b, s(b, channel), s(b, section), base, bytes(b, data), s(b, opId)),
    ];
  },
  rpc(p) {
    const method = str(p.method);
    const data = jsonBytes(p.data);
    return (b) => [fb.Method.Rpc, fb.RpcRequest.createRpcRequest(b, s(b, method), bytes(b, data))];
  },
  send(p) {
    const data = jsonBytes(p.data);
    return (b) => [fb.Method.Send, fb.SendRequest.createSendRequest(b, bytes(b, data))];
  },
};

/** A method the binary form has no table for: sent without one, which the server answers with error 104 (unknown method), as the JSON form's server does. */
const unknownMethod: RequestWriter = () => [fb.Method.NONE, 0];

function encode(id: number, method: string, params: unknown): EncodedCommand {
  const p = typeof params === 'object' && params !== null ? (params as Params) : {};
  const request = Object.prototype.hasOwnProperty.call(requests, method) ? (requests[method] as (p: Params) => RequestWriter)(p) : unknownMethod;
  const write: CommandWriter = (b) => {
    const [type, table] = request(b);
    return fb.Command.createCommand(b, id, type, table);
  };
  return write as unknown as EncodedCommand;
}

function frame(commands: readonly EncodedCommand[]): Uint8Array {
  const b = new Builder(256);
  const offsets = (commands as unknown as readonly CommandWriter[]).map((write) => write(b));
  const vector = fb.ClientFrame.createCommandsVector(b, offsets);
  b.finish(fb.ClientFrame.createClientFrame(b, vector));
  return b.asUint8Array();
}

// ---------------------------------------------------------------- decoding

const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** Bytes as the JSON form shows them: `{data}` when they are JSON text, else `{b64data}`. */
function payload(v: Uint8Array | null): { data: unknown } | { b64data: string } {
  const b = v ?? new Uint8Array(0);
  try {
    return { data: JSON.parse(strictUtf8.decode(b)) as unknown };
  } catch {
    return { b64data: encodeBase64(b) };
  }
}

/** Bytes the protocol says are JSON text (client info, section data): their value, or undefined when absent. */
function json(v: Uint8Array | null, what: string): unknown {
  if (v === null) return undefined;
  try {
    return JSON.parse(strictUtf8.decode(v)) as unknown;
  } catch {
    throw new FrameError(`${what} is not JSON text`);
  }
}

function num(v: bigint | number | null): number {
  return v === null ? 0 : Number(v);
}

function text(v: string | null): string {
  return v ?? '';
}

/** Items `0..length` of a FlatBuffers vector. */
function list<T, R>(length: number, at: (i: number) => T | null, map: (item: T) => R): R[] {
  const out: R[] = [];
  for (let i = 0; i < length; i++) {
    const item = at(i);
    if (item !== null) out.push(map(item));
  }
  return out;
}

function publication(p: fb.Publication): Record<string, unknown> {
  return { offset: num(p.offset()), ...payload(p.dataArray()) };
}

function clientInfo(i: fb.ClientInfo | null): Record<string, unknown> {
  const out: Record<string, unknown> = { user: text(i?.user() ?? null), client: text(i?.client() ?? null) };
  const info = json(i?.infoArray() ?? null, 'client info');
  if (info !== undefined) out.info = info;
  return out;
}

function holder(h: fb.Holder): Record<string, unknown> {
  return { user: text(h.user()), client: text(h.client()) };
}

function role(r: fb.CollabRole | null): string {
  return r === fb.CollabRole.Editor ? 'editor' : r === fb.CollabRole.Viewer ? 'viewer' : 'queued';
}

function expiry(expires: boolean, ttl: number): Record<string, unknown> {
  return expires ? { expires, ttl } : { expires };
}

function subscribeResult(r: fb.SubscribeResult): Record<string, unknown> {
  return {
    epoch: text(r.epoch()),
    offset: num(r.offset()),
    recoverable: r.recoverable(),
    recovered: r.recovered(),
    publications: list(r.publicationsLength(), (i) => r.publications(i), publication),
  };
}

/** Whether a table has the field in vtable slot `slot` (generated readers cannot tell an empty vector from an absent one). */
function has(t: { bb: ByteBuffer | null; bb_pos: number }, slot: number): boolean {
  return t.bb !== null && t.bb.__offset(t.bb_pos, 4 + 2 * slot) !== 0;
}

function collabJoinResult(r: fb.CollabJoinResult): Record<string, unknown> {
  const sections: Record<string, unknown> = {};
  for (let i = 0; i < r.sectionsLength(); i++) {
    const sec = r.sections(i);
    if (!sec) continue;
    const body: Record<string, unknown> = { version: num(sec.version()), data: json(sec.dataArray(), 'section data') };
    const h = sec.holder();
    if (h) body.holder = holder(h);
    sections[text(sec.id())] = body;
  }
  const out: Record<string, unknown> = { role: role(r.role()) };
  const position = r.position();
  if (position !== null) out.position = position;
  out.editors = list(r.editorsLength(), (i) => r.editors(i), clientInfo);
  out.viewers = r.viewers();
  out.queued = r.queued();
  out.sections = sections;
  out.epoch = text(r.epoch());
  out.offset = num(r.offset());
  if (has(r, 8)) {
    // `publications` is set only when the join asked to recover.
    out.recovered = r.recovered();
    out.publications = list(r.publicationsLength(), (i) => r.publications(i), publication);
  }
  return out;
}

/** Reply result decoders by union member: the JSON form's method name and result object. */
const results: Partial<Record<fb.ReplyResult, [string, (r: fb.Reply) => unknown]>> = {
  [fb.ReplyResult.Connect]: [
    'connect',
    (r) => {
      const c = r.result(new fb.ConnectResult()) as fb.ConnectResult;
      const out = { client: text(c.client()), node: text(c.node()), ping: c.ping(), user: text(c.user()) };
      return { ...out, ...expiry(c.expires(), c.ttl()) };
    },
  ],
  [fb.ReplyResult.Subscribe]: ['subscribe', (r) => subscribeResult(r.result(new fb.SubscribeResult()) as fb.SubscribeResult)],
  [fb.ReplyResult.Unsubscribe]: ['unsubscribe', () => ({})],
  [fb.ReplyResult.Publish]: ['publish', (r) => ({ offset: num((r.result(new fb.PublishResult()) as fb.PublishResult).offset()) })],
  [fb.ReplyResult.Ping]: ['ping', () => ({})],
  [fb.ReplyResult.History]: [
    'history',
    (r) => {
      const h = r.result(new fb.HistoryResult()) as fb.HistoryResult;
      return {
        publications: list(h.publicationsLength(), (i) => h.publications(i), publication),
        epoch: text(h.epoch()),
        offset: num(h.offset()),
      };
    },
  ],
  [fb.ReplyResult.Presence]: [
    'presence',
    (r) => {
      const p = r.result(new fb.PresenceResult()) as fb.PresenceResult;
      const clients: Record<string, unknown> = {};
      for (let i = 0; i < p.clientsLength(); i++) {
        const e = p.clients(i);
        if (!e) continue;
        const entry = clientInfo(e.info());
        const state = e.state();
        if (state !== null) entry.state = state;
        clients[text(e.client())] = entry;
      }
      return { clients };
    },
  ],
  [fb.ReplyResult.PresenceStats]: [
    'presence_stats',
    (r) => {
      const p = r.result(new fb.PresenceStatsResult()) as fb.PresenceStatsResult;
      return { num_clients: num(p.numClients()), num_users: num(p.numUsers()) };
    },
  ],
  [fb.ReplyResult.PresenceState]: ['presence_state', () => ({})],
  [fb.ReplyResult.Refresh]: [
    'refresh',
    (r) => {
      const x = r.result(new fb.RefreshResult()) as fb.RefreshResult;
      return expiry(x.expires(), x.ttl());
    },
  ],
  [fb.ReplyResult.SubRefresh]: [
    'sub_refresh',
    (r) => {
      const x = r.result(new fb.RefreshResult()) as fb.RefreshResult;
      return expiry(x.expires(), x.ttl());
    },
  ],
  [fb.ReplyResult.CollabJoin]: ['collab_join', (r) => collabJoinResult(r.result(new fb.CollabJoinResult()) as fb.CollabJoinResult)],
  [fb.ReplyResult.CollabLeave]: ['collab_leave', () => ({})],
  [fb.ReplyResult.Lock]: [
    'lock',
    (r) => {
      const l = r.result(new fb.LockResult()) as fb.LockResult;
      const h = l.holder();
      return { section: text(l.section()), holder: h ? holder(h) : null, expires: num(l.expires()) };
    },
  ],
  [fb.ReplyResult.Unlock]: ['unlock', () => ({})],
  [fb.ReplyResult.Update]: [
    'update',
    (r) => {
      const u = r.result(new fb.UpdateResult()) as fb.UpdateResult;
      return u.duplicate() ? { version: num(u.version()), duplicate: true } : { version: num(u.version()) };
    },
  ],
  [fb.ReplyResult.Rpc]: ['rpc', (r) => payload((r.result(new fb.RpcResult()) as fb.RpcResult).dataArray())],
  [fb.ReplyResult.Send]: ['send', () => ({})],
};

/** Push body decoders by union member: the JSON form's push type and body. */
const pushes: Partial<Record<fb.PushBody, [string, (p: fb.Push) => unknown]>> = {
  [fb.PushBody.Pub]: ['pub', (p) => publication(p.body(new fb.Publication()) as fb.Publication)],
  [fb.PushBody.Disconnect]: [
    'disconnect',
    (p) => {
      const d = p.body(new fb.Disconnect()) as fb.Disconnect;
      return { code: d.code(), reason: text(d.reason()), reconnect: d.reconnect() };
    },
  ],
  [fb.PushBody.Join]: ['join', (p) => ({ info: clientInfo((p.body(new fb.Join()) as fb.Join).info()) })],
  [fb.PushBody.Leave]: ['leave', (p) => ({ info: clientInfo((p.body(new fb.Leave()) as fb.Leave).info()) })],
  [fb.PushBody.State]: [
    'state',
    (p) => {
      const st = p.body(new fb.State()) as fb.State;
      return { info: clientInfo(st.info()), state: text(st.state()) };
    },
  ],
  [fb.PushBody.Subscribe]: ['subscribe', (p) => subscribeResult(p.body(new fb.SubscribeResult()) as fb.SubscribeResult)],
  [fb.PushBody.Unsubscribe]: ['unsubscribe', () => ({})],
  [fb.PushBody.Promoted]: ['promoted', (p) => ({ role: role((p.body(new fb.Promoted()) as fb.Promoted).role()) })],
  [fb.PushBody.Queue]: ['queue', (p) => ({ position: (p.body(new fb.Queue()) as fb.Queue).position() })],
  [fb.PushBody.Conflict]: [
    'conflict',
    (p) => {
      const c = p.body(new fb.Conflict()) as fb.Conflict;
      return {
        section: text(c.section()),
        version: num(c.version()),
        overwritten: json(c.overwrittenArray(), 'overwritten data'),
        by: clientInfo(c.by()),
      };
    },
  ],
};

function errorBody(e: fb.Error): ErrorBody {
  const body: ErrorBody = { code: e.code(), message: text(e.message()), temporary: e.temporary() };
  const h = e.holder();
  if (h) body.holder = holder(h);
  const version = e.version();
  if (version !== null) body.version = Number(version);
  const data = json(e.dataArray(), 'error data');
  if (data !== undefined) body.data = data;
  return body;
}

function message(m: fb.ServerMessage): ServerMessage {
  const reply = m.reply();
  if (reply) {
    const id = reply.id();
    const error = reply.error();
    if (error) return { kind: 'error', id, error: errorBody(error) };
    const type = reply.resultType();
    const decoder = results[type];
    // A result type from a newer server: still settles the command, with no fields.
    if (!decoder) {
      if (type === fb.ReplyResult.NONE) throw new FrameError('a reply with neither result nor error');
      return { kind: 'reply', id, method: '', result: {} };
    }
    return { kind: 'reply', id, method: decoder[0], result: decoder[1](reply) };
  }
  const push = m.push();
  if (push) {
    const channel = push.channel();
    const decoder = pushes[push.bodyType()];
    if (!decoder) {
      if (push.bodyType() === fb.PushBody.NONE) throw new FrameError('a push without a body');
      // A push type from a newer server: ignored above the codec.
      return { kind: 'push', channel: channel || undefined, type: `unknown:${push.bodyType()}`, body: {} };
    }
    return { kind: 'push', channel: channel || undefined, type: decoder[0], body: decoder[1](push) };
  }
  throw new FrameError('a message with neither reply nor push');
}

function decode(data: IncomingFrame): ServerMessage[] {
  if (typeof data === 'string') throw new FrameError('a text frame on a binary connection');
  const buf = ArrayBuffer.isView(data) ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength) : new Uint8Array(data);
  if (buf.byteLength < 8) throw new FrameError(`a binary frame of ${buf.byteLength} bytes`);
  try {
    const frame = fb.ServerFrame.getRootAsServerFrame(new ByteBuffer(buf));
    const n = frame.messagesLength();
    if (n === 0) throw new FrameError('a ServerFrame without messages');
    return list(n, (i) => frame.messages(i), message);
  } catch (err) {
    // The TypeScript runtime has no verifier: a broken buffer shows up as a failed read.
    if (err instanceof FrameError) throw err;
    throw new FrameError(`not a ServerFrame: ${err instanceof Error ? err.message : String(err)}`);
  }
}

/** The FlatBuffers form: binary frames, `ClientFrame` out, `ServerFrame` in. */
export const binaryCodec: Codec<Uint8Array> = {
  format: 'binary',
  subprotocol: BINARY_SUBPROTOCOL,
  encode,
  frame,
  decode,
};
