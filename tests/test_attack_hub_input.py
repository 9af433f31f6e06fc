"""Issue 12 item 10, the hub's half: bad input to the hub is a 4xx with a message, never a
500 or a traceback, and a refused request stores nothing.

The attack's own inputs go to a real hub process (PAM, real accounts, its log read back);
Hypothesis then sends random JSON bodies, fields, forms, queries and paths to a hub served
from a thread of this process, checking each answer and the SQLite store after a refusal.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from aiohttp import web
from conftest import hub_config, hub_log_faults, needs_root
from helpers import add_users
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_config_cli import MINIHUB, free_port, start_hub

from minihub.app import make_app
from minihub.auth.native import NativeAuthenticator
from minihub.store import Store
from minihub.users import create, new_token

# --- a tiny blocking HTTP client (Hypothesis tests are synchronous) --------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    cookies: list[str] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return Answer(
            r.status,
            {k.lower(): v for k, v in r.getheaders()},
            r.read(),
            [v.split(";", 1)[0] for k, v in r.getheaders() if k.lower() == "set-cookie"],
        )
    finally:
        conn.close()


def tok(token: str) -> dict[str, str]:
    return {"Authorization": f"token {token}"}


def assert_refusal_shape(a: Answer) -> None:
    """Under /hub/api every refusal is JupyterHub's {"status": N, "message": "..."}."""
    body = a.json()
    assert body["status"] == a.status, body
    assert isinstance(body["message"], str) and body["message"], body


# --- the attack's inputs, against a real hub process -----------------------------------------


@dataclass
class RealHub:
    port: int
    admin_token: str
    log: Path
    db: Path
    proc: subprocess.Popen[bytes]
    admin: str
    user: Any = None

    def api(
        self, method: str, path: str, body: bytes | None = None, token: str | None = None
    ) -> Answer:
        return call(self.port, method, "/hub/api" + path, body, tok(token or self.admin_token))


@pytest.fixture(scope="module")
def accounts(make_system_user: Any) -> tuple[Any, Any]:
    """The admin and the user every real hub of this module knows (real PAM accounts)."""
    return make_system_user("mhhi_boss"), make_system_user("mhhi_amy")


@contextlib.contextmanager
def running_hub(tmp: Path, boss: Any, amy: Any) -> Iterator[RealHub]:
    """A hub process on its own data dir, `boss` its admin (with a token) and `amy` a user."""
    data, port, log = tmp / "data", free_port(), tmp / "hub.log"
    toml = tmp / "m.toml"
    toml.write_text("[auth]\nlogin_failure_delay_seconds = 1.0\n")
    cli = [*MINIHUB, "-f", str(toml), "--data-dir", str(data)]
    names = [boss.name, amy.name]
    token = add_users(data, names, toml, admins=[boss.name], tokens=[boss.name])[boss.name]
    proc = start_hub([*cli, "--port", str(port), "--log-level", "DEBUG"], port, log)
    hub = RealHub(port, token, log, data / "minihub.sqlite", proc, boss.name, amy)
    try:
        yield hub
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


@pytest.fixture(scope="module")
def real_hub(
    tmp_path_factory: pytest.TempPathFactory, accounts: tuple[Any, Any]
) -> Iterator[RealHub]:
    """One hub for the attacks below: none of them depends on another's leftovers (each
    compares the store with itself before, or names what only it creates), and its log is
    checked for 500s and tracebacks at the end of the session (conftest.HUB_LOGS)."""
    with running_hub(tmp_path_factory.mktemp("mhhi"), *accounts) as hub:
        yield hub


@pytest.fixture
def fresh_real_hub(tmp_path: Path, accounts: tuple[Any, Any]) -> Iterator[RealHub]:
    """A hub of its own, for the test that stops it and reads its whole log."""
    with running_hub(tmp_path, *accounts) as hub:
        yield hub


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        return list(c.execute(sql))


@needs_root
def test_the_attack_inputs_are_4xx_and_store_nothing(real_hub: RealHub) -> None:
    h, boss = real_hub, real_hub.admin
    before = rows(h.db, "SELECT id, expires FROM tokens ORDER BY id")
    deep = b"[" * 100_000 + b"]" * 100_000
    for path in ("/users", f"/users/{boss}/tokens", f"/users/{boss}/activity"):
        a = h.api("POST", path, deep)
        assert a.status == 400 and "deeper" in a.json()["message"], a.body[:200]
    for value in (
        "1e20",
        "Infinity",
        "-Infinity",
        "NaN",
        "-1",
        "0",
        "1e400",
        "true",
        '"60"',
        "1" * 5000,
    ):
        a = h.api("POST", f"/users/{boss}/tokens", b'{"expires_in": %s}' % value.encode())
        assert a.status == 400, (value, a.body[:200])
        assert_refusal_shape(a)
    assert rows(h.db, "SELECT id, expires FROM tokens ORDER BY id") == before
    a = h.api("GET", f"/users/{boss}/tokens")
    assert a.status == 200 and len(a.json()["api_tokens"]) == len(before)
    # strict booleans: a string is not a bool, and the user is not created at all
    for path, body in (
        ("/users/mhhi_eve", b'{"admin": "false"}'),
        ("/users", b'{"usernames": ["mhhi_eve"], "admin": "false"}'),
        ("/users", b'{"usernames": ["mhhi_eve"], "admin": 0}'),
        (f"/users/{h.user.name}", b'{"admin": "true"}'),
    ):
        a = h.api("PATCH" if h.user.name in path else "POST", path, body)
        assert a.status == 400 and "admin must be true or false" in a.json()["message"], a.body
    assert rows(
        h.db,
        "SELECT u.name, (SELECT count(*) FROM role_users r WHERE r.user_id = u.id AND "
        "r.role = 'admin') FROM users u WHERE name IN ('mhhi_eve', 'mhhi_amy')",
    ) == [("mhhi_amy", 0)]


@needs_root
def test_a_stored_unshowable_expiry_does_not_break_the_token_list(real_hub: RealHub) -> None:
    """Rows an older hub stored from expires_in 1e20 / Infinity still list (as "never")."""
    h = real_hub
    uid = rows(h.db, f"SELECT id FROM users WHERE name = '{h.admin}'")[0][0]
    with sqlite3.connect(h.db) as c:
        for i, expires in enumerate((1e20 + time.time(), float("inf"))):
            c.execute(
                "INSERT INTO tokens (user_id, hash, prefix, note, scopes, created, expires)"
                " VALUES (?, ?, 'x', 'old', '[]', ?, ?)",
                (uid, f"h{i}", time.time(), expires),
            )
    a = h.api("GET", f"/users/{h.admin}/tokens")
    assert a.status == 200, a.body[:300]
    old = [t for t in a.json()["api_tokens"] if t["note"] == "old"]
    assert len(old) == 2 and all(t["expires_at"] is None for t in old)
    tid = old[0]["id"]
    assert h.api("GET", f"/users/{h.admin}/tokens/{tid}").status == 200


@needs_root
def test_a_server_for_root_is_403(real_hub: RealHub) -> None:
    h = real_hub
    assert h.api("POST", "/users/root").status == 201
    a = h.api("POST", "/users/root/server")
    assert a.status == 403 and "root" in a.json()["message"], a.body[:300]


def _send_and_leave(port: int, head: bytes, body: bytes, wait: float) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(head + body)
        time.sleep(wait)


def _login_access_lines(log: Path, start: int) -> list[str]:
    lines = log.read_text(errors="replace").splitlines()[start:]
    return [ln for ln in lines if "minihub.access]" in ln and "POST /hub/login" in ln]


@needs_root
def test_a_client_leaving_mid_login_is_one_quiet_line(real_hub: RealHub) -> None:
    h = real_hub
    form = urlencode({"username": h.user.name, "password": "wrong"}).encode()
    head = (
        b"POST /hub/login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
    )
    start = len(h.log.read_text(errors="replace").splitlines())
    for _ in range(3):
        # the body never arrives in full; then one that leaves while PAM and the delay run
        _send_and_leave(h.port, head + b"Content-Length: 500\r\n\r\n", form, 0.2)
        _send_and_leave(h.port, head + b"Content-Length: %d\r\n\r\n" % len(form), form, 0.2)
    # The abandoned logins finish their failure delay (1 s) and answer nobody: each writes
    # its access line then (at most 30 s on a loaded machine).
    deadline = time.monotonic() + 30
    while len(_login_access_lines(h.log, start)) < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert call(h.port, "GET", "/hub/health").status == 200
    lines = h.log.read_text(errors="replace").splitlines()[start:]
    assert not hub_log_faults("\n".join(lines)), lines
    # one line per attempt, the access line (DEBUG included): 403, or 499 for a body that
    # never came in full (the answer to one that left after sending it is written, unread)
    assert len([ln for ln in lines if "POST /hub/login" in ln]) == 6, lines
    access = [ln for ln in lines if "minihub.access]" in ln and "POST /hub/login" in ln]
    assert len(access) == 6 and all(" 499 " in ln or " 403 " in ln for ln in access), access
    assert len([ln for ln in access if " 499 " in ln]) >= 3, access
    assert not [ln for ln in lines if "Traceback" in ln or ln.startswith("  File ")]


@needs_root
def test_the_real_hub_log_has_no_500_after_all_that(fresh_real_hub: RealHub) -> None:
    """The process-level guard: every attack above, then the hub's whole log."""
    test_the_attack_inputs_are_4xx_and_store_nothing(fresh_real_hub)
    test_a_server_for_root_is_403(fresh_real_hub)
    fresh_real_hub.proc.send_signal(signal.SIGTERM)
    assert fresh_real_hub.proc.wait(20) == 0
    assert not hub_log_faults(fresh_real_hub.log)


# --- Hypothesis: random input to a hub served from a thread ----------------------------------


@dataclass
class ThreadHub:
    port: int
    db: Path
    tokens: dict[str, str]
    cookie: str = ""
    victim: list[str] = field(default_factory=lambda: ["vic"])


def _serve(app: web.Application, port: int, ready: threading.Event, box: dict[str, Any]) -> None:
    async def main() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        box["loop"], box["stop"] = asyncio.get_running_loop(), asyncio.Event()
        ready.set()
        await box["stop"].wait()
        await runner.cleanup()

    asyncio.run(main())


async def _seed(cfg: Any) -> dict[str, str]:
    store = await Store.open(cfg.data_dir / "minihub.sqlite")
    auth = NativeAuthenticator(cfg, store)
    tokens = {}
    for name, admin in (("boss", True), ("amy", False), ("vic", False)):
        user = await create(store, auth, name, admin, password=f"{name}-password")
        tokens[name] = (await new_token(store, user, "test"))[0]
    await store.close()
    return tokens


@pytest.fixture(scope="module")
def thread_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadHub]:
    data = tmp_path_factory.mktemp("hubdata")
    cfg = hub_config(str(data), auth__authenticator="native")
    tokens = asyncio.run(_seed(cfg))
    port, ready, box = free_port(), threading.Event(), {}
    t = threading.Thread(target=_serve, args=(make_app(cfg), port, ready, box), daemon=True)
    t.start()
    assert ready.wait(30)
    hub = ThreadHub(port, data / "minihub.sqlite", tokens)
    r = call(
        port,
        "POST",
        "/hub/login",
        urlencode({"username": "boss", "password": "boss-password"}).encode(),
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status == 302, r.body
    hub.cookie = "; ".join(r.cookies)
    try:
        yield hub
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        t.join(30)


# What a refusal must leave alone: every stored row but the activity and use times.
_SNAPSHOT = [
    "SELECT id, name, password_hash, created FROM users ORDER BY id",
    "SELECT role, user_id, source FROM role_users ORDER BY role, user_id",
    "SELECT * FROM groups ORDER BY id",
    "SELECT * FROM group_users ORDER BY group_id, user_id",
    "SELECT * FROM shares ORDER BY id",
    "SELECT id, user_id, hash, note, scopes, created, expires, kind FROM tokens ORDER BY id",
    "SELECT id_hash, user_id, expires FROM sessions ORDER BY id_hash",
    "SELECT * FROM servers ORDER BY user_id",
    "SELECT * FROM oauth_clients ORDER BY id",
    "SELECT hash FROM oauth_codes ORDER BY hash",
]


def snapshot(db: Path) -> list[list[tuple[Any, ...]]]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c:
        return [list(c.execute(q)) for q in _SNAPSHOT]


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(st.characters(codec=None), max_size=40)
    | st.sampled_from(
        [
            "false",
            "true",
            "0",
            "",
            "1e20",
            "read:users",
            "self",
            "2024-01-01T00:00:00Z",
            "9999-12-31T23:59:59-14:00",
            "mhhi_x",
            "boss",
            "\ud800",
            "Infinity",
        ]
    )
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=12,
)

# endpoint -> (method, path template, the fields it knows)
ENDPOINTS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "create_users": ("POST", "/hub/api/users", ("usernames", "admin")),
    "create_user": ("POST", "/hub/api/users/{new}", ("admin",)),
    "patch_user": ("PATCH", "/hub/api/users/{victim}", ("name", "admin")),
    "tokens": ("POST", "/hub/api/users/{me}/tokens", ("note", "expires_in", "scopes", "roles")),
    "activity": ("POST", "/hub/api/users/{me}/activity", ("last_activity", "servers")),
    "stop_server": ("DELETE", "/hub/api/users/{me}/server", ("remove",)),
    "start_server": ("POST", "/hub/api/users/{me}/server", ()),
}


def bodies(fields: tuple[str, ...]) -> st.SearchStrategy[Any]:
    """Mostly objects with the endpoint's own fields (random values), some foreign keys, and
    now and then any JSON value at all."""
    keys = st.sampled_from(fields) if fields else st.just("options")
    objects = st.dictionaries(keys | st.text(max_size=12), json_values, max_size=4)
    return st.one_of(objects, objects, objects, json_values)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, str, bytes]:
    name = draw(st.sampled_from(sorted(ENDPOINTS)))
    method, path, fields = ENDPOINTS[name]
    who = draw(st.sampled_from(["boss", "amy"]))
    value = draw(bodies(fields))
    if name == "start_server" and value in ({}, None):
        value = {"options": 1}  # an empty body would really spawn: that is not input handling
    raw = json.dumps(value, allow_nan=True).encode()
    if draw(st.booleans()):
        raw = json.dumps(value, allow_nan=True, ensure_ascii=False).encode("utf-8", "surrogatepass")
    new = draw(st.text(st.characters(codec="ascii"), min_size=1, max_size=40))
    return method, path.replace("{new}", quote(new, safe="")), who, raw


FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def check(
    hub: ThreadHub, method: str, path: str, headers: dict[str, str], body: bytes | None
) -> Answer:
    """Send; a 5xx fails; a 4xx must have the error shape and leave the store as it was."""
    before = snapshot(hub.db)
    a = call(hub.port, method, path, body, headers)
    assert a.status < 500, (method, path, body[:200] if body else None, a.body[:300])
    if a.status >= 400:
        if path.startswith("/hub/api") and "/oauth2/" not in path:
            assert_refusal_shape(a)
        assert snapshot(hub.db) == before, (method, path, body[:200] if body else None)
    return a


@FUZZ
@given(req=requests())
def test_random_json_bodies_are_never_5xx_and_refusals_store_nothing(
    thread_hub: ThreadHub, req: tuple[str, str, str, bytes]
) -> None:
    method, path, who, raw = req
    hub = thread_hub
    path = path.replace("{me}", who).replace("{victim}", hub.victim[0])
    a = check(hub, method, path, tok(hub.tokens[who]), raw)
    if method == "PATCH" and a.status == 200:
        hub.victim[0] = a.json()["name"]  # renamed: keep aiming at the same user


@FUZZ
@given(
    raw=st.binary(max_size=300)
    | st.sampled_from(
        [
            b"[" * 40 + b"]" * 40,
            b'{"a":' * 40 + b"1" + b"}" * 40,
            b"\xff\xfe{}",
            b'{"a": 1e999}',
            b'{"note": "\\ud800"}',
            b"{" * 10_000,
            b'"' + b"\\" * 1000,
            b"1" * 5000,
            b"-0",
        ]
    ),
    path=st.sampled_from(
        [
            "/hub/api/users",
            "/hub/api/users/boss/tokens",
            "/hub/api/users/boss/activity",
            "/hub/api/users/vic",
            "/hub/api/users/boss/server",
        ]
    ),
    method=st.sampled_from(["POST", "PATCH", "DELETE"]),
)
def test_random_bytes_as_bodies(thread_hub: ThreadHub, raw: bytes, path: str, method: str) -> None:
    if path.endswith("/server") and method == "POST" and raw.strip() in (b"", b"{}", b"null"):
        raw = b'{"x": 1}'
    path = path.replace("/vic", "/" + thread_hub.victim[0])
    a = check(thread_hub, method, path, tok(thread_hub.tokens["boss"]), raw)
    if method == "PATCH" and a.status == 200:
        thread_hub.victim[0] = a.json()["name"]


queries = st.dictionaries(
    st.sampled_from(
        [
            "offset",
            "limit",
            "state",
            "client_id",
            "redirect_uri",
            "response_type",
            "code_challenge",
            "code_challenge_method",
            "scope",
            "state",
        ]
    )
    | st.text(max_size=8),
    st.text(st.characters(codec=None), max_size=30)
    | st.sampled_from(["-1", "0", "1" * 30, "١٢", "ready", "S256"]),
    max_size=5,
)


def _qs(q: dict[str, str]) -> str:
    return urlencode({k: v.encode("utf-8", "surrogatepass") for k, v in q.items()})


@FUZZ
@given(
    q=queries,
    path=st.sampled_from(["/hub/api/users", "/hub/api/oauth2/authorize"]),
    cookie=st.booleans(),
)
def test_random_query_parameters(
    thread_hub: ThreadHub, q: dict[str, str], path: str, cookie: bool
) -> None:
    headers = {"Cookie": thread_hub.cookie} if cookie else tok(thread_hub.tokens["boss"])
    check(thread_hub, "GET", f"{path}?{_qs(q)}", headers, None)


names_in_paths = st.text(st.characters(codec=None), min_size=1, max_size=80)


@FUZZ
@given(
    name=names_in_paths,
    tid=st.text(max_size=30),
    tail=st.sampled_from(["", "/tokens", "/tokens/{tid}", "/server", "/server/progress"]),
    method=st.sampled_from(["GET", "DELETE"]),
)
def test_random_names_and_ids_in_paths(
    thread_hub: ThreadHub, name: str, tid: str, tail: str, method: str
) -> None:
    if name.lower().strip() in ("boss", thread_hub.victim[0]) and method == "DELETE":
        return  # deleting a real user or its server is a success, not input handling
    enc = quote(name.encode("utf-8", "surrogatepass"), safe="")
    path = f"/hub/api/users/{enc}" + tail.replace("{tid}", quote(tid, safe=""))
    check(thread_hub, method, path, tok(thread_hub.tokens["boss"]), None)


forms = st.dictionaries(
    st.sampled_from(
        ["grant_type", "code", "client_id", "client_secret", "redirect_uri", "code_verifier"]
    )
    | st.text(max_size=8),
    st.text(st.characters(codec=None), max_size=40) | st.just("authorization_code"),
    max_size=6,
)


@FUZZ
@given(
    form=forms,
    ctype=st.sampled_from(
        [
            "application/x-www-form-urlencoded",
            "application/x-www-form-urlencoded; charset=bogus",
            "application/x-www-form-urlencoded; charset=utf-16",
            "multipart/form-data; boundary=zz",
            "multipart/form-data",
            "application/json",
            "text/plain",
        ]
    ),
    auth=st.none()
    | st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(
        lambda t: "Basic " + t
    )
    | st.binary(max_size=40).map(lambda b: "Basic " + base64.b64encode(b).decode()),
)
def test_random_oauth_token_requests(
    thread_hub: ThreadHub, form: dict[str, str], ctype: str, auth: str | None
) -> None:
    headers = {"Content-Type": ctype, **({"Authorization": auth} if auth else {})}
    if ctype.startswith("multipart") and "boundary" in ctype:
        raw = (
            b"".join(
                b'--zz\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n'
                % (k.encode("utf-8", "surrogatepass"), v.encode("utf-8", "surrogatepass"))
                for k, v in form.items()
            )
            + b"--zz--\r\n"
        )
    else:
        raw = _qs(form).encode()
    a = check(thread_hub, "POST", "/hub/api/oauth2/token", headers, raw)
    assert a.status >= 400  # no code was ever issued, so nothing can be exchanged
    body = a.json()  # OAuth's {"error": ...} where the endpoint answers, the hub's for a
    assert body["status"] == a.status and body["message"]  # form it could not even parse
