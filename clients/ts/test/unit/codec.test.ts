/**
 * The codecs: every command the SDK sends survives the binary encoding;
 * every reply and push decodes from the binary form into exactly what the
 * JSON form's text decodes to; frames captured from a real wsedge decode
 * alike in both forms.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { binaryCodec } from '../../src/binary-codec.js';
import { jsonCodec, loadBinaryCodec, type EncodedCommand } from '../../src/codec.js';
import { FrameError } from '../../src/protocol.js';
import { decodeClientFrame, encodeServerFrame } from '../helpers/fb-frames.js';
import { framesParity, type CapturedFrames } from '../helpers/parity.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

/** Every command the SDK (or `request()` for story collaboration) sends, with the parameters it sends. */
const COMMANDS: Array<[string, Record<string, unknown>]> = [
  ['connect', { name: 'web', version: '1.2.3', user: 'ann', info: { name: 'Ann', tags: ['a', 1, null] } }],
  ['connect', { name: 'js', token: 'eyJ.x.y' }],
  ['connect', { ticket: 't-1' }],
  ['subscribe', { channel: 'chat:room-42' }],
  ['subscribe', { channel: 'chat:room-42', recover: true, epoch: '9d3c1f0a7b2e4c55', offset: 119, token: 'sub.tok' }],
  ['subscribe', { channel: 'chat:room-42', recover: true, epoch: '9d3c1f0a7b2e4c55', offset: 0 }],
  ['unsubscribe', { channel: 'chat:room-42' }],
  ['publish', { channel: 'chat:room-42', data: { text: 'hi', n: 1.5 }, idempotency_key: 'msg-81' }],
  ['publish', { channel: 'c', data: 'a string', durable_ack: true }],
  ['publish', { channel: 'c', data: null }],
  ['publish', { channel: 'c', data: [1, 'é', { deep: { x: true } }] }],
  ['ping', {}],
  ['history', { channel: 'chat:room-42' }],
  ['history', { channel: 'chat:room-42', limit: 0 }],
  ['history', { channel: 'chat:room-42', limit: 2, since: { epoch: '9d3c1f0a7b2e4c55', offset: 119 }, reverse: true }],
  ['presence', { channel: 'chat:room-42' }],
  ['presence_stats', { channel: 'chat:room-42' }],
  ['presence_state', { channel: 'chat:room-42', state: 'typing', ttl: 10 }],
  ['presence_state', { channel: 'chat:room-42', state: '' }],
  ['refresh', { token: 'new.jwt.token' }],
  ['sub_refresh', { channel: 'chat:room-42', token: 'sub.jwt' }],
  ['rpc', { method: 'rooms.list', data: { page: 2 } }],
  ['rpc', { method: 'rooms.list' }],
  ['send', { data: { event: 'typing' } }],
  ['send', {}],
  ['collab_join', { channel: 'story:1', role: 'editor', queue: true }],
  ['collab_join', { channel: 'story:1', role: 'viewer', recover: true, epoch: '9d3c1f0a7b2e4c55', offset: 7 }],
  ['collab_leave', { channel: 'story:1' }],
  ['lock', { channel: 'story:1', section: 'intro', ttl: 30 }],
  ['unlock', { channel: 'story:1', section: 'intro' }],
  ['update', { channel: 'story:1', section: 'intro', base_version: 4, data: { text: 'new' }, op_id: 'op-1' }],
];

function binaryFrame(commands: Array<[number, string, unknown]>): Uint8Array {
  const encoded: EncodedCommand[] = commands.map(([id, method, params]) => binaryCodec.encode(id, method, params));
  return binaryCodec.frame(encoded);
}

for (const [method, params] of COMMANDS) {
  test(`binary command round trip: ${method} ${JSON.stringify(params)}`, () => {
    const [decoded, ...rest] = decodeClientFrame(binaryFrame([[7, method, params]]));
    assert.deepEqual(rest, []);
    assert.deepEqual(decoded, { id: 7, method, params });
  });
}

test('several commands share one binary frame, in order, with their ids', () => {
  const frame = binaryFrame([
    [1, 'connect', { name: 'js' }],
    [2, 'subscribe', { channel: 'a' }],
    [0xffff_fffe, 'publish', { channel: 'a', data: 1 }],
  ]);
  assert.deepEqual(
    decodeClientFrame(frame).map((c) => [c.id, c.method]),
    [
      [1, 'connect'],
      [2, 'subscribe'],
      [0xffff_fffe, 'publish'],
    ],
  );
});

test('a method the binary form has no table for goes out without one (the server answers 104); bad params are left out', () => {
  const [unknown] = decodeClientFrame(binaryFrame([[3, 'no_such_method', { x: 1 }]]));
  assert.deepEqual(unknown, { id: 3, method: 'unknown:0', params: {} });
  // Wrong types are absent on the wire, as the server then sees a missing field (107).
  const [sub] = decodeClientFrame(binaryFrame([[4, 'subscribe', { channel: 42, offset: -1, recover: 'yes' }]]));
  assert.deepEqual(sub, { id: 4, method: 'subscribe', params: {} });
});

test('data that JSON cannot encode makes encode throw (the command fails alone)', () => {
  assert.throws(() => binaryCodec.encode(1, 'publish', { channel: 'c', data: { n: 1n } }), TypeError);
  assert.throws(() => jsonCodec.encode(1, 'publish', { channel: 'c', data: { n: 1n } }), TypeError);
});

test('the JSON codec: one line per command, joined by \\n; frames split back into messages', () => {
  const frame = jsonCodec.frame([jsonCodec.encode(1, 'ping', {}), jsonCodec.encode(2, 'presence', { channel: 'a' })]);
  assert.equal(frame, '{"id":1,"ping":{}}\n{"id":2,"presence":{"channel":"a"}}');
  assert.deepEqual(jsonCodec.decode('{"id":1,"ping":{}}\n\n{"push":{"channel":"a","pub":{"offset":1,"data":2}}}'), [
    { kind: 'reply', id: 1, method: 'ping', result: {} },
    { kind: 'push', channel: 'a', type: 'pub', body: { offset: 1, data: 2 } },
  ]);
  assert.throws(() => jsonCodec.decode(new Uint8Array([1, 2])), FrameError);
});

const PUBS = [
  { offset: 120, data: { text: 'yo' } },
  { offset: 121, b64data: '/wA=' },
];
const ANN = { user: 'ann', client: '6f1c03ab.0.17', info: { name: 'Ann' } };
const ANON = { user: '', client: '6f1c03ab.1.4' };

/** Every reply and push of the protocol, as the JSON form writes them. */
const SERVER_MESSAGES: Array<[string, Record<string, unknown>]> = [
  ['connect', { id: 1, connect: { client: '6f1c03ab.0.17', node: 'edge-7', ping: 25, user: 'ann', expires: false } }],
  ['connect (expiring)', { id: 1, connect: { client: 'c.0.1', node: 'n', ping: 25, user: '', expires: true, ttl: 30 } }],
  ['subscribe', { id: 2, subscribe: { epoch: '9d3c1f0a7b2e4c55', offset: 121, recoverable: true, recovered: true, publications: PUBS } }],
  ['subscribe (nothing)', { id: 2, subscribe: { epoch: '9d3c1f0a7b2e4c55', offset: 0, recoverable: false, recovered: false, publications: [] } }],
  ['unsubscribe', { id: 3, unsubscribe: {} }],
  ['publish', { id: 4, publish: { offset: 119 } }],
  ['ping', { id: 5, ping: {} }],
  ['history', { id: 6, history: { publications: [...PUBS].reverse(), epoch: '9d3c1f0a7b2e4c55', offset: 121 } }],
  ['presence', { id: 7, presence: { clients: { [ANN.client]: { ...ANN, state: 'typing' }, [ANON.client]: ANON } } }],
  ['presence_stats', { id: 8, presence_stats: { num_clients: 2, num_users: 1 } }],
  ['presence_state', { id: 9, presence_state: {} }],
  ['refresh', { id: 10, refresh: { expires: true, ttl: 600 } }],
  ['refresh (no expiry)', { id: 10, refresh: { expires: false } }],
  ['sub_refresh', { id: 11, sub_refresh: { expires: true, ttl: 60 } }],
  ['rpc (JSON)', { id: 12, rpc: { data: { rooms: ['lobby', 'math-101'] } } }],
  ['rpc (bytes)', { id: 12, rpc: { b64data: 'AAEC/w==' } }],
  ['rpc (empty)', { id: 12, rpc: { b64data: '' } }],
  ['send', { id: 13, send: {} }],
  [
    'collab_join',
    {
      id: 14,
      collab_join: {
        role: 'queued',
        position: 2,
        editors: [ANN, ANON],
        viewers: 3,
        queued: 2,
        sections: { intro: { version: 4, data: { text: 'x' }, holder: { user: 'ann', client: ANN.client } }, outro: { version: 1, data: 'y' } },
        epoch: '9d3c1f0a7b2e4c55',
        offset: 9,
      },
    },
  ],
  [
    'collab_join (recovering)',
    {
      id: 14,
      collab_join: { role: 'editor', editors: [], viewers: 0, queued: 0, sections: {}, epoch: '9d3c1f0a7b2e4c55', offset: 9, recovered: false, publications: [] },
    },
  ],
  ['collab_leave', { id: 15, collab_leave: {} }],
  ['lock', { id: 16, lock: { section: 'intro', holder: { user: 'ann', client: ANN.client }, expires: 1_700_000_030_000 } }],
  ['unlock', { id: 17, unlock: {} }],
  ['update', { id: 18, update: { version: 5 } }],
  ['update (duplicate)', { id: 18, update: { version: 5, duplicate: true } }],
  ['error', { id: 19, error: { code: 103, message: 'permission denied', temporary: false } }],
  ['error (temporary)', { id: 19, error: { code: 112, message: 'overloaded', temporary: true } }],
  ['error 118', { id: 20, error: { code: 118, message: 'section locked', temporary: false, holder: { user: 'bob', client: 'b.1' } } }],
  ['error 119', { id: 21, error: { code: 119, message: 'version conflict', temporary: false, version: 5, data: { text: 'theirs' } } }],
  ['pub push', { push: { channel: 'chat:room-42', pub: { offset: 119, data: { text: 'hi' } } } }],
  ['pub push (bytes)', { push: { channel: 'chat:room-42', pub: { offset: 120, b64data: '/wA=' } } }],
  ['disconnect push', { push: { disconnect: { code: 3001, reason: 'shutdown', reconnect: true } } }],
  ['join push', { push: { channel: 'chat:room-42', join: { info: ANN } } }],
  ['leave push', { push: { channel: 'chat:room-42', leave: { info: ANON } } }],
  ['state push', { push: { channel: 'chat:room-42', state: { info: ANN, state: 'typing' } } }],
  [
    'subscribe push',
    { push: { channel: '#ann', subscribe: { epoch: '3f9a1c0b5e2d4a71', offset: 0, recoverable: true, recovered: false, publications: [] } } },
  ],
  ['unsubscribe push', { push: { channel: '#ann', unsubscribe: {} } }],
  ['promoted push', { push: { channel: 'story:1', promoted: { role: 'editor' } } }],
  ['queue push', { push: { channel: 'story:1', queue: { position: 1 } } }],
  ['conflict push', { push: { channel: 'story:1', conflict: { section: 'intro', version: 6, overwritten: { text: 'mine' }, by: ANN } } }],
];

for (const [name, message] of SERVER_MESSAGES) {
  test(`binary server message decodes as the JSON form: ${name}`, () => {
    const fromBinary = binaryCodec.decode(encodeServerFrame([message]).buffer);
    const fromJson = jsonCodec.decode(JSON.stringify(message));
    assert.equal(fromBinary.length, 1);
    assert.deepEqual(fromBinary, fromJson);
  });
}

test('every reply and push in one binary frame: same messages, same order', () => {
  const messages = SERVER_MESSAGES.map(([, m]) => m);
  const bytes = encodeServerFrame(messages);
  assert.deepEqual(binaryCodec.decode(bytes), jsonCodec.decode(messages.map((m) => JSON.stringify(m)).join('\n')));
  // A Node Buffer (the `ws` package's binaryType) and an offset view decode the same.
  const padded = new Uint8Array(bytes.length + 3);
  padded.set(bytes, 3);
  assert.deepEqual(binaryCodec.decode(padded.subarray(3)), binaryCodec.decode(Buffer.from(bytes)));
});

test('publication bytes: JSON text becomes data, anything else (bad UTF-8, a BOM, two values, empty) b64data', () => {
  const cases: Array<[number[], unknown]> = [
    [[...Buffer.from('{"a":1}')], { data: { a: 1 } }],
    [[...Buffer.from(' 42 ')], { data: 42 }],
    [[0xff, 0x00], { b64data: '/wA=' }],
    [[0xef, 0xbb, 0xbf, ...Buffer.from('1')], { b64data: '77u/MQ==' }],
    [[...Buffer.from('1 2')], { b64data: 'MSAy' }],
    [[], { b64data: '' }],
  ];
  for (const [bytes, expected] of cases) {
    const b64data = Buffer.from(bytes).toString('base64');
    const [m] = binaryCodec.decode(encodeServerFrame([{ push: { channel: 'c', pub: { offset: 1, b64data } } }]));
    assert.deepEqual(m, { kind: 'push', channel: 'c', type: 'pub', body: { offset: 1, ...(expected as object) } }, JSON.stringify(bytes));
  }
});

test('what is not a binary server frame is a FrameError', () => {
  assert.throws(() => binaryCodec.decode('{"id":1,"ping":{}}'), FrameError, 'text on a binary connection');
  assert.throws(() => binaryCodec.decode(new Uint8Array([1, 2, 3])), FrameError, 'too short');
  assert.throws(() => binaryCodec.decode(new Uint8Array(64).fill(0xff)), FrameError, 'garbage');
  assert.throws(() => binaryCodec.decode(encodeServerFrame([])), FrameError, 'no messages');
});

test('the binary codec is loaded on demand, once', async () => {
  const a = await loadBinaryCodec();
  const b = await loadBinaryCodec();
  assert.equal(a, binaryCodec);
  assert.equal(b, a);
  assert.equal(a.subprotocol, 'edu-matrix-v1');
});

test('frames captured from a real wsedge decode to the same messages in both forms', () => {
  const captured = JSON.parse(readFileSync(join(ROOT, 'test/fixtures/server-frames.json'), 'utf8')) as CapturedFrames;
  const { replies, pushes } = framesParity(captured);
  // The capture covers every reply and push the SDK handles.
  for (const m of ['connect', 'subscribe', 'history', 'presence', 'presence_stats', 'presence_state', 'ping', 'error']) {
    assert.ok(replies.has(m), `captured a ${m} reply`);
  }
  for (const p of ['pub', 'pub/b64data', 'join', 'leave', 'state', 'subscribe', 'unsubscribe', 'disconnect']) {
    assert.ok(pushes.has(p), `captured a ${p} push`);
  }
});
