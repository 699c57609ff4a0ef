// What every browser test file shares: launching Chromium and waiting for a condition.
// (Not a test file: `node --test tests/` runs only `*.test.mjs`.)

import assert from "node:assert/strict";
import { chromium } from "playwright-core";

/** How long a page may take to show what a test waits for, unless it says otherwise. */
export const WAIT = 20_000;

/** Headless Chromium from HERALD_CHROMIUM, without the background traffic of a desktop browser. */
export function launch() {
  return chromium.launch({
    executablePath: process.env.HERALD_CHROMIUM,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

/** Polls `fn` until it returns `true`; fails with `what` and the last value it returned. */
export async function waitFor(what, fn, timeout = WAIT) {
  const deadline = Date.now() + timeout;
  let last;
  while (Date.now() < deadline) {
    last = await fn();
    if (last === true) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.fail(`timed out waiting for ${what} (last: ${JSON.stringify(last)})`);
}
