// A flood of anonymous clients that name themselves anew on every request (`loadtest flood`:
// 50 clients from 10 loopback addresses for 30 s — /poll with presence on many rooms,
// POST /publish to a room of their own, /sse and WebSocket subscribes with presence in the
// legitimate clients' room and watched users) against a gateway with its default limits, while a
// herald.js client on each transport chats in the room the flood hits. Every legitimate
// message arrives everywhere, in order and once; presence shows every legitimate member;
// no legitimate client sees an error or a reconnect; the gateway's and fanout's memory, the
// polling sessions and fanout's members stay under their bounds.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { launch, metric, startOwnGateway, waitFor, WAIT } from "./helpers.mjs";

const secret = process.env.HERALD_TEST_SECRET;
const fanout = { pid: Number(process.env.HERALD_FANOUT_PID), admin: process.env.HERALD_FANOUT_ADMIN };

const FLOOD_SECONDS = 30;
const CLIENTS = 50;
const SOURCES = Array.from({ length: 10 }, (_, i) => `127.0.0.${i + 2}`);
// The bounds (docs/operations.md, "Security model"), for debug builds on the test stack:
// each process's resident memory, and what the caps allow the flood's addresses and the
// legitimate clients' one: --max-poll-sessions-per-user (16) sessions and
// --max-anonymous-memberships-per-address (512) memberships each. Fanout keeps a closed
// connection's memberships for its leave delay, so it may count one delay's churn more.
const GATEWAY_RSS_MIB = 128;
const FANOUT_RSS_MIB = 64;
const ADDRESSES = SOURCES.length + 1;
const POLL_SESSIONS_CAP = 16 * ADDRESSES;
const GATEWAY_MEMBERSHIPS_CAP = 512 * ADDRESSES;
const FANOUT_MEMBERS_BOUND = 2 * GATEWAY_MEMBERSHIPS_CAP;
const TRANSPORTS = ["websocket", "sse", "long-poll", "poll"];

let browser;
let gateway;

before(async () => {
  browser = await launch();
  gateway = await startOwnGateway("gw-flood", {
    HERALD_AUTH_HS256_SECRET: secret,
    HERALD_ALLOW_ANONYMOUS: "true",
    HERALD_ANONYMOUS_ROOMS: "*",
    HERALD_ANONYMOUS_PUBLISH: "*",
  });
});

after(async () => {
  await browser?.close();
  gateway?.kill();
});

function rssMib(pid) {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)[1]) / 1024;
}

/** A herald.js client of its own page on `transport`, a member of `room`, named `name`. */
async function legit(room, transport) {
  const page = await (await browser.newContext()).newPage();
  page.on("pageerror", (e) => console.error(`[${transport}] page error:`, e.message));
  await page.goto(`${gateway.url}/support.html`);
  await page.evaluate(
    async ({ url, room, transport }) => {
      const { Herald } = await import("/herald.js");
      Object.assign(window, { got: {}, seqs: [], errors: [], states: [], members: [] });
      const client = Herald.connect(url, { transports: [transport], name: `legit-${transport}` });
      client.on("error", (e) => window.errors.push(e));
      client.on("state", (s) => window.states.push(s));
      const sub = client.subscribe(room, { presence: true });
      sub.on("event", (e) => {
        window.seqs.push(e.seq);
        if (e.data?.legit) (window.got[e.data.legit] ??= []).push(e.data.n);
      });
      sub.on("presence", (p) => {
        window.members = p.members.map((m) => m.name).filter((n) => n?.startsWith("legit-")).sort();
      });
      window.client = client;
      window.sent = 0;
      // Publishing starts once every page is subscribed (`start`), so each has every message.
      window.start = () => {
        window.publishing = setInterval(async () => {
          const n = window.sent++;
          try {
            await client.publish(room, { legit: transport, n });
          } catch (e) {
            window.errors.push({ code: "publish", message: String(e) });
          }
        }, 1000);
      };
    },
    { url: gateway.url, room, transport },
  );
  await page.waitForFunction(() => window.client.state === "open", null, { timeout: WAIT });
  return page;
}

test("50 anonymous clients with a new sid per request for 30 s: herald.js on every transport keeps working, memory and caps hold", async () => {
  const room = `flood-${Date.now()}`;
  const pages = {};
  for (const t of TRANSPORTS) pages[t] = await legit(room, t);
  const everyone = TRANSPORTS.map((t) => `legit-${t}`).sort();
  for (const [t, page] of Object.entries(pages)) {
    await waitFor(`${t} sees every legitimate member`, async () => {
      const members = await page.evaluate(() => window.members);
      return JSON.stringify(members) === JSON.stringify(everyone) || members;
    });
  }
  const opened = {};
  for (const [t, page] of Object.entries(pages)) opened[t] = await page.evaluate(() => window.states.length);
  for (const page of Object.values(pages)) await page.evaluate(() => window.start());

  const flood = new Promise((resolve, reject) => {
    const args = ["flood", "--gateway", new URL(gateway.url).host, "--clients", String(CLIENTS)];
    args.push("--duration", `${FLOOD_SECONDS}s`, "--sources", SOURCES.join(","), "--room", room);
    // Its publishes go to a room of their own: the legitimate clients' room carries their
    // events and the flood's presence churn, at the rate one long-poller's --op-rate allows.
    args.push("--publish-room", `${room}-noise`);
    execFile(process.env.HERALD_LOADTEST_BIN, args, { maxBuffer: 1 << 20 }, (err, stdout, stderr) =>
      err ? reject(new Error(`loadtest flood: ${err.message}\n${stderr}`)) : resolve(JSON.parse(stdout)),
    );
  });
  const peak = { gateway: 0, fanout: 0, sessions: 0, memberships: 0, members: 0 };
  let flooding = true;
  const sampling = (async () => {
    while (flooding) {
      peak.gateway = Math.max(peak.gateway, rssMib(gateway.pid));
      peak.fanout = Math.max(peak.fanout, rssMib(fanout.pid));
      peak.sessions = Math.max(peak.sessions, await metric(gateway.admin, "herald_gateway_poll_sessions "));
      peak.memberships = Math.max(
        peak.memberships,
        await metric(gateway.admin, "herald_gateway_presence_memberships "),
      );
      peak.members = Math.max(peak.members, await metric(fanout.admin, "herald_fanout_presence_members "));
      await new Promise((r) => setTimeout(r, 500));
    }
  })();
  const summary = await flood;
  flooding = false;
  await sampling;
  console.log("flood:", JSON.stringify(summary), "peaks:", JSON.stringify(peak));
  assert.ok(summary.requests > 1000, `the flood ran (${summary.requests} requests)`);
  const refused = Object.values(summary.answers).reduce((n, a) => n + (a["429"] ?? 0) + (a["ws:429"] ?? 0), 0);
  assert.ok(refused > 0, "the flood met its per-address limits");

  // Stop publishing; every page then holds every legitimate message, in order, once.
  const sent = {};
  for (const [t, page] of Object.entries(pages)) {
    sent[t] = await page.evaluate(() => {
      clearInterval(window.publishing);
      return window.sent;
    });
    assert.ok(sent[t] >= FLOOD_SECONDS - 2, `${t} published throughout (${sent[t]})`);
  }
  for (const [t, page] of Object.entries(pages)) {
    await waitFor(`${t} has every legitimate message`, async () => {
      const got = await page.evaluate(() => window.got);
      const whole = TRANSPORTS.every((from) => (got[from] ?? []).length >= sent[from]);
      if (whole) return true;
      const { errors, states } = await page.evaluate(() => ({ errors: window.errors, states: window.states }));
      const counts = Object.fromEntries(TRANSPORTS.map((from) => [from, (got[from] ?? []).length]));
      return { sent, counts, errors, states };
    });
    const { got, seqs, errors, states, members } = await page.evaluate(() => ({
      got: window.got,
      seqs: window.seqs,
      errors: window.errors,
      states: window.states,
      members: window.members,
    }));
    for (const from of TRANSPORTS) {
      const want = Array.from({ length: sent[from] }, (_, n) => n);
      assert.deepEqual(got[from], want, `${t} got ${from}'s messages in order, once`);
    }
    assert.ok(
      seqs.every((s, i) => i === 0 || s > seqs[i - 1]),
      `${t}: seqs strictly increasing`,
    );
    assert.deepEqual(errors, [], `${t}: no errors`);
    assert.deepEqual(states.slice(opened[t]), [], `${t}: no reconnect`);
    assert.deepEqual(members, everyone, `${t}: presence shows every legitimate member`);
  }

  assert.ok(peak.gateway < GATEWAY_RSS_MIB, `gateway RSS ${peak.gateway.toFixed(1)} MiB < ${GATEWAY_RSS_MIB}`);
  assert.ok(peak.fanout < FANOUT_RSS_MIB, `fanout RSS ${peak.fanout.toFixed(1)} MiB < ${FANOUT_RSS_MIB}`);
  assert.ok(peak.sessions <= POLL_SESSIONS_CAP, `polling sessions ${peak.sessions} <= ${POLL_SESSIONS_CAP}`);
  assert.ok(
    peak.memberships <= GATEWAY_MEMBERSHIPS_CAP,
    `gateway memberships ${peak.memberships} <= ${GATEWAY_MEMBERSHIPS_CAP}`,
  );
  assert.ok(peak.members <= FANOUT_MEMBERS_BOUND, `fanout members ${peak.members} <= ${FANOUT_MEMBERS_BOUND}`);
});
