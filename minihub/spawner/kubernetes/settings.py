"""The [kubernetes] section: KubeSpawner's trait names, so its users' configs translate line
by line (`c.KubeSpawner.mem_limit = "1G"` is `mem_limit = "1G"` here).

Declared apart from the spawner so the registry can read them without importing the
Kubernetes client (only choosing the spawner loads it).
"""

from __future__ import annotations

import re
from typing import Any

from ...config import parse_bytes
from ...setting import Check, Setting, between

S = "kubernetes"
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
_ACCESS_MODES = ("ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod")


def _one_of(*choices: str) -> Check:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}, not {v!r}"


def _size(v: Any) -> str | None:
    return f"{v!r} is not a size like 1G or 512M" if v and parse_bytes(str(v)) is None else None


def _quantity(v: Any) -> str | None:
    ok = isinstance(v, (int, float)) or re.fullmatch(r"[0-9.]+[a-zA-Z]{0,2}", str(v))
    return None if ok else f"{v!r} is not a Kubernetes quantity like 1, 500m or 2Gi"


def _dict_of_quantities(v: Any) -> str | None:
    bad = [k for k, q in v.items() if _quantity(q)]
    return f"{', '.join(map(str, bad))}: not quantities like 1 or 2Gi" if bad else None


def _access_modes(v: Any) -> str | None:
    bad = [m for m in v if m not in _ACCESS_MODES]
    return f"unknown access modes {bad}; known: {', '.join(_ACCESS_MODES)}" if bad else None


def _port_range(v: Any) -> str | None:
    m = re.fullmatch(r"(\d+)-(\d+)", str(v))
    if not m or not 1024 <= int(m[1]) <= int(m[2]) <= 65535:
        return f"{v!r} is not a port range like 30000-32767 (above 1023)"
    return None


def _profiles(v: Any) -> str | None:
    from .profiles import check_profiles  # late: profiles reads this module's table

    return check_profiles(v)


def _user_overrides(v: Any) -> str | None:
    from .profiles import check_override  # late, as _profiles

    for user, override in v.items():
        bad = check_override(override)
        if bad:
            return f"{user}: {bad}"
    return None


def _s(
    name: str, kind: Any, default: Any, text: str, check: Check | None = None, item: type = str
) -> Setting:
    return Setting(S, name, kind, default, text, check=check, item=item)


SETTINGS: list[Setting] = [
    # -- where the cluster is --------------------------------------------------------------
    _s(
        "kubeconfig",
        str,
        "",
        "Path of a kubeconfig file. Empty: the in-cluster configuration (the pod's service "
        "account) when the hub runs in a pod, else $KUBECONFIG or ~/.kube/config.",
    ),
    _s("context", str, "", "The kubeconfig context to use; empty: its current context."),
    _s(
        "namespace",
        str,
        "",
        "Namespace of the users' pods. Empty: the hub's own namespace in the cluster, else the "
        "kubeconfig context's, else 'default'.",
    ),
    _s(
        "hub_instance",
        str,
        "minihub",
        "Label value (minihub.org/hub) telling this hub's pods from another hub's in the same "
        "namespace; a restarted hub finds its pods by it.",
        check=lambda v: (
            None
            if re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?", v)
            else "must be 1-42 lowercase letters, digits and dashes"
        ),
    ),
    _s(
        "pod_name_template",
        str,
        "jupyter-{user_server}",
        "Pod name; {username}, {servername}, {user_server} (username, and --servername for a "
        "named server), made DNS-safe (lower case, escaped, at most 63 characters).",
    ),
    # -- what runs ---------------------------------------------------------------------------
    _s(
        "image",
        str,
        "minihub/minihub:latest",
        "Container image of the servers (see deploy/kubernetes/README.md to build one). With "
        '[spawner] server = "jupyterhub-singleuser" any docker-stacks image works unchanged.',
    ),
    _s(
        "image_pull_policy",
        str,
        "IfNotPresent",
        "Always, IfNotPresent or Never.",
        check=_one_of(*PULL_POLICIES),
    ),
    _s(
        "image_pull_secrets",
        list,
        [],
        "Names of Secrets (type docker-registry) to pull the image with.",
        None,
    ),
    _s(
        "cmd",
        list,
        [],
        "Command of the server's container. Empty: python3 -m minihub.singleuser for "
        "minihub's server; the image's own command for jupyterhub-singleuser (docker-stacks' "
        "start-notebook.py runs it).",
        None,
    ),
    _s("args", list, [], "Extra arguments after the command.", None),
    _s(
        "environment",
        dict,
        {},
        "Extra environment variables of the server ({username} and {servername} expanded); "
        "[spawner] environment applies too.",
    ),
    _s("working_dir", str, "", "The container's working directory; empty: the image's."),
    _s(
        "ip",
        str,
        "0.0.0.0",
        "Address the server binds in its pod. With hostNetwork pods on a shared node, "
        "127.0.0.1 keeps it off the node's network when the hub runs on that node.",
    ),
    _s(
        "port",
        int,
        8888,
        "Port the server listens on in its pod (with hostNetwork: see host_port_range).",
        check=between(1, 65535),
    ),
    _s(
        "host_port_range",
        str,
        "30000-32767",
        "With hostNetwork pods (extra_pod_config hostNetwork = true) pods share the node's "
        "ports: each gets a free one of this range instead of `port`.",
        check=_port_range,
    ),
    _s(
        "pod_connect_ip",
        str,
        "",
        "Host the hub connects to instead of the pod's IP ({podname} and {namespace} "
        "expanded). Needed for hostNetwork pods, whose IP is the "
        "node's: e.g. 127.0.0.1 when the hub runs on that node.",
    ),
    _s(
        "services_enabled",
        bool,
        False,
        "Give each pod a Service (ClusterIP) and reach the server through "
        "<pod>.<namespace>.svc instead of the pod IP.",
    ),
    _s(
        "ssl_secret",
        str,
        "",
        "Name of a kubernetes.io/tls Secret: mounted in each pod so minihub's server serves "
        "https with it; the hub verifies it with [hub] server_ca_file. Empty: http.",
    ),
    # -- resources -----------------------------------------------------------------------------
    _s("cpu_limit", (int, float), 0, "CPUs a server may use (0: no limit).", between(0, 1024)),
    _s(
        "cpu_guarantee",
        (int, float),
        0,
        "CPUs reserved for a server (its request; 0: none).",
        between(0, 1024),
    ),
    _s("mem_limit", str, "", 'Memory limit, e.g. "1G" (empty: none).', _size),
    _s("mem_guarantee", str, "", 'Memory reserved (its request), e.g. "512M".', _size),
    _s(
        "extra_resource_limits",
        dict,
        {},
        'Other limits, e.g. { "nvidia.com/gpu" = "1" }.',
        _dict_of_quantities,
    ),
    _s(
        "extra_resource_guarantees",
        dict,
        {},
        "Other requests, as extra_resource_limits.",
        _dict_of_quantities,
    ),
    # -- placement -------------------------------------------------------------------------------
    _s("node_selector", dict, {}, "Labels a node must have to run a server."),
    _s("tolerations", list, [], "Tolerations (Kubernetes' own dicts).", None, dict),
    _s("node_affinity_required", list, [], "NodeSelectorTerms a node must match.", None, dict),
    _s("node_affinity_preferred", list, [], "PreferredSchedulingTerms.", None, dict),
    _s("pod_affinity_required", list, [], "PodAffinityTerms.", None, dict),
    _s("pod_affinity_preferred", list, [], "WeightedPodAffinityTerms.", None, dict),
    _s("pod_anti_affinity_required", list, [], "PodAffinityTerms to avoid.", None, dict),
    _s("pod_anti_affinity_preferred", list, [], "WeightedPodAffinityTerms to avoid.", None, dict),
    _s("priority_class_name", str, "", "PriorityClass of the pods."),
    _s("scheduler_name", str, "", "Scheduler of the pods; empty: the default."),
    # -- who it runs as --------------------------------------------------------------------------
    _s("uid", int, 1000, "User id of the server's process (docker-stacks' jovyan: 1000).", None),
    _s("gid", int, 100, "Group id of the server's process (docker-stacks' users: 100).", None),
    _s("fs_gid", int, 100, "fsGroup: volumes are made writable to this group. -1: unset.", None),
    _s("supplemental_gids", list, [], "Extra group ids.", None, int),
    _s(
        "allow_privilege_escalation",
        bool,
        False,
        "Whether setuid programs (sudo) may gain privileges in the container.",
    ),
    _s("privileged", bool, False, "Run the container privileged (never for students)."),
    _s("container_security_context", dict, {}, "Merged into the container's securityContext."),
    _s("pod_security_context", dict, {}, "Merged into the pod's securityContext."),
    _s(
        "service_account",
        str,
        "",
        "ServiceAccount of the pods. Empty: none, and the API token is not mounted.",
    ),
    _s(
        "automount_service_account_token",
        bool,
        False,
        "Mount the service account's API token in the pods (only with service_account).",
    ),
    # -- storage ---------------------------------------------------------------------------------
    _s(
        "volumes",
        list,
        [],
        "Volumes of the pod (Kubernetes' own dicts; {username}, {servername} expanded).",
        None,
        dict,
    ),
    _s(
        "volume_mounts",
        list,
        [],
        "Mounts in the server's container, as volumes.",
        None,
        dict,
    ),
    _s(
        "storage_pvc_ensure",
        bool,
        False,
        "Make a PersistentVolumeClaim per user (pvc_name_template) at the first spawn and keep "
        "it when the server stops; mount it with a volume whose claimName is the template.",
    ),
    _s(
        "pvc_name_template",
        str,
        "claim-{user_server}",  # KubeSpawner's: user "a" server "b" is not user "ab"
        "Name of a user's claim ({username}, {servername}, {user_server} expanded and made "
        "DNS-safe).",
    ),
    _s("storage_class", str, "", "StorageClass of the claims; empty: the cluster's default."),
    _s("storage_capacity", str, "10Gi", "Size a claim asks for.", _quantity),
    _s(
        "storage_access_modes",
        list,
        ["ReadWriteOnce"],
        "Access modes of the claims.",
        _access_modes,
    ),
    _s("storage_selector", dict, {}, "Label selector of the claims (matchLabels etc.)."),
    _s("storage_extra_labels", dict, {}, "Extra labels of the claims."),
    # -- the pod's other parts -------------------------------------------------------------------
    _s("extra_labels", dict, {}, "Extra labels of the pods ({username} expanded)."),
    _s("extra_annotations", dict, {}, "Extra annotations of the pods."),
    _s(
        "lifecycle_hooks",
        dict,
        {},
        "The container's lifecycle (postStart, preStop), e.g. a postStart that copies the "
        "cluster's /etc/skel into a new home.",
    ),
    _s("init_containers", list, [], "Init containers (Kubernetes' own dicts).", None, dict),
    _s("extra_containers", list, [], "Sidecar containers.", None, dict),
    _s("extra_container_config", dict, {}, "Merged into the server's container."),
    _s(
        "extra_pod_config",
        dict,
        {},
        "Merged into the pod's spec, e.g. { hostNetwork = true, dnsPolicy = "
        '"ClusterFirstWithHostNet" }.',
    ),
    # -- lifecycle -------------------------------------------------------------------------------
    _s(
        "delete_grace_period",
        int,
        1,
        "Seconds a stopping server gets between SIGTERM and SIGKILL.",
        between(0, 3600),
    ),
    _s(
        "unschedulable_timeout",
        int,
        0,
        "Seconds to wait while no node can take a pod before failing with the scheduler's "
        "reason; raise it when a cluster autoscaler adds nodes on demand.",
        between(0, 3600),
    ),
    _s("events_enabled", bool, True, "Show the pod's events as spawn progress."),
    _s(
        "profile_list",
        list,
        [],
        "Choices offered on the spawn page and accepted as user_options {profile = slug}: "
        "[[kubernetes.profile_list]] tables with display_name, slug, description, default, "
        "kubespawner_override (these settings' names), optionally users = [...].",
        _profiles,
        dict,
    ),
    _s(
        "user_overrides",
        dict,
        {},
        "Per-user overrides of these settings, applied after the profile: "
        '{ alice = { mem_limit = "8G" } }.',
        _user_overrides,
    ),
]

BY_NAME = {s.name: s for s in SETTINGS}
# What a profile or override may change: everything about the pod, not where the cluster is.
OVERRIDABLE = set(BY_NAME) - {
    "kubeconfig",
    "context",
    "namespace",
    "hub_instance",
    "profile_list",
    "user_overrides",
}
