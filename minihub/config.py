"""Every setting minihub has, declared once, and the TOML loader that validates them.

The same declarations drive the TOML loader, the command-line flags, `--generate-config`
and the settings test that checks every one is documented.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import math
import os
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

from . import plugins
from .access import roles
from .errors import StartupError
from .kernels.wire import DEFAULT_MAX_BUFFERS, DEFAULT_MAX_JSON, DEFAULT_MAX_MESSAGE
from .service_spec import validate as validate_services
from .setting import Setting, between, positive

log = logging.getLogger("minihub")


def _s(
    section: str, name: str, typ: Any, default: Any, help: str, flag: str | None = None
) -> Setting:
    return Setting(section, name, typ, default, help, flag)


# The hub's own settings. Each spawner's and authenticator's are declared next to its code
# (its `settings`); SETTINGS below is all of them.
HUB_SETTINGS: list[Setting] = [
    # [hub]
    _s("hub", "ip", str, "127.0.0.1", "Address the hub listens on.", "--ip"),
    _s("hub", "port", int, 8000, "Port the hub listens on (443 with TLS on a VM).", "--port"),
    _s(
        "hub",
        "base_url",
        str,
        "/",
        "URL prefix everything is served under, e.g. /jupyter/.",
        "--base-url",
    ),
    _s(
        "hub",
        "data_dir",
        str,
        "",
        "Where the SQLite database, cookie secret, logs and sockets live. Empty: "
        "/var/lib/minihub as root, ~/.local/share/minihub otherwise.",
        "--data-dir",
    ),
    _s(
        "hub",
        "ssl_cert",
        str,
        "",
        "PEM certificate chain: serve HTTPS when set with ssl_key.",
        "--ssl-cert",
    ),
    _s("hub", "ssl_key", str, "", "PEM private key for ssl_cert.", "--ssl-key"),
    _s(
        "hub",
        "redirect_port",
        int,
        0,
        "If non-zero, a plain-HTTP listener on this port that only redirects to HTTPS.",
        "--redirect-port",
    ),
    _s(
        "hub",
        "public_url",
        str,
        "",
        "The URL people use to reach the hub, e.g. https://hub.example.org/ (used in links).",
    ),
    _s(
        "hub",
        "cookie_secret_file",
        str,
        "",
        "File holding the secret that signs XSRF tokens and derives server secrets. "
        "Empty: <data_dir>/cookie_secret. Created with mode 0600 if missing.",
    ),
    Setting(
        "hub",
        "idle_connection_timeout",
        (int, float),
        75,
        "Seconds a client connection may sit idle, or half-way through sending a request, "
        "before the hub closes it (websockets and responses in progress are not idle).",
        check=positive,
    ),
    Setting(
        "hub",
        "session_max_age_days",
        (int, float),
        14,
        "How long a login session lasts.",
        check=positive,
    ),
    _s(
        "hub",
        "connect_url",
        str,
        "",
        "How users' servers reach the hub's API, e.g. http://10.0.0.5:8000 for servers on "
        "other machines. Empty: the hub's own address (127.0.0.1 when it listens on all).",
    ),
    _s(
        "hub",
        "server_ca_file",
        str,
        "",
        "CA certificates (PEM) that verify users' servers reached over https. Empty: the "
        "system's CAs.",
    ),
    _s(
        "hub",
        "allow_named_servers",
        bool,
        False,
        "Users may run several servers of their own, each with a name (as JupyterHub's "
        "allow_named_servers): /user/<name>/<server>/.",
    ),
    _s(
        "hub",
        "named_server_limit_per_user",
        int,
        0,
        "How many named servers a user may have (0: no limit).",
    ),
    _s(
        "hub",
        "admin_access",
        bool,
        False,
        "Admins may open other users' servers (as in JupyterHub's admin_access).",
    ),
    _s(
        "hub",
        "cleanup_servers",
        bool,
        False,
        "Stop every user's server when the hub shuts down (default: leave them running).",
    ),
    _s(
        "hub",
        "shutdown_grace_seconds",
        (int, float),
        10,
        "On SIGTERM, how long in-flight requests get to finish.",
    ),
    _s("hub", "log_level", str, "INFO", "DEBUG, INFO, WARNING or ERROR.", "--log-level"),
    _s(
        "hub",
        "trusted_proxies",
        list,
        [],
        'Addresses or CIDR ranges of reverse proxies in front of the hub (e.g. ["127.0.0.1"] '
        "for nginx on this machine) whose X-Forwarded-For names the client for login "
        "throttling. Empty: the connecting address always counts.",
    ),
    # [hub] announcements (minihub.web.announcement); an admin overrides them while the hub runs
    _s(
        "hub",
        "announcement",
        str,
        "",
        "A banner on every hub page and in the notebook app (plain text; web links become "
        "links), as JupyterHub's template_vars announcement. Admins change it on the admin "
        "page without a restart. Public: the login page shows it.",
    ),
    _s("hub", "announcement_login", str, "", "The login page's banner, instead of announcement."),
    _s("hub", "announcement_home", str, "", "The home page's banner, instead of announcement."),
    _s(
        "hub",
        "announcement_spawn",
        str,
        "",
        "The banner of the spawn and spawn-progress pages, instead of announcement.",
    ),
    _s("hub", "announcement_logout", str, "", "The logout page's banner, instead of announcement."),
    Setting(
        "hub",
        "announcement_poll_seconds",
        int,
        60,
        "How often an open notebook app asks the hub for the announcement, so a change shows "
        "without a reload.",
        check=between(1, 3600),
    ),
    # [auth]
    _s(
        "auth",
        "authenticator",
        str,
        "pam",
        '"pam" (system accounts), "native" (minihub '
        'passwords stored with bcrypt), "oauth" (an identity provider: [auth.oauth]), '
        '"shared-password" (a workshop: [auth.shared_password]) or another '
        "installed package's (entry points minihub.authenticators).",
    ),
    _s("auth", "admin_users", list, [], "Users who are admins."),
    _s(
        "auth",
        "allowed_users",
        list,
        [],
        "If set (or allowed_groups is), only these users may log in. Empty: any account.",
    ),
    _s("auth", "blocked_users", list, [], "Users who may never log in."),
    _s("auth", "allowed_groups", list, [], "Unix groups whose members may log in (PAM)."),
    _s(
        "auth",
        "admin_groups",
        list,
        [],
        "Unix groups whose members are admins (PAM); set, they decide at every login.",
    ),
    _s(
        "auth",
        "manage_groups",
        bool,
        False,
        "Hub groups follow the authenticator, as JupyterHub's manage_groups: at each login a "
        "user is put in exactly the groups the login brings (PAM and native: their Unix "
        "groups; oauth: the [auth.oauth] groups_claim) that match manage_groups_include; "
        "missing groups are made, and membership of any other group is taken away. Cannot "
        "be combined with [[groups]].",
    ),
    _s(
        "auth",
        "manage_groups_include",
        list,
        ["*"],
        'With manage_groups: which of those groups become hub groups, as patterns ("course-*", '
        '"staff"; * and ? as in fnmatch). Narrow it for PAM, where everyone is in groups such '
        'as "users" and their own.',
    ),
    _s(
        "auth",
        "login_delay_after",
        int,
        3,
        "Failed logins for one name from one address before further attempts from there must "
        "wait (1 s, doubling; one failure is forgiven a minute). Nothing is ever locked.",
    ),
    _s(
        "auth",
        "login_address_delay_after",
        int,
        20,
        "Failed logins from one address, over all names, before that address must wait "
        "between attempts (doubling; one failure is forgiven every 10 s).",
    ),
    _s(
        "auth",
        "login_max_backoff_seconds",
        (int, float),
        300,
        "Longest wait the login backoff imposes on a name from an address, or on an address.",
    ),
    _s(
        "auth",
        "login_failure_delay_seconds",
        (int, float),
        3.0,
        "Every failed login is answered after this long, whether or not the name exists "
        "(it replaces PAM's own randomised delay, 3 s in Debian's pam_faildelay).",
    ),
    _s(
        "auth",
        "login_concurrent_per_address",
        int,
        8,
        "Login attempts in progress at once from one address (a failed one counts until it "
        "is answered); more wait their turn, or get 429 with Retry-After when the address "
        "has been failing.",
    ),
    _s(
        "auth",
        "login_concurrent_per_name",
        int,
        2,
        "Login attempts in progress at once for one name from addresses that have been "
        "failing; more get 429. An address that has not been failing is never refused.",
    ),
    _s(
        "auth",
        "login_threads",
        int,
        2,
        "Threads that check passwords (PAM, bcrypt), apart from the hub's other blocking work.",
    ),
    # [spawner]
    _s(
        "spawner",
        "class",
        str,
        "fork",
        "What runs users' servers: \"fork\" (local processes as the users' own accounts; "
        'minihub\'s own server forked from a process that has imported it), "local" (the '
        "same, each server exec'd) or another installed package's (entry points "
        "minihub.spawners).",
    ),
    _s(
        "spawner",
        "server",
        str,
        "minihub",
        '"minihub" (minihub\'s own server and notebook app) or "jupyterhub-singleuser" '
        "(JupyterLab and friends, launched and authenticated as JupyterHub does).",
    ),
    _s(
        "spawner",
        "cmd",
        list,
        [],
        "Command that runs a user's server. Empty: the default for [spawner] server "
        "(<python> -m minihub.singleuser, or jupyterhub-singleuser).",
    ),
    _s(
        "spawner",
        "python",
        str,
        "",
        "Python interpreter for user servers and kernels. Empty: the one running the hub. "
        "It must be readable and executable by every user.",
    ),
    _s(
        "spawner",
        "kernel_fork",
        bool,
        True,
        "minihub's own server forks python3 kernels (of its own python) from a process that "
        "has imported ipykernel already: faster kernel starts. false: exec each kernel.",
    ),
    _s(
        "spawner",
        "user_env",
        str,
        "/opt/minihub/user",
        "The venv minihub's own server runs kernels in (python3 and its packages; created by "
        "scripts/install, managed with `minihub env`); its bin/ leads PATH in servers. Empty, "
        "or a path with no bin/python: kernels run in the servers' own python.",
    ),
    _s(
        "spawner",
        "notebook_dir",
        str,
        "",
        "Directory a user's server opens in; {username} is replaced. Empty: the user's home.",
    ),
    _s("spawner", "default_url", str, "/tree/", "Path under /user/<name> a browser lands on."),
    Setting(
        "spawner",
        "start_timeout",
        (int, float),
        60,
        "Seconds a server may take to answer before its start counts as failed.",
        check=positive,
    ),
    Setting(
        "spawner",
        "slow_spawn_timeout",
        (int, float),
        10,
        "Seconds a start request waits for the server to answer before it returns 202 "
        "(pending); the page then follows the start's progress. JupyterHub's "
        "slow_spawn_timeout.",
        check=between(0, 300),
    ),
    _s(
        "spawner",
        "stop_timeout",
        (int, float),
        10,
        "Seconds between SIGTERM and SIGKILL when stopping a server.",
    ),
    _s(
        "spawner",
        "concurrent_spawn_limit",
        int,
        100,
        "Servers starting at once; past it a start gets 429 and Retry-After.",
    ),
    _s(
        "spawner",
        "active_server_limit",
        int,
        0,
        "Servers running at once (0: no limit); past it a start gets 429.",
    ),
    _s(
        "spawner",
        "mem_limit",
        str,
        "",
        'Memory per user, e.g. "512M" or "2G" (cgroups). Empty: no limit.',
    ),
    _s("spawner", "cpu_limit", (int, float), 0, "CPUs per user, e.g. 1.5 (cgroups). 0: no limit."),
    _s("spawner", "environment", dict, {}, "Extra environment variables for user servers."),
    _s(
        "spawner",
        "kernel_idle_timeout",
        int,
        0,
        "Seconds after which an idle kernel inside a server is shut down (0: never).",
    ),
    _s(
        "spawner",
        "terminal_idle_timeout",
        int,
        0,
        "Seconds after which a terminal in minihub's own server with no input or output is "
        "killed (0: never), so a forgotten shell does not hold on to the server.",
    ),
    _s(
        "spawner",
        "kernel_ws_max_message",
        int,
        DEFAULT_MAX_MESSAGE,
        "Largest websocket message (bytes) a browser may send to a kernel in minihub's own "
        "server; a bigger one closes the socket (1009). The hub's proxy also stops at 64 MiB.",
    ),
    _s(
        "spawner",
        "kernel_ws_max_json",
        int,
        DEFAULT_MAX_JSON,
        "Largest JSON (header, metadata, content) in one kernel message from a browser, "
        "either protocol; the server parses it, at up to 25 times its size. Bigger: closed (1007).",
    ),
    _s(
        "spawner",
        "kernel_ws_max_buffers",
        int,
        DEFAULT_MAX_BUFFERS,
        "Most binary buffers one kernel message from a browser may carry (widgets send a few).",
    ),
    # [culler]
    _s("culler", "timeout", int, 0, "Stop servers idle this many seconds (0: never)."),
    _s("culler", "every", int, 60, "How often the culler looks, in seconds."),
    _s("culler", "max_age", int, 0, "Stop servers older than this many seconds (0: never)."),
    _s("culler", "cull_users", bool, False, "Also delete culled users that are not admins."),
]

# [[services]], [[roles]], [[groups]]: arrays of tables, validated by their owners;
# [custom_scopes] a table of custom:* scopes (minihub.access.roles)
LIST_SECTIONS = {"services", "roles", "groups"}


@dataclass(frozen=True)
class _Table:
    settings: tuple[Setting, ...]
    by_key: dict[str, Setting]
    sections: tuple[str, ...]


@functools.cache
def _table() -> _Table:
    """The hub's settings, then every registered spawner's and authenticator's. Gathered at
    first use, not import: the plugins' modules import this one, so they load after it."""
    by_key: dict[str, Setting] = {}
    for s in [*HUB_SETTINGS, *plugins.settings()]:
        first = by_key.setdefault(s.key, s)
        if first != s:
            log.warning(
                "[%s] %s is declared twice, differently: the first one counts", s.section, s.name
            )
    table = tuple(by_key.values())
    return _Table(table, by_key, _sections(table))


def _sections(table: tuple[Setting, ...]) -> tuple[str, ...]:
    """In order of first declaration, a nested section ([auth.oauth]) after its parent."""
    order = list(dict.fromkeys(s.section for s in table))

    def place(section: str) -> tuple[int, int]:
        top = section.split(".")[0]
        return (order.index(top) if top in order else order.index(section), order.index(section))

    return tuple(sorted(order, key=place))


class _Settings(Sequence[Setting]):
    """SETTINGS: every setting, the hub's and its plugins' (see _table)."""

    @overload
    def __getitem__(self, i: int) -> Setting: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[Setting]: ...
    def __getitem__(self, i: int | slice) -> Setting | Sequence[Setting]:
        return _table().settings[i]

    def __len__(self) -> int:
        return len(_table().settings)


class _ByKey(Mapping[str, Setting]):
    def __getitem__(self, key: str) -> Setting:
        return _table().by_key[key]

    def __iter__(self) -> Iterator[str]:
        return iter(_table().by_key)

    def __len__(self) -> int:
        return len(_table().by_key)


class _Sections(Sequence[str]):
    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[str]: ...
    def __getitem__(self, i: int | slice) -> str | Sequence[str]:
        return _table().sections[i]

    def __len__(self) -> int:
        return len(_table().sections)


SETTINGS: Sequence[Setting] = _Settings()
BY_KEY: Mapping[str, Setting] = _ByKey()
SECTIONS: Sequence[str] = _Sections()


@dataclass
class Config:
    """Validated settings: `cfg.get("hub.port")` or attribute-style `cfg.hub["port"]`."""

    values: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    services: list[dict[str, Any]] = field(default_factory=list)
    roles: list[dict[str, Any]] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)
    custom_scopes: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str) -> Any:
        return self.values[key]

    def set(self, key: str, value: Any) -> None:
        if key not in BY_KEY:
            raise KeyError(key)
        self.values[key] = value

    def section(self, name: str) -> dict[str, Any]:
        return {k[len(name) + 1 :]: v for k, v in self.values.items() if k.startswith(name + ".")}

    @property
    def data_dir(self) -> Path:
        return Path(self.values["hub.data_dir"])

    @property
    def base_url(self) -> str:
        return str(self.values["hub.base_url"])

    @property
    def tls(self) -> bool:
        return bool(self.values["hub.ssl_cert"] and self.values["hub.ssl_key"])


def defaults() -> Config:
    cfg = Config({s.key: _copy(s.default) for s in SETTINGS})
    finish(cfg)
    return cfg


def _copy(v: Any) -> Any:
    return list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v


def _type_ok(setting: Setting, value: Any) -> bool:
    types = setting.type if isinstance(setting.type, tuple) else (setting.type,)
    if isinstance(value, bool) and bool not in types:
        return False
    if not isinstance(value, types):
        return False
    if isinstance(value, float) and not math.isfinite(value):
        return False  # TOML's inf and nan: no setting means them
    if isinstance(value, list):
        return all(_item_ok(setting.item, x) for x in value)
    return True


def _item_ok(item: type, x: Any) -> bool:
    return item is object or (isinstance(x, item) and not (isinstance(x, bool) and item is int))


def _type_name(setting: Setting) -> str:
    types = setting.type if isinstance(setting.type, tuple) else (setting.type,)
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        list: "a list of strings",
        dict: "a table",
    }
    items = {str: "strings", int: "integers", dict: "tables", object: "values"}
    names[list] = f"a list of {items.get(setting.item, 'values')}"
    return " or ".join(names[t] for t in types)


def load(path: Path | None, overrides: dict[str, Any] | None = None) -> Config:
    """Read `path` (if given), apply `overrides` (from flags), validate, fill defaults."""
    cfg = Config({s.key: _copy(s.default) for s in SETTINGS}, path)
    if path is not None:
        raw = _read_toml(path)
        _apply(cfg, raw, path)
    for key, value in (overrides or {}).items():
        cfg.values[key] = value
    finish(cfg)
    _validate(cfg, str(path) if path else "command line")
    return cfg


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise StartupError(f"{path}: cannot read config file: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise StartupError(f"{path}: config file is not UTF-8 text") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise StartupError(f"{path}: not valid TOML: {e}") from None


def _apply(cfg: Config, raw: dict[str, Any], path: Path) -> None:
    for section, table in raw.items():
        if section in LIST_SECTIONS:
            if not isinstance(table, list) or not all(isinstance(t, dict) for t in table):
                raise StartupError(f"{path}: [[{section}]] must be an array of tables")
            setattr(cfg, section, table)
            continue
        if section == "custom_scopes":
            if not isinstance(table, dict):
                raise StartupError(f"{path}: [custom_scopes] must be a table")
            cfg.custom_scopes = table
            continue
        if section not in SECTIONS and not any(x.startswith(f"{section}.") for x in SECTIONS):
            raise StartupError(
                f"{path}: unknown section [{section}] (known: {', '.join(SECTIONS)})"
            )
        if not isinstance(table, dict):
            raise StartupError(f"{path}: '{section}' must be a [section]")
        _apply_table(cfg, section, table, path)


def _apply_table(cfg: Config, section: str, table: dict[str, Any], path: Path) -> None:
    for name, value in table.items():
        key = f"{section}.{name}"
        if isinstance(value, dict) and key in SECTIONS:  # a nested table such as [auth.oauth]
            _apply_table(cfg, key, value, path)
            continue
        setting = BY_KEY.get(key)
        if setting is None:
            raise StartupError(f"{path}: unknown key '{name}' in [{section}]")
        if not _type_ok(setting, value):
            raise StartupError(
                f"{path}: [{section}] {name} must be {_type_name(setting)}, not {value!r}"[:300]
            )
        cfg.values[key] = value


def default_data_dir() -> str:
    if os.geteuid() == 0:
        return "/var/lib/minihub"
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(base, "minihub")


def finish(cfg: Config) -> None:
    """Fill settings whose default depends on others."""
    v = cfg.values
    if not v["hub.data_dir"]:
        v["hub.data_dir"] = default_data_dir()
    v["hub.data_dir"] = os.path.abspath(os.path.expanduser(v["hub.data_dir"]))
    if not v["hub.cookie_secret_file"]:
        v["hub.cookie_secret_file"] = os.path.join(v["hub.data_dir"], "cookie_secret")
    base = "/" + v["hub.base_url"].strip("/") + "/"
    v["hub.base_url"] = base.replace("//", "/")


def _validate(cfg: Config, where: str) -> None:
    v = cfg.values

    def bad(key: str, msg: str) -> StartupError:
        return StartupError(f"{where}: {key}: {msg}")

    for group in plugins.GROUPS:
        try:
            plugins.load(group, v[group.key])
        except StartupError as e:
            raise bad(group.label, str(e)) from None
    if not 0 < v["hub.port"] < 65536:
        raise bad("[hub] port", f"must be between 1 and 65535, not {v['hub.port']}")
    if v["spawner.server"] not in ("minihub", "jupyterhub-singleuser"):
        raise bad(
            "[spawner] server",
            f'must be "minihub" or "jupyterhub-singleuser", not {v["spawner.server"]!r}',
        )
    if v["hub.named_server_limit_per_user"] < 0:
        raise bad("[hub] named_server_limit_per_user", "must be 0 (no limit) or more")
    if v["hub.log_level"].upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise bad("[hub] log_level", "must be DEBUG, INFO, WARNING or ERROR")
    if bool(v["hub.ssl_cert"]) != bool(v["hub.ssl_key"]):
        raise bad("[hub] ssl_cert/ssl_key", "set both (or neither)")
    try:
        parse_networks(v["hub.trusted_proxies"])
    except ValueError as e:
        raise bad("[hub] trusted_proxies", str(e)) from None
    for key in (
        "auth.login_threads",
        "auth.login_concurrent_per_address",
        "auth.login_concurrent_per_name",
    ):
        if v[key] < 1:
            raise bad(f"[auth] {key.split('.')[1]}", f"must be at least 1, not {v[key]}")
    if v["spawner.mem_limit"] and parse_bytes(v["spawner.mem_limit"]) is None:
        raise bad(
            "[spawner] mem_limit", f"{v['spawner.mem_limit']!r} is not a size like 512M or 2G"
        )
    if not 1 << 10 <= v["spawner.kernel_ws_max_message"] <= 1 << 30:
        raise bad("[spawner] kernel_ws_max_message", "must be between 1024 and 1073741824 bytes")
    if not 1 << 10 <= v["spawner.kernel_ws_max_json"] <= 1 << 30:
        raise bad("[spawner] kernel_ws_max_json", "must be between 1024 and 1073741824")
    if not 0 <= v["spawner.kernel_ws_max_buffers"] <= 4096:
        raise bad("[spawner] kernel_ws_max_buffers", "must be between 0 and 4096")
    for s in SETTINGS:  # the checks a setting declares (a plugin's too)
        problem = s.check(v[s.key]) if s.check else None
        if problem:
            raise bad(f"[{s.section}] {s.name}", problem)
    for key in ("spawner.environment",):
        if not all(isinstance(x, str) for x in v[key].values()):
            raise bad("[spawner] environment", "values must be strings")
    custom = roles.custom_scopes(cfg.custom_scopes, where)
    known = {s.name for s in validate_services(cfg.services, where, custom)}
    for r in roles.validate_roles(cfg.roles, where, custom):
        for svc in r.services:
            if svc not in known:
                raise StartupError(
                    f"{where}: [[roles]] {r.name}: services: {svc!r} is not a [[services]] name"
                )
    roles.validate_groups(cfg.groups, where)
    if v["auth.manage_groups"] and cfg.groups:
        raise bad(
            "[auth] manage_groups",
            "the authenticator manages groups: remove [[groups]] (as JupyterHub's load_groups)",
        )


def parse_bytes(text: str) -> int | None:
    """'512M' → 536870912; None if it is not a size."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    num, unit = (t[:-1], t[-1]) if t and t[-1] in units else (t, "")
    try:
        n = float(num)
    except ValueError:
        return None
    return int(n * units[unit]) if n > 0 else None


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: list[str]) -> list[Network]:
    """[hub] trusted_proxies as networks; ValueError names a bad entry."""
    out: list[Network] = []
    for e in entries:
        try:
            out.append(ipaddress.ip_network(e.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{e!r} is not an address or CIDR range") from None
    return out


def find_config(explicit: str | None) -> Path | None:
    if explicit:
        return Path(explicit)
    here = Path("minihub.toml")
    return here if here.is_file() else None


def generate(settings: Sequence[Setting] = SETTINGS) -> str:
    """A commented minihub.toml with every key at its default."""
    lines = [
        "# minihub configuration. Every key is shown at its default, commented out.",
        "# Command-line flags override these values.",
        "",
    ]
    for section in SECTIONS:
        lines.append(f"[{section}]")
        for s in (x for x in settings if x.section == section):
            for h in _wrap(s.help):
                lines.append(f"# {h}")
            octal = s.name in ("umask", "home_mode")
            value = f"0o{s.default:03o}" if octal else _toml_value(s.default)
            lines.append(f"# {s.name} = {value}")
            lines.append("")
    lines += [
        "# Hub services, as JupyterHub's c.JupyterHub.services, for example:",
        "#   [[services]]",
        '#   name = "idle-culler"',
        '#   command = ["python3", "-m", "jupyterhub_idle_culler", "--timeout=3600"]',
        '#   scopes = ["list:users", "read:users:activity", "read:servers", "delete:servers"]',
        "",
        "# Groups, roles and custom scopes, as JupyterHub's load_groups, load_roles and",
        "# custom_scopes (docs/access-control.md), for example:",
        "#   [[groups]]",
        '#   name = "students"',
        '#   users = ["alice", "bob"]',
        "#   [[roles]]",
        '#   name = "teaching-assistant"',
        '#   scopes = ["access:servers!group=students", "read:users!group=students"]',
        '#   users = ["tom"]',
        '#   [custom_scopes."custom:grades:write"]',
        '#   description = "Write grades"',
        "",
    ]
    return "\n".join(lines)


def _wrap(text: str, width: int = 88) -> list[str]:
    out, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            out.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return out + ([line] if line else [])


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return (
            "{}"
            if not v
            else "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
        )
    return str(v)
