/**
 * @wsedge/client: the TypeScript client of wsedge (wire protocol v1, JSON
 * or FlatBuffers, over WebSocket or the SSE fallback).
 *
 * @packageDocumentation
 */
export { Client } from './client.js';
export type {
  ClientEvents,
  ClientOptions,
  ClientState,
  ConnectedEvent,
  DisconnectedEvent,
  PublishOptions,
  ReconnectingEvent,
  RpcResult,
  ServerSubscribedEvent,
} from './options.js';
export { Subscription } from './subscription.js';
export type {
  HistoryOptions,
  HistoryResult,
  PresenceEvent,
  PresenceStateEvent,
  Publication,
  SubscribedEvent,
  SubscriptionEvents,
  SubscriptionOptions,
  SubscriptionState,
  UnsubscribedEvent,
} from './subscription.js';
export { NotEditorError, Story } from './story.js';
export type {
  Holder,
  SectionState,
  StoryConflictEvent,
  StoryEvents,
  StoryJoinedEvent,
  StoryLeftEvent,
  StoryLockEvent,
  StoryLockOptions,
  StoryLockResult,
  StoryMemberEvent,
  StoryOptions,
  StoryRole,
  StoryRoleEvent,
  StoryState,
  StoryUpdateEvent,
  StoryUpdateOptions,
  StoryUpdateResult,
  StoryUpdateSource,
} from './story.js';
export { DisconnectedError, OutboxDroppedError, ServerError, TimeoutError, UnauthorizedError } from './errors.js';
export type { DropReason } from './errors.js';
export { IndexedDBOutboxStorage, MemoryOutboxStorage } from './outbox.js';
export type { DropPolicy, IndexedDBOutboxOptions, OutboxEntry, OutboxStorage } from './outbox.js';
export { BINARY_SUBPROTOCOL, CloseCode, closeCodeReconnects, ErrorCode, LocalCode, SUBPROTOCOL } from './protocol.js';
export type {
  ClientInfo,
  ConnectResult,
  PresenceEntry,
  PresenceResult,
  PresenceStatsResult,
  PublishResult,
  RefreshResult,
  StreamPosition,
} from './protocol.js';
export { backoffDelay } from './backoff.js';
export { Emitter } from './emitter.js';
export type { Listener } from './emitter.js';
export { systemClock, systemRandom } from './timers.js';
export type { Clock, Random, TimerHandle } from './timers.js';
export { jwtExpiry, refreshDelay } from './token.js';
export type { TransportKind, WebSocketConstructor, WebSocketLike } from './transport.js';
export type { WireFormat } from './codec.js';
export type { EventSourceConstructor, EventSourceLike, FetchFunction, SseEvent, SsePostInit, SsePostResponse } from './sse.js';
