/**
 * Browser tests: Debian's Chromium driven by playwright-core, pages served
 * by a tiny static HTTP server on loopback, the React page bundled with
 * esbuild. Nothing here downloads a browser.
 */
import { accessSync, constants, mkdirSync, readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { dirname, extname, join, normalize, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

import { build } from 'esbuild';
import { chromium, type Browser, type Page } from 'playwright-core';

import { skipReason as serverSkipReason } from './server.js';

/** `clients/ts` (this file runs as `.test-build/test/helpers/browser.js`). */
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

/** The Chromium binary: `$CHROMIUM_BIN`, else Debian's. */
export const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';

/** Where screenshots go (gitignored). */
export const ARTIFACTS = join(ROOT, 'test-artifacts');

/** Why the browser tests cannot run here, or `false` when they can. */
export function skipReason(): string | false {
  const server = serverSkipReason();
  if (server) return server.replace('end-to-end tests', 'browser tests');
  try {
    accessSync(CHROMIUM, constants.X_OK);
    return false;
  } catch {
    return `no Chromium at ${CHROMIUM} (apt-get install -y chromium, or set CHROMIUM_BIN): browser tests SKIPPED`;
  }
}

/**
 * Starts headless Chromium. playwright-core gives each launch a new empty
 * profile directory (it refuses a `--user-data-dir` argument); the flags
 * keep Chromium from calling home, whose connections this closed network
 * refuses.
 */
export function launchChromium(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 60_000,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}

/** Console errors a test provokes on purpose: WebSocket attempts at a dead port, a killed server or a refused origin. */
const EXPECTED_CONSOLE = /^WebSocket connection to '[^']*' failed: /;

/**
 * Collects a page's uncaught exceptions and unexpected console errors
 * (React's warnings among them), which the tests assert empty, and copies
 * every console error to stderr.
 */
export function watchPage(page: Page, name: string): string[] {
  const errors: string[] = [];
  page.on('pageerror', (err) => {
    errors.push(err.message);
    process.stderr.write(`[${name}] page error: ${err.stack ?? err.message}\n`);
  });
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return;
    if (!EXPECTED_CONSOLE.test(msg.text())) errors.push(msg.text());
    process.stderr.write(`[${name}] console: ${msg.text()}\n`);
  });
  return errors;
}

const PLAIN_HTML = `<!doctype html>
<html>
<head>
<meta charset="utf-8">
<title>wsedge: plain page</title>
<script type="importmap">{"imports": {"@wsedge/client": "/dist/index.js"}}</script>
<script type="module" src="/pages/plain.js"></script>
</head>
<body><p>@wsedge/client from /dist/index.js, unbundled</p></body>
</html>
`;

const REACT_HTML = `<!doctype html>
<html>
<head>
<meta charset="utf-8">
<title>wsedge: React page</title>
<style>body { font: 15px system-ui, sans-serif; margin: 1.5em; } section { border: 1px solid #ccc; padding: 0 1em; margin: 0.5em 0; }</style>
</head>
<body><div id="root"></div><script type="module" src="/bundle/react-page.js"></script></body>
</html>
`;

const TYPES: Record<string, string> = {
  '.js': 'text/javascript; charset=utf-8',
  '.map': 'application/json',
  '.html': 'text/html; charset=utf-8',
};

/** A directory's `index.html` for a path ending in `/`. */
const INDEX = 'index.html';

/** The static server of the test pages. */
export interface PageServer {
  /** `http://127.0.0.1:<port>` */
  origin: string;
  /**
   * Serves the same pages on one more free port (another origin);
   * resolves with its origin.
   */
  anotherOrigin(): Promise<string>;
  close(): Promise<void>;
}

/**
 * Bundles the React pages and serves, on a free loopback port: `/plain.html`,
 * `/react.html` and `/story.html` (`useStory`); `/dist/` (the built library); `/pages/` (the plain
 * page's modules as tsc compiled them); `/bundle/` (esbuild's output);
 * `/examples/` and `/clients/ts/dist/` (examples/chat as it is served from
 * the repository root).
 */
export async function startPageServer(): Promise<PageServer> {
  const bundleDir = join(ROOT, '.test-build', 'browser-bundle');
  mkdirSync(bundleDir, { recursive: true });
  await build({
    entryPoints: [join(ROOT, 'test/browser/pages/react-page.tsx'), join(ROOT, 'test/browser/pages/story-page.tsx')],
    outdir: bundleDir,
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    jsx: 'automatic',
    tsconfig: join(ROOT, 'tsconfig.test.json'),
    define: { 'process.env.NODE_ENV': '"development"' },
    sourcemap: true,
    logLevel: 'warning',
  });
  const dirs: Record<string, string> = {
    '/dist/': join(ROOT, 'dist'),
    '/pages/': join(ROOT, '.test-build/test/browser/pages'),
    '/bundle/': bundleDir,
    // examples/chat as a newcomer serves it from the repository root.
    '/examples/': resolve(ROOT, '../../examples'),
    '/clients/ts/dist/': join(ROOT, 'dist'),
  };
  const handler = (req: IncomingMessage, res: ServerResponse) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    const send = (status: number, type: string, body: string | Buffer) => {
      res.writeHead(status, { 'Content-Type': type, 'Cache-Control': 'no-store' });
      res.end(body);
    };
    if (path === '/favicon.ico') return send(204, 'image/x-icon', '');
    if (path === '/plain.html') return send(200, TYPES['.html'] as string, PLAIN_HTML);
    if (path === '/react.html') return send(200, TYPES['.html'] as string, REACT_HTML);
    if (path === '/story.html') return send(200, TYPES['.html'] as string, REACT_HTML.replace('react-page.js', 'story-page.js'));
    for (const [prefix, dir] of Object.entries(dirs)) {
      if (!path.startsWith(prefix)) continue;
      const rest = path.slice(prefix.length);
      const file = normalize(join(dir, rest.endsWith('/') || rest === '' ? rest + INDEX : rest));
      if (!file.startsWith(dir + sep)) break;
      try {
        return send(200, TYPES[extname(file)] ?? 'application/octet-stream', readFileSync(file));
      } catch {
        break;
      }
    }
    send(404, 'text/plain', 'not found');
  };
  const servers: Server[] = [];
  const listen = async (): Promise<string> => {
    const server = createServer(handler);
    servers.push(server);
    await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
    const addr = server.address();
    return `http://127.0.0.1:${typeof addr === 'object' && addr ? addr.port : 0}`;
  };
  return {
    origin: await listen(),
    anotherOrigin: listen,
    close: async () => {
      for (const server of servers) {
        server.closeAllConnections();
        await new Promise<void>((ok) => server.close(() => ok()));
      }
    },
  };
}

/** A path under {@link ARTIFACTS} (created); for screenshots. */
export function artifactPath(name: string): string {
  mkdirSync(ARTIFACTS, { recursive: true });
  return join(ARTIFACTS, name);
}

/**
 * Waits until `check`, run in the page, returns true; fails naming `what`
 * after `timeout` ms (generous: a noisy 2-core machine).
 */
export async function waitInPage(page: Page, what: string, check: () => boolean, timeout = 30_000): Promise<void> {
  try {
    await page.waitForFunction(check, undefined, { timeout, polling: 50 });
  } catch (err) {
    const first = (err instanceof Error ? err.message : String(err)).split('\n')[0];
    throw new Error(`waiting in the page for ${what}: ${first}`);
  }
}

/**
 * Waits until the text of the elements matching `selector`, joined with
 * `|`, equals `expected` (e.g. `'one|two|three'` for three list items).
 */
export async function waitForText(page: Page, selector: string, expected: string, timeout = 30_000): Promise<void> {
  try {
    await page.waitForFunction(
      ([sel, want]) => Array.from(document.querySelectorAll(sel), (e) => e.textContent ?? '').join('|') === want,
      [selector, expected] as const,
      { timeout, polling: 50 },
    );
  } catch (err) {
    const now = await page
      .$$eval(selector, (els) => els.map((e) => e.textContent ?? '').join('|'))
      .catch((e: unknown) => `(${String(e)})`);
    const first = (err instanceof Error ? err.message : String(err)).split('\n')[0];
    throw new Error(`waiting for ${selector} to read ${JSON.stringify(expected)} (it reads ${JSON.stringify(now)}): ${first}`);
  }
}
