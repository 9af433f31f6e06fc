// Bundle the notebook app into minihub/web/static/nb/ with content-hashed names and a
// manifest.json that minihub/singleuser/pages.py reads to link the right files.
import * as esbuild from "esbuild";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const outdir = resolve(here, "../minihub/web/static/nb");
const dev = process.argv.includes("--dev");

rmSync(outdir, { recursive: true, force: true });
mkdirSync(outdir, { recursive: true });

const result = await esbuild.build({
  entryPoints: {
    tree: resolve(here, "src/tree.js"),
    notebook: resolve(here, "src/notebook.js"),
    edit: resolve(here, "src/edit.js"),
    // Its own entry, so xterm.js loads only on terminal pages.
    terminal: resolve(here, "src/terminal.js"),
  },
  bundle: true,
  splitting: true,
  format: "esm",
  target: ["chrome110", "firefox110", "safari16"],
  minify: !dev,
  sourcemap: dev ? "inline" : false,
  outdir,
  entryNames: "[name]-[hash]",
  chunkNames: "chunk-[hash]",
  assetNames: "assets/[name]-[hash]",
  // KaTeX ships woff2, woff and ttf; every browser we target reads woff2, so the
  // others load as empty files to keep the install small.
  loader: { ".woff2": "file", ".woff": "empty", ".ttf": "empty" },
  metafile: true,
  legalComments: "linked",
  logLevel: "warning",
});

// The empty loader leaves `url() format("woff")` fallbacks behind; drop them from the CSS.
for (const file of Object.keys(result.metafile.outputs)) {
  if (!file.endsWith(".css")) continue;
  const css = readFileSync(file, "utf8").replace(/,\s*url\(\)\s*format\("[^"]*"\)/g, "");
  writeFileSync(file, css);
}

const manifest = {};
for (const [file, info] of Object.entries(result.metafile.outputs)) {
  if (!info.entryPoint) continue;
  const name = relative(outdir, resolve(file));
  const entry = name.split("-")[0];
  manifest[entry] = { js: name, css: info.cssBundle ? relative(outdir, resolve(info.cssBundle)) : null };
}
writeFileSync(resolve(outdir, "manifest.json"), JSON.stringify(manifest, null, 1) + "\n");
console.log("built", Object.keys(manifest).join(", "), "into", outdir);
