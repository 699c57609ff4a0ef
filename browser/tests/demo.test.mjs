// The chat demo and herald.js in real headless Chromium, against the stack `cargo xtask
// browser` starts: NATS, fanout and two gateways (HERALD_GATEWAYS, HERALD_GATEWAY_PIDS).

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { copyFileSync } from "node:fs";
import { join } from "node:path";
import { launch, waitFor, WAIT } from "./helpers.mjs";

const gateways = process.env.HERALD_GATEWAYS.split(",");
const pids = process.env.HERALD_GATEWAY_PIDS.split(",").map(Number);
const tokens = JSON.parse(process.env.HERALD_TOKENS);
const artifacts = process.env.HERALD_ARTIFACTS;

let browser;

before(async () => {
  browser = await launch();
});

after(async () => {
  await browser?.close();
});

/** Opens the demo on `gateway` (trying `order` for connections) and joins as `name`. */
async function joinDemo({ room, name, gateway, order, transport, noWebSocket }) {
  const context = await browser.newContext({ viewport: { width: 900, height: 640 } });
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error(`[${name}] page error:`, e.message));
  if (noWebSocket) await page.addInitScript(() => delete window.WebSocket);
  const q = new URLSearchParams({ room, gateways: order.join(",") });
  if (transport) q.set("transport", transport);
  await page.goto(`${gateway}/?${q}`);
  await page.getByTestId("name-input").fill(name);
  await page.getByTestId("join").click();
  await page.getByTestId("status").filter({ hasText: /^open$/ }).waitFor({ timeout: WAIT });
  return page;
}

async function onlineList(page) {
  const items = await page.getByTestId("online-list").locator("li").allTextContents();
  return items.sort();
}

async function messages(page) {
  return page.getByTestId("messages").locator("li.message").allTextContents();
}

/** A 64×48 PNG (red and blue halves), generated in the page. */
async function pngFile(page) {
  const base64 = await page.evaluate(() => {
    const c = document.createElement("canvas");
    c.width = 64;
    c.height = 48;
    const g = c.getContext("2d");
    g.fillStyle = "#d33";
    g.fillRect(0, 0, 32, 48);
    g.fillStyle = "#33d";
    g.fillRect(32, 0, 32, 48);
    return c.toDataURL("image/png").split(",")[1];
  });
  return { name: "flag.png", mimeType: "image/png", buffer: Buffer.from(base64, "base64") };
}

test("four browsers on four transports share one room, then survive a gateway's death", async () => {
  const room = `demo-${Date.now()}`;
  const [a, b] = gateways;
  const ws = await joinDemo({ room, name: "Ann", gateway: a, order: [a, b] });
  const sse = await joinDemo({ room, name: "Ann", gateway: b, order: [b, a], noWebSocket: true });
  const longPoll = await joinDemo({ room, name: "Cy", gateway: a, order: [a, b], transport: "long-poll" });
  const poll = await joinDemo({ room, name: "Dee", gateway: b, order: [b, a], transport: "poll" });
  const pages = { ws, sse, longPoll, poll };

  const expected = { ws: "websocket", sse: "sse", longPoll: "long-poll", poll: "poll" };
  for (const [key, page] of Object.entries(pages)) {
    assert.equal(await page.getByTestId("transport").textContent(), expected[key], key);
  }

  // Everyone sees the same online list: a duplicate name is two members.
  for (const [key, page] of Object.entries(pages)) {
    await waitFor(`${key}'s online list`, async () => {
      const list = await onlineList(page);
      const count = await page.getByTestId("online-count").textContent();
      return (count === "4" && JSON.stringify(list) === JSON.stringify(["Ann", "Ann", "Cy", "Dee"])) || { count, list };
    });
  }

  // Each sends a message; everyone sees all four, each once.
  for (const [key, page] of Object.entries(pages)) {
    await page.getByTestId("message-input").fill(`hello from ${key}`);
    await page.getByTestId("send").click();
  }
  const all = Object.keys(pages).map((k) => `hello from ${k}`);
  for (const [key, page] of Object.entries(pages)) {
    await waitFor(`${key} sees every message`, async () => {
      const got = await messages(page);
      const texts = got.map((m) => m.replace(/^[^:]*: /, ""));
      return all.every((t) => texts.filter((x) => x === t).length === 1) || got;
    });
  }

  // An image from the WebSocket page arrives everywhere.
  await ws.getByTestId("image-input").setInputFiles(await pngFile(ws));
  for (const [key, page] of Object.entries(pages)) {
    await waitFor(`${key} shows the image`, async () => {
      const n = await page.getByTestId("messages").locator("img").count();
      return n === 1 || n;
    });
    const src = await page.getByTestId("messages").locator("img").getAttribute("src");
    assert.match(src, /^data:image\/jpeg;base64,/, key);
  }
  for (const [key, page] of Object.entries(pages)) {
    await page.screenshot({ path: join(artifacts, `demo-${key}.png`) });
  }
  copyFileSync(join(artifacts, "demo-ws.png"), join(artifacts, "demo.png"));

  // Kill the gateway the WebSocket and long-poll pages use: they move to the other one and
  // catch up with what was sent meanwhile.
  process.kill(pids[0], "SIGKILL");
  await sse.getByTestId("message-input").fill("sent while a gateway was down");
  await sse.getByTestId("send").click();
  for (const [key, page] of Object.entries({ ws, longPoll })) {
    await waitFor(`${key} reconnects and catches up`, async () => {
      const texts = (await messages(page)).map((m) => m.replace(/^[^:]*: /, ""));
      const status = await page.getByTestId("status").textContent();
      return (status === "open" && texts.includes("sent while a gateway was down")) || { status, texts };
    }, 30_000);
  }
  assert.equal(await ws.getByTestId("transport").textContent(), "websocket");
  await ws.getByTestId("message-input").fill("back online");
  await ws.getByTestId("send").click();
  for (const [key, page] of Object.entries(pages)) {
    await waitFor(`${key} sees the message sent after the failover`, async () => {
      const texts = (await messages(page)).map((m) => m.replace(/^[^:]*: /, ""));
      return texts.filter((t) => t === "back online").length === 1 || texts;
    }, 30_000);
  }
  await ws.screenshot({ path: join(artifacts, "demo-after-failover.png") });
  for (const page of Object.values(pages)) await page.context().close();
});

test("support desk: the agent sees a customer's message; a customer cannot open another company's room", async () => {
  const b = gateways[1]; // gateways[0] was killed by the previous test
  const context = await browser.newContext();
  const agent = await context.newPage();
  await agent.goto(`${b}/support.html?company=acme&agent=agent-acme&customers=ann,bob&token=${tokens.agentAcme}&gateways=${b}`);
  await agent.getByTestId("status").filter({ hasText: /^open$/ }).waitFor({ timeout: WAIT });
  const customer = await (await browser.newContext()).newPage();
  await customer.goto(`${b}/support.html?company=acme&customer=ann&agent=agent-acme&token=${tokens.annAcme}&gateways=${b}`);
  await customer.getByTestId("status").filter({ hasText: /^open$/ }).waitFor({ timeout: WAIT });
  await waitFor("the agent sees ann online", async () => {
    const badge = await agent.getByTestId("ticket-ann").locator("small").textContent();
    return badge === "online" || badge;
  });
  await customer.getByTestId("input-agent-acme").fill("my order is late");
  await customer.getByTestId("input-agent-acme").press("Enter");
  await waitFor("the agent gets ann's message", async () => {
    const got = await agent.getByTestId("messages-ann").locator("li").allTextContents();
    return got.includes("ann: my order is late") || got;
  });
  await agent.screenshot({ path: join(artifacts, "support-agent.png") });

  const intruder = await (await browser.newContext()).newPage();
  await intruder.goto(`${b}/support.html?company=globex&customer=ann&agent=agent-acme&token=${tokens.annAcme}&gateways=${b}`);
  await waitFor("forbidden", async () => {
    const errors = await intruder.getByTestId("error").allTextContents();
    return errors.includes("error: forbidden") || errors;
  });
});

test("hostile URL parameters, names and payloads never run script; the pages carry a CSP", async () => {
  const b = gateways[1];
  const attack = (n) => `x"><img src=x onerror="window.pwned=${n}">`;
  const context = await browser.newContext();

  // The support desk with markup in `customers`: shown as text, nothing runs.
  const agent = await context.newPage();
  const response = await agent.goto(
    `${b}/support.html?company=acme&agent=agent-acme&customers=${encodeURIComponent(attack(1))},ann&token=${tokens.agentAcme}&gateways=${b}`,
  );
  const csp = response.headers()["content-security-policy"] ?? "";
  assert.match(csp, /script-src 'self'/, "the page has a script policy");
  assert.equal(response.headers()["referrer-policy"], "no-referrer", "the token in the URL is not sent on");
  await agent.getByTestId("status").filter({ hasText: /^open$/ }).waitFor({ timeout: WAIT });
  const titles = await agent.locator(".ticket h2 span").allTextContents();
  assert.deepEqual(titles, [attack(1), "ann"], "the customer list is text");
  assert.equal(await agent.locator(".ticket img").count(), 0, "no element was injected");

  // The chat demo with markup in the room, the name and the messages, and an image that is a URL.
  const page = await context.newPage();
  const violations = [];
  page.on("console", (m) => m.text().includes("Content Security Policy") && violations.push(m.text()));
  const q = new URLSearchParams({ room: "hostile", gateways: b, transport: "websocket" });
  await page.goto(`${b}/?${q}`);
  await page.getByTestId("name-input").fill(attack(2));
  await page.getByTestId("join").click();
  await page.getByTestId("status").filter({ hasText: /^open$/ }).waitFor({ timeout: WAIT });
  await page.getByTestId("message-input").fill(attack(3));
  await page.getByTestId("send").click();
  await page.evaluate(() =>
    window.heraldClient.publish("hostile", { name: "m", image: "https://evil.example/track.png" }, { type: "image" }),
  );
  await page.evaluate(() => window.heraldClient.publish("hostile", { name: "m", text: "after" }, { type: "message" }));
  await waitFor("the messages arrive as text", async () => {
    const got = await messages(page);
    return (got.some((t) => t.endsWith(attack(3))) && got.some((t) => t.endsWith("after"))) || got;
  });
  const online = await onlineList(page);
  assert.ok(online.includes(attack(2)), `the name is text: ${online}`);
  assert.equal(await page.getByTestId("messages").locator("img").count(), 0, "an image URL is not loaded");

  // An inline script cannot run at all under the policy.
  await page.evaluate(() => {
    const s = document.createElement("script");
    s.textContent = "window.pwned = 4";
    document.body.append(s);
  });
  for (const p of [agent, page]) {
    assert.equal(await p.evaluate(() => window.pwned), undefined, "no injected script ran");
  }
  await waitFor("the CSP reports the blocked script", async () => violations.length > 0 || violations);
  await context.close();
});

test("a poller that was cut off catches up over capped answers, each event once, in order", async () => {
  const b = gateways[1];
  const room = `backlog-${Date.now()}`;
  const page = await joinDemo({ room, name: "Pat", gateway: b, order: [b], transport: "poll" });
  // The room has a position (a poll that names it was answered): a resume starts from there.
  const position = () => page.evaluate((r) => window.heraldClient.rooms.get(r)?.seq ?? null, room);
  await waitFor("a position in the room", async () => (await position()) !== null);
  // Cut the page's polls off, publish more than a few answers' worth, then let it back.
  await page.route("**/poll?**", (r) => r.abort());
  await waitFor("the poller notices", async () => (await page.getByTestId("status").textContent()) !== "open");
  const sent = [];
  for (let i = 0; i < 23; i++) {
    const text = `backlog ${String(i).padStart(2, "0")}`;
    const res = await fetch(`${b}/publish`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${tokens.publisher}` },
      body: JSON.stringify({ room, data: { name: "bot", text }, type: "message" }),
    });
    assert.equal(res.status, 200, await res.text());
    sent.push(`bot: ${text}`);
  }
  await page.unroute("**/poll?**");
  await waitFor("every event once, in order", async () => {
    const got = await messages(page);
    return JSON.stringify(got) === JSON.stringify(sent) || got;
  }, 30_000);
  await page.context().close();
});
