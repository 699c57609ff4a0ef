// Herald browser client: WebSocket first, then SSE + HTTP publish, then long-poll, then
// short-poll. Reconnects with backoff and jitter, fails over between gateways, and resumes
// every room from the last event it saw. No dependencies.
//
//   import { Herald } from "/herald.js";            // or <script src="/herald.classic.js">
//   const client = Herald.connect(["https://a.example", "https://b.example"], { token });
//   // or, with tokens that expire: { getToken: async () => (await fetch("/herald-token")).text() }
//   const lobby = client.subscribe("lobby", { presence: true });
//   lobby.on("event", (ev) => console.log(ev.seq, ev.data));
//   lobby.on("presence", (p) => console.log(p.count, p.members));
//   await client.publish("lobby", { text: "hi" }, { type: "message" });  // → {room, seq}
//
// Every publish carries an idempotency key. While the client is disconnected, publishes wait
// in an outbox (bounded in count, bytes and time) and are sent again after reconnect, to any
// gateway on any transport, with the same key and in the order they were made: a message
// whose ack was lost is stored once, and its promise resolves once with the stored seq.

/** @typedef {"websocket" | "sse" | "long-poll" | "poll"} Transport */
/** @typedef {"connecting" | "open" | "reconnecting" | "closed"} State */
/** @typedef {{room: string, seq: number, prev: number, ts: number, type?: string, from?: string, data?: any}} HeraldEvent */
/** @typedef {{user: string, conn: string, name?: string, conns?: number}} Member */
/** @typedef {{room: string, count: number, conns?: number, members: Member[], joined: Member[], left: Member[]}} PresenceState */
/** @typedef {{user: string, online: boolean}} Status */
/** @typedef {{room: string, data: any, type?: string, key: string, size: number, resolve: Function,
 *             reject: Function, timer?: any, sent: boolean, expired?: boolean, inFlight: object | null}} Outgoing */

const TRANSPORTS = ["websocket", "sse", "long-poll", "poll"];

/** A minimal typed event emitter. */
class Emitter {
  constructor() {
    /** @type {Map<string, Set<Function>>} */
    this._handlers = new Map();
  }
  /** Adds a handler; returns a function that removes it. */
  on(type, fn) {
    if (!this._handlers.has(type)) this._handlers.set(type, new Set());
    this._handlers.get(type).add(fn);
    return () => this._handlers.get(type).delete(fn);
  }
  off(type, fn) {
    this._handlers.get(type)?.delete(fn);
  }
  emit(type, value) {
    for (const fn of this._handlers.get(type) ?? []) {
      try {
        fn(value);
      } catch (e) {
        console.error("herald: handler failed", e);
      }
    }
  }
}

/** One room: emits `event` (a HeraldEvent), `presence` (a PresenceState) and `unrecovered`
 *  (`{room}`: history lost events after the last one seen; refetch the room's state). */
class Subscription extends Emitter {
  constructor(client, room, presence) {
    super();
    this.client = client;
    this.room = room;
    this.presence = presence;
    /** Last seq received; the resume point. */
    this.seq = null;
    /** @type {Map<string, Member>} */
    this.members = new Map();
    this.count = 0;
    this.conns = 0;
  }

  /** Stops receiving this room. */
  unsubscribe() {
    this.client._unsubscribe(this);
  }

  _event(ev) {
    // An ephemeral event (seq 0: never stored) has no place in the room's order.
    if (ev.seq === 0) return this.emit("event", ev);
    if (this.seq !== null && ev.seq <= this.seq) return; // already seen (resume overlap)
    this.seq = ev.seq;
    this.emit("event", ev);
  }

  /** History no longer covers this room's position (the stream was recreated or purged):
   *  continue from `seq` (or from the next event) and let the app refetch its state. */
  _unrecovered(seq) {
    this.seq = seq ?? null;
    this.emit("unrecovered", { room: this.room });
  }

  _presence(p) {
    if (p.members) this.members = new Map(p.members.map((m) => [m.user, m]));
    for (const m of p.joined ?? []) this.members.set(m.user, m);
    for (const m of p.left ?? []) this.members.delete(m.user);
    this.count = p.count ?? this.members.size;
    this.conns = p.conns ?? this.conns;
    this.emit("presence", {
      room: this.room,
      count: this.count,
      conns: this.conns,
      members: [...this.members.values()],
      joined: p.joined ?? [],
      left: p.left ?? [],
      snapshot: Boolean(p.members),
    });
  }
}

/**
 * A connection to Herald over the best transport available. Emits `state` (State),
 * `transport` (Transport), `status` (Status), `error` ({code, message}), `pending` (the
 * number of publishes not yet stored, whenever it changes; also `client.pending`) and
 * `disconnect` ({code, reason, reconnect}: the app's backend ended the session; with
 * `reconnect: false` the client closes for good, else it reconnects as after any loss),
 * `subscribed` (a Subscription the app did not ask for: the app's backend subscribed the
 * user to its room; `sub.byServer` is true) and `unsubscribed` ({room}: the backend took a
 * room away; the Subscription emits `unsubscribed` too).
 */
class Client extends Emitter {
  /**
   * @param {string | string[]} urls gateway base URLs (http(s)://host:port), tried in turn
   * @param {{token?: string, getToken?: () => Promise<string>, name?: string, transports?: Transport[],
   *          pollInterval?: number, longPollWait?: number, sid?: string}} [options]
   *   `getToken` is called before each connect and before the token expires; the client
   *   then reconnects with the new token and resumes every room (WebSocket, SSE) or sends
   *   it with the next poll. If it fails, the client emits `error` (code `token_refresh`)
   *   and tries again with backoff.
   * @param {{publishTimeout?: number, outboxSize?: number, outboxBytes?: number}} [options]
   *   The outbox: a publish not stored within `publishTimeout` ms (default 30000) rejects
   *   with code `publish_timeout` and is never sent after that; at most `outboxSize`
   *   publishes (default 100) and `outboxBytes` bytes of them (default 1 MiB) wait at once,
   *   more reject at once with code `outbox_full`.
   */
  constructor(urls, options = {}) {
    super();
    this.urls = (Array.isArray(urls) ? urls : [urls]).map((u) => u.replace(/\/+$/, ""));
    this.options = options;
    this.token = options.token ?? null;
    this.name = options.name ?? null;
    /** Keeps an anonymous user the same across reconnects, transports and reloads of the tab. */
    this.sid = options.sid ?? tabId();
    this.pollInterval = options.pollInterval ?? 1000;
    this.longPollWait = options.longPollWait ?? 25;
    const wanted = options.transports ?? TRANSPORTS;
    /** @type {Transport[]} */
    this.transports = wanted.filter((t) => supported(t));
    if (this.transports.length === 0) throw new Error("herald: no supported transport");
    /** @type {Map<string, Subscription>} */
    this.rooms = new Map();
    /** @type {Set<string>} */
    this.watched = new Set();
    /** @type {State} */
    this.state = "connecting";
    /** @type {Transport | null} */
    this.transport = null;
    this._urlIndex = 0;
    this._transportIndex = 0;
    this._failures = 0;
    this._nextId = 1;
    /** @type {Map<number, {resolve: Function, reject: Function}>} */
    this._pending = new Map();
    this.publishTimeout = options.publishTimeout ?? 30000;
    this.outboxSize = options.outboxSize ?? 100;
    this.outboxBytes = options.outboxBytes ?? 1 << 20;
    /** Publishes not yet stored, in the order they were made. @type {Outgoing[]} */
    this._outbox = [];
    this._outboxUsed = 0;
    /** An HTTP transport sends the outbox one publish at a time, in order. */
    this._posting = false;
    this._session = null;
    this._timer = null;
    this._refreshTimer = null;
    this._tokenFailures = 0;
    /** A polling client says it leaves when the page goes (the gateway ends its session). */
    this._onPageHide = () => this._leave();
    globalThis.addEventListener?.("pagehide", this._onPageHide);
    this._start();
  }

  /** Subscribes to a room; with `presence`, the connection is a member and gets presence.
   *  `token`: a subscription token for this room (a JWT from your backend whose `room` claim
   *  names it), for rooms the connection's token does not grant; kept for reconnects. */
  subscribe(room, { presence = false, token } = {}) {
    let sub = this.rooms.get(room);
    if (!sub) {
      sub = new Subscription(this, room, presence);
      this.rooms.set(room, sub);
    } else {
      sub.presence = sub.presence || presence;
    }
    if (token) sub.token = token;
    this._session?.subscribe(sub);
    return sub;
  }

  _unsubscribe(sub) {
    if (this.rooms.get(sub.room) !== sub) return;
    this.rooms.delete(sub.room);
    this._session?.unsubscribe(sub.room);
  }

  /**
   * Publishes; resolves to `{room, seq}` once stored (`repeat: true` when the gateway had
   * stored it already: an earlier attempt whose ack was lost). `key` is the idempotency key
   * (default: a random one); a publish with a key the same user used in the same room within
   * the gateway's duplicate window is stored once.
   * @returns {Promise<{room: string, seq: number, repeat?: boolean}>}
   */
  publish(room, data, { type, key } = {}) {
    const fail = (code, message) => Promise.reject(codedError(code, message));
    if (this.state === "closed") return fail("closed", "the client is closed");
    let size;
    try {
      size = JSON.stringify({ room, data, type }).length;
    } catch (e) {
      return fail("bad_request", `data is not JSON: ${e.message}`);
    }
    if (this._outbox.length >= this.outboxSize || this._outboxUsed + size > this.outboxBytes) {
      return fail("outbox_full", `too many publishes waiting to be sent (${this._outbox.length})`);
    }
    return new Promise((resolve, reject) => {
      /** @type {Outgoing} */
      const m = { room, data, type, key: key ?? randomId(), size, resolve, reject, sent: false, inFlight: null };
      m.timer = setTimeout(() => this._expire(m), this.publishTimeout);
      this._outbox.push(m);
      this._outboxUsed += size;
      this.emit("pending", this._outbox.length);
      this._flush();
    });
  }

  /** Publishes not yet stored (waiting in the outbox or in flight). */
  get pending() {
    return this._outbox.length;
  }

  /** The room's current presence snapshot. */
  async presence(room) {
    if (this._session instanceof WsSession) return this._session.request({ op: "presence", room });
    return this._get(`/presence?room=${enc(room)}`);
  }

  /** Follows users' online status (`status` events). */
  watch(users) {
    for (const u of users) this.watched.add(u);
    this._session?.watch(users);
  }

  unwatch(users) {
    for (const u of users) this.watched.delete(u);
    this._session?.unwatch(users);
  }

  /** Closes for good; publishes not yet stored reject (code `closed`). */
  close() {
    clearTimeout(this._timer);
    clearTimeout(this._refreshTimer);
    for (const m of [...this._outbox]) {
      this._settle(m, codedError("closed", "the client was closed before the publish was stored"));
    }
    globalThis.removeEventListener?.("pagehide", this._onPageHide);
    this._leave();
    this._session?.close();
    this._session = null;
    this._setState("closed");
  }

  /** Ends a polling session at once (a WebSocket or SSE stream ends with its connection). */
  _leave() {
    if (!(this._session instanceof PollSession)) return;
    const url = `${this.url}/poll/leave?${this._query({}, { token: false })}`;
    try {
      // A token goes in a header (URLs end up in logs): a keepalive fetch outlives the page
      // like a beacon, which cannot send headers.
      if (this.token && typeof fetch === "function") {
        fetch(url, { method: "POST", keepalive: true, headers: this._auth() }).catch(() => {});
      } else if (typeof navigator?.sendBeacon === "function") {
        navigator.sendBeacon(url);
      }
    } catch {
      /* the session's time to live ends it */
    }
  }

  // --- the outbox ---

  /** Sends what waits, if a session is open: all at once on a WebSocket (one socket keeps
   *  their order), one at a time over HTTP. */
  _flush() {
    const s = this._session;
    if (s === null || !s.opened || s.ended) return;
    if (s instanceof WsSession) {
      for (const m of this._outbox) if (m.inFlight === null) this._sendWs(s, m);
    } else {
      this._postOutbox();
    }
  }

  _sendWs(s, m) {
    m.inFlight = s;
    m.sent = true;
    s.request({ op: "publish", room: m.room, data: m.data, type: m.type, key: m.key }).then(
      (ack) => this._stored(m, ack),
      (err) => this._unsent(m, err),
    );
  }

  async _postOutbox() {
    if (this._posting) return;
    this._posting = true;
    try {
      for (;;) {
        const s = this._session;
        if (s === null || !s.opened || s.ended || s instanceof WsSession) break;
        const m = this._outbox.find((o) => o.inFlight === null);
        if (!m) break;
        m.inFlight = s;
        m.sent = true;
        try {
          const body = { room: m.room, data: m.data, type: m.type, key: m.key };
          this._stored(m, await this._post("/publish", body, AbortSignal.timeout(10000)));
        } catch (err) {
          // A gateway that is gone or unavailable: its session fails over meanwhile.
          if (this._unsent(m, err)) await sleep(250 + Math.random() * 500);
        }
      }
    } finally {
      this._posting = false;
    }
    // The transport may have changed to WebSocket while posting.
    if (this._session instanceof WsSession) this._flush();
  }

  _stored(m, ack) {
    const stored = { room: ack.room ?? m.room, seq: ack.seq };
    if (ack.repeat) stored.repeat = true;
    this._settle(m, null, stored);
  }

  /** An attempt failed. The gateway's refusal settles the publish; a lost connection or an
   *  unavailable gateway keeps it for the next attempt (true), unless its time is up. */
  _unsent(m, err) {
    m.inFlight = null;
    // Gateway refusals carry a string code; network errors, aborts and timeouts do not.
    const transient = typeof err?.code !== "string" || err.code === "unavailable";
    if (!transient) this._settle(m, err);
    else if (m.expired) this._settle(m, this._timeoutError(m));
    return transient && !m.expired;
  }

  /** The publish's time is up: it is never sent again. One in flight waits for that
   *  attempt's answer (stored → resolves, as it is then in every history). */
  _expire(m) {
    m.expired = true;
    if (m.inFlight === null) this._settle(m, this._timeoutError(m));
  }

  _timeoutError(m) {
    // An attempt whose answer was lost may have been stored (and delivered) all the same.
    return codedError("publish_timeout", `not stored within ${this.publishTimeout} ms; it will not be sent again`, {
      maybeStored: m.sent,
    });
  }

  _settle(m, err, value) {
    const i = this._outbox.indexOf(m);
    if (i < 0) return;
    this._outbox.splice(i, 1);
    this._outboxUsed -= m.size;
    clearTimeout(m.timer);
    if (err) m.reject(err);
    else m.resolve(value);
    this.emit("pending", this._outbox.length);
  }

  // --- connection management ---

  get url() {
    return this.urls[this._urlIndex % this.urls.length];
  }

  async _start() {
    if (this.options.getToken) {
      const token = await this._fetchToken();
      if (this.state === "closed") return;
      if (token === null) {
        this._tokenFailures += 1;
        this._setState("reconnecting");
        const base = Math.min(10000, 250 * 2 ** Math.min(this._tokenFailures, 6));
        this._timer = setTimeout(() => this._start(), base / 2 + (Math.random() * base) / 2);
        return;
      }
      this._tokenFailures = 0;
      this.token = token;
      this._scheduleRefresh();
    }
    this._open();
  }

  /** `getToken()`, or null (and an `error` event) if it fails. */
  async _fetchToken() {
    try {
      const token = await this.options.getToken();
      if (typeof token !== "string" || token === "") throw new Error("getToken returned no token");
      return token;
    } catch (e) {
      if (this.state !== "closed") {
        this.emit("error", { code: "token_refresh", message: `getToken failed: ${e?.message ?? e}` });
      }
      return null;
    }
  }

  _open() {
    const transport = this.transports[this._transportIndex];
    if (this.transport !== transport) {
      this.transport = transport;
      this.emit("transport", transport);
    }
    const Session = SESSIONS[transport];
    this._session = new Session(this, this.url);
    this._session.start();
  }

  /** Fetches a new token shortly before this one expires (a fifth of its life left, 1–30 s). */
  _scheduleRefresh() {
    clearTimeout(this._refreshTimer);
    const exp = tokenExpiry(this.token);
    if (exp === null) return;
    const left = exp * 1000 - Date.now();
    const margin = Math.min(30000, Math.max(1000, left / 5));
    this._refreshTimer = setTimeout(() => this._refresh(), Math.max(0, left - margin));
  }

  /** WebSocket and SSE reconnect with the new token and resume; polls carry it from the next one. */
  async _refresh() {
    if (this.state === "closed") return;
    const token = await this._fetchToken();
    if (this.state === "closed") return;
    if (token === null) {
      // The session goes on until the gateway ends it at expiry; try again meanwhile.
      this._refreshTimer = setTimeout(() => this._refresh(), 1000);
      return;
    }
    this.token = token;
    this._scheduleRefresh();
    const s = this._session;
    if (s === null || s instanceof PollSession) return;
    this._session = null;
    s.close();
    for (const [, p] of this._pending) p.reject(new Error("reconnecting with a new token"));
    this._pending.clear();
    clearTimeout(this._timer);
    this._open();
  }

  /** Called by a session once it delivers. */
  _opened(session) {
    if (session !== this._session) return;
    this._failures = 0;
    this._setState("open");
    this._flush();
  }

  /** Called by a session that ended or failed; reconnects elsewhere after a backoff. */
  _lost(session, opened) {
    if (session !== this._session || this.state === "closed") return;
    this._session = null;
    for (const [, p] of this._pending) p.reject(new Error("connection lost"));
    this._pending.clear();
    this._failures = opened ? 1 : this._failures + 1;
    this._urlIndex += 1; // fail over to the next gateway
    // A transport that never opens on any gateway (twice round) gives way to the next one.
    if (!opened && this._failures >= 2 * this.urls.length && this._transportIndex < this.transports.length - 1) {
      this._transportIndex += 1;
      this._failures = 0;
    }
    this._setState("reconnecting");
    const base = Math.min(10000, 250 * 2 ** Math.min(this._failures, 6));
    const delay = opened ? 100 + Math.random() * 400 : base / 2 + (Math.random() * base) / 2;
    this._timer = setTimeout(() => this._start(), delay);
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.emit("state", state);
  }

  /** The query every request carries: `sid`, `name`, and `token` unless it goes in a header. */
  _query(extra, { token = true } = {}) {
    const q = new URLSearchParams(extra);
    q.set("sid", this.sid);
    if (token && this.token) q.set("token", this.token);
    if (this.name) q.set("name", this.name);
    return q.toString();
  }

  /** The subscription tokens of the rooms that have one, for `room_tokens=`. */
  _roomTokens() {
    return [...this.rooms.values()]
      .filter((s) => s.token)
      .map((s) => s.token)
      .join(",");
  }

  /** The cursor `room:seq,...` of the rooms with a known position. */
  _cursor() {
    return [...this.rooms.values()]
      .filter((s) => s.seq !== null)
      .map((s) => `${s.room}:${s.seq}`)
      .join(",");
  }

  /** The token as a header: every request but the SSE stream's (EventSource sends none). */
  _auth() {
    return this.token ? { Authorization: `Bearer ${this.token}` } : {};
  }

  async _post(path, body, signal) {
    // The sid keeps an anonymous publisher the same user as its other requests (and so the
    // same idempotency scope); the token goes in the header, not the URL.
    const res = await fetch(`${this.url}${path}?${this._query({}, { token: false })}`, {
      method: "POST",
      signal,
      headers: { "Content-Type": "application/json", ...this._auth() },
      body: JSON.stringify(body),
    });
    return answer(res);
  }

  async _get(path, signal) {
    const sep = path.includes("?") ? "&" : "?";
    const res = await fetch(`${this.url}${path}${sep}${this._query({}, { token: false })}`, {
      signal,
      cache: "no-store",
      headers: this._auth(),
    });
    return answer(res);
  }

  _dispatch(frame) {
    switch (frame.t) {
      case "event":
        this.rooms.get(frame.room)?._event(frame);
        break;
      case "presence":
        this.rooms.get(frame.room)?._presence(frame);
        break;
      case "status":
        this.emit("status", { user: frame.user, online: frame.online });
        break;
      case "error":
        this.emit("error", { code: frame.code, message: frame.message });
        break;
      case "ack": {
        const sub = this.rooms.get(frame.room);
        if (frame.recovered === false) sub?._unrecovered(frame.seq);
        // A subscription's position before its first event: a reconnect resumes from it.
        else if (sub && sub.seq === null && typeof frame.seq === "number") sub.seq = frame.seq;
        break;
      }
      case "unrecovered":
        for (const room of frame.rooms ?? []) this.rooms.get(room)?._unrecovered(null);
        break;
      case "subscribed": {
        // The app's backend subscribed this user to the room: events follow from `seq`.
        if (this.rooms.has(frame.room)) break;
        const sub = new Subscription(this, frame.room, false);
        sub.seq = frame.seq;
        sub.byServer = true;
        this.rooms.set(frame.room, sub);
        this.emit("subscribed", sub);
        break;
      }
      case "unsubscribed": {
        const sub = this.rooms.get(frame.room);
        if (!sub) break;
        this.rooms.delete(frame.room);
        sub.emit("unsubscribed", { room: frame.room });
        this.emit("unsubscribed", { room: frame.room });
        break;
      }
      case "disconnect":
        this.emit("disconnect", { code: frame.code, reason: frame.reason, reconnect: frame.reconnect });
        // Told not to come back: closed for good (the server ends the connection itself).
        if (frame.reconnect === false) this.close();
        break;
    }
  }
}

/** WebSocket: every op over one socket; resubscribes with `since` on every (re)connect. */
class WsSession {
  constructor(client, url) {
    this.client = client;
    this.opened = false;
    this.ended = false;
    this.url = url;
    this.ws = null;
  }

  start() {
    const wsUrl = this.url.replace(/^http/, "ws") + "/ws?" + this.client._query({});
    this.ws = new WebSocket(wsUrl, "herald.v1.json");
    this.ws.onmessage = (m) => this._message(JSON.parse(m.data));
    this.ws.onclose = () => this._end();
    this.ws.onerror = () => this._end();
  }

  _message(frame) {
    const c = this.client;
    if (frame.t === "welcome") {
      this.opened = true;
      for (const sub of c.rooms.values()) this.subscribe(sub);
      if (c.watched.size) this.watch([...c.watched]);
      c._opened(this);
      return;
    }
    const pending = frame.id !== undefined ? c._pending.get(frame.id) : undefined;
    if (pending && (frame.t === "ack" || frame.t === "error" || (frame.t === "presence" && frame.members))) {
      c._pending.delete(frame.id);
      if (frame.t === "error") pending.reject(codedError(frame.code, frame.message));
      else pending.resolve(frame);
      if (frame.t !== "presence") return;
    }
    c._dispatch(frame);
  }

  send(op) {
    if (this.ws.readyState === WebSocket.OPEN && this.opened) this.ws.send(JSON.stringify(op));
  }

  request(op) {
    const id = this.client._nextId++;
    return new Promise((resolve, reject) => {
      this.client._pending.set(id, { resolve, reject });
      if (!(this.ws.readyState === WebSocket.OPEN && this.opened)) {
        this.client._pending.delete(id);
        reject(new Error("not connected"));
        return;
      }
      this.ws.send(JSON.stringify({ ...op, id }));
    });
  }

  subscribe(sub) {
    const op = { op: "subscribe", room: sub.room, presence: sub.presence };
    if (sub.seq !== null) op.since = sub.seq;
    if (sub.token) op.token = sub.token;
    this.send(op);
  }

  unsubscribe(room) {
    this.send({ op: "unsubscribe", room });
  }

  watch(users) {
    this.send({ op: "watch", users });
  }

  unwatch(users) {
    this.send({ op: "unwatch", users });
  }

  close() {
    this.ended = true;
    this.ws.close(1000);
  }

  _end() {
    if (this.ended) return;
    this.ended = true;
    try {
      this.ws.close();
    } catch (_) {
      /* already closed */
    }
    this.client._lost(this, this.opened);
  }
}

/** SSE for receiving, HTTP POST for publishing. Restarts the stream when rooms change. */
class SseSession {
  constructor(client, url) {
    this.client = client;
    this.url = url;
    this.opened = false;
    this.ended = false;
    this.source = null;
  }

  start() {
    this._restart();
  }

  _restart() {
    this.source?.close();
    const c = this.client;
    const rooms = [...c.rooms.keys()];
    if (rooms.length === 0) {
      // Nothing to receive yet: "open" once a room is added.
      this.source = null;
      if (!this.opened) {
        this.opened = true;
        c._opened(this);
      }
      return;
    }
    const q = { rooms: rooms.join(",") };
    const presence = [...c.rooms.values()].filter((s) => s.presence).map((s) => s.room);
    if (presence.length) q.presence = presence.join(",");
    if (c.watched.size) q.watch = [...c.watched].join(",");
    const cursor = c._cursor();
    if (cursor) q.cursor = cursor;
    const roomTokens = c._roomTokens();
    if (roomTokens) q.room_tokens = roomTokens;
    const source = new EventSource(`${this.url}/sse?${c._query(q)}`);
    this.source = source;
    source.onopen = () => {
      if (!this.opened) {
        this.opened = true;
        c._opened(this);
      }
    };
    source.onmessage = (m) => c._dispatch(JSON.parse(m.data));
    source.addEventListener("presence", (m) => c._dispatch(JSON.parse(m.data)));
    source.addEventListener("status", (m) => c._dispatch(JSON.parse(m.data)));
    source.addEventListener("unrecovered", (m) => c._dispatch(JSON.parse(m.data)));
    // The stream carries (or no longer carries) the room already: no restart.
    source.addEventListener("subscribed", (m) => c._dispatch(JSON.parse(m.data)));
    source.addEventListener("unsubscribed", (m) => c._dispatch(JSON.parse(m.data)));
    source.addEventListener("disconnect", (m) => {
      c._dispatch(JSON.parse(m.data));
      // The stream ends next: reconnect (if the client is still open) as after any loss.
      this._end();
    });
    // The browser's own retry would stay on this gateway with the old URL: fail over instead.
    source.onerror = () => this._end();
  }

  subscribe() {
    this._restart();
  }

  unsubscribe() {
    this._restart();
  }

  watch() {
    this._restart();
  }

  unwatch() {
    this._restart();
  }

  close() {
    this.ended = true;
    this.source?.close();
  }

  _end() {
    if (this.ended) return;
    this.ended = true;
    this.source?.close();
    this.client._lost(this, this.opened);
  }
}

/** Long-poll (`wait` > 0) or ajax polling (`wait` = 0, every `pollInterval`). */
class PollSession {
  constructor(client, url, long) {
    this.client = client;
    this.url = url;
    this.long = long;
    this.opened = false;
    this.ended = false;
    this.abort = null;
    this.again = false;
  }

  start() {
    this._loop();
  }

  async _loop() {
    const c = this.client;
    while (!this.ended) {
      const rooms = [...c.rooms.keys()];
      if (rooms.length === 0) {
        if (!this.opened) {
          this.opened = true;
          c._opened(this);
        }
        await sleep(200);
        continue;
      }
      const q = { rooms: rooms.join(","), wait: this.long ? String(c.longPollWait) : "0" };
      const presence = [...c.rooms.values()].filter((s) => s.presence).map((s) => s.room);
      if (presence.length) q.presence = presence.join(",");
      if (c.watched.size) q.watch = [...c.watched].join(",");
      const cursor = c._cursor();
      if (cursor) q.cursor = cursor;
      const roomTokens = c._roomTokens();
      if (roomTokens) q.room_tokens = roomTokens;
      this.abort = new AbortController();
      this.again = false;
      let res;
      try {
        res = await c._get(`/poll?${new URLSearchParams(q)}`, this.abort.signal);
      } catch (e) {
        if (this.ended) return;
        if (this.again) continue; // aborted to poll again with new parameters
        return this._end();
      }
      if (this.ended) return;
      if (!this.opened) {
        this.opened = true;
        c._opened(this);
      }
      for (const room of res.unrecovered ?? []) c.rooms.get(room)?._unrecovered(null);
      for (const ev of res.events ?? []) c._dispatch(ev);
      // The answer's cursor covers rooms that had no event too (their live tail).
      for (const part of (res.cursor ?? "").split(",").filter(Boolean)) {
        const at = part.lastIndexOf(":");
        const sub = c.rooms.get(part.slice(0, at));
        const seq = Number(part.slice(at + 1));
        if (sub && (sub.seq === null || seq > sub.seq)) sub.seq = seq;
      }
      for (const p of res.presence ?? []) c._dispatch({ t: "presence", ...p });
      for (const s of res.status ?? []) c._dispatch({ t: "status", ...s });
      // Rooms the app's backend gave or took: the next poll asks for them, or not.
      for (const s of res.subscribed ?? []) c._dispatch({ t: "subscribed", ...s });
      for (const room of res.unsubscribed ?? []) c._dispatch({ t: "unsubscribed", room });
      if (res.disconnect) {
        c._dispatch({ t: "disconnect", ...res.disconnect });
        return this._end();
      }
      // `more`: the answer was capped and history continues after its cursor.
      if (!this.long && !res.more) await sleep(c.pollInterval);
    }
  }

  /** Polls again at once with the new rooms or users. */
  _again() {
    this.again = true;
    this.abort?.abort();
  }

  subscribe() {
    this._again();
  }

  unsubscribe() {
    this._again();
  }

  watch() {
    this._again();
  }

  unwatch() {
    this._again();
  }

  close() {
    this.ended = true;
    this.abort?.abort();
  }

  _end() {
    if (this.ended) return;
    this.ended = true;
    this.client._lost(this, this.opened);
  }
}

const SESSIONS = {
  websocket: WsSession,
  sse: SseSession,
  "long-poll": class extends PollSession {
    constructor(client, url) {
      super(client, url, true);
    }
  },
  poll: class extends PollSession {
    constructor(client, url) {
      super(client, url, false);
    }
  },
};

function supported(transport) {
  if (transport === "websocket") return typeof WebSocket === "function";
  if (transport === "sse") return typeof EventSource === "function" && typeof fetch === "function";
  return TRANSPORTS.includes(transport) && typeof fetch === "function";
}

async function answer(res) {
  const body = await res.json().catch(() => ({}));
  if (!res.ok) {
    const err = body.error ?? { code: "unavailable", message: res.statusText };
    throw codedError(err.code, err.message, { status: res.status });
  }
  return body;
}

/** An Error with the protocol's error `code` (and any other `fields`), as every rejection carries. */
function codedError(code, message, fields = {}) {
  return Object.assign(new Error(message), { code, ...fields });
}

/** The tab's id: kept in sessionStorage, so a reload is the same anonymous user. */
function tabId() {
  try {
    const stored = globalThis.sessionStorage?.getItem("herald.sid");
    if (stored) return stored;
    const id = randomId();
    globalThis.sessionStorage?.setItem("herald.sid", id);
    return id;
  } catch {
    return randomId();
  }
}

/** A JWT's `exp` (seconds), or null. */
function tokenExpiry(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const exp = JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "="))).exp;
    return typeof exp === "number" ? exp : null;
  } catch {
    return null;
  }
}

function randomId() {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

const enc = encodeURIComponent;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export const Herald = {
  /**
   * Connects to one or more gateways.
   * @param {string | string[]} urls
   * @param {ConstructorParameters<typeof Client>[1]} [options]
   * @returns {Client}
   */
  connect(urls, options) {
    return new Client(urls, options);
  },
  transports: TRANSPORTS,
};
export default Herald;
