// permessage-deflate with a real browser: Chromium offers the extension, a gateway with
// --ws-compression on accepts it (the handshake's answer, as the DevTools protocol reports
// it), and herald.js receives compressed events intact; the gateway counts what it compressed.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { launch, metric, startOwnGateway, waitFor } from "./helpers.mjs";

let browser;
let gateway;

before(async () => {
  browser = await launch();
  gateway = await startOwnGateway("gw-deflate", {
    HERALD_WS_COMPRESSION: "on",
    HERALD_WS_COMPRESSION_MIN_BYTES: "256",
    HERALD_ALLOW_ANONYMOUS: "true",
    HERALD_ANONYMOUS_ROOMS: "deflate-*",
    HERALD_ANONYMOUS_PUBLISH: "deflate-*",
  });
});

after(async () => {
  await browser?.close();
  gateway?.kill();
});

test("Chromium negotiates permessage-deflate and herald.js gets compressed events intact", async () => {
  const page = await (await browser.newContext()).newPage();
  page.on("pageerror", (e) => console.error("page error:", e.message));
  const cdp = await page.context().newCDPSession(page);
  await cdp.send("Network.enable");
  const handshakes = [];
  cdp.on("Network.webSocketHandshakeResponseReceived", (e) => handshakes.push(e.response));
  await page.goto(`${gateway.url}/support.html`);
  const before = await metric(gateway.admin, 'herald_gateway_compression_bytes_total{side="compressed"}');
  const text = "compressed once, shared by every subscriber. ".repeat(40);
  const got = await page.evaluate(
    async ({ url, text }) => {
      const { Herald } = await import("/herald.js");
      const client = Herald.connect(url, { transports: ["websocket"] });
      const sub = client.subscribe("deflate-room");
      const events = [];
      sub.on("event", (ev) => events.push(ev.data));
      await new Promise((resolve) => client.on("state", (s) => s === "open" && resolve()));
      await client.publish("deflate-room", { text, n: 1 });
      await client.publish("deflate-room", { text: "small", n: 2 });
      const deadline = Date.now() + 10_000;
      while (events.length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      client.close();
      return events;
    },
    { url: gateway.url, text },
  );
  assert.deepEqual(got, [{ text, n: 1 }, { text: "small", n: 2 }]);
  const answer = handshakes.map((r) => {
    const h = Object.fromEntries(Object.entries(r.headers).map(([k, v]) => [k.toLowerCase(), v]));
    return h["sec-websocket-extensions"];
  });
  assert.ok(answer.length >= 1, "a WebSocket handshake was seen");
  assert.match(answer[0], /^permessage-deflate; server_no_context_takeover; client_no_context_takeover/);
  await waitFor("the large event was compressed", async () => {
    const now = await metric(gateway.admin, 'herald_gateway_compression_bytes_total{side="compressed"}');
    return now > before || now;
  });
  await page.context().close();
});
