// The Jupyter Server REST API of this user's server, as the pages use it.
// Every state-changing request carries the hub's XSRF token read from the _xsrf cookie.

export const baseUrl = document.body.dataset.baseUrl || "/";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function xsrfToken() {
  const m = document.cookie.match(/(?:^|;\s*)_xsrf=([^;]*)/);
  return m ? decodeURIComponent(m[1]) : "";
}

/** Encode each path segment, keep the slashes. */
export function encodePath(path) {
  return path.split("/").map(encodeURIComponent).join("/");
}

export function url(...parts) {
  return baseUrl + parts.join("/").replace(/\/+/g, "/").replace(/^\//, "");
}

export async function request(method, path, body, query) {
  const headers = {};
  if (method !== "GET" && method !== "HEAD") headers["X-XSRFToken"] = xsrfToken();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let target = url(path);
  if (query) target += "?" + new URLSearchParams(query);
  let resp;
  try {
    resp = await fetch(target, {
      method, headers, credentials: "same-origin", cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, "The server cannot be reached: " + err.message);
  }
  if (resp.status === 204) return null;
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!resp.ok) {
    const msg = (data && (data.message || data.reason)) || `${resp.status} ${resp.statusText}`;
    throw new ApiError(resp.status, msg);
  }
  return data;
}

const contentsPath = (path) => "api/contents/" + encodePath(path);

export const contents = {
  get: (path, opts = {}) => request("GET", contentsPath(path), undefined, {
    content: opts.content === false ? "0" : "1", ...(opts.type ? { type: opts.type } : {}),
    ...(opts.format ? { format: opts.format } : {}),
  }),
  save: (path, model) => request("PUT", contentsPath(path), model),
  create: (dir, model) => request("POST", contentsPath(dir), model),
  copy: (fromPath, toDir) => request("POST", contentsPath(toDir), { copy_from: fromPath }),
  rename: (path, newPath) => request("PATCH", contentsPath(path), { path: newPath }),
  remove: (path) => request("DELETE", contentsPath(path)),
  checkpoints: (path) => request("GET", contentsPath(path) + "/checkpoints"),
  checkpoint: (path) => request("POST", contentsPath(path) + "/checkpoints"),
  restore: (path, id) => request("POST", contentsPath(path) + "/checkpoints/" + encodeURIComponent(id)),
};

export const sessions = {
  list: () => request("GET", "api/sessions"),
  create: (path, kernelName) => request("POST", "api/sessions", {
    path, name: path.split("/").pop(), type: "notebook", kernel: { name: kernelName },
  }),
  changeKernel: (id, kernelName) => request("PATCH", "api/sessions/" + id, { kernel: { name: kernelName } }),
  rename: (id, path) => request("PATCH", "api/sessions/" + id, { path, name: path.split("/").pop() }),
  remove: (id) => request("DELETE", "api/sessions/" + id),
};

export const kernels = {
  get: (id) => request("GET", "api/kernels/" + id),
  interrupt: (id) => request("POST", `api/kernels/${id}/interrupt`),
  restart: (id) => request("POST", `api/kernels/${id}/restart`),
  remove: (id) => request("DELETE", "api/kernels/" + id),
};

// Jupyter Server's terminals API; a terminal's page is terminals/<name>.
export const terminals = {
  list: () => request("GET", "api/terminals"),
  create: () => request("POST", "api/terminals"),
  remove: (name) => request("DELETE", "api/terminals/" + encodeURIComponent(name)),
};

/** ws: or wss: URL of a path under this server, as the page was loaded. */
export function wsUrl(path) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${url(path)}`;
}

export const kernelspecs = () => request("GET", "api/kernelspecs");

export function filesUrl(path, download = false) {
  return url("files", encodePath(path)) + (download ? "?download=1" : "");
}

export function pageUrl(kind, path) {
  return url(kind, encodePath(path));
}

/** Parent directory of a contents path ("" for the root). */
export function dirname(path) {
  const i = path.lastIndexOf("/");
  return i < 0 ? "" : path.slice(0, i);
}

export function basename(path) {
  return path.slice(path.lastIndexOf("/") + 1);
}
