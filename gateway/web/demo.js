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

  const lobby = client.subscribe(room, { presence: true });
  lobby.on("event", (ev) => {
    const d = ev.data || {};
    const name = document.createElement("b");
    name.textContent = `${d.name || ev.from || "?"}: `;
    // Only inline images: a URL from an event would make every reader fetch it.
    if (typeof d.image === "string" && /^data:image\/(png|jpeg|gif|webp);base64,[A-Za-z0-9+\/=]+$/.test(d.image)) {
      const img = document.createElement("img");
      img.src = d.image;
      img.alt = `image from ${d.name || ev.from}`;
      line("message", name, img);
    } else {
      line("message", name, document.createTextNode(String(d.text ?? "")));
    }
  });
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
    try {
      await client.publish(room, { name, text }, { type: "message" });
    } catch (err) {
      line("notice", `not sent: ${err.message}`);
    }
  });

  $("image").addEventListener("change", async () => {
    const file = $("image").files[0];
    $("image").value = "";
    if (!file) return;
    try {
      const image = await shrink(file, maxBytes - 1024);
      await client.publish(room, { name, image }, { type: "image" });
    } catch (err) {
      line("notice", `image not sent: ${err.message}`);
    }
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
