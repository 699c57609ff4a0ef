// The support desk page (`/support.html`): an agent's tickets, or a customer's chat.
// Served as a file so that the page's Content-Security-Policy needs no inline script.

import { Herald } from "/herald.js";

const params = new URLSearchParams(location.search);

/** An element with properties and children; text always goes in as text. */
function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}
const token = params.get("token");
const company = params.get("company");
const agent = params.has("customers");
const customers = agent ? params.get("customers").split(",").filter(Boolean) : [params.get("customer")].filter(Boolean);
const gateways = (params.get("gateways") || location.origin).split(",").filter(Boolean);
if (!token || !company || customers.length === 0) {
  document.getElementById("help").hidden = false;
} else {
  document.getElementById("who").textContent = agent ? `agent of ${company}` : `${customers[0]} at ${company}`;
  const client = Herald.connect(gateways, { token, transports: params.get("transport") ? [params.get("transport")] : undefined });
  client.on("transport", (t) => (document.getElementById("transport").textContent = t));
  client.on("state", (s) => (document.getElementById("status").textContent = s));
  const panels = new Map();
  for (const customer of customers) {
    const room = `support:${company}:${customer}`;
    const panel = document.createElement("section");
    panel.className = "ticket";
    panel.dataset.testid = `ticket-${customer}`;
    // Built node by node: `customer` comes from the URL, which an attacker may write.
    const title = el("span", { textContent: agent ? customer : "Support" });
    const badge = el("small", { className: "offline", textContent: "offline" });
    const messages = el("ul");
    messages.dataset.testid = `messages-${customer}`;
    const input = el("input", { placeholder: "Message" });
    input.dataset.testid = `input-${customer}`;
    panel.append(el("h2", {}, title, badge), messages, el("form", {}, input, el("button", { textContent: "Send" })));
    document.getElementById("desk").append(panel);
    panels.set(customer, panel);
    const list = panel.querySelector("ul");
    const sub = client.subscribe(room, { presence: true });
    sub.on("event", (ev) => {
      const li = document.createElement("li");
      li.textContent = `${ev.from === customer ? customer : "agent"}: ${ev.data?.text ?? ""}`;
      list.append(li);
      list.scrollTop = list.scrollHeight;
    });
    sub.on("error", (e) => list.append(Object.assign(document.createElement("li"), { textContent: e.message })));
    panel.querySelector("form").addEventListener("submit", async (e) => {
      e.preventDefault();
      const input = panel.querySelector("input");
      const text = input.value;
      input.value = "";
      if (!text) return;
      try {
        await client.publish(room, { text }, { type: "message" });
      } catch (err) {
        list.append(Object.assign(document.createElement("li"), { textContent: `not sent: ${err.message}` }));
      }
    });
  }
  client.on("error", (e) => {
    const li = document.createElement("li");
    li.textContent = `error: ${e.code}`;
    li.dataset.testid = "error";
    document.getElementById("desk").append(li);
  });
  if (agent) {
    client.watch(customers);
    client.on("status", (s) => {
      const badge = panels.get(s.user)?.querySelector("small");
      if (badge) {
        badge.textContent = s.online ? "online" : "offline";
        badge.className = s.online ? "online" : "offline";
      }
    });
  }
}
