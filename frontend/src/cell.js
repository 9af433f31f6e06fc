// One notebook cell: its CodeMirror editor, rendered markdown and outputs, and the kernel
// messages that fill those outputs in.
import { Prec } from "@codemirror/state";
import { startCompletion, completionStatus, acceptCompletion } from "@codemirror/autocomplete";
import { indentMore, indentLess } from "@codemirror/commands";
import { EditorState, EditorView, keymap, Compartment, cellExtensions, languageFor } from "./editor-setup.js";
import { renderOutput, joinText, ansiToHtml, collapseCarriageReturns, appendStream, isObject, isText, clip, storableBundle } from "./outputs.js";
import { renderMarkdown } from "./markdown.js";
import { uuid } from "./kernel.js";
import { h, isolated, notice } from "./ui.js";

// A kernel's first completion loads jedi, which takes seconds on a busy machine; a late
// reply is still wanted unless the text changed meanwhile (then it is dropped).
const REPLY_MS = 60000;

/** Kernel cursor positions count code points; JavaScript strings count UTF-16 units. */
export function toCodePoints(text, utf16Pos) {
  return [...text.slice(0, utf16Pos)].length;
}

export function toUtf16(text, codePointPos) {
  let units = 0, points = 0;
  for (const ch of text) { if (points >= codePointPos) break; units += ch.length; points++; }
  return units;
}

// A cell with more outputs shows this many and says how many more the file holds.
const SHOWN_OUTPUTS = 500;
const CELL_TYPES = new Set(["code", "markdown", "raw"]);

/** Why the page cannot edit this cell as a cell (null when it can). */
export function cellProblem(json) {
  if (!isObject(json)) return "this cell is not a JSON object";
  if (json.cell_type !== undefined && !CELL_TYPES.has(json.cell_type)) return `unknown cell type ${JSON.stringify(json.cell_type)}`;
  if (json.source != null && !isText(json.source)) return "its source is not text";
  if (json.metadata != null && !isObject(json.metadata)) return "its metadata is not an object";
  if (json.outputs != null && !Array.isArray(json.outputs)) return "its outputs are not a list";
  if (json.attachments != null && !isObject(json.attachments)) return "its attachments are not an object";
  return null;
}

function jsonPreview(value) {
  let text;
  try { text = JSON.stringify(value, null, 1) ?? String(value); } catch (err) { text = `(cannot be shown: ${err.message})`; }
  const [head, note] = clip(text, 20000);
  return note ? head + "\n…" : head;
}

export class Cell {
  /**
   * A cell the page cannot edit (see cellProblem), or whose building threw: shown read-only
   * as its JSON and saved back exactly as it was read, so the save never drops or changes it.
   */
  static preserved(nb, json, problem) {
    const cell = new Cell(nb, { cell_type: "raw", source: jsonPreview(json) }, { readOnly: true });
    cell.preserved = { json, problem };
    cell.el.classList.add("preserved");
    cell.editorEl.before(h("div.cell-problem", { role: "note" },
      `minihub cannot edit this cell: ${problem}. It is shown as JSON and saved back exactly as it was; delete it to remove it.`));
    return cell;
  }

  constructor(nb, json, { readOnly = false } = {}) {
    this.nb = nb;
    this.preserved = null;
    this.type = json.cell_type || "code";
    this.cellId = json.id || uuid().slice(0, 8);
    this.metadata = json.metadata || {};
    this.attachments = json.attachments;
    // Outputs read from the file are kept as they are (whatever they hold) and saved back so.
    this.outputs = [...(json.outputs || [])];
    this.fileOutputs = new Set(this.outputs);
    this.outputEls = new Map();
    this.executionCount = json.execution_count ?? null;
    this.running = false;
    this.clearPending = false;
    this.pendingCompletion = null;
    this.language = new Compartment();
    this.buildDom();
    this.view = new EditorView({
      parent: this.editorEl,
      state: EditorState.create({ doc: joinText(json.source), extensions: this.extensions(readOnly) }),
    });
    this.renderOutputs();
    this.updatePrompt();
    if (this.type === "markdown" && this.source.trim()) this.renderMarkdownCell();
  }

  buildDom() {
    this.promptEl = h("div.prompt.input-prompt");
    this.editorEl = h("div.editor");
    this.renderedEl = h("div.rendered", { hidden: true, ondblclick: () => this.nb.editCell(this) });
    this.inspectEl = h("div.inspect", { hidden: true });
    this.outputsEl = h("div.outputs", { role: "log" });
    this.outputPromptEl = h("div.prompt.output-prompt");
    this.el = h("div.cell", { tabindex: "-1", onmousedown: (e) => this.nb.onCellMouseDown(this, e) },
      h("div.cell-input", {}, this.promptEl, h("div.cell-body", {}, this.editorEl, this.renderedEl, this.inspectEl)),
      h("div.cell-output", {}, this.outputPromptEl, this.outputsEl));
    this.el.dataset.type = this.type;
    this.el.cell = this;
  }

  extensions(readOnly) {
    return [
      readOnly ? EditorState.readOnly.of(true) : [],
      Prec.highest(keymap.of(this.keys())),
      this.language.of(this.languageExtension()),
      cellExtensions((ctx) => this.completionSource(ctx)),
      EditorView.lineWrapping,
      EditorView.updateListener.of((u) => { if (u.docChanged) this.nb.changed(); }),
      EditorView.domEventHandlers({ focus: () => { this.nb.select(this, true); return false; } }),
    ];
  }

  languageExtension() {
    if (this.type === "markdown") return languageFor("markdown");
    if (this.type === "code") return languageFor(this.nb.language);
    return [];
  }

  keys() {
    const nb = this.nb;
    return [
      { key: "Shift-Enter", run: () => (nb.runAndAdvance(this), true) },
      { key: "Mod-Enter", run: () => (nb.runCells([this]), nb.commandMode(), true) },
      { key: "Alt-Enter", run: () => (nb.runAndInsert(this), true) },
      { key: "Escape", run: (v) => (completionStatus(v.state) ? false : (nb.commandMode(), true)) },
      { key: "Tab", run: (v) => this.onTab(v), shift: (v) => this.onShiftTab(v) },
      { key: "Mod-s", run: () => (nb.save(true), true) },
      { key: "Mod-Shift--", run: () => (nb.splitCell(this), true) },
      { key: "ArrowUp", run: (v) => this.leaveAtEdge(v, -1) },
      { key: "ArrowDown", run: (v) => this.leaveAtEdge(v, 1) },
    ];
  }

  leaveAtEdge(view, dir) {
    const { head, empty } = view.state.selection.main;
    if (!empty || completionStatus(view.state)) return false; // the completion list moves
    const line = view.state.doc.lineAt(head).number;
    if (dir < 0 ? line !== 1 : line !== view.state.doc.lines) return false;
    return this.nb.moveEditTo(this, dir);
  }

  onTab(view) {
    if (completionStatus(view.state) === "active") return acceptCompletion(view);
    const { head, empty } = view.state.selection.main;
    const before = view.state.doc.sliceString(view.state.doc.lineAt(head).from, head);
    if (!empty || !before.trim() || this.type !== "code") return indentMore(view);
    this.complete(view);
    return true;
  }

  onShiftTab(view) {
    const { head } = view.state.selection.main;
    const before = view.state.doc.sliceString(view.state.doc.lineAt(head).from, head);
    if (!before.trim() || this.type !== "code") return indentLess(view);
    this.inspect(view);
    return true;
  }

  async complete(view) {
    const code = view.state.doc.toString();
    const pos = view.state.selection.main.head;
    let reply;
    try {
      reply = await this.nb.kernel.request("complete_request", { code, cursor_pos: toCodePoints(code, pos) }, REPLY_MS);
    } catch { return; }
    const c = reply.content;
    if (c.status !== "ok" || !c.matches.length || view.state.doc.toString() !== code) return;
    const from = toUtf16(code, c.cursor_start), to = toUtf16(code, c.cursor_end);
    if (c.matches.length === 1) {
      view.dispatch({ changes: { from, to, insert: c.matches[0] }, selection: { anchor: from + c.matches[0].length } });
      return;
    }
    const types = new Map(((c.metadata || {})._jupyter_types_experimental || []).map((t) => [t.text, t.type]));
    this.pendingCompletion = {
      from, to, filter: true, validFor: /^[\w$.]*$/,
      options: c.matches.map((m) => ({ label: m, type: types.get(m) === "function" ? "function" : types.get(m) || "variable" })),
    };
    startCompletion(view);
  }

  completionSource(context) {
    const result = this.pendingCompletion;
    this.pendingCompletion = null;
    return context.explicit && result ? result : null;
  }

  async inspect(view) {
    const code = view.state.doc.toString();
    const pos = view.state.selection.main.head;
    try {
      const reply = await this.nb.kernel.request("inspect_request", { code, cursor_pos: toCodePoints(code, pos), detail_level: 0 }, REPLY_MS);
      const c = reply.content;
      if (c.status !== "ok" || !c.found) return this.showInspect("No documentation found.");
      this.showInspect(joinText(c.data["text/plain"]));
    } catch (err) {
      this.showInspect(err.message);
    }
  }

  showInspect(text) {
    const close = h("button.small.close", { type: "button", "aria-label": "Close", onclick: () => this.hideInspect() }, "×");
    const body = h("pre");
    body.innerHTML = ansiToHtml(text);
    this.inspectEl.replaceChildren(close, body);
    this.inspectEl.hidden = false;
  }

  hideInspect() { this.inspectEl.hidden = true; }

  get source() { return this.view.state.doc.toString(); }

  setSource(text) {
    this.view.dispatch({ changes: { from: 0, to: this.view.state.doc.length, insert: text } });
  }

  setType(type) {
    if (type === this.type) return;
    if (this.preserved) { notice("This cell cannot be edited; delete it to remove it.", "error"); return; }
    this.type = type;
    this.el.dataset.type = type;
    if (type !== "code") { this.outputs = []; this.executionCount = null; this.renderOutputs(); }
    this.view.dispatch({ effects: this.language.reconfigure(this.languageExtension()) });
    this.showEditor();
    this.updatePrompt();
  }

  renderMarkdownCell() {
    if (this.type !== "markdown") return;
    const [text, note] = clip(this.source.trim() ? this.source : "*Empty markdown cell: double-click to edit.*");
    this.renderedEl.replaceChildren(isolated("cell's markdown", () => renderMarkdown(text, this.nb.dir)));
    if (note) this.renderedEl.append(note);
    this.renderedEl.hidden = false;
    this.editorEl.hidden = true;
    this.el.classList.add("is-rendered");
  }

  showEditor() {
    this.renderedEl.hidden = true;
    this.editorEl.hidden = false;
    this.el.classList.remove("is-rendered");
  }

  focusEditor(atEnd = false) {
    if (this.type === "markdown") this.showEditor();
    if (atEnd === "end") this.view.dispatch({ selection: { anchor: this.view.state.doc.length } });
    if (atEnd === "start") this.view.dispatch({ selection: { anchor: 0 } });
    this.view.focus();
  }

  updatePrompt() {
    if (this.type !== "code") { this.promptEl.textContent = ""; return; }
    const n = this.running ? "*" : this.executionCount ?? " ";
    this.promptEl.textContent = `[${n}]:`;
    this.el.classList.toggle("running", this.running);
  }

  setRunning(running) {
    this.running = running;
    this.updatePrompt();
  }

  // ---- outputs ----

  renderOutputs() {
    this.outputEls = new Map();
    this.outputsEl.replaceChildren(...this.outputs.slice(0, SHOWN_OUTPUTS).map((o) => this.outputElement(o)));
    this.showHiddenCount();
    this.el.classList.toggle("has-output", this.outputs.length > 0);
  }

  outputElement(output) {
    const el = renderOutput(output, this.nb.dir);
    if (isObject(output)) this.outputEls.set(output, el);
    return el;
  }

  showHiddenCount() {
    const hidden = this.outputs.length - SHOWN_OUTPUTS;
    if (this.moreEl) this.moreEl.remove();
    this.moreEl = hidden > 0 ? h("div.output-note", {}, `${hidden} more outputs not shown (kept in the notebook).`) : null;
    if (this.moreEl) this.outputsEl.append(this.moreEl);
  }

  clearOutputs() {
    this.outputs = [];
    this.fileOutputs = new Set();
    this.clearPending = false;
    this.renderOutputs();
    this.nb.changed();
  }

  addOutput(output) {
    if (this.clearPending) this.clearOutputs();
    const last = this.outputs[this.outputs.length - 1];
    if (output.output_type === "stream" && isObject(last) && !this.fileOutputs.has(last)
        && last.output_type === "stream" && last.name === output.name) {
      last.text = appendStream(joinText(last.text), joinText(output.text));
      const el = this.outputEls.get(last);
      if (el) el.replaceWith(this.outputElement(last));
    } else {
      this.outputs.push(output);
      if (this.outputs.length <= SHOWN_OUTPUTS) this.outputsEl.append(this.outputElement(output));
      else this.showHiddenCount();
    }
    this.el.classList.add("has-output");
    this.nb.changed();
  }

  updateDisplay(displayId, content) {
    let found = false;
    for (const o of this.outputs) {
      if (!isObject(o) || o.displayId !== displayId) continue;
      Object.assign(o, richOutput(content));
      const el = this.outputEls.get(o);
      if (el) el.replaceWith(this.outputElement(o));
      found = true;
    }
    if (found) this.nb.changed();
  }

  handleIOPub(msg) {
    const c = msg.content;
    const displayId = c.transient && c.transient.display_id;
    switch (msg.header.msg_type) {
      case "stream": this.addOutput({ output_type: "stream", name: typeof c.name === "string" ? c.name : "stdout", text: asText(c.text) }); break;
      case "display_data": this.addOutput({ output_type: "display_data", ...richOutput(c), displayId }); break;
      case "execute_result": this.addOutput({ output_type: "execute_result", ...richOutput(c), execution_count: asCount(c.execution_count), displayId }); break;
      case "error": this.addOutput({ output_type: "error", ename: asText(c.ename), evalue: asText(c.evalue), traceback: asLines(c.traceback) }); break;
      case "clear_output": if (c.wait) this.clearPending = true; else this.clearOutputs(); break;
      case "execute_input": this.executionCount = asCount(c.execution_count); break;
    }
  }

  showInputPrompt(content, reply) {
    const input = h("input", { type: content.password ? "password" : "text", "aria-label": "Input for the kernel", spellcheck: "false" });
    const row = h("div.output.input-request", {}, h("span.input-label", {}, content.prompt || ""), input);
    input.addEventListener("keydown", (e) => {
      if (e.key !== "Enter") return;
      e.preventDefault();
      row.remove();
      const shown = content.password ? "·".repeat(input.value.length) : input.value;
      this.addOutput({ output_type: "stream", name: "stdout", text: `${content.prompt || ""}${shown}\n` });
      reply(input.value);
    });
    this.outputsEl.append(row);
    this.el.classList.add("has-output");
    input.focus();
  }

  toJSON() {
    if (this.preserved) return this.preserved.json;
    const base = { id: this.cellId, cell_type: this.type, metadata: this.metadata, source: this.source };
    if (this.type !== "code") {
      if (this.attachments) base.attachments = this.attachments;
      return base;
    }
    const outputs = this.outputs.map((o) => (this.fileOutputs.has(o) ? o : outputJSON(o)));
    return { ...base, execution_count: this.executionCount, outputs };
  }
}

// What a kernel sends is made storable as it arrives, so no message can make the notebook
// unsavable (the server refuses an invalid notebook whole).
function asText(value) {
  if (isText(value)) return joinText(value);
  return value === undefined || value === null ? "" : String(value);
}

function asLines(value) {
  return Array.isArray(value) ? value.map(asText) : [asText(value)];
}

function asCount(value) {
  return Number.isInteger(value) && value > 0 ? value : null;
}

function richOutput(content) {
  const { data, dropped } = storableBundle(content.data);
  return { data, metadata: isObject(content.metadata) ? content.metadata : {}, dropped };
}

/** An output the kernel sent, as nbformat stores it. */
function outputJSON(o) {
  switch (o.output_type) {
    case "stream": return { output_type: "stream", name: o.name, text: collapseCarriageReturns(joinText(o.text)) };
    case "error": return { output_type: "error", ename: o.ename, evalue: o.evalue, traceback: o.traceback };
    case "execute_result": return { output_type: "execute_result", data: o.data, metadata: o.metadata || {}, execution_count: o.execution_count ?? null };
    default: return { output_type: "display_data", data: o.data, metadata: o.metadata || {} };
  }
}
