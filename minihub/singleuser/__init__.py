"""The per-user notebook server: the Jupyter Server REST/websocket API, run as the user.

Launch contract with the hub (minihub.spawner.local starts it, minihub.proxy talks to it):
- Command: `<python> -m minihub.singleuser`, already running as the user, cwd = notebook dir.
- stdin: one JSON line, then EOF: {"secret", "base_url", "notebook_dir", "user",
  "listen_fd" (an inherited, bound, listening TCP socket; absent: "port" to bind on
  127.0.0.1), "kernel_idle_timeout", "mem_limit", optional "shared_dirs" (directories
  that symlinks in the notebook dir may lead to), optional "kernel_zygote" (fork python3
  kernels from a pre-imported process)}. The secret is never put in the
  environment, so kernels and child processes do not inherit it.
- Every request must carry `X-Minihub-Secret: <secret>`, else 403. The hub's proxy adds it.
  With a "proof" in the launch config, every response to such a request carries
  `X-Minihub-Proof: <proof>`; the hub refuses answers without it (a process that took the
  port of a dead server does not have it) and strips it.
- Paths are served under base_url (e.g. /user/alice/), exactly as the browser sees them.
- Ready when GET {base_url}api/status answers 200.
- SIGTERM: shut every kernel down, then exit 0. Logs go to stderr (the hub keeps them in a
  file the user can read).
"""

SECRET_HEADER = "X-Minihub-Secret"
PROOF_HEADER = "X-Minihub-Proof"
