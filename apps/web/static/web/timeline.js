// One room's state, kept from the event stream: no DOM here.
//
// Durable events carry the room's seq. `offer()` applies them strictly in seq order: an event
// at or below the cursor is a duplicate and is dropped, one beyond cursor + 1 waits in a buffer
// until the hole before it is filled (from the replay or GET /api/rooms/{id}/events/). Every
// apply is a "set" (a body, a tombstone, a reaction by a user), so replaying an event onto a
// REST snapshot that already contains it changes nothing (others' reaction counts are the
// exception: see mergeHistory for how the page avoids double counting).

export function normalizeMessage(raw, me) {
  const msg = {
    id: raw.id,
    seq: raw.seq,
    author: { id: raw.author.id, username: raw.author.username },
    body: raw.body ?? "",
    replyTo: raw.reply_to ?? null,
    thread: raw.thread ?? null, // the thread's root id (replies only)
    replyCount: raw.reply_count ?? 0,
    lastReplySeq: raw.last_reply_seq ?? null,
    clientId: raw.client_id ?? null,
    ts: raw.created_at ?? null,
    editedAt: raw.edited_at ?? null,
    deleted: Boolean(raw.deleted),
    byModerator: Boolean(raw.by_moderator),
    reactions: new Map(), // emoji -> {count, me}
    attachments: raw.attachments || [], // files (PROTOCOL §8)
    status: "sent",
  };
  if (msg.deleted) { msg.body = ""; msg.attachments = []; }
  for (const r of raw.reactions || []) msg.reactions.set(r.emoji, { count: r.count, me: Boolean(r.me) });
  return msg;
}

function changeReaction(msg, emoji, actor, me, delta) {
  const entry = msg.reactions.get(emoji) || { count: 0, me: false };
  const mine = actor && actor.id === me.id;
  // Our own reaction is a set: a replay of what the snapshot already shows changes nothing.
  if (mine && entry.me === (delta > 0)) return;
  entry.count = Math.max(0, entry.count + delta);
  if (mine) entry.me = delta > 0;
  if (entry.count === 0) msg.reactions.delete(emoji);
  else msg.reactions.set(emoji, entry);
}

export class RoomState {
  constructor(info, me) {
    this.id = info.id;
    this.me = me;
    this.info = info;
    this.cursor = Number.isInteger(info.last_seq) ? info.last_seq : null;
    this.messages = new Map(); // message id -> message
    this.pending = new Map(); // client_id -> local message not yet acknowledged
    this.buffer = new Map(); // seq -> event waiting for the hole before it
    this.oldestSeq = null; // scroll-back cursor (lowest message seq loaded from REST)
    this.windowTop = null; // after a jump to an old message: the newest seq shown (null: live end)
    this.historyLoaded = false;
    this.historyComplete = false;
    this.lastReadSeq = info.membership?.last_read_seq ?? 0;
    this.unreadBase = info.unread ?? 0;
    this.unreadBaseSeq = this.cursor ?? 0;
    this.unreadLive = new Set();
    this.typing = new Map(); // user id -> {username, until}
    this.role = info.membership?.role ?? null;
    this.members = new Map(); // user id -> {id, username, role}
  }

  get isModerator() {
    return this.role === "owner" || this.role === "moderator";
  }

  get unread() {
    if (this.lastReadSeq >= this.unreadBaseSeq) this.unreadBase = 0;
    return this.unreadBase + [...this.unreadLive].filter((s) => s > this.lastReadSeq).length;
  }

  /** The highest seq we know of in the buffer (what a gap fill must reach). */
  get bufferedTop() {
    return this.buffer.size ? Math.max(...this.buffer.keys()) : null;
  }

  get hasGap() {
    return this.buffer.size > 0;
  }

  /** Retention removed the seqs below `historyStart`: stop waiting for them, apply what the
  buffer holds from there on. */
  skipPurged(historyStart) {
    if (!Number.isInteger(historyStart) || this.cursor === null || this.cursor >= historyStart - 1) return;
    this.cursor = historyStart - 1;
    this.drainBuffer();
  }

  /** Apply the buffered events that follow the cursor without a hole. */
  drainBuffer() {
    while (this.buffer.has(this.cursor + 1)) {
      const next = this.buffer.get(this.cursor + 1);
      this.buffer.delete(this.cursor + 1);
      this.applyDurable(next);
      this.cursor = next.seq;
    }
    for (const seq of this.buffer.keys()) if (seq <= this.cursor) this.buffer.delete(seq);
  }

  /** Offer one durable or ephemeral event; returns "applied", "duplicate" or "gap". */
  offer(event) {
    if (event.seq === null || event.seq === undefined) {
      this.applyUnsequenced(event);
      return "applied";
    }
    if (this.cursor !== null && event.seq <= this.cursor) return "duplicate";
    if (this.cursor !== null && event.seq > this.cursor + 1) {
      this.buffer.set(event.seq, event);
      return "gap";
    }
    this.applyDurable(event);
    this.cursor = event.seq;
    this.drainBuffer();
    return "applied";
  }

  /** Messages from a REST page (any order). Known messages are kept: events keep them current.

  The page asks for history only after the room's subscription has replayed up to the cursor,
  so the snapshot is never older than the events already applied to it. */
  mergeHistory(rawMessages) {
    for (const raw of rawMessages) {
      const msg = normalizeMessage(raw, this.me);
      if (this.oldestSeq === null || msg.seq < this.oldestSeq) this.oldestSeq = msg.seq;
      if (!this.messages.has(msg.id)) this.messages.set(msg.id, msg);
    }
  }

  /** Forget the loaded history (a jump loads a window elsewhere in it); pending sends stay. */
  resetHistory() {
    this.messages.clear();
    this.oldestSeq = null;
    this.windowTop = null;
    this.historyLoaded = false;
    this.historyComplete = false;
  }

  sorted() {
    const sent = [...this.messages.values()].sort((a, b) => a.seq - b.seq);
    return sent.concat([...this.pending.values()]);
  }

  addPending(clientId, body, replyTo, attachments = []) {
    const msg = {
      id: null, seq: null, author: this.me, body, replyTo, clientId, ts: new Date().toISOString(),
      thread: null, replyCount: 0, lastReplySeq: null,
      editedAt: null, deleted: false, byModerator: false, reactions: new Map(), status: "pending",
      attachments,
    };
    this.pending.set(clientId, msg);
    return msg;
  }

  /** The ack or the echo of our own message.created: the pending copy becomes the real one. */
  confirm(event) {
    this.pending.delete(event.data.client_id);
    if (!this.messages.has(event.data.id)) this.insertCreated(event);
    return this.messages.get(event.data.id);
  }

  insertCreated(event) {
    const d = event.data;
    const msg = normalizeMessage({
      id: d.id, seq: event.seq, author: event.actor, body: d.body, reply_to: d.reply_to, thread: d.thread,
      client_id: d.client_id, created_at: event.ts, attachments: d.attachments,
      // A redacted event (its message was deleted later): a tombstone until message.deleted.
      deleted: Boolean(d.redacted),
    }, this.me);
    this.messages.set(msg.id, msg);
    if (this.oldestSeq === null) this.oldestSeq = msg.seq;
    return msg;
  }

  /** A member.banned / member.left naming this user: the room is no longer theirs to follow. */
  revokesMe(event) {
    return (event.type === "member.banned" || event.type === "member.left")
      && event.data?.user?.id === this.me.id;
  }

  /** This user lost the room with `event`: banned, removed by a moderator, or left. */
  markLeft(event) {
    this.role = null;
    this.info.left = true;
    if (event.type === "member.banned") this.info.banned = true;
    else if (event.actor && event.actor.id !== this.me.id) this.info.removed = true; // kicked
  }

  applyDurable(event) {
    const d = event.data || {};
    switch (event.type) {
      case "message.created":
        if (d.client_id && this.pending.has(d.client_id) && event.actor?.id === this.me.id) {
          this.confirm(event);
        } else if (!this.messages.has(d.id)) {
          this.insertCreated(event);
        }
        if (event.actor?.id !== this.me.id) this.unreadLive.add(event.seq);
        break;
      case "message.edited":
      case "message.deleted":
      case "reaction.added":
      case "reaction.removed": {
        const id = event.type.startsWith("reaction") ? d.message : d.id;
        // A message not loaded yet is fetched from REST later, with this change in it.
        const msg = this.messages.get(id);
        if (msg) this.applyToMessage(msg, event);
        break;
      }
      case "room.updated":
        Object.assign(this.info, d);
        break;
      case "room.archived":
        this.info.archived = true;
        break;
      case "member.joined":
      case "member.role_changed":
        this.members.set(d.user.id, { ...d.user, role: d.role });
        if (d.user.id === this.me.id) this.role = d.role;
        break;
      case "member.left":
      case "member.banned":
        this.members.delete(d.user.id);
        if (this.revokesMe(event)) this.markLeft(event);
        break;
      case "member.muted":
        if (d.user.id === this.me.id) this.info.muted_until = d.until;
        break;
      default:
        break;
    }
  }

  applyToMessage(msg, event) {
    const d = event.data;
    if (event.type === "message.edited") {
      if (d.redacted) { msg.deleted = true; msg.attachments = []; }
      msg.body = d.body ?? "";
      msg.editedAt = d.edited_at;
    } else if (event.type === "message.deleted") {
      msg.deleted = true;
      msg.byModerator = Boolean(d.by_moderator);
      msg.body = "";
      msg.attachments = [];
      msg.reactions.clear();
    } else if (event.type === "reaction.added") {
      changeReaction(msg, d.emoji, event.actor, this.me, +1);
    } else if (event.type === "reaction.removed") {
      changeReaction(msg, d.emoji, event.actor, this.me, -1);
    }
  }

  applyUnsequenced(event) {
    const d = event.data || {};
    if (event.type === "typing") {
      if (!d.user || d.user.id === this.me.id) return;
      if (d.state) this.typing.set(d.user.id, { username: d.user.username, until: Date.now() + 6000 });
      else this.typing.delete(d.user.id);
    } else if (event.type === "thread.updated") {
      const root = this.messages.get(d.root);
      if (root) {
        root.replyCount = d.reply_count;
        root.lastReplySeq = d.last_reply_seq;
      }
    } else if (event.type === "receipt.updated") {
      if (d.user?.id === this.me.id && d.last_read_seq > this.lastReadSeq) {
        this.lastReadSeq = d.last_read_seq;
      }
    }
  }

  typingNames(now = Date.now(), hidden = new Set()) {
    for (const [id, t] of this.typing) if (t.until < now) this.typing.delete(id);
    return [...this.typing].filter(([id]) => !hidden.has(id)).map(([, t]) => t.username);
  }

  /** The newest message seq known (what a read receipt reports). */
  latestSeq() {
    let top = 0;
    for (const m of this.messages.values()) if (m.seq > top) top = m.seq;
    return top;
  }
}
