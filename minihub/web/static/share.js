// The home page's sharing: the Share dialog and "Shared with me" (_share_dialog.html).
// Everything goes through the hub's REST API (/hub/api/shares, /share-codes, /users/.../shared)
// with the session cookie and the X-XSRFToken header; names are only ever set as text.
"use strict";
(function () {
  const cfg = document.getElementById("share-config");
  if (!cfg) return;
  const API = cfg.dataset.api, ME = cfg.dataset.user, XSRF = cfg.dataset.xsrf;
  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;
  let server = null; // the server the dialog is about ("" is the default one)

  async function api(method, path, body) {
    const headers = { "X-XSRFToken": XSRF, Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const r = await fetch(API + path, {
      method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = r.status === 204 ? null : await r.json().catch(() => null);
    if (!r.ok) throw new Error((data && data.message) || `${r.status} ${r.statusText}`);
    return data;
  }
  const items = (d) => (Array.isArray(d) ? d : (d && d.items) || []);
  const where = (base) => `${base}/${enc(ME)}/${enc(server)}`;
  const when = (iso) => (iso ? new Date(iso).toLocaleString() : "never");

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  }
  function button(label, cls, onclick) {
    const b = el("button", label, cls);
    b.type = "button";
    b.addEventListener("click", onclick);
    return b;
  }
  function problem(message) {
    const p = $("share-error");
    p.textContent = message || "";
    p.hidden = !message;
  }
  async function guarded(fn) {
    problem("");
    try { await fn(); } catch (e) { problem(e.message); }
  }

  // --- who has access -----------------------------------------------------------------------
  async function loadShares() {
    const list = $("share-list");
    const shares = items(await api("GET", where("/shares")));
    list.replaceChildren();
    if (!shares.length) list.append(el("li", "Nobody yet.", "muted"));
    for (const s of shares) {
      const who = s.user ? { user: s.user.name } : { group: s.group.name };
      const li = el("li", undefined, "share");
      li.dataset.kind = s.kind;
      li.dataset.name = s.user ? s.user.name : s.group.name;
      li.append(el("strong", li.dataset.name), " ",
        el("span", s.kind === "group" ? "(group)" : "(user)", "muted"), " ",
        button("Revoke", "small danger revoke", () => guarded(async () => {
          await api("PATCH", where("/shares"), who);
          await loadShares();
        })));
      list.append(li);
    }
  }

  async function loadCodes() {
    const list = $("code-list");
    const codes = items(await api("GET", where("/share-codes")));
    list.replaceChildren();
    for (const c of codes) {
      const li = el("li", undefined, "code");
      li.dataset.id = c.id;
      const used = c.exchange_count === 1 ? "accepted once" : `accepted ${c.exchange_count} times`;
      li.append(el("span", `Link made ${when(c.created_at)}, works until ${when(c.expires_at)}, ${used} `),
        button("Revoke", "small danger revoke-code", () => guarded(async () => {
          await api("DELETE", where("/share-codes") + `?id=${enc(c.id)}`);
          await loadCodes();
        })));
      list.append(li);
    }
  }

  async function names() {
    // Only what the API lists for this user (list:users / list:groups): nothing is guessed.
    const fill = async (listId, path) => {
      const dl = $(listId);
      try {
        for (const x of items(await api("GET", path))) {
          if (x.name !== ME) dl.append(Object.assign(el("option"), { value: x.name }));
        }
      } catch (e) { /* not allowed to list: type the name */ }
    };
    if (cfg.dataset.listUsers === "1") await fill("share-users", "/users");
    if (cfg.dataset.listGroups === "1") await fill("share-groups", "/groups");
  }

  async function open(name) {
    server = name;
    $("share-which").textContent = name ? `the server “${name}”` : "your default server";
    $("code-made").hidden = true;
    problem("");
    $("share-dialog").showModal();
    await guarded(async () => { await loadShares(); await loadCodes(); });
  }

  function setup() {
    const dialog = $("share-dialog");
    if (dialog) {
      for (const b of document.querySelectorAll(".share-open")) {
        b.addEventListener("click", () => open(b.dataset.server));
      }
      $("share-close").addEventListener("click", () => dialog.close());
      $("share-kind").addEventListener("change", (e) => {
        $("share-name").setAttribute("list", e.target.value === "group" ? "share-groups" : "share-users");
      });
      $("share-form").addEventListener("submit", (e) => {
        e.preventDefault();
        const name = $("share-name").value.trim();
        const body = $("share-kind").value === "group" ? { group: name } : { user: name };
        guarded(async () => {
          await api("POST", where("/shares"), body);
          $("share-name").value = "";
          await loadShares();
        });
      });
      $("code-form").addEventListener("submit", (e) => {
        e.preventDefault();
        guarded(async () => {
          const c = await api("POST", where("/share-codes"), { expires_in: Number($("code-expires").value) });
          $("code-url").value = c.full_accept_url || location.origin + c.accept_url;
          $("code-expiry").textContent = when(c.expires_at);
          $("code-made").hidden = false;
          await loadCodes();
        });
      });
      $("code-copy").addEventListener("click", async () => {
        const input = $("code-url");
        try { await navigator.clipboard.writeText(input.value); }
        catch (e) { input.select(); document.execCommand("copy"); }
        $("code-copy").textContent = "Copied";
      });
      names();
    }
    for (const b of document.querySelectorAll(".shared-leave")) {
      b.addEventListener("click", async () => {
        const row = b.closest("tr");
        const path = `/users/${enc(ME)}/shared/${enc(row.dataset.owner)}/${enc(row.dataset.server)}`;
        try {
          await api("DELETE", path);
          const body = row.parentElement;
          row.remove();
          if (!body.children.length) $("shared-with-me").hidden = true;
        } catch (e) { alert(e.message); }
      });
    }
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", setup);
  else setup();
})();
