"""Slurm profiles: [[slurm.profile_list]] tables as KubeSpawner's profile_list (the shared
logic is minihub.spawner.profiles), whose `slurm_override` sets the job's [slurm] settings
(partition, runtime, memory, nprocs, ngpus, qos, account, ...), and the line of limits the
spawn form shows under each.
"""

from __future__ import annotations

from typing import Any

from ..profiles import Profiles, value_problem


def check_override(override: Any) -> str | None:
    """An override changes the job's [slurm] settings, each by its own rules."""
    from .settings import BY_NAME, OVERRIDABLE  # late: settings imports this module's check

    if not isinstance(override, dict):
        return "must be a table"
    for name, value in override.items():
        if name not in OVERRIDABLE:
            return f"cannot set {name!r} (known: {', '.join(sorted(OVERRIDABLE))})"
        bad = value_problem(BY_NAME[name], value)
        if bad:
            return f"{name}: {bad}"
    return None


PROFILES = Profiles("slurm.profile_list", "slurm_override", check_override)


def summary(override: dict[str, Any], partitions: list[dict[str, str]]) -> str:
    """What a profile asks of Slurm, with its partition's limits from sinfo when known:
    "partition small (up to 1:00:00, 1 nodes of 8 CPUs / 4096 MB) · 2 CPUs · 2G memory"."""
    parts = []
    if override.get("partition"):
        name = override["partition"]
        p = next((p for p in partitions if p["name"] == name), None)
        if p is None:
            parts.append(f"partition {name}")
        else:
            limits = f"up to {p['time']}, {p['nodes']} nodes of {p['cpus']} CPUs / {p['memory']} MB"
            parts.append(f"partition {name} ({limits})")
    words = (("runtime", "time limit {}"), ("nprocs", "{} CPUs"), ("memory", "{} memory"),
             ("ngpus", "{} GPUs"), ("qos", "QoS {}"), ("account", "account {}"))  # fmt: skip
    parts += [text.format(override[key]) for key, text in words if override.get(key)]
    return " · ".join(parts)
