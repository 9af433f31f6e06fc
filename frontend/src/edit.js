// The text editor page (edit/<path>) for .py .md .txt .json .csv and other text files.
import "./style.css";
import "./announcement.js";
import * as api from "./api.js";
import { EditorState, EditorView, keymap, fileExtensions } from "./editor-setup.js";
import { Prec } from "@codemirror/state";
import { confirmDialog, notice, reportError, formatTime } from "./ui.js";

const path = document.body.dataset.path;
let lastModified = null;
let changeCount = 0;
let savedCount = 0;
let saving = false;

const dirty = () => changeCount !== savedCount;

function showState() {
  const el = document.getElementById("save-state");
  el.textContent = dirty() ? "Unsaved changes" : lastModified ? `Saved ${formatTime(lastModified)}` : "";
  el.classList.toggle("dirty", dirty());
  document.title = `${dirty() ? "* " : ""}${api.basename(path)} - minihub`;
}

async function save() {
  if (saving) return;
  saving = true;
  try {
    const disk = await api.contents.get(path, { content: false });
    if (lastModified && Date.parse(disk.last_modified) > Date.parse(lastModified)) {
      const ok = await confirmDialog("File changed on disk", "The file changed on disk since it was opened. Overwrite it?", "Overwrite", true);
      if (!ok) return;
    }
    const count = changeCount;
    const model = await api.contents.save(path, { type: "file", format: "text", content: view.state.doc.toString() });
    lastModified = model.last_modified;
    savedCount = count;
    showState();
    notice("Saved.");
  } catch (err) {
    reportError(err);
  } finally {
    saving = false;
  }
}

const view = new EditorView({ parent: document.getElementById("file-editor") });

async function load() {
  const model = await api.contents.get(path, { type: "file", format: "text" });
  lastModified = model.last_modified;
  view.setState(EditorState.create({
    doc: model.content,
    extensions: [
      Prec.highest(keymap.of([{ key: "Mod-s", run: () => (save(), true) }])),
      ...fileExtensions(path),
      EditorView.updateListener.of((u) => { if (u.docChanged) { changeCount++; showState(); } }),
    ],
  }));
  document.getElementById("file-name").textContent = api.basename(path);
  showState();
  view.focus();
}

document.getElementById("save-button").addEventListener("click", () => save());
document.getElementById("download-button").href = api.filesUrl(path, true);
document.addEventListener("keydown", (e) => {
  if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "s") { e.preventDefault(); save(); }
});
window.addEventListener("beforeunload", (e) => { if (dirty()) { e.preventDefault(); e.returnValue = ""; } });
setInterval(() => { if (dirty() && !saving) save(); }, 120000);

load().catch((err) => {
  reportError(err);
  document.getElementById("file-editor").textContent = `This file cannot be opened as text: ${err.message}`;
});
