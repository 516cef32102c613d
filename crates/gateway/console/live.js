// The console's one websocket connection to the event feed (docs/websocket.md). The session
// cookie cannot authenticate a websocket (and a session from an API key has no JWT), so each
// connection starts with a one-time ticket from POST /api/v1/auth/ws-ticket, sent as the first
// message; a fresh ticket renews the connection before it expires (five minutes). Subscriptions
// survive reconnects: each resumes from the last position it saw, so no event is lost or doubled.

import { api } from "./api.js";

const subs = new Map(); // id -> {filter, onEvent, position}
const watchers = new Set(); // status callbacks
let socket = null;
let status = { state: "closed", detail: "" };
let renewal = null;
let retry = 0;
let retryTimer = null;
let wanted = false;
let opening = false;
let nextId = 1;

function setStatus(state, detail = "") {
  status = { state, detail };
  for (const w of watchers) w(status);
}

/** Calls `onStatus({state, detail})` now and on every change; answers an unwatch function. */
export function watchStatus(onStatus) {
  watchers.add(onStatus);
  onStatus(status);
  return () => watchers.delete(onStatus);
}

function send(frame) {
  if (socket?.readyState === WebSocket.OPEN) socket.send(JSON.stringify(frame));
}

function subscribeFrame(id, sub) {
  const frame = { type: "subscribe", id, filter: sub.filter };
  if (sub.position !== null) frame.from = sub.position;
  return frame;
}

// Quiet on 401: a ticket request still in flight when the person signs out must not announce
// an ended session; the page's own calls do that when the session really ended.
async function ticket() {
  return api("POST", "/api/v1/auth/ws-ticket", { quiet401: true });
}

function endpoint(url) {
  if (url) return url;
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
}

/** Renews the connection with a fresh ticket a minute before it would expire. */
function scheduleRenewal(expiresAt) {
  clearTimeout(renewal);
  if (!expiresAt) return;
  const wait = Math.max(5000, expiresAt * 1000 - Date.now() - 60000);
  renewal = setTimeout(async () => {
    try {
      send({ type: "auth", ticket: (await ticket()).ticket });
    } catch {
      // Signed out or the gateway is away: the connection ends at its expiry.
    }
  }, wait);
}

async function open() {
  if (socket || opening || !wanted) return;
  opening = true;
  setStatus("connecting");
  let issued;
  try {
    issued = await ticket();
  } catch (e) {
    setStatus("closed", e.title || String(e));
    return reconnectLater();
  } finally {
    opening = false;
  }
  if (!wanted) return;
  const ws = new WebSocket(endpoint(issued.url), ["cim.v1"]);
  socket = ws;
  ws.onopen = () => ws.send(JSON.stringify({ type: "auth", ticket: issued.ticket }));
  ws.onmessage = (m) => {
    const f = JSON.parse(m.data);
    if (f.type === "welcome") {
      retry = 0;
      setStatus("live");
      scheduleRenewal(f.expires_at);
      for (const [id, sub] of subs) send(subscribeFrame(id, sub));
    } else if (f.type === "reauthenticated") {
      scheduleRenewal(f.expires_at);
    } else if (f.type === "subscribed") {
      const sub = subs.get(f.id);
      if (sub && sub.position === null) sub.position = f.position;
      sub?.onSubscribed?.(f.position);
    } else if (f.type === "event") {
      const sub = subs.get(f.id);
      if (!sub || (sub.position !== null && f.position <= sub.position)) return;
      sub.position = f.position;
      sub.onEvent(f.event, f.position);
    } else if (f.type === "error") {
      const sub = f.id && subs.get(f.id);
      if (sub) sub.onError?.(f);
      else setStatus(status.state, `${f.code}: ${f.message}`);
    }
  };
  ws.onclose = (e) => {
    if (socket === ws) socket = null;
    clearTimeout(renewal);
    setStatus("closed", e.reason || `closed (${e.code})`);
    reconnectLater();
  };
}

function reconnectLater() {
  clearTimeout(retryTimer);
  if (!wanted || subs.size === 0) return;
  retry = Math.min(retry + 1, 6);
  retryTimer = setTimeout(open, 500 * 2 ** retry);
}

/**
 * Subscribes to events matching `filter` ({domain, aggregate_type?, aggregate_id?,
 * event_types?}), live from now; `onEvent(envelope, position)` for each, `onSubscribed(position)`
 * when the server confirms (again after a reconnect), `onError(frame)` when it refuses. Answers
 * an unsubscribe function.
 */
export function subscribe(filter, onEvent, { onError, onSubscribed } = {}) {
  const id = `s${nextId++}`;
  const sub = { filter, onEvent, onError, onSubscribed, position: null };
  subs.set(id, sub);
  wanted = true;
  if (socket?.readyState === WebSocket.OPEN && status.state === "live") send(subscribeFrame(id, sub));
  else open();
  return () => {
    if (subs.delete(id)) send({ type: "unsubscribe", id });
    // Moving from one page to the next unsubscribes and subscribes again: keep the connection
    // for a moment rather than opening a new one.
    if (subs.size === 0) setTimeout(() => subs.size === 0 && disconnect(), 3000);
  };
}

/** Closes the connection (signing out, or no subscription left). */
export function disconnect() {
  wanted = false;
  subs.clear();
  clearTimeout(renewal);
  clearTimeout(retryTimer);
  retry = 0;
  if (socket) {
    const ws = socket;
    socket = null;
    ws.onclose = null;
    ws.close(1000);
  }
  setStatus("closed", "");
}
