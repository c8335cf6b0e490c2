/**
 * The server's side of the binary form, for tests: reads a `ClientFrame`
 * into JSON-shaped commands, and writes JSON-form server messages (the
 * objects a JSON frame holds) as a `ServerFrame`, as wsedge does
 * (src/engine/wire/binary.rs). Written against the generated tables
 * directly, independently of the client's codec.
 */
import * as fb from '../../src/fb/wsedge/proto.js';
import { Builder, ByteBuffer } from '../../src/vendor/flatbuffers/flatbuffers.js';

type Obj = Record<string, unknown>;

/** A command as the server reads it: `{id, method, params}` with JSON-shaped params. */
export interface DecodedCommand {
  id: number;
  method: string;
  params: Obj;
}

const enc = new TextEncoder();
const dec = new TextDecoder();

/** JSON `null` in a field, told apart from an absent field (which the generated readers give as `null`). */
const JSON_NULL = Symbol('JSON null');

function jsonOf(bytes: Uint8Array | null): unknown {
  if (bytes === null) return undefined;
  const v = JSON.parse(dec.decode(bytes)) as unknown;
  return v === null ? JSON_NULL : v;
}

/** Copies the present entries only (absent fields stay absent). */
function defined(o: Obj): Obj {
  const out: Obj = {};
  for (const [k, v] of Object.entries(o)) {
    if (v === JSON_NULL) out[k] = null;
    else if (v !== undefined && v !== null) out[k] = v;
  }
  return out;
}

const n = (v: bigint | null): number | undefined => (v === null ? undefined : Number(v));
const flag = (v: boolean): true | undefined => (v ? true : undefined);

/** Reads every command of a binary client frame. */
export function decodeClientFrame(bytes: Uint8Array): DecodedCommand[] {
  const frame = fb.ClientFrame.getRootAsClientFrame(new ByteBuffer(bytes));
  const out: DecodedCommand[] = [];
  for (let i = 0; i < frame.commandsLength(); i++) {
    const c = frame.commands(i) as fb.Command;
    out.push({ id: c.id(), ...method(c) });
  }
  return out;
}

function method(c: fb.Command): { method: string; params: Obj } {
  const M = fb.Method;
  switch (c.methodType()) {
    case M.Connect: {
      const r = c.method(new fb.ConnectRequest()) as fb.ConnectRequest;
      const params = { token: r.token(), name: r.name(), version: r.version(), user: r.user(), info: jsonOf(r.infoArray()), ticket: r.ticket() };
      return { method: 'connect', params: defined(params) };
    }
    case M.Subscribe: {
      const r = c.method(new fb.SubscribeRequest()) as fb.SubscribeRequest;
      const params = { channel: r.channel(), recover: flag(r.recover()), epoch: r.epoch(), offset: n(r.offset()), token: r.token() };
      return { method: 'subscribe', params: defined(params) };
    }
    case M.Unsubscribe:
      return { method: 'unsubscribe', params: defined({ channel: (c.method(new fb.UnsubscribeRequest()) as fb.UnsubscribeRequest).channel() }) };
    case M.Publish: {
      const r = c.method(new fb.PublishRequest()) as fb.PublishRequest;
      const params = { channel: r.channel(), data: jsonOf(r.dataArray()), idempotency_key: r.idempotencyKey(), durable_ack: flag(r.durableAck()) };
      return { method: 'publish', params: defined(params) };
    }
    case M.Ping:
      return { method: 'ping', params: {} };
    case M.History: {
      const r = c.method(new fb.HistoryRequest()) as fb.HistoryRequest;
      const since = r.since();
      const params = {
        channel: r.channel(),
        limit: r.limit(),
        since: since ? defined({ epoch: since.epoch(), offset: n(since.offset()) }) : undefined,
        reverse: flag(r.reverse()),
      };
      return { method: 'history', params: defined(params) };
    }
    case M.Presence:
      return { method: 'presence', params: defined({ channel: (c.method(new fb.PresenceRequest()) as fb.PresenceRequest).channel() }) };
    case M.PresenceStats:
      return {
        method: 'presence_stats',
        params: defined({ channel: (c.method(new fb.PresenceStatsRequest()) as fb.PresenceStatsRequest).channel() }),
      };
    case M.PresenceState: {
      const r = c.method(new fb.PresenceStateRequest()) as fb.PresenceStateRequest;
      return { method: 'presence_state', params: defined({ channel: r.channel(), state: r.state(), ttl: r.ttl() }) };
    }
    case M.Refresh:
      return { method: 'refresh', params: defined({ token: (c.method(new fb.RefreshRequest()) as fb.RefreshRequest).token() }) };
    case M.SubRefresh: {
      const r = c.method(new fb.SubRefreshRequest()) as fb.SubRefreshRequest;
      return { method: 'sub_refresh', params: defined({ channel: r.channel(), token: r.token() }) };
    }
    case M.CollabJoin: {
      const r = c.method(new fb.CollabJoinRequest()) as fb.CollabJoinRequest;
      const role = r.role();
      const params = {
        channel: r.channel(),
        role: role === null ? undefined : role === fb.CollabRole.Editor ? 'editor' : role === fb.CollabRole.Viewer ? 'viewer' : 'queued',
        queue: flag(r.queue()),
        recover: flag(r.recover()),
        epoch: r.epoch(),
        offset: n(r.offset()),
      };
      return { method: 'collab_join', params: defined(params) };
    }
    case M.CollabLeave:
      return { method: 'collab_leave', params: defined({ channel: (c.method(new fb.CollabLeaveRequest()) as fb.CollabLeaveRequest).channel() }) };
    case M.Lock: {
      const r = c.method(new fb.LockRequest()) as fb.LockRequest;
      return { method: 'lock', params: defined({ channel: r.channel(), section: r.section(), ttl: r.ttl() }) };
    }
    case M.Unlock: {
      const r = c.method(new fb.UnlockRequest()) as fb.UnlockRequest;
      return { method: 'unlock', params: defined({ channel: r.channel(), section: r.section() }) };
    }
    case M.Update: {
      const r = c.method(new fb.UpdateRequest()) as fb.UpdateRequest;
      const params = { channel: r.channel(), section: r.section(), base_version: n(r.baseVersion()), data: jsonOf(r.dataArray()), op_id: r.opId() };
      return { method: 'update', params: defined(params) };
    }
    case M.Rpc: {
      const r = c.method(new fb.RpcRequest()) as fb.RpcRequest;
      return { method: 'rpc', params: defined({ method: r.method(), data: jsonOf(r.dataArray()) }) };
    }
    case M.Send:
      return { method: 'send', params: defined({ data: jsonOf((c.method(new fb.SendRequest()) as fb.SendRequest).dataArray()) }) };
    default:
      return { method: `unknown:${c.methodType()}`, params: {} };
  }
}

// ---------------------------------------------------------------- server frames

const o = (v: unknown): Obj => (v ?? {}) as Obj;
const u64 = (v: unknown): bigint => BigInt((v as number | undefined) ?? 0);
const str = (b: Builder, v: unknown): number => (typeof v === 'string' ? b.createString(v) : 0);

/** A JSON-form payload as bytes: `data` as its JSON text, `b64data` decoded. */
function payloadBytes(b: Builder, p: Obj): number {
  if (typeof p.b64data === 'string') return b.createByteVector(Uint8Array.from(atob(p.b64data), (ch) => ch.charCodeAt(0)));
  return b.createByteVector(enc.encode(JSON.stringify(p.data)));
}

function jsonBytes(b: Builder, v: unknown): number {
  return v === undefined ? 0 : b.createByteVector(enc.encode(JSON.stringify(v)));
}

function publications(b: Builder, list: unknown): number {
  const offs = ((list ?? []) as Obj[]).map((p) => {
    const data = payloadBytes(b, p);
    return fb.Publication.createPublication(b, u64(p.offset), data);
  });
  return vector(b, offs);
}

function vector(b: Builder, offs: number[]): number {
  b.startVector(4, offs.length, 4);
  for (let i = offs.length - 1; i >= 0; i--) b.addOffset(offs[i] as number);
  return b.endVector();
}

function clientInfo(b: Builder, i: Obj): number {
  const client = str(b, i.client);
  const user = str(b, i.user);
  const info = jsonBytes(b, i.info);
  return fb.ClientInfo.createClientInfo(b, client, user, info);
}

function holder(b: Builder, h: Obj): number {
  return fb.Holder.createHolder(b, str(b, h.user), str(b, h.client));
}

function subscribeResult(b: Builder, r: Obj): number {
  const epoch = str(b, r.epoch);
  const pubs = publications(b, r.publications);
  return fb.SubscribeResult.createSubscribeResult(b, epoch, u64(r.offset), r.recoverable === true, r.recovered === true, pubs);
}

function role(r: unknown): fb.CollabRole {
  return r === 'editor' ? fb.CollabRole.Editor : r === 'viewer' ? fb.CollabRole.Viewer : fb.CollabRole.Queued;
}

/** Reply result writers by JSON method name. */
const results: Record<string, [fb.ReplyResult, (b: Builder, r: Obj) => number]> = {
  connect: [
    fb.ReplyResult.Connect,
    (b, r) => fb.ConnectResult.createConnectResult(b, str(b, r.client), str(b, r.node), Number(r.ping ?? 0), str(b, r.user), r.expires === true, Number(r.ttl ?? 0)),
  ],
  subscribe: [fb.ReplyResult.Subscribe, subscribeResult],
  unsubscribe: [fb.ReplyResult.Unsubscribe, (b) => fb.UnsubscribeResult.createUnsubscribeResult(b)],
  publish: [fb.ReplyResult.Publish, (b, r) => fb.PublishResult.createPublishResult(b, u64(r.offset))],
  ping: [fb.ReplyResult.Ping, (b) => fb.PingResult.createPingResult(b)],
  history: [
    fb.ReplyResult.History,
    (b, r) => {
      const epoch = str(b, r.epoch);
      const pubs = publications(b, r.publications);
      return fb.HistoryResult.createHistoryResult(b, epoch, u64(r.offset), pubs);
    },
  ],
  presence: [
    fb.ReplyResult.Presence,
    (b, r) => {
      const entries = Object.entries(o(r.clients)).sort(([a], [c]) => (a < c ? -1 : a > c ? 1 : 0));
      const offs = entries.map(([id, e]) => {
        const entry = o(e);
        const client = str(b, id);
        const info = clientInfo(b, entry);
        const state = str(b, entry.state);
        fb.PresenceEntry.startPresenceEntry(b);
        fb.PresenceEntry.addClient(b, client);
        fb.PresenceEntry.addInfo(b, info);
        fb.PresenceEntry.addState(b, state);
        return fb.PresenceEntry.endPresenceEntry(b);
      });
      return fb.PresenceResult.createPresenceResult(b, vector(b, offs));
    },
  ],
  presence_stats: [
    fb.ReplyResult.PresenceStats,
    (b, r) => fb.PresenceStatsResult.createPresenceStatsResult(b, u64(r.num_clients), u64(r.num_users)),
  ],
  presence_state: [fb.ReplyResult.PresenceState, (b) => fb.PresenceStateResult.createPresenceStateResult(b)],
  refresh: [fb.ReplyResult.Refresh, (b, r) => fb.RefreshResult.createRefreshResult(b, r.expires === true, Number(r.ttl ?? 0))],
  sub_refresh: [fb.ReplyResult.SubRefresh, (b, r) => fb.RefreshResult.createRefreshResult(b, r.expires === true, Number(r.ttl ?? 0))],
  collab_join: [
    fb.ReplyResult.CollabJoin,
    (b, r) => {
      const editors = vector(b, ((r.editors ?? []) as Obj[]).map((e) => clientInfo(b, e)));
      const sectionOffs = Object.entries(o(r.sections))
        .sort(([a], [c]) => (a < c ? -1 : a > c ? 1 : 0))
        .map(([id, sec]) => {
          const s = o(sec);
          const idOff = str(b, id);
          const data = jsonBytes(b, s.data);
          const h = s.holder ? holder(b, o(s.holder)) : 0;
          fb.CollabSection.startCollabSection(b);
          fb.CollabSection.addId(b, idOff);
          fb.CollabSection.addVersion(b, u64(s.version));
          fb.CollabSection.addData(b, data);
          fb.CollabSection.addHolder(b, h);
          return fb.CollabSection.endCollabSection(b);
        });
      const sections = vector(b, sectionOffs);
      const epoch = str(b, r.epoch);
      const pubs = r.publications === undefined ? 0 : publications(b, r.publications);
      const position = typeof r.position === 'number' ? r.position : null;
      return fb.CollabJoinResult.createCollabJoinResult(
        b,
        role(r.role),
        position,
        editors,
        Number(r.viewers ?? 0),
        sections,
        u64(r.offset),
        epoch,
        r.recovered === true,
        pubs,
        Number(r.queued ?? 0),
      );
    },
  ],
  collab_leave: [fb.ReplyResult.CollabLeave, (b) => fb.CollabLeaveResult.createCollabLeaveResult(b)],
  lock: [
    fb.ReplyResult.Lock,
    (b, r) => {
      const section = str(b, r.section);
      const h = r.holder ? holder(b, o(r.holder)) : 0;
      fb.LockResult.startLockResult(b);
      fb.LockResult.addSection(b, section);
      fb.LockResult.addHolder(b, h);
      fb.LockResult.addExpires(b, u64(r.expires));
      return fb.LockResult.endLockResult(b);
    },
  ],
  unlock: [fb.ReplyResult.Unlock, (b) => fb.UnlockResult.createUnlockResult(b)],
  update: [fb.ReplyResult.Update, (b, r) => fb.UpdateResult.createUpdateResult(b, u64(r.version), r.duplicate === true)],
  rpc: [fb.ReplyResult.Rpc, (b, r) => fb.RpcResult.createRpcResult(b, payloadBytes(b, r))],
  send: [fb.ReplyResult.Send, (b) => fb.SendResult.createSendResult(b)],
};

/** Push body writers by JSON push type. */
const pushes: Record<string, [fb.PushBody, (b: Builder, body: Obj) => number]> = {
  pub: [fb.PushBody.Pub, (b, p) => fb.Publication.createPublication(b, u64(p.offset), payloadBytes(b, p))],
  disconnect: [
    fb.PushBody.Disconnect,
    (b, d) => fb.Disconnect.createDisconnect(b, Number(d.code ?? 0), str(b, d.reason), d.reconnect === true),
  ],
  join: [fb.PushBody.Join, (b, j) => fb.Join.createJoin(b, clientInfo(b, o(j.info)))],
  leave: [fb.PushBody.Leave, (b, l) => fb.Leave.createLeave(b, clientInfo(b, o(l.info)))],
  state: [
    fb.PushBody.State,
    (b, s) => {
      const info = clientInfo(b, o(s.info));
      return fb.State.createState(b, info, str(b, s.state));
    },
  ],
  subscribe: [fb.PushBody.Subscribe, subscribeResult],
  unsubscribe: [fb.PushBody.Unsubscribe, (b) => fb.UnsubscribeResult.createUnsubscribeResult(b)],
  promoted: [fb.PushBody.Promoted, (b, p) => fb.Promoted.createPromoted(b, role(p.role))],
  queue: [fb.PushBody.Queue, (b, q) => fb.Queue.createQueue(b, Number(q.position ?? 0))],
  conflict: [
    fb.PushBody.Conflict,
    (b, c) => {
      const section = str(b, c.section);
      const overwritten = jsonBytes(b, c.overwritten);
      const by = clientInfo(b, o(c.by));
      fb.Conflict.startConflict(b);
      fb.Conflict.addSection(b, section);
      fb.Conflict.addVersion(b, u64(c.version));
      fb.Conflict.addOverwritten(b, overwritten);
      fb.Conflict.addBy(b, by);
      return fb.Conflict.endConflict(b);
    },
  ],
};

function serverMessage(b: Builder, m: Obj): number {
  if (m.push !== undefined) {
    const push = o(m.push);
    const type = Object.keys(push).find((k) => k !== 'channel') as string;
    const writer = pushes[type];
    if (!writer) throw new Error(`no binary push type ${type}`);
    const channel = str(b, push.channel);
    const body = writer[1](b, o(push[type]));
    const p = fb.Push.createPush(b, channel, writer[0], body);
    fb.ServerMessage.startServerMessage(b);
    fb.ServerMessage.addPush(b, p);
    return fb.ServerMessage.endServerMessage(b);
  }
  const id = Number(m.id ?? 0);
  let reply: number;
  if (m.error !== undefined) {
    const e = o(m.error);
    const message = str(b, e.message);
    const h = e.holder ? holder(b, o(e.holder)) : 0;
    const data = jsonBytes(b, e.data);
    fb.Error.startError(b);
    fb.Error.addCode(b, Number(e.code ?? 0));
    fb.Error.addMessage(b, message);
    fb.Error.addTemporary(b, e.temporary === true);
    fb.Error.addHolder(b, h);
    if (typeof e.version === 'number') fb.Error.addVersion(b, BigInt(e.version));
    fb.Error.addData(b, data);
    const error = fb.Error.endError(b);
    fb.Reply.startReply(b);
    fb.Reply.addId(b, id);
    fb.Reply.addError(b, error);
    reply = fb.Reply.endReply(b);
  } else {
    const method = Object.keys(m).find((k) => k !== 'id') as string;
    const writer = results[method];
    if (!writer) throw new Error(`no binary result for ${method}`);
    const result = writer[1](b, o(m[method]));
    fb.Reply.startReply(b);
    fb.Reply.addId(b, id);
    fb.Reply.addResultType(b, writer[0]);
    fb.Reply.addResult(b, result);
    reply = fb.Reply.endReply(b);
  }
  fb.ServerMessage.startServerMessage(b);
  fb.ServerMessage.addReply(b, reply);
  return fb.ServerMessage.endServerMessage(b);
}

/**
 * Writes JSON-form server messages (`{id, <method>: result}`, `{id, error}`,
 * `{push: {channel, <type>: body}}`) as one binary `ServerFrame`.
 */
export function encodeServerFrame(messages: readonly unknown[]): Uint8Array<ArrayBuffer> {
  const b = new Builder(256);
  const offs = messages.map((m) => serverMessage(b, o(m)));
  const list = fb.ServerFrame.createMessagesVector(b, offs);
  b.finish(fb.ServerFrame.createServerFrame(b, list));
  return b.asUint8Array().slice();
}

/** A client frame with one `publish` of raw bytes (what a binary client that is not this SDK may publish). */
export function publishBytesFrame(id: number, channel: string, data: Uint8Array): Uint8Array {
  const b = new Builder(64);
  const ch = b.createString(channel);
  const bytes = b.createByteVector(data);
  const req = fb.PublishRequest.createPublishRequest(b, ch, bytes, 0, false);
  const cmd = fb.Command.createCommand(b, id, fb.Method.Publish, req);
  b.finish(fb.ClientFrame.createClientFrame(b, fb.ClientFrame.createCommandsVector(b, [cmd])));
  return b.asUint8Array().slice();
}
