"""The Kubernetes spawner's pure parts, without a cluster: a TOML file through
minihub.config.load, the [kubernetes] settings and profiles, to the Pod, Secret, PVC and
Service manifests. Each test checks what a KubeSpawner user expects a setting to mean."""

from __future__ import annotations

import html.parser
import json
import re
import string
from pathlib import Path
from typing import Any

import pytest

from minihub import config
from minihub.errors import SpawnError, StartupError
from minihub.spawner.base import Launch
from minihub.spawner.kubernetes import podspec, profiles
from minihub.spawner.kubernetes.spawner import KubeSpawner

NS = "users"
TOKEN = "tok-" + "7" * 40  # a jupyterhub-singleuser server's API token
SERVER_SECRET = "sec-" + "5" * 40  # what minihub's server gets in its launch config
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
ODD = "Ünïcode.user@x"


def load(tmp_path: Path, body: str = "") -> config.Config:
    path = tmp_path / "minihub.toml"
    path.write_text(f'[spawner]\nclass = "kubernetes"\n\n{body}', encoding="utf-8")
    return config.load(path)


def spawner(cfg: config.Config, tmp_path: Path) -> KubeSpawner:
    """A KubeSpawner on a kubeconfig naming a cluster nobody asks (it reads it at once)."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    cfg.set("kubernetes.kubeconfig", str(kubeconfig))
    return KubeSpawner(cfg)


def launch(
    user: str = "alice", server: str = "", protocol: str = "jupyterhub-singleuser"
) -> Launch:
    """A Launch as the hub's protocols prepare it (the hub's own PATH included)."""
    env = {"PATH": "/opt/minihub/venv/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    cfg: dict[str, Any] = {}
    if protocol == "jupyterhub-singleuser":
        env |= {
            "JUPYTERHUB_API_TOKEN": TOKEN,
            "JPY_API_TOKEN": TOKEN,
            "JUPYTERHUB_USER": user,
            "JUPYTERHUB_SERVER_NAME": server,
            # JSON set by the hub is never {}-expanded (KubeSpawner issue #743)
            "HUB_JSON": '{"a": 1}',
        }
    else:
        env["MINIHUB_USER"] = user
        cfg = {"secret": SERVER_SECRET, "user": user, "server_name": server}
    prefix = f"/user/{user}/" + (f"{server}/" if server else "")
    return Launch(user, server, protocol, [], env, cfg, prefix)


def build(
    cfg: config.Config, ln: Launch, options: dict[str, Any] | None = None, port: int = 8888
) -> tuple[dict[str, Any], dict[str, str], podspec.Names, dict[str, Any]]:
    """What the spawner's start builds: resolved settings, names, the Pod and its Secret."""
    settings, _slug = profiles.resolve(cfg, ln.user, options or {}, [])
    names = podspec.names_for(settings, ln, NS)
    manifest, data = podspec.pod(settings, ln, names, cfg.get("kubernetes.hub_instance"), port)
    return manifest, data, names, settings


def container(manifest: dict[str, Any]) -> dict[str, Any]:
    (c,) = [c for c in manifest["spec"]["containers"] if c["name"] == "notebook"]
    return c


def env_of(manifest: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(manifest)["env"]}


# -- names -----------------------------------------------------------------------------------


def test_pod_names_default_and_named_server(tmp_path: Path) -> None:
    cfg = load(tmp_path)
    manifest, _, names, _ = build(cfg, launch("alice"))
    assert names.pod == manifest["metadata"]["name"] == "jupyter-alice"
    assert manifest["metadata"]["namespace"] == NS
    assert names.pvc == ""  # no claim without storage_pvc_ensure
    _, _, named, _ = build(cfg, launch("alice", "work"))
    assert named.pod == "jupyter-alice--work"  # KubeSpawner's {user_server}
    assert named.secret != names.secret


def test_odd_user_name_escaped_as_kubespawner(tmp_path: Path) -> None:
    manifest, _, names, _ = build(load(tmp_path), launch(ODD))
    # escapism with '-': each byte outside [a-z0-9] is -xx (Ü = c3 9c, ï = c3 af, . = 2e, @ = 40)
    assert names.pod == "jupyter--c3-9cn-c3-afcode-2euser-40x"
    assert DNS_LABEL.fullmatch(names.pod)
    assert manifest["metadata"]["annotations"]["hub.jupyter.org/username"] == ODD


def test_long_names_hashed_within_63_and_kept_apart(tmp_path: Path) -> None:
    cfg = load(tmp_path, "[kubernetes]\nstorage_pvc_ensure = true\n")
    long_a, long_b = "x" * 80 + "a", "x" * 80 + "b"
    got = {u: build(cfg, launch(u))[2] for u in (long_a, long_b)}
    for names in got.values():
        for name in (names.pod, names.secret):
            assert len(name) <= 63 and DNS_LABEL.fullmatch(name), name
        # a claim's name may be a longer DNS subdomain, as KubeSpawner's
        assert len(names.pvc) <= 253 and DNS_LABEL.fullmatch(names.pvc)
    assert got[long_a].pvc != got[long_b].pvc
    assert got[long_a].pod != got[long_b].pod
    assert got[long_a].pod.startswith("jupyter-xxxx")
    # a short name is left whole, no hash
    assert build(cfg, launch("bob"))[2].pod == "jupyter-bob"


def test_distinct_servers_get_distinct_objects(tmp_path: Path) -> None:
    """Names just under the limit, and user/server pairs that could run together: each
    server's pod, secret and claim are its own (else one user's pod reads another's token
    or mounts another's home)."""
    cfg = load(tmp_path, "[kubernetes]\nstorage_pvc_ensure = true\n")
    near = "y" * 49  # jupyter-<50 characters>: 58, under 63 but close to it
    servers = [
        ("ab", ""),
        ("a", "b"),
        ("a-b", ""),
        ("a.b", ""),
        ("a", "-b"),
        ("a-", "b"),
        (near + "1", ""),
        (near + "2", ""),
        (ODD, ""),
        (ODD, "work"),
    ]
    built = [build(cfg, launch(u, s))[2] for u, s in servers]
    for kind in ("pod", "secret", "pvc"):
        values = [getattr(n, kind) for n in built]
        assert len(set(values)) == len(values), (kind, values)
        limit = 253 if kind == "pvc" else 63
        assert all(len(v) <= limit and DNS_LABEL.fullmatch(v) for v in values), values


# -- labels and annotations -------------------------------------------------------------------


def test_labels_find_the_pod_and_are_valid_values(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        '[kubernetes]\nhub_instance = "classroom-a"\n'
        'extra_labels = { course = "cs101", owner = "{username}", "minihub.org/hub" = "other" }\n'
        'extra_annotations = { "example.org/note" = "hi" }\n',
    )
    for user, server in (("alice", ""), (ODD, "Work Space!"), ("z" * 100, "s" * 100)):
        manifest, _, names, settings = build(cfg, launch(user, server))
        meta = manifest["metadata"]
        lab = meta["labels"]
        assert lab["minihub.org/hub"] == "classroom-a"  # extra_labels cannot take it over
        assert lab["component"] == "singleuser-server"
        assert lab["course"] == "cs101"
        assert lab["owner"] == podspec.escape(user)
        for key in ("hub.jupyter.org/username", "hub.jupyter.org/servername"):
            assert len(lab[key]) <= 63 and LABEL_VALUE.fullmatch(lab[key]), lab[key]
        assert bool(lab["hub.jupyter.org/servername"]) == bool(server)
        assert meta["annotations"]["hub.jupyter.org/username"] == user
        assert meta["annotations"]["hub.jupyter.org/servername"] == server
        assert meta["annotations"]["example.org/note"] == "hi"
        # the Service selects exactly this pod
        svc = podspec.service(
            names, podspec.labels(settings, launch(user, server), "classroom-a"), 8888
        )
        assert svc["metadata"]["name"] == names.pod
        assert svc["spec"]["selector"].items() <= lab.items()
    assert build(cfg, launch("alice"))[0]["metadata"]["labels"]["hub.jupyter.org/username"] == (
        "alice"
    )


# -- what runs ------------------------------------------------------------------------------------


def test_image_command_and_pull_secrets(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        '[kubernetes]\nimage = "quay.io/jupyter/scipy-notebook:2024-01-15"\n'
        'image_pull_policy = "Never"\nimage_pull_secrets = ["regcred", "other"]\n'
        'working_dir = "/home/jovyan/work"\nargs = ["--debug"]\n',
    )
    manifest, _, _, _ = build(cfg, launch())
    c = container(manifest)
    assert c["image"] == "quay.io/jupyter/scipy-notebook:2024-01-15"
    assert c["imagePullPolicy"] == "Never"
    assert manifest["spec"]["imagePullSecrets"] == [{"name": "regcred"}, {"name": "other"}]
    assert c["workingDir"] == "/home/jovyan/work"
    assert c["args"] == ["--debug"]
    assert "command" not in c  # jupyterhub-singleuser: the image's own (start-notebook.py)
    assert c["ports"] == [{"name": "notebook-port", "containerPort": 8888}]
    assert manifest["spec"]["restartPolicy"] == "Never"
    own = container(build(cfg, launch(protocol="minihub"))[0])
    assert own["command"] == ["python3", "-I", "-m", "minihub.singleuser"]
    cfg2 = load(tmp_path, '[kubernetes]\ncmd = ["/opt/venv/bin/jupyterhub-singleuser"]\n')
    assert container(build(cfg2, launch())[0])["command"] == ["/opt/venv/bin/jupyterhub-singleuser"]
    plain = build(load(tmp_path), launch())[0]["spec"]
    assert "imagePullSecrets" not in plain and "nodeSelector" not in plain


def test_secrets_only_by_reference_and_no_hub_path(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        '[kubernetes]\nenvironment = { OWNER = "{username}", SERVER = "{servername}" }\n',
    )
    manifest, data, names, _ = build(cfg, launch(ODD, "work"))
    env = env_of(manifest)
    for key in ("JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN"):
        assert env[key] == {"secretKeyRef": {"name": names.secret, "key": key}}
        assert data[key] == TOKEN
    assert TOKEN not in json.dumps(manifest)
    assert "PATH" not in env  # the image knows its own PATH, not the hub's venv
    assert env["JUPYTERHUB_USER"] == ODD
    assert env["HUB_JSON"] == '{"a": 1}'
    assert env["OWNER"] == podspec.escape(ODD) and env["SERVER"] == "work"
    secret = podspec.secret(names, data, manifest["metadata"]["labels"])
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == names.secret
    assert secret["metadata"]["namespace"] == NS and secret["stringData"] == data

    manifest, data, names, _ = build(cfg, launch(protocol="minihub"))
    env = env_of(manifest)
    assert env["MINIHUB_LAUNCH_CONFIG"] == {
        "secretKeyRef": {"name": names.secret, "key": "MINIHUB_LAUNCH_CONFIG"}
    }
    assert json.loads(data["MINIHUB_LAUNCH_CONFIG"])["secret"] == SERVER_SECRET
    assert SERVER_SECRET not in json.dumps(manifest)
    assert set(data) == {"MINIHUB_LAUNCH_CONFIG"}


def test_path_set_by_the_admin_is_kept(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[kubernetes]\nenvironment = { PATH = "/opt/conda/bin:/usr/bin" }\n')
    assert env_of(build(cfg, launch())[0])["PATH"] == "/opt/conda/bin:/usr/bin"


# -- resources ----------------------------------------------------------------------------------


def test_resources_limits_and_guarantees(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        '[kubernetes]\ncpu_limit = 2\ncpu_guarantee = 0.5\nmem_limit = "1G"\n'
        'mem_guarantee = "512M"\nextra_resource_limits = { "nvidia.com/gpu" = "1" }\n'
        'extra_resource_guarantees = { "ephemeral-storage" = "1Gi" }\n',
    )
    res = container(build(cfg, launch())[0])["resources"]
    # KubeSpawner's byte sizes are binary: 1G = 1024**3 bytes
    assert res["limits"] == {"cpu": "2000m", "memory": str(1 << 30), "nvidia.com/gpu": "1"}
    assert res["requests"] == {"cpu": "500m", "memory": str(512 << 20), "ephemeral-storage": "1Gi"}
    assert container(build(load(tmp_path), launch())[0])["resources"] == {}


# -- who it runs as ------------------------------------------------------------------------------


def test_security_defaults(tmp_path: Path) -> None:
    spec = build(load(tmp_path), launch())[0]["spec"]
    assert container({"spec": spec})["securityContext"] == {
        "runAsUser": 1000,
        "runAsGroup": 100,
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
    }
    assert spec["securityContext"] == {"fsGroup": 100}
    assert "serviceAccountName" not in spec
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False


def test_security_overrides(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        "[kubernetes]\nuid = 0\ngid = 0\nfs_gid = -1\nsupplemental_gids = [27, 1001]\n"
        "allow_privilege_escalation = true\n"
        'container_security_context = { capabilities = { drop = ["ALL"] } }\n'
        'pod_security_context = { seccompProfile = { type = "RuntimeDefault" } }\n'
        'service_account = "builder"\nautomount_service_account_token = true\n',
    )
    spec = build(cfg, launch())[0]["spec"]
    csc = container({"spec": spec})["securityContext"]
    assert csc["runAsUser"] == 0 and csc["runAsNonRoot"] is False
    assert csc["allowPrivilegeEscalation"] is True
    assert csc["capabilities"] == {"drop": ["ALL"]}
    assert spec["securityContext"] == {
        "supplementalGroups": [27, 1001],
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert spec["serviceAccountName"] == "builder"
    assert spec["automountServiceAccountToken"] is True
    # a service account alone does not mount its token
    only_sa = load(tmp_path, '[kubernetes]\nservice_account = "builder"\n')
    assert build(only_sa, launch())[0]["spec"]["automountServiceAccountToken"] is False


# -- storage ---------------------------------------------------------------------------------------


def test_volumes_and_mounts_expand_per_user(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        "[kubernetes]\n"
        "[[kubernetes.volumes]]\n"
        'name = "home"\npersistentVolumeClaim = { claimName = "claim-{username}" }\n'
        "[[kubernetes.volumes]]\n"
        'name = "scratch"\nhostPath = { path = "/srv/scratch/{username}/{servername}" }\n'
        "[[kubernetes.volume_mounts]]\n"
        'name = "home"\nmountPath = "/home/jovyan"\n'
        "[[kubernetes.volume_mounts]]\n"
        'name = "scratch"\nmountPath = "/scratch"\nsubPath = "{servername}"\n',
    )
    first = build(cfg, launch(ODD, "work"))[0]
    esc = podspec.escape(ODD)
    assert first["spec"]["volumes"] == [
        {"name": "home", "persistentVolumeClaim": {"claimName": f"claim-{esc}"}},
        {"name": "scratch", "hostPath": {"path": f"/srv/scratch/{esc}/work"}},
    ]
    assert container(first)["volumeMounts"] == [
        {"name": "home", "mountPath": "/home/jovyan"},
        {"name": "scratch", "mountPath": "/scratch", "subPath": "work"},
    ]
    # the next user's pod gets its own names: the settings were not expanded in place
    second = build(cfg, launch("bob"))[0]
    assert second["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "claim-bob"
    assert cfg.get("kubernetes.volumes")[0]["persistentVolumeClaim"]["claimName"] == (
        "claim-{username}"
    )


def test_pvc_spec(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        '[kubernetes]\nstorage_pvc_ensure = true\nstorage_class = "fast-ssd"\n'
        'storage_capacity = "5Gi"\nstorage_access_modes = ["ReadWriteMany"]\n'
        'storage_selector = { matchLabels = { tier = "home" } }\n'
        'storage_extra_labels = { backup = "nightly" }\n',
    )
    ln = launch("alice")
    _, _, names, settings = build(cfg, ln)
    assert names.pvc == "claim-alice"  # KubeSpawner's name for a default server's claim
    claim = podspec.pvc(settings, ln, names, "minihub")
    assert claim["kind"] == "PersistentVolumeClaim"
    assert claim["metadata"]["name"] == "claim-alice" and claim["metadata"]["namespace"] == NS
    assert claim["spec"] == {
        "accessModes": ["ReadWriteMany"],
        "resources": {"requests": {"storage": "5Gi"}},
        "storageClassName": "fast-ssd",
        "selector": {"matchLabels": {"tier": "home"}},
    }
    lab = claim["metadata"]["labels"]
    assert lab["minihub.org/hub"] == "minihub" and lab["hub.jupyter.org/username"] == "alice"
    assert lab["backup"] == "nightly"
    plain = load(tmp_path, "[kubernetes]\nstorage_pvc_ensure = true\n")
    ps = profiles.resolve(plain, "alice", {}, [])[0]
    spec = podspec.pvc(ps, ln, podspec.names_for(ps, ln, NS), "minihub")["spec"]
    # no class: the cluster's default StorageClass; KubeSpawner's 10Gi, ReadWriteOnce
    assert spec == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "10Gi"}},
    }


def test_ssl_secret_is_mounted(tmp_path: Path) -> None:
    manifest = build(load(tmp_path, '[kubernetes]\nssl_secret = "pod-tls"\n'), launch())[0]
    assert {"name": "minihub-tls", "secret": {"secretName": "pod-tls"}} in manifest["spec"][
        "volumes"
    ]
    mount = {"name": "minihub-tls", "mountPath": podspec.TLS_DIR, "readOnly": True}
    assert mount in container(manifest)["volumeMounts"]


# -- the pod's other parts -------------------------------------------------------------------------


def test_lifecycle_hooks(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        "[kubernetes.lifecycle_hooks.postStart.exec]\n"
        'command = ["sh", "-c", "cp -rn /etc/skel/. /home/jovyan/"]\n'
        "[kubernetes.lifecycle_hooks.preStop.exec]\n"
        'command = ["sync"]\n',
    )
    assert container(build(cfg, launch())[0])["lifecycle"] == {
        "postStart": {"exec": {"command": ["sh", "-c", "cp -rn /etc/skel/. /home/jovyan/"]}},
        "preStop": {"exec": {"command": ["sync"]}},
    }
    assert "lifecycle" not in container(build(load(tmp_path), launch())[0])


def test_placement(tmp_path: Path) -> None:
    term = {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["a100"]}]}
    cfg = load(
        tmp_path,
        '[kubernetes]\nnode_selector = { "hub.jupyter.org/node-purpose" = "user" }\n'
        'priority_class_name = "students"\nscheduler_name = "bin-packer"\n'
        "[[kubernetes.tolerations]]\n"
        'key = "hub.jupyter.org/dedicated"\noperator = "Equal"\nvalue = "user"\n'
        'effect = "NoSchedule"\n'
        "[[kubernetes.node_affinity_required]]\n"
        'matchExpressions = [{ key = "gpu", operator = "In", values = ["a100"] }]\n'
        "[[kubernetes.pod_anti_affinity_preferred]]\n"
        "weight = 10\n"
        'podAffinityTerm = { topologyKey = "kubernetes.io/hostname", '
        'labelSelector = { matchLabels = { component = "singleuser-server" } } }\n',
    )
    spec = build(cfg, launch())[0]["spec"]
    assert spec["nodeSelector"] == {"hub.jupyter.org/node-purpose": "user"}
    assert spec["tolerations"] == [
        {
            "key": "hub.jupyter.org/dedicated",
            "operator": "Equal",
            "value": "user",
            "effect": "NoSchedule",
        }
    ]
    assert spec["affinity"] == {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}
        },
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 10,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {"matchLabels": {"component": "singleuser-server"}},
                    },
                }
            ]
        },
    }
    assert spec["priorityClassName"] == "students" and spec["schedulerName"] == "bin-packer"
    plain = build(load(tmp_path), launch())[0]["spec"]
    assert not {"affinity", "tolerations", "priorityClassName", "schedulerName"} & set(plain)


def test_extra_pod_and_container_config_merge(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        "[kubernetes]\n"
        'extra_pod_config = { hostNetwork = true, dnsPolicy = "ClusterFirstWithHostNet", '
        'securityContext = { runAsNonRoot = true }, restartPolicy = "OnFailure" }\n'
        "extra_container_config = { stdin = true, "
        "securityContext = { readOnlyRootFilesystem = true } }\n"
        "[[kubernetes.init_containers]]\n"
        'name = "seed"\nimage = "busybox"\ncommand = ["true"]\n'
        "[[kubernetes.extra_containers]]\n"
        'name = "sidecar"\nimage = "busybox"\n',
    )
    manifest, _, _, settings = build(cfg, launch())
    spec = manifest["spec"]
    assert podspec.host_network(settings)
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["restartPolicy"] == "OnFailure"  # a plain value replaces
    assert spec["securityContext"] == {"fsGroup": 100, "runAsNonRoot": True}  # a table merges
    c = container(manifest)
    assert c["stdin"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert spec["initContainers"] == [{"name": "seed", "image": "busybox", "command": ["true"]}]
    assert [x["name"] for x in spec["containers"]] == ["notebook", "sidecar"]
    assert not podspec.host_network(profiles.resolve(load(tmp_path), "alice", {}, [])[0])


# -- profiles --------------------------------------------------------------------------------------

PROFILES = """
[kubernetes]
image = "base:1"
mem_limit = "1G"

[[kubernetes.profile_list]]
display_name = "Small <default>"
description = "1 GB & one CPU"

[[kubernetes.profile_list]]
display_name = "Data science"
slug = "datascience"
default = true
kubespawner_override = { image = "scipy:1", cpu_limit = 2 }
[kubernetes.profile_list.profile_options.image]
display_name = "Image <tag>"
[kubernetes.profile_list.profile_options.image.choices.scipy]
display_name = "SciPy"
kubespawner_override = { image = "scipy:2" }
[kubernetes.profile_list.profile_options.image.choices.r]
display_name = "R & tidyverse"
default = true
kubespawner_override = { image = "r:4" }

[[kubernetes.profile_list]]
display_name = "GPU"
slug = "gpu"
users = ["bob", "carol"]
groups = ["gpu-users"]
kubespawner_override = { mem_limit = "16G", extra_resource_limits = { "nvidia.com/gpu" = "1" } }

[kubernetes.user_overrides]
carol = { mem_limit = "32G" }
"""


def test_profile_default_and_choices(tmp_path: Path) -> None:
    cfg = load(tmp_path, PROFILES)
    settings, slug = profiles.resolve(cfg, "alice", {}, [])
    assert slug == "datascience"  # the one marked default, not the first
    assert settings["image"] == "r:4" and settings["cpu_limit"] == 2  # default choice
    settings, _ = profiles.resolve(cfg, "alice", {"profile": "datascience", "image": "scipy"}, [])
    assert settings["image"] == "scipy:2"
    settings, slug = profiles.resolve(cfg, "alice", {"profile": "small-default"}, [])
    assert slug == "small-default"  # made from display_name, as KubeSpawner does
    assert settings["image"] == "base:1" and settings["cpu_limit"] == 0
    limits = container(build(cfg, launch("bob"), {"profile": "gpu"})[0])["resources"]["limits"]
    assert limits == {"memory": str(16 << 30), "nvidia.com/gpu": "1"}
    assert profiles.resolve(load(tmp_path), "alice", {"profile": "anything"}, [])[1] == ""


def test_unknown_profile_or_choice_is_a_400_naming_the_choices(tmp_path: Path) -> None:
    cfg = load(tmp_path, PROFILES)
    with pytest.raises(SpawnError) as e:
        profiles.resolve(cfg, "alice", {"profile": "huge"}, [])
    assert e.value.status == 400
    assert "'huge'" in e.value.message
    assert "small-default, datascience" in e.value.message
    assert "gpu" not in e.value.message  # not offered to alice
    with pytest.raises(SpawnError) as e:
        profiles.resolve(cfg, "alice", {"profile": "datascience", "image": "julia"}, [])
    assert e.value.status == 400
    assert "'julia'" in e.value.message and "scipy, r" in e.value.message
    # the seam refuses it before anything starts
    with pytest.raises(SpawnError) as e:
        spawner(cfg, tmp_path).check_options("alice", {"profile": "gpu"})
    assert e.value.status == 400


def test_users_limit_a_profile_and_overrides_come_last(tmp_path: Path) -> None:
    cfg = load(tmp_path, PROFILES)
    assert [profiles.slug_of(p) for p in profiles.offered(cfg, "alice", [])] == [
        "small-default",
        "datascience",
    ]
    assert "gpu" in [profiles.slug_of(p) for p in profiles.offered(cfg, "bob", [])]
    assert profiles.resolve(cfg, "bob", {"profile": "gpu"}, [])[0]["mem_limit"] == "16G"
    # carol's override beats the profile's
    assert profiles.resolve(cfg, "carol", {"profile": "gpu"}, [])[0]["mem_limit"] == "32G"
    assert profiles.resolve(cfg, "carol", {"profile": "small-default"}, [])[0]["mem_limit"] == "32G"
    assert "gpu" not in profiles.form_html(cfg, "alice", [])
    only = load(
        tmp_path,
        '[[kubernetes.profile_list]]\ndisplay_name = "Staff"\nusers = ["bob"]\n',
    )
    with pytest.raises(SpawnError) as e:
        profiles.resolve(only, "alice", {}, [])
    assert e.value.status == 403


def test_hub_groups_limit_a_profile_too(tmp_path: Path) -> None:
    cfg = load(tmp_path, PROFILES)
    assert "gpu" not in [profiles.slug_of(p) for p in profiles.offered(cfg, "dana", ["ta"])]
    offered = profiles.offered(cfg, "dana", ["ta", "gpu-users"])
    assert "gpu" in [profiles.slug_of(p) for p in offered]
    # through the seam: the hub tells the spawner a user's groups
    sp = spawner(cfg, tmp_path)
    with pytest.raises(SpawnError):
        sp.check_options("dana", {"profile": "gpu"})
    sp.groups_of = lambda user: ["gpu-users"] if user == "dana" else []
    sp.check_options("dana", {"profile": "gpu"})
    assert "gpu" in sp.options_form("dana") and "gpu" not in sp.options_form("erin")
    with pytest.raises(StartupError) as e:
        load(tmp_path, PROFILES.replace('groups = ["gpu-users"]', 'groups = "gpu-users"'))
    assert "groups must be a list of names" in str(e.value)


class _Form(html.parser.HTMLParser):
    """The fields a browser would submit: the checked radio, each select's selected option."""

    def __init__(self) -> None:
        super().__init__()
        self.radios: list[str] = []
        self.fields: dict[str, str] = {}
        self.text: list[str] = []
        self._select = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "input" and a.get("type") == "radio":
            self.radios.append(a["value"] or "")
            if "checked" in a:
                self.fields["profile"] = a["value"] or ""
        elif tag == "select":
            self._select = a["name"] or ""
        elif tag == "option" and ("selected" in a or self._select not in self.fields):
            self.fields[self._select] = a["value"] or ""

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_form_escapes_and_round_trips(tmp_path: Path) -> None:
    cfg = load(tmp_path, PROFILES)
    page = spawner(cfg, tmp_path).options_form("alice")
    assert "<default>" not in page and "Small &lt;default&gt;" in page
    assert "R &amp; tidyverse" in page and "Image &lt;tag&gt;" in page
    form = _Form()
    form.feed(page)
    assert form.radios == ["small-default", "datascience"]
    assert "Small <default>" in "".join(form.text)  # the browser shows the real name
    assert form.fields["profile"] == "datascience"  # the default is checked
    options = profiles.from_form(form.fields)
    assert options == {"profile": "datascience", "image": "r"}
    assert profiles.resolve(cfg, "alice", options, [])[0]["image"] == "r:4"
    chosen = {**form.fields, "profile-option-datascience--image": "scipy"}
    assert profiles.from_form(chosen) == {"profile": "datascience", "image": "scipy"}
    # another profile's fields are not taken as the chosen one's
    assert profiles.from_form({**chosen, "profile": "small-default"}) == {
        "profile": "small-default"
    }
    assert profiles.form_html(load(tmp_path), "alice", []) == ""


# -- bad configuration stops the start, naming key and file ----------------------------------------

A = '[[kubernetes.profile_list]]\ndisplay_name = "A"\n'  # one profile, to spoil
BAD = [
    ('[kubernetes]\nmem_limit = "lots"\n', ["[kubernetes] mem_limit", "'lots'"]),
    ("[kubernetes]\nmem_limit = 1024\n", ["[kubernetes] mem_limit", "string"]),
    ('[kubernetes]\nmem_guarantee = "1X"\n', ["[kubernetes] mem_guarantee", "'1X'"]),
    ('[kubernetes]\nhost_port_range = "80-90"\n', ["[kubernetes] host_port_range", "'80-90'"]),
    (
        '[kubernetes]\nhost_port_range = "32000-31000"\n',
        ["[kubernetes] host_port_range", "32000-31000"],
    ),
    ('[kubernetes]\nimage_pull_policy = "Sometimes"\n', ["image_pull_policy", "'Sometimes'"]),
    ("[kubernetes]\ncpu_limit = -1\n", ["[kubernetes] cpu_limit", "-1"]),
    (
        '[kubernetes]\nextra_resource_limits = { "nvidia.com/gpu" = "one" }\n',
        ["extra_resource_limits", "nvidia.com/gpu"],
    ),
    (
        '[kubernetes]\nstorage_access_modes = ["ReadWriteSome"]\n',
        ["storage_access_modes", "ReadWriteSome"],
    ),
    ('[kubernetes]\nhub_instance = "Hub_A"\n', ["[kubernetes] hub_instance"]),
    ('[kubernetes]\nmem_limits = "1G"\n', ["mem_limits", "[kubernetes]"]),
    (
        A + 'kubespawner_override = { memlimit = "1G" }\n',
        ["[kubernetes] profile_list", "'memlimit'"],
    ),
    (
        A + 'kubespawner_override = { kubeconfig = "/root/.kube/config" }\n',
        ["[kubernetes] profile_list", "'kubeconfig'"],
    ),
    (
        A + 'kubespawner_override = { mem_limit = "big" }\n',
        ["[kubernetes] profile_list", "mem_limit", "'big'"],
    ),
    (
        A + 'kubespawner_override = { cpu_limit = "2" }\n',
        ["[kubernetes] profile_list", "cpu_limit"],
    ),
    (
        A + '[[kubernetes.profile_list]]\ndisplay_name = "a"\n',
        ["[kubernetes] profile_list", "'a'"],
    ),
    ('[[kubernetes.profile_list]]\nslug = "x"\n', ["[kubernetes] profile_list", "display_name"]),
    (
        A + "kubespawner_overrides = {}\n",
        ["[kubernetes] profile_list", "kubespawner_overrides"],
    ),
    (
        A + '[kubernetes.profile_list.profile_options.image]\ndisplay_name = "Image"\n',
        ["[kubernetes] profile_list", "'image'", "choices"],
    ),
    (
        A + "[kubernetes.profile_list.profile_options.image.choices.x]\n"
        'kubespawner_override = { mem_limit = "huge" }\n',
        ["[kubernetes] profile_list", "image.x", "'huge'"],
    ),
    (
        A + 'users = "alice"\n',
        ["[kubernetes] profile_list", "users"],
    ),
    (
        '[kubernetes.user_overrides]\nalice = { mem_limit = "huge" }\n',
        ["[kubernetes] user_overrides", "alice", "'huge'"],
    ),
    (
        '[kubernetes.user_overrides]\nalice = { imagee = "x" }\n',
        ["[kubernetes] user_overrides", "alice", "'imagee'"],
    ),
    ('[kubernetes]\nuser_overrides = { alice = "8G" }\n', ["[kubernetes] user_overrides", "alice"]),
]


@pytest.mark.parametrize(("body", "words"), BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_config_names_key_and_file(tmp_path: Path, body: str, words: list[str]) -> None:
    with pytest.raises(StartupError) as e:
        load(tmp_path, body)
    message = str(e.value)
    assert str(tmp_path / "minihub.toml") in message
    for word in words:
        assert word in message, (word, message)


def test_escape_keeps_names_apart() -> None:
    """escape is injective on the names it sees: every output byte is [a-z0-9-] and '-'
    only starts an escape, so decoding is unambiguous."""
    names = ["a", "A", "-", "_", "-2d", "a-b", "a.b", "ab", ODD, "é", "e\u0301", " "]
    escaped = [podspec.escape(n) for n in names]
    assert len(set(escaped)) == len(escaped)
    assert all(set(e) <= set(string.ascii_lowercase + string.digits + "-") for e in escaped)
