// nexios chat: one WebSocket to /chat/{room}, reconnecting with backoff when it drops.
// The server's messages are described in docs/chat.md.

const $ = (id) => document.getElementById(id);
const SESSION = "nexios-chat"; // {name, room} for this tab: a reload rejoins the room
const FIRST_DELAY = 500; // ms before the first reconnection attempt, doubling ...
const MAX_DELAY = 10000; // ... up to this, with jitter
const TYPING_EVERY = 2000; // ms between two typing notices we send
const TYPING_SHOWN = 3000; // ms a typing notice we got stays on screen

const state = {
  ws: null,
  name: "",
  room: "",
  ready: false, // welcomed: history and members are on screen
  welcomed: false, // at least once since joining this room
  pending: [], // what arrived before the welcome
  version: 0, // of the member list on screen
  seen: new Set(), // message ids on screen
  attempt: 0,
  timer: null,
  typing: new Map(), // name -> timer
  lastTyping: 0,
};

function clientId() {
  // This tab's id, kept across reloads: the server lets it take its name back.
  let id = sessionStorage.getItem("nexios-chat-client");
  if (!id) {
    const bytes = crypto.getRandomValues(new Uint8Array(12));
    id = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
    sessionStorage.setItem("nexios-chat-client", id);
  }
  return id;
}

function show(view) {
  $("join").hidden = view !== "join";
  $("chat").hidden = view !== "chat";
  $("leave").hidden = view !== "chat";
}

function setStatus(text, kind) {
  $("status").textContent = text;
  $("status").dataset.state = kind;
}

function join(name, room) {
  Object.assign(state, { name, room, welcomed: false, version: 0, attempt: 0 });
  state.seen.clear();
  sessionStorage.setItem(SESSION, JSON.stringify({ name, room }));
  localStorage.setItem("nexios-chat-name", name);
  history.replaceState(null, "", `#${room}`);
  $("where").textContent = `#${room}`;
  $("messages").replaceChildren();
  $("members").replaceChildren();
  show("chat");
  connect();
}

function connect() {
  clearTimeout(state.timer);
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const query = new URLSearchParams({ name: state.name, client: clientId() });
  const url = `${scheme}://${location.host}/chat/${encodeURIComponent(state.room)}?${query}`;
  const ws = new WebSocket(url);
  Object.assign(state, { ws, ready: false, pending: [] });
  setStatus(state.attempt ? "reconnecting…" : "connecting…", "connecting");
  ws.onmessage = (event) => ws === state.ws && receive(JSON.parse(event.data));
  ws.onclose = (event) => ws === state.ws && closed(event);
}

function closed(event) {
  Object.assign(state, { ws: null, ready: false });
  enableComposer(false);
  if (event.code === 1008) {
    // Refused (a bad or taken name, a bad room, too many messages): do not retry.
    leave(event.reason || "The server refused this connection.");
    return;
  }
  const delay = Math.min(MAX_DELAY, FIRST_DELAY * 2 ** state.attempt) * (0.5 + Math.random() / 2);
  state.attempt += 1;
  setStatus(`offline, retrying in ${Math.ceil(delay / 1000)} s`, "offline");
  state.timer = setTimeout(connect, delay);
}

function leave(error = "") {
  clearTimeout(state.timer);
  const ws = state.ws;
  Object.assign(state, { ws: null, ready: false });
  if (ws) ws.close(1000);
  sessionStorage.removeItem(SESSION);
  history.replaceState(null, "", location.pathname);
  $("join-error").textContent = error;
  $("where").textContent = "";
  setStatus("not connected", "idle");
  show("join");
}

function send(message) {
  if (state.ready) state.ws.send(JSON.stringify(message));
}

function receive(msg) {
  if (msg.type === "welcome") return welcome(msg);
  if (!state.ready && msg.type !== "error") return void state.pending.push(msg);
  if (msg.type === "message" || msg.type === "announce") addMessage(msg);
  else if (msg.type === "presence") presence(msg);
  else if (msg.type === "typing") typing(msg.name);
  else if (msg.type === "error") showError(msg.error);
}

function welcome(msg) {
  msg.history.forEach(addMessage);
  addNotice(state.welcomed ? "Reconnected." : `You joined #${msg.room} as ${msg.name}.`);
  Object.assign(state, { welcomed: true, ready: true, attempt: 0, version: msg.version });
  renderMembers(msg.members);
  setStatus("connected", "online");
  enableComposer(true);
  const pending = state.pending;
  state.pending = [];
  pending.forEach(receive);
}

function presence(msg) {
  if (msg.version <= state.version) return; // older than the list on screen
  state.version = msg.version;
  msg.joined.filter((n) => n !== state.name).forEach((n) => addNotice(`${n} joined.`));
  msg.left.filter((n) => n !== state.name).forEach((n) => addNotice(`${n} left.`));
  renderMembers(msg.members);
}

// ------------------------------------------------------------------ drawing

function colour(name) {
  let hash = 0;
  for (const c of name) hash = (hash * 31 + c.codePointAt(0)) >>> 0;
  return `hsl(${hash % 360} 55% 45%)`;
}

function avatar(name) {
  const span = document.createElement("span");
  span.className = "avatar";
  span.textContent = [...name][0].toUpperCase();
  span.style.background = colour(name);
  return span;
}

function element(tag, className, text) {
  const el = document.createElement(tag);
  el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

function append(li) {
  const list = $("messages");
  const atEnd = list.scrollTop + list.clientHeight >= list.scrollHeight - 40;
  list.append(li);
  if (atEnd) list.scrollTop = list.scrollHeight;
}

function addMessage(m) {
  if (state.seen.has(m.id)) return; // in the history and live, or sent twice
  state.seen.add(m.id);
  const announce = m.type === "announce";
  const who = announce ? "Announcement" : m.name;
  const li = element("li", announce ? "announce" : m.name === state.name ? "message mine" : "message");
  li.dataset.id = m.id;
  li.append(announce ? element("span", "avatar megaphone", "!") : avatar(m.name));
  const body = element("div", "body");
  const head = element("div", "head");
  const name = element("span", "who", who);
  if (!announce) name.style.color = colour(m.name);
  const when = element("time", "when", new Date(m.ts).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }));
  when.dateTime = new Date(m.ts).toISOString();
  head.append(name, when);
  body.append(head, element("p", "text", m.text));
  li.append(body);
  append(li);
  if (!announce) stopTyping(m.name);
}

function addNotice(text) {
  append(element("li", "notice", text));
}

function renderMembers(names) {
  $("count").textContent = names.length;
  $("members").replaceChildren(
    ...names.map((n) => {
      const li = element("li", n === state.name ? "member me" : "member");
      li.append(avatar(n), element("span", "name", n));
      if (n === state.name) li.append(element("span", "you", "you"));
      return li;
    }),
  );
}

function typing(name) {
  clearTimeout(state.typing.get(name));
  state.typing.set(name, setTimeout(() => stopTyping(name), TYPING_SHOWN));
  renderTyping();
}

function stopTyping(name) {
  clearTimeout(state.typing.get(name));
  if (state.typing.delete(name)) renderTyping();
}

function renderTyping() {
  const names = [...state.typing.keys()];
  $("typing").textContent =
    names.length === 0 ? "" :
    names.length === 1 ? `${names[0]} is typing…` :
    `${names.slice(0, -1).join(", ")} and ${names.at(-1)} are typing…`;
}

let errorTimer = null;
function showError(text) {
  $("error").textContent = text;
  clearTimeout(errorTimer);
  errorTimer = setTimeout(() => ($("error").textContent = ""), 5000);
}

function enableComposer(on) {
  $("text").disabled = !on;
  $("send").disabled = !on;
  if (on) $("text").focus();
}

// ------------------------------------------------------------------ wiring

$("join-form").addEventListener("submit", (event) => {
  event.preventDefault();
  $("join-error").textContent = "";
  join($("name").value.trim(), $("room").value.trim());
});

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("text").value.trim();
  if (!text || !state.ready) return;
  send({ type: "message", text });
  $("text").value = "";
  state.lastTyping = 0;
});

$("text").addEventListener("input", () => {
  const now = Date.now();
  if ($("text").value && now - state.lastTyping > TYPING_EVERY) {
    state.lastTyping = now;
    send({ type: "typing" });
  }
});

$("leave").addEventListener("click", () => leave());

const saved = JSON.parse(sessionStorage.getItem(SESSION) || "null");
$("name").value = saved?.name ?? localStorage.getItem("nexios-chat-name") ?? "";
if (location.hash.length > 1) $("room").value = decodeURIComponent(location.hash.slice(1));
if (saved?.name && saved?.room) join(saved.name, saved.room);
else show("join");
