// A connection to one kernel over api/kernels/<id>/channels (the JSON protocol). It keeps its
// session_id across reconnects so the server can replay what was missed while offline.
import * as api from "./api.js";

export function uuid() {
  // crypto.randomUUID needs a secure context; hubs are sometimes served over plain HTTP.
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** One message's handler failing must not stop the others, nor this message's reply. */
function safely(fn, msg) {
  try {
    fn(msg);
  } catch (err) {
    console.error("kernel message handler failed", err);
  }
}

export class Kernel {
  constructor() {
    this.id = null;
    this.sessionId = uuid();
    this.ws = null;
    this.status = "starting";
    this.callbacks = new Map(); // msg_id -> {onIOPub, onReply, onStdin, resolve}
    this.listeners = { status: [], iopub: [] };
    this.retries = 0;
    this.retryTimer = 0;
    this.closing = false;
  }

  on(event, fn) { this.listeners[event].push(fn); }

  setStatus(status) {
    if (status === this.status) return;
    this.status = status;
    for (const fn of this.listeners.status) fn(status);
  }

  connect(kernelId) {
    if (kernelId !== this.id) this.callbacks.clear();
    this.id = kernelId;
    this.closing = false;
    clearTimeout(this.retryTimer);
    if (this.ws) { this.ws.onclose = null; this.ws.close(); }
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const target = `${scheme}//${location.host}${api.url(`api/kernels/${kernelId}/channels`)}?session_id=${this.sessionId}`;
    const ws = new WebSocket(target);
    this.ws = ws;
    ws.onopen = () => {
      this.retries = 0;
      this.nudge().then(() => { if (["disconnected", "starting", "restarting"].includes(this.status)) this.setStatus("idle"); });
    };
    ws.onmessage = (event) => this.handle(event.data);
    ws.onclose = () => this.onClose(ws);
  }

  onClose(ws) {
    if (ws !== this.ws || this.closing) return;
    this.setStatus("disconnected");
    const delay = Math.min(1000 * 2 ** this.retries, 10000);
    this.retries++;
    this.retryTimer = setTimeout(() => this.reconnect(), delay);
  }

  async reconnect() {
    try {
      await api.kernels.get(this.id);
    } catch (err) {
      if (err.status === 404) { this.setStatus("dead"); return; }
      this.onClose(this.ws); // still unreachable: back off and try again
      return;
    }
    this.connect(this.id);
  }

  /**
   * Resolves once iopub carries a message for one of our kernel_info requests: until then
   * a new kernel's output could be dropped (zmq's late subscriber), so ask until it does.
   */
  nudge(tries = 40) {
    return new Promise((resolve) => {
      let done = false;
      const attempt = (n) => {
        if (done || n <= 0) { resolve(false); return; }
        try {
          this.send("shell", "kernel_info_request", {}, { onIOPub: () => { if (!done) { done = true; resolve(true); } } });
        } catch { resolve(false); return; }
        setTimeout(() => attempt(n - 1), 500);
      };
      attempt(tries);
    });
  }

  close() {
    this.closing = true;
    clearTimeout(this.retryTimer);
    if (this.ws) this.ws.close();
  }

  handle(raw) {
    if (typeof raw !== "string") return; // binary frames only come with the v1 subprotocol
    let msg;
    try { msg = JSON.parse(raw); } catch { return; }
    if (!msg || !msg.header || !msg.content) return;
    const type = msg.header.msg_type;
    const parent = msg.parent_header && msg.parent_header.msg_id;
    const cb = parent ? this.callbacks.get(parent) : undefined;
    if (msg.channel === "iopub") {
      if (type === "status") this.setStatus(msg.content.execution_state);
      for (const fn of this.listeners.iopub) safely(fn, msg);
      if (cb && cb.onIOPub) safely(cb.onIOPub, msg);
      if (cb && type === "status" && msg.content.execution_state === "idle") this.settle(parent, cb, "idle");
    } else if (msg.channel === "shell" || msg.channel === "control") {
      if (cb) {
        if (cb.onReply) safely(cb.onReply, msg);
        if (cb.resolve) cb.resolve(msg);
        this.settle(parent, cb, "reply");
      }
    } else if (msg.channel === "stdin" && cb && cb.onStdin) {
      safely(cb.onStdin, msg);
    }
  }

  settle(msgId, cb, what) {
    cb[what] = true;
    if (cb.reply && (cb.idle || !cb.onIOPub)) this.callbacks.delete(msgId);
  }

  send(channel, msgType, content, callbacks = {}) {
    const msgId = uuid();
    const msg = {
      header: { msg_id: msgId, msg_type: msgType, username: "", session: this.sessionId,
        date: new Date().toISOString(), version: "5.3" },
      parent_header: {}, metadata: {}, content, channel, buffers: [],
    };
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) throw new Error("The kernel is not connected.");
    this.callbacks.set(msgId, { ...callbacks });
    this.ws.send(JSON.stringify(msg));
    return msgId;
  }

  /** A shell request; resolves with the reply message (or rejects after timeoutMs). */
  request(msgType, content, timeoutMs = 30000) {
    return new Promise((resolve, reject) => {
      let id;
      const timer = setTimeout(() => { this.callbacks.delete(id); reject(new Error(`${msgType}: no reply`)); }, timeoutMs);
      try {
        id = this.send("shell", msgType, content, { resolve: (m) => { clearTimeout(timer); resolve(m); } });
      } catch (err) {
        clearTimeout(timer);
        reject(err);
      }
    });
  }

  execute(code, callbacks) {
    return this.send("shell", "execute_request", {
      code, silent: false, store_history: true, user_expressions: {}, allow_stdin: true, stop_on_error: true,
    }, callbacks);
  }

  inputReply(value) {
    this.send("stdin", "input_reply", { value });
  }

  interrupt() { return api.kernels.interrupt(this.id); }

  async restart() {
    this.setStatus("restarting");
    this.callbacks.clear();
    await api.kernels.restart(this.id);
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      await this.nudge();
      this.setStatus("idle");
    } else {
      this.connect(this.id);
    }
  }
}
