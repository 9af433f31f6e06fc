"""Issue 12 item 5: nobody can lock a name out, and addresses are counted as people are.

Against a real hub process with real PAM users: failures from one address back that address
off (for that name, then for all names), never the name itself; X-Forwarded-For is believed
only from [hub] trusted_proxies; every 127.x.y.z is one address.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest
from conftest import needs_root
from test_config_cli import MINIHUB, free_port, start_hub

from minihub.auth.throttle import address_group, client_address
from minihub.config import parse_networks


# --- a real hub process, shared by the test_attack_login_* modules --------------------------
@contextmanager
def real_hub(tmp_path: Path, toml: str, hub: str = "") -> Iterator[tuple[str, Path]]:
    """`python -m minihub` with this config on a free loopback port; (base URL, log path).

    `hub` holds extra lines for the [hub] table, `toml` the other tables."""
    port = free_port()
    cfg = tmp_path / "hub.toml"
    cfg.write_text(f"[hub]\ncleanup_servers = true\n{hub}\n{toml}")
    log = tmp_path / "hub.log"
    proc = start_hub(
        [
            *MINIHUB,
            "-f",
            str(cfg),
            "--data-dir",
            str(tmp_path / "data"),
            "--port",
            str(port),
            "--log-level",
            "DEBUG",
        ],
        port,
        log,
    )
    try:
        yield f"http://127.0.0.1:{port}", log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def client(source: str = "127.0.0.1") -> aiohttp.ClientSession:
    """A browser-like client connecting from `source` (any 127.x address works on Linux)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(local_addr=(source, 0)),
        cookie_jar=aiohttp.CookieJar(unsafe=True),
        timeout=aiohttp.ClientTimeout(total=60),
    )


async def post_login(
    s: aiohttp.ClientSession, base: str, name: str, password: str, via: str | None = None
) -> tuple[int, dict[str, str], str]:
    """One login form post; `via`: the client address a trusted proxy would forward."""
    headers = {"X-Forwarded-For": via} if via else {}
    async with s.post(
        f"{base}/hub/login",
        data={"username": name, "password": password},
        headers=headers,
        allow_redirects=False,
    ) as r:
        return r.status, dict(r.headers), await r.text()


PAM_HUB = """[auth]
authenticator = "pam"
login_failure_delay_seconds = 0.05
login_delay_after = 3
login_address_delay_after = 20
[spawner]
uid_min = 0
"""


# --- how addresses are counted ----------------------------------------------------------------
@pytest.mark.parametrize(
    "a, b",
    [
        ("127.0.0.1", "127.4.5.6"),
        ("127.0.0.1", "::1"),
        ("127.0.0.9", "::ffff:127.0.0.1"),
        ("2001:db8::1", "2001:db8::ffff:1"),
        ("192.0.2.7", "::ffff:192.0.2.7"),
    ],
)
def test_same_group(a: str, b: str) -> None:
    assert address_group(a) == address_group(b)


@pytest.mark.parametrize(
    "a, b",
    [
        ("192.0.2.7", "192.0.2.8"),
        ("2001:db8::1", "2001:db8:0:1::1"),
        ("127.0.0.1", "10.0.0.1"),
    ],
)
def test_different_group(a: str, b: str) -> None:
    assert address_group(a) != address_group(b)


def test_forwarded_for_believed_only_from_trusted_proxies() -> None:
    trusted = parse_networks(["127.0.0.1", "10.0.0.0/8"])
    assert client_address("192.0.2.1", ["198.51.100.1"], trusted) == "192.0.2.1"
    assert client_address("127.0.0.2", ["198.51.100.1"], trusted) == "127.0.0.2"
    assert client_address("127.0.0.1", ["198.51.100.1"], trusted) == "198.51.100.1"
    # the client may send its own X-Forwarded-For: only the hop our proxy added counts
    assert client_address("127.0.0.1", ["6.6.6.6, 198.51.100.1"], trusted) == "198.51.100.1"
    assert client_address("127.0.0.1", ["198.51.100.1, 10.1.2.3"], trusted) == "198.51.100.1"
    assert client_address("127.0.0.1", ["junk"], trusted) == "127.0.0.1"
    assert client_address("::ffff:127.0.0.1", ["2001:db8::5"], trusted) == "2001:db8::5"


# --- the attacks --------------------------------------------------------------------------------
TRUST_LOOPBACK_PROXY = 'trusted_proxies = ["127.0.0.1"]'


@needs_root
async def test_failures_elsewhere_never_lock_out_the_right_password(tmp_path, make_system_user):
    victim = make_system_user("mhlk_victim")
    with real_hub(tmp_path, PAM_HUB, TRUST_LOOPBACK_PROXY) as (base, _):
        async with client() as s:
            seen = set()
            for i in range(15):  # the old hub locked the name for 300 s after 10 of these
                status, headers, text = await post_login(
                    s, base, victim.name, f"guess-{i}", via="203.0.113.66"
                )
                seen.add(status)
                if status == 429:
                    assert int(headers["Retry-After"]) >= 1 and "Try again in" in text
            assert seen == {403, 429}  # the guessing address was made to wait
            # the owner, from her own address, gets straight in
            status, _, _ = await post_login(
                s, base, victim.name, victim.password, via="198.51.100.23"
            )
            assert status == 302


@needs_root
async def test_forwarded_for_from_an_untrusted_peer_changes_nothing(tmp_path, make_system_user):
    victim = make_system_user("mhlk_target")
    other = make_system_user("mhlk_other")
    # no trusted proxy: a forged X-Forwarded-For per request must not make fresh addresses
    with real_hub(tmp_path, PAM_HUB) as (base, _):
        async with client() as s:
            statuses = [
                (await post_login(s, base, victim.name, f"guess-{i}", via=f"198.51.100.{i}"))[0]
                for i in range(6)
            ]
            assert statuses[:3] == [403] * 3 and 429 in statuses[3:]
            # backing off is per (name, address): another name from here still gets in
            assert (await post_login(s, base, other.name, other.password))[0] == 302


@needs_root
async def test_every_loopback_address_is_one_address(tmp_path, make_system_user):
    """A spray of names, each from its own 127.x address (the campaign's trick), is one
    address spraying: past [auth] login_address_delay_after it must wait."""
    with real_hub(tmp_path, PAM_HUB) as (base, _):
        statuses = []
        for i in range(26):
            async with client(f"127.0.{i // 200}.{2 + i % 200}") as s:
                status, headers, text = await post_login(s, base, f"mhlk_nobody{i}", "x" * 9)
                statuses.append(status)
                if status == 429:
                    assert "from your address" in text and int(headers["Retry-After"]) >= 1
        assert statuses[:20] == [403] * 20 and 429 in statuses[20:]


@needs_root
async def test_behind_a_nat_one_guesser_does_not_shut_out_the_others(tmp_path, make_system_user):
    victim = make_system_user("mhlk_nat1")
    neighbour = make_system_user("mhlk_nat2")
    with real_hub(tmp_path, PAM_HUB, TRUST_LOOPBACK_PROXY) as (base, _):
        async with client() as s:
            nat = "192.0.2.200"
            for i in range(8):  # under the per-address allowance, over the per-pair one
                await post_login(s, base, victim.name, f"guess-{i}", via=nat)
            assert (await post_login(s, base, neighbour.name, neighbour.password, via=nat))[
                0
            ] == 302


# A local user's process (a kernel, a terminal) posting logins to the hub on loopback.
_LOCAL_GUESSER = """
import json, sys, urllib.error, urllib.parse, urllib.request
base, name, count, via = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
out = []
for i in range(count):
    data = urllib.parse.urlencode({"username": name, "password": f"guess-{i}"}).encode()
    fwd = via if via != "fresh" else f"198.51.{i // 250}.{1 + i % 250}"
    req = urllib.request.Request(base + "/hub/login", data, {"X-Forwarded-For": fwd})
    try:
        out.append(urllib.request.urlopen(req, timeout=60).status)
    except urllib.error.HTTPError as e:
        out.append(e.code)
print(json.dumps(out))
"""


@needs_root
async def test_a_local_user_cannot_pass_for_the_trusted_loopback_proxy(
    tmp_path, make_system_user, request
):
    """Behind nginx on this machine ([hub] trusted_proxies = ["127.0.0.1"]) a student's
    kernel connects from 127.0.0.1 too. Its X-Forwarded-For must not be believed: a fresh
    forged address per guess would dodge every backoff, and the classroom NAT's address
    forged would lock the class out. Its guesses count as its own uid's."""
    import json
    import os
    import tempfile

    student = make_system_user("mhlk_stud")
    victim = make_system_user("mhlk_vict")
    shared = tempfile.TemporaryDirectory(prefix="mhlk-", dir="/tmp")  # tmp_path is root's only
    request.addfinalizer(shared.cleanup)
    os.chmod(shared.name, 0o755)
    script = Path(shared.name) / "guess.py"
    script.write_text(_LOCAL_GUESSER)
    os.chmod(script, 0o644)

    def guess(base: str, name: str, count: int, via: str) -> list[int]:
        done = subprocess.run(
            ["runuser", "-u", student.name, "--", "/usr/bin/python3", str(script)]
            + [base, name, str(count), via],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        return list(json.loads(done.stdout))

    nat = "192.0.2.200"
    with real_hub(tmp_path, PAM_HUB, TRUST_LOOPBACK_PROXY) as (base, _):
        # a fresh forged address per guess: still one guesser, backed off after 3
        statuses = guess(base, victim.name, 6, "fresh")
        assert statuses[:3] == [403] * 3 and 429 in statuses[3:], statuses
        # forging the NAT's address past [auth] login_address_delay_after (20)...
        statuses = guess(base, "mhlk_nobody", 24, nat)
        assert 429 in statuses, statuses
        # ...does not touch the NAT: nginx (root here) forwarding it gets the victim in
        async with client() as s:
            status, _, _ = await post_login(s, base, victim.name, victim.password, via=nat)
            assert status == 302


@needs_root
async def test_a_half_sent_request_does_not_hold_a_connection(tmp_path):
    """Slowloris: a client that sends half a request line and stops (or connects and sends
    nothing) is closed after [hub] idle_connection_timeout, not kept for aiohttp's hour."""
    import asyncio

    with real_hub(tmp_path, PAM_HUB, "idle_connection_timeout = 1") as (base, _):
        port = int(base.rsplit(":", 1)[1])
        for sent in (b"", b"GET /hub/login HTTP/1.1\r\nHost: x\r\n"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(sent)
            await writer.drain()
            # closed with no answer (the bound: aiohttp's default would hold it for an hour)
            assert await asyncio.wait_for(reader.read(), 20) == b"", sent
            writer.close()
