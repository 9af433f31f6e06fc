"""The [slurm] section: batchspawner's SlurmSpawner trait names without `req_`, so its
users' configs translate line by line (`c.SlurmSpawner.req_partition = "gpu"` is
`partition = "gpu"` here).

Declared apart from the spawner so the registry reads them without importing it.
"""

from __future__ import annotations

import re
from typing import Any

from ...setting import Check, Setting, between

S = "slurm"

# What may stand in an #SBATCH value: no space, newline or shell metacharacter, so neither a
# setting nor a user's option can add a line or a command to the batch script.
VALUE = re.compile(r"[A-Za-z0-9_.,:=+@%/\[\]-]*")
OPTION_KEYS = ("partition", "runtime", "memory", "nprocs", "ngpus", "nodelist", "constraint")


def _value(v: Any) -> str | None:
    return None if VALUE.fullmatch(str(v)) else f"{v!r} has characters an #SBATCH value cannot"


def _runtime(v: Any) -> str | None:
    ok = re.fullmatch(r"(\d+-)?\d+(:\d{1,2}){0,2}", str(v)) or v == ""
    return None if ok else f"{v!r} is not a Slurm time like 60, 1:30:00 or 2-00:00:00"


def _memory(v: Any) -> str | None:
    ok = re.fullmatch(r"\d+[KMGT]?", str(v)) or v == ""
    return None if ok else f"{v!r} is not a Slurm size like 512M or 4G"


def _exec_prefix(v: Any) -> str | None:
    return None if "{username}" in v or not v else "must contain {username} (or be empty)"


def _options(v: Any) -> str | None:
    return "must be one line" if "\n" in v else None


def _allowed(v: Any) -> str | None:
    bad = [k for k in v if k not in OPTION_KEYS]
    return f"unknown keys {bad}; known: {', '.join(OPTION_KEYS)}" if bad else None


def _profiles(v: Any) -> str | None:
    from .profiles import PROFILES  # late: profiles reads this module's table

    return PROFILES.check(v)


def _s(
    name: str, kind: Any, default: Any, text: str, check: Check | None = None, item: type = str
) -> Setting:
    return Setting(S, name, kind, default, text, check=check, item=item)


BATCH_SCRIPT = """#!/bin/bash
#SBATCH --output={{homedir}}/.minihub-slurm-%j.log
#SBATCH --job-name=minihub-{{username}}
#SBATCH --chdir={{homedir}}
#SBATCH --export=ALL
{% if partition %}#SBATCH --partition={{partition}}
{% endif %}{% if runtime %}#SBATCH --time={{runtime}}
{% endif %}{% if memory %}#SBATCH --mem={{memory}}
{% endif %}{% if gres %}#SBATCH --gres={{gres}}
{% endif %}{% if nprocs %}#SBATCH --cpus-per-task={{nprocs}}
{% endif %}{% if qos %}#SBATCH --qos={{qos}}
{% endif %}{% if account %}#SBATCH --account={{account}}
{% endif %}{% if reservation %}#SBATCH --reservation={{reservation}}
{% endif %}{% if nodelist %}#SBATCH --nodelist={{nodelist}}
{% endif %}{% if constraint %}#SBATCH --constraint={{constraint}}
{% endif %}{% if options %}#SBATCH {{options}}
{% endif %}
trap 'echo SIGTERM received' TERM
{{prologue}}
{% if srun %}{{srun}} {% endif %}{{cmd}}
echo "minihub's server ended"
{{epilogue}}
"""

SETTINGS: list[Setting] = [
    _s(
        "partition",
        str,
        "",
        "Partition to submit to (sbatch --partition); empty: the cluster's default.",
        _value,
    ),
    _s(
        "runtime",
        str,
        "",
        "Time limit (sbatch --time), e.g. 8:00:00; empty: the partition's default.",
        _runtime,
    ),
    _s(
        "memory",
        str,
        "",
        "Memory (sbatch --mem), e.g. 4G; empty: the cluster's default (DefMemPerCPU).",
        _memory,
    ),
    _s("nprocs", int, 0, "CPUs (sbatch --cpus-per-task); 0: Slurm's default.", between(0, 4096)),
    _s("ngpus", int, 0, "GPUs (sbatch --gres=gpu:N); 0: none.", between(0, 64)),
    _s("qos", str, "", "Quality of service (sbatch --qos).", _value),
    _s("account", str, "", "Account charged (sbatch --account).", _value),
    _s("reservation", str, "", "Reservation (sbatch --reservation).", _value),
    _s("nodelist", str, "", "Nodes the job must run on (sbatch --nodelist), e.g. n[1-4].", _value),
    _s("constraint", str, "", "Node features required (sbatch --constraint).", _value),
    _s(
        "options",
        str,
        "",
        'More sbatch options, one #SBATCH line, e.g. "--exclusive --mail-type=END".',
        _options,
    ),
    _s(
        "prologue",
        str,
        "",
        'Shell commands run before the server, e.g. "module load python" (the job\'s bash script).',
    ),
    _s("epilogue", str, "", "Shell commands run after the server ends."),
    _s(
        "srun",
        str,
        "srun",
        "What runs the server as a job step (batchspawner's req_srun): a step is told by "
        "scancel and the time limit to stop (SIGTERM), so the server shuts its kernels down; "
        "the batch shell is not. Empty: the batch shell runs the server itself.",
        _options,
    ),
    _s(
        "batch_script",
        str,
        "",
        "The job's script, a Jinja template with batchspawner's variables: username, "
        "homedir, partition, runtime, memory, gres, nprocs, qos, account, reservation, "
        "nodelist, constraint, options, prologue, epilogue, srun, cmd. Empty: minihub's own "
        "(minihub/spawner/slurm/settings.py BATCH_SCRIPT, shown in docs/slurm.md).",
    ),
    _s(
        "exec_prefix",
        str,
        "runuser -u {username} --",
        "How the hub runs sbatch, scancel and "
        'tail as the user (batchspawner\'s default is "sudo -E -u {username}": keep -E, '
        "the job's launch secret is in sbatch's environment). Empty: as the hub's own user.",
        _exec_prefix,
    ),
    _s(
        "python",
        str,
        "",
        "The Python on the nodes that has minihub (shared with the hub, "
        "e.g. /opt/minihub/venv/bin/python). Empty: the hub's own.",
    ),
    _s(
        "ip",
        str,
        "0.0.0.0",
        "Where the server listens on its node. The hub connects to the "
        "node's NodeAddr (from Slurm) and the port the job reports.",
    ),
    _s(
        "allowed_options",
        list,
        list(OPTION_KEYS),
        "user_options a user may set (the spawn "
        "form and the REST API), each checked as the setting of its name.",
        _allowed,
    ),
    _s(
        "profile_list",
        list,
        [],
        "Choices offered on the spawn page and accepted as user_options {profile = slug}: "
        "[[slurm.profile_list]] tables with display_name, slug, description, default, "
        "slurm_override (these settings' names: partition, runtime, memory, ...), "
        "profile_options, and optionally users = [...] and groups = [...] (hub groups) "
        "limiting who is offered it. allowed_options still apply on top of the profile.",
        _profiles,
        dict,
    ),
]
BY_NAME = {s.name: s for s in SETTINGS}
# What a profile may change: the job's request, not how the hub runs or reaches it.
OVERRIDABLE = set(BY_NAME) - {
    "batch_script", "exec_prefix", "ip", "allowed_options", "profile_list",
}  # fmt: skip
