"""The Slurm spawner against a real Slurm (tests/slurm_cluster.py: three slurmd nodes on
127.0.0.1): a hub process with [spawner] class = "slurm" submits users' servers as jobs
run as the users, proxies kernels in them, shows the queue as progress, fails fast with
Slurm's reason, enforces --mem, ends a server at its time limit with the reason shown,
stops jobs, re-adopts them after a restart, keeps users out of each other's servers, offers
profiles ([[slurm.profile_list]], limited by hub group) on the spawn page and the REST API,
and culls an idle job.

One hub for the module (the tests run in file order): the time-limited server starts first
and is checked last, so its minute runs while the other tests do.
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
from slurm_cluster import SlurmCluster, slurm_cluster_fixture  # noqa: F401 (a fixture)
from test_kube_spawner import follow, run_code, spawn, stop

pytestmark = pytest.mark.timeout(200)

MINIHUB = [sys.executable, "-m", "minihub"]
USERS = ("mhs_ann", "mhs_bob", "mhs_cat", "mhs_dan", "mhs_tim", "mhs_eve")
# The default profile changes nothing, so the tests that pass options see the plain settings.
PROFILES = """
[[slurm.profile_list]]
display_name = "Standard"
slug = "standard"
default = true
description = "the site's defaults"

[[slurm.profile_list]]
display_name = "Small node <n3>"
slug = "small"
description = "a short job on the small partition"
slurm_override = { partition = "small", runtime = "0:30:00", memory = "600M", nprocs = 2 }

[[slurm.profile_list]]
display_name = "Staff"
slug = "staff"
groups = ["staff"]
slurm_override = { memory = "700M" }

[[groups]]
name = "staff"
users = ["mhs_bob"]
"""


class SlurmHub:
    def __init__(self, tmp: Path, extra: str = "") -> None:
        self.port = helpers.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data, self.toml, self.log = tmp / "data", tmp / "minihub.toml", tmp / "hub.log"
        self.toml.write_text(
            f'[hub]\nconnect_url = "http://127.0.0.1:{self.port}"\n'
            '[auth]\nauthenticator = "native"\n'
            '[spawner]\nclass = "slurm"\nstart_timeout = 60\n'
            f'[slurm]\nip = "127.0.0.1"\nmemory = "1G"\n{extra}'
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.tokens: dict[str, str] = {}

    def cli(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*MINIHUB, "-f", str(self.toml), "--data-dir", str(self.data), *args],
            input=input, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    def start(self) -> None:
        cmd = [*MINIHUB, "-f", str(self.toml), "--data-dir", str(self.data), "--port"]
        self.proc = helpers.launch_hub([*cmd, str(self.port)], self.port, self.log)

    def stop(self) -> None:
        if self.proc is not None:
            helpers.stop_hub(self.proc)
            self.proc = None

    def user(self, name: str) -> None:
        out = self.cli("user", "add", name, input=f"pw-{name}-long-enough\n")
        assert out.returncode == 0, out.stderr
        self.tokens[name] = self.cli("token", name).stdout.strip()

    def session(self, name: str) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            self.url, headers={"Authorization": f"token {self.tokens[name]}"}
        )


@pytest.fixture(scope="module")
def hub(
    tmp_path_factory: pytest.TempPathFactory, slurm_cluster: SlurmCluster, make_system_user: Any
) -> Iterator[SlurmHub]:
    h = SlurmHub(tmp_path_factory.mktemp("slurmhub"), PROFILES)
    for name in USERS:
        make_system_user(name)
        h.user(name)
    h.start()
    yield h
    h.stop()
    for line in h.log.read_text(errors="replace").splitlines():
        assert "Traceback" not in line, h.log.read_text()[-3000:]
    for job in slurm_cluster.run("squeue", "-h", "-o", "%i %u").splitlines():
        if job.split()[1] in USERS:
            slurm_cluster.cancel(job.split()[0])


async def model(s: aiohttp.ClientSession, user: str) -> dict[str, Any]:
    async with s.get(f"/hub/api/users/{user}") as r:
        assert r.status == 200, await r.text()
        return dict(await r.json())


def messages(events: list[dict[str, Any]]) -> str:
    return " | ".join(str(e.get("message")) for e in events)


# --- first: a server with a one-minute time limit (checked in the last test) ---------------------
async def test_time_limited_server_starts(hub: SlurmHub) -> None:
    async with hub.session("mhs_tim") as s:
        events = await spawn(s, "mhs_tim", {"runtime": "1"})
        assert events[-1].get("ready"), events


# --- spawn on a chosen node, a kernel running as the user ----------------------------------------
async def test_spawn_on_a_chosen_node_runs_a_kernel_as_the_user(
    hub: SlurmHub, slurm_cluster: SlurmCluster
) -> None:
    async with hub.session("mhs_ann") as s:
        events = await spawn(s, "mhs_ann", {"nodelist": "n2"})
        assert events[-1].get("ready"), events
        assert "Submitting the job to Slurm" in messages(events)
        assert "Job " in messages(events), events
        state = (await model(s, "mhs_ann"))["servers"][""]["state"]
        assert state["node"] == "n2" and state["user"] == "mhs_ann"
        # said right before start returns: the hub's follower drains it
        assert f"Job {state['job_id']} is running on n2" in messages(events), events
        job = slurm_cluster.job(state["job_id"])
        assert job["JobState"] == "RUNNING" and job["NodeList"] == "n2", job
        assert job["UserId"].startswith("mhs_ann(")
        code = (
            "import os, pwd; print(pwd.getpwuid(os.getuid()).pw_name, os.environ['SLURMD_NODENAME'],"
            " os.environ['SLURM_JOB_ID'], 'MINIHUB_SLURM_LAUNCH' in os.environ)"
        )
        out = (await run_code(s, "mhs_ann", code)).split()
        assert out == ["mhs_ann", "n2", state["job_id"], "False"], out
        # The batch shell and srun keep the launch in their environment for the job's life,
        # where the user's kernels can read it: it holds no secret and no proof.
        launches = json.loads(await run_code(s, "mhs_ann", LAUNCH_ENVIRONS))
        assert launches, "the batch shell's environment was not found"
        assert all("config" not in launch for launch in launches), launches
        assert '"secret"' not in json.dumps(launches) and '"proof"' not in json.dumps(launches)
    # The secret is in no file the job wrote and in no world-readable script.
    script = slurm_cluster.run("scontrol", "write", "batch_script", state["job_id"], "-")
    assert "secret" not in script and "MINIHUB_SLURM_LAUNCH" not in script


# A kernel's look at every environment it can read: the launches found there (JSON).
LAUNCH_ENVIRONS = """
import json, os
found = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        environ = open(f"/proc/{pid}/environ", "rb").read()
    except OSError:
        continue
    for item in environ.split(b"\\0"):
        if item.startswith(b"MINIHUB_SLURM_LAUNCH="):
            found.append(json.loads(item.split(b"=", 1)[1]))
print(json.dumps(found))
"""


async def test_a_launch_token_reported_again_stops_the_job(hub: SlurmHub) -> None:
    """The user's own code reads the launch token from the batch shell and reports with it,
    as a process that raced the job's own report would: it gets no config, and the job
    whose token was used twice is stopped (its server could be an impostor's)."""
    async with hub.session("mhs_eve") as s:
        events = await spawn(s, "mhs_eve")
        assert events[-1].get("ready"), events
        launch = json.loads(await run_code(s, "mhs_eve", LAUNCH_ENVIRONS))[0]
        state = (await model(s, "mhs_eve"))["servers"][""]["state"]
        hdr = {"X-Minihub-Launch-Token": launch["token"]}
        body = {"job_id": state["job_id"], "port": 1}
        async with s.post("/hub/api/slurm/report", json=body, headers=hdr) as r:
            assert r.status == 404 and "config" not in await r.text()
        for _ in range(120):
            if not (await model(s, "mhs_eve"))["servers"]:
                break
            await asyncio.sleep(0.5)
        assert not (await model(s, "mhs_eve"))["servers"], "the job ran on"
    assert "used twice: stopping the job" in hub.log.read_text()


async def test_a_minihub_of_the_users_own_in_the_home_is_not_run(hub: SlurmHub) -> None:
    """The job runs in the user's home (--chdir): with `python -m`, a ~/minihub/ there would
    be first on sys.path, and the user's own job.py or server would get the server's
    secret and proof from the hub's answer. Both run with python -I."""
    import pwd

    home = Path(pwd.getpwnam("mhs_eve").pw_dir)
    fake = "import pathlib\npathlib.Path.home().joinpath('hijacked').write_text('x')\n"
    for rel in ("minihub/spawner/slurm/job.py", "minihub/singleuser/__main__.py"):
        target = home / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        for d in (home / "minihub", *list(target.relative_to(home).parents)[:-1]):
            (home / d / "__init__.py").touch()
        target.write_text(fake)
    subprocess.run(["chown", "-R", "mhs_eve:", str(home / "minihub")], check=True)
    try:
        async with hub.session("mhs_eve") as s:
            events = await spawn(s, "mhs_eve")
            assert events[-1].get("ready"), events
            assert not (home / "hijacked").exists()
            await stop(s, "mhs_eve")
    finally:
        subprocess.run(["rm", "-rf", str(home / "minihub")], check=True)


# --- one user cannot reach another's server -------------------------------------------------------
async def test_another_user_cannot_reach_the_server(hub: SlurmHub) -> None:
    async with hub.session("mhs_ann") as s:
        state = (await model(s, "mhs_ann"))["servers"][""]["state"]
    async with hub.session("mhs_bob") as s:
        async with s.get("/user/mhs_ann/api/kernels", allow_redirects=False) as r:
            assert r.status in (403, 404), r.status
        # The report route: a guessed token is refused and changes nothing.
        hdr = {"X-Minihub-Launch-Token": "guess"}
        body = {"job_id": state["job_id"], "port": 1}
        async with s.post("/hub/api/slurm/report", json=body, headers=hdr) as r:
            assert r.status == 404
        # Bodies that are not a report: a 400 with a message, never a 500.
        for raw_body in (b'{"job_id": "1", "port": 1e400}', b"[" * 5000, b'{"port": 1.5}'):
            async with s.post("/hub/api/slurm/report", data=raw_body, headers=hdr) as r:
                assert r.status == 400, (raw_body[:20], r.status)
    # Straight to the job's port without the server's secret: refused by the server.
    async with aiohttp.ClientSession() as raw:
        url = f"http://{state['host']}:{state['port']}/user/mhs_ann/api/kernels"
        async with raw.get(url) as r:
            assert r.status == 403


# --- a job waiting in the queue, with Slurm's reason ------------------------------------------------
async def test_pending_job_shows_the_reason_then_starts(
    hub: SlurmHub, slurm_cluster: SlurmCluster
) -> None:
    blocker = slurm_cluster.sbatch("-p", "small", "-c", "8", "--mem=100M", "--wrap", "sleep 300")
    slurm_cluster.wait_state(blocker, {"RUNNING"})
    async with hub.session("mhs_cat") as s:
        post = asyncio.create_task(s.post("/hub/api/users/mhs_cat/server",
                                          json={"partition": "small"}))  # fmt: skip
        seen: list[dict[str, Any]] = []
        async with asyncio.timeout(30):
            while "waiting in the queue (Resources)" not in messages(seen):
                await asyncio.sleep(0.3)
                async with s.get("/hub/api/users/mhs_cat/server/progress") as r:
                    if r.status == 200:
                        seen = [json.loads(x[5:]) async for x in _data_lines(r)]
        slurm_cluster.cancel(blocker)
        r = await post
        assert r.status in (201, 202), await r.text()
        events = await follow(s, "/hub/api/users/mhs_cat/server/progress")
        assert events[-1].get("ready"), events
        assert (await model(s, "mhs_cat"))["servers"][""]["state"]["node"] == "n3"
        await stop(s, "mhs_cat")


async def _data_lines(r: aiohttp.ClientResponse) -> Any:
    # A progress stream of a pending server ends only when the start does: read what is there.
    try:
        async with asyncio.timeout(1):
            async for line in r.content:
                if line.startswith(b"data:"):
                    yield line
    except TimeoutError:
        return


# --- fail fast with Slurm's reason -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"partition": "nope"}, "Invalid partition name specified"),
        ({"partition": "small", "runtime": "2:00:00"}, "Slurm cannot run the job"),
        ({"memory": "1G\n#SBATCH --uid=0"}, "is not a Slurm size"),
        ({"qos": "normal"}, "Option 'qos' is not offered"),
    ],
)
async def test_a_job_slurm_will_not_run_fails_at_once(
    hub: SlurmHub, slurm_cluster: SlurmCluster, options: dict[str, str], expected: str
) -> None:
    async with hub.session("mhs_bob") as s:
        events = await spawn(s, "mhs_bob", options)
        assert events[-1].get("failed"), events
        assert expected in events[-1]["message"], events
        assert (await model(s, "mhs_bob"))["servers"] == {}
    jobs = slurm_cluster.run("squeue", "-h", "-u", "mhs_bob", "-t", "PD,R", "-o", "%i")
    assert jobs.strip() == ""


# --- --mem enforced: a kernel over the limit is killed, and the user told ------------------------
async def test_memory_limit_kills_a_kernel_over_it(hub: SlurmHub) -> None:
    async with hub.session("mhs_dan") as s:
        events = await spawn(s, "mhs_dan", {"memory": "400M"})
        assert events[-1].get("ready"), events
        async with s.post("/user/mhs_dan/api/kernels", json={"name": "python3"}) as r:
            kernel = await r.json()
        url = f"/user/mhs_dan/api/kernels/{kernel['id']}/channels"
        session, msg_id = "s" * 32, "m" * 32
        reasons = []
        async with s.ws_connect(f"{url}?session_id={session}") as ws:
            await ws.send_json(helpers.execute_request("hog = b'x' * (800 << 20)", msg_id, session))
            async with asyncio.timeout(60):
                async for m in ws:
                    msg = json.loads(m.data)
                    if msg["msg_type"] == "status" and msg["content"].get("reason"):
                        reasons.append(msg["content"]["reason"])
                        break
        assert reasons == ["killed: out of memory"], reasons
        assert (await run_code(s, "mhs_dan", "print('still here')")).strip() == "still here"
        await stop(s, "mhs_dan")


# --- stop, and a hub restart that re-adopts a running job ----------------------------------------
async def test_restart_readopts_the_job_and_stop_ends_it(
    hub: SlurmHub, slurm_cluster: SlurmCluster
) -> None:
    async with hub.session("mhs_ann") as s:
        before = (await model(s, "mhs_ann"))["servers"][""]["state"]
    hub.stop()
    hub.start()
    async with hub.session("mhs_ann") as s:
        after = (await model(s, "mhs_ann"))["servers"][""]
        assert after["ready"] and after["state"]["job_id"] == before["job_id"], after
        assert (await run_code(s, "mhs_ann", "print(6 * 7)")).strip() == "42"
        await stop(s, "mhs_ann")
    job = slurm_cluster.job(before["job_id"])
    assert job["JobState"] in ("CANCELLED", "COMPLETED"), job


# --- profiles: the spawn form by group, with the partitions' limits; the REST API ------------------
async def login(hub: SlurmHub, name: str) -> aiohttp.ClientSession:
    browser = aiohttp.ClientSession(hub.url, cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with browser.get("/hub/login") as r:
        assert r.status == 200
    data = {"username": name, "password": f"pw-{name}-long-enough"}
    async with browser.post("/hub/login", data=data, allow_redirects=False) as r:
        assert r.status == 302, await r.text()
    return browser


async def test_the_spawn_form_offers_profiles_by_group_with_their_limits(hub: SlurmHub) -> None:
    async with await login(hub, "mhs_bob") as bob, await login(hub, "mhs_cat") as cat:
        page = ""
        async with asyncio.timeout(20):  # the first look asks sinfo for the partitions
            while "1 nodes of 8 CPUs" not in page:
                await asyncio.sleep(0.2)
                page = await (await bob.get("/hub/spawn/mhs_bob")).text()
        assert "Small node &lt;n3&gt;" in page and 'value="staff"' in page
        assert "partition small (up to 1:00:00, 1 nodes of 8 CPUs / 4096 MB)" in page
        assert "time limit 0:30:00 · 2 CPUs · 600M memory" in page
        assert '<option value="" selected>default</option>' in page  # keeps the profile's
        page = await (await cat.get("/hub/spawn/mhs_cat")).text()
        assert 'value="small"' in page and 'value="staff"' not in page  # not in the group


async def test_a_profile_sets_the_job_and_one_not_offered_is_refused(
    hub: SlurmHub, slurm_cluster: SlurmCluster
) -> None:
    async with hub.session("mhs_cat") as s:
        for profile, text in (("nope", "choose one of: standard, small."), ("staff", "'staff'")):
            async with s.post("/hub/api/users/mhs_cat/server", json={"profile": profile}) as r:
                assert r.status == 400, await r.text()
                assert text in (await r.json())["message"]
        assert slurm_cluster.run("squeue", "-h", "-u", "mhs_cat", "-o", "%i").strip() == ""
        events = await spawn(s, "mhs_cat", {"profile": "small"})
        assert events[-1].get("ready"), events
        assert "Submitting the job to Slurm (small)" in messages(events)
        state = (await model(s, "mhs_cat"))["servers"][""]["state"]
        assert state["profile"] == "small" and state["node"] == "n3"
        job = slurm_cluster.job(state["job_id"])
        assert (job["Partition"], job["TimeLimit"], job["NumCPUs"]) == ("small", "00:30:00", "2")
        assert job["MinMemoryNode"] == "600M", job
        await stop(s, "mhs_cat")


# --- culling: an idle job is cancelled by the culler ----------------------------------------------
async def test_the_culler_cancels_an_idle_job(
    tmp_path: Path, slurm_cluster: SlurmCluster, make_system_user: Any
) -> None:
    make_system_user("mhs_dan")
    h = SlurmHub(tmp_path, "[culler]\ntimeout = 2\nevery = 1\n")
    h.user("mhs_dan")
    h.start()
    try:
        async with h.session("mhs_dan") as s:
            assert (await spawn(s, "mhs_dan"))[-1].get("ready")
            job_id = (await model(s, "mhs_dan"))["servers"][""]["state"]["job_id"]
            async with asyncio.timeout(60):
                while (await model(s, "mhs_dan"))["servers"]:
                    await asyncio.sleep(0.5)
        assert slurm_cluster.wait_state(job_id, {"CANCELLED"})["JobState"] == "CANCELLED"
        assert "culling server mhs_dan" in h.log.read_text()
    finally:
        h.stop()


# --- last: the one-minute server has been ended by Slurm, and the user is told why ---------------
async def test_time_limit_ends_the_server_with_the_reason(hub: SlurmHub) -> None:
    async with hub.session("mhs_tim") as s:
        async with asyncio.timeout(120):
            while (await model(s, "mhs_tim"))["servers"]:
                await asyncio.sleep(1)
        events = await follow(s, "/hub/api/users/mhs_tim/server/progress")
        assert events[-1].get("failed") and "Your server stopped" in events[-1]["message"], events
        async with s.get("/hub/spawn-pending/mhs_tim") as r:
            page = await r.text()
        assert "reached its time limit" in page and "TIMEOUT" in page, page[-2000:]


# --- bad settings stop start-up naming the key -----------------------------------------------------
@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('memory = "lots"', "[slurm] memory"),
        ('partition = "a b"', "[slurm] partition"),
        ('exec_prefix = "sudo -u someone"', "[slurm] exec_prefix"),
        ("nprocs = -1", "[slurm] nprocs"),
        (
            '[[slurm.profile_list]]\ndisplay_name = "X"\nslurm_override = { ip = "::" }',
            "cannot set 'ip'",
        ),
        (
            '[[slurm.profile_list]]\ndisplay_name = "X"\nslurm_override = { memory = "a lot" }',
            "[slurm] profile_list",
        ),
        ('colour = "blue"', "colour"),
    ],
)
def test_bad_settings_stop_start_up_naming_the_key(tmp_path: Path, line: str, key: str) -> None:
    h = SlurmHub(tmp_path)
    h.toml.write_text(h.toml.read_text().replace('memory = "1G"\n', line + "\n"))
    out = h.cli("token", "mhs_nobody")
    assert out.returncode != 0 and key in out.stderr, out.stderr
