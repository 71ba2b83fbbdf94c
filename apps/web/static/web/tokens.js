// The API token page (PROTOCOL §10): list, create (the secret shown once), revoke.
// Text from the server goes in with textContent only.

import { Api } from "./api.js";

const api = new Api("/api/");
const $ = (id) => document.getElementById(id);

function when(value) {
  return value ? new Date(value).toLocaleString() : "—";
}

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

async function load() {
  const tokens = await api.get("tokens/");
  const list = $("token-list");
  list.replaceChildren();
  for (const token of tokens) {
    const row = document.createElement("tr");
    row.dataset.id = token.id;
    row.append(cell(token.name), cell(token.scopes.join(", ")), cell(when(token.created_at)),
      cell(token.expires_at ? when(token.expires_at) : "never"), cell(when(token.last_used_at)));
    const revoke = document.createElement("button");
    revoke.type = "button";
    revoke.className = "danger";
    revoke.textContent = "Revoke";
    revoke.addEventListener("click", async () => {
      if (!confirm(`Revoke “${token.name}”? Programs using it stop working at once.`)) return;
      await api.call("DELETE", `tokens/${token.id}/`);
      await load();
    });
    const actions = document.createElement("td");
    actions.append(revoke);
    row.append(actions);
    list.append(row);
  }
  $("token-empty").hidden = tokens.length > 0;
}

$("token-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const scope = form.elements.scope.value;
  const days = form.elements.expiry.value;
  const body = {
    name: form.elements.name.value,
    scopes: scope === "write" ? ["read", "write"] : ["read"],
  };
  if (days) body.expires_at = new Date(Date.now() + Number(days) * 86400000).toISOString();
  $("token-error").textContent = "";
  try {
    const created = await api.post("tokens/", body);
    $("token-secret-value").textContent = created.token;
    $("token-secret").hidden = false;
    form.reset();
    await load();
  } catch (error) {
    $("token-error").textContent = error.message;
  }
});

$("token-copy").addEventListener("click", () => {
  navigator.clipboard?.writeText($("token-secret-value").textContent);
});

$("token-secret-done").addEventListener("click", () => {
  $("token-secret-value").textContent = "";
  $("token-secret").hidden = true;
});

load().catch((error) => { $("token-error").textContent = error.message; });
