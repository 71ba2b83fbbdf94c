// The REST API (PROTOCOL §4) as the page uses it: session cookie plus the CSRF header.

export class ApiError extends Error {
  constructor(status, body) {
    super((body && (body.detail || body.code)) || `HTTP ${status}`);
    this.status = status;
    this.code = (body && body.code) || (status === 0 ? "unavailable" : "invalid");
  }
}

function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

export class Api {
  constructor(root = "/api/") {
    this.root = root;
  }

  async call(method, path, body) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (method !== "GET") headers["X-CSRFToken"] = csrfToken();
    let response;
    try {
      response = await fetch(path.startsWith("/") ? path : this.root + path, {
        method, headers, credentials: "same-origin",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch {
      throw new ApiError(0, { code: "unavailable", detail: "the server cannot be reached" });
    }
    const data = response.status === 204 ? null : await response.json().catch(() => null);
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  get(path, params) {
    const query = params ? "?" + new URLSearchParams(params).toString() : "";
    return this.call("GET", path + query);
  }

  post(path, body = {}) {
    return this.call("POST", path, body);
  }

  /** Every page of a {results, next} listing. */
  async all(path, params) {
    let page = await this.get(path, params);
    const out = [...(page.results ?? page)];
    while (page.next) {
      const next = new URL(page.next, location.href);
      page = await this.call("GET", next.pathname + next.search);
      out.push(...page.results);
    }
    return out;
  }

  myRooms() { return this.all("rooms/", { joined: "true" }); }
  publicRooms() { return this.all("rooms/"); }
  room(id) { return this.get(`rooms/${id}/`); }
  createRoom(name, kind) { return this.post("rooms/", { name, kind }); }
  joinRoom(id) { return this.post(`rooms/${id}/join/`); }
  leaveRoom(id) { return this.post(`rooms/${id}/leave/`); }
  invite(id, userId) { return this.post(`rooms/${id}/invite/`, { user: userId }); }
  openDirect(userId) { return this.post("rooms/direct/", { user: userId }); }
  members(id) { return this.all(`rooms/${id}/members/`); }
  findUsers(search) { return this.get("users/", { search }); }
  messages(id, before, limit = 50) {
    const params = { limit: String(limit) };
    if (before !== null && before !== undefined) params.before = String(before);
    return this.get(`rooms/${id}/messages/`, params);
  }
  around(id, seq, limit = 50) {
    return this.get(`rooms/${id}/messages/`, { around: String(seq), limit: String(limit) });
  }
  search(q, before) {
    const params = { q, limit: "20" };
    if (before) params.before = String(before);
    return this.get("search/", params);
  }
  thread(rootId) { return this.get(`messages/${rootId}/thread/`, { limit: "200" }); }
  threadRead(rootId) { return this.post(`messages/${rootId}/thread/read/`, {}); }
  follow(rootId, on) { return this.call(on ? "POST" : "DELETE", `messages/${rootId}/follow/`); }
  threads() { return this.get("threads/", { limit: "100" }); }
  events(id, since, limit = 200) {
    return this.get(`rooms/${id}/events/`, { since: String(since), limit: String(limit) });
  }
  /** DELETE /api/me/ (PROTOCOL §6): erase the caller's account; the password confirms it. */
  deleteAccount(password) { return this.call("DELETE", "me/", { password }); }
  deleteMessage(messageId) { return this.call("DELETE", `messages/${messageId}/`); }
  ban(roomId, userId, reason) { return this.post(`rooms/${roomId}/members/${userId}/ban/`, { reason }); }
  blocks() { return this.get("blocks/"); }
  block(userId) { return this.post("blocks/", { user: userId }); }
  unblock(userId) { return this.call("DELETE", `blocks/${userId}/`); }
  report(messageId, category, reason) { return this.post(`messages/${messageId}/report/`, { category, reason }); }
  openReports() { return this.all("reports/", { status: "open" }); }
  resolveReport(id, action, reason) { return this.post(`reports/${id}/resolve/`, { action, reason }); }
  /** PROTOCOL §9: {"notify": "all" | "mentions" | "none"}; answers with the room. */
  setNotify(roomId, notify) { return this.call("PATCH", `rooms/${roomId}/membership/`, { notify }); }
  notifications(params = {}) { return this.get("notifications/", params); }
  readNotifications(body) { return this.post("notifications/read/", body); }
  mute(roomId, userId, until) { return this.post(`rooms/${roomId}/members/${userId}/mute/`, { until }); }
}
