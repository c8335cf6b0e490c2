/**
 * `useStory` without a browser: server rendering shows the initial
 * snapshot and joins nothing (no effects run). Its behaviour with a live
 * connection is tested in Chromium (test/browser/story.test.ts).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { renderToString } from 'react-dom/server';

import { Client } from '../../src/index.js';
import { RealtimeProvider, useStory } from '../../src/react.js';
import { fakeWebSocket } from '../helpers/fake-websocket.js';

function Editor() {
  const { state, role, position, sections, editors, viewers, lastConflict, error, story } = useStory('story:1');
  return (
    <p>
      {state} {String(role)} {String(position)} {sections.size} sections, {editors.length} editors, {viewers} viewers,{' '}
      {String(lastConflict)} {String(error)} {String(story)}
    </p>
  );
}

test('server rendering: useStory shows the initial snapshot and joins nothing', () => {
  const ws = fakeWebSocket();
  const client = new Client('ws://edge.test/ws', { WebSocket: ws.ctor });
  const html = renderToString(
    <RealtimeProvider client={client}>
      <Editor />
    </RealtimeProvider>,
  );
  assert.equal(
    html.replace(/<!-- -->/g, ''),
    '<p>joining undefined undefined 0 sections, 0 editors, 0 viewers, undefined undefined undefined</p>',
  );
  assert.equal(client.getStory('story:1'), undefined);
  assert.equal(ws.sockets.length, 0);
});
