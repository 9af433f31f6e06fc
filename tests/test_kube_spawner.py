"""The Kubernetes spawner against a real cluster (tests/kube_cluster.py): a hub process with
[spawner] class = "kubernetes" starts users' servers as pods, proxies a kernel in one, shows
the pods' events as progress, fails fast with the reason, keeps a user's volume claim,
re-adopts its pods after a restart, and keeps users out of each other's pods.

The test cluster has no pod network and no registry: pods run with hostNetwork, the image
built locally (imagePullPolicy Never), and the hub connects to 127.0.0.1 and a port per pod.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import helpers
import pytest
from kube_cluster import KubeCluster

pytestmark = pytest.mark.timeout(300)

MINIHUB = [sys.executable, "-m", "minihub"]


def toml_value(v: Any) -> str:
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(v)


def hub_toml(cluster: KubeCluster, ns: str, port: int, extra: str = "", **kube: Any) -> str:
    settings: dict[str, Any] = {
        "kubeconfig": str(cluster.kubeconfig),
        "namespace": ns,
        "image": cluster.image,
        "image_pull_policy": "Never",
        "ip": "127.0.0.1",
        "pod_connect_ip": "127.0.0.1",
        "host_port_range": "31000-31999",
        "extra_pod_config": {"hostNetwork": True},
        "delete_grace_period": 1,
        "mem_limit": "512M",
        "cpu_limit": 0.5,
        "cpu_guarantee": 0.05,  # below the limits: a Burstable pod, the usual kind
        "mem_guarantee": "256M",
        **kube,
    }
    lines = "\n".join(f"{k} = {toml_value(v)}" for k, v in settings.items())
    return (
        f'[hub]\nconnect_url = "http://127.0.0.1:{port}"\n'
        '[auth]\nauthenticator = "native"\n'
        '[spawner]\nclass = "kubernetes"\nstart_timeout = 90\n'
        f"{extra}\n[kubernetes]\n{lines}\n"
    )


def password(name: str) -> str:
    return f"pw-{name}-long-enough"


class KubeHub:
    """A hub process on a free port and the means to drive it as its users."""

    def __init__(self, tmp: Path, cluster: KubeCluster, ns: str, extra: str = "", **kube: Any):
        self.tmp, self.cluster, self.ns = tmp, cluster, ns
        self.port = helpers.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data = tmp / "data"
        self.toml = tmp / "minihub.toml"
        self.toml.write_text(hub_toml(cluster, ns, self.port, extra, **kube))
        self.log = tmp / "hub.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.tokens: dict[str, str] = {}

    def cli(self, *args: str, input: str | None = None) -> str:
        out = subprocess.run(
            [*MINIHUB, "-f", str(self.toml), "--data-dir", str(self.data), *args],
            input=input, capture_output=True, text=True, timeout=60, env=self.cluster.env(),
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def start(self) -> None:
        cmd = [*MINIHUB, "-f", str(self.toml), "--data-dir", str(self.data), "--port"]
        self.proc = helpers.launch_hub([*cmd, str(self.port)], self.port, self.log)

    def stop(self) -> None:
        if self.proc is not None:
            helpers.stop_hub(self.proc)
            self.proc = None

    def user(self, name: str, admin: bool = False) -> str:
        self.cli("user", "add", name, *(["--admin"] if admin else []), input=password(name) + "\n")
        self.tokens[name] = self.cli("token", name)
        return self.tokens[name]

    def session(self, name: str) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            self.url, headers={"Authorization": f"token {self.tokens[name]}"}
        )

    def pods(self) -> list[dict[str, Any]]:
        return list(self.cluster.get_json("-n", self.ns, "pods")["items"])

    def pod_of(self, user: str) -> dict[str, Any]:
        pods = [
            p for p in self.pods()
            if p["metadata"]["annotations"].get("hub.jupyter.org/username") == user
        ]  # fmt: skip
        assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
        return pods[0]


@pytest.fixture
def kube_hub(tmp_path: Path, kube_cluster: KubeCluster, kube_namespace: str) -> Iterator[KubeHub]:
    hub = KubeHub(tmp_path, kube_cluster, kube_namespace)
    yield hub
    hub.stop()


async def spawn(
    s: aiohttp.ClientSession, user: str, options: dict[str, Any] | None = None, server: str = ""
) -> list[dict[str, Any]]:
    """POST the server, then follow its progress to the end; the events."""
    path = f"/hub/api/users/{user}/" + (f"servers/{server}" if server else "server")
    async with s.post(path, json=options or {}) as r:
        if r.status not in (201, 202):  # refused, or failed before the POST's wait ran out
            body = await r.json()
            return [{"failed": True, "message": body["message"], "log_tail": body.get("log_tail")}]
        assert r.status in (201, 202), await r.text()
    return await follow(s, f"{path}/progress")


async def follow(s: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(120), s.get(url) as r:
        if r.status == 400:  # already ready
            return [{"ready": True, "message": "already running"}]
        async for line in r.content:
            if line.startswith(b"data:"):
                events.append(json.loads(line[5:]))
    return events


async def stop(s: aiohttp.ClientSession, user: str) -> None:
    async with s.delete(f"/hub/api/users/{user}/server") as r:
        assert r.status in (202, 204), await r.text()
    async with asyncio.timeout(90):
        while True:
            async with s.get(f"/hub/api/users/{user}") as r:
                model = await r.json()
            if not model["servers"] and model["pending"] is None:
                return
            await asyncio.sleep(0.2)


async def run_code(s: aiohttp.ClientSession, user: str, code: str) -> str:
    async with s.post(f"/user/{user}/api/kernels", json={"name": "python3"}) as r:
        assert r.status == 201, await r.text()
        kernel = await r.json()
    return await helpers.execute(s, f"/user/{user}/api/kernels/{kernel['id']}/channels", code)


def pod_exists(cluster: KubeCluster, ns: str, name: str) -> bool:
    got = cluster.kubectl("-n", ns, "get", "pod", name, "--ignore-not-found", "-o", "name")
    return bool(got.stdout.strip())


# --- spawn, proxy, limits, progress, stop --------------------------------------------------------
async def test_spawn_runs_a_kernel_in_a_pod_with_its_limits(kube_hub: KubeHub) -> None:
    kube_hub.user("kalice", admin=True)
    kube_hub.start()
    async with kube_hub.session("kalice") as s:
        events = await spawn(s, "kalice")
        assert events[-1].get("ready"), events
        messages = " | ".join(e["message"] for e in events)
        assert "Creating pod jupyter-kalice" in messages
        assert "Scheduled" in messages and "Started" in messages, messages  # the pod's events
        pod = kube_hub.pod_of("kalice")
        meta, spec = pod["metadata"], pod["spec"]
        assert meta["labels"]["minihub.org/hub"] == "minihub"
        assert meta["labels"]["hub.jupyter.org/username"] == "kalice"
        container = spec["containers"][0]
        assert container["resources"]["limits"] == {"cpu": "500m", "memory": "536870912"}
        assert container["resources"]["requests"] == {"cpu": "50m", "memory": "268435456"}
        assert pod["status"]["qosClass"] == "Burstable"
        assert container["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert spec["automountServiceAccountToken"] is False
        # The launch secret is only referenced from the pod spec, never written in it.
        env = {e["name"]: e for e in container["env"]}
        assert "value" not in env["MINIHUB_LAUNCH_CONFIG"]
        assert "secret" not in json.dumps(spec).lower().replace("secretkeyref", "")
        # Code runs in the pod, as the image's user, under the pod's memory limit.
        out = await run_code(
            s, "kalice",
            "import os, socket; print(os.getuid(), socket.gethostname());"
            "print(open('/sys/fs/cgroup/memory/memory.limit_in_bytes').read())",
        )  # fmt: skip
        uid, _host, limit = out.split()
        assert uid == "1000" and int(limit) == 512 << 20, out
        # The REST model shows the spawner's state: the pod's name, namespace and uid.
        async with s.get("/hub/api/users/kalice") as r:
            state = (await r.json())["servers"][""]["state"]
        assert state["pod"] == meta["name"] and state["uid"] == meta["uid"]
        await stop(s, "kalice")
        assert not pod_exists(kube_hub.cluster, kube_hub.ns, meta["name"])
        secrets = kube_hub.cluster.get_json("-n", kube_hub.ns, "secrets")["items"]
        assert not [x for x in secrets if x["metadata"]["name"].startswith(meta["name"])]


# --- fail fast, with the reason ----------------------------------------------------------------
FAILING_PROFILES = [
    {"display_name": "Fine", "slug": "fine", "default": True},
    {
        "display_name": "Missing image",
        "slug": "noimage",
        "kubespawner_override": {"image": "minihub-kube/does-not-exist:0"},
    },
    {
        "display_name": "Too big",
        "slug": "huge",
        "kubespawner_override": {"cpu_guarantee": 64, "cpu_limit": 64},
    },
    {
        "display_name": "Crashing",
        "slug": "crash",
        "kubespawner_override": {"cmd": ["sh", "-c", "echo boom-before-exit; exit 3"]},
    },
]


def profiles_toml(profiles: list[dict[str, Any]]) -> str:
    out = []
    for p in profiles:
        out.append("[[kubernetes.profile_list]]")
        out += [f"{k} = {toml_value(v)}" for k, v in p.items()]
    return "\n".join(out)


@pytest.fixture
def profile_hub(
    tmp_path: Path, kube_cluster: KubeCluster, kube_namespace: str
) -> Iterator[KubeHub]:
    hub = KubeHub(tmp_path, kube_cluster, kube_namespace)
    hub.toml.write_text(hub.toml.read_text() + profiles_toml(FAILING_PROFILES) + "\n")
    yield hub
    hub.stop()


@pytest.mark.parametrize(
    ("profile", "expected"),
    [
        ("noimage", ["minihub-kube/does-not-exist:0", "ErrImageNeverPull"]),
        ("huge", ["No node of the cluster can run this server", "Insufficient cpu"]),
        ("crash", ["exit code 3"]),
    ],
)
async def test_a_pod_that_cannot_run_fails_at_once_with_the_reason(
    profile_hub: KubeHub, profile: str, expected: list[str]
) -> None:
    profile_hub.user("kbob")
    profile_hub.start()
    async with profile_hub.session("kbob") as s:
        events = await spawn(s, "kbob", {"profile": profile})
        assert events[-1].get("failed"), events
        for text in expected:
            assert text in events[-1]["message"], events[-1]
        async with s.get("/hub/api/users/kbob") as r:
            model = await r.json()
        assert not model["servers"]
        # The reason was seen and reported, not the 90 s start_timeout run out.
        assert "did not start within" not in events[-1]["message"]
        if profile == "crash":
            page = await (await s.get("/hub/spawn-pending/kbob")).text()
            assert "boom-before-exit" in page  # the container's last output, from its log
        # What the failed start made is gone (the pod and its secret).
        assert not [p for p in profile_hub.pods() if p["metadata"].get("deletionTimestamp") is None]


async def test_unknown_profile_is_refused_before_anything_starts(profile_hub: KubeHub) -> None:
    profile_hub.user("kcarol")
    profile_hub.start()
    async with profile_hub.session("kcarol") as s:
        async with s.post("/hub/api/users/kcarol/server", json={"profile": "nope"}) as r:
            assert r.status == 400
            body = await r.json()
        assert "nope" in body["message"] and "fine" in body["message"], body
        assert profile_hub.pods() == []


# --- profiles: the spawn page's form and user_options ------------------------------------------
SIZES = [
    {
        "display_name": "Small <1 CPU>",
        "slug": "small",
        "default": True,
        "kubespawner_override": {"mem_limit": "300M"},
    },
    {
        "display_name": "Large",
        "slug": "large",
        "description": "more memory",
        "kubespawner_override": {"mem_limit": "700M"},
        "profile_options": {
            "cpus": {
                "display_name": "CPUs",
                "choices": {
                    "one": {
                        "display_name": "1",
                        "default": True,
                        "kubespawner_override": {"cpu_limit": 1},
                    },
                    "half": {"display_name": "0.5", "kubespawner_override": {"cpu_limit": 0.5}},
                },
            }
        },
    },
]


async def test_profiles_from_the_form_and_from_user_options(
    tmp_path: Path, kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    hub = KubeHub(tmp_path, kube_cluster, kube_namespace)
    hub.toml.write_text(hub.toml.read_text() + profiles_toml(SIZES) + "\n")
    hub.user("kdave")
    hub.user("kerin")
    try:
        hub.start()
        # kdave picks "Large" with half a CPU on the spawn page, as a browser would.
        async with aiohttp.ClientSession(
            hub.url, cookie_jar=aiohttp.CookieJar(unsafe=True)
        ) as browser:
            await helpers_login(browser, "kdave")
            async with browser.get("/hub/spawn/kdave") as r:
                page = await r.text()
                assert r.status == 200
            assert "Small &lt;1 CPU&gt;" in page and 'value="large"' in page
            xsrf = next(c.value for c in browser.cookie_jar if c.key == "_xsrf")
            form = {"_xsrf": xsrf, "profile": "large", "profile-option-large--cpus": "half"}
            async with browser.post("/hub/spawn/kdave", data=form, allow_redirects=False) as r:
                assert r.status == 302, await r.text()
        async with hub.session("kdave") as s:
            assert (await follow(s, "/hub/api/users/kdave/server/progress"))[-1].get("ready")
        limits = hub.pod_of("kdave")["spec"]["containers"][0]["resources"]["limits"]
        assert limits == {"cpu": "500m", "memory": "734003200"}
        # kerin asks the REST API for the default profile by leaving it out.
        async with hub.session("kerin") as s:
            assert (await spawn(s, "kerin"))[-1].get("ready")
            async with s.get("/hub/api/users/kerin") as r:
                assert (await r.json())["servers"][""]["user_options"] == {}
        limits = hub.pod_of("kerin")["spec"]["containers"][0]["resources"]["limits"]
        assert limits["memory"] == "314572800"
        assert hub.pod_of("kerin")["metadata"]["annotations"]["minihub.org/profile"] == "small"
    finally:
        hub.stop()


async def helpers_login(browser: aiohttp.ClientSession, name: str) -> None:
    async with browser.get("/hub/login") as r:
        assert r.status == 200
    data = {"username": name, "password": password(name)}
    async with browser.post("/hub/login", data=data, allow_redirects=False) as r:
        assert r.status == 302, await r.text()


# --- storage: a claim per user, kept across stop and start --------------------------------------
def hostpath_volume(cluster: KubeCluster, ns: str, claim: str, path: Path) -> str:
    """A PersistentVolume pre-bound to `claim` (the test cluster has no dynamic storage)."""
    path.mkdir(parents=True)
    path.chmod(0o777)
    name = f"pv-{ns}-{claim}"[:63]
    cluster.apply(ns, {
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Delete", "storageClassName": "manual",
            "hostPath": {"path": str(path)},
            "claimRef": {"namespace": ns, "name": claim},
        },
    })  # fmt: skip
    return name


async def test_a_users_claim_outlives_the_server(
    tmp_path: Path, kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    hub = KubeHub(
        tmp_path, kube_cluster, kube_namespace,
        storage_pvc_ensure=True, storage_class="manual", storage_capacity="1Gi",
        volumes=[{"name": "home", "persistentVolumeClaim": {"claimName": "claim-{username}"}}],
        volume_mounts=[{"name": "home", "mountPath": "/home/jovyan/work"}],
        # Seed a new home from the image's /etc/skel, as a class's shared files would be.
        lifecycle_hooks={"postStart": {"exec": {"command": [
            "sh", "-c", "cp -rn /etc/skel/. /home/jovyan/work/"]}}},
    )  # fmt: skip
    pv = hostpath_volume(kube_cluster, kube_namespace, "claim-kfrank", tmp_path / "pv")
    hub.user("kfrank")
    try:
        hub.start()
        async with hub.session("kfrank") as s:
            assert (await spawn(s, "kfrank"))[-1].get("ready")
            body = {"type": "file", "format": "text", "content": "kept\n"}
            async with s.put("/user/kfrank/api/contents/work/note.txt", json=body) as r:
                assert r.status in (200, 201), await r.text()
            await stop(s, "kfrank")
            claim = kube_cluster.get_json("-n", kube_namespace, "pvc", "claim-kfrank")
            assert claim["status"]["phase"] == "Bound" and claim["spec"]["volumeName"] == pv
            assert (tmp_path / "pv" / "note.txt").read_text() == "kept\n"
            assert (tmp_path / "pv" / ".bashrc").exists()  # the postStart hook ran
            assert (await spawn(s, "kfrank"))[-1].get("ready")
            async with s.get("/user/kfrank/api/contents/work/note.txt") as r:
                assert (await r.json())["content"] == "kept\n"
            await stop(s, "kfrank")
        # kfrank is removed; someone signs up as kfrank later: not given the old files
        hub.cli("user", "remove", "kfrank")
        hub.user("kfrank")
        async with hub.session("kfrank") as s:
            failed = (await spawn(s, "kfrank"))[-1]
            assert failed.get("failed") and "earlier user named kfrank" in failed["message"]
            assert not [p for p in hub.pods() if p["metadata"]["name"] == "jupyter-kfrank"]
            # the admin hands the claim over, as the message says
            handover = failed["message"].split("(kubectl annotate ")[1].rstrip(").")
            kube_cluster.kubectl("-n", kube_namespace, "annotate", *handover.split())
            assert (await spawn(s, "kfrank"))[-1].get("ready")
            async with s.get("/user/kfrank/api/contents/work/note.txt") as r:
                assert (await r.json())["content"] == "kept\n"
    finally:
        hub.stop()
    kube_cluster.kubectl("delete", "pv", pv, "--wait=false", check=False)


# --- a restarted hub re-adopts its pods -------------------------------------------------------------
async def test_hub_restart_readopts_running_pods(kube_hub: KubeHub) -> None:
    kube_hub.user("kgina")
    kube_hub.start()
    async with kube_hub.session("kgina") as s:
        assert (await spawn(s, "kgina"))[-1].get("ready")
        async with s.post("/user/kgina/api/kernels", json={"name": "python3"}) as r:
            kernel = (await r.json())["id"]
        channels = f"/user/kgina/api/kernels/{kernel}/channels"
        await helpers.execute(s, channels, "x = 41")
    before = kube_hub.pod_of("kgina")
    kube_hub.stop()
    kube_hub.start()
    async with kube_hub.session("kgina") as s:
        async with s.get("/hub/api/users/kgina") as r:
            assert (await r.json())["servers"][""]["ready"] is True
        # The same pod, and the same kernel with its variables: nothing was restarted.
        assert await helpers.execute(s, channels, "print(x + 1)") == "42\n"
    after = kube_hub.pod_of("kgina")
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert after["status"]["containerStatuses"][0]["restartCount"] == 0
    assert "re-adopted" in kube_hub.log.read_text() or "adopt" in kube_hub.log.read_text()


# --- users never reach each other's pods -----------------------------------------------------------
async def test_users_cannot_reach_each_others_pods(kube_hub: KubeHub) -> None:
    kube_hub.user("khank")
    kube_hub.user("kiris")
    kube_hub.start()
    async with kube_hub.session("khank") as s:
        assert (await spawn(s, "khank"))[-1].get("ready")
    async with kube_hub.session("kiris") as s:
        async with s.get("/user/khank/api/contents", allow_redirects=False) as r:
            assert r.status in (403, 404), await r.text()
        async with s.get("/user/khank/api/kernels", allow_redirects=False) as r:
            assert r.status in (403, 404)
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            async with s.ws_connect("/user/khank/api/kernels/x/channels"):
                pass
        assert e.value.status in (403, 404)
    # Straight to the pod's port without the hub: no secret, no answer.
    port = kube_hub.pod_of("khank")["metadata"]["annotations"]["minihub.org/port"]
    async with (
        aiohttp.ClientSession() as raw,
        raw.get(f"http://127.0.0.1:{port}/user/khank/api/contents") as r,
    ):
        assert r.status == 403


# --- culling -------------------------------------------------------------------------------------------
async def test_an_idle_pod_is_culled(
    tmp_path: Path, kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    hub = KubeHub(tmp_path, kube_cluster, kube_namespace, extra="[culler]\ntimeout = 3\nevery = 1")
    hub.user("kjack")
    try:
        hub.start()
        async with hub.session("kjack") as s:
            assert (await spawn(s, "kjack"))[-1].get("ready")
            name = hub.pod_of("kjack")["metadata"]["name"]
            async with asyncio.timeout(90):
                while pod_exists(kube_cluster, kube_namespace, name):
                    await asyncio.sleep(0.5)
            async with s.get("/hub/api/users/kjack") as r:
                assert (await r.json())["servers"] == {}
    finally:
        hub.stop()


# --- jupyterhub-singleuser from a standard image, unchanged ----------------------------------------
async def test_jupyterhub_singleuser_image_works_unchanged(
    tmp_path: Path, kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    hub = KubeHub(tmp_path, kube_cluster, kube_namespace, extra="")
    text = hub.toml.read_text().replace(
        "[spawner]\n", '[spawner]\nserver = "jupyterhub-singleuser"\n'
    )
    hub.toml.write_text(text)
    hub.user("kkate")
    try:
        hub.start()
        async with hub.session("kkate") as s:
            events = await spawn(s, "kkate")
            assert events[-1].get("ready"), (events, hub.log.read_text()[-3000:])
            pod = hub.pod_of("kkate")
            container = pod["spec"]["containers"][0]
            assert "command" not in container  # the image's own CMD, as with KubeSpawner
            env = {e["name"]: e for e in container["env"]}
            assert "valueFrom" in env["JUPYTERHUB_API_TOKEN"]  # by reference only
            async with s.get("/user/kkate/api/status") as r:
                assert r.status == 200, await r.text()
            out = await run_code(s, "kkate", "import os; print(os.getuid())")
            assert out == "1000\n"
    finally:
        hub.stop()


# --- TLS from the hub to the pod ------------------------------------------------------------------
async def test_the_hub_reaches_the_pod_over_tls(
    tmp_path: Path, kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    kube_cluster.kubectl(
        "-n", kube_namespace, "create", "secret", "tls", "pod-tls",
        f"--cert={cert}", f"--key={key}",
    )  # fmt: skip
    hub = KubeHub(tmp_path, kube_cluster, kube_namespace, ssl_secret="pod-tls")
    text = hub.toml.read_text().replace(
        "[hub]\n", f'[hub]\nserver_ca_file = "{tmp_path / "ca.pem"}"\n', 1
    )
    hub.toml.write_text(text)
    hub.user("klara")
    try:
        hub.start()
        async with hub.session("klara") as s:
            assert (await spawn(s, "klara"))[-1].get("ready")
            async with s.get("/hub/api/users/klara") as r:
                assert (await r.json())["servers"][""]["url"] == "/user/klara/"
            assert (await run_code(s, "klara", "print(6 * 7)")) == "42\n"
        # The pod speaks only TLS: plain http to its port gets no answer.
        port = hub.pod_of("klara")["metadata"]["annotations"]["minihub.org/port"]
        async with aiohttp.ClientSession() as raw:
            with pytest.raises(aiohttp.ClientError):
                await raw.get(f"http://127.0.0.1:{port}/user/klara/api/status")
    finally:
        hub.stop()


# --- a namespace quota refuses the pod ---------------------------------------------------------------
async def test_a_quota_refusal_is_reported(kube_hub: KubeHub) -> None:
    kube_hub.cluster.apply(kube_hub.ns, {
        "apiVersion": "v1", "kind": "ResourceQuota",
        "metadata": {"name": "tight"},
        "spec": {"hard": {"limits.memory": "100Mi"}},
    })  # fmt: skip
    kube_hub.user("kmia")
    kube_hub.start()
    async with kube_hub.session("kmia") as s:
        events = await spawn(s, "kmia")
    assert events[-1].get("failed"), events
    message = events[-1]["message"]
    assert "quota" in message and "limits.memory" in message, message
    assert kube_hub.pods() == []
    secrets = kube_hub.cluster.get_json("-n", kube_hub.ns, "secrets")["items"]
    assert not [x for x in secrets if x["metadata"]["name"].startswith("jupyter-kmia")]


async def test_another_hubs_launch_secret_is_left_alone(kube_hub: KubeHub) -> None:
    """Two hubs in one namespace: a start that finds a Secret of its pod's name made by the
    other hub fails with why, and neither deletes it nor discards it on the way out (the
    other hub's running server needs it)."""
    kube_hub.cluster.apply(kube_hub.ns, {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "jupyter-kzed-launch", "labels": {"minihub.org/hub": "other-hub"}},
        "stringData": {"config": "the other hub's"},
    })  # fmt: skip
    kube_hub.user("kzed")
    kube_hub.start()
    async with kube_hub.session("kzed") as s:
        events = await spawn(s, "kzed")
    assert events[-1].get("failed"), events
    assert "another hub made" in events[-1]["message"], events[-1]
    secret = kube_hub.cluster.get_json("-n", kube_hub.ns, "secret", "jupyter-kzed-launch")
    assert secret["metadata"]["labels"]["minihub.org/hub"] == "other-hub"
    assert kube_hub.pods() == []
