/**
 * Captures what a real wsedge sends in both wire forms: two raw observer
 * connections (one JSON, one binary; same user) send the same commands
 * with the same ids and watch the same channels while other connections
 * publish (JSON and raw bytes), join, leave and set presence states, and the
 * server API subscribes, unsubscribes and disconnects the observers.
 * `test/fixtures/server-frames.json` is one such capture (see the e2e test).
 */
import { binaryCodec } from '../../src/binary-codec.js';
import { jsonCodec, type Codec } from '../../src/codec.js';
import { Client, type SubscribedEvent } from '../../src/index.js';
import type { ServerMessage } from '../../src/protocol.js';
import { publishBytesFrame } from './fb-frames.js';
import type { CapturedFrames } from './parity.js';
import { waitFor, type EdgeServer } from './server.js';

/** A WebSocket driven by hand, recording every frame it gets. */
class RawConnection {
  readonly frames: Array<string | Uint8Array> = [];
  readonly messages: ServerMessage[] = [];
  closed = false;

  private constructor(
    private readonly ws: WebSocket,
    private readonly codec: Codec,
  ) {
    ws.onmessage = (ev: MessageEvent) => {
      const data: unknown = ev.data;
      const frame = typeof data === 'string' ? data : new Uint8Array(data as ArrayBuffer);
      this.frames.push(frame);
      this.messages.push(...codec.decode(frame));
    };
    ws.onclose = () => (this.closed = true);
  }

  static open(url: string, codec: Codec): Promise<RawConnection> {
    const ws = new WebSocket(url, codec.subprotocol);
    ws.binaryType = 'arraybuffer';
    return new Promise((resolve, reject) => {
      ws.onopen = () => resolve(new RawConnection(ws, codec));
      ws.onerror = () => reject(new Error(`could not open ${url} (${codec.subprotocol})`));
    });
  }

  send(id: number, method: string, params: unknown): void {
    this.ws.send(this.codec.frame([this.codec.encode(id, method, params)]));
  }

  sendRaw(frame: Uint8Array): void {
    this.ws.send(frame);
  }

  /** Waits for the reply (or error) to command `id`. */
  async reply(id: number): Promise<ServerMessage> {
    await waitFor(`reply ${id}`, () => this.messages.some((m) => m.kind !== 'push' && m.id === id));
    return this.messages.find((m) => m.kind !== 'push' && m.id === id) as ServerMessage;
  }

  /** Whether a push of `type` on `channel` matching `test` arrived. */
  saw(type: string, channel: string | undefined, test: (body: Record<string, unknown>) => boolean = () => true): boolean {
    return this.messages.some((m) => m.kind === 'push' && m.type === type && m.channel === channel && test(m.body as Record<string, unknown>));
  }

  close(): void {
    this.ws.close();
  }
}

/**
 * Runs the capture against `server` (its config must have the `chat`
 * namespace of the e2e tests: history, recovery, presence, join/leave).
 */
export async function captureServerFrames(server: EdgeServer): Promise<CapturedFrames> {
  const observer = 'observer';
  const channel = 'chat:capture';
  const json = await RawConnection.open(server.url, jsonCodec);
  const binary = await RawConnection.open(server.url, binaryCodec);
  const observers = [json, binary];
  const both = async (id: number, method: string, params: unknown): Promise<void> => {
    for (const o of observers) o.send(id, method, params);
    await Promise.all(observers.map((o) => o.reply(id)));
  };
  const bothSaw = (what: string, type: string, ch: string | undefined, test?: (body: Record<string, unknown>) => boolean) =>
    waitFor(what, () => observers.every((o) => o.saw(type, ch, test)));

  const ann = new Client(server.url, { user: 'ann', info: { name: 'Ann' } });
  const publisher = await RawConnection.open(server.url, binaryCodec);
  try {
    await both(1, 'connect', { name: 'capture', version: '1', user: observer, info: { role: 'observer' } });
    ann.connect();
    const sub = ann.subscribe(channel);
    const subscribed = await new Promise<SubscribedEvent>((resolve) => sub.once('subscribed', resolve));
    const epoch = subscribed.epoch;
    publisher.send(1, 'connect', { user: 'bytes' });
    await publisher.reply(1);
    await ann.publish(channel, { text: 'one' });
    publisher.sendRaw(publishBytesFrame(2, channel, new Uint8Array([0xff, 0x00])));
    await publisher.reply(2);
    // Presence pushes are coalesced for 50 ms: let ann's join go out before
    // the observers subscribe, so that neither or both see it.
    await new Promise((r) => setTimeout(r, 200));

    // Recovering from offset 0: both publications replayed in the reply.
    await both(2, 'subscribe', { channel, recover: true, epoch, offset: 0 });
    await ann.publish(channel, { n: 3 });
    publisher.sendRaw(publishBytesFrame(3, channel, new Uint8Array([1, 2, 3])));
    await sub.setPresenceState('typing', 30);
    await bothSaw('the live publications and the state push', 'state', channel);
    await bothSaw('the byte publication', 'pub', channel, (b) => b.offset === 4);

    await both(3, 'history', { channel, limit: 10 });
    await both(4, 'history', { channel, since: { epoch, offset: 1 }, reverse: true, limit: 2 });
    await both(5, 'presence', { channel });
    await both(6, 'presence_stats', { channel });
    await both(7, 'presence_state', { channel, state: 'viewing', ttl: 10 });
    await both(8, 'ping', {});
    await both(9, 'presence', { channel: 'plain' }); // 103: no presence in the default namespace
    await both(10, 'rpc', { method: 'rooms.list' }); // 127: no NATS
    await both(11, 'subscribe', { channel: 'bad channel' }); // 109
    await both(12, 'history', { channel, since: { epoch: '0000000000000000', offset: 1 } }); // 115
    await both(13, 'unsubscribe', { channel: 'chat:other' }); // 108
    await both(14, 'no_such_method', {}); // 104 in both forms

    sub.unsubscribe();
    await bothSaw('ann leaving', 'leave', channel);
    sub.subscribe();
    await bothSaw('ann joining', 'join', channel);
    await server.callApi('subscribe', { user: observer, channel: 'chat:server-side' });
    await bothSaw('the server-side subscribe', 'subscribe', 'chat:server-side');
    await server.callApi('unsubscribe', { user: observer, channel: 'chat:server-side' });
    await bothSaw('the server-side unsubscribe', 'unsubscribe', 'chat:server-side');
    await server.callApi('disconnect', { user: observer, code: 4001, reason: 'capture done' });
    await bothSaw('the disconnect push', 'disconnect', undefined);
    await waitFor('both observers closed', () => observers.every((o) => o.closed));
  } finally {
    ann.disconnect();
    for (const o of [...observers, publisher]) o.close();
  }
  return {
    note: 'frames a real wsedge sent two observers, one per wire form (test/helpers/capture.ts)',
    observer,
    json: json.frames.map((f) => f as string),
    binary: binary.frames.map((f) => Buffer.from(f as Uint8Array).toString('base64')),
  };
}
