/**
 * Browser: `@wsedge/client` from `dist/index.js`, unbundled, in headless
 * Chromium, against a real wsedge process. Skipped, loudly, without
 * /usr/bin/chromium or the server binary.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import type { Browser, BrowserContext, Page } from 'playwright-core';

import { Client, type Publication, type SubscribedEvent, type TransportKind } from '../../src/index.js';
import { CHROMIUM, launchChromium, skipReason, startPageServer, waitInPage, watchPage, type PageServer } from '../helpers/browser.js';
import { EdgeServer, freePort, waitFor, WSEDGE_BIN } from '../helpers/server.js';

/**
 * These tests are about the WebSocket (deflate, origins, outages made with
 * the page's WebSocket gate, which the SSE fallback would go around):
 * WebSocket only. test/browser/sse.test.ts covers the fallback.
 */
const WS_ONLY: TransportKind[] = ['websocket'];

const skip = skipReason();
if (skip) process.stderr.write(`\n!!! ${skip}\n\n`);
else process.stderr.write(`browser: ${CHROMIUM}, ${WSEDGE_BIN}\n`);

let browser: Browser | undefined;
let pages: PageServer | undefined;
const contexts: BrowserContext[] = [];
const servers: EdgeServer[] = [];
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
  for (const s of servers) await s.stop();
});

/** Browsers send `Origin`: only the page server's origin may upgrade. */
function config(origin: string): string {
  return `
[access]
allowed_origins = ["${origin}"]

[[namespace]]
name = "chat"
history_size = 100
history_ttl = "10m"
recover = true
presence = true
join_leave = true
`;
}

async function start(port?: number): Promise<EdgeServer> {
  const s = await EdgeServer.start(config((pages as PageServer).origin), port === undefined ? {} : { port });
  servers.push(s);
  return s;
}

function nodeClient(url: string, user: string): Client {
  const c = new Client(url, { user, minReconnectDelay: 100, maxReconnectDelay: 1000 });
  c.on('error', () => {});
  clients.push(c);
  c.connect();
  return c;
}

/** A new browser context (its own IndexedDB) with the plain page loaded. */
async function openPage(name: string, origin = (pages as PageServer).origin): Promise<{ page: Page; errors: string[] }> {
  const context = await (browser as Browser).newContext();
  contexts.push(context);
  const page = await context.newPage();
  const errors = watchPage(page, name);
  await page.goto(`${origin}/plain.html`);
  await waitInPage(page, 'the page module', () => window.edge !== undefined);
  return { page, errors };
}

function collect(sub: { on(e: 'publication', l: (p: Publication) => void): unknown }): Publication[] {
  const out: Publication[] = [];
  sub.on('publication', (p) => out.push(p));
  return out;
}

test('in the page: connect, subscribe, publish, receive, with permessage-deflate; another origin is refused', { skip }, async () => {
  const server = await start();
  const { page, errors } = await openPage('a');
  await page.evaluate((o) => window.edge.start(o), { url: server.url, user: 'page-a', deadPort: await freePort(), transports: WS_ONLY });
  await page.evaluate(() => window.edge.subscribe('chat:room-a'));
  await waitInPage(page, 'subscribed', () => window.edge.log.subscribed['chat:room-a']?.length === 1);
  assert.equal(await page.evaluate(() => window.edge.state()), 'connected');
  // A big, compressible publication (well above compression_min_size,
  // 256 B), then a small one.
  const big = { text: 'big', body: 'the quick brown fox jumps over the lazy dog; '.repeat(400) };
  const bigSize = JSON.stringify(big).length;
  const metrics = async () => ({
    deflated: await server.metric('wsedge_publication_encodes_total', { kind: 'json_deflate' }),
    sent: await server.metric('wsedge_bytes_sent_total'),
    received: await server.metric('wsedge_bytes_received_total'),
  });
  const m0 = await metrics();
  await page.evaluate((d) => window.edge.publish('chat:room-a', d, 'big'), big);
  await waitInPage(page, 'the big publication back', () => window.edge.log.publications['chat:room-a']?.length === 1);
  const m1 = await metrics();
  await page.evaluate(() => window.edge.publish('chat:room-a', { text: 'small' }, 'small'));
  await waitInPage(page, 'the small publication back', () => window.edge.log.publications['chat:room-a']?.length === 2);
  const log = await page.evaluate(() => window.edge.log);
  assert.deepEqual(log.published, { big: 1, small: 2 });
  assert.deepEqual(log.publications['chat:room-a'], [
    { offset: 1, data: big, replayed: false },
    { offset: 2, data: { text: 'small' }, replayed: false },
  ]);

  // The browser negotiated permessage-deflate (the server's answer, PROTOCOL.md) …
  const extensions = await page.evaluate(() => window.edge.extensions());
  assert.equal(extensions.length, 1);
  assert.match(extensions[0] ?? '', /^permessage-deflate\b/);
  assert.match(extensions[0] ?? '', /server_no_context_takeover/);
  // … the server encoded the publication in the deflate form for it, and
  // both directions carried a fraction of its bytes: the browser's publish
  // and the server's push were compressed.
  process.stderr.write(`deflate: a ${bigSize} B publication: ${m1.received - m0.received} B received, ${m1.sent - m0.sent} B sent\n`);
  assert.ok(m1.deflated - m0.deflated >= 1, 'a json_deflate encode');
  assert.ok(m1.received - m0.received < bigSize / 4, `received ${m1.received - m0.received} B for a ${bigSize} B publish`);
  assert.ok(m1.sent - m0.sent < bigSize / 4, `sent ${m1.sent - m0.sent} B for a ${bigSize} B publication and its reply`);

  // The same page from another origin: the upgrade is refused (403) and the
  // client keeps retrying without ever connecting.
  const refusedBefore = await server.metric('wsedge_connections_refused_total', { kind: 'origin_refused' });
  const other = await openPage('a-other-origin', await (pages as PageServer).anotherOrigin());
  await other.page.evaluate((o) => window.edge.start(o), { url: server.url, user: 'page-a2', deadPort: await freePort(), transports: WS_ONLY });
  await waitInPage(other.page, 'two refused attempts', () => window.edge.log.disconnected.length >= 2);
  assert.ok((await server.metric('wsedge_connections_refused_total', { kind: 'origin_refused' })) - refusedBefore >= 2);
  const otherLog = await other.page.evaluate(() => window.edge.log);
  assert.ok(!otherLog.states.includes('connected'));
  assert.ok(otherLog.disconnected.every((d) => d.code === 1006 && d.reconnect));
  assert.deepEqual(other.errors, []);
  await other.page.context().close();

  assert.deepEqual(log.errors, []);
  assert.deepEqual(errors, []);
});

test('in the page: the server drops the connection; reconnect with backoff, recovered: true with the missed publications', { skip }, async () => {
  const server = await start();
  const bob = nodeClient(server.url, 'bob-b');
  const { page, errors } = await openPage('b');
  await page.evaluate((o) => window.edge.start(o), { url: server.url, user: 'page-b', deadPort: await freePort(), transports: WS_ONLY });
  await page.evaluate(() => window.edge.subscribe('chat:room-b'));
  await waitInPage(page, 'subscribed', () => window.edge.log.subscribed['chat:room-b']?.length === 1);
  await waitFor('bob connected', () => bob.state === 'connected');
  await bob.publish('chat:room-b', 'live-1');
  await waitInPage(page, 'live-1', () => window.edge.log.publications['chat:room-b']?.length === 1);

  // Keep the page away (its sockets go to a dead port) until bob has
  // published what it misses, then let it back.
  await page.evaluate(() => {
    if (window.edge.gate) window.edge.gate.open = false;
  });
  await server.callApi('disconnect', { user: 'page-b' });
  await waitInPage(page, 'the drop', () => window.edge.log.disconnected.length >= 1);
  // At least two attempts at the dead port: the backoff at work.
  await waitInPage(page, 'two retries', () => window.edge.log.reconnecting.length >= 2);
  for (const d of ['missed-2', 'missed-3', 'missed-4']) await bob.publish('chat:room-b', d);
  await page.evaluate(() => {
    if (window.edge.gate) window.edge.gate.open = true;
  });
  await waitInPage(page, 'resubscribed', () => window.edge.log.subscribed['chat:room-b']?.length === 2);
  await bob.publish('chat:room-b', 'live-5');
  await waitInPage(page, 'live-5', () => window.edge.log.publications['chat:room-b']?.length === 5);

  const log = await page.evaluate(() => window.edge.log);
  assert.deepEqual(log.disconnected[0], { code: 3006, reconnect: true }, 'the server API disconnect, reconnect advised');
  assert.deepEqual(
    log.reconnecting.map((r) => r.attempt),
    log.reconnecting.map((_, i) => i + 1),
  );
  for (const r of log.reconnecting) assert.ok(r.delay >= 100 && r.delay <= 1000, `delay ${r.delay} within [100, 1000]`);
  assert.deepEqual(log.states.slice(0, 3), ['connecting', 'connected', 'connecting']);
  assert.equal(log.states.at(-1), 'connected');
  const [first, again] = log.subscribed['chat:room-b'] as SubscribedEvent[];
  assert.equal(again?.recovering, true);
  assert.equal(again?.recovered, true);
  assert.equal(again?.replayed, 3);
  assert.equal(again?.epoch, first?.epoch);
  assert.deepEqual(log.publications['chat:room-b'], [
    { offset: 1, data: 'live-1', replayed: false },
    { offset: 2, data: 'missed-2', replayed: true },
    { offset: 3, data: 'missed-3', replayed: true },
    { offset: 4, data: 'missed-4', replayed: true },
    { offset: 5, data: 'live-5', replayed: false },
  ]);
  assert.deepEqual(log.errors, []);
  assert.deepEqual(errors, []);
});

test('in the page: the binary form, its codec loaded on demand from dist/', { skip }, async () => {
  const server = await start();
  const bob = nodeClient(server.url, 'bob-bin');
  const sub = bob.subscribe('chat:room-bin');
  const got = collect(sub);
  await waitFor('bob subscribed', () => sub.state === 'subscribed');
  const { page, errors } = await openPage('bin');
  const loaded = () => page.evaluate(() => performance.getEntriesByType('resource').some((e) => e.name.endsWith('/dist/binary-codec.js')));
  assert.equal(await loaded(), false, 'not loaded by the import of @wsedge/client');
  await page.evaluate((o) => window.edge.start(o), { url: server.url, user: 'page-bin', deadPort: await freePort(), format: 'binary' as const, transports: WS_ONLY });
  await page.evaluate(() => window.edge.subscribe('chat:room-bin'));
  await waitInPage(page, 'subscribed', () => window.edge.log.subscribed['chat:room-bin']?.length === 1);
  assert.equal(await loaded(), true, 'loaded for the first binary connection');
  await page.evaluate(() => window.edge.publish('chat:room-bin', { text: 'from the page' }, 'p1'));
  // The page's publish goes through its outbox (IndexedDB first): wait for it before bob's, so the order is known.
  await waitFor("the page's publication at bob", () => got.length === 1);
  await bob.publish('chat:room-bin', ['from', 'bob']);
  await waitInPage(page, 'both publications in the page', () => window.edge.log.publications['chat:room-bin']?.length === 2);
  await waitFor('both publications at bob', () => got.length === 2);
  const log = await page.evaluate(() => window.edge.log);
  assert.deepEqual(log.publications['chat:room-bin'], [
    { offset: 1, data: { text: 'from the page' }, replayed: false },
    { offset: 2, data: ['from', 'bob'], replayed: false },
  ]);
  assert.deepEqual(
    got.map((p) => p.data),
    [{ text: 'from the page' }, ['from', 'bob']],
  );
  assert.deepEqual(log.errors, []);
  assert.deepEqual(errors, []);
});

test('in the page: server SIGKILLed; publications made offline wait in IndexedDB (across a reload) and are published once after the restart', { skip }, async () => {
  const first = await start();
  const port = first.port;
  const alice = nodeClient(first.url, 'alice-c');
  const sub = alice.subscribe('chat:room-c');
  const got = collect(sub);
  const subscribed: SubscribedEvent[] = [];
  sub.on('subscribed', (e) => subscribed.push(e));
  const { page, errors } = await openPage('c');
  const start1 = { url: first.url, user: 'page-c', deadPort: await freePort(), outboxDb: 'outbox-c', transports: WS_ONLY };
  await page.evaluate((o) => window.edge.start(o), start1);
  await waitFor('alice subscribed', () => sub.state === 'subscribed');
  await page.evaluate(() => window.edge.publish('chat:room-c', 'before', 'before'));
  await waitFor('"before" at alice', () => got.length === 1);

  await first.kill('SIGKILL');
  await waitInPage(page, 'the page lost the server', () => window.edge.state() === 'connecting');
  await waitFor('alice lost the server', () => alice.state === 'connecting');

  // Published while the server is down: they wait in the IndexedDB outbox.
  await page.evaluate(() => {
    for (const d of ['offline-1', 'offline-2', 'offline-3']) window.edge.publish('chat:room-c', d, d);
  });
  await page.evaluate(() => window.edge.outboxFlushed());
  assert.deepEqual(await page.evaluate(() => window.edge.storedEntries('outbox-c')), ['offline-1', 'offline-2', 'offline-3']);
  const log1 = await page.evaluate(() => window.edge.log);
  assert.deepEqual(log1.published, { before: 1 }, 'nothing offline was answered');

  // Reload: the promises are gone, the entries are not. The new client
  // restores them (gate closed until alice is back, so she sees the flush live).
  await page.reload();
  await waitInPage(page, 'the page module', () => window.edge !== undefined);
  await page.evaluate((o) => window.edge.start(o), { ...start1, gateOpen: false });
  assert.equal(await page.evaluate(() => window.edge.outboxSize()), 3, 'restored from IndexedDB');
  await page.evaluate(() => window.edge.publish('chat:room-c', 'offline-4', 'offline-4'));

  await start(port);
  await waitFor('alice resubscribed after the restart', () => subscribed.length === 2, 30_000);
  assert.equal(subscribed[1]?.recovered, false, 'a new epoch after the restart');
  await page.evaluate(() => {
    if (window.edge.gate) window.edge.gate.open = true;
  });
  await waitInPage(page, 'the outbox sent', () => window.edge.log.outboxSent.length === 4 && window.edge.outboxSize() === 0);
  await waitFor('the offline publications at alice', () => got.length >= 5);
  // A marker after them: anything sent twice would arrive before it.
  await alice.publish('chat:room-c', 'end');
  await waitFor('the marker at alice', () => got.some((p) => p.data === 'end'));

  const log2 = await page.evaluate(() => window.edge.log);
  assert.deepEqual(log2.outboxSent, [
    { data: 'offline-1', offset: 1 },
    { data: 'offline-2', offset: 2 },
    { data: 'offline-3', offset: 3 },
    { data: 'offline-4', offset: 4 },
  ]);
  assert.deepEqual(log2.published, { 'offline-4': 4 });
  assert.deepEqual(
    got.map((p) => [p.offset, p.data]),
    [
      [1, 'before'],
      [1, 'offline-1'],
      [2, 'offline-2'],
      [3, 'offline-3'],
      [4, 'offline-4'],
      [5, 'end'],
    ],
    'each offline publication exactly once',
  );
  const hist = await alice.history('chat:room-c');
  assert.deepEqual(
    hist.publications.map((p) => p.data),
    ['offline-1', 'offline-2', 'offline-3', 'offline-4', 'end'],
  );
  await page.evaluate(() => window.edge.outboxFlushed());
  assert.deepEqual(await page.evaluate(() => window.edge.storedEntries('outbox-c')), [], 'IndexedDB emptied');
  assert.deepEqual(log1.errors, []);
  assert.deepEqual(log2.errors, []);
  assert.deepEqual(errors, []);
});
