"""A real one-node Kubernetes 1.20.2 cluster for the tests (scripts/kube/cluster, built from
Debian 12's source by `bash scripts/install test`), on loopback only.

    def test_x(kube_cluster, kube_namespace):
        kube_cluster.kubectl("-n", kube_namespace, "apply", "-f", "-", input=manifest)

`kube_cluster` (session) brings the cluster up once (`scripts/kube/cluster up`, bounded) and
builds the user image (`scripts/kube/images`: minihub from this tree on a cached base), and
takes the cluster down at the end of the session unless it was already up before (then it is
someone's running cluster: left alone) or another session still uses it.

How pods reach things here: no pod network, no kube-proxy, no registry. Pods use
hostNetwork: true and imagePullPolicy: Never; a pod's status.podIP is the machine's interface
address, so connect to 127.0.0.1 and a port chosen per pod. A pod that talks to the API server
with its ServiceAccount needs `in_cluster_env` (the kubernetes Service's ClusterIP routes
nowhere without kube-proxy).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "scripts" / "kube" / "cluster"
IMAGES = ROOT / "scripts" / "kube" / "images"
RUN = Path("/run/minihub-kube")
API_SERVER = "https://127.0.0.1:6443"
# What a pod's env needs so its in-cluster configuration (KUBERNETES_SERVICE_HOST/PORT plus the
# mounted ServiceAccount token and ca.crt) reaches the API server on loopback.
IN_CLUSTER_ENV = [
    {"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
    {"name": "KUBERNETES_SERVICE_PORT", "value": "6443"},
]


@dataclass
class KubeCluster:
    """The running cluster: an admin kubeconfig (token of user `admin`, group system:masters),
    the built image, and kubectl 1.20 from the cluster's build."""

    kubeconfig: Path
    image: str
    bin_dir: Path
    docker_host: str
    server: str = API_SERVER
    in_cluster_env: list[dict[str, str]] = field(default_factory=lambda: list(IN_CLUSTER_ENV))
    _namespaces: list[str] = field(default_factory=list)

    @property
    def ca_file(self) -> Path:
        """The cluster CA (signs the API server's certificate; ServiceAccounts get it too)."""
        return self.kubeconfig.parent / "pki" / "ca.crt"

    def env(self) -> dict[str, str]:
        """os.environ plus KUBECONFIG and DOCKER_HOST, for a hub or script under test."""
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "DOCKER_HOST": self.docker_host,
        }

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl (text in and out); check=True fails the test with its stderr."""
        proc = subprocess.run(
            [str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            pytest.fail(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def get_json(self, *args: str) -> Any:
        """`kubectl get ARGS -o json`, parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def apply(self, namespace: str, obj: dict[str, Any]) -> None:
        """Create or update one object (a dict, as in the API) in `namespace`."""
        self.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(obj))

    def namespace(self, prefix: str = "t") -> str:
        """A fresh namespace, `PREFIX-xxxxxxxx`, ready for pods (its default ServiceAccount
        exists: admission refuses pods before). Deleted at the end of the session."""
        name = f"{prefix}-{secrets.token_hex(4)}"
        self.kubectl("create", "namespace", name)
        self._namespaces.append(name)
        deadline = time.monotonic() + 30
        while self.kubectl("-n", name, "get", "sa", "default", check=False).returncode != 0:
            if time.monotonic() > deadline:
                pytest.fail(f"namespace {name}: no default ServiceAccount after 30 s")
            time.sleep(0.2)
        return name

    def delete_namespace(self, name: str) -> None:
        """Delete its pods with grace 0 (a graceful delete can keep a pod a minute), then the
        namespace, without waiting for the namespace to go."""
        self.kubectl(
            "-n", name, "delete", "pods", "--all", "--grace-period=0", "--force",
            "--wait=false", check=False,
        )  # fmt: skip
        self.kubectl("delete", "namespace", name, "--wait=false", check=False)
        with contextlib.suppress(ValueError):
            self._namespaces.remove(name)

    def wait_pod(
        self, namespace: str, name: str, condition: str = "Ready", timeout: int = 60
    ) -> Any:
        """Wait (bounded) for a pod condition; returns the pod. Fails with the pod's events and
        log when it does not get there."""
        proc = self.kubectl(
            "-n", namespace, "wait", f"--for=condition={condition}", f"pod/{name}",
            f"--timeout={timeout}s", check=False, timeout=timeout + 10,
        )  # fmt: skip
        if proc.returncode != 0:
            describe = self.kubectl("-n", namespace, "describe", "pod", name, check=False)
            logs = self.kubectl("-n", namespace, "logs", name, "--tail=20", check=False)
            pytest.fail(
                f"pod {namespace}/{name} not {condition} in {timeout} s: {proc.stderr}\n"
                f"{describe.stdout}\n{logs.stdout}{logs.stderr}"
            )
        return self.get_json("-n", namespace, "pod", name)


def _script(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{' '.join(cmd)} did not finish in {timeout:.0f} s: {e.stdout}{e.stderr}")


def _env_of_cluster() -> dict[str, str]:
    """scripts/kube/cluster env: KUBECONFIG, the binaries' directory, DOCKER_HOST."""
    out = _script(["bash", str(CLUSTER), "env"], 30).stdout
    env: dict[str, str] = {}
    for line in out.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value
    return env


def _live_sessions() -> list[Path]:
    sessions = RUN / "sessions"
    return [p for p in sessions.glob("*") if Path(f"/proc/{p.name}").exists()]


@pytest.fixture(scope="session")
def kube_cluster() -> Iterator[KubeCluster]:
    if os.geteuid() != 0:
        pytest.fail("the Kubernetes tests run as root (they start the cluster's daemons)")
    check = _script(["bash", str(IMAGES), "--check"], 30)
    if check.returncode != 0:
        pytest.fail(
            f"{check.stderr.strip()}\nThe test cluster is not built: run `bash scripts/install "
            "test` (builds Kubernetes 1.20.2 from Debian's source and the image base, cached "
            "under /var/cache/minihub-kube)"
        )
    was_up = _script(["bash", str(CLUSTER), "status"], 30).returncode == 0
    up = _script(["bash", str(CLUSTER), "up"], 120)
    if up.returncode != 0:
        pytest.fail(f"scripts/kube/cluster up failed:\n{up.stdout}{up.stderr}")
    (RUN / "sessions").mkdir(parents=True, exist_ok=True)
    mine = RUN / "sessions" / str(os.getpid())
    mine.touch()
    try:
        images = _script(["bash", str(IMAGES)], 110)
        if images.returncode != 0:
            pytest.fail(f"scripts/kube/images failed:\n{images.stdout}{images.stderr}")
        env = _env_of_cluster()
        cluster = KubeCluster(
            kubeconfig=Path(env["KUBECONFIG"]),
            image=images.stdout.strip().splitlines()[-1],
            bin_dir=Path(env["MINIHUB_KUBE_BIN"]),
            docker_host=env["DOCKER_HOST"],
        )
        yield cluster
        for name in list(cluster._namespaces):
            cluster.delete_namespace(name)
    finally:
        mine.unlink(missing_ok=True)
        # Down only a cluster this session brought up and nobody else is using.
        if not was_up and not _live_sessions() and not os.environ.get("MINIHUB_KUBE_KEEP"):
            _script(["bash", str(CLUSTER), "down"], 90)


@pytest.fixture
def kube_namespace(kube_cluster: KubeCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted (grace 0, not waited for) after it."""
    # a DNS label: lowercase letters, digits and dashes
    prefix = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower().removeprefix("test_"))[:24]
    name = kube_cluster.namespace("t-" + prefix.strip("-"))
    yield name
    kube_cluster.delete_namespace(name)
