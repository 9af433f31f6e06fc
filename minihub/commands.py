"""Operator commands (`minihub user ...`, `minihub token NAME`), run against the SQLite store,
and `minihub env ...`, run against the user environment (userenv.py).

They work while the hub runs: SQLite in WAL mode lets both write.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

from . import userenv, users
from .access import db as access_db
from .auth.names import normalise
from .auth.signups import Signups
from .config import Config
from .errors import HubError, StartupError
from .plugins import make_authenticator
from .store import Store


async def _store(cfg: Config) -> Store:
    try:
        cfg.data_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
    except OSError as e:
        raise StartupError(f"{cfg.data_dir}: cannot create the data dir: {e.strerror}") from None
    return await Store.open(cfg.data_dir / "minihub.sqlite")


@contextlib.asynccontextmanager
async def _opened(cfg: Config) -> AsyncIterator[Store]:
    """The hub's store for one command, closed after it (its thread would keep the CLI up)."""
    store = await _store(cfg)
    try:
        yield store
    finally:
        await store.close()


async def user_add(cfg: Config, args: argparse.Namespace) -> int:
    async with _opened(cfg) as store:
        auth = make_authenticator(cfg, store)
        pw = read_password() if auth.kind == "native" else None
        user = await users.create(store, auth, args.name, args.admin, pw)
        print(f"added {user.name}{' (admin)' if args.admin else ''}")
    return 0


async def user_import(cfg: Config, args: argparse.Namespace) -> int:
    async with _opened(cfg) as store:
        auth = make_authenticator(cfg, store)
        try:
            lines = Path(args.file).read_text().splitlines()
        except OSError as e:
            raise StartupError(f"{args.file}: cannot read: {e.strerror}") from None
        added = failed = 0
        for line in lines:
            name = line.split(",")[0].strip()
            if not name or name.startswith("#"):
                continue
            try:
                await users.create(store, auth, name)
                added += 1
            except HubError as e:
                failed += 1
                print(f"{name[:64]}: {e.message}")
        print(f"added {added} users, {failed} skipped")
    return 0 if not failed else 1


async def user_list(cfg: Config, args: argparse.Namespace) -> int:
    async with _opened(cfg) as store:
        running = {row.user_id for row in await store.list_servers()}
        admins = (await access_db.load_role_users(store)).get("admin", set())
        for u in await store.list_users():
            flags = [
                f for f, on in (("admin", u.name in admins), ("running", u.id in running)) if on
            ]
            last = (
                time.strftime("%Y-%m-%d %H:%M", time.gmtime(u.last_activity))
                if u.last_activity
                else "never"
            )
            print(f"{u.name:24} {','.join(flags):16} last active {last}")
    return 0


async def user_remove(cfg: Config, args: argparse.Namespace) -> int:
    async with _opened(cfg) as store:
        user = await users.get(store, args.name)
        if any(r.user_id == user.id for r in await store.list_servers()):
            raise HubError(
                f"{user.name}'s server is running: stop it first "
                "(admin page or DELETE /hub/api/users/{name}/server)."
            )
        await store.delete_user(user.id)
        print(f"removed {user.name}")
    return 0


async def user_set_password(cfg: Config, args: argparse.Namespace) -> int:
    async with _opened(cfg) as store:
        user = await users.get(store, args.name)
        await users.set_password(store, make_authenticator(cfg, store), user, read_password())
        print(f"password of {user.name} changed")
    return 0


async def user_admin(cfg: Config, args: argparse.Namespace) -> int:
    async with _opened(cfg) as store:
        user = await users.get(store, args.name)
        if args.remove:
            await access_db.unassign_role(store, "admin", user.name)
        else:
            await access_db.assign_role(store, "admin", user.name)
        print(f"{user.name} is {'no longer ' if args.remove else ''}an admin")
    return 0


async def user_requests(cfg: Config, args: argparse.Namespace) -> int:
    async with _opened(cfg) as store:
        for r in await Signups(store).list(limit=-1):
            asked = time.strftime("%Y-%m-%d %H:%M", time.gmtime(r.requested))
            print(f"{r.name:24} {r.email:32} asked {asked}")
    return 0


async def user_approve(cfg: Config, args: argparse.Namespace) -> int:
    async with _opened(cfg) as store:
        user = await Signups(store).approve(args.name)
        print(f"approved {user.name}")
    return 0


async def user_refuse(cfg: Config, args: argparse.Namespace) -> int:
    async with _opened(cfg) as store:
        if not await Signups(store).remove(normalise(args.name)):
            raise HubError(f"no sign-up request from {normalise(args.name)[:64]!r}")
        print(f"refused {normalise(args.name)}")
    return 0


async def token(cfg: Config, args: argparse.Namespace) -> int:
    async with _opened(cfg) as store:
        user = await store.get_user(normalise(args.name))
        if user is None:
            raise HubError(f"No such user: {args.name[:64]!r} (add it with minihub user add)")
        secret, _ = await users.new_token(store, user, args.note)
        print(secret)
    return 0


def _user_env(cfg: Config, args: argparse.Namespace) -> Path:
    path = getattr(args, "path", None) or str(cfg.get("spawner.user_env"))
    if not path:
        raise HubError("[spawner] user_env is empty: kernels run in the hub's own python")
    return Path(path)


async def env_create(cfg: Config, args: argparse.Namespace) -> int:
    env = _user_env(cfg, args)
    done = await asyncio.to_thread(userenv.create, env)
    print(f"{env}: " + ("; ".join(done) if done else "up to date"))
    return 0


async def env_install(cfg: Config, args: argparse.Namespace) -> int:
    env = _user_env(cfg, args)
    if not os.access(userenv.site_packages(env), os.W_OK):
        raise HubError(f"{env}: not writable; run minihub env install as root")
    before = userenv.running(env)
    await asyncio.to_thread(userenv.pip_install, env, list(args.packages))
    still = {k.pid for k in userenv.running(env)}
    print(f"installed into {env}: {' '.join(args.packages)}")
    print_restarts([k for k in before if k.pid in still])
    return 0


def print_restarts(kernels: list[userenv.Kernel]) -> None:
    """Kernels that were running before the install may hold the old modules (or none)."""
    by_user: dict[str, list[int]] = {}
    zygotes = sorted({k.user for k in kernels if k.zygote})
    for k in kernels:
        if not k.zygote:
            by_user.setdefault(k.user, []).append(k.pid)
    if not by_user:
        print("no kernel was running: every new kernel sees the change")
    for user, pids in sorted(by_user.items()):
        print(f"restart to see it: {user}: {len(pids)} kernel(s), pid {', '.join(map(str, pids))}")
    if zygotes:
        print(
            "servers whose kernel zygote keeps the old ipykernel and IPython (restart them if "
            f"you upgraded those): {', '.join(zygotes)}"
        )


async def env_list(cfg: Config, args: argparse.Namespace) -> int:
    env = _user_env(cfg, args)
    pkgs = await asyncio.to_thread(userenv.packages, env)
    print(f"{env} ({len(pkgs)} packages)")
    for name, version in pkgs:
        print(f"  {name} {version}")
    kernels = userenv.running(env)
    users_ = sorted({k.user for k in kernels if not k.zygote})
    print(f"running kernels: {sum(not k.zygote for k in kernels)} ({', '.join(users_) or 'none'})")
    return 0


def read_password(prompt: str = "Password: ") -> str:
    """From the terminal, typed twice; from a pipe, its first line."""
    if sys.stdin.isatty():
        pw = getpass.getpass(prompt)
        if pw != getpass.getpass("Again: "):
            raise HubError("The passwords differ.")
        return pw
    line = sys.stdin.readline()
    return line.rstrip("\n")


Command = Callable[[Config, argparse.Namespace], Coroutine[Any, Any, int]]
# (command, action) as cli.build_parser names them -> what runs it
COMMANDS: dict[tuple[str, str | None], Command] = {
    ("user", "add"): user_add,
    ("user", "list"): user_list,
    ("user", "remove"): user_remove,
    ("user", "set-password"): user_set_password,
    ("user", "admin"): user_admin,
    ("user", "import"): user_import,
    ("user", "requests"): user_requests,
    ("user", "approve"): user_approve,
    ("user", "refuse"): user_refuse,
    ("token", None): token,
    ("env", "create"): env_create,
    ("env", "install"): env_install,
    ("env", "list"): env_list,
}
