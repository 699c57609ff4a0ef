// Send once, in real headless Chromium: the sender's gateway dies after storing its message
// but before the page reads the answer, on each of the four transports; herald.js sends it
// again with the same key on the other gateway, and every page shows it once. A publish that
// waits longer than its deadline rejects and is never sent. These tests start (and kill)
// gateways of their own on the stack's NATS (HERALD_GATEWAY_BIN, HERALD_NATS_URL).

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { launch, metric, startOwnGateway, waitFor, WAIT } from "./helpers.mjs";

const secret = process.env.HERALD_TEST_SECRET;

let browser;
const started = [];

before(async () => {
  browser = await launch();
});

after(async () => {
  await browser?.close();
  for (const g of started) g.kill();
});

/** A gateway of this test's own on the stack's NATS, anonymous clients free of limits. */
function startGateway(id) {
  return startOwnGateway(id, {
    HERALD_AUTH_HS256_SECRET: secret,
    HERALD_ALLOW_ANONYMOUS: "true",
    HERALD_ANONYMOUS_ROOMS: "*",
    HERALD_ANONYMOUS_PUBLISH: "*",
    HERALD_OP_RATE: "1000000",
    HERALD_POLL_MAX_WAIT: "10s",
  }).then((g) => {
    started.push(g);
    return g;
  });
}

/** The demo on `origin`, connecting to `order` over `transport`, joined as `name`. */
async function joinDemo({ origin, order, transport, room, name, setup }) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error(`[${name}] page error:`, e.message));
  if (setup) await setup(page);
  const q = new URLSearchParams({ room, gateways: order.join(","), transport });
  await page.goto(`${origin}/?${q}`);
  await page.getByTestId("name-input").fill(name);
  await page.getByTestId("join").click();
  await page.getByTestId("status").filter({ hasText: /^open$/ }).waitFor({ timeout: WAIT });
  return page;
}

/** The page's message lines: text, seq and state. */
async function lines(page) {
  return page
    .getByTestId("messages")
    .locator("li.message")
    .evaluateAll((lis) => lis.map((li) => ({ text: li.textContent, seq: li.dataset.seq ?? null, cls: li.className })));
}

for (const transport of ["websocket", "sse", "long-poll", "poll"]) {
  test(`${transport}: the gateway dies after storing a message, before the sender reads the answer; it is stored and shown once`, async () => {
    const x = await startGateway(`gw-outbox-x-${transport}`);
    const y = await startGateway(`gw-outbox-y-${transport}`);
    const room = `outbox-${transport}-${Date.now()}`;
    const text = `cut mid-send over ${transport}`;

    // Drops the answer to the sender's next publish, and kills its gateway: the message is
    // stored, the page never learns it.
    let cut = false;
    let storedSeq = null;
    const setup = async (page) => {
      if (transport === "websocket") {
        await page.routeWebSocket(/\/ws\?/, (ws) => {
          const server = ws.connectToServer();
          ws.onMessage((m) => server.send(m));
          server.onMessage((m) => {
            const frame = JSON.parse(m);
            if (cut && frame.t === "ack" && frame.id !== undefined && typeof frame.seq === "number") {
              cut = false;
              storedSeq = frame.seq;
              x.kill();
              return;
            }
            ws.send(m);
          });
        });
      } else {
        await page.route((url) => url.pathname === "/publish", async (route) => {
          if (!cut || route.request().method() !== "POST") return route.continue();
          cut = false;
          const res = await route.fetch();
          storedSeq = (await res.json()).seq;
          x.kill();
          await route.abort("connectionreset");
        });
      }
    };
    const watcher = await joinDemo({ origin: y.url, order: [y.url], transport: "websocket", room, name: "Watcher" });
    const bystander = await joinDemo({ origin: x.url, order: [x.url, y.url], transport, room, name: "Bystander" });
    const sender = await joinDemo({ origin: x.url, order: [x.url, y.url], transport, room, name: "Sender", setup });
    await waitFor("three online", async () => (await watcher.getByTestId("online-count").textContent()) === "3");

    cut = true;
    await sender.getByTestId("message-input").fill(text);
    await sender.getByTestId("send").click();
    await waitFor("the message stored and its gateway killed", async () => storedSeq !== null || { cut });

    const pages = { watcher, bystander, sender };
    for (const [who, page] of Object.entries(pages)) {
      await waitFor(
        `${who} shows the message once, as stored`,
        async () => {
          const mine = (await lines(page)).filter((l) => l.text.includes(text));
          return (mine.length === 1 && mine[0].cls === "message" && mine[0].seq === String(storedSeq)) || mine;
        },
        30_000,
      );
    }
    // The sender's message was sent again on the other gateway, which answered it as a repeat.
    await waitFor("the sender's outbox empty", async () => (await sender.getByTestId("pending").textContent()) === "");
    assert.equal(await metric(y.admin, 'herald_gateway_publishes_total{outcome="repeat"}'), 1);
    assert.equal(await metric(y.admin, 'herald_gateway_publishes_total{outcome="stored"}'), 0);
    // Still once after everything settled, and nothing is marked as not sent.
    for (const [who, page] of Object.entries(pages)) {
      const all = await lines(page);
      assert.equal(all.filter((l) => l.text.includes(text)).length, 1, who);
      assert.equal(all.filter((l) => l.cls !== "message").length, 0, `${who}: ${JSON.stringify(all)}`);
    }
    for (const page of Object.values(pages)) await page.context().close();
    y.kill();
  });
}

test("a publish past its deadline rejects with publish_timeout and is never sent; waiting ones keep their order", async () => {
  const z = await startGateway("gw-outbox-deadline");
  const room = `outbox-deadline-${Date.now()}`;
  const page = await (await browser.newContext()).newPage();
  page.on("pageerror", (e) => console.error("[deadline] page error:", e.message));
  await page.goto(`${z.url}/`);
  await page.evaluate(async () => {
    window.Herald = (await import("/herald.js")).Herald;
  });
  // The gateway stops answering: the client cannot connect, the publish waits in the outbox.
  z.kill("SIGSTOP");
  const rejected = await page.evaluate(
    async ({ url, room }) => {
      const client = window.Herald.connect([url], { transports: ["websocket"], publishTimeout: 1500 });
      window.client = client;
      window.events = [];
      client.subscribe(room).on("event", (ev) => window.events.push({ seq: ev.seq, prev: ev.prev, data: ev.data }));
      const t0 = Date.now();
      const pendingWhileWaiting = await new Promise((r) => {
        const p = client.publish(room, "expired");
        window.expired = p.then(
          () => ({ resolved: true }),
          (e) => ({ code: e.code, message: e.message, maybeStored: e.maybeStored, ms: Date.now() - t0 }),
        );
        r(client.pending);
      });
      const outcome = await window.expired;
      return { ...outcome, pendingWhileWaiting, pendingAfter: client.pending, state: client.state };
    },
    { url: z.url, room },
  );
  assert.equal(rejected.code, "publish_timeout", JSON.stringify(rejected));
  assert.equal(rejected.maybeStored, false);
  assert.match(rejected.message, /not stored within 1500 ms; it will not be sent again/);
  assert.ok(rejected.ms >= 1400, `rejected after ${rejected.ms} ms`);
  assert.equal(rejected.pendingWhileWaiting, 1);
  assert.equal(rejected.pendingAfter, 0);
  assert.notEqual(rejected.state, "open");

  // The gateway answers again: the client connects, and only what it publishes now is stored.
  z.kill("SIGCONT");
  await waitFor("the client open", async () => (await page.evaluate(() => window.client.state)) === "open");
  const after = await page.evaluate((room) => window.client.publish(room, "after"), room);
  await waitFor("the new message's event", async () => {
    const events = await page.evaluate(() => window.events);
    return events.length === 1 || events;
  });
  const events = await page.evaluate(() => window.events);
  assert.deepEqual(events, [{ seq: after.seq, prev: 0, data: "after" }], "the expired message was never stored");

  // Publishes made while the gateway does not answer wait, and are stored in the order made.
  z.kill("SIGSTOP");
  const waiting = await page.evaluate(
    ({ url, room }) => {
      const client = window.Herald.connect([url], { transports: ["websocket"], publishTimeout: 20000 });
      window.ordered = ["a", "b", "c"].map((text) => client.publish(room, text));
      return client.pending;
    },
    { url: z.url, room },
  );
  assert.equal(waiting, 3);
  z.kill("SIGCONT");
  const acks = await page.evaluate(() => Promise.all(window.ordered));
  const seqs = acks.map((a) => a.seq);
  assert.ok(seqs[0] > after.seq && seqs[0] < seqs[1] && seqs[1] < seqs[2], JSON.stringify(acks));
  await waitFor("the three events", async () => (await page.evaluate(() => window.events.length)) === 4);
  assert.deepEqual(
    (await page.evaluate(() => window.events)).slice(1).map((e) => [e.seq, e.data]),
    [
      [seqs[0], "a"],
      [seqs[1], "b"],
      [seqs[2], "c"],
    ],
  );
  await page.context().close();
  z.kill();
});
