"""Start and stop the two hubs under test, each in a temporary directory, on loopback.

Both get PAM logins for real system accounts and an admin API token for the driver.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from common import (
    CHP_BIN,
    JH_VENV,
    children,
    cmdline,
    free_port,
    log,
    owner,
    rmtree,
    stop_process,
    wait_http,
)

ADMIN = "mhbnadmin"


@dataclass
class Hub:
    """A running hub: its public port, an admin token and the pids that make it up."""

    name: str
    port: int
    token: str
    proc: subprocess.Popen[bytes]
    work: Path
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def hub_pids(self) -> dict[str, int]:
        """The hub process and its helpers running as root (JupyterHub: its proxy; minihub:
        its fork server and kernel template, once started): everything but the users' own
        processes. minihub's kernel template is not the hub's child (it outlives a hub
        restart): its command line ends with the hub's pid."""
        found = {"hub": self.proc.pid}
        for pid in kernel_templates(self.proc.pid):
            found[f"kernel template {pid}"] = pid
        todo = children(self.proc.pid)
        while todo:
            pid = todo.pop()
            if owner(pid) == 0:
                name = "proxy" if "configurable-http-proxy" in cmdline(pid) else f"helper {pid}"
                found[name] = pid
                todo += children(pid)
        return found

    def stop(self) -> None:
        stop_process(self.proc, 30)
        if os.environ.get("MHBENCH_KEEP"):  # for looking into a failure: logs and config
            log(f"kept {self.work}")
        else:
            rmtree(self.work)


JH_CONFIG = """
c = get_config()  # noqa
c.JupyterHub.bind_url = "http://127.0.0.1:{port}"
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{api_port}"
c.ConfigurableHTTPProxy.command = ["{chp}"]
c.JupyterHub.db_url = "sqlite:///{work}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{work}/cookie_secret"
c.JupyterHub.authenticator_class = "pam"
c.Authenticator.allow_all = True
c.Spawner.cmd = ["{venv}/bin/jupyterhub-singleuser"]
c.JupyterHub.concurrent_spawn_limit = {spawn_limit}
c.JupyterHub.cleanup_servers = True
c.JupyterHub.log_level = "WARN"
c.JupyterHub.services = [{{"name": "bench", "api_token": "{token}"}}]
c.JupyterHub.load_roles = [{{"name": "bench", "services": ["bench"],
    "scopes": ["admin:users", "admin:servers", "access:servers", "tokens", "list:users"]}}]
"""


def start_jupyterhub(spawn_limit: int = 100) -> Hub:
    work = Path(tempfile.mkdtemp(prefix="mhbench-jh-"))
    os.chmod(work, 0o755)
    port, token = free_port(), secrets.token_hex(24)
    (work / "jupyterhub_config.py").write_text(
        JH_CONFIG.format(
            port=port,
            hub_port=free_port(),
            api_port=free_port(),
            chp=CHP_BIN,
            work=work,
            venv=JH_VENV,
            spawn_limit=spawn_limit,
            token=token,
        )
    )
    env = dict(os.environ, PATH=f"{JH_VENV}/bin:/usr/local/bin:/usr/bin:/bin")
    with open(work / "hub.log", "wb") as logf:
        proc = subprocess.Popen(
            [str(JH_VENV / "bin" / "jupyterhub"), "-f", str(work / "jupyterhub_config.py")],
            cwd=work,
            env=env,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    wait_http(port, proc, "/hub/health", 120)
    log(f"JupyterHub up on port {port}")
    return Hub("JupyterHub", port, token, proc, work)


MH_CONFIG = """
[hub]
ip = "127.0.0.1"
port = {port}
data_dir = "{work}/data"
log_level = "WARNING"
cleanup_servers = true
admin_access = true  # the driver reaches every server with one admin token, as JupyterHub's service does
[auth]
authenticator = "pam"
admin_users = ["{admin}"]
[spawner]
concurrent_spawn_limit = {spawn_limit}
active_server_limit = {active_limit}
"""


def kernel_templates(hub_pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and owner(int(entry)) == 0:
            cmd = cmdline(int(entry))
            if "minihub.kernels import template" in cmd and cmd.split()[-1:] == [str(hub_pid)]:
                found.append(int(entry))
    return found


def minihub_cmd(cfg: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "minihub", "-f", str(cfg), *args]


def start_minihub(
    spawn_limit: int = 100, active_limit: int = 0, extra_toml: str = "", preexec: object = None
) -> Hub:
    work = Path(tempfile.mkdtemp(prefix="mhbench-mh-"))
    os.chmod(work, 0o755)
    port = free_port()
    cfg = work / "minihub.toml"
    cfg.write_text(
        MH_CONFIG.format(
            port=port, work=work, admin=ADMIN, spawn_limit=spawn_limit, active_limit=active_limit
        )
        + extra_toml
    )
    run = {"cwd": work, "capture_output": True, "text": True, "timeout": 60}
    subprocess.run(minihub_cmd(cfg, "user", "add", ADMIN, "--admin"), check=True, **run)  # type: ignore[call-overload]
    token = (
        subprocess.run(
            minihub_cmd(cfg, "token", ADMIN),
            check=True,  # type: ignore[call-overload]
            **run,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    with open(work / "hub.log", "wb") as logf:
        # preexec_fn: the driver has no threads yet; the hub must start inside its cgroup
        proc = subprocess.Popen(
            minihub_cmd(cfg),
            cwd=work,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec,  # type: ignore[arg-type]  # noqa: PLW1509
        )
    wait_http(port, proc, "/hub/health", 60)
    log(f"minihub up on port {port}")
    return Hub("minihub", port, token, proc, work)
