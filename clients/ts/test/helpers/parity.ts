/**
 * Form parity of frames captured from a real server: two observer
 * connections (same user, one per form) sent the same commands with the
 * same ids and saw the same channels; decoding each one's frames with its
 * codec must give the same replies and the same pushes.
 */
import assert from 'node:assert/strict';

import { binaryCodec } from '../../src/binary-codec.js';
import { jsonCodec } from '../../src/codec.js';
import type { ServerMessage } from '../../src/protocol.js';

/** The frames each observer received, in order. */
export interface CapturedFrames {
  /** How they were made. */
  note?: string;
  /** The observers' user id: their own presence pushes differ by connection and are left out. */
  observer: string;
  /** The JSON observer's text frames. */
  json: string[];
  /** The binary observer's frames, base64. */
  binary: string[];
}

/** A push's key for coverage checks: its type, plus `/b64data` for a publication that is not JSON. */
function pushKey(m: ServerMessage & { kind: 'push' }): string {
  const body = m.body as Record<string, unknown>;
  return m.type === 'pub' && typeof body.b64data === 'string' ? 'pub/b64data' : m.type;
}

/** Replies by id, without what differs per connection (the client id). */
function replies(messages: ServerMessage[]): Map<number, unknown> {
  const out = new Map<number, unknown>();
  for (const m of messages) {
    if (m.kind === 'push') continue;
    if (m.kind === 'reply' && m.method === 'connect') {
      const { client: _client, ...rest } = m.result as Record<string, unknown>;
      out.set(m.id, { ...m, result: rest });
    } else {
      out.set(m.id, m);
    }
  }
  return out;
}

/** Pushes other than the observers' own presence, in a stable order (arrival order may differ across shards). */
function pushes(messages: ServerMessage[], observer: string): string[] {
  return messages
    .filter((m): m is ServerMessage & { kind: 'push' } => m.kind === 'push')
    .filter((m) => ((m.body as { info?: { user?: string } }).info?.user ?? null) !== observer)
    .map((m) => JSON.stringify(m))
    .sort();
}

/**
 * Decodes both observers' frames and asserts they agree. Returns which
 * reply methods (`error` for errors) and push types were seen.
 */
export function framesParity(captured: CapturedFrames): { replies: Set<string>; pushes: Set<string> } {
  const fromJson = captured.json.flatMap((f) => jsonCodec.decode(f));
  const fromBinary = captured.binary.flatMap((f) => binaryCodec.decode(Buffer.from(f, 'base64')));
  assert.ok(fromJson.length > 0, 'the JSON observer saw frames');
  assert.deepEqual(replies(fromBinary), replies(fromJson), 'the same replies');
  assert.deepEqual(pushes(fromBinary, captured.observer), pushes(fromJson, captured.observer), 'the same pushes');
  const seen = { replies: new Set<string>(), pushes: new Set<string>() };
  for (const m of fromBinary) {
    if (m.kind === 'reply') seen.replies.add(m.method);
    else if (m.kind === 'error') seen.replies.add('error');
    else seen.pushes.add(pushKey(m));
  }
  return seen;
}
