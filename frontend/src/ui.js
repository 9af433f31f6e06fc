// Small DOM helpers shared by the pages: an element builder, modal dialogs and a notice bar.

/** h("button.primary", {onclick}, "Save") builds an element; children may be nested arrays. */
export function h(tag, attrs, ...children) {
  const [name, ...classes] = tag.split(".");
  const el = document.createElement(name || "div");
  if (classes.length) el.className = classes.join(" ");
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key in el && typeof value !== "string") el[key] = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

/** A modal dialog; resolves with the clicked button's value (or null on Escape). */
export function modal(title, body, buttons) {
  return new Promise((resolve) => {
    const done = (value) => { overlay.remove(); document.removeEventListener("keydown", onKey, true); resolve(value); };
    const onKey = (e) => {
      if (e.key === "Escape") { e.preventDefault(); e.stopPropagation(); done(null); }
      if (e.key === "Enter" && !(e.target instanceof HTMLTextAreaElement)) {
        e.preventDefault(); e.stopPropagation(); done(buttons[buttons.length - 1].value);
      }
    };
    const row = buttons.map((b) => h("button" + (b.primary ? ".primary" : "") + (b.danger ? ".danger" : ""),
      { type: "button", onclick: () => done(b.value) }, b.label));
    const box = h("div.modal", { role: "dialog", "aria-modal": "true", "aria-label": title },
      h("h2", {}, title), h("div.modal-body", {}, body), h("div.modal-buttons", {}, row));
    const overlay = h("div.modal-overlay", {}, box);
    document.body.append(overlay);
    document.addEventListener("keydown", onKey, true);
    const focus = box.querySelector("input, select") || row[row.length - 1];
    focus.focus();
    if (focus instanceof HTMLInputElement) focus.select();
  });
}

export async function confirmDialog(title, message, okLabel = "OK", danger = false) {
  const value = await modal(title, h("p", {}, message), [
    { label: "Cancel", value: false }, { label: okLabel, value: true, primary: !danger, danger },
  ]);
  return value === true;
}

export async function promptDialog(title, label, initial = "") {
  const input = h("input", { type: "text", value: initial, "aria-label": label, spellcheck: "false" });
  const value = await modal(title, h("label.field", {}, label, input), [
    { label: "Cancel", value: null }, { label: "OK", value: "ok", primary: true },
  ]);
  return value === "ok" ? input.value.trim() : null;
}

export async function selectDialog(title, label, options, initial) {
  const select = h("select", { "aria-label": label },
    options.map(([value, text]) => h("option", { value, selected: value === initial }, text)));
  const value = await modal(title, h("label.field", {}, label, select), [
    { label: "Cancel", value: null }, { label: "OK", value: "ok", primary: true },
  ]);
  return value === "ok" ? select.value : null;
}

/**
 * Build one piece of the page (a cell's markdown, one output) so that if it throws, a
 * readable message stands in its place and the pieces after it are still built: one bad
 * cell once stopped a notebook's load, and autosave then wrote only the cells before it.
 */
export function isolated(what, build) {
  try {
    return build();
  } catch (err) {
    console.error(err);
    const why = err && err.message ? err.message : String(err);
    return h("div.render-error", { role: "note" },
      `This ${what} could not be shown (${why}). It is kept unchanged in the notebook.`);
  }
}

let noticeTimer = 0;
/** A short message at the top of the page; errors stay until the next notice. */
export function notice(message, kind = "info") {
  let bar = document.getElementById("notice");
  if (!bar) {
    bar = h("div", { id: "notice", role: "status", "aria-live": "polite" });
    document.body.append(bar);
  }
  bar.textContent = message;
  bar.className = "notice " + kind;
  bar.hidden = false;
  clearTimeout(noticeTimer);
  if (kind !== "error") noticeTimer = setTimeout(() => { bar.hidden = true; }, 4000);
  else bar.onclick = () => { bar.hidden = true; };
}

export function reportError(err) {
  console.error(err);
  notice(err && err.message ? err.message : String(err), "error");
}

export function formatTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  const secs = (Date.now() - d.getTime()) / 1000;
  if (secs < 60) return "seconds ago";
  if (secs < 3600) return `${Math.floor(secs / 60)} min ago`;
  if (secs < 86400) return `${Math.floor(secs / 3600)} h ago`;
  return d.toLocaleDateString(undefined, { year: "numeric", month: "short", day: "numeric" });
}

export function formatSize(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "kB", "MB", "GB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}
