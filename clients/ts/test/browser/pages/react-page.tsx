/**
 * The React browser test page, bundled with esbuild: RealtimeProvider,
 * useRealtime, useSubscription and usePresence rendering the connection
 * status, a channel's messages and its members. Components count their
 * renders in `window.reactPage.renders`.
 */
import { StrictMode, useEffect, useState } from 'react';
import { createRoot } from 'react-dom/client';

import { Client, type Publication } from '@wsedge/client';
import { RealtimeProvider, usePresence, useRealtime, useSubscription } from '@wsedge/client/react';

import { testWebSocket, type SocketGate } from './socket.js';

/** What the tests reach through `window.reactPage`. */
export interface ReactPageApi {
  /** Renders per component id. */
  renders: Record<string, number>;
  /** Every connection status the Status component committed, in order. */
  statusLog: string[];
  gate: SocketGate;
  /** The channel of the room (messages and members). */
  setChannel(channel: string): void;
  /** Unmounts the room. */
  hideRoom(): void;
  /** Subscriptions the client has now, by channel. */
  subscriptions(): string[];
}

declare global {
  interface Window {
    reactPage: ReactPageApi;
  }
}

const params = new URLSearchParams(location.search);
const { ctor, gate } = testWebSocket(Number(params.get('dead')));
const client = new Client(params.get('url') ?? '', {
  user: 'page-react',
  info: { name: 'React page' },
  WebSocket: ctor,
  transports: ['websocket'], // outages are made with the WebSocket gate, which SSE would go around
  minReconnectDelay: 100,
  maxReconnectDelay: 1000,
});

const renders: Record<string, number> = {};
const statusLog: string[] = [];
const rendered = (id: string) => (renders[id] = (renders[id] ?? 0) + 1);

const ids = new WeakMap<Publication, number>();
let nextId = 0;
const keyOf = (p: Publication) => {
  let id = ids.get(p);
  if (id === undefined) ids.set(p, (id = nextId++));
  return id;
};
const textOf = (p: Publication) => {
  const d = p.data as { text?: unknown } | undefined;
  return typeof d?.text === 'string' ? d.text : JSON.stringify(p.data);
};

function Status() {
  rendered('status');
  const { connectionStatus, isOnline } = useRealtime();
  useEffect(() => {
    statusLog.push(connectionStatus);
  }, [connectionStatus]);
  return (
    <p>
      Connection: <b id="status">{connectionStatus}</b> (<span id="online">{isOnline ? 'online' : 'offline'}</span>)
    </p>
  );
}

function Messages({ id, channel }: { id: string; channel: string }) {
  rendered(id);
  const { state, publications, recovered, error } = useSubscription(channel, { limit: 20 });
  return (
    <section id={id}>
      <h2>
        {channel}: <span className="state">{state}</span>, recovered <span className="recovered">{String(recovered)}</span>
        {error ? <span className="error"> {error.message}</span> : null}
      </h2>
      <ul className="messages">
        {publications.map((p) => (
          <li key={keyOf(p)}>{textOf(p)}</li>
        ))}
      </ul>
    </section>
  );
}

function Members({ channel }: { channel: string }) {
  rendered('members');
  const { members, error } = usePresence(channel);
  return (
    <section>
      <h2>Members {error ? <span className="error">{error.message}</span> : null}</h2>
      <ul id="members">
        {[...members].sort((a, b) => a.user.localeCompare(b.user)).map((m) => (
          <li key={m.client}>
            {m.user}
            {m.state ? ` (${m.state})` : ''}
          </li>
        ))}
      </ul>
    </section>
  );
}

function App() {
  rendered('app');
  const [channel, setChannel] = useState('chat:room-d');
  const [shown, setShown] = useState(true);
  window.reactPage.setChannel = setChannel;
  window.reactPage.hideRoom = () => setShown(false);
  return (
    <main>
      <h1>wsedge React test page</h1>
      <Status />
      {shown ? (
        <>
          <Messages id="room" channel={channel} />
          <Members channel={channel} />
        </>
      ) : null}
      <Messages id="other" channel="chat:other" />
      <StrictMode>
        <Messages id="strict" channel="chat:strict" />
      </StrictMode>
    </main>
  );
}

window.reactPage = {
  renders,
  statusLog,
  gate,
  setChannel: () => {},
  hideRoom: () => {},
  subscriptions: () => [...client.subscriptions().keys()].sort(),
};
const root = document.getElementById('root');
if (!root) throw new Error('no #root');
createRoot(root).render(
  <RealtimeProvider client={client}>
    <App />
  </RealtimeProvider>,
);
