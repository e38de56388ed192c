// groupcast browser client: an ES module with no dependencies.
//
//   import { connect } from "/client.js";
//   const client = connect();                      // same origin, /ws
//   await client.join("room.lobby", (data, msg) => render(data));
//   await client.send("room.lobby", { text: "hi" });
//   await client.leave("room.lobby");
//   client.close();
//
// Promises resolve on the server's ack and reject with an Error whose
// .code is the server's error code. The client reconnects by itself with
// jittered exponential backoff (at once after a planned 1012 close) and
// rejoins its groups. Events: "state" (connecting, connected,
// reconnecting, closed), "welcome", "message" (every delivery), "error".

export function connect(url, options = {}) {
  return new Client(url || defaultURL(), options);
}

function defaultURL() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  return `${proto}//${location.host}/ws`;
}

export class Client extends EventTarget {
  constructor(url, options) {
    super();
    this.url = url;
    this.options = { minDelay: 250, maxDelay: 10000, timeout: 10000, ...options };
    this.groups = new Map(); // group -> handler
    this.pending = new Map(); // id -> {resolve, reject, timer}
    this.nextId = 1;
    this.attempt = 0;
    this.state = "connecting";
    this.welcome = null;
    this.closed = false;
    this.open();
  }

  open() {
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.onmessage = (ev) => {
      for (const line of String(ev.data).split("\n")) {
        if (line) this.handle(JSON.parse(line));
      }
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.failPending("disconnected", "connection closed");
      if (this.closed) return this.setState("closed");
      this.setState("reconnecting");
      const planned = ev.code === 1012 || ev.code === 1001;
      const delay = planned && this.attempt === 0 ? 0 : this.backoff();
      this.attempt++;
      this.timer = setTimeout(() => this.open(), delay);
    };
  }

  backoff() {
    const { minDelay, maxDelay } = this.options;
    const cap = Math.min(maxDelay, minDelay * 2 ** this.attempt);
    return cap / 2 + Math.random() * (cap / 2);
  }

  async handle(msg) {
    switch (msg.type) {
      case "welcome":
        this.welcome = msg;
        this.attempt = 0;
        this.setState("connected");
        this.dispatchEvent(new CustomEvent("welcome", { detail: msg }));
        for (const group of this.groups.keys()) {
          this.request({ type: "join", group }).catch((err) => this.emitError(err));
        }
        break;
      case "message": {
        const handler = msg.group !== undefined ? this.groups.get(msg.group) : this.onDirect;
        if (handler) handler(msg.data, msg);
        this.dispatchEvent(new CustomEvent("message", { detail: msg }));
        break;
      }
      case "ack":
      case "pong":
      case "error": {
        const p = this.pending.get(msg.id);
        if (!p) {
          if (msg.type === "error") this.emitError(Object.assign(new Error(msg.message), { code: msg.code }));
          return;
        }
        this.pending.delete(msg.id);
        clearTimeout(p.timer);
        if (msg.type === "error") p.reject(Object.assign(new Error(msg.message), { code: msg.code }));
        else p.resolve(msg);
        break;
      }
    }
  }

  request(frame) {
    return new Promise((resolve, reject) => {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
        return reject(Object.assign(new Error("not connected"), { code: "disconnected" }));
      }
      const id = this.nextId++;
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(Object.assign(new Error("no answer in time"), { code: "timeout" }));
      }, this.options.timeout);
      this.pending.set(id, { resolve, reject, timer });
      this.ws.send(JSON.stringify({ ...frame, id }));
    });
  }

  // join subscribes to a group; handler(data, msg) gets its messages. The
  // group is rejoined after every reconnect.
  async join(group, handler = () => {}) {
    await this.ready();
    await this.request({ type: "join", group });
    this.groups.set(group, handler);
  }

  async leave(group) {
    this.groups.delete(group);
    await this.ready();
    await this.request({ type: "leave", group });
  }

  async send(group, data) {
    await this.ready();
    await this.request({ type: "send", group, data });
  }

  async ping() {
    await this.ready();
    return this.request({ type: "ping" });
  }

  // onMessage sets the handler of messages sent to this connection alone.
  onMessage(handler) {
    this.onDirect = handler;
  }

  // ready resolves once connected.
  ready() {
    if (this.state === "connected") return Promise.resolve();
    if (this.closed) return Promise.reject(Object.assign(new Error("closed"), { code: "closed" }));
    return new Promise((resolve, reject) => {
      const on = () => {
        if (this.state === "connected") { this.removeEventListener("state", on); resolve(); }
        if (this.state === "closed") { this.removeEventListener("state", on); reject(Object.assign(new Error("closed"), { code: "closed" })); }
      };
      this.addEventListener("state", on);
    });
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close(1000);
    this.setState("closed");
  }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: state }));
  }

  failPending(code, message) {
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(Object.assign(new Error(message), { code }));
      this.pending.delete(id);
    }
  }

  emitError(err) {
    this.dispatchEvent(new CustomEvent("error", { detail: err }));
  }
}
