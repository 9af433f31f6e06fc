"""What a Slurm job runs (`python -m minihub.spawner.slurm.job`, as the user on the node):
take the launch out of the environment, bind a free port, report it to the hub, then become
the server with the bound socket and its config on stdin.

The launch (MINIHUB_SLURM_LAUNCH, JSON: the server's command, the hub's report URL and this
launch's one-time token) comes in the job's environment; it is removed before anything else
runs, so kernels do not inherit it, but the batch shell and srun keep it in theirs for the
job's life, where the user's other processes can read it. So it holds nothing secret: the
server's config (its secret and proof) is the hub's answer to the report, which the token
authenticates; a token reported twice stops the job. The hub takes the host from Slurm,
not from here.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import urllib.error
import urllib.request
from typing import Any

from ..process import isolated

LAUNCH_ENV = "MINIHUB_SLURM_LAUNCH"
TOKEN_HEADER = "X-Minihub-Launch-Token"


def report(url: str, token: str, job_id: str, port: int) -> dict[str, Any]:
    """Tell the hub the port; its answer is the server's config."""
    body = json.dumps({"job_id": job_id, "port": port}).encode()
    req = urllib.request.Request(
        url, body, {"Content-Type": "application/json", TOKEN_HEADER: token}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            answer = json.loads(r.read())
    except urllib.error.HTTPError as e:
        sys.exit(f"minihub: the hub refused this job's report ({e.code}): not starting")
    config: dict[str, Any] = answer["config"]
    return config


def bind(ip: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((ip, 0))
    sock.listen(128)
    return sock


def become_server(launch: dict[str, Any], sock: socket.socket) -> None:
    """exec the server: minihub's reads its config (with the socket's fd) on stdin;
    jupyterhub-singleuser gets its URL in the environment and binds the port itself."""
    cmd = isolated(launch["cmd"])  # -I: not a minihub/ of the user's home
    port = sock.getsockname()[1]
    if launch["protocol"] == "jupyterhub-singleuser":
        host = launch["ip"] if ":" not in launch["ip"] else f"[{launch['ip']}]"
        os.environ["JUPYTERHUB_SERVICE_URL"] = f"http://{host}:{port}{launch['prefix']}"
        sock.close()
        os.execvp(cmd[0], cmd)
    config = {**launch["config"], "listen_fd": sock.fileno(), "port": port, "ip": launch["ip"]}
    os.set_inheritable(sock.fileno(), True)
    read, write = os.pipe()
    os.write(write, json.dumps(config).encode() + b"\n")  # far below a pipe's buffer
    os.close(write)
    os.dup2(read, 0)
    os.close(read)
    os.execvp(cmd[0], cmd)


def main() -> None:
    raw = os.environ.pop(LAUNCH_ENV, "")
    if not raw:
        sys.exit(f"{LAUNCH_ENV} is not set: this runs inside a job the hub submitted")
    launch = json.loads(raw)
    job_id = os.environ.get("SLURM_JOB_ID", "")
    sock = bind(launch["ip"])
    launch["config"] = report(launch["report_url"], launch["token"], job_id, sock.getsockname()[1])
    print(f"minihub: job {job_id} serves on port {sock.getsockname()[1]}", flush=True)
    become_server(launch, sock)


if __name__ == "__main__":
    main()
