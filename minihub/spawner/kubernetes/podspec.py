"""The manifests of one server: its Pod, the Secret holding its launch secrets, its user's
PersistentVolumeClaim and its optional Service, built as plain dicts from the resolved
[kubernetes] settings. Pure functions: no client, no I/O, so each rule is testable alone.
"""

from __future__ import annotations

import copy
import hashlib
import json
import string
from dataclasses import dataclass
from typing import Any

from ...config import parse_bytes
from ...singleuser import CONFIG_ENV
from ..base import Launch
from ..process import isolated

GROUP = "minihub.org"
LABEL_HUB = f"{GROUP}/hub"
LABEL_USER = "hub.jupyter.org/username"  # KubeSpawner's, so its dashboards and policies apply
LABEL_SERVER = "hub.jupyter.org/servername"
ANNOTATION_USER = "hub.jupyter.org/username"
ANNOTATION_SERVER = "hub.jupyter.org/servername"
ANNOTATION_OWNER = "minihub.org/owner"  # Launch.owner: which hub user of the name
CONTAINER = "notebook"  # KubeSpawner's name for the server's container
# Environment that must never sit in a pod spec in clear (anyone who may read pods sees
# those): it goes into the server's Secret and reaches the container by secretKeyRef.
SECRET_ENV = ("JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN", CONFIG_ENV)
TLS_DIR = "/etc/minihub/tls"

_SAFE = set(string.ascii_lowercase + string.digits)


def escape(name: str) -> str:
    """KubeSpawner's escaping (escapism with '-'): lower-case letters and digits stay, any
    other byte becomes -xx, so distinct names stay distinct."""
    return "".join(c if c in _SAFE else "".join(f"-{b:02x}" for b in c.encode()) for c in name)


def dns_name(raw: str, limit: int = 63) -> str:
    """A DNS-1123 label from an expanded template: at most `limit` characters; a longer one
    keeps its start and gets a hash of the whole, so two long names do not collide."""
    name = raw.strip("-") or "x"
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9].rstrip('-')}-{digest}"


def label_value(value: str) -> str:
    return dns_name(escape(value), 63) if value else ""


def expand(template: str, launch: Launch) -> str:
    """{username}, {servername}, {user_server} (and their unescaped_ forms) replaced; any
    other brace stays as written, so a JSON value in an env var or a stray brace never
    breaks a spawn."""
    user, server = escape(launch.user), escape(launch.server_name)
    values = {
        "{username}": user,
        "{servername}": server,
        "{user_server}": user + (f"--{server}" if server else ""),
        "{unescaped_username}": launch.user,
        "{unescaped_servername}": launch.server_name,
    }
    for key, value in values.items():
        template = template.replace(key, value)
    return template


def expand_all(value: Any, launch: Launch) -> Any:
    """{username}/{servername} in every string of a volume, mount, label or env value."""
    if isinstance(value, str):
        return expand(value, launch) if "{" in value else value
    if isinstance(value, list):
        return [expand_all(v, launch) for v in value]
    if isinstance(value, dict):
        return {k: expand_all(v, launch) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class Names:
    pod: str
    namespace: str
    secret: str
    pvc: str  # "" without storage_pvc_ensure


def names_for(settings: dict[str, Any], launch: Launch, namespace: str) -> Names:
    pod = dns_name(expand(settings["pod_name_template"], launch))
    pvc = dns_name(expand(settings["pvc_name_template"], launch), 253)
    # the secret's name hashed as a whole: a cut pod name could be another pod's
    secret = dns_name(f"{pod}-launch")
    return Names(pod, namespace, secret, pvc if settings["storage_pvc_ensure"] else "")


def labels(settings: dict[str, Any], launch: Launch, hub: str) -> dict[str, str]:
    """How a restarted hub finds its pods (LIST by minihub.org/hub), and who they are for."""
    extra = {k: str(v) for k, v in expand_all(settings["extra_labels"], launch).items()}
    return {
        **extra,
        "app.kubernetes.io/name": "minihub",
        "app.kubernetes.io/component": "singleuser-server",
        "component": "singleuser-server",  # KubeSpawner's, for Zero to JupyterHub's policies
        LABEL_HUB: hub,
        LABEL_USER: label_value(launch.user),
        LABEL_SERVER: label_value(launch.server_name),
    }


def host_network(settings: dict[str, Any]) -> bool:
    return bool(settings["extra_pod_config"].get("hostNetwork"))


def command(settings: dict[str, Any], launch: Launch) -> list[str] | None:
    """The container's command; None leaves the image's own (docker-stacks' default)."""
    if settings["cmd"]:
        return list(settings["cmd"])
    if launch.protocol == "minihub":
        return isolated(["python3", "-m", "minihub.singleuser"])  # not the home's minihub/
    return None


def env_and_secret(
    launch: Launch, settings: dict[str, Any], secret: str
) -> tuple[list[Any], dict[str, str]]:
    """The container's env list and the Secret's data: secret values by reference only."""
    values = {k: v for k, v in launch.env.items() if k != "PATH"}  # the image knows its PATH
    values.update({k: str(v) for k, v in expand_all(settings["environment"], launch).items()})
    if launch.protocol == "minihub":
        values[CONFIG_ENV] = json.dumps(launch.config)
    data = {k: values.pop(k) for k in SECRET_ENV if k in values}
    env: list[Any] = [{"name": k, "value": v} for k, v in sorted(values.items())]
    env += [
        {"name": k, "valueFrom": {"secretKeyRef": {"name": secret, "key": k}}} for k in sorted(data)
    ]
    return env, data


def resources(settings: dict[str, Any]) -> dict[str, dict[str, str]]:
    limits: dict[str, str] = {}
    requests: dict[str, str] = {}
    if settings["cpu_limit"]:
        limits["cpu"] = _cpu(settings["cpu_limit"])
    if settings["cpu_guarantee"]:
        requests["cpu"] = _cpu(settings["cpu_guarantee"])
    if settings["mem_limit"]:
        limits["memory"] = str(parse_bytes(settings["mem_limit"]))
    if settings["mem_guarantee"]:
        requests["memory"] = str(parse_bytes(settings["mem_guarantee"]))
    limits.update({k: str(v) for k, v in settings["extra_resource_limits"].items()})
    requests.update({k: str(v) for k, v in settings["extra_resource_guarantees"].items()})
    out: dict[str, dict[str, str]] = {}
    if limits:
        out["limits"] = limits
    if requests:
        out["requests"] = requests
    return out


def _cpu(value: float) -> str:
    return f"{round(float(value) * 1000)}m"


def security(settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod securityContext, container securityContext): non-root, no escalation."""
    pod: dict[str, Any] = {}
    if settings["fs_gid"] >= 0:
        pod["fsGroup"] = settings["fs_gid"]
    if settings["supplemental_gids"]:
        pod["supplementalGroups"] = list(settings["supplemental_gids"])
    pod.update(settings["pod_security_context"])
    container: dict[str, Any] = {
        "runAsUser": settings["uid"],
        "runAsGroup": settings["gid"],
        "runAsNonRoot": settings["uid"] != 0,
        "allowPrivilegeEscalation": bool(settings["allow_privilege_escalation"]),
        "privileged": bool(settings["privileged"]),
    }
    container.update(settings["container_security_context"])
    return pod, container


def affinity(settings: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    node: dict[str, Any] = {}
    if settings["node_affinity_required"]:
        node["requiredDuringSchedulingIgnoredDuringExecution"] = {
            "nodeSelectorTerms": settings["node_affinity_required"]
        }
    if settings["node_affinity_preferred"]:
        node["preferredDuringSchedulingIgnoredDuringExecution"] = settings[
            "node_affinity_preferred"
        ]
    if node:
        out["nodeAffinity"] = node
    for key, prefix in (("podAffinity", "pod_affinity"), ("podAntiAffinity", "pod_anti_affinity")):
        part: dict[str, Any] = {}
        if settings[f"{prefix}_required"]:
            part["requiredDuringSchedulingIgnoredDuringExecution"] = settings[f"{prefix}_required"]
        if settings[f"{prefix}_preferred"]:
            part["preferredDuringSchedulingIgnoredDuringExecution"] = settings[
                f"{prefix}_preferred"
            ]
        if part:
            out[key] = part
    return out


def pod(
    settings: dict[str, Any], launch: Launch, names: Names, hub: str, port: int
) -> tuple[dict[str, Any], dict[str, str]]:
    """The Pod manifest and the data of its Secret."""
    env, secret_data = env_and_secret(launch, settings, names.secret)
    pod_sc, container_sc = security(settings)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": settings["image"],
        "imagePullPolicy": settings["image_pull_policy"],
        "env": env,
        "ports": [{"name": "notebook-port", "containerPort": port}],
        "resources": resources(settings),
        "securityContext": container_sc,
        "volumeMounts": expand_all(settings["volume_mounts"], launch),
    }
    cmd = command(settings, launch)
    if cmd is not None:
        container["command"] = cmd
    if settings["args"]:
        container["args"] = list(settings["args"])
    if settings["working_dir"]:
        container["workingDir"] = settings["working_dir"]
    if settings["lifecycle_hooks"]:
        container["lifecycle"] = copy.deepcopy(settings["lifecycle_hooks"])
    volumes = expand_all(settings["volumes"], launch)
    if settings["ssl_secret"]:
        volumes.append({"name": "minihub-tls", "secret": {"secretName": settings["ssl_secret"]}})
        container["volumeMounts"].append(
            {"name": "minihub-tls", "mountPath": TLS_DIR, "readOnly": True}
        )
    container = _merge(container, settings["extra_container_config"])
    spec: dict[str, Any] = {
        "restartPolicy": "Never",  # a server that exits is a stopped server: the hub says so
        "containers": [container, *settings["extra_containers"]],
        "securityContext": pod_sc,
        "volumes": volumes,
        "automountServiceAccountToken": bool(
            settings["service_account"] and settings["automount_service_account_token"]
        ),
        "enableServiceLinks": False,  # no env per Service in the namespace
    }
    if settings["service_account"]:
        spec["serviceAccountName"] = settings["service_account"]
    for key, name in (
        ("nodeSelector", "node_selector"),
        ("tolerations", "tolerations"),
        ("initContainers", "init_containers"),
        ("imagePullSecrets", "image_pull_secrets"),
    ):
        if settings[name]:
            value = settings[name]
            spec[key] = [{"name": n} for n in value] if name == "image_pull_secrets" else value
    if settings["priority_class_name"]:
        spec["priorityClassName"] = settings["priority_class_name"]
    if settings["scheduler_name"]:
        spec["schedulerName"] = settings["scheduler_name"]
    aff = affinity(settings)
    if aff:
        spec["affinity"] = aff
    spec = _merge(spec, settings["extra_pod_config"])
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": names.pod,
            "namespace": names.namespace,
            "labels": {**labels(settings, launch, hub), f"{GROUP}/pod": names.pod},
            "annotations": {
                **{k: str(v) for k, v in settings["extra_annotations"].items()},
                ANNOTATION_USER: launch.user,
                ANNOTATION_SERVER: launch.server_name,
            },
        },
        "spec": spec,
    }
    return manifest, secret_data


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """extra_*_config: nested tables merge, anything else replaces (KubeSpawner's rule)."""
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def secret(names: Names, data: dict[str, str], labels_: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": names.secret, "namespace": names.namespace, "labels": labels_},
        "type": "Opaque",
        "stringData": data,
    }


def pvc(settings: dict[str, Any], launch: Launch, names: Names, hub: str) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "accessModes": list(settings["storage_access_modes"]),
        "resources": {"requests": {"storage": str(settings["storage_capacity"])}},
    }
    if settings["storage_class"]:
        spec["storageClassName"] = settings["storage_class"]
    if settings["storage_selector"]:
        spec["selector"] = settings["storage_selector"]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": names.pvc,
            "namespace": names.namespace,
            "labels": {
                **{k: str(v) for k, v in settings["storage_extra_labels"].items()},
                "app.kubernetes.io/name": "minihub",
                "component": "singleuser-storage",
                LABEL_HUB: hub,
                LABEL_USER: label_value(launch.user),
            },
            "annotations": {
                ANNOTATION_USER: launch.user,
                **({ANNOTATION_OWNER: launch.owner} if launch.owner else {}),
            },
        },
        "spec": spec,
    }


def service(names: Names, labels_: dict[str, str], port: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": names.pod, "namespace": names.namespace, "labels": labels_},
        "spec": {
            "selector": {LABEL_HUB: labels_[LABEL_HUB], "minihub.org/pod": names.pod},
            "ports": [{"name": "notebook-port", "port": port, "targetPort": port}],
        },
    }
