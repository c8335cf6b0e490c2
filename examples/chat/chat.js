// A chat room on @wsedge/client: open this page in two tabs against a node
// started with `cargo run --release` (see README.md next to this file).
// Query parameters: ?user=ann&channel=chat:lobby&ws=ws://127.0.0.1:8080/ws
import { Client } from '@wsedge/client';

const params = new URLSearchParams(location.search);
const user = params.get('user') || `guest-${Math.random().toString(36).slice(2, 6)}`;
const channel = params.get('channel') || 'chat:lobby';
const url = params.get('ws') || `ws://${location.hostname || '127.0.0.1'}:8080/ws`;

const $ = (id) => document.getElementById(id);
$('me').textContent = user;
$('channel').textContent = channel;

function show(from, text, note) {
  const li = document.createElement('li');
  const who = document.createElement('b');
  who.textContent = `${from}: `;
  li.append(who, text);
  if (note) li.title = note;
  $('log').append(li);
}

// `user` is taken as given by a node without auth (the embedded default);
// behind `[auth]` pass `getToken: () => fetch('/my-token').then((r) => r.text())`.
const client = new Client(url, { user });
client.on('state', ({ newState }) => {
  $('status').textContent = newState;
  $('status').dataset.state = newState;
});
client.subscribe(channel, {
  onPublication: (p) => show(String(p.data?.user ?? '?'), String(p.data?.text ?? ''), `offset ${p.offset}`),
});
client.connect();

$('send').addEventListener('submit', (e) => {
  e.preventDefault();
  const text = $('text').value.trim();
  if (!text) return;
  $('text').value = '';
  // Offline, the publication waits in the outbox and goes once when back.
  client.publish(channel, { user, text }).catch((err) => show('not sent', `${text} (${err.message})`));
});
