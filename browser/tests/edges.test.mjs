// Production edges in real headless Chromium: leaving when a tab closes on every transport,
// and tokens that expire while the page is open (herald.js `getToken`). Runs after
// demo.test.mjs, which kills the first gateway: only the second is used.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { launch, waitFor, WAIT } from "./helpers.mjs";

const gateway = process.env.HERALD_GATEWAYS.split(",")[1];
const tokens = JSON.parse(process.env.HERALD_TOKENS);
const secret = process.env.HERALD_TEST_SECRET;
const leaveDelay = Number(process.env.HERALD_TEST_LEAVE_DELAY_MS);

let browser;

before(async () => {
  browser = await launch();
});

after(async () => {
  await browser?.close();
});

/** An HS256 token for `user`, valid for `seconds`. */
function mint(user, seconds) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const head = b64({ alg: "HS256", typ: "JWT" });
  const body = b64({ sub: user, exp: Math.floor(Date.now() / 1000) + seconds, herald: { sub: ["*"], pub: [] } });
  const sig = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

/** Opens the demo in a new tab of `context` on `transport` and joins `room` as `name`. */
async function join(context, room, name, transport) {
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error(`[${name}] page error:`, e.message));
  await page.goto(`${gateway}/?${new URLSearchParams({ room, transport })}`);
  await page.getByTestId("name-input").fill(name);
  await page.getByTestId("join").click();
  await page.getByTestId("status").filter({ hasText: /^open$/ }).waitFor({ timeout: WAIT });
  return page;
}

const count = (page) => page.getByTestId("online-count").textContent();
const notices = (page) => page.getByTestId("messages").locator("li.notice").allTextContents();

for (const transport of ["websocket", "sse", "long-poll", "poll"]) {
  test(`${transport}: closing a tab leaves within the leave delay; a reload is no left/joined pair`, async () => {
    const room = `leave-${transport}-${Date.now()}`;
    const watcher = await browser.newContext();
    const observer = await join(watcher, room, "Obs", "websocket");
    const context = await browser.newContext();
    let tab = await join(context, room, "Tab", transport);
    await waitFor("the observer sees two", async () => (await count(observer)) === "2" || (await count(observer)));
    await waitFor("the join notice", async () => (await notices(observer)).includes("Tab joined") || (await notices(observer)));

    // A reload: the tab keeps its sid, so it is the same user, back within the leave delay.
    const before = (await notices(observer)).length;
    await tab.reload();
    await tab.getByTestId("name-input").fill("Tab");
    await tab.getByTestId("join").click();
    await tab.getByTestId("status").filter({ hasText: /^open$/ }).waitFor({ timeout: WAIT });
    await new Promise((r) => setTimeout(r, leaveDelay + 2000));
    assert.deepEqual((await notices(observer)).slice(before), [], "no left/joined pair for a reload");
    assert.equal(await count(observer), "2");

    // Closing the tab: the others see it leave within the leave delay + 2 s.
    const closed = Date.now();
    await tab.close();
    await waitFor("the observer sees one", async () => (await count(observer)) === "1" || (await count(observer)), leaveDelay + 2000);
    console.log(`${transport}: left ${Date.now() - closed} ms after the tab closed`);
    assert.ok((await notices(observer)).includes("Tab left"));
    await context.close();
    await watcher.close();
  });
}

test("a 5 s token refreshed by getToken: 20 s of events arrive once each on WebSocket, SSE and long-poll", async () => {
  const room = `refresh-${Date.now()}`;
  const context = await browser.newContext();
  await context.exposeFunction("mintToken", () => mint("refresher", 5));
  const pages = {};
  // Where a fetch can send a header, the token goes in it, never in a URL (proxies log URLs).
  const polls = [];
  for (const transport of ["websocket", "sse", "long-poll"]) {
    const page = await context.newPage();
    page.on("pageerror", (e) => console.error(`[${transport}] page error:`, e.message));
    page.on("request", (r) => {
      if (new URL(r.url()).pathname === "/poll") polls.push({ url: r.url(), auth: r.headers().authorization });
    });
    await page.goto(`${gateway}/support.html`);
    await page.evaluate(
      async ({ gateway, room, transport }) => {
        const { Herald } = await import("/herald.js");
        window.got = [];
        window.tokens = 0;
        window.errors = [];
        const client = Herald.connect(gateway, {
          transports: [transport],
          getToken: async () => {
            window.tokens += 1;
            return window.mintToken();
          },
        });
        client.on("error", (e) => window.errors.push(e));
        client.subscribe(room).on("event", (e) => window.got.push(e.seq));
        window.client = client;
      },
      { gateway, room, transport },
    );
    await page.waitForFunction(() => window.client.state === "open", null, { timeout: WAIT });
    pages[transport] = page;
  }
  const sent = [];
  const publish = async (n) => {
    const res = await fetch(`${gateway}/publish`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${tokens.publisher}` },
      body: JSON.stringify({ room, data: { n } }),
    });
    const body = await res.text();
    assert.equal(res.status, 200, body);
    sent.push(JSON.parse(body).seq);
  };
  // Every page is subscribed once it has the first event; from then on nothing may be lost.
  await publish(0);
  for (const [transport, page] of Object.entries(pages)) {
    await waitFor(`${transport} has the first event`, async () => (await page.evaluate(() => window.got.length)) === 1);
  }

  const started = Date.now();
  while (Date.now() - started < 20_000) {
    await publish(sent.length);
    await new Promise((r) => setTimeout(r, 400));
  }
  for (const [transport, page] of Object.entries(pages)) {
    await waitFor(`${transport} has every event`, async () => {
      const got = await page.evaluate(() => window.got);
      return JSON.stringify(got) === JSON.stringify(sent) || { missing: sent.filter((x) => !got.includes(x)), got: got.length };
    });
    const { tokens: fetched, errors } = await page.evaluate(() => ({ tokens: window.tokens, errors: window.errors }));
    assert.ok(fetched >= 4, `${transport}: the first token and at least three refreshes (${fetched})`);
    assert.deepEqual(errors, [], transport);
  }
  assert.ok(polls.length > 0, "the long-poll page polled");
  for (const { url, auth } of polls) {
    assert.equal(new URL(url).searchParams.get("token"), null, url);
    assert.match(auth ?? "", /^Bearer /, url);
  }

  // A getToken that fails is a clear `error` event, and the client keeps trying.
  const page = await context.newPage();
  await page.goto(`${gateway}/support.html`);
  const error = await page.evaluate(async (gateway) => {
    const { Herald } = await import("/herald.js");
    return new Promise((resolve) => {
      const client = Herald.connect(gateway, {
        getToken: async () => {
          throw new Error("identity provider unreachable");
        },
      });
      client.on("error", (e) => {
        client.close();
        resolve({ ...e, state: client.state });
      });
    });
  }, gateway);
  assert.deepEqual(error, {
    code: "token_refresh",
    message: "getToken failed: identity provider unreachable",
    state: "closed",
  });
  await context.close();
});
