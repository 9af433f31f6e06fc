// The notebook editor page (notebooks/<path>): cells, the Jupyter keyboard model, the kernel
// session, saving with checkpoints and on-disk change detection.
import "./style.css";
import "./announcement.js";
import * as api from "./api.js";
import { Kernel } from "./kernel.js";
import { Cell, cellProblem } from "./cell.js";
import { isObject } from "./outputs.js";
import { h, confirmDialog, promptDialog, selectDialog, modal, notice, reportError, formatTime } from "./ui.js";
import { SHORTCUT_HELP, commandKey } from "./commands.js";

/**
 * Autosave every two minutes, as Jupyter. A page may set window.minihubSettings =
 * {autosaveSeconds} before the bundle runs (tests do, so they need not wait two minutes).
 */
function autosaveMs() {
  const seconds = Number((window.minihubSettings || {}).autosaveSeconds);
  return Number.isFinite(seconds) && seconds > 0 ? Math.max(seconds, 0.5) * 1000 : 120000;
}

function kernelLanguage(metadata) {
  if (!isObject(metadata)) return undefined;
  const info = isObject(metadata.language_info) ? metadata.language_info : {};
  const spec = isObject(metadata.kernelspec) ? metadata.kernelspec : {};
  return info.language || spec.language;
}

class Notebook {
  constructor(path) {
    this.path = path;
    this.dir = api.dirname(path);
    this.cells = [];
    this.active = null;
    this.mode = "command";
    this.clipboard = null;
    this.deleted = [];
    this.changeCount = 0;
    this.savedCount = 0;
    this.lastModified = null;
    this.session = null;
    // "loading" | "loaded" | "failed": only a notebook that loaded whole is ever saved.
    this.loadState = "loading";
    // The cells read from the file (or last saved), how many the file had, and which of
    // them a person removed: a save that would drop any other is refused.
    this.fileCells = new Set();
    this.fileCellCount = 0;
    this.removedFileCells = new Set();
    this.checkpointed = false; // made before this session's first save
    this.kernel = new Kernel();
    this.language = "python";
    this.cellsEl = document.getElementById("cells");
    this.kernel.on("status", (s) => this.showKernelStatus(s));
    this.kernel.on("iopub", (m) => this.onIOPub(m));
  }

  get dirty() { return this.changeCount !== this.savedCount; }

  startAutosave(ms) {
    clearInterval(this.autosaveTimer);
    this.autosaveTimer = setInterval(() => {
      if (this.dirty && !this.saving && !this.autosavePaused && this.loadState === "loaded") this.save(false, true);
    }, ms);
  }

  changed() {
    this.changeCount++;
    this.showDirty();
  }

  // ---- loading, kernel session ----

  async load() {
    this.loadState = "loading";
    try {
      this.build(await api.contents.get(this.path, { type: "notebook" }));
      this.loadState = "loaded";
    } catch (err) {
      this.loadState = "failed";
      throw err;
    } finally {
      this.showName();
    }
  }

  /** Every cell is built before the page takes them over: a load is whole or it failed. */
  build(model) {
    const nb = isObject(model) ? model.content : null;
    if (!isObject(nb)) throw new Error("the file holds no notebook");
    if (nb.cells != null && !Array.isArray(nb.cells)) throw new Error("its cells are not a list");
    const fileCells = nb.cells || [];
    this.metadata = nb.metadata ?? {};
    this.nbformatMinor = Number.isInteger(nb.nbformat_minor) ? Math.max(nb.nbformat_minor, 5) : 5;
    const lang = kernelLanguage(this.metadata);
    this.language = typeof lang === "string" && lang ? lang : "python";
    const cells = fileCells.map((json) => this.makeCell(json));
    this.lastModified = model.last_modified;
    this.autosavePaused = false;
    this.cellsEl.replaceChildren(...cells.map((c) => c.el));
    this.cells = cells;
    this.fileCells = new Set(cells);
    this.fileCellCount = fileCells.length;
    this.removedFileCells = new Set();
    if (!this.cells.length) this.insertCell(0, { cell_type: "code", source: "" });
    this.select(this.cells[0], false);
    this.savedCount = this.changeCount;
    if (model.message) notice(`${model.message}. minihub shows what it can; saving is refused until that is fixed.`, "error");
  }

  /** A cell from JSON; one it cannot edit, or whose building throws, is kept as it is. */
  makeCell(json) {
    const problem = cellProblem(json);
    if (problem) return Cell.preserved(this, json, problem);
    try {
      return new Cell(this, json);
    } catch (err) {
      console.error(err);
      return Cell.preserved(this, json, err && err.message ? err.message : String(err));
    }
  }

  showLoadFailure(err) {
    this.cellsEl.replaceChildren(h("div.load-error", { role: "alert" },
      h("p", {}, `This notebook cannot be opened: ${err && err.message ? err.message : err}`),
      h("p", {}, "This page will not be saved, so the file on disk stays exactly as it is. You can look at it or fix it in the ",
        h("a", { href: api.pageUrl("edit", this.path) }, "text editor"), ".")));
    const status = document.getElementById("kernel-status");
    status.dataset.status = "none"; // no kernel is started for a notebook that did not open
    status.textContent = "No kernel";
    this.showDirty();
  }

  async startSession() {
    const specs = await api.kernelspecs();
    this.specs = specs;
    const sessions = await api.sessions.list();
    let session = sessions.find((s) => s.path === this.path);
    if (!session) {
      let name = isObject(this.metadata.kernelspec) ? this.metadata.kernelspec.name : undefined;
      if (typeof name !== "string") name = "";
      if (!name || !specs.kernelspecs[name]) {
        if (name) notice(`Kernel "${name}" is not installed here; using "${specs.default}".`, "error");
        name = specs.default;
      }
      session = await api.sessions.create(this.path, name);
    }
    this.useSession(session);
  }

  useSession(session) {
    this.session = session;
    const name = session.kernel.name;
    const spec = (this.specs && this.specs.kernelspecs[name] && this.specs.kernelspecs[name].spec) || {};
    if (isObject(this.metadata)) this.metadata.kernelspec = { name, display_name: spec.display_name || name, language: spec.language || this.language };
    document.getElementById("kernel-name").textContent = spec.display_name || name;
    this.kernel.setStatus("starting");
    this.kernel.connect(session.kernel.id);
  }

  showKernelStatus(status) {
    const el = document.getElementById("kernel-status");
    el.dataset.status = status;
    el.textContent = status.charAt(0).toUpperCase() + status.slice(1);
    el.title = `Kernel ${status}`;
    if (status === "dead") notice("The kernel has died. Restart it from the Kernel menu.", "error");
    if (status === "idle" || status === "dead" || status === "restarting") {
      // After a restart or death no replies will come for cells still marked running.
      if (status !== "idle") for (const c of this.cells) if (c.running) c.setRunning(false);
    }
  }

  onIOPub(msg) {
    if (msg.header.msg_type !== "update_display_data") return;
    const id = msg.content.transient && msg.content.transient.display_id;
    if (id) for (const c of this.cells) c.updateDisplay(id, msg.content);
  }

  // ---- cells ----

  insertCell(index, json) {
    const cell = this.makeCell(json);
    const before = this.cells[index];
    this.cellsEl.insertBefore(cell.el, before ? before.el : null);
    this.cells.splice(index, 0, cell);
    this.changed();
    return cell;
  }

  indexOf(cell) { return this.cells.indexOf(cell); }

  select(cell, edit) {
    if (!cell) return;
    if (this.active && this.active !== cell) this.active.el.classList.remove("selected", "editing");
    this.active = cell;
    cell.el.classList.add("selected");
    cell.el.classList.toggle("editing", edit);
    this.mode = edit ? "edit" : "command";
    document.body.dataset.mode = this.mode;
    document.getElementById("cell-type").value = cell.type;
    if (!edit) {
      cell.el.focus({ preventScroll: true });
      cell.el.scrollIntoView({ block: "nearest" });
    }
  }

  commandMode() {
    const cell = this.active;
    if (!cell) return;
    cell.hideInspect();
    cell.view.contentDOM.blur();
    this.select(cell, false);
  }

  editCell(cell) {
    this.select(cell, true);
    cell.focusEditor();
  }

  onCellMouseDown(cell, event) {
    if (cell.editorEl.contains(event.target) && !cell.editorEl.hidden) return; // editor focus handles it
    if (event.target.closest("input, a, button, iframe")) return;
    if (cell !== this.active || this.mode === "edit") {
      event.preventDefault();
      if (this.mode === "edit") this.active.view.contentDOM.blur();
      this.select(cell, false);
    }
  }

  moveEditTo(cell, dir) {
    const next = this.cells[this.indexOf(cell) + dir];
    if (!next) return false;
    this.select(next, true);
    next.focusEditor(dir < 0 ? "end" : "start");
    return true;
  }

  selectRelative(dir) {
    const next = this.cells[this.indexOf(this.active) + dir];
    if (next) this.select(next, false);
  }

  insertRelative(dir, json = { cell_type: "code", source: "" }) {
    const index = this.indexOf(this.active) + (dir > 0 ? 1 : 0);
    const cell = this.insertCell(index, json);
    this.select(cell, false);
    return cell;
  }

  deleteActive() {
    const cell = this.active;
    const index = this.indexOf(cell);
    this.deleted.push({ index, json: cell.toJSON() });
    cell.el.remove();
    this.cells.splice(index, 1);
    this.removedByPerson(cell);
    if (!this.cells.length) this.insertCell(0, { cell_type: "code", source: "" });
    this.select(this.cells[Math.min(index, this.cells.length - 1)], false);
    this.changed();
  }

  removedByPerson(cell) {
    if (this.fileCells.has(cell)) this.removedFileCells.add(cell);
  }

  undoDelete() {
    const last = this.deleted.pop();
    if (!last) return;
    this.select(this.insertCell(Math.min(last.index, this.cells.length), last.json), false);
  }

  copyActive() { this.clipboard = this.active.toJSON(); }

  cutActive() { this.copyActive(); this.deleteActive(); }

  paste(dir) {
    if (!this.clipboard) return;
    this.insertRelative(dir, { ...this.clipboard, id: undefined });
  }

  moveActive(dir) {
    const cell = this.active;
    const i = this.indexOf(cell);
    const j = i + dir;
    if (j < 0 || j >= this.cells.length) return;
    this.cells.splice(i, 1);
    this.cells.splice(j, 0, cell);
    const ref = this.cells[j + 1];
    this.cellsEl.insertBefore(cell.el, ref ? ref.el : null);
    this.changed();
    this.select(cell, false);
  }

  setType(type) {
    if (!this.active) return;
    this.active.setType(type);
    this.changed();
    this.select(this.active, this.mode === "edit");
  }

  splitCell(cell) {
    if (cell.preserved) return notice("This cell cannot be edited; delete it to remove it.", "error");
    const pos = cell.view.state.selection.main.head;
    const text = cell.source;
    cell.setSource(text.slice(0, pos).replace(/\n$/, ""));
    const index = this.indexOf(cell) + 1;
    const next = this.insertCell(index, { cell_type: cell.type, source: text.slice(pos).replace(/^\n/, "") });
    this.select(next, true);
    next.focusEditor("start");
  }

  mergeBelow() {
    const cell = this.active;
    const next = this.cells[this.indexOf(cell) + 1];
    if (!next) return;
    if (cell.preserved || next.preserved) return notice("A cell minihub cannot edit cannot be merged; delete it to remove it.", "error");
    cell.setSource(cell.source + "\n" + next.source);
    next.el.remove();
    this.cells.splice(this.indexOf(next), 1);
    this.removedByPerson(next);
    this.changed();
    this.select(cell, false);
  }

  clearAllOutputs() {
    for (const c of this.cells) if (c.type === "code") { c.clearOutputs(); c.executionCount = null; c.updatePrompt(); }
  }

  // ---- running ----

  runCells(cells) {
    for (const cell of cells) this.execute(cell);
  }

  execute(cell) {
    if (cell.type === "markdown") { cell.renderMarkdownCell(); return; }
    if (cell.type !== "code") return;
    cell.hideInspect();
    cell.clearOutputs();
    try {
      cell.setRunning(true);
      cell.kernel = this.kernel;
      this.kernel.execute(cell.source, {
        onIOPub: (m) => cell.handleIOPub(m),
        onStdin: (m) => { if (m.header.msg_type === "input_request") cell.showInputPrompt(m.content, (v) => this.kernel.inputReply(v)); },
        onReply: (m) => {
          cell.setRunning(false);
          if (Number.isInteger(m.content.execution_count) && m.content.execution_count > 0) cell.executionCount = m.content.execution_count;
          cell.updatePrompt();
          this.changed();
        },
      });
    } catch (err) {
      cell.setRunning(false);
      reportError(err);
    }
  }

  runAndAdvance(cell) {
    this.execute(cell);
    const next = this.cells[this.indexOf(cell) + 1];
    this.select(next || this.insertCell(this.cells.length, { cell_type: "code", source: "" }), false);
  }

  runAndInsert(cell) {
    this.execute(cell);
    const next = this.insertCell(this.indexOf(cell) + 1, { cell_type: "code", source: "" });
    this.select(next, true);
    next.focusEditor();
  }

  runAll() { this.runCells(this.cells); }

  runAbove() { this.runCells(this.cells.slice(0, this.indexOf(this.active))); }

  runBelow() { this.runCells(this.cells.slice(this.indexOf(this.active))); }

  // ---- kernel ----

  async interrupt() {
    await this.kernel.interrupt();
    notice("Interrupt sent.");
  }

  async restart(then) {
    const ask = { clear: "Restart the kernel and clear all outputs?", run: "Restart the kernel and run all cells?" }[then]
      || "Restart the kernel? All variables will be lost.";
    if (!(await confirmDialog("Restart kernel", ask, "Restart", true))) return;
    for (const c of this.cells) if (c.running) c.setRunning(false);
    await this.kernel.restart();
    if (then === "clear") this.clearAllOutputs();
    if (then === "run") this.runAll();
  }

  async changeKernel() {
    const specs = await api.kernelspecs();
    this.specs = specs;
    const options = Object.entries(specs.kernelspecs).map(([n, s]) => [n, (s.spec && s.spec.display_name) || n]);
    const name = await selectDialog("Change kernel", "Kernel", options, this.session && this.session.kernel.name);
    if (!name || (this.session && name === this.session.kernel.name)) return;
    this.kernel.close();
    const session = await api.sessions.changeKernel(this.session.id, name);
    this.useSession(session);
    this.changed();
  }

  async shutdownKernel() {
    if (!(await confirmDialog("Shut down kernel", "Shut down this notebook's kernel?", "Shut down", true))) return;
    this.kernel.close();
    await api.sessions.remove(this.session.id);
    this.kernel.setStatus("dead");
    notice("Kernel shut down. Use Kernel > Restart to start a new one.");
    this.session = null;
  }

  async restartOrStart(then) {
    if (this.session) return this.restart(then);
    await this.startSession();
  }

  // ---- saving ----

  toJSON(cells = this.cells) {
    const metadata = isObject(this.metadata) ? { ...this.metadata } : this.metadata;
    return { cells: cells.map((c) => c.toJSON()), metadata, nbformat: 4, nbformat_minor: this.nbformatMinor };
  }

  /** How many cells read from the file would a save now drop that no person removed. */
  missingFileCells() {
    const present = this.cells.filter((c) => this.fileCells.has(c)).length;
    return Math.max(0, this.fileCellCount - present - this.removedFileCells.size);
  }

  /** Why this page must not save now (null when it may). */
  saveRefusal() {
    if (this.loadState === "loading") return "The notebook is still opening; it is not saved yet.";
    if (this.loadState !== "loaded") return "This notebook did not open, so it is not saved: the file on disk is unchanged.";
    const missing = this.missingFileCells();
    if (missing) {
      return `Not saved: ${missing} cells read from the file are missing from this page, and saving would delete them from the file. `
        + "Reload the page to get them back.";
    }
    return null;
  }

  /** A checkpoint of the file as it was, before this session first overwrites it. */
  async checkpointFirst(auto) {
    if (this.checkpointed) return true;
    try {
      await api.contents.checkpoint(this.path);
      this.checkpointed = true;
      return true;
    } catch (err) {
      if (auto) {
        this.autosavePaused = true;
        notice(`Autosave is paused: a checkpoint of the file could not be made first (${err.message}). Save to decide.`, "error");
        return false;
      }
      return confirmDialog("No checkpoint",
        `A checkpoint of the file on disk could not be made (${err.message}). Save over it anyway?`, "Save", true);
    }
  }

  afterSave(saved) {
    this.fileCells = new Set(saved);
    this.fileCellCount = saved.length;
    this.removedFileCells = new Set([...this.removedFileCells].filter((c) => this.fileCells.has(c)));
  }

  async save(checkpoint = false, auto = false) {
    if (this.saving) return;
    const refusal = this.saveRefusal();
    if (refusal) { notice(refusal, "error"); return; }
    this.saving = true;
    try {
      const disk = await api.contents.get(this.path, { content: false });
      // Any other time, earlier too (a restored backup, a git checkout), means someone else wrote it.
      if (this.lastModified && Date.parse(disk.last_modified) !== Date.parse(this.lastModified)) {
        if (auto) {
          this.autosavePaused = true; // said once; a person decides with the next save
          notice("The file changed on disk; autosave is paused until you save.", "error");
          return;
        }
        const ok = await confirmDialog("File changed on disk",
          "The notebook was changed on disk since it was opened or last saved. Overwrite it with this version?", "Overwrite", true);
        if (!ok) return;
      }
      if (!(await this.checkpointFirst(auto))) return;
      const count = this.changeCount;
      const cells = this.cells.slice();
      const model = await api.contents.save(this.path, { type: "notebook", format: "json", content: this.toJSON(cells) });
      this.afterSave(cells);
      this.lastModified = model.last_modified;
      this.savedCount = count;
      this.autosavePaused = false;
      if (checkpoint) await api.contents.checkpoint(this.path);
      this.showDirty();
      if (!auto) notice(checkpoint ? "Saved and checkpointed." : "Saved.");
    } catch (err) {
      reportError(err);
    } finally {
      this.saving = false;
    }
  }

  async revert() {
    const list = await api.contents.checkpoints(this.path);
    if (!list.length) return notice("This notebook has no checkpoint yet: File > Save and checkpoint makes one.", "error");
    const cp = list[list.length - 1];
    const when = new Date(cp.last_modified).toLocaleString();
    if (!(await confirmDialog("Revert to checkpoint", `Revert to the checkpoint of ${when}? Unsaved changes are lost.`, "Revert", true))) return;
    await api.contents.restore(this.path, cp.id);
    try {
      await this.load();
    } catch (err) {
      this.showLoadFailure(err);
      throw err;
    }
    notice("Reverted to the checkpoint.");
  }

  async rename() {
    const name = await promptDialog("Rename notebook", "Name", api.basename(this.path));
    if (!name || name === api.basename(this.path)) return;
    const full = name.endsWith(".ipynb") ? name : name + ".ipynb";
    const newPath = this.dir ? `${this.dir}/${full}` : full;
    const model = await api.contents.rename(this.path, newPath);
    this.path = model.path;
    if (this.session) this.session = await api.sessions.rename(this.session.id, model.path).catch(() => this.session);
    history.replaceState(null, "", api.pageUrl("notebooks", this.path));
    this.showName();
  }

  showName() {
    document.getElementById("nb-name").textContent = api.basename(this.path).replace(/\.ipynb$/, "");
    this.showDirty();
  }

  showDirty() {
    const el = document.getElementById("save-state");
    const failed = this.loadState === "failed";
    el.textContent = failed ? "Not opened: nothing is saved" : this.dirty ? "Unsaved changes"
      : this.lastModified ? `Saved ${formatTime(this.lastModified)}` : "";
    el.classList.toggle("dirty", this.dirty || failed);
    document.body.dataset.load = this.loadState;
    document.title = `${this.dirty ? "* " : ""}${api.basename(this.path)} - minihub`;
  }
}

// ---- the page ----

const nb = new Notebook(document.body.dataset.path);
window.minihubNotebook = nb; // lets tests and the console see the model

function act(fn) {
  document.querySelectorAll("details[open]").forEach((d) => d.removeAttribute("open"));
  Promise.resolve().then(fn).catch(reportError);
}

const ACTIONS = {
  "save": () => nb.save(true),
  "revert": () => nb.revert(),
  "rename": () => nb.rename(),
  "download": () => { location.href = api.filesUrl(nb.path, true); },
  "open-tree": () => window.open(api.pageUrl("tree", nb.dir), "_blank", "noopener"),
  "cut": () => nb.cutActive(),
  "copy": () => nb.copyActive(),
  "paste": () => nb.paste(1),
  "paste-above": () => nb.paste(-1),
  "delete": () => nb.deleteActive(),
  "undo-delete": () => nb.undoDelete(),
  "split": () => nb.splitCell(nb.active),
  "merge": () => nb.mergeBelow(),
  "move-up": () => nb.moveActive(-1),
  "move-down": () => nb.moveActive(1),
  "insert-above": () => nb.insertRelative(-1),
  "insert-below": () => nb.insertRelative(1),
  "run": () => nb.runAndAdvance(nb.active),
  "run-all": () => nb.runAll(),
  "run-above": () => nb.runAbove(),
  "run-below": () => nb.runBelow(),
  "to-code": () => nb.setType("code"),
  "to-markdown": () => nb.setType("markdown"),
  "to-raw": () => nb.setType("raw"),
  "clear-output": () => nb.active.clearOutputs(),
  "clear-all": () => nb.clearAllOutputs(),
  "interrupt": () => nb.interrupt(),
  "restart": () => nb.restartOrStart(),
  "restart-clear": () => nb.restartOrStart("clear"),
  "restart-run": () => nb.restartOrStart("run"),
  "reconnect": () => nb.kernel.reconnect(),
  "change-kernel": () => nb.changeKernel(),
  "shutdown": () => nb.shutdownKernel(),
  "shortcuts": () => modal("Keyboard shortcuts", SHORTCUT_HELP(), [{ label: "Close", value: null, primary: true }]),
};

document.addEventListener("click", (e) => {
  const el = e.target.closest("[data-action]");
  if (el && ACTIONS[el.dataset.action]) { e.preventDefault(); act(ACTIONS[el.dataset.action]); }
  else if (!e.target.closest("details")) document.querySelectorAll("details[open]").forEach((d) => d.removeAttribute("open"));
});
document.getElementById("cell-type").addEventListener("change", (e) => act(() => nb.setType(e.target.value)));
document.getElementById("nb-name").addEventListener("click", () => act(() => nb.rename()));

document.addEventListener("keydown", (e) => {
  if (document.querySelector(".modal-overlay")) return;
  if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "s") { e.preventDefault(); act(() => nb.save(true)); return; }
  if (nb.mode !== "command" || e.target.closest("input, textarea, select, .cm-editor")) return;
  const action = commandKey(e);
  if (!action) return;
  e.preventDefault();
  const run = typeof action === "function" ? () => action(nb) : ACTIONS[action];
  act(run);
});

window.addEventListener("beforeunload", (e) => {
  if (!nb.dirty || nb.loadState !== "loaded") return;
  e.preventDefault();
  e.returnValue = "";
});

nb.startAutosave(autosaveMs());
setInterval(() => nb.showDirty(), 30000);

(async () => {
  try {
    await nb.load();
  } catch (err) {
    reportError(err);
    nb.showLoadFailure(err);
    return;
  }
  try {
    await nb.startSession();
  } catch (err) {
    nb.kernel.setStatus("dead");
    reportError(err);
  }
})();
