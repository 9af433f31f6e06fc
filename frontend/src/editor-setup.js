// The CodeMirror 6 set-up shared by notebook cells and the text editor page.
import { EditorState, Compartment } from "@codemirror/state";
import { EditorView, keymap, drawSelection, highlightActiveLine, highlightSpecialChars, lineNumbers, highlightActiveLineGutter } from "@codemirror/view";
import { history, historyKeymap, defaultKeymap, indentWithTab } from "@codemirror/commands";
import { bracketMatching, indentOnInput, indentUnit, syntaxHighlighting, defaultHighlightStyle, foldGutter, foldKeymap } from "@codemirror/language";
import { closeBrackets, closeBracketsKeymap, autocompletion, completionKeymap } from "@codemirror/autocomplete";
import { python } from "@codemirror/lang-python";
import { markdown } from "@codemirror/lang-markdown";
import { json } from "@codemirror/lang-json";

export { EditorState, EditorView, keymap, Compartment };

export function languageFor(kind) {
  if (kind === "python") return python();
  if (kind === "markdown") return markdown();
  if (kind === "json") return json();
  return [];
}

export function languageForPath(path) {
  const ext = (path.match(/\.(\w+)$/) || [])[1]?.toLowerCase();
  if (ext === "py") return languageFor("python");
  if (ext === "md") return languageFor("markdown");
  if (ext === "json" || ext === "ipynb") return languageFor("json");
  return [];
}

/** Extensions common to every editor; callers add their keymaps first so theirs win. */
export function baseExtensions() {
  return [
    highlightSpecialChars(), history(), drawSelection(), indentOnInput(), bracketMatching(),
    closeBrackets(), syntaxHighlighting(defaultHighlightStyle, { fallback: true }),
    indentUnit.of("    "), EditorState.tabSize.of(4),
    keymap.of([...closeBracketsKeymap, ...defaultKeymap, ...historyKeymap]),
  ];
}

export function cellExtensions(completionSource) {
  return [
    ...baseExtensions(),
    // The list opens only on Tab, never while typing, so a key right after it opens is meant
    // for the list: no interaction delay (else a quick Down would leave the cell).
    autocompletion({ override: [completionSource], activateOnTyping: false, defaultKeymap: true, interactionDelay: 0 }),
    keymap.of(completionKeymap),
  ];
}

export function fileExtensions(path) {
  return [
    lineNumbers(), highlightActiveLineGutter(), highlightActiveLine(), foldGutter(),
    ...baseExtensions(), keymap.of([...foldKeymap, indentWithTab]), languageForPath(path),
  ];
}
