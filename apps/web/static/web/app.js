// The chat page: the room list, one open room, and the socket that keeps them live.
//
// Everything the server sends is inserted with textContent (see `el`), never as HTML.

import { Api, ApiError } from "./api.js";
import { filesOf, PendingFiles, renderFiles, renderPending, ThumbnailWatch } from "./attachments.js";
import { ChatSocket, ServerError } from "./socket.js";
import { RoomState, normalizeMessage } from "./timeline.js";

const config = JSON.parse(document.getElementById("chat-config").textContent);
const me = { id: config.user.id, username: config.user.username };
const api = new Api(config.apiRoot);
const rooms = new Map(); // room id -> RoomState (rooms the user belongs to)
const presence = new Map(); // user id -> "online" | "away" | "offline"
const blocked = new Set(); // ids of the users I block: their messages are hidden
const notes = new Map(); // notification id -> notification (PROTOCOL §9), unread ones at least
let notesComplete = false; // every unread notification is in `notes` (else counts come from REST)
let userMenu = null; // {key, user}: the open menu on an author's name
const REACTIONS = ["👍", "❤️", "😂", "🎉"];
const PAGE = 50;
let current = null; // the open RoomState
let replyTo = null; // message being replied to
let editing = null; // key of the message being edited
// The edit form's text as typed: a message redrawn while it is edited (a reaction, a reply,
// a thread's unread count) gets a new form, which starts from this, not from the old body.
// Read only while `editing` is set; the Edit button, the one way to set it, clears it.
let editDraft = null;
let reporting = null; // key of the message being reported
let reportDraft = { category: "spam", reason: "" }; // the report form as filled (kept on a redraw)
let typingSentAt = 0;
let typingStop = null;

const $ = (id) => document.getElementById(id);

/** Build an element; strings become text nodes (never markup). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function showError(where, error) {
  const text = error ? (error.message || String(error)) : "";
  $(where).textContent = text;
  if (text) setTimeout(() => { if ($(where).textContent === text) $(where).textContent = ""; }, 8000);
}

function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

// --- Socket -------------------------------------------------------------------------------

const wsUrl = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + config.wsPath;
const socket = new ChatSocket(wsUrl, {
  onOpen: () => {
    for (const state of rooms.values()) subscribe(state);
    refreshPresence();
    loadNotes(); // what was notified while the socket was down
  },
  onEvent: handleEvent,
  onState: (status, delay) => {
    const text = {
      connecting: "Connecting…",
      online: "Connected",
      reconnecting: `Disconnected, reconnecting in ${Math.ceil((delay || 0) / 1000)} s…`,
      "logged-out": "Logged out: reload the page to log in again.",
    }[status];
    $("connection").textContent = text;
    document.body.dataset.connection = status;
    if (status !== "online") for (const state of rooms.values()) state.live = false;
    updateComposer();
  },
});

function track(info) {
  let state = rooms.get(info.id);
  if (state) {
    Object.assign(state.info, info);
    return state;
  }
  state = new RoomState(info, me);
  state.subscribedOnce = new Promise((resolve) => { state.markSubscribed = resolve; });
  rooms.set(state.id, state);
  if (info.kind === "direct") findPartner(state);
  if (socket.ready) subscribe(state);
  return state;
}

function forget(state, reason) {
  rooms.delete(state.id);
  if (socket.ready) socket.send({ type: "unsubscribe", room: state.id });
  if (current === state) {
    current = null;
    renderRoom();
    if (reason) showError("sidebar-error", new Error(reason));
  }
  renderRoomList();
}

/** Subscribe from the room's cursor; page whatever the replay could not carry. */
async function subscribe(state) {
  const frame = { type: "subscribe", room: state.id };
  if (state.cursor !== null) frame.since = state.cursor;
  try {
    const reply = await socket.request(frame, { timeout: 20000 });
    if (state.cursor === null) state.cursor = reply.last_seq;
    state.skipPurged(reply.history_start); // older events were removed by retention
    // Truncated: the replay stopped at last_seq; the room is at `head` (pages fill the rest).
    const target = Math.max(reply.last_seq ?? 0, reply.head ?? 0);
    if (reply.truncated || state.cursor < target || state.hasGap) await fillGap(state, target);
    state.live = true;
    state.markSubscribed();
  } catch (error) {
    if (error instanceof ServerError && (error.code === "not_found" || error.code === "forbidden")) {
      forget(state, lostRoomReason(state, "forbidden"));
    }
    return;
  }
  scheduleRender(state);
}

/** Fetch GET /api/rooms/{id}/events/ until the cursor reaches `target` and no hole is left. */
function fillGap(state, target = null) {
  if (state.filling) return state.filling;
  state.filling = (async () => {
    try {
      for (let pages = 0; pages < 1000; pages++) {
        const goal = Math.max(target ?? 0, (state.bufferedTop ?? 0) - 1);
        if (state.cursor >= goal && !state.hasGap) break;
        const page = await api.events(state.id, state.cursor);
        state.skipPurged(page.history_start);
        for (const event of page.results) state.offer(event);
        if (!page.results.length) break;
      }
    } catch (error) {
      if (error instanceof ApiError && (error.code === "not_found" || error.code === "forbidden")) {
        forget(state, lostRoomReason(state)); // banned or removed while the page was behind
      } else {
        showError("room-error", error);
      }
    } finally {
      state.filling = null;
      if (rooms.get(state.id) === state && state.info.left) forget(state, lostRoomReason(state));
      scheduleRender(state);
    }
  })();
  return state.filling;
}

/** What the room list says when a room goes away without this page asking (null: nothing). */
function lostRoomReason(state, reason = null) {
  if (state.info.banned || reason === "banned") return `You were banned from ${state.info.name}.`;
  if (state.info.removed) return `You were removed from ${state.info.name}.`;
  if (reason === "left" || (state.info.left && !reason)) return null; // left on another device
  return `You no longer have access to ${state.info.name}.`;
}

function handleEvent(frame) {
  if (frame.type === "error") {
    showError("room-error", new Error(frame.message || frame.code));
    return;
  }
  if (frame.type === "presence.changed") {
    presence.set(frame.data.user.id, frame.data.status);
    renderRoomList();
    return;
  }
  if (frame.type === "report.created") { // to moderators only: refresh the open reports
    refreshReports();
    return;
  }
  if (frame.type === "notification.created") { // to my own sockets, subscribed or not
    onNotification(frame);
    return;
  }
  if (frame.type === "room.created" && !rooms.has(frame.room)) {
    api.room(frame.room).then((info) => { track(info); renderRoomList(); }).catch(() => {});
    return;
  }
  const state = rooms.get(frame.room);
  if (!state) return;
  if (frame.type === "unsubscribed") {
    // The server ended the subscription (`reason`: banned, left, forbidden); a reply to our own
    // `unsubscribe` carries no reason and finds the room forgotten already.
    if (frame.reason) forget(state, lostRoomReason(state, frame.reason));
    return;
  }
  if (frame.type === "message.created" && frame.actor?.id !== me.id && notifyLevel(state) === "all"
    && !blocked.has(frame.actor?.id) && (state.cursor === null || frame.seq > state.cursor)) {
    desktopNotify(`${frame.actor?.username ?? "Someone"} in ${roomLabel(state)}`, frame.data.body,
      `room-${state.id}-seq-${frame.seq}`, state);
  }
  const outcome = state.offer(frame);
  if (outcome === "gap" && state.revokesMe(frame)) {
    // Banned or removed after events this page has not seen: nothing later can be read (the
    // gap fill would be refused), so the room goes now.
    state.markLeft(frame);
    forget(state, lostRoomReason(state));
    return;
  }
  if (outcome === "gap") fillGap(state);
  threadEvent(state, frame);
  if (state.info.left) {
    forget(state, lostRoomReason(state));
    return;
  }
  scheduleRender(state);
}

// --- Rendering ----------------------------------------------------------------------------

const dirty = new Set();
let frameRequested = false;

function scheduleRender(state) {
  dirty.add(state);
  if (frameRequested) return;
  frameRequested = true;
  requestAnimationFrame(() => {
    frameRequested = false;
    const states = [...dirty];
    dirty.clear();
    renderRoomList();
    if (current && states.includes(current)) {
      renderRoomHead();
      renderTimeline();
      updateComposer();
      markRead();
    }
  });
}

function roomLabel(state) {
  if (state.info.kind === "direct" && state.partner) return state.partner.username;
  return state.info.name;
}

function renderRoomList() {
  const list = $("room-list");
  const items = [...rooms.values()].sort((a, b) => roomLabel(a).localeCompare(roomLabel(b)));
  list.replaceChildren(...items.map((state) => {
    const unread = current === state ? 0 : state.unread;
    const mentions = current === state && document.visibilityState === "visible" ? 0 : mentionCount(state);
    const status = state.partner ? presence.get(state.partner.id) : null;
    return el("li", { dataset: { room: state.id } },
      el("button", {
        type: "button", class: "room-link", "aria-current": current === state ? "page" : null,
        onclick: () => openRoom(state),
      },
      state.info.kind === "direct"
        ? el("span", { class: `presence ${status || "unknown"}`, title: status || "presence unknown" },
          el("span", { class: "visually-hidden" }, status ? `(${status}) ` : ""))
        : el("span", { class: "kind", "aria-hidden": "true" }, state.info.kind === "private" ? "🔒" : "#"),
      el("span", { class: "room-name" }, roomLabel(state)),
      mentions ? el("span", { class: "badge mentions", "aria-label": `${mentions} ${mentions === 1 ? "mention" : "mentions"}` }, `@${mentions}`) : null,
      unread ? el("span", { class: "badge", "aria-label": `${unread} unread` }, String(unread)) : null));
  }));
}

function messageKey(msg) {
  return msg.id !== null ? `m${msg.id}` : `c${msg.clientId}`;
}

function formatTime(ts) {
  if (!ts) return "";
  const date = new Date(ts);
  return Number.isNaN(date.getTime()) ? "" : date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function renderAuthor(msg, key) {
  const author = msg.author;
  const mine = author.id === me.id;
  if (mine) return el("span", { class: "author" }, author.username);
  const open = userMenu && userMenu.key === key;
  const isBlocked = blocked.has(author.id);
  return el("span", { class: "author-wrap" },
    el("button", {
      type: "button", class: "author", "aria-haspopup": "menu", "aria-expanded": open ? "true" : "false",
      dataset: { action: "user-menu" },
      onclick: () => { userMenu = open ? null : { key, user: author }; renderTimeline(); },
    }, author.username),
    open
      ? el("span", { class: "user-menu", role: "menu" },
        el("button", {
          type: "button", role: "menuitem", dataset: { action: isBlocked ? "unblock" : "block" },
          onclick: () => toggleBlock(author),
        }, isBlocked ? `Unblock ${author.username}` : `Block ${author.username}`))
      : null);
}

function renderHidden(msg, key) {
  return el("li", { class: "msg blocked", id: key, dataset: { seq: msg.seq ?? "" } },
    el("div", { class: "meta" }, renderAuthor(msg, key)),
    el("p", { class: "body hidden-note" }, "Message from someone you blocked."));
}

function renderMessage(state, msg) {
  const mine = msg.author.id === me.id;
  const moderator = state.isModerator || config.user.is_moderator;
  const key = messageKey(msg);
  if (blocked.has(msg.author.id)) return renderHidden(msg, key);
  const classes = ["msg", mine ? "mine" : "", msg.status !== "sent" ? msg.status : "", msg.deleted ? "deleted" : ""];
  const replied = msg.replyTo !== null ? state.messages.get(msg.replyTo) : null;
  const body = editing === key
    ? el("form", { class: "edit-form", onsubmit: (e) => { e.preventDefault(); saveEdit(state, msg, e.target.elements.body.value); } },
      el("label", { for: `edit-${key}`, class: "visually-hidden" }, "Edit message"),
      el("textarea", { id: `edit-${key}`, name: "body", rows: "2", oninput: (e) => { editDraft = e.target.value; } },
        editDraft ?? msg.body),
      el("button", { type: "submit" }, "Save"),
      el("button", { type: "button", onclick: () => { editing = null; renderTimeline(); } }, "Cancel"))
    : el("p", { class: "body" }, msg.deleted ? (msg.byModerator ? "Message removed by a moderator" : "Message deleted") : msg.body);
  const actions = [];
  if (!msg.deleted && msg.status === "sent") {
    actions.push(el("button", { type: "button", dataset: { action: "reply" }, onclick: () => startReply(msg) }, "Reply"));
    actions.push(el("button", { type: "button", dataset: { action: "thread" }, onclick: () => openThread(state, msg.thread ?? msg.id) }, "Reply in thread"));
    for (const emoji of REACTIONS) {
      actions.push(el("button", {
        type: "button", class: "react", dataset: { action: `react-${emoji}` },
        "aria-label": `React with ${emoji}`, onclick: () => toggleReaction(state, msg, emoji),
      }, emoji));
    }
    if (!mine) {
      actions.push(el("button", { type: "button", dataset: { action: "report" }, onclick: () => { reporting = key; reportDraft = { category: "spam", reason: "" }; renderTimeline(); $(`report-${key}`)?.focus(); } }, "Report"));
    }
    if (mine) {
      actions.push(el("button", { type: "button", dataset: { action: "edit" }, onclick: () => { editing = key; editDraft = null; renderTimeline(); $(`edit-${key}`)?.focus(); } }, "Edit"));
      actions.push(el("button", { type: "button", dataset: { action: "delete" }, onclick: () => deleteOwn(state, msg) }, "Delete"));
    } else if (moderator) {
      actions.push(el("button", { type: "button", class: "mod", dataset: { action: "mod-delete" }, onclick: () => moderate(state, "delete", msg) }, "Remove"));
      actions.push(el("button", { type: "button", class: "mod", dataset: { action: "mute" }, onclick: () => moderate(state, "mute", msg) }, `Mute ${msg.author.username}`));
      actions.push(el("button", { type: "button", class: "mod", dataset: { action: "ban" }, onclick: () => moderate(state, "ban", msg) }, `Ban ${msg.author.username}`));
    }
  }
  const reportForm = reporting === key && !msg.deleted
    ? el("form", { class: "report-form", onsubmit: (e) => { e.preventDefault(); sendReport(msg, e.target.elements); } },
      el("label", { for: `report-${key}` }, "Report as"),
      el("select", { id: `report-${key}`, name: "category", onchange: (e) => { reportDraft.category = e.target.value; } },
        ...[["spam", "Spam"], ["abuse", "Abuse"], ["other", "Other"]].map(([value, label]) =>
          el("option", { value, selected: reportDraft.category === value }, label))),
      el("label", { for: `report-reason-${key}`, class: "visually-hidden" }, "Reason"),
      el("input", { id: `report-reason-${key}`, name: "reason", maxlength: "1000", placeholder: "What is wrong (optional)",
        value: reportDraft.reason, oninput: (e) => { reportDraft.reason = e.target.value; } }),
      el("button", { type: "submit" }, "Send report"),
      el("button", { type: "button", onclick: () => { reporting = null; renderTimeline(); } }, "Cancel"))
    : null;
  return el("li", { class: classes.filter(Boolean).join(" "), id: key, dataset: { seq: msg.seq ?? "", clientId: msg.clientId ?? "" } },
    el("div", { class: "meta" },
      renderAuthor(msg, key),
      " ",
      el("time", { datetime: msg.ts || "" }, formatTime(msg.ts)),
      msg.editedAt && !msg.deleted ? el("span", { class: "edited" }, " (edited)") : null),
    msg.replyTo !== null
      ? el("p", { class: "reply-ref" }, "↪ ", !replied ? "an earlier message"
        : blocked.has(replied.author.id) ? "a message from someone you blocked"
          : `${replied.author.username}: ${replied.deleted ? "deleted message" : replied.body.slice(0, 80)}`)
      : null,
    body,
    msg.deleted ? null : renderFiles(msg.attachments, el, { openImage, watch: (file) => thumbnails.watch(file) }),
    msg.replyCount > 0 && msg.id !== null
      ? el("button", {
        type: "button", class: `thread-link${threadUnread.get(msg.id) ? " unread" : ""}`, dataset: { action: "open-thread" },
        onclick: () => openThread(state, msg.id),
      }, `${msg.replyCount} ${msg.replyCount === 1 ? "reply" : "replies"}${threadUnread.get(msg.id) ? ` (${threadUnread.get(msg.id)} new)` : ""}`)
      : null,
    reportForm,
    msg.reactions.size
      ? el("div", { class: "reactions", "aria-label": "Reactions" }, [...msg.reactions].map(([emoji, r]) =>
        el("button", {
          type: "button", class: "reaction", "aria-pressed": r.me ? "true" : "false",
          "aria-label": `${emoji} ${r.count}${r.me ? ", including you" : ""}`,
          onclick: () => toggleReaction(state, msg, emoji),
        }, `${emoji} ${r.count}`)))
      : null,
    msg.status === "pending" ? el("p", { class: "status" }, "Sending…") : null,
    msg.status === "failed"
      ? el("p", { class: "status" }, msg.error || "Not sent. ",
        el("button", { type: "button", dataset: { action: "retry" }, onclick: () => send(state, msg) }, "Retry"))
      : null,
    actions.length ? el("div", { class: "actions" }, actions) : null);
}

function renderTimeline() {
  const list = $("messages");
  const timeline = $("timeline");
  if (!current) {
    list.replaceChildren();
    return;
  }
  const state = current;
  const nearBottom = timeline.scrollHeight - timeline.scrollTop - timeline.clientHeight < 80;
  const active = document.activeElement;
  const focused = active?.closest?.(".msg");
  const focusKey = focused ? focused.id : null;
  const focusAction = active?.dataset?.action;
  // A form being filled in a message (an edit, a report) that is redrawn keeps the focus.
  const formFocus = /^(edit|report)-/.test(active?.id ?? "")
    ? [active.id, active.selectionStart ?? null, active.selectionEnd ?? null] : null;
  const existing = new Map([...list.children].map((node) => [node.id, node]));
  // After a jump to an old message the newer ones stay out until "Show the latest messages".
  const wanted = state.windowTop === null ? state.sorted()
    : state.sorted().filter((msg) => msg.seq !== null && msg.seq <= state.windowTop);
  const nodes = wanted.map((msg, i) => {
    // A run of messages by one author within five minutes shows its name once.
    const prev = wanted[i - 1];
    const continued = Boolean(prev && prev.author.id === msg.author.id && msg.replyTo === null
      && Date.parse(msg.ts) - Date.parse(prev.ts) < 5 * 60 * 1000);
    const signature = JSON.stringify([msg.body, msg.deleted, msg.status, msg.editedAt, msg.error, [...msg.reactions],
      editing === messageKey(msg), reporting === messageKey(msg), state.isModerator, continued, blocked.has(msg.author.id),
      userMenu && userMenu.key === messageKey(msg), msg.replyCount, threadUnread.get(msg.id) || 0,
      msg.replyTo !== null && state.messages.get(msg.replyTo)?.body,
      // A thumbnail the watch learnt later (ThumbnailWatch sets it on the file) redraws it.
      (msg.attachments || []).map((file) => file.thumbnail_url || "")]);
    const old = existing.get(messageKey(msg));
    if (old && old.dataset.signature === signature) return old;
    const node = renderMessage(state, msg);
    node.classList.toggle("continued", continued);
    node.dataset.signature = signature;
    return node;
  });
  list.replaceChildren(...nodes);
  if (focusKey && focusAction) document.querySelector(`#${CSS.escape(focusKey)} [data-action="${focusAction}"]`)?.focus();
  // ... and the caret where the person was typing.
  const field = formFocus && $(formFocus[0]);
  if (field && document.activeElement !== field) {
    field.focus();
    if (formFocus[1] !== null && field.setSelectionRange) field.setSelectionRange(formFocus[1], formFocus[2]);
  }
  $("load-older").hidden = !state.historyLoaded || state.historyComplete;
  $("show-latest").hidden = state.windowTop === null;
  $("typing").textContent = typingText(state);
  if (nearBottom && state.windowTop === null) timeline.scrollTop = timeline.scrollHeight;
}

function typingText(state) {
  const names = state.typingNames(Date.now(), blocked);
  if (!names.length) return "";
  return names.length === 1 ? `${names[0]} is typing…` : `${names.join(", ")} are typing…`;
}

setInterval(() => { if (current) $("typing").textContent = typingText(current); }, 1000);

function renderRoom() {
  const state = current;
  document.body.classList.toggle("room-open", Boolean(state));
  renderRoomHead();
  $("room-actions").hidden = !state;
  $("invite-form").hidden = !state || state.info.kind === "direct" || !state.isModerator;
  $("leave-room").hidden = !state || state.info.kind === "direct";
  if (state) $("notify-level").value = notifyLevel(state);
  $("composer").hidden = !state;
  editing = null;
  cancelReply();
  renderRoomList();
  renderTimeline();
  updateComposer();
}

const COMPOSER_PLACEHOLDER = $("composer-input").placeholder;

/** Who is held to slow mode and the post policy: not the room's or the site's moderators. */
function heldToRoomRules(state) {
  return !state.isModerator && !config.user.is_moderator;
}

/** Title, topic and retention of the open room (room.updated changes them live). */
function renderRoomHead() {
  const state = current;
  $("room-title").textContent = state ? roomLabel(state) : "Pick a room";
  $("room-topic").textContent = state ? state.info.topic || "" : "";
  const days = state ? retentionDays(state) : null;
  $("room-retention").hidden = !days;
  $("room-retention").textContent = days ? `Messages are kept ${days} ${days === 1 ? "day" : "days"}` : "";
}

/** The room's own retention, else the site's; null: messages are kept forever. */
function retentionDays(state) {
  if (state.info.kind !== "direct" && Number.isInteger(state.info.retention_days)) return state.info.retention_days;
  return config.retentionDays ?? null;
}

function updateComposer() {
  const offline = !socket.ready;
  $("load-older").disabled = offline;
  if (!current) return;
  const info = current.info;
  const readOnly = info.post_policy === "moderators" && heldToRoomRules(current);
  const wait = Math.ceil(((current.slowUntil || 0) - Date.now()) / 1000);
  const closed = Boolean(info.archived) || readOnly;
  $("composer-input").disabled = closed;
  $("attach-button").disabled = closed;
  $("send-button").disabled = closed || wait > 0;
  $("composer").classList.toggle("read-only", readOnly);
  $("composer-input").placeholder = info.archived ? "This room is archived."
    : readOnly ? "Only moderators can post in this room." : COMPOSER_PLACEHOLDER;
  const note = $("slow-mode");
  if (wait > 0 && !closed) {
    note.hidden = false;
    // The same countdown for slow mode and for the user's write budget (both give retry_after).
    note.textContent = `${info.slow_mode_seconds > 0 ? "Slow mode" : "Slow down"}: you can post again in ${wait} s.`;
  } else {
    note.hidden = !(info.slow_mode_seconds > 0 && !closed && heldToRoomRules(current));
    note.textContent = note.hidden ? "" : `Slow mode: one message every ${info.slow_mode_seconds} s.`;
  }
}

setInterval(() => { if (current?.slowUntil) updateComposer(); }, 250);

/** Start the composer's countdown after a post (or a refusal carrying retry_after). */
function startSlowMode(state, seconds) {
  if (!(seconds > 0) || !heldToRoomRules(state)) return;
  state.slowUntil = Math.max(state.slowUntil || 0, Date.now() + seconds * 1000);
  if (state === current) updateComposer();
}

// --- Rooms --------------------------------------------------------------------------------

async function findPartner(state) {
  try {
    const members = await api.members(state.id);
    const other = members.find((m) => m.user.id !== me.id);
    if (other) state.partner = other.user;
    await refreshPresence();
    if (current === state) $("room-title").textContent = roomLabel(state);
  } catch { /* the room name stays */ }
}

/** Starting statuses of direct-message partners; presence.changed keeps them current. */
async function refreshPresence() {
  const ids = [...rooms.values()].filter((s) => s.partner).map((s) => s.partner.id);
  if (ids.length) {
    try {
      const query = new URLSearchParams(ids.map((id) => ["user", String(id)]));
      const statuses = await api.get(`/presence/?${query}`);
      for (const [id, status] of Object.entries(statuses)) presence.set(Number(id), status);
    } catch { /* statuses stay unknown until the socket reports a change */ }
  }
  renderRoomList();
}

async function openRoom(state) {
  current = state;
  document.title = `${roomLabel(state)} · Chat`;
  renderRoom();
  markRead();
  if (!state.historyLoaded) await loadHistory(state);
  if (current === state) {
    $("timeline").scrollTop = $("timeline").scrollHeight;
    markRead();
  }
}

async function loadHistory(state) {
  // Wait for the subscription: the snapshot must not predate events applied to it. Offline,
  // show the history anyway after a moment (the replay then only risks a recount).
  await Promise.race([state.subscribedOnce, new Promise((resolve) => setTimeout(resolve, 4000))]);
  try {
    const page = await api.messages(state.id, null, PAGE);
    state.mergeHistory(page.results);
    state.historyLoaded = true;
    state.historyComplete = !page.next;
  } catch (error) {
    showError("room-error", error);
  }
  scheduleRender(state);
}

async function loadOlder() {
  const state = current;
  if (!state || state.oldestSeq === null) return;
  const timeline = $("timeline");
  const fromBottom = timeline.scrollHeight - timeline.scrollTop;
  try {
    const page = await api.messages(state.id, state.oldestSeq, PAGE);
    state.mergeHistory(page.results);
    state.historyComplete = !page.next;
  } catch (error) {
    showError("room-error", error);
    return;
  }
  renderTimeline();
  timeline.scrollTop = timeline.scrollHeight - fromBottom;
}

const readSent = new Map(); // room id -> last seq reported
const readInFlight = new Set(); // room ids with a `read` awaiting its ack

/**
 * Report a room's read position: per room one `read` in flight, at most one a second. What the
 * user has seen is noted while the room is open and visible (`seenSeq`); a read held back by
 * one in flight goes out after it for that room, even if the user has moved to another room
 * meanwhile (else opening a room and leaving it within a second left its mentions unread).
 */
function markRead(state = current) {
  if (!state) return;
  if (state === current && document.visibilityState === "visible" && state.cursor !== null) {
    state.seenSeq = Math.max(state.seenSeq ?? 0, state.cursor);
  }
  if (readInFlight.has(state.id) || !socket.ready) return;
  const seq = state.seenSeq ?? null;
  if (seq === null || seq <= state.lastReadSeq || seq <= (readSent.get(state.id) || 0)) return;
  readSent.set(state.id, seq);
  readInFlight.add(state.id);
  socket.request({ type: "read", room: state.id, seq })
    .then(() => { if (seq > state.lastReadSeq) state.lastReadSeq = seq; renderRoomList(); renderNotifications(); })
    .catch(() => readSent.delete(state.id))
    .finally(() => setTimeout(() => {
      readInFlight.delete(state.id);
      markRead(state);
      if (current && current !== state) markRead();
    }, 1000));
}

document.addEventListener("visibilitychange", () => markRead());
// A moderator back from the admin tab sees the reports handled there.
document.addEventListener("visibilitychange", () => { if (document.visibilityState === "visible") refreshReports(); });

async function refreshRooms() {
  try {
    const [mine, visible] = await Promise.all([api.myRooms(), api.publicRooms()]);
    const ids = new Set(mine.map((r) => r.id));
    for (const info of mine) track(info);
    for (const state of [...rooms.values()]) if (!ids.has(state.id)) forget(state);
    renderPublicRooms(visible.filter((r) => !ids.has(r.id) && r.kind === "public" && !r.archived));
    renderRoomList();
    refreshReports();
  } catch (error) {
    showError("sidebar-error", error);
  }
}

function renderPublicRooms(list) {
  $("public-rooms").replaceChildren(...(list.length ? list.map((info) =>
    el("li", {}, el("span", {}, info.name), " ",
      el("button", { type: "button", "aria-label": `Join ${info.name}`, onclick: () => join(info) }, "Join")))
    : [el("li", {}, "No other public rooms.")]));
}

async function join(info) {
  try {
    await api.joinRoom(info.id);
    const state = track(await api.room(info.id));
    await refreshRooms();
    openRoom(state);
  } catch (error) {
    showError("sidebar-error", error);
  }
}

async function userByName(username) {
  const name = username.trim();
  const found = (await api.findUsers(name)).find((u) => u.username.toLowerCase() === name.toLowerCase());
  if (!found) throw new Error(`No user called ${name}.`);
  return found;
}

$("create-room-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const form = e.target;
  try {
    const info = await api.createRoom(form.elements.name.value, form.elements.private.checked ? "private" : "public");
    form.reset();
    form.closest("details").open = false;
    openRoom(track(info));
  } catch (error) {
    showError("sidebar-error", error);
  }
});

$("direct-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const form = e.target;
  try {
    const user = await userByName(form.elements.username.value);
    const info = await api.openDirect(user.id);
    form.reset();
    const state = track(info);
    state.partner = user;
    openRoom(state);
  } catch (error) {
    showError("sidebar-error", error);
  }
});

$("invite-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const state = current;
  try {
    const user = await userByName($("invite-username").value);
    await api.invite(state.id, user.id);
    $("invite-username").value = "";
    showError("room-error", new Error(`${user.username} was invited.`));
  } catch (error) {
    showError("room-error", error);
  }
});

$("leave-room").addEventListener("click", async () => {
  const state = current;
  try {
    await api.leaveRoom(state.id);
    forget(state);
    refreshRooms();
  } catch (error) {
    showError("room-error", error);
  }
});

document.querySelector(".skip-link").addEventListener("click", (e) => {
  e.preventDefault();
  if ($("composer").hidden) $("room-list").querySelector("button")?.focus();
  else $("composer-input").focus();
});
$("load-older").addEventListener("click", loadOlder);
$("show-latest").addEventListener("click", async () => {
  const state = current;
  if (!state) return;
  state.resetHistory();
  await loadHistory(state);
  $("timeline").scrollTop = $("timeline").scrollHeight;
});
$("back-to-rooms").addEventListener("click", () => { current = null; renderRoom(); });
$("timeline").addEventListener("scroll", () => {
  if ($("timeline").scrollTop === 0 && current?.historyLoaded && !current.historyComplete && socket.ready) loadOlder();
});

// --- Attachments (apps/web/static/web/attachments.js) ------------------------------------------

const pendingFiles = new PendingFiles({
  apiRoot: config.apiRoot,
  maxBytes: config.uploadMaxBytes,
  onChange: (error) => {
    $("pending-files").replaceChildren(...renderPending(pendingFiles, el));
    $("pending-files").hidden = pendingFiles.items.length === 0;
    if (error) showError("attach-error", new Error(error));
  },
});
const thumbnails = new ThumbnailWatch(api, () => { if (current) scheduleRender(current); });

function attach(files) {
  if (!files.length || !current || $("attach-button").disabled) return;
  const refused = pendingFiles.add(files);
  if (refused.length) showError("attach-error", new Error(refused.join(" ")));
}

function openImage(file) {
  const viewer = $("image-viewer");
  $("image-viewer-img").src = file.url;
  $("image-viewer-img").alt = file.name;
  $("image-viewer-title").textContent = file.name;
  $("image-viewer-download").href = file.url;
  viewer.showModal();
}

$("image-viewer-close").addEventListener("click", () => $("image-viewer").close());
$("image-viewer").addEventListener("close", () => $("image-viewer-img").removeAttribute("src"));
$("attach-button").addEventListener("click", () => $("attach-input").click());
$("attach-input").addEventListener("change", (e) => {
  attach([...e.target.files]);
  e.target.value = "";
});
$("composer-input").addEventListener("paste", (e) => {
  const files = filesOf(e.clipboardData);
  if (files.length) {
    e.preventDefault();
    attach(files);
  }
});
for (const target of [$("composer"), $("timeline")]) {
  target.addEventListener("dragover", (e) => {
    if ([...(e.dataTransfer?.types || [])].includes("Files")) {
      e.preventDefault();
      $("composer").classList.add("drop-target");
    }
  });
  target.addEventListener("dragleave", () => $("composer").classList.remove("drop-target"));
  target.addEventListener("drop", (e) => {
    $("composer").classList.remove("drop-target");
    const files = filesOf(e.dataTransfer);
    if (files.length) {
      e.preventDefault();
      attach(files);
    }
  });
}

// --- Messages -----------------------------------------------------------------------------

async function send(state, msg) {
  msg.status = "pending";
  msg.error = null;
  scheduleRender(state);
  const frame = { type: "message.send", room: state.id, body: msg.body, client_id: msg.clientId };
  if (msg.replyTo !== null) frame.reply_to = msg.replyTo;
  if (msg.attachments.length) frame.attachments = msg.attachments.map((f) => f.id);
  try {
    const reply = await socket.request(frame);
    state.confirm(reply.event);
    startSlowMode(state, state.info.slow_mode_seconds);
  } catch (error) {
    msg.status = "failed";
    msg.error = error instanceof ServerError ? `Not sent: ${error.message}. ` : "Not sent. ";
    if (error instanceof ServerError && error.code === "rate_limited") startSlowMode(state, error.retryAfter);
  }
  scheduleRender(state);
}

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const state = current;
  const input = $("composer-input");
  const body = input.value;
  if (!state || $("send-button").disabled) return;
  if (pendingFiles.busy) { showError("attach-error", new Error("Wait for the uploads to finish.")); return; }
  const files = pendingFiles.ready.length ? pendingFiles.take() : [];
  if (!body.trim() && !files.length) return;
  const msg = state.addPending(uuid(), body.trim() ? body : "", replyTo ? replyTo.id : null, files);
  input.value = "";
  cancelReply();
  stopTyping();
  send(state, msg);
  $("timeline").scrollTop = $("timeline").scrollHeight;
});

$("composer-input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    $("composer").requestSubmit();
  } else if (e.key === "Escape") {
    cancelReply();
  }
});

$("composer-input").addEventListener("input", () => {
  if (!current || !socket.ready) return;
  const now = Date.now();
  if (now - typingSentAt > 3000) {
    typingSentAt = now;
    socket.send({ type: "typing", room: current.id, state: true });
  }
  clearTimeout(typingStop);
  typingStop = setTimeout(stopTyping, 4000);
});

function stopTyping() {
  clearTimeout(typingStop);
  if (typingSentAt && current && socket.ready) socket.send({ type: "typing", room: current.id, state: false });
  typingSentAt = 0;
}

function startReply(msg) {
  replyTo = msg;
  $("reply-text").textContent = `Replying to ${msg.author.username}: ${msg.body.slice(0, 80)}`;
  $("reply-banner").hidden = false;
  $("composer-input").focus();
}

function cancelReply() {
  replyTo = null;
  $("reply-banner").hidden = true;
  $("reply-text").textContent = "";
}

$("reply-cancel").addEventListener("click", cancelReply);

async function request(state, frame) {
  try {
    const reply = await socket.request(frame);
    if (reply.event) handleAck(state, reply.event);
  } catch (error) {
    showError("room-error", error instanceof ServerError ? error : new Error("Not connected: try again in a moment."));
  }
}

// An ack carries the committed event; it also arrives in the room's stream, where the
// cursor deduplicates it. Applying it now only matters for the stream being behind.
function handleAck(state, event) {
  if (event.seq !== null && state.cursor !== null && event.seq === state.cursor + 1) state.offer(event);
  scheduleRender(state);
}

async function saveEdit(state, msg, body) {
  if (!body.trim() || body === msg.body) {
    editing = null;
    renderTimeline();
    return;
  }
  editing = null;
  await request(state, { type: "message.edit", message: msg.id, body });
  renderTimeline();
}

function deleteOwn(state, msg) {
  return request(state, { type: "message.delete", message: msg.id });
}

function toggleReaction(state, msg, emoji) {
  const mine = msg.reactions.get(emoji)?.me;
  return request(state, { type: mine ? "reaction.remove" : "reaction.add", message: msg.id, emoji });
}

async function sendReport(msg, fields) {
  try {
    await api.report(msg.id, fields.category.value, fields.reason.value);
    reporting = null;
    renderTimeline();
    showError("room-error", new Error("Thank you: the moderators have your report."));
  } catch (error) {
    showError("room-error", error instanceof ApiError ? error : new Error(String(error)));
  }
}

// --- Reports (moderators) -----------------------------------------------------------------

/** Whether this user moderates anything: the site, or one of their rooms. */
function moderatesSomething() {
  return Boolean(config.user.is_moderator) || [...rooms.values()].some((s) => s.isModerator);
}

/** The open reports of the rooms this user moderates (GET /api/reports/?status=open). */
async function refreshReports() {
  if (!moderatesSomething()) {
    $("reports-panel").hidden = true;
    return;
  }
  let reports;
  try {
    reports = await api.openReports();
  } catch {
    return; // the list stays as it was; the next report.created or refresh tries again
  }
  $("reports-panel").hidden = false;
  $("reports-badge").hidden = !reports.length;
  $("reports-badge").textContent = String(reports.length);
  $("reports-badge").setAttribute("aria-label", `${reports.length} open reports`);
  $("report-list").replaceChildren(...(reports.length ? reports.map((r) => {
    const state = rooms.get(r.room);
    const where = state ? roomLabel(state) : `room ${r.room}`;
    return el("li", { dataset: { report: r.id } },
      el("strong", {}, `${r.category}`), ` in ${where}: ${r.author ? r.author.username : "?"}`,
      el("span", { class: "excerpt" }, r.body.slice(0, 120)),
      r.reason ? el("span", { class: "excerpt" }, `“${r.reason.slice(0, 120)}”`) : null,
      el("span", { class: "report-actions" },
        config.user.is_moderator
          ? el("a", { href: `/admin/moderation/report/${r.id}/change/` }, "Review")
          : state ? el("button", { type: "button", onclick: () => openRoom(state) }, "Open room") : null,
        " ",
        el("button", { type: "button", dataset: { action: "report-delete" }, onclick: () => resolveReport(r, "delete") }, "Remove message"),
        " ",
        el("button", { type: "button", dataset: { action: "report-dismiss" }, onclick: () => resolveReport(r, "dismiss") }, "Dismiss")));
  }) : [el("li", {}, "No open reports.")]));
}

/** Handle a report from the list (POST /api/reports/{id}/resolve/), then refresh it. */
async function resolveReport(report, action) {
  try {
    await api.resolveReport(report.id, action, action === "delete" ? "removed after a report" : "");
  } catch (error) {
    showError("sidebar-error", error instanceof ApiError ? error : new Error(String(error)));
  }
  refreshReports();
}

/** Moderator actions go through the REST API, like any other client's. */
async function moderate(state, action, msg) {
  try {
    if (action === "delete") await api.deleteMessage(msg.id);
    if (action === "mute") {
      await api.mute(state.id, msg.author.id, new Date(Date.now() + 10 * 60 * 1000).toISOString());
      showError("room-error", new Error(`${msg.author.username} is muted for 10 minutes.`));
    }
    if (action === "ban") {
      await api.ban(state.id, msg.author.id, "banned from the web client");
      showError("room-error", new Error(`${msg.author.username} is banned from this room.`));
    }
  } catch (error) {
    showError("room-error", error instanceof ApiError ? error : new Error(String(error)));
  }
}

async function toggleBlock(user) {
  userMenu = null;
  try {
    if (blocked.has(user.id)) {
      await api.unblock(user.id);
      blocked.delete(user.id);
    } else {
      await api.block(user.id);
      blocked.add(user.id);
    }
  } catch (error) {
    showError("room-error", error);
  }
  renderTimeline();
}

async function loadBlocks() {
  try {
    for (const block of await api.blocks()) blocked.add(block.user.id);
  } catch { /* nothing hidden until the next load */ }
}

// --- Notifications (PROTOCOL §9): the list, the per-room level, desktop notifications -------

function notifyLevel(state) {
  return state.info.membership?.notify ?? "mentions";
}

function isRead(note) {
  const state = rooms.get(note.room);
  return Boolean(note.read) || Boolean(state && note.seq !== null && note.seq <= state.lastReadSeq);
}

/** Unread mentions of the room past my read position (reading the room clears them). */
function mentionCount(state) {
  if (notesComplete) return [...notes.values()].filter((n) => n.room === state.id && !isRead(n)).length;
  return state.lastReadSeq >= (state.info.last_seq ?? 0) ? 0 : (state.info.mentions ?? 0);
}

async function loadNotes() {
  try {
    const page = await api.notifications({ unread: "true", limit: "200" });
    for (const note of page.results) notes.set(note.id, note);
    notesComplete = !page.next;
  } catch { /* the rooms list's counts stand in */ }
  renderRoomList();
  renderNotifications();
}

function onNotification(frame) {
  const note = { ...frame.data.notification, read: false };
  if (notes.has(note.id)) return;
  notes.set(note.id, note);
  renderRoomList();
  renderNotifications();
  const state = rooms.get(note.room);
  desktopNotify(`${note.actor?.username ?? "Someone"} mentioned you in ${state ? roomLabel(state) : "a room"}`,
    note.excerpt, `room-${note.room}-seq-${note.seq}`, state);
}

/** The browser's Notification API, only while the page is hidden and if the user allowed it. */
function desktopNotify(title, body, tag, state) {
  if (!("Notification" in window) || Notification.permission !== "granted") return;
  if (document.visibilityState !== "hidden") return;
  try {
    const shown = new Notification(title, { body: (body || "").slice(0, 200), tag });
    shown.onclick = () => { window.focus(); if (state) openRoom(state); shown.close(); };
  } catch { /* some browsers only notify from a service worker */ }
}

function renderNotifications() {
  const unread = [...notes.values()].filter((n) => !isRead(n)).length;
  $("notifications-badge").hidden = !unread;
  $("notifications-badge").textContent = String(unread);
  $("notifications-badge").setAttribute("aria-label", `${unread} unread`);
  $("desktop-notifications").hidden = !("Notification" in window) || Notification.permission !== "default";
  const latest = [...notes.values()].sort((a, b) => b.id - a.id).slice(0, 30);
  $("notification-list").replaceChildren(...(latest.length ? latest.map((note) => {
    const state = rooms.get(note.room);
    const where = state ? roomLabel(state) : "a room you left";
    const who = note.actor?.username ?? "Someone";
    const what = { room: "@room", here: "@here" }[note.kind] ?? "mentioned you";
    return el("li", { dataset: { notification: note.id } },
      el("button", {
        type: "button", class: isRead(note) ? "read" : "unread",
        onclick: () => { $("notifications-menu").open = false; if (state) openRoom(state); },
      }, `${who} ${what} in ${where}`, el("span", { class: "excerpt" }, note.excerpt || "")));
  }) : [el("li", {}, "No notifications.")]));
}

$("notifications-menu").addEventListener("toggle", async () => {
  if (!$("notifications-menu").open) return;
  try { // the latest, read or not
    for (const note of (await api.notifications({ limit: "30" })).results) notes.set(note.id, note);
  } catch (error) {
    showError("sidebar-error", error);
  }
  renderNotifications();
});

$("notifications-read-all").addEventListener("click", async () => {
  try {
    await api.readNotifications({ all: true });
    for (const note of notes.values()) note.read = true;
  } catch (error) {
    showError("sidebar-error", error);
  }
  renderRoomList();
  renderNotifications();
});

$("desktop-notifications").addEventListener("click", async () => {
  try { await Notification.requestPermission(); } catch { /* dismissed */ }
  renderNotifications();
});

$("notify-level").addEventListener("change", async (e) => {
  const state = current;
  if (!state) return;
  const wanted = e.target.value;
  try {
    const info = await api.setNotify(state.id, wanted);
    Object.assign(state.info, info);
  } catch (error) {
    showError("room-error", error);
  }
  $("notify-level").value = notifyLevel(state);
});

document.addEventListener("visibilitychange", renderRoomList);

// --- Account menu: download my data, delete my account -------------------------------------

$("download-data").addEventListener("click", () => { $("account-menu").open = false; });

$("delete-account").addEventListener("click", () => {
  $("account-menu").open = false;
  $("delete-error").textContent = "";
  $("delete-password").value = "";
  $("delete-dialog").showModal();
  $("delete-password").focus();
});

$("delete-cancel").addEventListener("click", () => $("delete-dialog").close());

$("delete-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const password = $("delete-password").value;
  if (!password) return;
  $("delete-confirm").disabled = true;
  try {
    await api.deleteAccount(password);
  } catch (error) {
    $("delete-error").textContent = error.code === "unavailable"
      ? "The server cannot be reached: try again."
      : error.message;
    return;
  } finally {
    $("delete-confirm").disabled = false;
  }
  $("delete-dialog").close();
  $("account-deleted").hidden = false;
  // The server closes the account's sockets; end the session too (the log-in page follows).
  setTimeout(() => $("logout-form").submit(), 1500);
});

// --- Search (GET /api/search/) and jumping to a hit -----------------------------------------

let searchNext = null;

/** A highlight from the server: escaped text with <mark> elements only. Built as nodes. */
function highlightNodes(html) {
  const unescape = (text) => text.replace(/&(lt|gt|quot|#x27|#39|amp);/g, (_, name) =>
    ({ lt: "<", gt: ">", quot: '"', "#x27": "'", "#39": "'", amp: "&" })[name]);
  return html.split(/(<mark>.*?<\/mark>)/s).filter(Boolean).map((part) =>
    part.startsWith("<mark>") ? el("mark", {}, unescape(part.slice(6, -7))) : document.createTextNode(unescape(part)));
}

function showPanel(id) {
  for (const panel of ["search-panel", "thread-panel"]) $(panel).hidden = panel !== id;
  $("layout").classList.toggle("with-panel", Boolean(id));
}

async function runSearch(url) {
  const q = $("search-input").value.trim();
  if (!q) return;
  showPanel("search-panel");
  $("search-status").textContent = "Searching…";
  if (!url) $("search-results").replaceChildren();
  try {
    const page = url ? await api.call("GET", url) : await api.search(q);
    const next = page.next ? new URL(page.next, location.href) : null;
    searchNext = next ? next.pathname + next.search : null;
    $("search-results").append(...page.results.map((hit) => {
      const state = rooms.get(hit.room);
      return el("li", { class: "search-hit", dataset: { room: hit.room, seq: hit.seq } },
        el("button", { type: "button", onclick: () => jumpTo(hit.room, hit.seq) },
          el("span", { class: "where" }, `${state ? roomLabel(state) : `room ${hit.room}`} · ${hit.message.author.username} · ${formatTime(hit.message.created_at)}`),
          el("span", { class: "snippet" }, highlightNodes(hit.highlight))));
    }));
    const count = $("search-results").children.length;
    $("search-status").textContent = count ? `${count}${searchNext ? "+" : ""} ${count === 1 ? "message" : "messages"}` : "No messages found.";
    $("search-more").hidden = !searchNext;
  } catch (error) {
    $("search-status").textContent = error.message;
  }
}

$("search-form").addEventListener("submit", (e) => { e.preventDefault(); runSearch(null); });
$("search-more").addEventListener("click", () => { if (searchNext) runSearch(searchNext); });
$("search-close").addEventListener("click", () => showPanel(null));

/** Open the room with the history around `seq` (GET .../messages/?around=), the hit marked. */
async function jumpTo(roomId, seq) {
  const state = rooms.get(roomId);
  if (!state) {
    $("search-status").textContent = "Join that room to open it.";
    return;
  }
  current = state;
  document.title = `${roomLabel(state)} · Chat`;
  renderRoom();
  await Promise.race([state.subscribedOnce, new Promise((resolve) => setTimeout(resolve, 4000))]);
  let page;
  try {
    page = await api.around(state.id, seq, PAGE);
  } catch (error) {
    showError("room-error", error);
    return;
  }
  state.resetHistory();
  state.mergeHistory(page.results);
  state.historyLoaded = true;
  state.historyComplete = !page.next;
  const newer = page.results.filter((m) => m.seq >= seq);
  // The window's newer half came back full: there may be more after it.
  state.windowTop = newer.length < PAGE - Math.floor(PAGE / 2) ? null : Math.max(...newer.map((m) => m.seq));
  renderTimeline();
  const node = $("messages").querySelector(`li[data-seq="${seq}"]`);
  if (node) {
    node.classList.add("jumped");
    node.scrollIntoView({ block: "center" });
    node.setAttribute("tabindex", "-1");
    node.focus({ preventScroll: true });
    setTimeout(() => node.classList.remove("jumped"), 6000);
  }
}

// --- Threads (GET /api/messages/{id}/thread/, /api/threads/, thread.updated) ---------------

const threadUnread = new Map(); // root id -> unread replies in a followed thread
let thread = null; // the open thread: {state, rootId, root, replies: Map id -> msg, following}
let threadsTimer = null;

function renderThreadMessage(msg) {
  return el("li", { class: "msg", dataset: { id: msg.id ?? "", seq: msg.seq ?? "" } },
    el("div", { class: "meta" }, el("span", { class: "author" }, msg.author.username), " ",
      el("time", { datetime: msg.ts || "" }, formatTime(msg.ts))),
    el("p", { class: "body" }, msg.deleted ? "Message deleted" : msg.body));
}

function renderThread() {
  if (!thread) return;
  const root = thread.state.messages.get(thread.rootId) || thread.root;
  $("thread-title").textContent = `Thread in ${roomLabel(thread.state)}`;
  $("thread-root").replaceChildren(renderThreadMessage(root));
  const count = root.replyCount;
  $("thread-count").textContent = `${count} ${count === 1 ? "reply" : "replies"}`;
  const replies = [...thread.replies.values()].sort((a, b) => a.seq - b.seq);
  $("thread-replies").replaceChildren(...replies.map(renderThreadMessage));
  $("thread-follow").textContent = thread.following ? "Following" : "Follow";
  $("thread-follow").setAttribute("aria-pressed", thread.following ? "true" : "false");
}

async function openThread(state, rootId) {
  let page;
  try {
    page = await api.thread(rootId);
  } catch (error) {
    showError("room-error", error);
    return;
  }
  const root = normalizeMessage(page.root, me);
  const known = state.messages.get(root.id);
  if (known) Object.assign(known, { replyCount: root.replyCount, lastReplySeq: root.lastReplySeq });
  thread = { state, rootId: root.id, root, replies: new Map(), following: false };
  for (const raw of page.results) thread.replies.set(raw.id, normalizeMessage(raw, me));
  showPanel("thread-panel");
  renderThread();
  markThreadRead();
  $("thread-input").focus();
}

async function markThreadRead() {
  if (!thread) return;
  try {
    const state = await api.threadRead(thread.rootId);
    if (thread && thread.rootId === state.root) thread.following = state.following;
    threadUnread.set(state.root, state.unread);
    renderThread();
    renderThreadList();
    scheduleRender(thread.state);
  } catch { /* counts catch up with the next refresh */ }
}

/** From handleEvent: replies to the open thread appear in it; counts refresh the list. */
function threadEvent(state, frame) {
  if (frame.type === "thread.updated") {
    clearTimeout(threadsTimer);
    threadsTimer = setTimeout(refreshThreads, 300);
    if (thread && thread.rootId === frame.data.root) {
      thread.root.replyCount = frame.data.reply_count;
      renderThread();
    }
    return;
  }
  if (!thread || thread.state !== state) return;
  if (frame.type === "message.created" && frame.data.thread === thread.rootId) {
    const msg = state.messages.get(frame.data.id);
    if (msg) thread.replies.set(msg.id, msg);
    renderThread();
    if (frame.actor?.id !== me.id && document.visibilityState === "visible") markThreadRead();
  } else if (frame.type === "message.deleted" || frame.type === "message.edited") {
    renderThread();
  }
}

async function refreshThreads() {
  let page;
  try {
    page = await api.threads();
  } catch {
    return;
  }
  threadUnread.clear();
  for (const t of page.results) threadUnread.set(t.root.id, t.unread);
  renderThreadList(page.results);
  for (const state of rooms.values()) scheduleRender(state);
}

let threadRows = [];

function renderThreadList(list = threadRows) {
  threadRows = list;
  const unreadThreads = list.filter((t) => (threadUnread.get(t.root.id) ?? t.unread) > 0).length;
  $("threads-badge").hidden = !unreadThreads;
  $("threads-badge").textContent = String(unreadThreads);
  $("threads-badge").setAttribute("aria-label", `${unreadThreads} threads with new replies`);
  $("thread-list").replaceChildren(...(list.length ? list.map((t) => {
    const state = rooms.get(t.room);
    const unread = threadUnread.get(t.root.id) ?? t.unread;
    return el("li", { class: unread ? "unread" : "", dataset: { root: t.root.id } },
      el("button", { type: "button", onclick: () => state && openThread(state, t.root.id) },
        el("span", { class: "room-name" }, `${t.root.deleted ? "Deleted message" : t.root.body.slice(0, 60)}`),
        unread ? el("span", { class: "badge", "aria-label": `${unread} new replies` }, String(unread)) : null));
  }) : [el("li", {}, "No threads yet.")]));
}

$("thread-close").addEventListener("click", () => { thread = null; showPanel(null); });
$("thread-follow").addEventListener("click", async () => {
  if (!thread) return;
  try {
    const state = await api.follow(thread.rootId, !thread.following);
    thread.following = state.following;
    renderThread();
    refreshThreads();
  } catch (error) {
    showError("thread-error", error);
  }
});

$("thread-composer").addEventListener("submit", async (e) => {
  e.preventDefault();
  const body = $("thread-input").value;
  if (!thread || !body.trim()) return;
  const { state, rootId } = thread;
  $("thread-send").disabled = true;
  try {
    const reply = await socket.request({ type: "message.send", room: state.id, body, client_id: uuid(), reply_to: rootId });
    $("thread-input").value = "";
    handleAck(state, reply.event);
    if (thread && thread.rootId === rootId) {
      thread.following = true;
      const msg = state.messages.get(reply.event.data.id)
        || normalizeMessage({ ...reply.event.data, seq: reply.event.seq, author: reply.event.actor, created_at: reply.event.ts }, me);
      thread.replies.set(msg.id, msg);
      renderThread();
    }
  } catch (error) {
    showError("thread-error", error instanceof ServerError ? error : new Error("Not sent: try again."));
  } finally {
    $("thread-send").disabled = false;
  }
});

$("thread-input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    $("thread-composer").requestSubmit();
  }
});

// --- Start --------------------------------------------------------------------------------

(async () => {
  await Promise.all([refreshRooms(), loadBlocks(), refreshThreads()]);
  loadNotes();
  socket.connect();
  const wanted = Number(new URLSearchParams(location.hash.slice(1)).get("room"));
  const first = rooms.get(wanted) || (window.innerWidth > 700 ? [...rooms.values()][0] : null);
  if (first) openRoom(first);
  setInterval(refreshRooms, 30000);
})();
