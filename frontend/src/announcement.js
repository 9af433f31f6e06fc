// The hub's announcement as a banner under the header, kept current without a reload: asked
// for when the page opens and then every `poll_seconds` (the hub says how often) while the
// page is visible. Plain text: links are made with the DOM, nothing is parsed as HTML.
const banner = document.getElementById("announcement");
const hubUrl = document.body.dataset.hubUrl;
const LINK = /https?:\/\/[^\s<>"']+[^\s<>"'.,;:!?)\]]/g;
let shown = "";
let dismissed = "";
let timer = 0;

function fill(text) {
  const body = document.createElement("span");
  text.split("\n").forEach((line, i) => {
    if (i) body.append(document.createElement("br"));
    let at = 0;
    for (const m of line.matchAll(LINK)) {
      body.append(line.slice(at, m.index));
      const a = document.createElement("a");
      a.href = m[0];
      a.rel = "noopener noreferrer";
      a.target = "_blank";
      a.textContent = m[0];
      body.append(a);
      at = m.index + m[0].length;
    }
    body.append(line.slice(at));
  });
  const close = document.createElement("button");
  close.type = "button";
  close.className = "small announcement-close";
  close.title = "Hide until it changes";
  close.textContent = "×";
  close.addEventListener("click", () => { dismissed = shown; banner.hidden = true; });
  banner.replaceChildren(body, close);
}

function show(text) {
  if (text !== shown) {
    shown = text;
    if (text) fill(text);
  }
  banner.hidden = !text || text === dismissed;
}

async function refresh() {
  clearTimeout(timer);
  let wait = 60;
  if (!document.hidden) {
    try {
      const resp = await fetch(hubUrl + "api/announcement", { credentials: "same-origin", cache: "no-cache" });
      if (resp.ok) {
        const data = await resp.json();
        show(typeof data.announcement === "string" ? data.announcement : "");
        wait = Number(data.poll_seconds) || wait;
      }
    } catch {
      // the hub is restarting or the network is down: try again at the next turn
    }
  }
  timer = setTimeout(refresh, Math.min(3600, Math.max(1, wait)) * 1000);
}

if (banner && hubUrl) {
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
  refresh();
}
