// The support desk page (`/support.html`): an agent's tickets, or a customer's chat.
// Served as a file so that the page's Content-Security-Policy needs no inline script.
//
// A conversation is the room `support:<company>:<customer>:<agent>`. An agent's page with
// `backend=` (the app's own server, `demo-backend`) can end a customer's session and move a
// customer to another agent: the backend calls Herald's server API, and the rooms come and go
// on every page through server-side subscriptions (herald.js `subscribed` / `unsubscribed`).

import { Herald } from "/herald.js";

const params = new URLSearchParams(location.search);

/** An element with properties and children; text always goes in as text. */
function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}
const list = (name) => (params.get(name) || "").split(",").filter(Boolean);
const token = params.get("token");
const company = params.get("company");
const agentPage = params.has("customers");
const me = agentPage ? params.get("agent") : params.get("customer");
const gateways = (params.get("gateways") || location.origin).split(",").filter(Boolean);
const backend = params.get("backend");
const desk = document.getElementById("desk");

/** The conversation room of `customer` with `agent`. */
const roomOf = (customer, agent) => `support:${company}:${customer}:${agent}`;
/** A room's customer and agent, if it is one of this company's conversations. */
function partiesOf(room) {
  const parts = room.split(":");
  if (parts.length !== 4 || parts[0] !== "support" || parts[1] !== company) return null;
  return { customer: parts[2], agent: parts[3] };
}

if (!token || !company || !me || (!agentPage && !params.get("agent"))) {
  document.getElementById("help").hidden = false;
} else {
  document.getElementById("who").textContent = agentPage ? `${me}, agent of ${company}` : `${me} at ${company}`;
  const transports = params.get("transport") ? [params.get("transport")] : undefined;
  const client = Herald.connect(gateways, { token, transports });
  // Shown as they are now (a transport without rooms may be open already), then as they change.
  const show = (id) => (value) => (document.getElementById(id).textContent = value);
  show("transport")(client.transport);
  show("status")(client.state);
  client.on("transport", show("transport"));
  client.on("state", show("status"));
  /** Open conversations by room: their panel. */
  const panels = new Map();
  /** The customers' presence badges, by customer (agent page). */
  const badges = new Map();

  /** A conversation's panel, for a subscription the page asked for or the server gave. */
  function open(room, sub) {
    // A name from the URL that does not fit a room part (`:`) opens nothing.
    const parties = partiesOf(room);
    if (!parties) return;
    const { customer, agent } = parties;
    // The other party names the panel: the customer on an agent's page, the agent on a customer's.
    const party = agentPage ? customer : agent;
    panels.get(room)?.remove();
    const badge = el("small", { className: "offline", textContent: "offline" });
    const messages = el("ul");
    messages.dataset.testid = `messages-${party}`;
    const input = el("input", { placeholder: "Message" });
    input.dataset.testid = `input-${party}`;
    const title = el("span", { textContent: agentPage ? customer : `Support · ${agent}` });
    const panel = el("section", { className: "ticket" }, el("h2", {}, title, agentPage ? badge : ""), messages);
    panel.dataset.testid = `ticket-${party}`;
    const say = (text, className = "") => {
      messages.append(el("li", { textContent: text, className }));
      messages.scrollTop = messages.scrollHeight;
    };
    const form = el("form", {}, input, el("button", { textContent: "Send" }));
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const text = input.value;
      input.value = "";
      if (!text) return;
      try {
        await client.publish(room, { text }, { type: "message" });
      } catch (err) {
        say(`not sent: ${err.message}`);
      }
    });
    panel.append(form);
    if (agentPage && backend) panel.append(actions(customer, say));
    desk.append(panel);
    panels.set(room, panel);
    if (agentPage) {
      if (!badges.has(customer)) client.watch([customer]);
      badges.set(customer, badge);
    }
    sub.on("event", (ev) => {
      if (ev.type === "system") say(`— ${ev.data?.text ?? ""}`, "system");
      else say(`${ev.from ?? "?"}: ${ev.data?.text ?? ""}`);
    });
    sub.on("error", (e) => say(e.message));
  }

  /** The agent's buttons: end the customer's session, move the customer to another agent. */
  function actions(customer, say) {
    const end = el("button", { textContent: "End session", type: "button" });
    end.dataset.testid = `end-${customer}`;
    const others = list("agents").filter((a) => a !== me);
    const to = el("select", {}, ...others.map((a) => el("option", { value: a, textContent: a })));
    to.dataset.testid = `move-to-${customer}`;
    const move = el("button", { textContent: "Move", type: "button", disabled: others.length === 0 });
    move.dataset.testid = `move-${customer}`;
    end.addEventListener("click", async () => {
      const done = await ask("end", { company, customer }, say);
      if (done) say(`session ended (${done.connections} connection${done.connections === 1 ? "" : "s"})`, "system");
    });
    move.addEventListener("click", () => ask("move", { company, customer, to: to.value }, say));
    return el("div", { className: "actions" }, end, to, move);
  }

  /** Calls the app's backend as this agent; its result, or `null` after saying what failed. */
  async function ask(action, body, say) {
    try {
      const res = await fetch(`${backend}/desk/${action}`, {
        method: "POST",
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
        body: JSON.stringify(body),
      });
      const answer = await res.json();
      if (!res.ok) throw new Error(answer.error?.message ?? res.status);
      return answer.result;
    } catch (err) {
      say(`${action} failed: ${err.message}`);
      return null;
    }
  }

  const mine = agentPage ? list("customers").map((c) => roomOf(c, me)) : [roomOf(me, params.get("agent"))];
  for (const room of mine) open(room, client.subscribe(room, { presence: true }));
  // The backend moved a conversation here, or away.
  client.on("subscribed", (sub) => {
    const parties = partiesOf(sub.room);
    if (parties && (agentPage ? parties.agent === me : parties.customer === me)) open(sub.room, sub);
  });
  client.on("unsubscribed", ({ room }) => {
    panels.get(room)?.remove();
    panels.delete(room);
  });
  client.on("disconnect", ({ reason, reconnect }) => {
    if (reconnect) return;
    const ended = el("p", { id: "ended", textContent: `Session ended: ${reason}` });
    ended.dataset.testid = "ended";
    desk.before(ended);
  });
  client.on("error", (e) => {
    const li = el("li", { textContent: `error: ${e.code}` });
    li.dataset.testid = "error";
    desk.append(li);
  });
  if (agentPage) {
    client.on("status", (s) => {
      const badge = badges.get(s.user);
      if (badge) {
        badge.textContent = s.online ? "online" : "offline";
        badge.className = s.online ? "online" : "offline";
      }
    });
  }
}
