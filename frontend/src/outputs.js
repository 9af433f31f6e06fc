// Rendering of cell outputs. HTML, JavaScript and SVG a notebook produces run only inside a
// sandboxed iframe (scripts, no same-origin), so they can never read the hub's cookies.
import { AnsiUp } from "ansi_up";
import { renderMarkdown, renderLatex, escapeHtml } from "./markdown.js";

const ansi = new AnsiUp();
ansi.use_classes = true;

// Richest first, as classic Jupyter picks them.
const MIME_ORDER = [
  "application/javascript", "text/html", "text/markdown", "text/latex", "image/svg+xml",
  "image/png", "image/jpeg", "image/gif", "application/json", "text/plain",
];

export function joinText(value) {
  return Array.isArray(value) ? value.join("") : value ?? "";
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

function sandboxedFrame(bodyHtml) {
  const frame = document.createElement("iframe");
  // allow-scripts WITHOUT allow-same-origin: the content gets an opaque origin.
  frame.setAttribute("sandbox", "allow-scripts");
  frame.setAttribute("referrerpolicy", "no-referrer");
  frame.className = "output-frame";
  frame.title = "Output";
  frame.srcdoc = `<!doctype html><html><head><meta charset="utf-8"><base target="_blank">${FRAME_STYLE}</head><body>${bodyHtml}${HEIGHT_REPORTER}</body></html>`;
  frames.add(frame);
  return frame;
}

function image(mime, data, metadata) {
  const img = document.createElement("img");
  const b64 = joinText(data).replace(/\s/g, "");
  img.src = `data:${mime};base64,${b64}`;
  const meta = (metadata && metadata[mime]) || {};
  if (meta.width) img.width = meta.width;
  if (meta.height) img.height = meta.height;
  img.alt = "output image";
  return img;
}

function renderMime(mime, value, metadata, notebookDir) {
  switch (mime) {
    case "application/javascript":
      return sandboxedFrame(`<div id="output"></div><script>${joinText(value).replace(/<\/script/gi, "<\\/script")}<\/script>`);
    case "text/html":
      return sandboxedFrame(joinText(value));
    case "image/svg+xml":
      // Inline SVG may carry <script> and event handlers: it runs only inside the sandbox.
      return sandboxedFrame(joinText(value));
    case "image/png": case "image/jpeg": case "image/gif":
      return image(mime, value, metadata);
    case "text/markdown":
      return renderMarkdown(joinText(value), notebookDir);
    case "text/latex": {
      const tex = joinText(value).trim().replace(/^\$\$?([\s\S]*?)\$?\$$/, "$1");
      const div = document.createElement("div");
      div.innerHTML = renderLatex(tex, true);
      return div;
    }
    case "application/json":
      return pre("output-json", escapeHtml(JSON.stringify(value, null, 2)));
    default:
      return pre("output-text", ansiToHtml(joinText(value)));
  }
}

export function pickMime(data) {
  return MIME_ORDER.find((m) => data[m] !== undefined) || Object.keys(data)[0];
}

/** One nbformat output (display_data, execute_result, stream, error) as an element. */
export function renderOutput(output, notebookDir) {
  const wrap = document.createElement("div");
  wrap.className = "output " + output.output_type;
  if (output.output_type === "stream") {
    wrap.classList.add(output.name);
    wrap.append(pre("output-text", ansiToHtml(collapseCarriageReturns(joinText(output.text)))));
  } else if (output.output_type === "error") {
    wrap.append(pre("output-text", ansiToHtml((output.traceback || [`${output.ename}: ${output.evalue}`]).join("\n"))));
  } else {
    const data = output.data || {};
    const mime = pickMime(data);
    if (mime) {
      wrap.dataset.mime = mime;
      wrap.append(renderMime(mime, data[mime], output.metadata, notebookDir));
    }
  }
  return wrap;
}
