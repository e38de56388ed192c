// groupcast browser client: an ES module with no dependencies and no build
// step. Types: /client.d.ts.
//
//   import { connect } from "/client.js";
//   const client = connect();                      // same origin, /ws
//   await client.join("room.lobby", (data, msg) => render(data));
//   await client.send("room.lobby", { text: "hi" });
//   await client.leave("room.lobby");
//   client.close();
//
// Requests resolve on the server's ack and reject with a GroupcastError
// whose .code is the server's error code (or "disconnected", "timeout",
// "closed", "token" for failures on this side). The client reconnects by
// itself with jittered exponential backoff (at once after a planned 1012
// or 1001 close, or a 4001 token expiry; after a random wait up to the
// close reason's reconnect_within_ms when it gives one, so that a server's
// drain does not become a reconnect wave), rejoins its groups, pings the
// connection, refreshes its token before it expires (with getToken), and
// reports its state through "state" events: connecting, connected,
// reconnecting, closed. A close with 4003 (the server API disconnected the
// connection or its user, e.g. at logout) is final: the client does not
// reconnect with the same credentials; it goes to "closed" as after
// close(), and its "closed" event carries the server's code and reason.
// Other events: "welcome", "message" (every delivery), "error" (errors no
// request gets).
//
// Transports: a WebSocket on /ws, or, where a proxy refuses the upgrade,
// Server-Sent Events on /sse with the client's frames POSTed to
// /sse/{channel}. The client tries them in the order of the transports
// option, moves on to the next when one closes before it opens or does
// not open within openTimeout, and keeps the one that opened for the
// page's life. Both speak the same frames and end with the same close
// codes, so everything above works alike on either.

// reconnectWithin reads " reconnect_within_ms=<n>" from a close reason:
// the span (ms) over which the server asks clients to spread their
// reconnects; 0 when absent. At most a minute, whatever it says.
function reconnectWithin(reason) {
  const m = /(?:^|\s)reconnect_within_ms=(\d{1,9})(?:\s|$)/.exec(reason || "");
  return m ? Math.min(Number(m[1]), 60000) : 0;
}

/** An error from the server (its code) or from the client itself. */
export class GroupcastError extends Error {
  constructor(code, message) {
    super(message || code);
    this.name = "GroupcastError";
    this.code = code;
  }
}

// terminalCodes are the close codes after which the client does not
// reconnect: 4003, disconnected through the server API.
const terminalCodes = new Set([4003]);

const DEFAULTS = {
  token: undefined, // the connection token (a JWT), sent as ?token=
  getToken: undefined, // async () => token: before every connection, and to refresh it before its exp
  minDelay: 250, // first reconnection wait (ms); doubles up to maxDelay
  maxDelay: 10000,
  timeout: 10000, // how long a request waits for its answer (ms)
  pingInterval: 25000, // ping an idle connection this often (ms)
  transports: ["websocket", "sse"], // tried in this order until one opens
  openTimeout: 3000, // a transport not open by then gives way to the next one (ms)
};

// A POST carries at most postFrames frames (the server refuses a whole
// body of as many as its frames-per-second burst, 40 by default), and a
// frame over aloneBytes goes alone, so that one over the server's frame
// limit is the only one its refusal rejects. maxQueued bounds the frames
// waiting for a POST.
const postFrames = 20;
const aloneBytes = 4 << 10;
const maxQueued = 256;
const utf8 = new TextEncoder();

// working remembers, for the page's life, the transport that opened for
// a server (its /ws URL without the query) and an order of transports:
// later connections with both use it alone.
const working = new Map();

/**
 * Opens a client. url defaults to this page's origin, path /ws; a
 * relative URL ("/ws") or an http(s) one is turned into ws(s).
 */
export function connect(url, options = {}) {
  return new Client(url, options);
}

/** Turns "/ws", "http://h/ws" or "ws://h/ws" into a ws(s) URL. */
function wsURL(url) {
  const base = typeof location !== "undefined" ? location.href : "http://localhost/";
  const u = new URL(url || "/ws", base);
  if (u.protocol === "http:") u.protocol = "ws:";
  if (u.protocol === "https:") u.protocol = "wss:";
  return u;
}

/** The /sse URL beside a /ws URL: http(s), the last path segment "sse". */
function sseURL(url) {
  const u = new URL(url);
  u.protocol = u.protocol === "wss:" ? "https:" : "http:";
  u.pathname = u.pathname.replace(/[^/]*$/, "sse");
  return u;
}

export class Client extends EventTarget {
  constructor(url, options = {}) {
    super();
    this.url = wsURL(url).href;
    this.options = { ...DEFAULTS, ...options };
    const unknown = [...this.options.transports].filter((name) => !Object.keys(TRANSPORTS).includes(name));
    if (unknown.length) {
      throw new TypeError(`transports: unknown ${JSON.stringify(unknown)}; known: ${Object.keys(TRANSPORTS).join(", ")}`);
    }
    this.transports = [...this.options.transports].filter((name) => available(name));
    if (!this.transports.length) {
      throw new TypeError(`transports: none of ${JSON.stringify(this.options.transports)} is available here`);
    }
    /** The state: "connecting", "connected", "reconnecting" or "closed". */
    this.state = "connecting";
    /** The current connection's welcome: {channel, node, region}. */
    this.welcome = null;
    /** The transport of the last connection that opened: "websocket" or "sse". */
    this.transport = null;
    // group -> {handler, offset, epoch, ...}. offset and epoch are copied
    // from deliveries of recoverable groups and sent back as "since" on
    // rejoin, so the server replays what the client missed.
    this.memberships = new Map();
    this.pending = new Map(); // id -> {resolve, reject, timer}
    this.nextId = 1;
    this.attempt = 0; // reconnection attempts since the last success
    this.opens = 0;
    this.closed = false;
    this.conn = null; // the current connection, of either transport
    this.directHandler = null;
    this.onOnline = () => { if (this.state === "reconnecting") this.retryNow(); };
    if (typeof addEventListener === "function") addEventListener("online", this.onOnline);
    this.open();
  }

  /** The groups joined (and rejoined after each reconnection). */
  get groups() {
    return new Set(this.memberships.keys());
  }

  // server names this client's server and order of transports in working.
  get server() {
    const u = new URL(this.url);
    return `${u.origin}${u.pathname} ${this.transports.join()}`;
  }

  async open() {
    clearTimeout(this.timer);
    const attempt = ++this.opens; // a later open() supersedes this one
    let token;
    try {
      token = this.options.getToken ? await this.options.getToken() : this.options.token;
    } catch (err) {
      this.emitError(new GroupcastError("token", `getToken failed: ${err && err.message}`));
      return this.scheduleReconnect(false);
    }
    if (this.closed || attempt !== this.opens) return;
    this.token = token;
    const known = working.get(this.server);
    this.dial(this.transports.includes(known) ? [known] : this.transports, token);
  }

  // dial opens a connection with the first of names; if it ends before it
  // opens, or has not opened within openTimeout, the next one is tried.
  dial(names, token) {
    const [name, ...rest] = names;
    const url = new URL(name === "sse" ? sseURL(this.url) : this.url);
    if (token) url.searchParams.set("token", token);
    const conn = new TRANSPORTS[name](this, url.href);
    this.conn = conn;
    if (!rest.length) return;
    conn.next = () => this.dial(rest, token);
    this.openTimer = setTimeout(() => {
      if (this.conn !== conn || conn.opened) return;
      conn.close();
      this.conn = null;
      conn.next();
    }, this.options.openTimeout);
  }

  // opened is called by a connection that opened: its transport works here.
  opened(conn) {
    if (this.conn !== conn) return;
    clearTimeout(this.openTimer);
    this.transport = conn.name;
    working.set(this.server, conn.name);
  }

  // ended is called by a connection that ended, with the close code and
  // reason the server gave (1006 when there was none) and the spread it
  // asks reconnects to take.
  ended(conn, code, reason, within) {
    if (this.conn !== conn) return;
    clearTimeout(this.openTimer);
    if (!conn.opened && conn.next) {
      this.conn = null;
      return conn.next();
    }
    if (terminalCodes.has(code)) return this.finish(code, reason);
    // Planned closes and an expired token (4001): come back at once, or
    // at a random moment within the span the server asks for.
    const planned = code === 1012 || code === 1001 || code === 4001;
    this.lost(planned, planned ? within : 0);
  }

  // lost handles the end of the current connection; a planned reconnect
  // waits a random time up to within ms.
  lost(planned, within = 0) {
    const conn = this.conn;
    this.conn = null;
    if (conn) conn.close();
    clearTimeout(this.openTimer);
    clearTimeout(this.pingTimer);
    clearTimeout(this.refreshTimer);
    this.failPending("disconnected", "the connection dropped before an answer");
    if (this.closed) return;
    this.setState("reconnecting");
    this.scheduleReconnect(planned, within);
  }

  scheduleReconnect(planned, within = 0) {
    if (this.closed) return;
    const delay = planned ? Math.random() * within : this.backoff();
    this.attempt++;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.open(), delay);
  }

  // retryNow skips the wait, as when the browser comes back online.
  retryNow() {
    if (this.conn || this.closed) return;
    clearTimeout(this.timer);
    this.open();
  }

  backoff() {
    const { minDelay, maxDelay } = this.options;
    const cap = Math.min(maxDelay, minDelay * 2 ** Math.min(this.attempt, 20));
    return cap / 2 + Math.random() * (cap / 2);
  }

  // receive hands on each JSON object of a server frame (one or more,
  // newline-separated) from the current connection.
  receive(conn, text) {
    if (this.conn !== conn) return;
    for (const line of String(text).split("\n")) {
      if (!line) continue;
      let msg;
      try {
        msg = JSON.parse(line);
      } catch {
        this.emitError(new GroupcastError("invalid_json", "undecodable frame from the server"));
        continue;
      }
      if (this.conn !== conn) return; // a frame before this one ended it
      this.handle(conn, msg);
    }
  }

  async handle(conn, msg) {
    switch (msg.type) {
      case "welcome":
        this.welcome = msg;
        this.dispatchEvent(new CustomEvent("welcome", { detail: msg }));
        this.keepalive();
        this.scheduleRefresh(conn);
        await this.rejoin(conn);
        break;
      case "message": {
        let handler = this.directHandler;
        if (msg.group !== undefined) {
          const m = this.memberships.get(msg.group);
          handler = m && m.handler;
          if (m && msg.offset !== undefined) {
            m.offset = msg.offset;
            m.epoch = msg.epoch;
          }
        }
        if (handler) {
          try {
            handler(msg.data, msg);
          } catch (err) {
            console.error(err);
          }
        }
        this.dispatchEvent(new CustomEvent("message", { detail: msg }));
        break;
      }
      case "joined":
      case "left":
      case "gap":
        this.dispatchEvent(new CustomEvent(msg.type, { detail: msg }));
        break;
      case "presence":
        if (msg.id === undefined) {
          this.dispatchEvent(new CustomEvent("presence", { detail: msg })); // a join or leave
          break;
        }
      // falls through: the answer to a presence query
      case "ack":
      case "pong":
      case "reply":
      case "error": {
        const p = this.pending.get(msg.id);
        const err = msg.type === "error" ? new GroupcastError(msg.code, msg.message) : null;
        if (!p) {
          if (err) this.emitError(err);
          return;
        }
        this.pending.delete(msg.id);
        clearTimeout(p.timer);
        if (err) p.reject(err);
        else p.resolve(msg);
        break;
      }
    }
  }

  // rejoin joins every group on a new connection, then reports connected.
  // A group the server refuses for good is dropped (and an "error" event
  // says so); a temporary failure drops the connection to try again.
  async rejoin(conn) {
    const joins = [...this.memberships].map(async ([group, m]) => {
      const frame = { type: "join", group };
      if (m.presence) frame.presence = true;
      if (m.by) frame.by = m.by;
      if (m.offset !== undefined) {
        frame.since = { offset: m.offset, epoch: m.epoch };
      }
      try {
        if (m.token) frame.token = await groupToken(m.token);
      } catch (err) {
        return { group, m, err: new GroupcastError("unavailable", `group token: ${err && err.message}`) };
      }
      return this.request(frame, conn).then(
        (ack) => {
          // The window no longer holds the offset (or history was
          // reset): nothing was replayed, and the group may have missed
          // messages, as a gap frame says.
          if (frame.since && ack && ack.recovered === false) {
            this.dispatchEvent(new CustomEvent("gap", { detail: { type: "gap", group, recovered: false } }));
          }
          return null;
        },
        (err) => ({ group, m, err }),
      );
    });
    let retry = false;
    for (const failed of await Promise.all(joins)) {
      if (!failed) continue;
      const { group, m, err } = failed;
      if (["unavailable", "timeout", "disconnected"].includes(err.code)) {
        retry = true;
        continue;
      }
      if (this.memberships.get(group) === m) this.memberships.delete(group);
      this.emitError(new GroupcastError(err.code, `rejoining ${group}: ${err.message}`));
    }
    if (this.conn !== conn) return;
    if (retry) return this.lost(false);
    this.attempt = 0;
    this.setState("connected");
  }

  // scheduleRefresh hands the server a fresh token from getToken before
  // the connection's token expires: a minute before its exp, or a quarter
  // of its remaining life before for a shorter one. If that fails, the
  // server closes the socket with 4001 at expiry and the client reconnects
  // at once with a new token.
  scheduleRefresh(conn) {
    clearTimeout(this.refreshTimer);
    const at = refreshTime(this.token);
    if (!this.options.getToken || at === null) return;
    this.refreshTimer = setTimeout(async () => {
      if (this.conn !== conn) return;
      try {
        const token = await this.options.getToken();
        await this.request({ type: "refresh", token }, conn);
        this.token = token;
        this.scheduleRefresh(conn);
      } catch (err) {
        this.emitError(new GroupcastError(err.code || "token", `refreshing the token: ${err.message}`));
      }
    }, Math.max(0, at - Date.now()));
  }

  // keepalive pings the connection every pingInterval (keeping proxies
  // from cutting it) and drops it if the pong does not come back in time.
  keepalive() {
    clearTimeout(this.pingTimer);
    const conn = this.conn;
    this.pingTimer = setTimeout(async () => {
      if (this.conn !== conn) return;
      try {
        await this.request({ type: "ping" }, conn);
        this.keepalive();
      } catch (err) {
        if (this.conn === conn && err.code === "timeout") this.lost(false);
      }
    }, this.options.pingInterval);
  }

  request(frame, conn = this.conn) {
    return new Promise((resolve, reject) => {
      if (!conn || !conn.ready || conn !== this.conn) {
        return reject(new GroupcastError("disconnected", "not connected"));
      }
      const id = this.nextId++;
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new GroupcastError("timeout", "no answer in time"));
      }, this.options.timeout);
      this.pending.set(id, { resolve, reject, timer });
      conn.send(JSON.stringify({ ...frame, id }), id);
    });
  }

  /**
   * Joins a group; handler(data, msg) gets its messages, also across
   * reconnections, until leave. Resolves once the server acknowledges it.
   * If the connection drops before the answer, it tries again on the
   * next one. options.token is a per-group token (a string, or a function
   * returning one or a promise of one, called for each join and rejoin)
   * for a group the connection's token does not cover.
   */
  async join(group, handler = () => {}, options = {}) {
    let prev, m;
    for (;;) {
      try {
        await this.ready();
        if (!m) {
          // Registered once connected (so that a rejoin in progress does
          // not send it too) and before the join is sent: membership may
          // go live, and a message arrive, before the ack.
          prev = this.memberships.get(group);
          m = { handler, token: options.token, presence: options.presence, by: options.by,
            offset: prev && prev.offset, epoch: prev && prev.epoch };
          this.memberships.set(group, m);
        }
        const frame = { type: "join", group };
        if (m.token) frame.token = await groupToken(m.token);
        if (m.presence) frame.presence = true;
        if (m.by) frame.by = m.by;
        await this.request(frame);
        return;
      } catch (err) {
        if (err.code === "disconnected" && !this.closed) {
          // The socket is gone; wait for the client to notice before
          // trying on the next one.
          if (this.state === "connected") await this.stateChange();
          continue;
        }
        if (m && this.memberships.get(group) === m) {
          if (prev) this.memberships.set(group, prev);
          else this.memberships.delete(group);
        }
        throw err;
      }
    }
  }

  /**
   * Leaves a group: its handler gets nothing more from now on. Resolves
   * on the server's ack, or at once while disconnected (the group is
   * simply not rejoined).
   */
  async leave(group) {
    this.memberships.delete(group);
    const conn = this.conn;
    if (!conn || !conn.ready) return;
    try {
      await this.request({ type: "leave", group }, conn);
    } catch (err) {
      if (err.code !== "disconnected") throw err;
    }
  }

  /**
   * Publishes data (any JSON value) to a group. Not retried. With
   * { echo: false } every member but this connection receives it.
   */
  async send(group, data, { echo } = {}) {
    await this.ready();
    const frame = { type: "send", group, data };
    if (echo === false) frame.echo = false;
    await this.request(frame);
  }

  /**
   * Who is in a group (presence must be on for it on the server):
   * resolves with { count, members, partial }. Options: limit (0 for the
   * count alone), by: "user" to fold a user's connections.
   */
  async presence(group, { limit, by, countOnly } = {}) {
    await this.ready();
    const frame = { type: "presence", group };
    if (limit !== undefined) frame.limit = limit;
    if (by) frame.by = by;
    if (countOnly) frame.count_only = true;
    const { count, members = [], partial = false } = await this.request(frame);
    return { count, members, partial };
  }

  /**
   * Sends a frame of a type the server's application defines (a Go
   * consumer's Frame) and resolves with the data of its reply.
   */
  async call(type, fields = {}) {
    await this.ready();
    const reply = await this.request({ ...fields, type });
    return reply.data;
  }

  /** A round trip through the server. Resolves with the time it took (ms). */
  async ping() {
    await this.ready();
    const start = performance.now();
    await this.request({ type: "ping" });
    return performance.now() - start;
  }

  /** Sets the handler of messages sent to this connection alone. */
  onDirect(handler) {
    this.directHandler = handler;
  }

  /** Resolves once connected; rejects if the client is closed first. */
  ready() {
    if (this.state === "connected") return Promise.resolve();
    if (this.closed) return Promise.reject(new GroupcastError("closed", "the client is closed"));
    return new Promise((resolve, reject) => {
      const on = () => {
        if (this.state === "connected") {
          this.removeEventListener("state", on);
          resolve();
        } else if (this.state === "closed") {
          this.removeEventListener("state", on);
          reject(new GroupcastError("closed", "the client is closed"));
        }
      };
      this.addEventListener("state", on);
    });
  }

  // stateChange resolves on the next state event.
  stateChange() {
    return new Promise((resolve) => this.addEventListener("state", resolve, { once: true }));
  }

  /** Closes the connection (1000) and stops reconnecting. */
  close() {
    this.finish(1000, "");
  }

  // finish ends the client for good, closed by the page (1000) or by the
  // server with a terminal code: state "closed", then a "closed" event
  // with the code and reason. Only a new connect() connects again.
  finish(code, reason) {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.timer);
    clearTimeout(this.pingTimer);
    clearTimeout(this.refreshTimer);
    if (typeof removeEventListener === "function") removeEventListener("online", this.onOnline);
    clearTimeout(this.openTimer);
    const conn = this.conn;
    this.conn = null;
    if (conn) conn.close(1000);
    this.failPending("closed", code === 1000 ? "the client is closed" : `the server closed the client: ${code} ${reason}`);
    this.setState("closed");
    this.dispatchEvent(new CustomEvent("closed", { detail: { code, reason } }));
  }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: state }));
  }

  failPending(code, message) {
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new GroupcastError(code, message));
      this.pending.delete(id);
    }
  }

  emitError(err) {
    this.dispatchEvent(new CustomEvent("error", { detail: err }));
  }
}

// A connection of one transport. It calls its client's receive with the
// server's frames, opened once it works, and ended (once) when it ends;
// ready says whether send may be called; close ends it without a call.

/** A connection over a WebSocket on /ws. */
class WebSocketConn {
  constructor(client, url) {
    this.name = "websocket";
    this.opened = false;
    const ws = new WebSocket(url);
    this.ws = ws;
    ws.onopen = () => {
      this.opened = true;
      client.opened(this);
    };
    ws.onmessage = (ev) => client.receive(this, ev.data);
    ws.onclose = (ev) => {
      this.close();
      client.ended(this, ev.code, ev.reason, reconnectWithin(ev.reason));
    };
  }

  get ready() {
    return this.ws.readyState === WebSocket.OPEN;
  }

  send(text) {
    this.ws.send(text);
  }

  close(code) {
    const ws = this.ws;
    ws.onopen = ws.onmessage = ws.onclose = null;
    if (ws.readyState < WebSocket.CLOSING) ws.close(code);
  }
}

/**
 * A connection over Server-Sent Events: an EventSource on /sse brings the
 * server's frames, one per event, and POST /sse/{channel}, with the
 * secret of the stream's welcome, takes the client's. Frames sent while
 * a POST is in flight wait and go together, in order, in the next one.
 */
class EventSourceConn {
  constructor(client, url) {
    this.name = "sse";
    this.client = client;
    this.url = url;
    this.opened = false;
    this.done = false;
    this.secret = null;
    this.queue = []; // {text, id, alone} waiting for a POST
    this.posting = false;
    // withCredentials: a cross-site page's cookies go along, as on a
    // WebSocket (the server answers such an Origin with CORS headers).
    const es = new EventSource(url, { withCredentials: true });
    this.es = es;
    es.onmessage = (ev) => (this.opened ? client.receive(this, ev.data) : this.welcome(ev.data));
    // The server's last word: the close code and reason a WebSocket would get.
    es.addEventListener("close", (ev) => {
      let c = {};
      try {
        c = JSON.parse(ev.data) || {};
      } catch {}
      const reason = typeof c.reason === "string" ? c.reason : "";
      const within = Number.isFinite(c.reconnect_within_ms)
        ? Math.min(Math.max(c.reconnect_within_ms, 0), 60000)
        : reconnectWithin(reason);
      this.end(Number.isInteger(c.code) ? c.code : 1006, reason, within);
    });
    // A stream that breaks or cannot open. EventSource would reconnect by
    // itself, without since and past the client's backoff: the client
    // reconnects instead.
    es.onerror = () => this.end(1006, "", 0);
  }

  // welcome takes the stream's first event: the welcome, with the secret
  // that proves this client owns the stream when it POSTs.
  welcome(text) {
    const [first, ...rest] = String(text).split("\n");
    let w;
    try {
      w = JSON.parse(first);
    } catch {}
    if (!w || w.type !== "welcome" || typeof w.secret !== "string" || typeof w.channel !== "string") {
      return this.end(1002, "the stream did not begin with a welcome", 0);
    }
    this.secret = w.secret;
    delete w.secret; // the application sees the same welcome as on a WebSocket
    const u = new URL(this.url);
    u.search = "";
    u.pathname += "/" + encodeURIComponent(w.channel);
    this.postURL = u.href;
    this.opened = true;
    this.client.opened(this);
    if (this.client.conn !== this) return;
    this.client.handle(this, w);
    if (rest.length) this.client.receive(this, rest.join("\n"));
  }

  get ready() {
    return this.opened && !this.done;
  }

  send(text, id) {
    if (this.queue.length >= maxQueued) {
      return this.client.handle(this, { type: "error", id, code: "rate_limited", message: "too many frames waiting to be sent" });
    }
    // A UTF-16 unit takes at most 3 bytes in UTF-8: most frames need no encoding to tell.
    const alone = text.length > aloneBytes || (3 * text.length > aloneBytes && utf8.encode(text).length > aloneBytes);
    this.queue.push({ text, id, alone });
    if (!this.posting) this.post();
  }

  // post sends the queued frames, newline-separated, a POST at a time.
  // A refusal rejects the requests of its frames with the server's error
  // code, as an error frame would. A POST that fails, or finds the stream
  // gone (404), ends the connection: its requests fail "disconnected", as
  // on a WebSocket that drops, and the client reconnects.
  async post() {
    this.posting = true;
    while (this.queue.length && !this.done) {
      let n = 1;
      if (!this.queue[0].alone) {
        while (n < this.queue.length && n < postFrames && !this.queue[n].alone) n++;
      }
      const batch = this.queue.splice(0, n);
      let res;
      try {
        res = await fetch(this.postURL, {
          method: "POST",
          headers: { "Content-Type": "text/plain; charset=utf-8", "X-Groupcast-Secret": this.secret },
          body: batch.map((f) => f.text).join("\n"),
          cache: "no-store",
        });
      } catch {
        this.end(1006, "", 0);
        break;
      }
      if (res.ok || this.done) continue;
      const { code, message } = await apiError(res);
      if (res.status === 404) {
        this.end(1006, "", 0);
        break;
      }
      for (const f of batch) this.client.handle(this, { type: "error", id: f.id, code, message });
    }
    this.posting = false;
  }

  // end closes the stream and tells the client, once.
  end(code, reason, within) {
    if (this.done) return;
    this.close();
    this.client.ended(this, code, reason, within);
  }

  close() {
    this.done = true;
    this.queue = [];
    this.es.onmessage = this.es.onerror = null;
    this.es.close();
  }
}

// apiError reads the server's {"error":{"code","message"}} from a refusal.
async function apiError(res) {
  try {
    const { error } = await res.json();
    if (error && typeof error.code === "string") return { code: error.code, message: error.message || error.code };
  } catch {}
  return { code: res.status === 429 ? "rate_limited" : "unavailable", message: `HTTP ${res.status}` };
}

const TRANSPORTS = { websocket: WebSocketConn, sse: EventSourceConn };

// available says whether this environment has what a transport needs.
function available(name) {
  if (name === "sse") return typeof EventSource === "function" && typeof fetch === "function";
  return typeof WebSocket === "function";
}

// groupToken resolves a per-group token given as a value or a function.
async function groupToken(token) {
  return typeof token === "function" ? await token() : token;
}

// refreshTime returns when to refresh a JWT (ms since the epoch), or null
// for a token without exp (or no JWT at all).
function refreshTime(token) {
  const parts = typeof token === "string" ? token.split(".") : [];
  if (parts.length !== 3) return null;
  try {
    const claims = JSON.parse(atob(parts[1].replace(/-/g, "+").replace(/_/g, "/")));
    if (typeof claims.exp !== "number") return null;
    const exp = claims.exp * 1000;
    return exp - Math.min(60000, (exp - Date.now()) / 4);
  } catch {
    return null;
  }
}
