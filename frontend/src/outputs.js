// Rendering of cell outputs. HTML, JavaScript and SVG a notebook produces run only inside a
// sandboxed iframe (scripts, no same-origin), so they can never read the hub's cookies.
import { AnsiUp } from "ansi_up";
import { renderMarkdown, renderLatex, escapeHtml, isRelative, resolveRelative, safeDecodeURI } from "./markdown.js";
import { h, isolated } from "./ui.js";
import { filesUrl } from "./api.js";

const ansi = new AnsiUp();
ansi.use_classes = true;

// Richest first, as classic Jupyter picks them.
const MIME_ORDER = [
  "application/javascript", "text/html", "text/markdown", "text/latex", "image/svg+xml",
  "image/png", "image/jpeg", "image/gif", "application/json", "text/plain",
];

// What one output shows at most: a notebook may hold a 30 MB log, which as one <pre> (and
// its ANSI pass) would freeze the page. The model and the file keep all of it.
export const SHOWN_CHARS = 100000;
const FRAME_CHARS = 5 * 1024 * 1024;

export function joinText(value) {
  return Array.isArray(value) ? value.join("") : value ?? "";
}

export function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/** nbformat's multiline string: a string or a list of strings. */
export function isText(value) {
  return typeof value === "string" || (Array.isArray(value) && value.every((s) => typeof s === "string"));
}

/** The text of a multiline string, or an error naming `what` (rendering isolates it). */
function textOf(value, what) {
  if (!isText(value)) throw new Error(`${what} is not text`);
  return joinText(value);
}

/** The start of a long text, and a note saying how much is not shown (null if none). */
export function clip(text, limit = SHOWN_CHARS) {
  if (text.length <= limit) return [text, null];
  const more = text.length - limit;
  const size = more >= 1e6 ? `${(more / 1e6).toFixed(1)} million` : String(more);
  return [text.slice(0, limit), h("div.output-note", {}, `… ${size} more characters not shown (kept in the notebook).`)];
}

/** Terminal semantics for "\r": later text overwrites the start of the line. */
export function collapseCarriageReturns(text) {
  if (!text.includes("\r")) return text;
  return text.replace(/\r+\n/g, "\n").split("\n").map((line) => {
    if (!line.includes("\r")) return line;
    let cur = "";
    for (const seg of line.split("\r")) cur = seg + cur.slice(seg.length);
    return cur;
  }).join("\n");
}

/**
 * Collapse a stream as it grows, so a progress bar that rewrites one line thousands of times
 * keeps one line in memory; a trailing "\r" stays, since the next chunk overwrites after it.
 */
export function appendStream(text, more) {
  const joined = text + more;
  if (!joined.includes("\r")) return joined;
  const tail = /\r+$/.test(joined) ? "\r" : "";
  return collapseCarriageReturns(joined) + tail;
}

export function ansiToHtml(text) {
  return ansi.ansi_to_html(text);
}

function pre(className, html) {
  const el = document.createElement("pre");
  el.className = className;
  el.innerHTML = html;
  return el;
}

/** Terminal text (ANSI colours), clipped to what a page can show. */
function textBlock(text) {
  const [head, note] = clip(text);
  const el = pre("output-text", ansiToHtml(head));
  return note ? h("div.output-clipped", {}, el, note) : el;
}

const frames = new Set();
window.addEventListener("message", (event) => {
  const msg = event.data;
  if (!msg || msg.type !== "minihub-output-height") return;
  for (const frame of frames) {
    if (!frame.isConnected) { frames.delete(frame); continue; }
    if (frame.contentWindow === event.source) {
      const height = Math.min(Math.max(Number(msg.height) || 0, 16), 20000);
      frame.style.height = `${Math.ceil(height)}px`;
    }
  }
});

// Runs inside the frame: report the content height to the notebook page as it changes.
const HEIGHT_REPORTER = `<script>(function(){var last=0;function report(){var h=Math.max(document.documentElement.scrollHeight,document.body?document.body.scrollHeight:0);if(h!==last){last=h;parent.postMessage({type:"minihub-output-height",height:h},"*");}}new ResizeObserver(report).observe(document.documentElement);window.addEventListener("load",report);report();})();<\/script>`;

const FRAME_STYLE = `<style>html,body{margin:0;padding:0;background:transparent}body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1f2328;overflow-x:auto}table{border-collapse:collapse}th,td{border:1px solid #d0d7de;padding:2px 8px;text-align:right}img,svg{max-width:100%}body>svg{display:block}</style>`;

// ipywidgets' model, which this app does not run: its text/plain is shown, and this note.
const WIDGET_MIME = "application/vnd.jupyter.widget-view+json";
const WIDGET_NOTE = "Interactive widgets (ipywidgets) do not run in this app: this is the widget's text. Open the notebook in JupyterLab to use it.";

/** Relative URLs in a frame (IPython's Video("clip.mp4"), <img src="a.png">) name files
 * next to the notebook, as in JupyterLab: the frame's base is their files/ URL. */
function frameBase(notebookDir) {
  const dir = notebookDir ? filesUrl(notebookDir) + "/" : filesUrl("");
  return new URL(dir, window.location.href).href;
}

const MEDIA_SRC = /^(data:(audio|video)\/[\w.+-]+[;,]|https?:)/i;

/** A media URL the page may load itself: data: audio or video, http(s), or a file next to
 * the notebook (its files/ URL, which carries the user's cookie; a sandboxed frame's does
 * not). Anything else (javascript:, blob:) is refused. */
function mediaSrc(src, notebookDir) {
  if (isRelative(src)) return filesUrl(safeDecodeURI(resolveRelative(src, notebookDir)));
  return MEDIA_SRC.test(src) ? src : null;
}

/**
 * IPython's Audio and Video HTML (one <audio> or <video>, with a src or <source>s) rebuilt
 * as a native element of the page from its sources' src and type and a few flags, nothing
 * else; null for any other HTML, which goes to the sandboxed frame.
 */
function mediaElement(html, notebookDir) {
  if (!/^\s*<(audio|video)\b/i.test(html)) return null;
  const body = new DOMParser().parseFromString(html, "text/html").body;
  const [el, ...rest] = body.children;
  if (!el || rest.length || !/^(AUDIO|VIDEO)$/.test(el.tagName)) return null;
  const media = document.createElement(el.tagName.toLowerCase());
  media.controls = true;
  media.className = "output-media";
  for (const flag of ["autoplay", "loop", "muted"]) if (el.hasAttribute(flag)) media.setAttribute(flag, "");
  for (const dim of ["width", "height"]) {
    if (/^\d+$/.test(el.getAttribute(dim) || "")) media.setAttribute(dim, el.getAttribute(dim));
  }
  // Its fallback text ("Your browser does not support...") is left out.
  const sources = el.hasAttribute("src") ? [el] : [...el.querySelectorAll(":scope > source")];
  for (const s of sources) {
    const src = mediaSrc(s.getAttribute("src") || "", notebookDir);
    if (!src) return null;
    const source = document.createElement("source");
    source.src = src;
    if (/^[\w.+-]+\/[\w.+-]+$/.test(s.getAttribute("type") || "")) source.type = s.getAttribute("type");
    media.append(source);
  }
  return sources.length ? media : null;
}

function sandboxedFrame(bodyHtml, notebookDir = "") {
  const frame = document.createElement("iframe");
  // allow-scripts WITHOUT allow-same-origin: the content gets an opaque origin.
  frame.setAttribute("sandbox", "allow-scripts");
  frame.setAttribute("referrerpolicy", "no-referrer");
  frame.className = "output-frame";
  frame.title = "Output";
  frame.srcdoc = `<!doctype html><html><head><meta charset="utf-8"><base href="${escapeHtml(frameBase(notebookDir))}" target="_blank">${FRAME_STYLE}</head><body>${bodyHtml}${HEIGHT_REPORTER}</body></html>`;
  frames.add(frame);
  return frame;
}

function image(mime, data, metadata) {
  const img = document.createElement("img");
  const b64 = textOf(data, mime).replace(/\s/g, "");
  img.src = `data:${mime};base64,${b64}`;
  const meta = (isObject(metadata) && isObject(metadata[mime]) && metadata[mime]) || {};
  if (Number.isFinite(meta.width)) img.width = meta.width;
  if (Number.isFinite(meta.height)) img.height = meta.height;
  img.alt = "output image";
  return img;
}

function frameText(value, mime) {
  const text = textOf(value, mime);
  if (text.length > FRAME_CHARS) throw new Error(`${mime} of ${(text.length / 1e6).toFixed(1)} MB is too large to show`);
  return text;
}

function renderMime(mime, value, metadata, notebookDir) {
  switch (mime) {
    case "application/javascript":
      return sandboxedFrame(`<div id="output"></div><script>${frameText(value, mime).replace(/<\/script/gi, "<\\/script")}<\/script>`);
    case "text/html": {
      const html = frameText(value, mime);
      return mediaElement(html, notebookDir) || sandboxedFrame(html, notebookDir);
    }
    case "image/svg+xml":
      // Inline SVG may carry <script> and event handlers: it runs only inside the sandbox.
      return sandboxedFrame(frameText(value, mime));
    case "image/png": case "image/jpeg": case "image/gif":
      return image(mime, value, metadata);
    case "text/markdown": {
      const [head, note] = clip(textOf(value, mime));
      const body = renderMarkdown(head, notebookDir);
      return note ? h("div", {}, body, note) : body;
    }
    case "text/latex": {
      const tex = textOf(value, mime).trim().replace(/^\$\$?([\s\S]*?)\$?\$$/, "$1");
      const div = document.createElement("div");
      div.innerHTML = renderLatex(tex, true);
      return div;
    }
    case "application/json":
      return jsonBlock(value);
    default:
      // Vendor +json types and any other structured value.
      if (!isText(value)) return jsonBlock(value);
      return textBlock(joinText(value));
  }
}

function jsonBlock(value) {
  const [head, note] = clip(JSON.stringify(value, null, 2) ?? String(value));
  const el = pre("output-json", escapeHtml(head));
  return note ? h("div.output-clipped", {}, el, note) : el;
}

const JSON_MIME = /^application\/(.*\+)?json$/;

/**
 * A kernel's MIME bundle as nbformat can store it: a value that is not text under a non-JSON
 * type would make every later save of the notebook invalid, so it is left out and named.
 */
export function storableBundle(data) {
  if (data === undefined || data === null) return { data: {}, dropped: [] };
  if (!isObject(data)) return { data: {}, dropped: ["its data"] };
  const kept = {};
  const dropped = [];
  for (const [mime, value] of Object.entries(data)) {
    if (JSON_MIME.test(mime) || isText(value)) kept[mime] = value;
    else dropped.push(mime);
  }
  return { data: kept, dropped };
}

export function pickMime(data) {
  return MIME_ORDER.find((m) => data[m] !== undefined) || Object.keys(data)[0];
}

const STREAM_NAMES = new Set(["stdout", "stderr"]);

function outputBody(output, wrap, notebookDir) {
  if (!isObject(output)) throw new Error("it is not a JSON object");
  switch (output.output_type) {
    case "stream":
      if (STREAM_NAMES.has(output.name)) wrap.classList.add(output.name);
      return textBlock(collapseCarriageReturns(textOf(output.text, "its text")));
    case "error": {
      const lines = output.traceback ?? [`${output.ename}: ${output.evalue}`];
      if (!isText(lines) || !Array.isArray(lines)) throw new Error("its traceback is not a list of lines");
      return textBlock(lines.join("\n"));
    }
    case "display_data": case "execute_result": {
      const data = output.data ?? {};
      if (!isObject(data)) throw new Error("its data is not a MIME bundle");
      const mime = pickMime(data);
      if (!mime) return document.createTextNode("");
      wrap.dataset.mime = mime;
      const body = renderMime(mime, data[mime], output.metadata, notebookDir);
      return data[WIDGET_MIME] === undefined ? body : h("div", {}, body, h("div.output-note", { role: "note" }, WIDGET_NOTE));
    }
    default:
      throw new Error(`unknown output type ${JSON.stringify(output.output_type)}`);
  }
}

/**
 * One nbformat output (display_data, execute_result, stream, error) as an element. It never
 * throws: an output it cannot show becomes a readable message, and the output itself is
 * left as it was for the save.
 */
export function renderOutput(output, notebookDir) {
  const wrap = document.createElement("div");
  wrap.className = "output";
  const type = isObject(output) ? output.output_type : undefined;
  if (typeof type === "string" && /^[\w-]+$/.test(type)) wrap.classList.add(type);
  wrap.append(isolated("output", () => outputBody(output, wrap, notebookDir)));
  const dropped = isObject(output) && Array.isArray(output.dropped) ? output.dropped : [];
  if (dropped.length) {
    wrap.append(h("div.render-error", { role: "note" },
      `Part of this output is not kept: ${dropped.join(", ")} from the kernel is not text.`));
  }
  return wrap;
}
