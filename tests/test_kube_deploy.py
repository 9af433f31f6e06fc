"""The hub deployed in the cluster from deploy/kubernetes/ (`kubectl apply -k` with the
cluster's kubectl 1.20 and its old built-in kustomize), through an overlay for the test
cluster: it answers, spawns a user's pod and claim with its own ServiceAccount (and with
nothing else), reaches the server through its proxy, stops it; and its Role allows no more
than the spawner needs.

The overlay is what this cluster lacks, not a different deployment: no pod network
(hostNetwork, the hub on 127.0.0.1 and a free port, users' servers on 127.0.0.1 and a port
of host_port_range), no registry (the locally built image, imagePullPolicy Never), no
kube-proxy (KUBERNETES_SERVICE_HOST/PORT name the API server on 127.0.0.1:6443, so the
in-cluster configuration works unchanged). Claims, the hub's and the user's, are bound by the
cluster's default StorageClass (scripts/kube/provisioner), as on a real cluster.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kube_cluster import KubeCluster
from test_config_cli import free_port

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
HUB_LABELS = "app.kubernetes.io/name=minihub,app.kubernetes.io/component=hub"
USER = "alice"

pytestmark = pytest.mark.timeout(420)


def free_port_range(size: int = 20) -> tuple[int, int]:
    """A block of `size` ports nobody listens on now, for host_port_range."""
    for _ in range(50):
        low = 40000 + secrets.randbelow(200) * 100
        if all(_bindable(p) for p in range(low, low + size)):
            return low, low + size - 1
    pytest.fail("no free block of ports in 40000-59999")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


# --- the overlay -------------------------------------------------------------------------------
def hub_toml(port: int, image: str, ports: tuple[int, int], token: str) -> str:
    """The test cluster's minihub.toml (replaces the base's ConfigMap): the same spawner, on
    loopback, with the local image and an admin service for the test's API calls."""
    return f"""
[hub]
ip = "127.0.0.1"
port = {port}
data_dir = "/var/lib/minihub"
connect_url = "http://127.0.0.1:{port}"

[auth]
authenticator = "native"

[spawner]
class = "kubernetes"
server = "minihub"
start_timeout = 90

[kubernetes]
image = "{image}"
image_pull_policy = "Never"
ip = "127.0.0.1"
pod_connect_ip = "127.0.0.1"
host_port_range = "{ports[0]}-{ports[1]}"
extra_pod_config = {{ hostNetwork = true }}
delete_grace_period = 0
storage_pvc_ensure = true
storage_capacity = "1Gi"
volumes = [{{ name = "home", persistentVolumeClaim = {{ claimName = "claim-{{user_server}}" }} }}]
volume_mounts = [{{ name = "home", mountPath = "/home/jovyan" }}]

[[services]]
name = "deploy-test"
api_token = "{token}"
scopes = ["admin:users", "admin:servers", "access:servers"]
"""


def hub_patch(port: int, env: list[dict[str, str]]) -> list[dict[str, Any]]:
    """JSON 6902 patch of the hub's Deployment (kustomize 2.0's patchesJson6902)."""
    c = "/spec/template/spec/containers/0"
    probe = {"httpGet": {"host": "127.0.0.1", "path": "/hub/health", "port": port}}
    return [
        {"op": "add", "path": "/spec/template/spec/hostNetwork", "value": True},
        {"op": "add", "path": "/spec/template/spec/terminationGracePeriodSeconds", "value": 1},
        {"op": "replace", "path": f"{c}/imagePullPolicy", "value": "Never"},
        {"op": "add", "path": f"{c}/env", "value": env},
        {"op": "replace", "path": f"{c}/ports", "value": [{"name": "http", "containerPort": port}]},
        {"op": "replace", "path": f"{c}/readinessProbe", "value": {**probe, "periodSeconds": 1}},
        {"op": "replace", "path": f"{c}/livenessProbe", "value": {**probe, "periodSeconds": 10}},
    ]


def write_overlay(where: Path, ns: str, image: str, toml: str, patch: list[dict[str, Any]]) -> Path:
    name, _, tag = image.partition(":")
    where.mkdir()
    (where / "minihub.toml").write_text(toml)
    (where / "hub.json").write_text(json.dumps(patch))
    # kustomize 2.0 (kubectl 1.20): `bases`, `images`, `patchesJson6902`, generator behavior.
    kustomization = {
        "namespace": ns,
        "bases": [os.path.relpath(DEPLOY, where)],
        "images": [{"name": "minihub/minihub", "newName": name, "newTag": tag or "latest"}],
        "configMapGenerator": [
            {"name": "minihub-config", "behavior": "replace", "files": ["minihub.toml"]}
        ],
        "patchesJson6902": [
            {"target": {"group": "apps", "version": "v1", "kind": "Deployment", "name": "minihub"},
             "path": "hub.json"},
        ],
    }  # fmt: skip
    (where / "kustomization.yaml").write_text(json.dumps(kustomization, indent=1))
    return where


# --- talking to the hub ------------------------------------------------------------------------
def call(
    url: str, token: str, method: str = "GET", body: Any = None, timeout: float = 20
) -> tuple[int, str]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", f"token {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def progress(hub: str, token: str, user: str, timeout: float = 120) -> list[dict[str, Any]]:
    """The spawn's progress events until it is ready or failed (the stream ends then)."""
    _, text = call(f"{hub}/hub/api/users/{user}/server/progress", token, timeout=timeout)
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


def until(what: str, check: Any, timeout: float, every: float = 0.5) -> Any:
    """Poll `check()` until it returns something true (returned), at most `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s")
        time.sleep(every)


def hub_pod(kube: KubeCluster, ns: str) -> dict[str, Any]:
    pods = until(
        "the hub's pod exists",
        lambda: kube.get_json("-n", ns, "pods", "-l", HUB_LABELS)["items"],
        60,
    )
    return kube.wait_pod(ns, pods[0]["metadata"]["name"], "Ready", 90)


def can_i(kube: KubeCluster, who: str, *args: str) -> bool:
    proc = kube.kubectl("auth", "can-i", f"--as={who}", *args, check=False)
    return proc.stdout.strip() == "yes"


# --- the test ----------------------------------------------------------------------------------
@pytest.fixture
def hub_gone(kube_cluster: KubeCluster, kube_namespace: str) -> Iterator[None]:
    """After the test: the Deployment first (else its ReplicaSet makes a new hub pod while
    the namespace goes), then every pod with grace 0."""
    yield
    kube_cluster.kubectl(
        "-n", kube_namespace, "delete", "deployment", "minihub", "--wait=false", check=False
    )
    kube_cluster.kubectl(
        "-n", kube_namespace, "delete", "pods", "--all", "--grace-period=0", "--force",
        "--wait=false", check=False,
    )  # fmt: skip


def test_the_base_renders_with_kubectl_1_20(kube_cluster: KubeCluster) -> None:
    out = kube_cluster.kubectl("kustomize", str(DEPLOY)).stdout
    kinds = sorted(line.split()[1] for line in out.splitlines() if line.startswith("kind: "))
    assert kinds == sorted([
        "ConfigMap", "Deployment", "NetworkPolicy", "NetworkPolicy", "PersistentVolumeClaim",
        "Role", "RoleBinding", "Service", "ServiceAccount",
    ])  # fmt: skip
    assert "kind: Ingress" not in out  # the example is not applied by default


def test_hub_in_the_cluster_spawns_with_its_service_account(
    kube_cluster: KubeCluster, kube_namespace: str, hub_gone: None, tmp_path: Path
) -> None:
    kube, ns = kube_cluster, kube_namespace
    probe = subprocess.run(
        ["/usr/bin/docker", "run", "--rm", "--network", "none", kube.image, "python3", "-c",
         "import lightkube"],
        env=kube.env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert probe.returncode == 0, (
        f"{kube.image} cannot run the hub (no minihub[kubernetes]): {probe.stderr[-500:]}"
    )
    port, token = free_port(), secrets.token_hex(24)
    overlay = write_overlay(
        tmp_path / "overlay",
        ns,
        kube.image,
        hub_toml(port, kube.image, free_port_range(), token),
        hub_patch(port, kube.in_cluster_env),
    )
    kube.kubectl("apply", "-k", str(overlay), timeout=60)

    pod = hub_pod(kube, ns)
    hub = f"http://127.0.0.1:{port}"
    assert call(f"{hub}/hub/health", token)[0] == 200
    # Its only credentials: the ServiceAccount's token (no kubeconfig, no other Secret).
    assert pod["spec"]["serviceAccountName"] == "minihub"
    sa_secrets = {s["name"] for s in kube.get_json("-n", ns, "sa", "minihub")["secrets"]}
    mounted = {v["secret"]["secretName"] for v in pod["spec"]["volumes"] if "secret" in v}
    assert mounted == sa_secrets, mounted
    env = {e["name"] for e in pod["spec"]["containers"][0].get("env", [])}
    assert env == {"KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"}

    assert call(f"{hub}/hub/api/users/{USER}", token, "POST", {})[0] == 201
    status, body = call(f"{hub}/hub/api/users/{USER}/server", token, "POST", {})
    assert status in (201, 202), body
    events = progress(hub, token, USER)
    assert events and events[-1].get("ready"), events
    messages = [e["message"] for e in events]
    assert any(m.startswith("Creating pod jupyter-alice") for m in messages), messages
    assert any(m.startswith("Scheduled:") for m in messages), messages  # the pod's events

    # The user's pod and claim, made through the API by the hub's client.
    user_pod = kube.get_json("-n", ns, "pod", "jupyter-alice")
    managers = {f["manager"] for f in user_pod["metadata"].get("managedFields", [])}
    assert "minihub" in managers, managers
    claim = kube.get_json("-n", ns, "pvc", f"claim-{USER}")
    assert claim["status"]["phase"] == "Bound", claim["status"]
    assert user_pod["metadata"]["labels"]["app.kubernetes.io/component"] == "singleuser-server"
    # What networkpolicy.yaml selects: the user's pod as a server, the hub's as its peer.
    selected = kube.get_json(
        "-n", ns, "pods", "-l", "app.kubernetes.io/component=singleuser-server,minihub.org/hub=minihub"
    )["items"]  # fmt: skip
    assert [p["metadata"]["name"] for p in selected] == ["jupyter-alice"]
    assert {p["metadata"]["name"] for p in kube.get_json("-n", ns, "networkpolicy")["items"]} == {
        "minihub-singleuser",
        "minihub-hub",
    }
    # Launch secrets only by reference, from the pod's own Secret.
    container = user_pod["spec"]["containers"][0]
    by_ref = {e["name"] for e in container["env"] if "valueFrom" in e}
    in_clear = {e["name"] for e in container["env"] if "value" in e}
    assert "MINIHUB_LAUNCH_CONFIG" in by_ref, by_ref
    assert not in_clear & {"MINIHUB_LAUNCH_CONFIG", "JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN"}
    assert token not in json.dumps(user_pod)

    # The server answers through the hub's proxy (to a token of its owner, made by the CLI
    # in the hub's pod as docs/kubernetes.md shows), and writes to its claim.
    made = kube.kubectl(
        "-n", ns, "exec", pod["metadata"]["name"], "--",
        "minihub", "-f", "/etc/minihub/minihub.toml", "token", USER,
    )  # fmt: skip
    mine = made.stdout.strip().splitlines()[-1]
    status, body = call(f"{hub}/user/{USER}/api/status", mine)
    assert status == 200, body
    status, body = call(
        f"{hub}/user/{USER}/api/contents/kept.txt",
        mine,
        "PUT",
        {"type": "file", "format": "text", "content": "on the claim"},
    )
    assert status in (200, 201), body
    volume = kube.get_json("pv", claim["spec"]["volumeName"])["spec"]["hostPath"]["path"]
    assert (Path(volume) / "kept.txt").read_text() == "on the claim"

    # A stop deletes the pod; the claim stays.
    assert call(f"{hub}/hub/api/users/{USER}/server", token, "DELETE")[0] in (202, 204)
    until(
        "the user's pod is gone",
        lambda: not kube.get_json("-n", ns, "pods", "-l", "hub.jupyter.org/username=alice")["items"],
        60,
    )  # fmt: skip
    assert kube.get_json("-n", ns, "pvc", f"claim-{USER}")["status"]["phase"] == "Bound"

    # Without its RoleBinding the hub can do nothing: the refusal names the identity it used.
    kube.kubectl("-n", ns, "delete", "rolebinding", "minihub")
    sa = f"system:serviceaccount:{ns}:minihub"
    until("RBAC forgets the binding", lambda: not can_i(kube, sa, "get", "pvc", "-n", ns), 30)
    assert call(f"{hub}/hub/api/users/bob", token, "POST", {})[0] == 201
    call(f"{hub}/hub/api/users/bob/server", token, "POST", {})
    failed = progress(hub, token, "bob", timeout=60)[-1]
    assert failed.get("failed"), failed
    assert "The cluster refused the server (403)" in failed["message"], failed
    assert sa in failed["message"], failed


def test_the_role_allows_only_what_the_spawner_needs(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    kube, ns = kube_cluster, kube_namespace
    kube.kubectl("-n", ns, "apply", "-f", str(DEPLOY / "rbac.yaml"))
    sa = f"system:serviceaccount:{ns}:minihub"
    allowed = [
        ("create", "pods"), ("delete", "pods"), ("watch", "pods"),
        ("watch", "events"), ("create", "secrets"), ("patch", "secrets"),
        ("create", "services"), ("create", "persistentvolumeclaims"),
        ("patch", "persistentvolumeclaims"),
    ]  # fmt: skip
    for verb, what in allowed:
        assert can_i(kube, sa, verb, what, "-n", ns), f"{sa} cannot {verb} {what}"
    refused = [
        ("get", "secrets", ns), ("list", "secrets", ns),  # it never reads a Secret back
        ("delete", "persistentvolumeclaims", ns),  # users' claims outlive their servers
        ("update", "pods", ns),
        ("create", "roles", ns), ("create", "rolebindings", ns),
        ("list", "pods", "default"), ("create", "pods", "kube-system"),
    ]  # fmt: skip
    for verb, what, where in refused:
        assert not can_i(kube, sa, verb, what, "-n", where), f"{sa} may {verb} {what} in {where}"
    # A subresource by flag: "pods/log" would be the pod named log.
    assert can_i(kube, sa, "get", "pods", "--subresource=log", "-n", ns)
    assert not can_i(kube, sa, "create", "pods", "--subresource=exec", "-n", ns)
    assert not can_i(kube, sa, "list", "nodes")
    assert not can_i(kube, sa, "list", "pods", "--all-namespaces")
