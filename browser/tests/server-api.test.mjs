// The server API (herald.api.* on NATS) against herald.js in real headless Chromium, on
// every transport: `disconnect` told `reconnect: false` makes the client emit `disconnect`,
// close and send nothing more; told `reconnect: true`, it comes back. `subscribe` gives the
// client a Subscription it did not ask for, whose events arrive; `unsubscribe` takes it.
// Runs after demo.test.mjs, which kills the first gateway: only the second is used.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { connect } from "nats";
import { launch, waitFor, WAIT } from "./helpers.mjs";

const gateway = process.env.HERALD_GATEWAYS.split(",")[1];
const secret = process.env.HERALD_TEST_SECRET;

let browser;
let nats;

before(async () => {
  browser = await launch();
  nats = await connect({ servers: process.env.HERALD_NATS_URL });
});

after(async () => {
  await browser?.close();
  await nats?.close();
});

/** An HS256 token for `user` (rooms `rooms`), valid for an hour. */
function mint(user, rooms = ["*"]) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const head = b64({ alg: "HS256", typ: "JWT" });
  const body = b64({ sub: user, iat: now, exp: now + 3600, herald: { sub: rooms, pub: ["*"] } });
  const sig = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

/** Asks `herald.api.<method>`; the decoded answer. */
async function ask(method, body) {
  const reply = await nats.request(`herald.api.${method}`, JSON.stringify(body), { timeout: 5000 });
  return JSON.parse(new TextDecoder().decode(reply.data));
}

const disconnect = (body) => ask("disconnect", body);

/** A page whose herald.js client is open on `transport` as `user`, in `room` with presence. */
async function open(context, user, room, transport, rooms = ["*"]) {
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error(`[${transport}] page error:`, e.message));
  await page.goto(`${gateway}/support.html`);
  await page.evaluate(
    async ({ gateway, room, transport, token }) => {
      const { Herald } = await import("/herald.js");
      window.told = [];
      window.states = [];
      window.given = [];
      window.taken = [];
      window.events = [];
      const client = Herald.connect(gateway, { transports: [transport], token });
      client.on("disconnect", (d) => window.told.push(d));
      client.on("state", (s) => window.states.push(s));
      client.on("subscribed", (sub) => {
        window.given.push({ room: sub.room, byServer: sub.byServer });
        sub.on("event", (e) => window.events.push([e.room, e.data]));
      });
      client.on("unsubscribed", (u) => window.taken.push(u.room));
      client.subscribe(room, { presence: true });
      window.client = client;
    },
    { gateway, room, transport, token: mint(user, rooms) },
  );
  await page.waitForFunction(() => window.client.state === "open", null, { timeout: WAIT });
  return page;
}

for (const transport of ["websocket", "sse", "long-poll", "poll"]) {
  test(`${transport}: disconnect with reconnect: false closes herald.js for good`, async () => {
    const user = `kicked-${transport}-${Date.now()}`;
    const context = await browser.newContext();
    const page = await open(context, user, `kick-${transport}`, transport);
    let requests = 0;
    // A polling client's `close` tells the gateway it leaves: that one is expected.
    page.on("request", (r) => (requests += new URL(r.url()).pathname === "/poll/leave" ? 0 : 1));
    page.on("websocket", () => (requests += 1));
    await waitFor(`${user}'s connection is reached`, async () => {
      const a = await disconnect({ user, code: 4003, reason: "banned", reconnect: false });
      return a.result?.connections >= 1 || a;
    });
    await waitFor(`${transport}: the client is closed`, async () => (await page.evaluate(() => window.client.state)) === "closed");
    const told = await page.evaluate(() => window.told);
    assert.deepEqual(told, [{ code: 4003, reason: "banned", reconnect: false }]);
    // Nothing more goes to the gateway.
    const settled = requests;
    await new Promise((r) => setTimeout(r, 2000));
    assert.ok(requests - settled === 0, `${transport}: ${requests - settled} requests after the close`);
    assert.equal(await page.evaluate(() => window.client.state), "closed");
    await context.close();
  });
}

test("websocket: disconnect with reconnect: true, and herald.js comes back", async () => {
  const user = `bounced-${Date.now()}`;
  const context = await browser.newContext();
  const page = await open(context, user, "bounce", "websocket");
  const answer = await disconnect({ user, reason: "moved" });
  assert.equal(answer.result?.connections, 1, JSON.stringify(answer));
  await waitFor("the client reconnected", async () => {
    const states = await page.evaluate(() => window.states);
    return (states.includes("reconnecting") && states.at(-1) === "open") || states;
  });
  assert.deepEqual(await page.evaluate(() => window.told), [{ code: 4000, reason: "moved", reconnect: true }]);
  await context.close();
});

for (const transport of ["websocket", "sse", "long-poll", "poll"]) {
  test(`${transport}: subscribe gives herald.js a room it did not ask for; unsubscribe takes it`, async () => {
    const user = `grouped-${transport}-${Date.now()}`;
    const room = `group-${transport}-${Date.now()}`;
    const context = await browser.newContext();
    // The token grants the lobby only: the group comes from the backend.
    const page = await open(context, user, `lobby-${transport}`, transport, [`lobby-${transport}`]);
    await waitFor(`${user} is reached`, async () => {
      const a = await ask("subscribe", { user, room });
      return a.result?.connections >= 1 || a;
    });
    await waitFor("the subscribed event", async () => {
      const given = await page.evaluate(() => window.given);
      return (given.length === 1 && given[0].room === room && given[0].byServer === true) || given;
    });
    const publish = async (n) => {
      const reply = await nats.request(`herald.room.${room}`, JSON.stringify({ n }), { timeout: 5000 });
      return JSON.parse(new TextDecoder().decode(reply.data)).seq;
    };
    // The room's events arrive (a JetStream publish: the reply is the stream's ack).
    await publish(1);
    await waitFor("the group's event", async () => {
      const events = await page.evaluate(() => window.events);
      return JSON.stringify(events) === JSON.stringify([[room, { n: 1 }]]) || events;
    });
    await ask("unsubscribe", { user, room });
    await waitFor("the unsubscribed event", async () => {
      const taken = await page.evaluate(() => window.taken);
      return JSON.stringify(taken) === JSON.stringify([room]) || taken;
    });
    assert.equal(await page.evaluate((room) => window.client.rooms.has(room), room), false);
    await publish(2);
    await new Promise((r) => setTimeout(r, 1500));
    assert.deepEqual(await page.evaluate(() => window.events), [[room, { n: 1 }]], "nothing after unsubscribe");
    await context.close();
  });
}

/** A subscription token: `room` for `user`, valid for `seconds`. */
function roomToken(user, room, seconds) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const head = b64({ alg: "HS256", typ: "JWT" });
  const body = b64({ sub: user, room, iat: now, exp: now + seconds });
  const sig = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

for (const transport of ["websocket", "sse", "long-poll", "poll"]) {
  test(`${transport}: a subscription token opens its room for herald.js`, async () => {
    const user = `ticketed-${transport}-${Date.now()}`;
    const room = `ticket-${transport}-${Date.now()}`;
    const context = await browser.newContext();
    const page = await open(context, user, `lobby-${transport}`, transport, [`lobby-${transport}`]);
    await page.evaluate(
      ({ room, token }) => {
        window.client.subscribe(room, { token }).on("event", (e) => window.events.push([e.room, e.data]));
      },
      { room, token: roomToken(user, room, 300) },
    );
    // Published until it arrives: the subscription takes a moment to be in place.
    let n = 0;
    await waitFor("the ticket's event", async () => {
      await nats.request(`herald.room.${room}`, JSON.stringify({ n: ++n }), { timeout: 5000 });
      const events = await page.evaluate(() => window.events);
      return events.some(([r]) => r === room) || events;
    });
    await context.close();
  });
}
