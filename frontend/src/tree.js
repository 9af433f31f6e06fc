// The file browser page (tree/<path>): list, create, upload, rename, copy, delete, download,
// the running notebooks with their kernels, and the running terminals.
import "./style.css";
import "./announcement.js";
import * as api from "./api.js";
import { h, confirmDialog, promptDialog, notice, reportError, formatTime, formatSize } from "./ui.js";
import { uploadFile } from "./upload.js";

const state = {
  path: document.body.dataset.path || "",
  items: [],
  sessions: [],
  terminals: null, // null: this server has no terminals
  sort: { key: "name", asc: true },
  selected: new Set(),
};

const $ = (id) => document.getElementById(id);

// Drawn here, not emoji: servers often lack an emoji font.
const ICONS = {
  directory: '<svg viewBox="0 0 16 16" width="16" height="16"><path fill="#54aeff" d="M1 3.5A1.5 1.5 0 0 1 2.5 2h3.6l1.5 1.5h5.9A1.5 1.5 0 0 1 15 5v7.5a1.5 1.5 0 0 1-1.5 1.5h-11A1.5 1.5 0 0 1 1 12.5z"/></svg>',
  notebook: '<svg viewBox="0 0 16 16" width="16" height="16"><rect x="2.5" y="1.5" width="11" height="13" rx="1.5" fill="#fff" stroke="#f37726"/><circle cx="8" cy="8" r="2.6" fill="none" stroke="#f37726" stroke-width="1.4"/></svg>',
  file: '<svg viewBox="0 0 16 16" width="16" height="16"><path fill="#fff" stroke="#59636e" d="M3.5 1.5h6l3 3v10h-9z"/><path stroke="#59636e" d="M5.5 8h5M5.5 10.5h5"/></svg>',
};

function icon(type) {
  const span = h("span.icon", { "aria-hidden": "true" });
  span.innerHTML = ICONS[type] || ICONS.file;
  return span;
}

function openUrl(item) {
  if (item.type === "directory") return api.pageUrl("tree", item.path);
  if (item.type === "notebook") return api.pageUrl("notebooks", item.path);
  if (/\.(py|md|txt|json|csv|ya?ml|toml|cfg|ini|sh|js|css|html|r|jl|tex|log)$/i.test(item.name) || !/\.\w+$/.test(item.name)) {
    return api.pageUrl("edit", item.path);
  }
  return api.filesUrl(item.path);
}

function sortedItems() {
  const { key, asc } = state.sort;
  const dir = asc ? 1 : -1;
  return [...state.items].sort((a, b) => {
    // Folders first, whichever way the sort goes, as in every file manager.
    if ((a.type === "directory") !== (b.type === "directory")) return a.type === "directory" ? -1 : 1;
    if (key === "last_modified") return dir * (Date.parse(a.last_modified) - Date.parse(b.last_modified));
    return dir * a.name.localeCompare(b.name, undefined, { numeric: true, sensitivity: "base" });
  });
}

function runningPaths() {
  return new Set(state.sessions.map((s) => s.path));
}

function renderBreadcrumbs() {
  const crumbs = [h("a", { href: api.pageUrl("tree", ""), title: "Home folder" }, "Home")];
  let acc = "";
  for (const part of state.path.split("/").filter(Boolean)) {
    acc = acc ? acc + "/" + part : part;
    crumbs.push(h("span.sep", {}, "/"), h("a", { href: api.pageUrl("tree", acc) }, part));
  }
  $("breadcrumbs").replaceChildren(...crumbs);
}

function renderRow(item, running) {
  const checkbox = h("input", {
    type: "checkbox", "aria-label": "Select " + item.name, checked: state.selected.has(item.path),
    onchange: (e) => { e.target.checked ? state.selected.add(item.path) : state.selected.delete(item.path); renderActions(); },
  });
  const isRunning = running.has(item.path);
  return h("tr", { dataset: { path: item.path, type: item.type } },
    h("td.check", {}, checkbox),
    h("td.name", {}, icon(item.type),
      h("a", { href: openUrl(item), target: item.type === "directory" ? undefined : "_blank", rel: "noopener" }, item.name),
      isRunning ? h("span.badge.running", {}, "Running") : null),
    h("td.modified", { title: item.last_modified }, formatTime(item.last_modified)),
    h("td.size", {}, item.type === "directory" ? "" : formatSize(item.size)));
}

function renderList() {
  const running = runningPaths();
  const rows = sortedItems().map((item) => renderRow(item, running));
  if (state.path) {
    rows.unshift(h("tr.up", {}, h("td.check"), h("td.name", { colspan: "3" },
      icon("directory"), h("a", { href: api.pageUrl("tree", api.dirname(state.path)) }, ".."))));
  }
  if (!state.items.length) rows.push(h("tr.empty", {}, h("td", { colspan: "4" }, "This folder is empty.")));
  $("file-rows").replaceChildren(...rows);
  for (const th of document.querySelectorAll("th[data-sort]")) {
    const active = th.dataset.sort === state.sort.key;
    th.setAttribute("aria-sort", active ? (state.sort.asc ? "ascending" : "descending") : "none");
  }
  renderActions();
}

function renderActions() {
  const paths = [...state.selected];
  const items = state.items.filter((i) => state.selected.has(i.path));
  const running = runningPaths();
  $("act-rename").hidden = items.length !== 1;
  $("act-copy").hidden = !items.length || items.some((i) => i.type === "directory");
  $("act-download").hidden = !items.length || items.some((i) => i.type === "directory");
  $("act-delete").hidden = !paths.length;
  $("act-shutdown").hidden = !items.some((i) => running.has(i.path));
  $("select-all").checked = items.length > 0 && items.length === state.items.length;
}

function renderRunning() {
  const rows = state.sessions.map((s) => h("li", {},
    h("a", { href: api.pageUrl("notebooks", s.path), target: "_blank", rel: "noopener" }, s.path),
    h("span.kernel-name", {}, s.kernel ? `${s.kernel.name} · ${s.kernel.execution_state || ""}` : ""),
    h("button.small", { type: "button", onclick: () => shutdown([s]) }, "Shut down")));
  $("running-list").replaceChildren(...(rows.length ? rows : [h("li.empty", {}, "No notebooks are running.")]));
  $("running-count").textContent = String(state.sessions.length);
}

function renderTerminals() {
  $("terminals-panel").hidden = state.terminals === null;
  const item = document.getElementById("new-terminal");
  if (item) item.hidden = state.terminals === null;
  const list = state.terminals || [];
  const rows = list.map((t) => h("li", { dataset: { terminal: t.name } },
    h("a", { href: api.pageUrl("terminals", t.name), target: "_blank", rel: "noopener" }, `Terminal ${t.name}`),
    h("span.when", { title: t.last_activity || "" }, t.last_activity ? "active " + formatTime(t.last_activity) : ""),
    h("button.small", { type: "button", onclick: () => act(() => shutdownTerminal(t.name)) }, "Shut down")));
  $("terminals-list").replaceChildren(...(rows.length ? rows : [h("li.empty", {}, "No terminals are running.")]));
  $("terminals-count").textContent = String(list.length);
}

/** The running terminals, or null when this server has no terminals API (404). */
async function listTerminals() {
  try {
    return (await api.terminals.list()) || [];
  } catch (err) {
    if (err.status === 404) return null;
    throw err;
  }
}

async function refresh() {
  try {
    const [dir, sess, terms] = await Promise.all([
      api.contents.get(state.path, { type: "directory" }), api.sessions.list(), listTerminals(),
    ]);
    state.items = dir.content;
    state.sessions = sess || [];
    state.terminals = terms;
    const present = new Set(state.items.map((i) => i.path));
    for (const p of state.selected) if (!present.has(p)) state.selected.delete(p);
    renderList();
    renderRunning();
    renderTerminals();
  } catch (err) {
    if (err.status === 404) $("file-rows").replaceChildren(h("tr.empty", {}, h("td", { colspan: "4" }, "No such folder: " + state.path)));
    reportError(err);
  }
}

async function shutdown(list) {
  for (const s of list) await api.sessions.remove(s.id).catch(reportError);
  notice(`Shut down ${list.length} notebook${list.length === 1 ? "" : "s"}.`);
  await refresh();
}

async function shutdownTerminal(name) {
  await api.terminals.remove(name);
  notice(`Shut down terminal ${name}.`);
  await refresh();
}

async function newTerminal() {
  const model = await api.terminals.create();
  window.open(api.pageUrl("terminals", model.name), "_blank", "noopener");
  await refresh();
}

async function newNotebook(kernelName) {
  const model = await api.contents.create(state.path, { type: "notebook" });
  // Start its kernel now so the editor opens on the kernel the person picked.
  await api.sessions.create(model.path, kernelName);
  window.open(api.pageUrl("notebooks", model.path), "_blank", "noopener");
  await refresh();
}

async function newItem(type, ext) {
  const model = await api.contents.create(state.path, ext ? { type, ext } : { type });
  if (type === "file") window.open(api.pageUrl("edit", model.path), "_blank", "noopener");
  await refresh();
}

async function renameSelected() {
  const [path] = state.selected;
  const name = await promptDialog("Rename", "New name", api.basename(path));
  if (!name || name === api.basename(path)) return;
  if (name.includes("/")) return notice("A name cannot contain '/'.", "error");
  const dir = api.dirname(path);
  await api.contents.rename(path, dir ? `${dir}/${name}` : name);
  state.selected.clear();
  await refresh();
}

async function copySelected() {
  for (const path of state.selected) await api.contents.copy(path, state.path);
  state.selected.clear();
  await refresh();
}

async function deleteSelected() {
  const paths = [...state.selected];
  const what = paths.length === 1 ? `"${api.basename(paths[0])}"` : `${paths.length} items`;
  if (!(await confirmDialog("Delete", `Delete ${what}? This cannot be undone.`, "Delete", true))) return;
  for (const p of paths) await api.contents.remove(p);
  state.selected.clear();
  notice(`Deleted ${what}.`);
  await refresh();
}

function downloadSelected() {
  // One hidden frame per file: files/?download=1 answers "Content-Disposition: attachment", so
  // each becomes its own download (links clicked in a row would cancel each other's navigation,
  // and an <a download> request skips the headers a proxy in front may add).
  for (const path of state.selected) {
    const frame = h("iframe", { hidden: true, title: "download", src: api.filesUrl(path, true) });
    document.body.append(frame);
    setTimeout(() => frame.remove(), 120000);
  }
}

async function uploadFiles(files) {
  const box = $("uploads");
  for (const file of files) {
    const bar = h("progress", { max: "100", value: "0" });
    const row = h("div.upload", {}, h("span", {}, file.name), bar);
    box.append(row);
    try {
      const target = state.path ? `${state.path}/${file.name}` : file.name;
      await uploadFile(file, target, (frac) => { bar.value = Math.round(frac * 100); });
      row.remove();
      notice(`Uploaded ${file.name}.`);
    } catch (err) {
      row.remove();
      reportError(err);
    }
    await refresh();
  }
}

async function fillNewMenu() {
  const menu = $("new-menu");
  const entries = [];
  try {
    const specs = await api.kernelspecs();
    const names = Object.keys(specs.kernelspecs).sort((a, b) => (a === specs.default ? -1 : b === specs.default ? 1 : a.localeCompare(b)));
    for (const name of names) {
      const spec = specs.kernelspecs[name].spec || {};
      entries.push(h("button", { type: "button", role: "menuitem", dataset: { kernel: name },
        onclick: () => act(() => newNotebook(name)) }, `Notebook: ${spec.display_name || name}`));
    }
  } catch (err) {
    reportError(err);
  }
  entries.push(h("hr"),
    h("button", { type: "button", role: "menuitem", onclick: () => act(() => newItem("directory")) }, "Folder"),
    h("button", { type: "button", role: "menuitem", onclick: () => act(() => newItem("file", ".txt")) }, "Text file"),
    h("button", { type: "button", role: "menuitem", id: "new-terminal", hidden: state.terminals === null, onclick: () => act(newTerminal) }, "Terminal"));
  menu.replaceChildren(...entries);
}

/** Runs an action from a button, reporting its failure instead of throwing it away. */
function act(fn) {
  document.querySelectorAll("details[open]").forEach((d) => d.removeAttribute("open"));
  Promise.resolve().then(fn).catch(reportError);
}

function wireUpDragAndDrop() {
  const zone = $("drop-zone");
  let depth = 0;
  const hasFiles = (e) => e.dataTransfer && [...e.dataTransfer.types].includes("Files");
  document.addEventListener("dragenter", (e) => { if (hasFiles(e)) { depth++; zone.classList.add("dragging"); } });
  document.addEventListener("dragleave", () => { if (--depth <= 0) { depth = 0; zone.classList.remove("dragging"); } });
  document.addEventListener("dragover", (e) => { if (hasFiles(e)) e.preventDefault(); });
  document.addEventListener("drop", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    depth = 0;
    zone.classList.remove("dragging");
    uploadFiles([...e.dataTransfer.files]);
  });
}

function wireUp() {
  $("act-rename").onclick = () => act(renameSelected);
  $("act-copy").onclick = () => act(copySelected);
  $("act-delete").onclick = () => act(deleteSelected);
  $("act-download").onclick = () => act(downloadSelected);
  $("act-shutdown").onclick = () => act(() => shutdown(state.sessions.filter((s) => state.selected.has(s.path))));
  $("act-refresh").onclick = () => act(refresh);
  $("upload-input").onchange = (e) => { uploadFiles([...e.target.files]); e.target.value = ""; };
  $("select-all").onchange = (e) => {
    state.selected = new Set(e.target.checked ? state.items.map((i) => i.path) : []);
    renderList();
  };
  for (const th of document.querySelectorAll("th[data-sort]")) {
    th.querySelector("button").onclick = () => {
      const key = th.dataset.sort;
      state.sort = { key, asc: state.sort.key === key ? !state.sort.asc : key === "name" };
      renderList();
    };
  }
  wireUpDragAndDrop();
  // Other tabs start and stop kernels; keep the list honest without hammering the server.
  setInterval(() => { if (!document.hidden) refresh(); }, 15000);
}

document.title = (state.path ? api.basename(state.path) : "Home") + " - minihub";
renderBreadcrumbs();
wireUp();
fillNewMenu();
refresh();
