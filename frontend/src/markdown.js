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

function extractMath(text, rendered) {
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
      return `MHMATH${rendered.length - 1}X`;
    });
  }).join("");
}

function fixRelativeUrls(root, notebookDir) {
  const isRelative = (u) => u && !/^([a-z][\w+.-]*:|\/|#)/i.test(u);
  const resolve = (u) => {
    const parts = (notebookDir ? notebookDir + "/" + u : u).split("/");
    const out = [];
    for (const p of parts) { if (p === "..") out.pop(); else if (p && p !== ".") out.push(p); }
    return out.join("/");
  };
  for (const img of root.querySelectorAll("img[src]")) {
    const src = img.getAttribute("src");
    if (isRelative(src)) img.setAttribute("src", api.filesUrl(decodeURI(resolve(src))));
  }
  for (const a of root.querySelectorAll("a[href]")) {
    const href = a.getAttribute("href");
    if (isRelative(href)) {
      const target = decodeURI(resolve(href.split("#")[0]));
      a.setAttribute("href", target.endsWith(".ipynb") ? api.pageUrl("notebooks", target) : api.filesUrl(target));
    }
    if (!href.startsWith("#")) { a.setAttribute("target", "_blank"); a.setAttribute("rel", "noopener noreferrer"); }
  }
}

/** Swap placeholders for KaTeX markup in text nodes only, never inside an attribute. */
function insertMath(root, rendered) {
  if (!rendered.length) return;
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  const nodes = [];
  while (walker.nextNode()) if (walker.currentNode.nodeValue.includes("MHMATH")) nodes.push(walker.currentNode);
  for (const node of nodes) {
    const parts = node.nodeValue.split(/MHMATH(\d+)X/);
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

/** Markdown (with math) to a sanitised element; relative links resolve against notebookDir. */
export function renderMarkdown(source, notebookDir = "") {
  const rendered = [];
  const html = marked.parse(extractMath(source, rendered), { async: false });
  const clean = DOMPurify.sanitize(html, PURIFY);
  const div = document.createElement("div");
  div.className = "markdown-body";
  div.innerHTML = clean;
  insertMath(div, rendered);
  fixRelativeUrls(div, notebookDir);
  return div;
}
