// The support desk demo with its app backend (demo-backend, HERALD_DESK_BACKEND), which
// holds the server API key: an agent's page moves a customer to another agent (server-side
// subscribe and unsubscribe, a system message) and ends a customer's session (disconnect,
// revoke), in real headless Chromium. The backend refuses what an agent's token does not allow.
// Runs after demo.test.mjs, which kills the first gateway: only the second is used.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { join } from "node:path";
import { launch, waitFor, WAIT } from "./helpers.mjs";

const gateway = process.env.HERALD_GATEWAYS.split(",")[1];
const backend = process.env.HERALD_DESK_BACKEND;
const secret = process.env.HERALD_TEST_SECRET;
const artifacts = process.env.HERALD_ARTIFACTS;
const company = "initech";

let browser;

before(async () => {
  browser = await launch();
});

after(async () => {
  await browser?.close();
});

/** An HS256 token for `user` with `rooms`, valid for an hour. */
function mint(user, rooms) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const head = b64({ alg: "HS256", typ: "JWT" });
  const body = b64({ sub: user, iat: now - 1, exp: now + 3600, herald: { sub: rooms, pub: rooms } });
  const sig = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

const agentToken = (agent) => mint(agent, [`support:${company}:*`]);
const customerToken = (customer) => mint(customer, [`support:${company}:${customer}:*`]);

/** A desk page in a context of its own, open. */
async function page(query, name) {
  const p = await (await browser.newContext({ viewport: { width: 1000, height: 700 } })).newPage();
  p.on("pageerror", (e) => console.error(`[${name}] page error:`, e.message));
  await p.goto(`${gateway}/support.html?${new URLSearchParams({ company, gateways: gateway, ...query })}`);
  await p.getByTestId("status").filter({ hasText: /^open$/ }).waitFor({ timeout: WAIT });
  return p;
}

const agentPage = (agent, customers) =>
  page({ agent, customers: customers.join(","), agents: "alice,carol", backend, token: agentToken(agent) }, agent);
const customerPage = (customer, transport) =>
  page({ customer, agent: "alice", transport, token: customerToken(customer) }, customer);

const texts = (p, testid) => p.getByTestId(testid).locator("li").allTextContents();
const panels = (p) => p.locator(".ticket").evaluateAll((all) => all.map((t) => t.dataset.testid));

test("the agent moves a customer to another agent: both pages follow, without a new token", async () => {
  const alice = await agentPage("alice", ["eve", "dan"]);
  const carol = await agentPage("carol", []);
  const eve = await customerPage("eve", "websocket");
  await waitFor("alice sees eve online", async () => {
    const badge = await alice.getByTestId("ticket-eve").locator("small").textContent();
    return badge === "online" || badge;
  });
  await eve.getByTestId("input-alice").fill("hello?");
  await eve.getByTestId("input-alice").press("Enter");
  await waitFor("alice gets eve's message", async () => {
    const got = await texts(alice, "messages-eve");
    return got.includes("eve: hello?") || got;
  });

  await alice.getByTestId("move-to-eve").selectOption("carol");
  await alice.getByTestId("move-eve").click();
  const note = "— alice handed this conversation to carol";
  await waitFor("eve is in carol's room, told so, and out of alice's", async () => {
    const got = await texts(eve, "messages-carol");
    const open = await panels(eve);
    return (got.includes(note) && open.length === 1 && open[0] === "ticket-carol") || { got, open };
  });
  await waitFor("carol has eve's conversation, told so", async () => {
    const got = await texts(carol, "messages-eve");
    return got.includes(note) || got;
  });
  await waitFor("alice no longer has it", async () => {
    const open = await panels(alice);
    return (open.length === 1 && open[0] === "ticket-dan") || open;
  });
  // The customer talks to the new agent with the token it had (granted by the room pattern).
  await eve.getByTestId("input-carol").fill("thanks");
  await eve.getByTestId("input-carol").press("Enter");
  await waitFor("carol gets eve's message", async () => {
    const got = await texts(carol, "messages-eve");
    return got.includes("eve: thanks") || got;
  });
  await carol.screenshot({ path: join(artifacts, "support-moved.png") });
  for (const p of [alice, carol, eve]) await p.context().close();
});

test("the agent ends a customer's session: closed with the reason, not reconnecting, the token refused", async () => {
  const alice = await agentPage("alice", ["dan"]);
  const token = customerToken("dan");
  const dan = await page({ customer: "dan", agent: "alice", transport: "long-poll", token }, "dan");
  const other = await customerPage("fay", "sse");
  await waitFor("alice sees dan online", async () => {
    const badge = await alice.getByTestId("ticket-dan").locator("small").textContent();
    return badge === "online" || badge;
  });
  await alice.getByTestId("end-dan").click();
  await waitFor("dan's page says the session ended", async () => {
    const ended = await dan.getByTestId("ended").allTextContents();
    return ended[0] === "Session ended: Your support session was ended by the agent" || ended;
  });
  await waitFor("dan's client closed", async () => {
    const status = await dan.getByTestId("status").textContent();
    return status === "closed" || status;
  });
  await waitFor("alice is told", async () => {
    const got = await texts(alice, "messages-dan");
    return got.some((t) => /^session ended \(\d+ connections?\)$/.test(t)) || got;
  });
  await dan.screenshot({ path: join(artifacts, "support-ended.png") });
  // The token is revoked: refused at every transport's door.
  const room = `support:${company}:dan:alice`;
  const poll = await fetch(`${gateway}/poll?rooms=${room}&wait=0&token=${token}`);
  assert.equal(poll.status, 401, "a revoked token is refused");
  // Another customer is unaffected.
  assert.equal(await other.getByTestId("status").textContent(), "open");
  assert.equal(await other.getByTestId("ended").count(), 0);
  for (const p of [alice, dan, other]) await p.context().close();
});

test("the desk's backend does only what the agent's token allows", async () => {
  const call = async (action, body, token) => {
    const headers = { "content-type": "application/json" };
    if (token) headers.authorization = `Bearer ${token}`;
    const res = await fetch(`${backend}/desk/${action}`, { method: "POST", headers, body });
    return [res.status, (await res.json()).error?.code];
  };
  const ask = JSON.stringify({ company, customer: "gil", to: "carol" });
  assert.deepEqual(await call("move", ask, null), [401, "unauthorized"]);
  assert.deepEqual(await call("move", ask, "not.a.token"), [401, "unauthorized"]);
  assert.deepEqual(await call("move", ask, mint("alice", [`support:${company}:*`]).slice(0, -2)), [401, "unauthorized"]);
  // A customer's token, another company's agent, a token that grants the company's rooms to
  // someone who is not one of its agents: not an agent of this company.
  assert.deepEqual(await call("end", ask, customerToken("gil")), [403, "forbidden"]);
  assert.deepEqual(await call("end", ask, mint("mallory", ["support:globex:*"])), [403, "forbidden"]);
  assert.deepEqual(await call("end", ask, agentToken("mallory")), [403, "forbidden"]);
  const alice = agentToken("alice");
  // An agent acts only on a customer in its own room now, and moves to agents only.
  assert.deepEqual(await call("end", JSON.stringify({ company, customer: "gil" }), alice), [403, "forbidden"]);
  assert.deepEqual(await call("end", JSON.stringify({ company, customer: "carol" }), alice), [403, "forbidden"]);
  assert.deepEqual(await call("move", JSON.stringify({ company, customer: "gil", to: "gil" }), alice), [403, "forbidden"]);
  for (const body of [
    "{",
    JSON.stringify({ company, customer: "gil:x" }),
    JSON.stringify({ company, customer: "" }),
    JSON.stringify({ company: "a\nb", customer: "gil" }),
    JSON.stringify({ company, customer: "gil", to: "alice" }),
    JSON.stringify({ company, customer: "gil", extra: 1 }),
    JSON.stringify({ company, customer: "x".repeat(5000) }),
  ]) {
    const [status, code] = await call("move", body, alice);
    assert.equal(status, 400, `${body.slice(0, 60)}: ${status} ${code}`);
    assert.equal(code, "bad_request", body.slice(0, 60));
  }
  // The preflight a browser sends first.
  const pre = await fetch(`${backend}/desk/move`, { method: "OPTIONS" });
  assert.equal(pre.status, 204);
  assert.match(pre.headers.get("access-control-allow-headers"), /authorization/);
});
