// The WebSocket: one per page, carrying every open room (PROTOCOL §3).
//
// Reconnects with exponential backoff and full jitter; each request frame carries a `ref` and
// its reply (ack, subscribed, unsubscribed, pong, error) settles the request's promise.

export class SocketClosed extends Error {
  constructor() {
    super("disconnected");
    this.code = "disconnected";
  }
}

export class ServerError extends Error {
  constructor(frame) {
    super(frame.message || frame.code);
    this.code = frame.code;
    this.retryAfter = frame.retry_after ?? null; // seconds, with rate_limited (slow mode)
  }
}

export function backoffDelay(attempt, { base = 500, cap = 8000, random = Math.random } = {}) {
  // Full jitter: uniform in [0, min(cap, base * 2^attempt)], never below 100 ms.
  const ceiling = Math.min(cap, base * 2 ** attempt);
  return Math.max(100, Math.floor(random() * ceiling));
}

export class ChatSocket {
  constructor(url, { onOpen, onEvent, onState, requestTimeout = 10000 } = {}) {
    this.url = url;
    this.onOpen = onOpen || (() => {});
    this.onEvent = onEvent || (() => {});
    this.onState = onState || (() => {});
    this.requestTimeout = requestTimeout;
    this.ws = null;
    this.attempt = 0;
    this.nextRef = 1;
    this.waiting = new Map(); // ref -> {resolve, reject, timer}
    this.heartbeat = 30;
    this.pingTimer = null;
    this.reconnectTimer = null;
    this.stopped = false;
    this.ready = false;
  }

  connect() {
    this.stopped = false;
    this.onState("connecting");
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.onmessage = (e) => this.handle(ws, e.data);
    ws.onclose = (e) => this.closed(ws, e.code);
    ws.onerror = () => {};
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.reconnectTimer);
    if (this.ws) this.ws.close(1000);
  }

  handle(ws, text) {
    if (ws !== this.ws) return;
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    if (frame.type === "hello") {
      this.attempt = 0;
      this.ready = true;
      this.heartbeat = frame.heartbeat || this.heartbeat;
      this.startPings();
      this.onState("online");
      this.onOpen(frame);
      return;
    }
    if (frame.ref !== undefined && this.waiting.has(frame.ref)) {
      const { resolve, reject, timer } = this.waiting.get(frame.ref);
      clearTimeout(timer);
      this.waiting.delete(frame.ref);
      if (frame.type === "error") reject(new ServerError(frame));
      else resolve(frame);
      return;
    }
    if (frame.type === "error") {
      this.onEvent(frame);
      return;
    }
    if (frame.type === "pong") return;
    this.onEvent(frame);
  }

  closed(ws, code) {
    if (ws !== this.ws) return;
    this.ready = false;
    clearInterval(this.pingTimer);
    for (const { reject, timer } of this.waiting.values()) {
      clearTimeout(timer);
      reject(new SocketClosed());
    }
    this.waiting.clear();
    if (this.stopped) return;
    if (code === 4401) {
      this.onState("logged-out");
      return;
    }
    const delay = backoffDelay(this.attempt++);
    this.onState("reconnecting", delay);
    this.reconnectTimer = setTimeout(() => this.connect(), delay);
  }

  startPings() {
    clearInterval(this.pingTimer);
    const every = Math.max(1000, (this.heartbeat * 1000) / 2);
    // The ping tells presence whether the page is looked at (online) or hidden (away).
    const status = () => (document.visibilityState === "visible" ? "online" : "away");
    this.pingTimer = setInterval(() => this.send({ type: "ping", status: status() }), every);
  }

  send(frame) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  /** Send a frame and wait for its reply (rejects with SocketClosed or ServerError). */
  request(frame, { timeout = this.requestTimeout } = {}) {
    return new Promise((resolve, reject) => {
      if (!this.ready) {
        reject(new SocketClosed());
        return;
      }
      const ref = String(this.nextRef++);
      const timer = setTimeout(() => {
        this.waiting.delete(ref);
        reject(new SocketClosed());
      }, timeout);
      this.waiting.set(ref, { resolve, reject, timer });
      this.send({ ...frame, ref });
    });
  }
}
