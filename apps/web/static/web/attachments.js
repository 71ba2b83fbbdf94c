// Attachments in the chat page (PROTOCOL §8): files picked, dropped or pasted are uploaded at
// once (POST /api/uploads/ with XMLHttpRequest, for its upload progress events), then sent as
// the message's `attachments`. Images show as thumbnails (the full image opens in a dialog),
// anything else as a download link. The server makes thumbnails after the upload: until then
// `thumbnail_url` is null and the page asks GET /api/uploads/{id}/ again a few times.

function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

export function formatSize(bytes) {
  if (bytes >= 1048576) return `${(bytes / 1048576).toFixed(bytes % 1048576 ? 1 : 0)} MiB`;
  if (bytes >= 1024) return `${Math.round(bytes / 1024)} KiB`;
  return `${bytes} bytes`;
}

const IMAGE_TYPES = new Set(["image/png", "image/jpeg", "image/gif", "image/webp"]);
export const isImage = (file) => IMAGE_TYPES.has(file.content_type);

/** The files chosen for the next message: each uploads as soon as it is added. */
export class PendingFiles {
  constructor({ apiRoot, maxBytes, onChange }) {
    this.apiRoot = apiRoot;
    this.maxBytes = maxBytes;
    this.onChange = onChange;
    this.items = []; // {key, file, status: uploading|done|failed, loaded, upload, error, preview}
    this.nextKey = 1;
  }

  /** Add files; the ones over the size limit are refused here with a message (returned). */
  add(files) {
    const refused = [];
    for (const file of files) {
      if (file.size > this.maxBytes) {
        refused.push(`${file.name || "The file"} is ${formatSize(file.size)}: files can be at most ${formatSize(this.maxBytes)}.`);
        continue;
      }
      const item = { key: this.nextKey++, file, status: "uploading", loaded: 0, upload: null, error: null, preview: null };
      if (IMAGE_TYPES.has(file.type)) item.preview = URL.createObjectURL(file);
      this.items.push(item);
      this.send(item);
    }
    this.onChange();
    return refused;
  }

  send(item) {
    const xhr = new XMLHttpRequest();
    item.xhr = xhr;
    xhr.open("POST", this.apiRoot + "uploads/");
    xhr.setRequestHeader("X-CSRFToken", csrfToken());
    xhr.setRequestHeader("Accept", "application/json");
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) { item.loaded = e.loaded / e.total; this.onChange(); }
    });
    xhr.addEventListener("load", () => {
      const body = xhr.response || {};
      if (xhr.status === 201) {
        item.status = "done";
        item.loaded = 1;
        item.upload = body;
      } else {
        item.status = "failed";
        item.error = xhr.status === 413
          ? `${item.file.name} is too large: files can be at most ${formatSize(this.maxBytes)}.`
          : `${item.file.name} was refused: ${body.detail || `HTTP ${xhr.status}`}`;
      }
      this.onChange(item.error);
    });
    xhr.addEventListener("error", () => {
      item.status = "failed";
      item.error = `${item.file.name} could not be uploaded (connection lost).`;
      this.onChange(item.error);
    });
    const form = new FormData();
    form.append("file", item.file, item.file.name);
    xhr.send(form);
  }

  remove(key) {
    const index = this.items.findIndex((i) => i.key === key);
    if (index < 0) return;
    const [item] = this.items.splice(index, 1);
    if (item.status === "uploading") item.xhr.abort();
    if (item.preview) URL.revokeObjectURL(item.preview);
    this.onChange();
  }

  get busy() { return this.items.some((i) => i.status === "uploading"); }
  get ready() { return this.items.filter((i) => i.status === "done"); }

  /** Take the uploaded files for a message (the failed ones stay for the user to remove). */
  take() {
    const done = this.ready;
    this.items = this.items.filter((i) => i.status !== "done");
    for (const item of done) if (item.preview) URL.revokeObjectURL(item.preview);
    this.onChange();
    return done.map((i) => i.upload);
  }
}

/** The composer's list of pending files, with a progress bar each. */
export function renderPending(pending, el) {
  return pending.items.map((item) => el("li", { class: `pending-file ${item.status}`, dataset: { key: String(item.key) } },
    item.preview ? el("img", { src: item.preview, alt: "", class: "pending-preview" }) : null,
    el("span", { class: "pending-name" }, item.file.name),
    item.status === "uploading"
      ? el("progress", { max: "100", value: String(Math.round(item.loaded * 100)), "aria-label": `Uploading ${item.file.name}` })
      : el("span", { class: "pending-status" }, item.status === "done" ? formatSize(item.file.size) : "failed"),
    el("button", { type: "button", class: "pending-remove", "aria-label": `Remove ${item.file.name}`, onclick: () => pending.remove(item.key) }, "✕")));
}

/**
 * Thumbnails not made yet: ask the upload endpoint again, further apart each time, for about
 * two minutes (a busy worker can take a while). What it learns is kept by upload id, not on
 * the file object it was given: the timeline may replace a message (an edit, a refetch) with
 * a fresh copy whose thumbnail_url is still null, and that copy must get the thumbnail too.
 */
export class ThumbnailWatch {
  constructor(api, onReady) {
    this.api = api;
    this.onReady = onReady;
    this.watching = new Set();
    this.ready = new Map(); // upload id -> thumbnail_url
  }

  watch(file) {
    if (!isImage(file) || file.thumbnail_url) return;
    if (this.ready.has(file.id)) {
      file.thumbnail_url = this.ready.get(file.id);
      return;
    }
    if (this.watching.has(file.id)) return;
    this.watching.add(file.id);
    const delays = [700, 1000, 1500, 2500, 4000, 6000, 10000, 15000, 20000, 30000, 30000];
    const poll = async (attempt) => {
      try {
        const fresh = await this.api.get(`uploads/${file.id}/`);
        if (fresh.thumbnail_url) {
          this.ready.set(file.id, fresh.thumbnail_url);
          this.watching.delete(file.id);
          file.thumbnail_url = fresh.thumbnail_url;
          this.onReady(file);
          return;
        }
      } catch {
        // gone (deleted) or not reachable: try again below, or give up
      }
      if (attempt + 1 < delays.length) setTimeout(() => poll(attempt + 1), delays[attempt + 1]);
      else this.watching.delete(file.id);
    };
    setTimeout(() => poll(0), delays[0]);
  }
}

/** A message's files: images as thumbnails (a button opening the full image), others as links. */
export function renderFiles(files, el, { openImage, watch }) {
  if (!files || !files.length) return null;
  return el("ul", { class: "files", "aria-label": "Attachments" }, files.map((file) => {
    if (isImage(file)) {
      watch(file);
      return el("li", { class: "file image" },
        el("button", { type: "button", class: "thumb", "aria-label": `Open image ${file.name}`, onclick: () => openImage(file) },
          el("img", {
            src: file.thumbnail_url || file.url, alt: file.name, loading: "lazy",
            width: file.width ? String(Math.min(320, file.width)) : null,
            class: file.thumbnail_url ? "thumbnail" : "thumbnail pending",
          })));
    }
    return el("li", { class: "file" },
      el("a", { href: file.url, download: file.name, class: "download" }, file.name),
      el("span", { class: "file-size" }, ` (${formatSize(file.size)})`));
  }));
}

/** Files from a list of DataTransfer items (drop or paste). */
export function filesOf(dataTransfer) {
  if (!dataTransfer) return [];
  if (dataTransfer.files && dataTransfer.files.length) return [...dataTransfer.files];
  return [...(dataTransfer.items || [])].filter((i) => i.kind === "file").map((i) => i.getAsFile()).filter(Boolean);
}
