// Veza web client: plain modern JavaScript, no build step, nothing loaded from outside.
// API: /api/v1 (login, rooms, channels, service tokens); chat: WebSocket /chat/{room}/ws
// (protocol veza.chat.v1, docs/chat-protocol.md); audio: /stream/{channel}/{rendition} and
// /stream/{channel}/now-playing (docs/streaming.md). Listen-along bindings: /web/config.json, and the room's
// `channel` in the chat's welcome. Listen-along (docs/chat-protocol.md, "Listen-along"): the bound channel's track
// changes in the timeline, and reactions at a stream position shown when this player reaches that position.

const $ = (id) => document.getElementById(id);
const REACTIONS = ["👍", "❤️", "😂", "🎵"];
const state = {
  session: JSON.parse(sessionStorage.getItem("veza.session") || "null"),
  config: { rooms: {}, channels: {} },
  rooms: [], channels: [],
  room: null, ws: null, me: null, lastSeq: 0, readSent: 0,
  events: new Map(), // seq -> message record
  reads: new Map(),  // user id -> {name, seq}
  typing: new Map(), // user id -> {name, until}
  reply: null, editing: null,
  channel: null, npTimer: null, reconnectTimer: null, backoff: 500,
  welcomeChannel: null, // the room's bound channel as the chat worker said it
};

// -- HTTP --------------------------------------------------------------------------------------
async function api(method, path, body, auth = true) {
  const headers = { "Content-Type": "application/json" };
  if (auth && state.session) headers.Authorization = `Bearer ${state.session.access_token}`;
  let res = await fetch(`/api/v1${path}`, { method, headers, body: body ? JSON.stringify(body) : undefined });
  if (res.status === 401 && auth && state.session?.refresh_token && await refresh()) {
    headers.Authorization = `Bearer ${state.session.access_token}`;
    res = await fetch(`/api/v1${path}`, { method, headers, body: body ? JSON.stringify(body) : undefined });
  }
  const data = res.status === 204 ? null : await res.json().catch(() => null);
  if (!res.ok) {
    const err = new Error(data?.error?.message || `${res.status} ${res.statusText}`);
    err.status = res.status; err.code = data?.error?.code;
    throw err;
  }
  return data;
}

async function refresh() {
  try {
    const res = await fetch("/api/v1/auth/refresh", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ refresh_token: state.session.refresh_token }) });
    if (!res.ok) throw new Error("refresh failed");
    saveSession({ ...state.session, ...(await res.json()) });
    return true;
  } catch {
    saveSession(null); show();
    return false;
  }
}

function saveSession(s) {
  state.session = s;
  if (s) sessionStorage.setItem("veza.session", JSON.stringify(s)); else sessionStorage.removeItem("veza.session");
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c);
  return node;
}

// -- auth --------------------------------------------------------------------------------------
async function login(email, password) {
  saveSession(await api("POST", "/auth/login", { email, password }, false));
}

$("login-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const f = new FormData(e.target);
  try { await login(f.get("email"), f.get("password")); $("auth-error").textContent = ""; show(); }
  catch (err) { $("auth-error").textContent = `Login failed: ${err.message}`; }
});

$("register-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const f = new FormData(e.target);
  try {
    // 202 "check your email" whether or not the address had an account (nobody learns which): a new account
    // logs in with its password now and is confirmed by the mailed link; an existing one's owner got a login link.
    await api("POST", "/auth/register", { email: f.get("email"), password: f.get("password"),
      display_name: f.get("display_name") }, false);
    try { await login(f.get("email"), f.get("password")); }
    catch (err) {
      if (err.status !== 401) throw err;
      $("auth-error").textContent = "Check your email: this address may already have an account.";
      return;
    }
    $("auth-error").textContent = ""; show();
  } catch (err) { $("auth-error").textContent = `Registration failed: ${err.message}`; }
});

$("logout").addEventListener("click", async () => {
  try { await api("POST", "/auth/logout"); } catch { /* the session ends locally anyway */ }
  closeRoom(); saveSession(null); show();
});

async function show() {
  const logged = !!state.session;
  $("auth").hidden = logged; $("app").hidden = !logged; $("whoami").hidden = !logged;
  if (!logged) return;
  try {
    const me = await api("GET", "/me");
    state.me = me;
    $("me-name").textContent = me.display_name || me.email;
    $("analytics-link").hidden = !me.roles.includes("admin"); // the figures are for platform admins
  } catch (err) { if (err.status === 401) return; }
  await Promise.all([loadConfig(), loadRooms(), loadChannels()]);
  const wanted = decodeURIComponent(location.hash.replace(/^#room=/, ""));
  if (wanted && !state.room && state.rooms.some((r) => r.name === wanted)) openRoom(wanted);
}

// -- directory ---------------------------------------------------------------------------------
async function loadConfig() {
  try { state.config = await (await fetch("/web/config.json")).json(); } catch { /* no bindings */ }
}

// The channel a room listens along with: the bindings of config.json, else what the API says of the room
// (a private room's binding is told to its members only).
function boundChannel(room) {
  return state.config.rooms?.[room]?.channel || state.rooms.find((r) => r.name === room)?.channel || null;
}

// A channel's renditions [{name, codec}]: config.json's, else what the API says of the channel (private ones).
function channelRenditions(name) {
  return state.config.channels?.[name]?.renditions || state.channels.find((c) => c.name === name)?.renditions || null;
}

async function loadRooms() {
  try { state.rooms = (await api("GET", "/rooms")).rooms; } catch { return; }
  const list = $("rooms");
  list.replaceChildren(...state.rooms.map((r) => el("li", {},
    el("button", { type: "button", class: r.name === state.room ? "item active" : "item", "data-room": r.name,
                   onclick: () => openRoom(r.name) },
      el("span", { class: "name" }, r.title || r.name),
      el("span", { class: "count", title: "members connected" },
        r.member_count === null || r.member_count === undefined ? "–" : String(r.member_count))))));
}

async function loadChannels() {
  try { state.channels = (await api("GET", "/channels")).channels; } catch { return; }
  $("channels").replaceChildren(...state.channels.map((c) => el("li", {},
    el("button", { type: "button", class: c.name === state.channel ? "item active" : "item", "data-channel": c.name,
                   onclick: () => selectChannel(c.name, true) },
      el("span", { class: "name" }, c.title || c.name)))));
  if (!state.channel && state.channels.length) selectChannel(state.channels[0].name, false);
}

setInterval(() => { if (state.session) loadRooms(); }, 3000);

// -- player ------------------------------------------------------------------------------------
const audio = $("audio");

function renditionsOf(name) {
  const fromConfig = channelRenditions(name);
  return fromConfig?.length ? fromConfig.map((r) => r.name) : ["mp3-128"];
}

function selectChannel(name, autoplay) {
  if (state.channel !== name) {
    state.channel = name;
    const sel = $("rendition");
    const names = renditionsOf(name);
    const playable = names.filter((n) => {
      const codec = (channelRenditions(name) || []).find((r) => r.name === n)?.codec || "mp3";
      const type = { mp3: "audio/mpeg", opus: 'audio/ogg; codecs="opus"', aac: "audio/aac" }[codec];
      return audio.canPlayType(type) !== "";
    });
    sel.replaceChildren(...(playable.length ? playable : names).map((n) => el("option", { value: n }, n)));
    $("np-channel").textContent = state.channels.find((c) => c.name === name)?.title || name;
    $("play").disabled = false;
    stopAudio();
    pollNowPlaying();
    loadChannels();
  }
  if (autoplay) playAudio();
}

async function streamUrl() {
  const channel = state.channels.find((c) => c.name === state.channel);
  let url = `/stream/${encodeURIComponent(state.channel)}/${encodeURIComponent($("rendition").value)}`;
  if (channel?.visibility === "private") {
    const t = await api("POST", "/auth/service-token", { audience: "veza-stream" });
    url += `?token=${encodeURIComponent(t.token)}`;
  }
  return url;
}

// Stream position (docs/streaming.md, "Stream position"): the progressive response says the stream time of its
// first sample (X-Veza-Stream-Time). An <audio src> cannot read headers, so where Media Source Extensions take the
// rendition's type the player fetches the stream itself and appends it; currentTime then counts from that first
// sample, and position = header + currentTime. Elsewhere it plays by URL, with no position.
const player = { abort: null, streamStart: null, channel: null };
const TYPES = { mp3: "audio/mpeg", opus: 'audio/ogg; codecs="opus"', aac: "audio/aac" };

function renditionType(channel, rendition) {
  const codec = (channelRenditions(channel) || []).find((r) => r.name === rendition)?.codec || "mp3";
  return TYPES[codec];
}

function position() {
  return player.streamStart === null || !audio.src ? null : player.streamStart + audio.currentTime;
}

function playWithPosition(url, type) {
  const media = new MediaSource();
  const abort = new AbortController();
  Object.assign(player, { abort, streamStart: null, channel: state.channel });
  audio.src = URL.createObjectURL(media);
  media.addEventListener("sourceopen", async () => {
    URL.revokeObjectURL(audio.src);
    const buffer = media.addSourceBuffer(type);
    buffer.mode = "sequence";
    const queue = [];
    const feed = () => {
      if (buffer.updating || media.readyState !== "open") return;
      const played = buffer.buffered.length ? audio.currentTime - buffer.buffered.start(0) : 0;
      if (played > 60) buffer.remove(0, audio.currentTime - 30); // keep the buffer bounded
      else if (queue.length) buffer.appendBuffer(queue.shift());
    };
    buffer.addEventListener("updateend", feed);
    try {
      const res = await fetch(url, { signal: abort.signal });
      if (!res.ok) throw new Error(`stream: ${res.status}`);
      const start = res.headers.get("X-Veza-Stream-Time");
      player.streamStart = start ? Number(start) : null;
      const reader = res.body.getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        queue.push(value);
        feed();
      }
    } catch (err) { if (!abort.signal.aborted) console.warn("stream ended", err); }
  }, { once: true });
}

async function playAudio() {
  if (!state.channel) return;
  stopAudio();
  const url = await streamUrl();
  const type = renditionType(state.channel, $("rendition").value);
  if (window.MediaSource?.isTypeSupported(type)) playWithPosition(url, type);
  else { audio.src = url; Object.assign(player, { channel: state.channel, streamStart: null }); }
  $("play").textContent = "Stop";
  try { await audio.play(); } catch (err) { $("play").textContent = "Play"; console.warn("play refused", err); }
  renderReactButtons();
}

function stopAudio() {
  player.abort?.abort();
  Object.assign(player, { abort: null, streamStart: null, channel: null });
  audio.pause(); audio.removeAttribute("src"); audio.load();
  $("play").textContent = "Play";
  renderReactButtons();
}

$("play").addEventListener("click", () => (audio.paused ? playAudio() : stopAudio()));
$("rendition").addEventListener("change", () => { if (!audio.paused) playAudio(); });

async function nowPlaying(channel) {
  const res = await fetch(`/stream/${encodeURIComponent(channel)}/now-playing`);
  if (!res.ok) throw new Error(`now-playing: ${res.status}`);
  return res.json();
}

async function pollNowPlaying() {
  clearTimeout(state.npTimer);
  const tasks = [];
  if (state.channel) {
    tasks.push(nowPlaying(state.channel).then((np) => { $("np-title").textContent = np.title || "—"; })
      .catch(() => { $("np-title").textContent = "(channel unavailable)"; }));
  }
  const bound = state.room && boundChannel(state.room);
  if (bound) {
    tasks.push(nowPlaying(bound).then((np) => { $("la-title").textContent = np.title || "—"; })
      .catch(() => { $("la-title").textContent = "(unavailable)"; }));
  }
  await Promise.allSettled(tasks);
  state.npTimer = setTimeout(pollNowPlaying, 2000);
}

$("la-play").addEventListener("click", () => {
  const bound = roomChannel();
  if (bound) selectChannel(bound, true);
});

// -- listen-along: reactions at a stream position ----------------------------------------------
function roomChannel() { return (state.room && (boundChannel(state.room) || state.welcomeChannel)) || null; }

// The position of what this player plays of the room's channel, or null (not listening to it, or no position).
function listeningPosition() {
  const bound = roomChannel();
  return bound && player.channel === bound ? position() : null;
}

const pendingReactions = [];
// What this page sent and showed, and where its player is: for tests and debugging.
window.vezaReactions = { sent: [], shown: [] };
window.vezaPosition = () => listeningPosition();

function renderReactButtons() {
  const can = listeningPosition() !== null;
  for (const b of document.querySelectorAll("#la-react button")) b.disabled = !can;
}

$("la-react").replaceChildren(...REACTIONS.map((emoji) => el("button", {
  type: "button", class: "react-at", "data-emoji": emoji, title: `React ${emoji} here in the music`, disabled: true,
  onclick: () => {
    const at = listeningPosition();
    if (at !== null && send({ type: "react_at", emoji, position: at })) {
      window.vezaReactions.sent.push({ emoji, position: at, at: Date.now() / 1000 });
    }
  } }, emoji)));

function showDueReactions() {
  const now = listeningPosition();
  for (let i = 0; i < pendingReactions.length; i++) {
    const r = pendingReactions[i];
    // Not listening: nothing to wait for. Listening: when playback reaches the position; long past it: dropped.
    if (now !== null && r.position > now) continue;
    pendingReactions.splice(i--, 1);
    if (now !== null && now - r.position > 30) continue;
    window.vezaReactions.shown.push({ emoji: r.emoji, user: r.user.id, position: r.position, shownAt: Date.now() / 1000,
      playing: now });
    const item = el("li", { class: "reaction-at", "data-emoji": r.emoji, "data-user": r.user.id },
      `${r.emoji} ${r.user.name || r.user.id}`);
    $("la-reactions").prepend(item);
    setTimeout(() => item.remove(), 8000);
  }
  renderReactButtons();
}
setInterval(showDueReactions, 100);

// -- chat --------------------------------------------------------------------------------------
function closeRoom() {
  clearTimeout(state.reconnectTimer);
  if (state.ws) { state.ws.onclose = null; state.ws.close(1000); state.ws = null; }
}

async function openRoom(name) {
  closeRoom();
  Object.assign(state, { room: name, lastSeq: 0, readSent: 0, reply: null, editing: null, backoff: 500 });
  state.events.clear(); state.reads.clear(); state.typing.clear();
  history.replaceState(null, "", `#room=${encodeURIComponent(name)}`);
  const room = state.rooms.find((r) => r.name === name);
  $("welcome").hidden = true; $("room").hidden = false;
  $("room-title").textContent = room?.title || name;
  $("messages").replaceChildren();
  setComposerContext(null);
  state.welcomeChannel = null;
  pendingReactions.length = 0;
  $("la-reactions").replaceChildren();
  const bound = boundChannel(name);
  $("listen-along").hidden = !bound;
  if (bound) {
    $("la-channel").textContent = state.config.channels?.[bound]?.title || bound;
    pollNowPlaying();
  }
  loadRooms();
  connect();
}

async function connect() {
  const room = state.room;
  setStatus("connecting…");
  let token;
  try { token = (await api("POST", "/auth/service-token", { audience: "veza-chat" })).token; }
  catch (err) { setStatus(`cannot get a chat token: ${err.message}`); return retry(); }
  if (room !== state.room) return;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const after = state.lastSeq ? `?after=${state.lastSeq}` : "";
  const ws = new WebSocket(`${scheme}://${location.host}/chat/${encodeURIComponent(room)}/ws${after}`,
    ["veza.chat.v1", `bearer.${token}`]);
  state.ws = ws;
  ws.onmessage = (m) => { try { onFrame(JSON.parse(m.data)); } catch (err) { console.error(err); } };
  ws.onclose = (e) => {
    if (state.ws !== ws) return;
    state.ws = null;
    // Closes that reconnecting cannot undo (docs/chat-protocol.md, close codes): say why and stop.
    const final = { 4001: "kicked", 4003: "banned from this room", 4005: "signed out: sign in again",
                    4006: "you are no longer a member of this room" }[e.code];
    if (final) { setStatus(final); return; }
    setStatus("disconnected, reconnecting…");
    retry();
  };
}

function retry() {
  clearTimeout(state.reconnectTimer);
  state.reconnectTimer = setTimeout(connect, state.backoff);
  state.backoff = Math.min(state.backoff * 2, 10000);
}

function send(frame) {
  if (state.ws?.readyState === WebSocket.OPEN) { state.ws.send(JSON.stringify(frame)); return true; }
  return false;
}

function setStatus(text) { $("room-status").textContent = text; }

function onFrame(f) {
  switch (f.type) {
    case "welcome":
      state.backoff = 500;
      state.me = { ...(state.me || {}), id: f.user.id, chatName: f.user.name, role: f.user.role };
      setStatus(`connected as ${f.user.name}`);
      $("room").dataset.connected = "true";
      if (f.room.channel) {
        state.welcomeChannel = f.room.channel;
        if ($("listen-along").hidden) {
          $("listen-along").hidden = false;
          $("la-channel").textContent = state.config.channels?.[f.room.channel]?.title || f.room.channel;
        }
      }
      if (f.now_playing) $("la-title").textContent = f.now_playing.title;
      if (!state.lastSeq) send({ type: "history", ref: "initial", limit: 50 });
      send({ type: "presence", ref: "members" });
      break;
    case "history": for (const e of f.events) applyEvent(e); markRead(); break;
    case "event": applyEvent(f); markRead(); break;
    case "resumed": break;
    case "ack": break;
    case "typing":
      if (f.user.id !== state.me?.id) {
        if (f.active) state.typing.set(f.user.id, { name: f.user.name || f.user.id, until: Date.now() + 5000 });
        else state.typing.delete(f.user.id);
        renderTyping();
      }
      break;
    case "read":
      state.reads.set(f.user.id, { name: f.user.name || f.user.id, seq: f.seq });
      renderReads();
      break;
    case "presence":
      if (f.op === "list") $("room-members").textContent = `${f.users.length} here`;
      else send({ type: "presence", ref: "members" });
      break;
    case "reaction_at":
      pendingReactions.push(f);
      showDueReactions();
      break;
    case "error":
      setStatus(`${f.code}: ${f.message}`);
      break;
    default: break;
  }
}

function applyEvent(e) {
  state.lastSeq = Math.max(state.lastSeq, e.seq);
  if (e.kind === "nowplaying") { renderTrackChange(e); return; }
  if (e.kind === "message") {
    state.events.set(e.seq, { ...e, reactions: e.reactions || {} });
    renderMessage(e.seq);
    return;
  }
  const target = state.events.get(e.target);
  if (!target) return;
  if (e.kind === "edit") { target.text = e.text; target.edited_ts = e.ts; }
  else if (e.kind === "delete") { target.deleted = true; target.text = ""; }
  else if (e.kind === "reaction_add" || e.kind === "reaction_remove") {
    const users = new Set(target.reactions[e.emoji] || []);
    if (e.kind === "reaction_add") users.add(e.author.id); else users.delete(e.author.id);
    if (users.size) target.reactions[e.emoji] = [...users]; else delete target.reactions[e.emoji];
  }
  renderMessage(target.seq);
}

function renderMessage(seq) {
  const m = state.events.get(seq);
  const mine = m.author.id === state.me?.id;
  const time = new Date(m.ts).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  const replyTo = m.reply_to ? state.events.get(m.reply_to) : null;
  const node = el("li", { class: `msg${mine ? " mine" : ""}${m.deleted ? " deleted" : ""}`, "data-seq": String(seq) },
    replyTo ? el("div", { class: "quote" }, `↪ ${replyTo.author.name || "someone"}: ${replyTo.deleted ? "(deleted)" : replyTo.text}`) : null,
    el("div", { class: "meta" }, el("span", { class: "author" }, m.author.name || m.author.id), el("time", {}, time),
      m.edited_ts && !m.deleted ? el("span", { class: "edited" }, "(edited)") : null),
    el("div", { class: "text" }, m.deleted ? "message deleted" : m.text),
    m.deleted ? null : el("div", { class: "reactions" },
      ...Object.entries(m.reactions).map(([emoji, users]) => el("button", {
        type: "button", class: `reaction${users.includes(state.me?.id) ? " on" : ""}`, "data-emoji": emoji,
        onclick: () => react(seq, emoji) }, `${emoji} ${users.length}`))),
    m.deleted ? null : el("div", { class: "actions" },
      ...REACTIONS.map((emoji) => el("button", { type: "button", class: "link add-reaction", title: `React ${emoji}`,
        "data-emoji": emoji, onclick: () => react(seq, emoji) }, emoji)),
      el("button", { type: "button", class: "link reply", onclick: () => setComposerContext({ reply: seq }) }, "Reply"),
      mine ? el("button", { type: "button", class: "link edit", onclick: () => setComposerContext({ edit: seq }) }, "Edit") : null,
      mine || ["owner", "moderator", "admin"].includes(state.me?.role)
        ? el("button", { type: "button", class: "link delete", onclick: () => send({ type: "delete", cid: cid(), seq }) }, "Delete")
        : null),
    el("div", { class: "read-by" }));
  const list = $("messages");
  const existing = list.querySelector(`li[data-seq="${seq}"]`);
  if (existing) { existing.replaceWith(node); renderReads(); return; }
  const stick = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  const after = [...list.children].find((li) => Number(li.dataset.seq) > seq);
  list.insertBefore(node, after || null);
  renderReads();
  if (stick) list.scrollTop = list.scrollHeight;
}

// A track change of the bound channel: a line of the timeline, in seq order with the messages.
function renderTrackChange(e) {
  const list = $("messages");
  if (list.querySelector(`li[data-seq="${e.seq}"]`)) return;
  const time = new Date(e.ts).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  const node = el("li", { class: "system nowplaying", "data-seq": String(e.seq) },
    el("span", { class: "np-icon", "aria-hidden": "true" }, "♪"), " Now playing: ",
    el("span", { class: "np-title" }, e.now_playing?.title || e.text || "—"), el("time", {}, time),
    el("div", { class: "read-by" }));
  const stick = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  const after = [...list.children].find((li) => Number(li.dataset.seq) > e.seq);
  list.insertBefore(node, after || null);
  if (!after) $("la-title").textContent = e.now_playing?.title || e.text || "—";
  if (stick) list.scrollTop = list.scrollHeight;
}

function react(seq, emoji) {
  const m = state.events.get(seq);
  const on = (m.reactions[emoji] || []).includes(state.me?.id);
  send({ type: "react", cid: cid(), seq, emoji, op: on ? "remove" : "add" });
}

function renderReads() {
  const bySeq = new Map();
  for (const [id, r] of state.reads) {
    if (id === state.me?.id) continue;
    const seqs = [...state.events.keys()].filter((s) => s <= r.seq);
    if (!seqs.length) continue;
    const at = Math.max(...seqs);
    bySeq.set(at, [...(bySeq.get(at) || []), r.name]);
  }
  for (const li of $("messages").children) {
    const names = bySeq.get(Number(li.dataset.seq));
    li.querySelector(".read-by").textContent = names ? `Seen by ${names.join(", ")}` : "";
  }
}

function markRead() {
  if (document.visibilityState !== "visible" || state.lastSeq <= state.readSent) return;
  if (send({ type: "read", seq: state.lastSeq })) state.readSent = state.lastSeq;
}
document.addEventListener("visibilitychange", markRead);

function renderTyping() {
  const now = Date.now();
  for (const [id, t] of state.typing) if (t.until < now) state.typing.delete(id);
  const names = [...state.typing.values()].map((t) => t.name);
  $("typing").textContent = names.length ? `${names.join(", ")} ${names.length > 1 ? "are" : "is"} typing…` : "";
}
setInterval(renderTyping, 1000);

// crypto.randomUUID exists only in secure contexts (HTTPS, localhost); a platform served over plain
// HTTP on its own host name has getRandomValues only.
function cid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}

function setComposerContext(ctx) {
  state.reply = ctx?.reply ?? null;
  state.editing = ctx?.edit ?? null;
  const box = $("composer-context");
  if (!ctx) { box.hidden = true; return; }
  const m = state.events.get(ctx.reply ?? ctx.edit);
  box.hidden = false;
  $("composer-context-text").textContent = ctx.edit ? "Editing your message" : `Replying to ${m?.author.name}: ${m?.text?.slice(0, 60)}`;
  if (ctx.edit) $("text").value = m?.text || "";
  $("text").focus();
}
$("composer-cancel").addEventListener("click", () => { setComposerContext(null); $("text").value = ""; });

let typingSent = 0;
$("text").addEventListener("input", () => {
  if (Date.now() - typingSent > 2500) { typingSent = Date.now(); send({ type: "typing", active: true }); }
});

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("text").value.trim();
  if (!text) return;
  let ok;
  if (state.editing) ok = send({ type: "edit", cid: cid(), seq: state.editing, text });
  else ok = send({ type: "send", cid: cid(), text, ...(state.reply ? { reply_to: state.reply } : {}) });
  if (!ok) { setStatus("not connected: message not sent"); return; }
  typingSent = 0;
  send({ type: "typing", active: false });
  $("text").value = "";
  setComposerContext(null);
});

show();
