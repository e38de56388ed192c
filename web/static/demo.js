// The demo page: chat rooms on groupcast groups, using only the public
// client (/client.js). The client is window.groupcast, for the console.
import { connect } from "/client.js";

const $ = (id) => document.getElementById(id);
// With tokens required (JWT_SECRET or JWKS_URL), open the page as /?token=<jwt>.
const token = new URLSearchParams(location.search).get("token") || undefined;
const client = connect(undefined, { token });
window.groupcast = client;

const tab = Math.random().toString(36).slice(2, 10); // this page's id, to mark its own messages
const ADJ = ["amber", "brisk", "calm", "deft", "eager", "fuzzy", "keen", "lucky", "mellow", "nimble", "quiet", "swift"];
const ANIMAL = ["otter", "heron", "lynx", "koala", "panda", "gecko", "finch", "bison", "tapir", "orca", "quokka", "yak"];
const pick = (a) => a[Math.floor(Math.random() * a.length)];
const ROOM = /^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/;

let me = localStorage.getItem("groupcast.name") || `${pick(ADJ)}-${pick(ANIMAL)}`;
$("name").value = me;
$("name").addEventListener("change", () => {
  me = $("name").value.trim().slice(0, 24) || me;
  $("name").value = me;
  localStorage.setItem("groupcast.name", me);
});

// rooms: name -> {items: [{kind, ...}], unread, people: Map(name -> {node, region, at})}
const rooms = new Map();
let active = null;

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function hue(s) {
  let h = 0;
  for (const c of s) h = (h * 31 + c.codePointAt(0)) % 360;
  return h;
}

function time(t) {
  return new Date(t).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

// --- rooms ---------------------------------------------------------------

async function join(name) {
  if (!rooms.has(name)) rooms.set(name, { items: [], unread: 0, people: new Map(), present: null });
  select(name);
  try {
    await client.join(name, (data, msg) => receive(name, data, msg), { presence: true, by: "user" });
    note(name, `joined #${name}`);
    loadPresence(name);
  } catch (err) {
    rooms.delete(name);
    select(rooms.keys().next().value || null);
    showJoinError(err);
    throw err;
  }
}

async function leave(name) {
  rooms.delete(name);
  select(rooms.keys().next().value || null);
  await client.leave(name).catch((err) => note(active, `leave failed: ${err.code}`, "error"));
}

function select(name) {
  active = name;
  const room = rooms.get(name);
  if (room) room.unread = 0;
  if (name && location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);
  $("title").textContent = name ? `#${name}` : "no room";
  $("text").placeholder = name ? `Message #${name}` : "join a room first";
  $("text").disabled = $("leave").disabled = !name;
  $("curl").textContent =
    `curl -X POST -d '{"text":"hello"}' ${location.origin}/api/groups/${name || "room.lobby"}/messages`;
  renderRooms();
  renderMessages();
  renderPeople();
}

function renderRooms() {
  $("rooms").replaceChildren(...[...rooms].map(([name, room]) => {
    const li = el("li", name === active ? "room active" : "room");
    const b = el("button", "room-name", `#${name}`);
    b.onclick = () => select(name);
    li.append(b);
    if (room.unread) li.append(el("span", "badge", String(room.unread)));
    return li;
  }));
}

// --- messages ------------------------------------------------------------

function receive(room, data, msg) {
  const r = rooms.get(room);
  if (!r) return;
  const chat = data && typeof data === "object" && typeof data.text === "string";
  const item = {
    kind: "message",
    at: Date.now(),
    name: chat && typeof data.name === "string" ? data.name.slice(0, 24) : "backend",
    text: chat ? data.text : JSON.stringify(data),
    region: msg.region || (chat && data.region) || "",
    node: chat && typeof data.node === "string" ? data.node : "",
    mine: chat && data.tab === tab,
    raw: !chat,
  };
  add(room, item);
  if (item.name !== "backend") r.people.set(item.name, { node: item.node, region: item.region, at: item.at });
  if (room === active) renderPeople();
}

function note(room, text, cls = "") {
  if (room && rooms.has(room)) add(room, { kind: "note", at: Date.now(), text, cls });
}

function add(room, item) {
  const r = rooms.get(room);
  r.items.push(item);
  if (r.items.length > 500) r.items.shift();
  if (room !== active) {
    if (item.kind === "message") r.unread++;
    renderRooms();
    return;
  }
  const list = $("messages");
  const stick = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  list.append(renderItem(item));
  while (list.children.length > 500) list.firstChild.remove();
  $("empty").hidden = r.items.some((i) => i.kind === "message");
  if (stick || item.mine) list.scrollTop = list.scrollHeight;
}

function renderItem(item) {
  if (item.kind === "note") {
    const li = el("li", `note ${item.cls}`);
    li.append(el("span", "", item.text), el("time", "", time(item.at)));
    return li;
  }
  const li = el("li", item.mine ? "msg mine" : "msg");
  li.dataset.text = item.text;
  const avatar = el("span", "avatar", item.name.slice(0, 1).toUpperCase());
  avatar.style.setProperty("--h", hue(item.name));
  const head = el("div", "head");
  head.append(el("strong", "who", item.name));
  if (item.region) head.append(el("span", "region", item.region));
  if (item.node) head.append(el("span", "node", item.node));
  head.append(el("time", "", time(item.at)));
  const body = el("div", "body");
  body.append(head, el("p", item.raw ? "text raw" : "text", item.text));
  li.append(avatar, body);
  return li;
}

function renderMessages() {
  const r = rooms.get(active);
  $("messages").replaceChildren(...(r ? r.items.map(renderItem) : []));
  $("empty").hidden = !r || r.items.some((i) => i.kind === "message");
  $("messages").scrollTop = $("messages").scrollHeight;
}

// loadPresence asks who is in a room, when the server tracks presence for
// it; otherwise the panel keeps showing who spoke lately.
async function loadPresence(name) {
  const r = rooms.get(name);
  try {
    const { members } = await client.presence(name, { by: "user", limit: 100 });
    r.present = new Map(members.map((m) => [m.user || m.channel, m]));
  } catch {
    r.present = null; // presence is off for this group
  }
  if (name === active) renderPeople();
}

client.addEventListener("presence", (ev) => {
  const { group, event, member } = ev.detail;
  const r = rooms.get(group);
  if (!r || !r.present) return;
  const key = member.user || member.channel;
  if (event === "join") r.present.set(key, member);
  else r.present.delete(key);
  if (group === active) renderPeople();
});

function renderPeople() {
  const r = rooms.get(active);
  if (r && r.present) {
    $("people-title").textContent = `In the room (${r.present.size})`;
    $("people-hint").textContent = "Everyone here now, on every instance and region.";
    $("people").replaceChildren(...[...r.present.values()].slice(0, 50).map((m) => {
      const name = m.user || m.channel;
      const li = el("li");
      const avatar = el("span", "avatar small", name.slice(0, 1).toUpperCase());
      avatar.style.setProperty("--h", hue(name));
      li.append(avatar, el("span", "who", name), el("span", "where", m.region || ""));
      return li;
    }));
    return;
  }
  $("people-title").textContent = "Recently active";
  $("people-hint").textContent = "Who spoke here lately, and from which region and instance.";
  const recent = r ? [...r.people].filter(([, p]) => Date.now() - p.at < 10 * 60e3) : [];
  recent.sort((a, b) => b[1].at - a[1].at);
  $("people").replaceChildren(...recent.slice(0, 12).map(([name, p]) => {
    const li = el("li");
    const avatar = el("span", "avatar small", name.slice(0, 1).toUpperCase());
    avatar.style.setProperty("--h", hue(name));
    li.append(avatar, el("span", "who", name), el("span", "where", [p.region, p.node].filter(Boolean).join(" · ")));
    return li;
  }));
  if (!recent.length) $("people").append(el("li", "hint", "nobody yet"));
}

function showJoinError(err) {
  const form = $("join");
  form.querySelector(".error")?.remove();
  const p = el("p", "error", `${err.code}: ${err.message}`);
  p.setAttribute("role", "alert");
  form.after(p);
  setTimeout(() => p.remove(), 6000);
}

// --- forms ---------------------------------------------------------------

$("join").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const name = $("room").value.trim();
  if (rooms.has(name)) return select(name);
  try {
    await join(name);
    $("room").value = "";
  } catch {}
});

$("leave").addEventListener("click", () => active && leave(active));

$("composer").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const text = $("text").value.trim();
  const room = active;
  if (!text || !room) return;
  $("text").value = "";
  const w = client.welcome || {};
  try {
    await client.send(room, { text, name: me, node: w.node, region: w.region, tab });
  } catch (err) {
    $("text").value = text;
    note(room, `not sent (${err.code}): ${err.message}`, "error");
  }
});

// --- connection state ----------------------------------------------------

let lastNode = null;
client.addEventListener("state", (ev) => {
  const state = ev.detail;
  $("status").className = `status ${state}`;
  $("state").textContent = state;
  if (state === "connected" && client.welcome) {
    const { node, region, channel } = client.welcome;
    $("channel").textContent = channel;
    if (lastNode && lastNode !== node) note(active, `reconnected to instance ${node}${region ? " in " + region : ""}`);
    lastNode = node;
  }
  if (state === "reconnecting") note(active, "connection lost; reconnecting…", "warn");
});
client.addEventListener("error", (ev) => note(active, `${ev.detail.code}: ${ev.detail.message}`, "error"));

// --- live panel ----------------------------------------------------------

const rates = [];
let prev = null;

async function poll() {
  try {
    const res = await fetch("/stats", { cache: "no-store" });
    if (!res.ok) throw new Error(res.statusText);
    const s = await res.json();
    $("node").textContent = s.node;
    $("region").textContent = s.region || "—";
    $("connections").textContent = s.connections;
    $("groups").textContent = s.groups;
    // Rates from the difference between two answers of the same instance.
    if (prev && prev.node === s.node && s.time_ms > prev.time_ms) {
      const rate = ((s.received - prev.received) * 1000) / (s.time_ms - prev.time_ms);
      rates.push(rate);
      if (rates.length > 60) rates.shift();
      $("rate").textContent = rate < 10 ? rate.toFixed(1) : Math.round(rate).toLocaleString();
      spark();
    }
    prev = s;
  } catch {
    $("connections").textContent = $("groups").textContent = $("rate").textContent = "—";
    prev = null;
  }
}

// spark draws the last minute of rates, scaled to the highest.
function spark() {
  const max = Math.max(1, ...rates);
  const step = 120 / Math.max(rates.length - 1, 1);
  const pts = rates.map((r, i) => `${(i * step).toFixed(1)},${(31 - (r / max) * 28).toFixed(1)}`);
  const [area, line] = $("spark").children;
  line.setAttribute("d", pts.length > 1 ? `M${pts.join("L")}` : "");
  area.setAttribute("d", pts.length > 1 ? `M0,32L${pts.join("L")}L120,32Z` : "");
}

async function measure() {
  if (client.state !== "connected") return;
  try {
    $("rtt").textContent = `${(await client.ping()).toFixed(1)} ms`;
  } catch {
    $("rtt").textContent = "—";
  }
}

setInterval(poll, 1000);
setInterval(measure, 5000);
poll();
client.ready().then(measure, () => {});

// --- start ---------------------------------------------------------------

const wanted = decodeURIComponent(location.hash.slice(1));
const first = ROOM.test(wanted) ? wanted : "room.lobby";
join(first).catch(() => {});
window.addEventListener("hashchange", () => {
  const name = decodeURIComponent(location.hash.slice(1));
  if (!ROOM.test(name)) return;
  if (rooms.has(name)) select(name);
  else join(name).catch(() => {});
});
setInterval(renderPeople, 30e3);
