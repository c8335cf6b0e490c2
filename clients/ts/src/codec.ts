/**
 * Codecs: the one place where the two wire forms differ. A codec turns
 * commands into frames and frames into {@link ServerMessage}s; transports
 * and everything above them (commands, subscriptions, outbox) are shared.
 */
import { encodeCommand, FrameError, parseFrame, SUBPROTOCOL, type ServerMessage } from './protocol.js';

/** The wire form a client asks for: JSON text frames or FlatBuffers binary frames. */
export type WireFormat = 'json' | 'binary';

declare const encoded: unique symbol;

/**
 * One command as a codec encoded it. Opaque: only the codec that made it
 * can put it in a frame.
 */
export type EncodedCommand = { readonly [encoded]: true };

/** Frame data as a transport receives it (text, or binary in any of the usual shapes). */
export type IncomingFrame = string | ArrayBuffer | ArrayBufferView;

/**
 * A wire form. Commands are encoded one by one when they are queued (so a
 * command the form cannot carry fails alone) and framed together when
 * written (commands queued in the same tick share a frame).
 */
export interface Codec<F extends string | Uint8Array = string | Uint8Array> {
  /** Which form this is. */
  readonly format: WireFormat;
  /** The WebSocket subprotocol that selects it. */
  readonly subprotocol: string;
  /** Encodes one command; throws when its parameters cannot be encoded. */
  encode(id: number, method: string, params: unknown): EncodedCommand;
  /** Puts encoded commands, in order, into one frame. */
  frame(commands: readonly EncodedCommand[]): F;
  /** Splits one frame into its messages; throws {@link FrameError} when it is not this form. */
  decode(data: IncomingFrame): ServerMessage[];
}

/** The JSON form (`edu-matrix-v1.json`): text frames of `\n`-separated objects. */
export const jsonCodec: Codec<string> = {
  format: 'json',
  subprotocol: SUBPROTOCOL,
  encode(id, method, params) {
    return encodeCommand(id, method, params) as unknown as EncodedCommand;
  },
  frame(commands) {
    return (commands as unknown as readonly string[]).join('\n');
  },
  decode(data) {
    if (typeof data !== 'string') throw new FrameError('a binary frame on a JSON connection');
    return parseFrame(data);
  },
};

let binary: Promise<Codec<Uint8Array>> | undefined;

/**
 * The FlatBuffers form (`edu-matrix-v1`), loaded on first use: its
 * generated tables and runtime are most of the package's size, so clients
 * that stay on JSON never load them (bundlers split the dynamic import).
 */
export function loadBinaryCodec(): Promise<Codec<Uint8Array>> {
  binary ??= import('./binary-codec.js').then(
    (m) => m.binaryCodec,
    (err: unknown) => {
      binary = undefined; // a failed chunk load may work next time
      throw err;
    },
  );
  return binary;
}
