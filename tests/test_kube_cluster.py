"""The test cluster itself (tests/kube_cluster.py, scripts/kube/): a real Kubernetes 1.20.2 node
runs the locally built image with host networking, serves on loopback, shows its log, enforces
a memory limit in the container's cgroup, gives a ServiceAccount a token the API server takes,
and deletes a pod with grace 0. The Kubernetes spawner's tests stand on these."""

from __future__ import annotations

import json
import secrets
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kube_cluster import KubeCluster
from test_config_cli import free_port


def pod(name: str, image: str, command: list[str], **spec: Any) -> dict[str, Any]:
    """A hostNetwork pod with one container `main` from a local image (never pulled)."""
    container: dict[str, Any] = {
        "name": "main",
        "image": image,
        "imagePullPolicy": "Never",
        "command": command,
        **spec.pop("container", {}),
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "kube-cluster-test"}},
        "spec": {
            "hostNetwork": True,
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
            **spec,
        },
    }


def get_text(url: str, timeout: float = 20) -> str:
    """GET url, retrying (bounded) while nothing listens yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.read().decode()
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_pod_serves_on_loopback_logs_and_goes_with_grace_0(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    port, token = free_port(), secrets.token_hex(8)
    script = (
        f"mkdir -p /tmp/www && echo {token} > /tmp/www/token.txt && "
        f"exec python3 -m http.server --bind 127.0.0.1 --directory /tmp/www {port}"
    )
    kube_cluster.apply(kube_namespace, pod("web", kube_cluster.image, ["/bin/sh", "-c", script]))
    status = kube_cluster.wait_pod(kube_namespace, "web")["status"]
    assert status["phase"] == "Running"

    assert get_text(f"http://127.0.0.1:{port}/token.txt").strip() == token
    # http.server logs each request on stderr: the log API reaches the kubelet on loopback
    deadline = time.monotonic() + 20
    while "GET /token.txt" not in (
        logs := kube_cluster.kubectl("-n", kube_namespace, "logs", "web").stdout
    ):
        assert time.monotonic() < deadline, f"request not in the pod's log: {logs!r}"
        time.sleep(0.3)

    kube_cluster.kubectl(
        "-n", kube_namespace, "delete", "pod", "web", "--grace-period=0", "--force",
        "--timeout=30s",
    )  # fmt: skip
    gone = kube_cluster.kubectl("-n", kube_namespace, "get", "pod", "web", check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr
    deadline = time.monotonic() + 30
    while True:  # the container, not only the API object, is gone: the port is free again
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/token.txt", timeout=2).close()
        except (urllib.error.URLError, ConnectionError):
            break
        assert time.monotonic() < deadline, "the deleted pod still serves"
        time.sleep(0.3)


# Both QoS classes a memory limit makes: Guaranteed (requests = limits) and Burstable (a smaller
# request). Both had to be patched for these machines (no CAP_SYS_RESOURCE: scores >= 0 only).
QOS = {
    "Guaranteed": ({"limits": {"memory": "256Mi", "cpu": "250m"}}, ""),
    "Burstable": ({"limits": {"memory": "256Mi"}, "requests": {"memory": "64Mi"}}, "burstable"),
}


@pytest.mark.parametrize("qos", QOS)
def test_memory_limit_is_in_the_containers_cgroup(
    kube_cluster: KubeCluster, kube_namespace: str, qos: str
) -> None:
    resources, qos_dir = QOS[qos]
    spec = pod(
        "limited",
        kube_cluster.image,
        ["python3", "-c", "import time; time.sleep(3600)"],
        container={"resources": resources},
    )
    kube_cluster.apply(kube_namespace, spec)
    p = kube_cluster.wait_pod(kube_namespace, "limited")
    assert p["status"]["qosClass"] == qos

    # From the host: the kubelet's pod cgroup (under its QoS class), the container's inside it.
    container_id = p["status"]["containerStatuses"][0]["containerID"].removeprefix("docker://")
    pod_cgroup = Path("/sys/fs/cgroup/memory/kubepods", qos_dir, f"pod{p['metadata']['uid']}")
    limit = (pod_cgroup / container_id / "memory.limit_in_bytes").read_text()
    assert int(limit) == 256 * 1024 * 1024
    # From inside, through exec: the same limit, and a non-negative OOM score in the class's
    # range (Guaranteed 1, Burstable 3..999, BestEffort 1000).
    inside = kube_cluster.kubectl(
        "-n", kube_namespace, "exec", "limited", "--",
        "cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes", "/proc/1/oom_score_adj",
    ).stdout.split()  # fmt: skip
    assert inside[0] == str(256 * 1024 * 1024)
    if qos == "Guaranteed":
        assert inside[1] == "1"
    else:
        assert 3 <= int(inside[1]) <= 999


def test_service_account_token_reaches_the_api_server(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    # In-cluster configuration the way client libraries read it: the mounted token and CA,
    # KUBERNETES_SERVICE_HOST/PORT (set to loopback: no kube-proxy routes the Service's IP).
    script = """
import json, os, ssl, urllib.request, urllib.error
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
ns = open(sa + "/namespace").read()
req = urllib.request.Request(f"https://{host}:{port}/api/v1/namespaces/{ns}/pods",
    headers={"Authorization": "Bearer " + open(sa + "/token").read()})
ctx = ssl.create_default_context(cafile=sa + "/ca.crt")
try:
    print(urllib.request.urlopen(req, context=ctx).status)
except urllib.error.HTTPError as e:
    print(json.dumps({"code": e.code, "message": json.load(e)["message"]}))
"""
    spec = pod(
        "sa",
        kube_cluster.image,
        ["python3", "-c", script],
        container={"env": kube_cluster.in_cluster_env},
        automountServiceAccountToken=True,
        restartPolicy="Never",
    )
    kube_cluster.apply(kube_namespace, spec)
    deadline = time.monotonic() + 60
    while kube_cluster.get_json("-n", kube_namespace, "pod", "sa")["status"]["phase"] not in (
        "Succeeded",
        "Failed",
    ):
        assert time.monotonic() < deadline, "the ServiceAccount pod did not finish"
        time.sleep(0.3)
    out = kube_cluster.kubectl("-n", kube_namespace, "logs", "sa").stdout
    # Authenticated (TLS verified against the mounted CA, token accepted) and, with no Role
    # bound, refused by RBAC by name: 403, not 401.
    answer = json.loads(out.strip().splitlines()[-1])
    assert answer["code"] == 403, out
    assert f"system:serviceaccount:{kube_namespace}:default" in answer["message"]


def test_owner_references_are_garbage_collected(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    # The spawner can hang what it makes for a server (a PVC or Service) on the pod.
    kube_cluster.kubectl("-n", kube_namespace, "create", "configmap", "owner")
    owner = kube_cluster.get_json("-n", kube_namespace, "configmap", "owner")
    child = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "child",
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "name": "owner",
                    "uid": owner["metadata"]["uid"],
                }
            ],
        },
    }
    kube_cluster.apply(kube_namespace, child)
    kube_cluster.kubectl("-n", kube_namespace, "delete", "configmap", "owner")
    deadline = time.monotonic() + 30
    while (
        kube_cluster.kubectl("-n", kube_namespace, "get", "cm", "child", check=False).returncode
        == 0
    ):
        assert time.monotonic() < deadline, "the owned object outlived its owner"
        time.sleep(0.3)
