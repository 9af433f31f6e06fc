// Markdown and LaTeX rendering for markdown cells and text/markdown outputs: marked for the
// markdown, KaTeX for $math$, DOMPurify so a notebook's HTML can never run script here.
import { marked } from "marked";
import DOMPurify from "dompurify";
import katex from "katex";
import "katex/dist/katex.min.css";
import * as api from "./api.js";

marked.setOptions({ gfm: true, breaks: false });

// Code is split off first so "$" inside code stays literal; the math pattern order matters:
// display forms before the inline "$" form.
const CODE = /(```[\s\S]*?```|~~~[\s\S]*?~~~|`[^`\n]*`)/;
const MATH = /\$\$([\s\S]+?)\$\$|\\\[([\s\S]+?)\\\]|\\begin\{(equation\*?|align\*?|gather\*?)\}([\s\S]+?)\\end\{\3\}|\\\(([\s\S]+?)\\\)|(?<![\\$\w])\$(?![\s$])((?:\\\$|[^$\n])+?)(?<!\s)\$(?![\w$])/g;

export function renderLatex(tex, displayMode) {
  try {
    return katex.renderToString(tex, { displayMode, throwOnError: false, trust: false, strict: "ignore" });
  } catch {
    return escapeHtml(tex);
  }
}

export function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

/**
 * Percent-decode a URL a notebook wrote; a malformed escape ("%zz", bytes that are not
 * UTF-8) leaves it as written instead of throwing, which stopped the whole page's load.
 */
export function safeDecodeURI(u) {
  try {
    return decodeURI(u);
  } catch {
    return u;
  }
}

function extractMath(text, rendered, mark) {
  return text.split(CODE).map((part, i) => {
    if (i % 2 === 1) return part;
    return part.replace(MATH, (whole, dd, br, env, envBody, paren, inline) => {
      let html;
      if (dd !== undefined) html = renderLatex(dd, true);
      else if (br !== undefined) html = renderLatex(br, true);
      else if (env !== undefined) html = renderLatex(`\\begin{${env}}${envBody}\\end{${env}}`, true);
      else if (paren !== undefined) html = renderLatex(paren, false);
      else html = renderLatex(inline, false);
      rendered.push(html);
      return `${mark}${rendered.length - 1}X`;
    });
  }).join("");
}

export const isRelative = (u) => u && !/^([a-z][\w+.-]*:|\/|#)/i.test(u);

/** A relative URL in a notebook as a path from the server's root. */
export function resolveRelative(u, notebookDir) {
  const parts = (notebookDir ? notebookDir + "/" + u : u).split("/");
  const out = [];
  for (const p of parts) { if (p === "..") out.pop(); else if (p && p !== ".") out.push(p); }
  return out.join("/");
}

function fixRelativeUrls(root, notebookDir) {
  const resolve = (u) => resolveRelative(u, notebookDir);
  for (const img of root.querySelectorAll("img[src]")) {
    const src = img.getAttribute("src");
    if (isRelative(src)) img.setAttribute("src", api.filesUrl(safeDecodeURI(resolve(src))));
  }
  for (const a of root.querySelectorAll("a[href]")) {
    const href = a.getAttribute("href");
    if (isRelative(href)) {
      const target = safeDecodeURI(resolve(href.split("#")[0]));
      a.setAttribute("href", target.endsWith(".ipynb") ? api.pageUrl("notebooks", target) : api.filesUrl(target));
    }
    if (!href.startsWith("#")) { a.setAttribute("target", "_blank"); a.setAttribute("rel", "noopener noreferrer"); }
  }
}

/** Swap placeholders for KaTeX markup in text nodes only, never inside an attribute. */
function insertMath(root, rendered, mark) {
  if (!rendered.length) return;
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  const nodes = [];
  while (walker.nextNode()) if (walker.currentNode.nodeValue.includes(mark)) nodes.push(walker.currentNode);
  const split = new RegExp(`${mark}(\\d+)X`);
  for (const node of nodes) {
    const parts = node.nodeValue.split(split);
    const frag = document.createDocumentFragment();
    parts.forEach((part, i) => {
      if (i % 2 === 0) { if (part) frag.append(part); return; }
      const span = document.createElement("span");
      span.innerHTML = rendered[Number(part)] ?? "";
      frag.append(...span.childNodes);
    });
    node.replaceWith(frag);
  }
}

const PURIFY = { FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select"], FORBID_ATTR: ["srcset"] };

// Inline styles stay (coloured text, widths), but none that lifts an element out of its
// cell: position:fixed with a z-index would lay a fake "sign in again" page, or a link,
// over the whole app. As JupyterLab's sanitizer, which drops `position` too.
const ESCAPING_STYLE = /^(position|z-index|inset|transform|translate|scale|rotate)$/i;
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  const style = node.style;
  if (!style || !node.hasAttribute("style")) return;
  for (const prop of Array.from(style)) {
    if (ESCAPING_STYLE.test(prop)) style.removeProperty(prop);
  }
  if (!style.length) node.removeAttribute("style");
});

/** Markdown (with math) to a sanitised element; relative links resolve against notebookDir. */
export function renderMarkdown(source, notebookDir = "") {
  const rendered = [];
  // A placeholder no notebook text can contain, so literal text is never swallowed.
  const mark = "MHMATH" + Math.random().toString(36).slice(2, 10) + "N";
  const html = marked.parse(extractMath(source, rendered, mark), { async: false });
  const clean = DOMPurify.sanitize(html, PURIFY);
  const div = document.createElement("div");
  div.className = "markdown-body";
  div.innerHTML = clean;
  insertMath(div, rendered, mark);
  fixRelativeUrls(div, notebookDir);
  return div;
}
