/**
 * The React bindings without a browser: server rendering (no effects run,
 * so nothing connects or subscribes) and the error outside a provider.
 * Their behaviour with a live connection is tested in Chromium
 * (test/browser/react.test.ts).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { renderToString } from 'react-dom/server';

import { Client } from '../../src/index.js';
import { RealtimeProvider, usePresence, useRealtime, useSubscription } from '../../src/react.js';
import { fakeWebSocket } from '../helpers/fake-websocket.js';

function Room() {
  const { connectionStatus, isOnline } = useRealtime();
  const { state, publications, recovered, error } = useSubscription('chat:room');
  const { members, loaded } = usePresence('chat:room');
  return (
    <p>
      {connectionStatus}/{String(isOnline)} {state} {publications.length} publications, recovered {String(recovered)}, error{' '}
      {String(error)}, {members.length} members, loaded {String(loaded)}
    </p>
  );
}

test('server rendering: the initial snapshot, with no connection or subscription made', () => {
  const ws = fakeWebSocket();
  const client = new Client('ws://edge.test/ws', { WebSocket: ws.ctor });
  const html = renderToString(
    <RealtimeProvider client={client}>
      <Room />
    </RealtimeProvider>,
  );
  assert.equal(
    html.replace(/<!-- -->/g, ''),
    '<p>disconnected/false subscribing 0 publications, recovered false, error undefined, 0 members, loaded false</p>',
  );
  assert.equal(client.state, 'disconnected');
  assert.equal(client.subscriptions().size, 0);
  assert.equal(ws.sockets.length, 0);
});

test('a hook outside a RealtimeProvider says so', () => {
  const orig = console.error;
  console.error = () => {}; // React reports the render error too
  try {
    assert.throws(() => renderToString(<Room />), /wrap the component in <RealtimeProvider/);
  } finally {
    console.error = orig;
  }
});
