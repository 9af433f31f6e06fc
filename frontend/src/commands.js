// Command-mode keys of the Jupyter keyboard model, including the doubled ones (D D, I I, 0 0).
import { h } from "./ui.js";

const SINGLE = {
  "Enter": (nb) => nb.editCell(nb.active),
  "Shift-Enter": "run",
  "Ctrl-Enter": (nb) => nb.runCells([nb.active]),
  "Alt-Enter": (nb) => nb.runAndInsert(nb.active),
  "a": "insert-above", "b": "insert-below",
  "m": "to-markdown", "y": "to-code", "r": "to-raw",
  "c": "copy", "x": "cut", "v": "paste", "Shift-V": "paste-above",
  "z": "undo-delete",
  "ArrowUp": (nb) => nb.selectRelative(-1), "k": (nb) => nb.selectRelative(-1),
  "ArrowDown": (nb) => nb.selectRelative(1), "j": (nb) => nb.selectRelative(1),
  "Shift-M": "merge",
  "Ctrl-Shift-ArrowUp": "move-up", "Ctrl-Shift-ArrowDown": "move-down",
  "h": "shortcuts",
};

const DOUBLE = { d: "delete", i: "interrupt", 0: "restart" };

let lastKey = "";
let lastTime = 0;

function keyName(e) {
  const mods = (e.ctrlKey || e.metaKey ? "Ctrl-" : "") + (e.altKey ? "Alt-" : "") + (e.shiftKey ? "Shift-" : "");
  const key = e.key.length === 1 ? (e.shiftKey ? e.key.toUpperCase() : e.key.toLowerCase()) : e.key;
  return mods + key;
}

/** The action for a command-mode key event: an ACTIONS name, a function of the notebook, or null. */
export function commandKey(e) {
  const name = keyName(e);
  const plain = !e.ctrlKey && !e.metaKey && !e.altKey && !e.shiftKey;
  if (plain && DOUBLE[e.key] !== undefined) {
    const now = performance.now();
    const second = lastKey === e.key && now - lastTime < 800;
    lastKey = second ? "" : e.key;
    lastTime = now;
    return second ? DOUBLE[e.key] : () => {};
  }
  lastKey = "";
  return SINGLE[name] || null;
}

const HELP = [
  ["Command mode (press Esc)", [
    ["Enter", "edit the selected cell"], ["Shift-Enter", "run, select below"], ["Ctrl-Enter", "run"],
    ["Alt-Enter", "run, insert below"], ["A / B", "insert cell above / below"], ["D D", "delete cell"],
    ["Z", "undo cell deletion"], ["M / Y / R", "markdown / code / raw"], ["C / X / V", "copy / cut / paste below"],
    ["Shift-V", "paste above"], ["↑ K / ↓ J", "select above / below"], ["Shift-M", "merge with cell below"],
    ["Ctrl-Shift-↑/↓", "move cell"], ["I I", "interrupt kernel"], ["0 0", "restart kernel"], ["Ctrl-S", "save and checkpoint"],
  ]],
  ["Edit mode (press Enter)", [
    ["Esc", "command mode"], ["Tab", "complete or indent"], ["Shift-Tab", "show documentation"],
    ["Shift-Enter / Ctrl-Enter / Alt-Enter", "run, as above"], ["Ctrl-Shift-Minus", "split cell at cursor"],
    ["Ctrl-Z / Ctrl-Shift-Z", "undo / redo"], ["Ctrl-S", "save and checkpoint"],
  ]],
];

export function SHORTCUT_HELP() {
  return h("div.shortcuts", {}, HELP.map(([title, rows]) => [
    h("h3", {}, title),
    h("dl", {}, rows.map(([k, d]) => [h("dt", {}, h("kbd", {}, k)), h("dd", {}, d)])),
  ]));
}
