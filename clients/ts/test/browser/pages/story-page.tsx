/**
 * The `useStory` browser test page, bundled with esbuild: one story
 * (under StrictMode) rendering this member's state, role and place in
 * line, the editors, every section with its version and lock holder, and
 * the last conflict. Renders are counted in `window.storyPage.renders`.
 */
import { StrictMode, useState } from 'react';
import { createRoot } from 'react-dom/client';

import { Client, type StoryUpdateResult } from '@wsedge/client';
import { RealtimeProvider, useStory } from '@wsedge/client/react';

import { testWebSocket } from './socket.js';

/** What the tests reach through `window.storyPage`. */
export interface StoryPageApi {
  /** Renders per component id. */
  renders: Record<string, number>;
  /** `story.update()` through the story the hook made; resolves with its result. */
  write(section: string, data: unknown): Promise<StoryUpdateResult>;
  /** Unmounts the story view. */
  hide(): void;
  /** Whether the client has a story on the channel now. */
  hasStory(): boolean;
}

declare global {
  interface Window {
    storyPage: StoryPageApi;
  }
}

const CHANNEL = 'story:page';
const params = new URLSearchParams(location.search);
const { ctor } = testWebSocket(Number(params.get('dead')));
const client = new Client(params.get('url') ?? '', {
  user: 'page-story',
  WebSocket: ctor,
  minReconnectDelay: 100,
  maxReconnectDelay: 1000,
});

const renders: Record<string, number> = {};
const rendered = (id: string) => (renders[id] = (renders[id] ?? 0) + 1);

function StoryView() {
  rendered('story');
  const { state, role, position, sections, editors, lastConflict, error } = useStory(CHANNEL);
  return (
    <section>
      <p>
        <b id="state">{state}</b> as <b id="role">{role ?? '-'}</b>, place in line <b id="position">{position ?? '-'}</b>
      </p>
      <ul id="editors">
        {editors.map((e) => (
          <li key={e.client}>{e.user}</li>
        ))}
      </ul>
      <ul id="sections">
        {[...sections.values()]
          .sort((a, b) => a.id.localeCompare(b.id))
          .map((s) => (
            <li key={s.id}>
              {s.id} v{s.version} {JSON.stringify(s.data)}
              {s.holder ? ` locked by ${s.holder.user}` : ''}
            </li>
          ))}
      </ul>
      <p id="conflict">{lastConflict ? `${lastConflict.kind} ${lastConflict.section} v${lastConflict.version}` : '-'}</p>
      {error ? <p id="error">{error.message}</p> : null}
    </section>
  );
}

function App() {
  rendered('app');
  const [shown, setShown] = useState(true);
  window.storyPage.hide = () => setShown(false);
  return (
    <main>
      <h1>wsedge useStory test page</h1>
      <StrictMode>{shown ? <StoryView /> : null}</StrictMode>
    </main>
  );
}

window.storyPage = {
  renders,
  write: (section, data) => {
    const story = client.getStory(CHANNEL);
    return story ? story.update(section, data) : Promise.reject(new Error('no story'));
  },
  hide: () => {},
  hasStory: () => client.getStory(CHANNEL) !== undefined,
};
const root = document.getElementById('root');
if (!root) throw new Error('no #root');
createRoot(root).render(
  <RealtimeProvider client={client}>
    <App />
  </RealtimeProvider>,
);
