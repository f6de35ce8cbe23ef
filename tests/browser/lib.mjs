// What the console's browser scripts share: their environment, expectations that stop the run
// with the reason, and headless Chromium launched the way this machine needs it (no network
// of its own, a fresh profile, the console certificate's key accepted and nothing else).
import { chromium } from 'playwright-core';
import { mkdirSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export function env(k) {
  const v = process.env[k];
  if (!v) throw new Error(`${k} not set`);
  return v;
}

export function expect(cond, what) {
  if (!cond) throw new Error(`expected: ${what}`);
  console.log(`ok: ${what}`);
}

export const url = env('CONSOLE_URL');
const shots = env('SHOTS');
mkdirSync(shots, { recursive: true });

/// A full-page screenshot into SHOTS.
export async function shot(page, name) {
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
}

/// Runs `body(page)` in a fresh headless Chromium, closing it whatever happens.
export async function withBrowser(body) {
  const profile = mkdtempSync(join(tmpdir(), 'outpost-chromium-'));
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath: env('CHROMIUM'),
    headless: true,
    args: [
      '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync',
      `--ignore-certificate-errors-spki-list=${env('SPKI')}`,
    ],
  });
  try {
    await body(browser.pages()[0] ?? await browser.newPage());
  } finally {
    await browser.close();
  }
}

/// Submits the form `selector` (clicking its button) and waits for the page it leads to.
export async function submit(page, selector) {
  await Promise.all([page.waitForNavigation(), page.click(`${selector} button`)]);
}
