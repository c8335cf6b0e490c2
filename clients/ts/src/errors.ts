import type { ErrorBody } from './protocol.js';

/** An error reply from the server to one command. */
export class ServerError extends Error {
  override readonly name = 'ServerError';
  /** The error code (docs/PROTOCOL.md, "Error codes"). */
  readonly code: number;
  /** Whether the same command may succeed later. */
  readonly temporary: boolean;
  /** The whole error body, with any extra fields (118 `holder`, 119 `version`/`data`). */
  readonly body: ErrorBody;

  constructor(body: ErrorBody) {
    super(`${body.code}: ${body.message}`);
    this.code = body.code;
    this.temporary = body.temporary;
    this.body = body;
  }
}

/** A command got no reply within the client's `timeout`. */
export class TimeoutError extends Error {
  override readonly name = 'TimeoutError';
  constructor(method: string, ms: number) {
    super(`no reply to ${method} within ${ms} ms`);
  }
}

/** The connection ended before a command was answered, or was not open. */
export class DisconnectedError extends Error {
  override readonly name = 'DisconnectedError';
  constructor(message = 'not connected') {
    super(message);
  }
}

/** Why the offline outbox gave up on a publication without sending it. */
export type DropReason = 'full' | 'evicted' | 'cleared';

/**
 * A publication left the outbox unsent: refused because the outbox was full
 * (`reject-new`), pushed out by a newer one (`drop-oldest`), or removed by
 * `clearOutbox()`.
 */
export class OutboxDroppedError extends Error {
  override readonly name = 'OutboxDroppedError';
  readonly reason: DropReason;
  constructor(reason: DropReason) {
    super(`publication dropped from the outbox (${reason})`);
    this.reason = reason;
  }
}

/**
 * Throw this from `getToken` to say the user may not connect (or subscribe):
 * the client stops instead of retrying.
 */
export class UnauthorizedError extends Error {
  override readonly name = 'UnauthorizedError';
  constructor(message = 'unauthorized') {
    super(message);
  }
}
