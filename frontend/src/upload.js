// Uploads through the contents API: small files in one PUT, large ones in chunks
// (chunk 1, 2, ... and -1 for the last, as jupyter_server's chunked upload expects).
import * as api from "./api.js";

// 1 MiB of file per request, about 1.4 MB once base64'd into JSON: far under the user server's
// body limit (minihub/singleuser/app.py MAX_BODY), and the hub's proxy streams bodies unread.
export const CHUNK = 1024 * 1024;

function toBase64(buffer) {
  const bytes = new Uint8Array(buffer);
  let bin = "";
  for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(bin);
}

async function uploadNotebook(file, path) {
  const content = JSON.parse(await file.text());
  await api.contents.save(path, { type: "notebook", format: "json", content });
}

export async function uploadFile(file, path, onProgress) {
  const name = api.basename(path);
  if (file.name.endsWith(".ipynb") && file.size <= CHUNK) {
    try {
      await uploadNotebook(file, path);
      onProgress(1);
      return;
    } catch (err) {
      if (!(err instanceof SyntaxError)) throw err; // not JSON: keep the bytes as they are
    }
  }
  const chunks = Math.max(1, Math.ceil(file.size / CHUNK));
  for (let i = 0; i < chunks; i++) {
    const blob = file.slice(i * CHUNK, (i + 1) * CHUNK);
    const model = { type: "file", format: "base64", name, path, content: toBase64(await blob.arrayBuffer()) };
    if (chunks > 1) model.chunk = i === chunks - 1 ? -1 : i + 1;
    await api.contents.save(path, model);
    onProgress((i + 1) / chunks);
  }
}
