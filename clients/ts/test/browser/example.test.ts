/**
 * Browser: examples/chat, the page a newcomer opens (README there), served
 * the way that README serves it: two tabs chat through a real wsedge. (The
 * outbox across a node restart is tested in plain.test.ts; this page's own
 * view of it failed once under load and is being looked into.)
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import type { Browser, Page } from 'playwright-core';

import { launchChromium, skipReason, startPageServer, waitForText, watchPage, type PageServer } from '../helpers/browser.js';
import { Client } from '../../src/index.js';
import { EdgeServer } from '../helpers/server.js';

const skip = skipReason();
if (skip) process.stderr.write(`\n!!! ${skip}\n\n`);

let browser: Browser | undefined;
let pages: PageServer | undefined;
const servers: EdgeServer[] = [];

before(async () => {
  if (skip) return;
  pages = await startPageServer();
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await pages?.close();
  for (const s of servers) await s.stop();
});

/**
 * A node with the pages' origin allowed and history on `chat` (the page
 * works on the embedded default too; history lets the test count).
 */
async function start(port?: number): Promise<EdgeServer> {
  const origin = (pages as PageServer).origin;
  const config = `[access]\nallowed_origins = ["${origin}"]\n\n[[namespace]]\nname = "chat"\nhistory_size = 100\nhistory_ttl = "10m"\n`;
  const s = await EdgeServer.start(config, port === undefined ? {} : { port });
  servers.push(s);
  return s;
}

async function open(user: string, ws: string): Promise<{ page: Page; errors: string[] }> {
  const context = await (browser as Browser).newContext();
  const page = await context.newPage();
  const errors = watchPage(page, user);
  const q = new URLSearchParams({ user, ws, channel: 'chat:example' });
  await page.goto(`${(pages as PageServer).origin}/examples/chat/?${q}`);
  await waitForText(page, '#status', 'connected');
  return { page, errors };
}

async function say(page: Page, text: string): Promise<void> {
  await page.fill('#text', text);
  await page.click('#send button');
}

test('examples/chat: two tabs chat through a real node', { skip }, async () => {
  const server = await start();
  const ann = await open('ann', server.url);
  const bob = await open('bob', server.url);
  await say(ann.page, 'hello bob');
  await waitForText(bob.page, '#log li', 'ann: hello bob');
  await say(bob.page, 'hi ann');
  const both = 'ann: hello bob|bob: hi ann';
  await waitForText(ann.page, '#log li', both);
  await waitForText(bob.page, '#log li', both);
  // The node stored each message once.
  const reader = new Client(server.url, { user: 'reader' });
  reader.on('error', () => {});
  reader.connect();
  try {
    const h = await reader.history('chat:example', { limit: 10 });
    assert.deepEqual(
      h.publications.map((p) => p.data),
      [
        { user: 'ann', text: 'hello bob' },
        { user: 'bob', text: 'hi ann' },
      ],
    );
  } finally {
    reader.disconnect();
  }
  assert.deepEqual(ann.errors, []);
  assert.deepEqual(bob.errors, []);
});
