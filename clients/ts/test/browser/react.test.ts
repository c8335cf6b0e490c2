/**
 * Browser: the React bindings (`@wsedge/client/react`) in a page bundled
 * with esbuild, in headless Chromium, against a real wsedge process: the
 * connection status, a channel's messages and members as the DOM shows
 * them through a drop, a SIGKILL and a restart; render counts; unsubscribe
 * on channel change and unmount. Saves a screenshot to
 * test-artifacts/react.png. Skipped, loudly, without /usr/bin/chromium or
 * the server binary.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import type { Browser } from 'playwright-core';

import { Client } from '../../src/index.js';
import {
  artifactPath,
  CHROMIUM,
  launchChromium,
  skipReason,
  startPageServer,
  waitForText,
  waitInPage,
  watchPage,
  type PageServer,
} from '../helpers/browser.js';
import { EdgeServer, freePort, waitFor, waitForAsync, WSEDGE_BIN } from '../helpers/server.js';

const skip = skipReason();
if (skip) process.stderr.write(`\n!!! ${skip}\n\n`);
else process.stderr.write(`browser: ${CHROMIUM}, ${WSEDGE_BIN}\n`);

let browser: Browser | undefined;
let pages: PageServer | undefined;
const servers: EdgeServer[] = [];
const clients: Client[] = [];

before(async () => {
  if (skip) return;
  pages = await startPageServer();
  browser = await launchChromium();
});

after(async () => {
  for (const c of clients) c.disconnect();
  await browser?.close();
  await pages?.close();
  for (const s of servers) await s.stop();
});

async function start(port?: number): Promise<EdgeServer> {
  const toml = `
[access]
allowed_origins = ["${(pages as PageServer).origin}"]

[[namespace]]
name = "chat"
history_size = 100
history_ttl = "10m"
recover = true
presence = true
join_leave = true
`;
  const s = await EdgeServer.start(toml, port === undefined ? {} : { port });
  servers.push(s);
  return s;
}

/** The users in a channel's presence, as the server API reports them. */
async function usersIn(server: EdgeServer, channel: string): Promise<string[]> {
  const r = (await server.callApi('presence', { channel })) as { clients: Record<string, { user: string }> };
  return Object.values(r.clients).map((m) => m.user).sort();
}

test('React: status, messages and members in the DOM through a drop, a SIGKILL and a restart; minimal re-renders; unsubscribe on unmount', { skip }, async () => {
  let server = await start();
  const port = server.port;
  const bob = new Client(server.url, { user: 'bob-d', minReconnectDelay: 100, maxReconnectDelay: 1000 });
  bob.on('error', () => {});
  clients.push(bob);
  bob.connect();

  const page = await (browser as Browser).newPage({ viewport: { width: 900, height: 700 } });
  const errors = watchPage(page, 'react');
  await page.goto(`${(pages as PageServer).origin}/react.html?url=${encodeURIComponent(server.url)}&dead=${await freePort()}`);

  // The provider connected the client; every subscription is up.
  await waitForText(page, '#status', 'connected');
  await waitForText(page, '#online', 'online');
  for (const id of ['room', 'other', 'strict']) await waitForText(page, `#${id} .state`, 'subscribed');
  await waitForText(page, '#members li', 'page-react');
  assert.deepEqual(await page.evaluate(() => window.reactPage.subscriptions()), ['chat:other', 'chat:room-d', 'chat:strict']);

  // Publications re-render only the component subscribed to their channel.
  await waitFor('bob connected', () => bob.state === 'connected');
  const r0 = await page.evaluate(() => ({ ...window.reactPage.renders }));
  for (const text of ['one', 'two', 'three']) await bob.publish('chat:room-d', { text });
  await waitForText(page, '#room li', 'one|two|three');
  const r1 = await page.evaluate(() => ({ ...window.reactPage.renders }));
  const roomRenders = (r1.room ?? 0) - (r0.room ?? 0);
  assert.ok(roomRenders >= 1 && roomRenders <= 3, `the room rendered ${roomRenders} times for 3 publications`);
  for (const id of ['app', 'status', 'other', 'strict']) assert.equal(r1[id], r0[id], `${id} did not re-render`);

  // Under StrictMode (mount, unmount, mount) there is one subscription: no duplicates.
  for (const text of ['s1', 's2']) await bob.publish('chat:strict', { text });
  await waitForText(page, '#strict li', 's1|s2');

  // Presence from join, state and leave pushes.
  const bobSub = bob.subscribe('chat:room-d');
  await waitForText(page, '#members li', 'bob-d|page-react');
  await waitFor('bob subscribed', () => bobSub.state === 'subscribed');
  await bobSub.setPresenceState('typing', 60);
  await waitForText(page, '#members li', 'bob-d (typing)|page-react');
  bobSub.unsubscribe();
  await waitForText(page, '#members li', 'page-react');

  // The server drops the page's connection; it stays away (closed gate)
  // while bob publishes, then comes back and recovers what it missed.
  await page.evaluate(() => (window.reactPage.gate.open = false));
  await server.callApi('disconnect', { user: 'page-react' });
  await waitForText(page, '#status', 'connecting');
  await waitForText(page, '#online', 'offline');
  await waitForText(page, '#room .state', 'subscribing');
  for (const text of ['missed-4', 'missed-5']) await bob.publish('chat:room-d', { text });
  await page.evaluate(() => (window.reactPage.gate.open = true));
  await waitForText(page, '#status', 'connected');
  await waitForText(page, '#room .recovered', 'true');
  await waitForText(page, '#room li', 'one|two|three|missed-4|missed-5');

  // SIGKILL: connecting until the server is back on the same port; the new
  // node has a new epoch, so nothing is recovered.
  await server.kill('SIGKILL');
  await waitForText(page, '#status', 'connecting');
  await waitForText(page, '#online', 'offline');
  await waitForText(page, '#room .state', 'subscribing');
  server = await start(port);
  await waitForText(page, '#status', 'connected');
  await waitForText(page, '#room .state', 'subscribed');
  await waitForText(page, '#room .recovered', 'false');
  await waitForText(page, '#members li', 'page-react');
  await bob.publish('chat:room-d', { text: 'after the restart' });
  await waitForText(page, '#room li', 'one|two|three|missed-4|missed-5|after the restart');
  assert.deepEqual(await page.evaluate(() => window.reactPage.statusLog), [
    'disconnected',
    'connecting',
    'connected',
    'connecting',
    'connected',
    'connecting',
    'connected',
  ]);
  const png = artifactPath('react.png');
  await page.screenshot({ path: png, fullPage: true });
  process.stderr.write(`screenshot: ${png}\n`);

  // A new channel: the hooks unsubscribe from the old one (the server
  // agrees) and subscribe to the new one; unmounting unsubscribes.
  await waitForAsync('the page in chat:room-d', async () => (await usersIn(server, 'chat:room-d')).includes('page-react'));
  await page.evaluate(() => window.reactPage.setChannel('chat:room-e'));
  await waitForText(page, '#room .state', 'subscribed');
  await waitForText(page, '#room li', '');
  await waitInPage(page, 'chat:room-d given up', () => !window.reactPage.subscriptions().includes('chat:room-d'));
  assert.deepEqual(await page.evaluate(() => window.reactPage.subscriptions()), ['chat:other', 'chat:room-e', 'chat:strict']);
  await waitForAsync('the page out of chat:room-d', async () => !(await usersIn(server, 'chat:room-d')).includes('page-react'));
  assert.deepEqual(await usersIn(server, 'chat:room-e'), ['page-react']);
  await page.evaluate(() => window.reactPage.hideRoom());
  await waitInPage(page, 'chat:room-e given up', () => !window.reactPage.subscriptions().includes('chat:room-e'));
  assert.deepEqual(await page.evaluate(() => window.reactPage.subscriptions()), ['chat:other', 'chat:strict']);
  await waitForAsync('the page out of chat:room-e', async () => (await usersIn(server, 'chat:room-e')).length === 0);

  assert.deepEqual(errors, []);
  await page.close();
});
