// The terminal page (terminals/<name>): xterm.js on the terminado websocket
// terminals/websocket/<name>. It fits the window, reconnects when the connection drops (the
// server replays recent output on attach) and says so when the shell has ended.
import "@xterm/xterm/css/xterm.css";
import "./style.css";
import "./announcement.js";
import { Terminal } from "@xterm/xterm";
import { FitAddon } from "@xterm/addon-fit";
import * as api from "./api.js";
import { reportError } from "./ui.js";

const name = document.querySelector("main[data-terminal]").dataset.terminal;
const $ = (id) => document.getElementById(id);

const STATES = {
  connecting: "Connecting…",
  connected: "Connected",
  reconnecting: "Disconnected — reconnecting…",
  ended: "Terminal ended",
};

const term = new Terminal({
  cursorBlink: true,
  fontFamily: getComputedStyle(document.documentElement).getPropertyValue("--mono").trim() || "monospace",
  fontSize: 14,
  scrollback: 10000,
});
const fit = new FitAddon();
term.loadAddon(fit);

const conn = { ws: null, retries: 0, timer: 0, state: "connecting" };

function setState(state) {
  conn.state = state;
  document.body.dataset.state = state;
  $("term-status").textContent = STATES[state];
  $("term-status").dataset.status = state;
  $("term-ended").hidden = state !== "ended";
  term.options.disableStdin = state !== "connected";
}

function send(msg) {
  if (conn.ws && conn.ws.readyState === WebSocket.OPEN) conn.ws.send(JSON.stringify(msg));
}

function sendSize() {
  const box = $("terminal").getBoundingClientRect();
  send(["set_size", term.rows, term.cols, Math.round(box.height), Math.round(box.width)]);
}

function onMessage(event) {
  let msg;
  try { msg = JSON.parse(event.data); } catch { return; }
  if (!Array.isArray(msg)) return;
  if (msg[0] === "stdout") term.write(msg[1]);
  else if (msg[0] === "disconnect") ended();
}

function connect() {
  clearTimeout(conn.timer);
  const ws = new WebSocket(api.wsUrl("terminals/websocket/" + encodeURIComponent(name)));
  conn.ws = ws;
  ws.onopen = () => {
    conn.retries = 0;
    // The server replays its recent output on every attach: start from a clean screen so a
    // reconnect does not show it twice.
    term.reset();
    setState("connected");
    sendSize();
  };
  ws.onmessage = onMessage;
  ws.onclose = () => { if (ws === conn.ws && conn.state !== "ended") lost(); };
}

function lost() {
  setState("reconnecting");
  const delay = Math.min(500 * 2 ** conn.retries, 10000);
  conn.retries++;
  conn.timer = setTimeout(reconnect, delay);
}

/** Reconnect if the terminal still exists; a failed look-up (server away) backs off again. */
async function reconnect() {
  let list;
  try {
    list = await api.terminals.list();
  } catch (err) {
    if (err.status === 404) return ended();
    return lost();
  }
  if (!(list || []).some((t) => t.name === name)) return ended();
  connect();
}

function ended() {
  clearTimeout(conn.timer);
  setState("ended");
  const ws = conn.ws;
  conn.ws = null;
  if (ws) ws.close();
  $("term-new").focus();
}

async function newTerminal() {
  const model = await api.terminals.create();
  location.assign(api.pageUrl("terminals", model.name));
}

/**
 * Ctrl+Shift+C copies the selection and Ctrl+Shift+V pastes (Cmd+C / Cmd+V on macOS are the
 * browser's own and reach xterm unchanged); Ctrl+C stays the shell's interrupt.
 */
function clipboardKeys(e) {
  if (e.type !== "keydown" || !e.ctrlKey || !e.shiftKey || e.altKey || e.metaKey) return true;
  const key = e.key.toLowerCase();
  if (key === "c") {
    // execCommand fires a copy event on xterm's own textarea, which puts the selection on
    // the clipboard; unlike navigator.clipboard it works on a hub served over plain HTTP.
    if (term.hasSelection()) document.execCommand("copy");
    e.preventDefault();
    return false;
  }
  // Left to the browser, the shortcut pastes into xterm's textarea, which sends the text
  // (bracketed when the shell asks for it).
  if (key === "v") return false;
  return true;
}

function refit() {
  try {
    fit.fit();
  } catch (err) {
    console.error(err);
  }
}

function start() {
  term.open($("terminal"));
  term.attachCustomKeyEventHandler(clipboardKeys);
  term.onData((data) => send(["stdin", data]));
  term.onBinary((data) => send(["stdin", data]));
  term.onResize(() => sendSize());
  term.onTitleChange((title) => { document.title = (title || `Terminal ${name}`) + " - minihub"; });
  let pending = 0;
  new ResizeObserver(() => {
    cancelAnimationFrame(pending);
    pending = requestAnimationFrame(refit);
  }).observe($("terminal"));
  $("term-new").onclick = () => newTerminal().catch(reportError);
  document.title = `Terminal ${name} - minihub`;
  refit();
  setState("connecting");
  connect();
  term.focus();
  // Tests read the screen through term.buffer.
  window.minihubTerminal = { term, fit, name, get state() { return conn.state; }, get ws() { return conn.ws; } };
}

document.fonts.ready.then(start, start);
