/**
 * Browser: the SSE fallback with Chromium's own `EventSource` and `fetch`,
 * against a real wsedge serving it (`WSEDGE_SSE=true`). The page reaches
 * the node only through a proxy (test/helpers/http-proxy.ts) that refuses
 * WebSocket upgrades and passes every other request, so the client, with
 * its default transports, must fall back on its own; a Node client on a
 * WebSocket straight to the node is the other side of the conversation.
 * Skipped, loudly, without /usr/bin/chromium or the server binary.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import type { Browser, BrowserContext, Page } from 'playwright-core';

import { Client, LocalCode, type Publication } from '../../src/index.js';
import { launchChromium, skipReason, startPageServer, waitInPage, watchPage, type PageServer } from '../helpers/browser.js';
import { HttpOnlyProxy } from '../helpers/http-proxy.js';
import { EdgeServer, freePort, waitFor, waitForAsync } from '../helpers/server.js';

const skip = skipReason();
if (skip) process.stderr.write(`\n!!! ${skip}\n\n`);

let browser: Browser | undefined;
let pages: PageServer | undefined;
const contexts: BrowserContext[] = [];
const servers: EdgeServer[] = [];
const proxies: HttpOnlyProxy[] = [];
const clients: Client[] = [];

before(async () => {
  if (skip) return;
  pages = await startPageServer();
  browser = await launchChromium();
});

after(async () => {
  for (const c of clients) c.disconnect();
  for (const c of contexts) await c.close().catch(() => {});
  await browser?.close();
  await pages?.close();
  for (const p of proxies) await p.close();
  for (const s of servers) await s.stop();
});

async function openPage(name: string): Promise<{ page: Page; errors: string[] }> {
  const context = await (browser as Browser).newContext();
  contexts.push(context);
  const page = await context.newPage();
  const errors = watchPage(page, name);
  await page.goto(`${(pages as PageServer).origin}/plain.html`);
  await waitInPage(page, 'the page module', () => window.edge !== undefined);
  return { page, errors };
}

test('in the page, behind a proxy that refuses WebSocket upgrades: the default transports fall back to SSE; publish and receive; a close event; recovery; back to WebSocket once upgrades pass', { skip }, async () => {
  const server = await EdgeServer.start(
    `
[access]
allowed_origins = ["${(pages as PageServer).origin}"]

[[namespace]]
name = "chat"
history_size = 100
history_ttl = "10m"
recover = true
`,
    { env: { WSEDGE_SSE: 'true' } },
  );
  servers.push(server);
  const proxy = await HttpOnlyProxy.start(server.port);
  proxies.push(proxy);

  // bob: a WebSocket straight to the node.
  const bob = new Client(server.url, { user: 'bob-s', transports: ['websocket'] });
  bob.on('error', () => {});
  clients.push(bob);
  bob.connect();
  const bobSub = bob.subscribe('chat:room-s');
  const atBob: Publication[] = [];
  bobSub.on('publication', (p) => atBob.push(p));
  await waitFor('bob subscribed', () => bobSub.state === 'subscribed');

  // The page: only the proxy's URL, the browser's own WebSocket, the
  // default transports (['websocket', 'sse']) and fallbackAfter (2).
  const { page, errors } = await openPage('s');
  await page.evaluate((o) => window.edge.start(o), {
    url: proxy.url,
    user: 'page-s',
    deadPort: await freePort(),
    nativeWebSocket: true,
    recordSse: true,
    webSocketRetryInterval: 1000,
  });
  await waitInPage(page, 'connected over SSE', () => window.edge.state() === 'connected');
  assert.equal(await page.evaluate(() => window.edge.transport()), 'sse');
  assert.deepEqual(await page.evaluate(() => window.edge.log.connected), ['sse']);
  assert.ok(proxy.refusedUpgrades >= 2, `WebSocket attempts refused first: ${proxy.refusedUpgrades}`);
  assert.equal(proxy.tunnelledUpgrades, 0);
  assert.equal(proxy.streams, 1);
  const first = (await page.evaluate(() => window.edge.log.sseEvents))[0];
  assert.equal(first?.type, 'session');
  const session = (JSON.parse(first?.data ?? '{}') as { session?: unknown }).session;
  assert.ok(typeof session === 'string' && session !== '', 'the node named the session');
  assert.equal(await server.metric('wsedge_sse_streams'), 1, "the node holds the page's stream");
  await page.evaluate(() => window.edge.subscribe('chat:room-s'));
  await waitInPage(page, 'subscribed over SSE', () => window.edge.log.subscribed['chat:room-s']?.length === 1);

  // Both directions over SSE: bob's publication down the page's stream,
  // the page's up a POST to bob.
  await bob.publish('chat:room-s', 'to-page-1');
  await page.evaluate(() => window.edge.publish('chat:room-s', { from: 'page' }, 'from-page'));
  await waitInPage(page, 'both publications in the page', () => window.edge.log.publications['chat:room-s']?.length === 2);
  await waitFor('the page publication at bob', () => atBob.length === 2);
  assert.deepEqual(
    atBob.map((p) => p.data),
    ['to-page-1', { from: 'page' }],
  );
  await waitInPage(page, 'the publish answered', () => window.edge.log.published['from-page'] !== undefined);
  assert.equal(await page.evaluate(() => window.edge.log.published['from-page']), 2);
  assert.deepEqual([...proxy.contentTypes], ['text/plain;charset=UTF-8'], 'CORS-simple POSTs');
  assert.ok(proxy.posts.length >= 3, `posts: ${proxy.posts.join(',')}`);
  assert.ok(
    proxy.posts.every((s) => s === 204),
    `the node took every POST: ${proxy.posts.join(',')}`,
  );
  assert.deepEqual(new Set(proxy.postPaths), new Set([`/ws/sse/${session}`]), 'every POST to the session the stream named');

  // The node closes the session (server API): `event: close` with 3006.
  // While the proxy keeps the event stream away (503), bob publishes; then
  // the page comes back over SSE and recovers what it missed.
  proxy.refuseStreams = true;
  await server.callApi('disconnect', { user: 'page-s' });
  await waitInPage(page, 'the close event', () => window.edge.log.sseEvents.some((e) => e.type === 'close'));
  const close = (await page.evaluate(() => window.edge.log.sseEvents)).find((e) => e.type === 'close');
  assert.equal((JSON.parse(close?.data ?? '{}') as { code?: unknown }).code, 3006);
  await waitInPage(page, 'disconnected', () => window.edge.log.disconnected.some((d) => d.code === 3006));
  const closed = await page.evaluate(() => window.edge.log.disconnected.find((d) => d.code === 3006));
  assert.deepEqual(closed, { code: 3006, reconnect: true });
  for (const d of ['missed-3', 'missed-4']) await bob.publish('chat:room-s', d);
  await waitFor('the page trying to come back', () => proxy.refusedStreams >= 1);
  proxy.refuseStreams = false;
  await waitInPage(page, 'resubscribed over SSE', () => window.edge.log.subscribed['chat:room-s']?.length === 2);
  const again = await page.evaluate(() => window.edge.log.subscribed['chat:room-s']?.[1]);
  assert.equal(again?.recovered, true);
  assert.equal(again?.replayed, 2);
  assert.equal(await page.evaluate(() => window.edge.transport()), 'sse');
  assert.equal(proxy.streams, 2);
  assert.equal(proxy.tunnelledUpgrades, 0);

  // The proxy lets upgrades through: the next probe opens a WebSocket and
  // the client moves over, recovering.
  proxy.refuseUpgrades = false;
  await waitInPage(page, 'resubscribed over WebSocket', () => window.edge.log.subscribed['chat:room-s']?.length === 3);
  const log = await page.evaluate(() => window.edge.log);
  assert.equal(await page.evaluate(() => window.edge.transport()), 'websocket');
  assert.deepEqual(log.connected, ['sse', 'sse', 'websocket']);
  assert.deepEqual(log.disconnected.at(-1), { code: LocalCode.transportSwitch, reconnect: true });
  assert.equal(log.subscribed['chat:room-s']?.[2]?.recovered, true);
  assert.ok(proxy.tunnelledUpgrades >= 2, `the probe and the connection: ${proxy.tunnelledUpgrades}`);
  await waitForAsync('the node to end the SSE stream left behind', async () => (await server.metric('wsedge_sse_streams')) === 0);
  await bob.publish('chat:room-s', 'live-5');
  await waitInPage(page, 'live-5 over WebSocket', () => window.edge.log.publications['chat:room-s']?.length === 5);
  assert.deepEqual(
    (await page.evaluate(() => window.edge.log.publications['chat:room-s']))?.map((p) => [p.offset, p.data, p.replayed]),
    [
      [1, 'to-page-1', false],
      [2, { from: 'page' }, false],
      [3, 'missed-3', true],
      [4, 'missed-4', true],
      [5, 'live-5', false],
    ],
  );
  assert.deepEqual(log.errors, []);
  // Chromium logs each event stream the proxy refused; nothing else went wrong.
  const refused = 'Failed to load resource: the server responded with a status of 503 (Service Unavailable)';
  assert.deepEqual(
    errors.filter((e) => e !== refused),
    [],
  );
  assert.equal(errors.length, proxy.refusedStreams);
});
