// What every browser test file shares: launching Chromium and waiting for a condition.
// (Not a test file: `node --test tests/` runs only `*.test.mjs`.)

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createServer } from "node:net";
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

/** A free loopback TCP port. */
// Below the kernel's ephemeral range (32768 and up on Linux): a port from that range can be
// taken by any outgoing connection between its release here and the gateway's bind.
let nextPort = 10000 + ((process.pid * 7919) % 20000);

export async function freePort() {
  for (let tries = 0; tries < 20000; tries++) {
    const port = nextPort;
    nextPort = nextPort + 1 >= 30000 ? 10000 : nextPort + 1;
    const free = await new Promise((resolve) => {
      const srv = createServer();
      srv.once("error", () => resolve(false));
      srv.listen(port, "127.0.0.1", () => srv.close(() => resolve(true)));
    });
    if (free) return port;
  }
  throw new Error("no free port below 30000");
}

/**
 * Starts a gateway of a test's own (HERALD_GATEWAY_BIN) on the stack's NATS with `env` added
 * to its environment; resolves once `/readyz` is 200 to `{url, admin, pid, kill}`.
 */
export async function startOwnGateway(id, env) {
  const [port, admin] = [await freePort(), await freePort()];
  const child = spawn(process.env.HERALD_GATEWAY_BIN, [], {
    env: {
      ...process.env,
      HERALD_NATS_URL: process.env.HERALD_NATS_URL,
      HERALD_LISTEN: `127.0.0.1:${port}`,
      HERALD_ADMIN_LISTEN: `127.0.0.1:${admin}`,
      HERALD_GATEWAY_ID: id,
      ...env,
    },
    stdio: "ignore",
  });
  const g = {
    url: `http://127.0.0.1:${port}`,
    admin: `http://127.0.0.1:${admin}`,
    pid: child.pid,
    kill: (signal = "SIGKILL") => {
      try {
        child.kill(signal);
      } catch {
        /* gone already */
      }
    },
  };
  await waitFor(`${id} ready`, async () => {
    try {
      return (await fetch(`${g.admin}/readyz`)).status === 200;
    } catch {
      return false;
    }
  });
  return g;
}

/** A metric's value in `/metrics` at `admin` (summed over the lines that start with `prefix`). */
export async function metric(admin, prefix) {
  const text = await (await fetch(`${admin}/metrics`)).text();
  return text
    .split("\n")
    .filter((l) => l.startsWith(prefix))
    .reduce((sum, l) => sum + Number(l.split(" ").pop()), 0);
}
