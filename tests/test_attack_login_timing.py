"""Issue 12 item 9: a failed login must not tell whether the name exists.

Against a real hub process: a failed login for an unknown name and a wrong password for a
real account are both answered only once [auth] login_failure_delay_seconds has passed, by the
same mechanism (the hub's own delay, PAM's handed over to it through PAM_FAIL_DELAY), while a
correct login started after them is answered at once. The order of answers is asserted, not
their durations (those are in scripts/bench/login_flood.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from conftest import needs_root
from helpers import add_users
from test_attack_lockout import client, post_login, real_hub

DELAY = 3.0  # long beside a correct login (tens of ms), so the order of answers is robust


def hub_toml(kind: str) -> str:
    return (
        f'[auth]\nauthenticator = "{kind}"\nlogin_failure_delay_seconds = {DELAY}\n'
        "[spawner]\nuid_min = 0\n"
    )


async def logged(log: Path, needles: list[str]) -> bool:
    """True once every needle is in the hub's log (bounded wait)."""
    for _ in range(100):
        text = log.read_text(errors="replace")
        if all(n in text for n in needles):
            return True
        await asyncio.sleep(0.05)
    return False


def native_users(tmp_path: Path, passwords: dict[str, str]) -> None:
    """What `minihub user add NAME` (each with its password) does, in this process."""
    cfg = tmp_path / "hub.toml"
    cfg.write_text(hub_toml("native"))
    add_users(tmp_path / "data", passwords, cfg, tokens=[], passwords=passwords)


@needs_root
@pytest.mark.parametrize("kind", ["pam", "native"])
async def test_unknown_name_and_wrong_password_answer_alike(tmp_path, make_system_user, kind):
    known = make_system_user(f"mhtm_{kind}1")
    other = make_system_user(f"mhtm_{kind}2")
    if kind == "native":
        native_users(tmp_path, {u.name: u.password for u in (known, other)})
    with real_hub(tmp_path, hub_toml(kind)) as (base, log):
        async with client() as s1, client() as s2, client() as s3:
            unknown = asyncio.create_task(post_login(s1, base, "mhtm_nosuch", "wrong-pass-1"))
            wrong = asyncio.create_task(post_login(s2, base, known.name, "wrong-pass-1"))
            # both checks are over (the hub logs a failure before it waits to answer) ...
            assert await logged(
                log, ["failed login for mhtm_nosuch", f"failed login for {known.name}"]
            )
            # ... yet neither is answered, while a correct login started later is
            status, _, _ = await post_login(s3, base, other.name, other.password)
            assert status == 302
            assert not unknown.done() and not wrong.done()
            (s_unknown, _, body_unknown), (s_wrong, _, body_wrong) = await asyncio.gather(
                unknown, wrong
            )
        assert s_unknown == s_wrong == 403
        assert body_unknown.replace("mhtm_nosuch", known.name) == body_wrong
        text = log.read_text()
        if kind == "pam":  # PAM asked for its own delay, and the hub took it over
            assert f"PAM refused {known.name}: Authentication failure (PAM asked for a" in text
            assert "PAM asked for a 0.00 s delay" not in text
