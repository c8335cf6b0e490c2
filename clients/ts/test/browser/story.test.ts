/**
 * Browser: `useStory` in a page bundled with esbuild, in headless
 * Chromium, against a real wsedge process with one editor slot: the page
 * waits in line behind a Node editor, shows its sections and locks,
 * writes while queued, is promoted when the editor leaves, and leaves the
 * story when the component unmounts. Skipped, loudly, without
 * /usr/bin/chromium or the server binary.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import type { Browser } from 'playwright-core';

import { Client, type StoryUpdateEvent } from '../../src/index.js';
import { launchChromium, skipReason, startPageServer, waitForText, waitInPage, watchPage, type PageServer } from '../helpers/browser.js';
import { EdgeServer, freePort, waitFor } from '../helpers/server.js';

const skip = skipReason();
if (skip) process.stderr.write(`\n!!! ${skip}\n\n`);

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

function node(url: string, user: string): Client {
  const c = new Client(url, { user, minReconnectDelay: 100, maxReconnectDelay: 1000 });
  c.on('error', () => {});
  clients.push(c);
  c.connect();
  return c;
}

test('useStory: queued behind an editor, sections and locks in the DOM, promoted, and left on unmount', { skip }, async () => {
  const server = await EdgeServer.start(`
[access]
allowed_origins = ["${(pages as PageServer).origin}"]

[[namespace]]
name = "story"
collaboration = true
max_editors = 1
history_size = 100
history_ttl = "10m"
recover = true
`);
  servers.push(server);
  const bob = node(server.url, 'bob');
  const b = bob.story('story:page');
  await waitFor('bob joined', () => b.state === 'joined');
  await b.lock('intro');
  await b.update('intro', 'hello');
  const cy = node(server.url, 'cy');
  const viewer = cy.story('story:page', { role: 'viewer' });
  const seen: StoryUpdateEvent[] = [];
  viewer.on('update', (e) => seen.push(e));
  await waitFor('cy joined', () => viewer.state === 'joined');

  const page = await (browser as Browser).newPage({ viewport: { width: 800, height: 500 } });
  const errors = watchPage(page, 'story');
  await page.goto(`${(pages as PageServer).origin}/story.html?url=${encodeURIComponent(server.url)}&dead=${await freePort()}`);

  // One slot, taken by bob: the page waits in line, and shows the story as it is.
  await waitForText(page, '#state', 'joined');
  await waitForText(page, '#role', 'queued');
  await waitForText(page, '#position', '1');
  await waitForText(page, '#editors li', 'bob');
  await waitForText(page, '#sections li', 'intro v1 "hello" locked by bob');

  // bob writes again: the section re-renders with the new version.
  await b.update('intro', 'hello again');
  await waitForText(page, '#sections li', 'intro v2 "hello again" locked by bob');

  // The page writes while in line: the update waits for the slot.
  await page.evaluate(() => {
    void window.storyPage.write('p2', { text: 'from the page' });
  });
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(seen.filter((e) => e.section === 'p2').length, 0, 'not sent while queued');

  // bob leaves: the page is promoted, its update lands, his lock is gone.
  b.leave();
  await waitForText(page, '#role', 'editor');
  await waitForText(page, '#position', '-');
  await waitForText(page, '#editors li', 'page-story');
  await waitForText(page, '#sections li', 'intro v2 "hello again"|p2 v1 {"text":"from the page"}');
  await waitFor('cy saw the page\'s update', () => seen.some((e) => e.section === 'p2'));
  const p2 = seen.filter((e) => e.section === 'p2');
  assert.deepEqual(
    p2.map((e) => [e.version, e.data, e.by?.user]),
    [[1, { text: 'from the page' }, 'page-story']],
    'written once, under StrictMode too',
  );
  assert.deepEqual(viewer.editors.map((e) => e.user), ['page-story']);

  assert.equal(await page.evaluate(() => window.storyPage.renders.app), 1, 'story changes re-render the story view only');

  // Unmounting the last component that uses the story leaves it.
  await page.evaluate(() => window.storyPage.hide());
  await waitInPage(page, 'the story left', () => !window.storyPage.hasStory());
  await waitFor('cy saw the page leave', () => viewer.editors.length === 0);

  assert.deepEqual(errors, []);
  await page.close();
});
