// The chat demo at `/`: a room with an online list, messages and inline images, on herald.js.
// Served as a file so that the page's Content-Security-Policy needs no inline script.

import { Herald } from "/herald.js";

const params = new URLSearchParams(location.search);
const room = params.get("room") || "lobby";
const gateways = (params.get("gateways") || location.origin).split(",").filter(Boolean);
const forced = params.get("transport");
const maxBytes = Number(document.body.dataset.maxMessageBytes) || 65536;
const $ = (id) => document.getElementById(id);
$("room-name").textContent = room;

function line(cls, ...children) {
  const li = document.createElement("li");
  if (cls) li.className = cls;
  li.append(...children);
  $("messages").append(li);
  $("messages").scrollTop = $("messages").scrollHeight;
  return li;
}

function who(m) {
  return m.name || m.user;
}

$("login").addEventListener("submit", (e) => {
  e.preventDefault();
  const name = $("name").value.trim();
  if (!name) return;
  $("login").hidden = true;
  $("chat").hidden = false;
  const client = Herald.connect(gateways, {
    name,
    token: params.get("token") || undefined,
    transports: forced ? [forced] : undefined,
  });
  window.heraldClient = client;
  $("transport").textContent = client.transport;
  client.on("transport", (t) => ($("transport").textContent = t));
  $("status").textContent = client.state;
  client.on("state", (s) => ($("status").textContent = s));
  client.on("error", (err) => line("notice", `error: ${err.code} ${err.message}`));

  /** Shown messages by seq: the event of one of our own, already on screen, is not shown twice. */
  const shown = new Map();

  /** A message's line: its sender in bold, then its text or inline image. */
  function message(d, from, cls = "message") {
    const name = document.createElement("b");
    name.textContent = `${d.name || from || "?"}: `;
    // Only inline images: a URL from an event would make every reader fetch it.
    if (typeof d.image === "string" && /^data:image\/(png|jpeg|gif|webp);base64,[A-Za-z0-9+\/=]+$/.test(d.image)) {
      const img = document.createElement("img");
      img.src = d.image;
      img.alt = `image from ${d.name || from}`;
      return line(cls, name, img);
    }
    return line(cls, name, document.createTextNode(String(d.text ?? "")));
  }

  const lobby = client.subscribe(room, { presence: true });
  lobby.on("event", (ev) => {
    if (shown.has(ev.seq)) return;
    const li = message(ev.data || {}, ev.from);
    li.dataset.seq = String(ev.seq);
    shown.set(ev.seq, li);
  });

  /** Our own message: shown at once as "sending…" until stored (across reconnects: herald.js
   *  sends it again with the same key), then as any other; "not sent" only if it was not. */
  async function send(data, type) {
    const li = message(data, name, "message pending");
    const state = document.createElement("small");
    state.className = "state";
    state.textContent = " sending…";
    li.append(state);
    try {
      const { seq } = await client.publish(room, data, { type });
      if (shown.has(seq)) {
        li.remove(); // its event came first and is on screen
      } else {
        li.className = "message";
        li.dataset.seq = String(seq);
        shown.set(seq, li);
      }
      state.remove();
    } catch (err) {
      li.className = "message failed";
      state.textContent = err.maybeStored ? ` not confirmed: ${err.message}` : ` not sent: ${err.message}`;
    }
  }
  $("pending").textContent = "";
  client.on("pending", (n) => ($("pending").textContent = n ? `${n} sending…` : ""));
  lobby.on("presence", (p) => {
    $("count").textContent = String(p.count);
    $("online").replaceChildren(
      ...p.members
        .slice()
        .sort((a, b) => who(a).localeCompare(who(b)))
        .map((m) => {
          const li = document.createElement("li");
          li.textContent = who(m) + (m.conns > 1 ? ` (${m.conns} tabs)` : "");
          li.dataset.user = m.user;
          return li;
        }),
    );
    if (!p.snapshot) {
      for (const m of p.joined) line("notice", `${who(m)} joined`);
      for (const m of p.left) line("notice", `${who(m)} left`);
    }
  });

  $("compose").addEventListener("submit", async (e) => {
    e.preventDefault();
    const text = $("text").value;
    if (!text) return;
    $("text").value = "";
    await send({ name, text }, "message");
  });

  $("image").addEventListener("change", async () => {
    const file = $("image").files[0];
    $("image").value = "";
    if (!file) return;
    let image;
    try {
      image = await shrink(file, maxBytes - 1024);
    } catch (err) {
      line("notice", `image not sent: ${err.message}`);
      return;
    }
    await send({ name, image }, "image");
  });
});

/** Resizes an image until its JPEG data URL fits in `budget` bytes. */
async function shrink(file, budget) {
  const bitmap = await createImageBitmap(file);
  let side = Math.min(1024, Math.max(bitmap.width, bitmap.height, 1));
  for (let quality = 0.85; side >= 1; ) {
    const scale = side / Math.max(bitmap.width, bitmap.height);
    const canvas = document.createElement("canvas");
    canvas.width = Math.max(1, Math.round(bitmap.width * scale));
    canvas.height = Math.max(1, Math.round(bitmap.height * scale));
    canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    const url = canvas.toDataURL("image/jpeg", quality);
    if (url.length <= budget) return url;
    if (quality > 0.5) quality -= 0.15;
    else side = Math.floor(side * 0.75);
  }
  throw new Error("image too large");
}
