/**
 * wsedge's wire protocol v1 (docs/PROTOCOL.md) as the client sees it: the
 * subprotocols, the JSON form's encoding, the command parameters and
 * results, pushes, error and close codes. Field names here are the
 * contract and follow the server's JSON form; the binary codec decodes
 * into the same shapes.
 */

/** The subprotocol of the JSON form: text frames, `\n`-separated objects. */
export const SUBPROTOCOL = 'edu-matrix-v1.json';

/** The subprotocol of the binary form: binary frames, one FlatBuffers `ClientFrame` / `ServerFrame` each. */
export const BINARY_SUBPROTOCOL = 'edu-matrix-v1';

/** Command id reserved by the server for subscriptions it makes itself. */
export const SERVER_COMMAND_ID = 0xffff_ffff;

/** Error codes of command replies (docs/PROTOCOL.md, "Error codes"). */
export const ErrorCode = {
  internal: 100,
  unauthorized: 101,
  unknownChannel: 102,
  permissionDenied: 103,
  unknownMethod: 104,
  alreadySubscribed: 105,
  limitExceeded: 106,
  badRequest: 107,
  notSubscribed: 108,
  invalidChannel: 109,
  notConnected: 110,
  alreadyConnected: 111,
  overloaded: 112,
  shuttingDown: 113,
  tooManyRequests: 114,
  unrecoverablePosition: 115,
  tokenExpired: 116,
  editorsFull: 117,
  sectionLocked: 118,
  versionConflict: 119,
  notAnEditor: 120,
  storyLimit: 121,
  notCollaborative: 122,
  durableNotConfirmed: 123,
  rpcTimeout: 124,
  noResponders: 125,
  rpcError: 126,
  rpcNotConfigured: 127,
} as const;

/** Close codes the server sends (docs/PROTOCOL.md, "Close codes"). */
export const CloseCode = {
  normal: 1000,
  goingAway: 1001,
  protocolError: 1002,
  unsupportedData: 1003,
  abnormal: 1006,
  invalidPayload: 1007,
  messageTooBig: 1009,
  internalError: 1011,
  shutdown: 3001,
  slowConsumer: 3002,
  noPong: 3003,
  insufficientState: 3004,
  serverOverloaded: 3005,
  disconnected: 3006,
  tokenExpired: 3007,
  connectTimeout: 3008,
  badRequest: 3501,
  invalidToken: 3502,
  tooManyRequests: 3503,
  connectionLimit: 3504,
} as const;

/**
 * Codes the client reports in `disconnected` events for reasons it found
 * itself (no close frame from the server says them). They are below 100,
 * so they never collide with a WebSocket close code or with the error code
 * of a refused `connect` (reported as is).
 */
export const LocalCode = {
  /** `disconnect()` was called. */
  disconnectCalled: 0,
  /** A command (connect, subscribe, publish, refresh, ping) got no reply in time. */
  timeout: 1,
  /** The server sent something that is not the protocol. */
  badProtocol: 2,
  /**
   * `getToken` failed (retried with backoff), threw an {@link UnauthorizedError}
   * or a token expired with no `getToken` to renew it (both final).
   */
  unauthorized: 3,
  /**
   * The client left the SSE fallback for a WebSocket that opened (it
   * reconnects at once, and subscriptions recover).
   */
  transportSwitch: 4,
} as const;

/**
 * Whether a close code tells the client to reconnect: 3000–3499 and
 * 4000–4499 do, 3500–3999 and 4500–4999 do not; of the standard codes,
 * framing and payload errors (1002, 1003, 1007, 1009) do not, everything
 * else (1001 going away, 1006 vanished peer, 1011, …) does.
 */
export function closeCodeReconnects(code: number): boolean {
  if (code === 1002 || code === 1003 || code === 1007 || code === 1009) return false;
  if (code >= 3500 && code <= 3999) return false;
  if (code >= 4500 && code <= 4999) return false;
  return true;
}

/** A JSON value as it travels on the wire. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** A position in a channel's stream. */
export interface StreamPosition {
  /** 16 hex characters; changes when the channel's history is lost. */
  epoch: string;
  /** The last offset seen (offsets start at 1, +1 per publication). */
  offset: number;
}

/** `connect` parameters. */
export interface ConnectParams {
  token?: string;
  ticket?: string;
  name?: string;
  version?: string;
  user?: string;
  info?: unknown;
}

/** `connect` result. */
export interface ConnectResult {
  /** The connection's id, unique on the node. */
  client: string;
  /** The node's name. */
  node: string;
  /** The server's ping interval in seconds. */
  ping: number;
  /** The connection's user id (`""` when anonymous). */
  user: string;
  /** Whether the credentials expire. */
  expires: boolean;
  /** Seconds left to `refresh` when they do. */
  ttl?: number;
}

/** `refresh` / `sub_refresh` result. */
export interface RefreshResult {
  expires: boolean;
  ttl?: number;
}

/** A publication as the server encodes it (reply lists and `pub` pushes). */
export interface WirePublication {
  offset: number;
  data?: unknown;
  b64data?: string;
}

/** `subscribe` result, and the body of a `subscribe` push. */
export interface SubscribeResult {
  epoch: string;
  offset: number;
  recoverable: boolean;
  recovered: boolean;
  publications: WirePublication[];
}

/** `publish` result. */
export interface PublishResult {
  /** The publication's offset in its channel. */
  offset: number;
}

/** `history` result. */
export interface WireHistoryResult {
  publications: WirePublication[];
  epoch: string;
  offset: number;
}

/** Who a connection is, in presence answers and join/leave pushes. */
export interface ClientInfo {
  user: string;
  client: string;
  /** The JSON value the client gave at `connect`, if any. */
  info?: unknown;
}

/** One member in a `presence` answer. */
export interface PresenceEntry extends ClientInfo {
  /** The member's presence state (`presence_state`), when set. */
  state?: string;
}

/** `presence` result: members by client id. */
export interface PresenceResult {
  clients: Record<string, PresenceEntry>;
}

/** `presence_stats` result. */
export interface PresenceStatsResult {
  num_clients: number;
  num_users: number;
}

/** `rpc` result: the backend's reply, as JSON or as base64 bytes. */
export interface WireRpcResult {
  data?: unknown;
  b64data?: string;
}

/** The body of an error reply. */
export interface ErrorBody {
  code: number;
  message: string;
  temporary: boolean;
  /** Extra fields some errors carry (118: `holder`; 119: `version`, `data`). */
  [extra: string]: unknown;
}

/** The body of a `disconnect` push. */
export interface DisconnectPush {
  code: number;
  reason: string;
  reconnect: boolean;
}

/** One object the server sent, classified. */
export type ServerMessage =
  | { kind: 'reply'; id: number; method: string; result: unknown }
  | { kind: 'error'; id: number; error: ErrorBody }
  | { kind: 'push'; channel: string | undefined; type: string; body: unknown };

/** A command as sent: `{"id": N, "<method>": {params}}`. */
export function encodeCommand(id: number, method: string, params: unknown): string {
  return JSON.stringify({ id, [method]: params ?? {} });
}

/** Thrown by {@link parseFrame} for text that is not the JSON protocol. */
export class FrameError extends Error {
  override readonly name = 'FrameError';
}

/**
 * Splits one text frame into its `\n`-separated objects and classifies
 * each. Throws {@link FrameError} on anything that is not the protocol.
 */
export function parseFrame(text: string): ServerMessage[] {
  const out: ServerMessage[] = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch {
      throw new FrameError(`not JSON: ${line.slice(0, 200)}`);
    }
    out.push(classify(value));
  }
  return out;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function classify(value: unknown): ServerMessage {
  if (!isObject(value)) throw new FrameError('a line that is not a JSON object');
  if (isObject(value.push)) {
    const push = value.push;
    const channel = typeof push.channel === 'string' ? push.channel : undefined;
    const keys = Object.keys(push).filter((k) => k !== 'channel');
    if (keys.length !== 1) throw new FrameError(`push with ${keys.length} bodies`);
    const type = keys[0] as string;
    return { kind: 'push', channel, type, body: push[type] };
  }
  const id = typeof value.id === 'number' ? value.id : 0;
  if (isObject(value.error)) {
    const e = value.error;
    const error: ErrorBody = {
      ...e,
      code: typeof e.code === 'number' ? e.code : 0,
      message: typeof e.message === 'string' ? e.message : '',
      temporary: e.temporary === true,
    };
    return { kind: 'error', id, error };
  }
  const keys = Object.keys(value).filter((k) => k !== 'id');
  if (keys.length !== 1) throw new FrameError(`reply with ${keys.length} results`);
  const method = keys[0] as string;
  return { kind: 'reply', id, method, result: value[method] };
}

/** Encodes bytes as standard base64 (as the JSON form's `b64data`). */
export function encodeBase64(bytes: Uint8Array): string {
  let bin = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(bin);
}

/** Decodes standard base64 (as `b64data` carries it) to bytes. */
export function decodeBase64(b64: string): Uint8Array {
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return bytes;
}
