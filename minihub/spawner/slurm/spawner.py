"""SlurmSpawner: each server a batch job, submitted with sbatch as the user.

A start renders the batch script from [slurm] settings and the user's options, submits it
through `exec_prefix` (runuser as the user) with the launch in sbatch's environment, and
follows the job in the shared squeue view: pending with Slurm's reason, running, then the
job's report of its port (minihub.spawner.slurm.report). A job Slurm will not run (a
refused submission, an ended job, a reason that waiting does not cure) fails at once with
Slurm's words. The state is {job_id, user, node, host, port, out}: a restarted hub finds
its jobs again by id in the same view.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
import pwd
import secrets
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import jinja2

from ...auth import secrets as S
from ...config import Config
from ...errors import SpawnError
from ...protocols import hub_api_url
from ...setting import Setting
from ..base import UNKNOWN_EXIT, Endpoint, Launch, ProgressLog, Spawner, Started, State
from ..profiles import from_form
from .job import LAUNCH_ENV
from .profiles import PROFILES, summary
from .queue import Job, Queue, SlurmError, run
from .settings import BATCH_SCRIPT, BY_NAME, OPTION_KEYS, SETTINGS

log = logging.getLogger("minihub.spawner.slurm")

# Pending reasons that waiting does not cure: fail the start with them at once.
HOPELESS = frozenset(
    {
        "AccountNotAllowed", "BadConstraints", "DependencyNeverSatisfied", "InvalidAccount",
        "InvalidQOS", "JobHeldAdmin", "PartitionConfig", "PartitionDown", "PartitionInactive",
        "PartitionNodeLimit", "PartitionTimeLimit", "QOSNotAllowed", "ReqNodeNotAvail",
    }
)  # fmt: skip
_WATCH = 0.5  # seconds between looks at the queue while a job starts
_STOP_WAIT = 30.0  # after SIGKILL, for the job to leave the node
USED_TOKENS_KEPT = 10_000  # launch tokens remembered after use (a few hundred bytes each)


@dataclass
class _Pending:
    """A submitted job waiting for its report; `config` (the server's secret and proof) is
    the report's answer, never in the job's environment."""

    config: dict[str, Any]
    user: str
    reported: asyncio.Future[tuple[str, int]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    job_id: str = ""


class SlurmSpawner(Spawner):
    name = "slurm"
    settings: ClassVar[list[Setting]] = SETTINGS

    def __init__(self, cfg: Config | None = None) -> None:
        self.cfg = cfg
        self.queue = Queue()
        self._progress = ProgressLog()
        self._pending: dict[str, _Pending] = {}  # hash of a launch token -> its start
        # hash of a used launch token -> (job id, user): a second report with it stops that job
        self._used: dict[str, tuple[str, str]] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self._ended: dict[str, Job] = {}  # job id -> the last view of a job that ended
        self._partitions: list[dict[str, str]] = []
        self._partitions_task: asyncio.Task[None] | None = None
        if cfg is not None:  # the batch script must parse: a bad template stops start-up
            try:
                jinja2.Environment().parse(str(cfg.get("slurm.batch_script")) or BATCH_SCRIPT)
            except jinja2.TemplateSyntaxError as e:
                from ...errors import StartupError

                raise StartupError(f"[slurm] batch_script: line {e.lineno}: {e.message}") from None
            self._refresh_partitions()  # made in the hub's loop: the first form has them

    # -- the seam ----------------------------------------------------------------------------
    async def start(self, launch: Launch) -> Started:
        cfg = self._config()
        settings, profile = self._settings(launch.user, launch.user_options)
        account = await asyncio.to_thread(_account, launch.user)
        token = secrets.token_urlsafe(32)
        pending = _Pending(launch.config, launch.user)
        self._pending[S.hash_token(token)] = pending
        state: State = {"user": launch.user, **({"profile": profile} if profile else {})}
        try:
            script = render(settings, account, self._python())
            env = self._env(launch, account, settings, token, hub_api_url(cfg))
            self._say(launch, "Submitting the job to Slurm" + (f" ({profile})" if profile else ""))
            job_id = await self._submit(launch.user, script, env)
            pending.job_id = state["job_id"] = job_id
            state["out"] = f"{account.pw_dir}/.minihub-slurm-{job_id}.log"
            node, port = await self._until_reported(launch, pending, job_id)
        except BaseException:
            if state.get("job_id"):
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.stop(state, 2))
            raise
        finally:
            self._pending.pop(S.hash_token(token), None)
        host = await self.queue.node_addr(node)
        state.update(node=node, host=host, port=port)
        return Started(Endpoint(host, port), state)

    async def poll(self, state: State) -> int | None:
        job = await self._job(state)
        if job is None:
            if not self.queue.ok:
                return None  # squeue failed this time: not a reason to call the server dead
            ended = self._ended.get(str(state.get("job_id")))
            return _status(ended, "") if ended else UNKNOWN_EXIT
        if not job.ended:
            return None
        self._remember(job)
        return _status(job, await self.queue.exit_code(job.id))

    async def stop(self, state: State, timeout: float) -> None:
        job_id = str(state.get("job_id", ""))
        if not job_id:
            return
        for signal_args, wait in (([], timeout + 10), (["--signal=KILL", "--full"], _STOP_WAIT)):
            job = await self._job(state, fresh=True)
            if job is None or job.ended:
                return
            with contextlib.suppress(SlurmError):  # an ended job: scancel says so, no matter
                await run([*self._prefix(state["user"]), "scancel", *signal_args, job_id])
            if await self._gone(state, wait):
                return
        log.warning("Slurm job %s did not end after scancel --signal=KILL", job_id)

    async def progress(self, launch: Launch) -> AsyncIterator[str]:
        async for message in self._progress.follow(launch):
            yield message

    async def log_tail(self, state: State, lines: int = 20) -> str:
        """Slurm's word on the job first (TIMEOUT, OUT_OF_MEMORY and the reason), then the
        job's output, read as the user (the hub never opens a user's files itself)."""
        job = self._ended.get(str(state.get("job_id"))) or await self._job(state)
        head = ""
        if job is not None and job.ended:
            head = f"Slurm: job {job.id} {_ended_text(job)}\n"
        tail = ""
        if state.get("out") and state.get("user"):
            with contextlib.suppress(SlurmError):
                cmd = [*self._prefix(state["user"]), "tail", "-n", str(lines), state["out"]]
                tail = await run(cmd)
        return head + tail

    def oom_killed(self, state: State) -> bool:
        job = self._ended.get(str(state.get("job_id")))
        return bool(job and job.state == "OUT_OF_MEMORY")

    async def close(self) -> None:
        if self._partitions_task is not None:
            self._partitions_task.cancel()
            await asyncio.gather(self._partitions_task, return_exceptions=True)

    # -- the spawn form and user_options -----------------------------------------------------
    def options_form(self, user: str) -> str:
        """The profiles offered to the user (each with what it asks of Slurm), then a field
        for each allowed option; an empty field keeps the profile's or the site's value."""
        self._refresh_partitions()
        cfg = self._config()
        allowed = cfg.get("slurm.allowed_options")
        fields = [
            PROFILES.form_html(cfg, user, self.groups_of(user),
                               lambda override: summary(override, self._partitions))
        ]  # fmt: skip
        if "partition" in allowed and self._partitions:
            fields.append(_partition_select(self._partitions))
        for key, label in (("runtime", "Time limit (e.g. 1:00:00)"), ("memory", "Memory (e.g. 2G)"),
                           ("nprocs", "CPUs"), ("ngpus", "GPUs")):  # fmt: skip
            if key in allowed:
                fields.append(
                    f'<label class="slurm-option">{html.escape(label)} '
                    f'<input name="{key}" value="" placeholder="default"></label>'
                )
        return "\n".join(f for f in fields if f)

    def options_from_form(self, form: dict[str, str]) -> dict[str, Any]:
        free = {k: v.strip() for k, v in form.items() if k in OPTION_KEYS and v.strip()}
        return {**from_form(form), **free}

    def check_options(self, user: str, options: dict[str, Any]) -> None:
        self._settings(user, options)

    # -- the steps ----------------------------------------------------------------------------
    def _settings(self, user: str, options: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """[slurm] with the chosen profile's override, then the user's other options; and the
        profile's slug ("" without profiles). SpawnError 400 for a profile or an option that
        is not offered, 403 when profiles exist but none is offered to this user."""
        cfg = self._config()
        settings = cfg.section("slurm")
        chosen = PROFILES.choose(cfg, user, options, self.groups_of(user))
        settings.update(chosen.override)
        allowed = settings["allowed_options"]
        for key, value in options.items():
            if key in chosen.keys:
                continue
            if key not in allowed:
                raise SpawnError(
                    f"Option {str(key)[:64]!r} is not offered; choose from: "
                    f"{', '.join(allowed) or 'none'}.", "", 400,
                )  # fmt: skip
            setting = BY_NAME[key]
            if setting.type is int:
                try:
                    value = int(value)
                except (TypeError, ValueError):
                    raise SpawnError(f"{key} must be a whole number.", "", 400) from None
            elif not isinstance(value, str):
                raise SpawnError(f"{key} must be a string.", "", 400)
            bad = setting.check(value) if setting.check else None
            if bad:
                raise SpawnError(f"{key}: {bad}", "", 400)
            settings[key] = value
        return settings, chosen.slug

    def _env(
        self, launch: Launch, account: pwd.struct_passwd, settings: dict[str, Any], token: str,
        api: str,
    ) -> dict[str, str]:  # fmt: skip
        payload = {  # nothing secret: the batch shell and srun keep this for the job's life
            "cmd": launch.cmd,
            "protocol": launch.protocol,
            "prefix": launch.prefix,
            "ip": settings["ip"],
            "report_url": f"{api}/slurm/report",
            "token": token,
        }
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            **launch.env,
            "HOME": account.pw_dir,
            "USER": account.pw_name,
            "LOGNAME": account.pw_name,
            "SHELL": account.pw_shell or "/bin/sh",
            LAUNCH_ENV: json.dumps(payload),
        }

    async def _submit(self, user: str, script: str, env: dict[str, str]) -> str:
        try:
            out = await run([*self._prefix(user), "sbatch", "--parsable"], stdin=script, env=env)
        except SlurmError as e:
            raise SpawnError(f"Slurm refused the job: {e}", "", 400 if "nvalid" in str(e) else 502)
        return out.strip().split(";")[0]

    async def _until_reported(
        self, launch: Launch, pending: _Pending, job_id: str
    ) -> tuple[str, int]:
        """Follow the job until it reports its port: (node, port). SpawnError when it ends,
        when Slurm says it cannot run, or after [spawner] start_timeout."""
        timeout = float(self._config().get("spawner.start_timeout"))
        deadline = time.monotonic() + timeout
        said = ""
        while time.monotonic() < deadline:
            job = await self.queue.job(job_id, fresh=True)
            if pending.reported.done():
                node = (job.node if job else "") or await self._node_of(job_id)
                self._say(launch, f"Job {job_id} is running on {node}; the server is starting")
                return node, pending.reported.result()[1]
            if job is not None:
                said = self._tell(launch, job, said)
                if job.ended:
                    self._remember(job)
                    tail = await self.log_tail({"job_id": job_id, "user": launch.user})
                    raise SpawnError(
                        f"The Slurm job {job_id} ended before its server started "
                        f"({_ended_text(job)}).", tail,
                    )  # fmt: skip
                if job.state == "PENDING" and job.reason in HOPELESS:
                    raise SpawnError(
                        f"Slurm cannot run the job {job_id}: {job.reason}. The admin can change "
                        "the [slurm] settings, or choose other options.", "", 400,
                    )  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(pending.reported), _WATCH)
        raise SpawnError(
            f"The Slurm job {job_id} did not start its server within {timeout:g} seconds "
            f"(last seen: {said or 'not in the queue'}). The admin can raise [spawner] "
            "start_timeout.",
        )

    def _tell(self, launch: Launch, job: Job, said: str) -> str:
        if job.state == "PENDING" and job.reason in ("None", ""):
            text = f"Job {job.id} is in the queue"
        elif job.state == "PENDING":
            text = f"Job {job.id} is waiting in the queue ({job.reason})"
        elif job.state in ("RUNNING", "CONFIGURING"):
            text = f"Job {job.id} runs on {job.node}"
        else:
            text = f"Job {job.id}: {job.state}"
        if text != said:
            self._say(launch, text)
        return text

    async def _node_of(self, job_id: str) -> str:
        out = await run(["squeue", "-h", "-j", job_id, "-o", "%B"])
        return out.strip()

    async def report(self, token: str, job_id: str, port: int) -> dict[str, Any] | None:
        """A job says where its server listens (the report route calls this): the server's
        config, which the job hands the server on stdin. None if the token belongs to no
        start in progress, or to another job. The token is in the job's environment, which
        the user's other processes on the node may read: one that reports first gets the
        config, but the job's own report then comes second, and a second report with a
        token stops that job (its server would be an impostor's)."""
        h = S.hash_token(token)
        used = self._used.get(h)
        if used is not None:
            log.warning(
                "the launch token of Slurm job %s was used twice: stopping the job", used[0]
            )
            task = asyncio.create_task(self._stop_contested(*used))
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)
            return None
        pending = self._pending.get(h)
        if pending is None or pending.reported.done():
            return None
        if pending.job_id and pending.job_id != job_id:
            return None
        self._used[h] = (pending.job_id or job_id, pending.user)
        while len(self._used) > USED_TOKENS_KEPT:
            del self._used[next(iter(self._used))]
        pending.reported.set_result((job_id, port))
        return pending.config

    async def _stop_contested(self, job_id: str, user: str) -> None:
        await self.stop({"job_id": job_id, "user": user}, 0)
        if self.on_exit is not None:
            self.on_exit({"job_id": job_id})  # the hub checks that server now

    async def _job(self, state: State, fresh: bool = False) -> Job | None:
        """The job of this state in the queue view; a job of that id that belongs to someone
        else (ids restart when a cluster's state is reset) is not it."""
        job = await self.queue.job(str(state.get("job_id", "")), fresh)
        return job if job is not None and job.user == state.get("user") else None

    async def _gone(self, state: State, wait: float) -> bool:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            job = await self._job(state, fresh=True)
            if job is None or (job.ended and job.state != "COMPLETING"):
                if job is not None:
                    self._remember(job)
                return True
            await asyncio.sleep(_WATCH)
        return False

    def _remember(self, job: Job) -> None:
        self._ended[job.id] = job
        while len(self._ended) > 1000:
            self._ended.pop(next(iter(self._ended)))

    def _refresh_partitions(self) -> None:
        """The form shows the partitions of the last sinfo; this asks for a newer one."""
        if self._partitions_task is not None and not self._partitions_task.done():
            return

        async def load() -> None:
            with contextlib.suppress(SlurmError):
                self._partitions = await self.queue.partitions()

        with contextlib.suppress(RuntimeError):  # no running loop: keep what is known
            self._partitions_task = asyncio.get_running_loop().create_task(load())

    def _prefix(self, user: str) -> list[str]:
        return [
            p.replace("{username}", user) for p in self._config().get("slurm.exec_prefix").split()
        ]

    def _python(self) -> str:
        return str(self._config().get("slurm.python")) or sys.executable

    def _config(self) -> Config:
        if self.cfg is None:
            raise SpawnError("This spawner was made without a configuration.")
        return self.cfg

    def _say(self, launch: Launch, message: str) -> None:
        self._progress.say(launch, message)


def render(settings: dict[str, Any], account: pwd.struct_passwd, python: str) -> str:
    """The job's batch script: [slurm] batch_script with batchspawner's variables."""
    values = {k: settings[k] for k in (
        "partition", "runtime", "memory", "nprocs", "qos", "account", "reservation",
        "nodelist", "constraint", "options", "prologue", "epilogue", "srun",
    )}  # fmt: skip
    values["gres"] = f"gpu:{settings['ngpus']}" if settings["ngpus"] else ""
    cmd = f"{python} -I -m minihub.spawner.slurm.job"  # -I: not a minihub/ of the job's cwd
    template = jinja2.Environment(keep_trailing_newline=True).from_string(
        settings["batch_script"] or BATCH_SCRIPT
    )
    return template.render(values, username=account.pw_name, homedir=account.pw_dir, cmd=cmd)


def _account(user: str) -> pwd.struct_passwd:
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        raise SpawnError(f"{user} has no account on the cluster (a Unix user).", "", 403) from None
    if account.pw_uid == 0:
        raise SpawnError("The Slurm spawner never runs a server as root.", "", 403)
    return account


def _status(job: Job, exit_code: str) -> int:
    """An ended job as the seam's exit status."""
    if job.state in ("TIMEOUT", "CANCELLED", "PREEMPTED", "DEADLINE"):
        return -15
    if job.state == "OUT_OF_MEMORY":
        return -9
    code, _, sig = exit_code.partition(":")
    if sig.isdigit() and int(sig):
        return -int(sig)
    return int(code) if code.isdigit() else UNKNOWN_EXIT


def _ended_text(job: Job) -> str:
    words = {
        "TIMEOUT": f"reached its time limit ({job.time_limit}) and was ended by Slurm",
        "OUT_OF_MEMORY": "ran out of memory (its --mem limit) and was ended by Slurm",
        "CANCELLED": "was cancelled",
        "NODE_FAIL": f"ended: its node {job.node} failed",
        "FAILED": "failed",
        "COMPLETED": "completed",
    }
    text = words.get(job.state, f"ended: {job.state}")
    reason = "" if job.reason in ("None", "") else f"; reason: {job.reason}"
    return f"{text} (Slurm state {job.state}{reason})"


def _partition_select(partitions: list[dict[str, str]]) -> str:
    """The partitions that are up, with their limits; the first choice, "", keeps the
    profile's partition (or the site's), so the form never overrides it by default."""
    items = "".join(
        f'<option value="{html.escape(p["name"])}">'
        f"{html.escape(p['name'])} — up to {html.escape(p['time'])}, {html.escape(p['nodes'])} "
        f"nodes of {html.escape(p['cpus'])} CPUs / {html.escape(p['memory'])} MB"
        f"{' (the cluster default)' if p['default'] else ''}</option>"
        for p in partitions
        if p["avail"] == "up"
    )
    return (
        '<label class="slurm-option">Partition <select name="partition">'
        f'<option value="" selected>default</option>{items}</select></label>'
    )
