"""Who may do what: roles, groups and shares held in memory, decided by one `allows`.

Every change writes SQLite first (minihub.access.db), then memory, then tells listeners
(the proxy closes websockets a change no longer allows): a revocation applies to the very
next request. What a principal holds is computed from its roles, its groups' roles and the
shares made with it or its groups; a token holds at most that, checked on every use.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .. import scopes as S
from ..errors import BadRequest, Forbidden, NotFound
from ..store import Store
from . import db
from .db import GroupRow, ShareRow
from .roles import GroupSpec, Role, builtin_roles

log = logging.getLogger("minihub.access")
CACHE_MAX = 2048  # principals whose scopes are kept (LRU): bounded, not one per user
WATCH_EVERY = 1.0  # seconds between looks for changes made by another process (the CLI)


@dataclass(frozen=True)
class Principal:
    """A user or a service making a request; `token_scopes` None means all the owner's
    (a session), () a token that asked for no scopes (the "token" role's)."""

    kind: str  # "user" or "service"
    name: str
    token_scopes: tuple[str, ...] | None = None

    @property
    def is_service(self) -> bool:
        return self.kind == "service"


class Access:
    def __init__(
        self,
        store: Store,
        roles: Iterable[Role] = (),
        groups: Iterable[GroupSpec] = (),
        custom: dict[str, tuple[str, ...]] | None = None,
        admin_access: bool = False,
        services: dict[str, list[str]] | None = None,
    ) -> None:
        self.store = store
        self.custom = custom or {}
        self.roles: dict[str, Role] = builtin_roles(admin_access)
        for r in roles:  # a configured role replaces a built-in one's scopes, as in JupyterHub
            base = self.roles.get(r.name)
            if base is not None and not r.scopes:
                r.scopes = base.scopes
            self.roles[r.name] = r
        self._group_specs = list(groups)
        self.services: dict[str, list[str]] = dict(services or {})  # name -> its own scopes
        self.groups: dict[str, GroupRow] = {}
        self._user_groups: dict[str, frozenset[str]] = {}
        self._assigned: dict[str, set[str]] = {}  # role -> users, from the API (admin)
        self._shares: dict[int, ShareRow] = {}
        self._cache: dict[Principal, frozenset[S.Scope]] = {}
        self._members: dict[str, frozenset[str]] | None = None  # role -> users, when asked
        self.version = 0  # moves at every change: what was worked out from the state is stale
        self._listeners: list[Callable[[], None]] = []
        self._watch: asyncio.Task[None] | None = None

    # --- loading -------------------------------------------------------------------------
    def _warn_self_extending(self) -> None:
        """A role that may change a group's members and reaches that group's servers can put
        anyone in reach (docs/access-control.md): say so once, at start-up."""
        for r in self.roles.values():
            held = S.expand(r.scopes, custom=self.custom)
            for s in held:
                if (
                    s.name == "access:servers"
                    and s.kind == "group"
                    and (S.Scope("groups") in held or S.Scope("groups", "group", s.value) in held)
                ):
                    log.warning(
                        "role %s may change the members of group %s and open their servers: "
                        "it can put any user's server in its own reach",
                        r.name,
                        s.value,
                    )

    async def load(self) -> None:
        """Apply [[groups]] (created, members set as configured), then read everything."""
        self._warn_self_extending()
        await db.reset_config_roles(self.store, list(self.roles))
        self.groups = await db.load_groups(self.store)
        for spec in self._group_specs:
            await self._apply_group_spec(spec)
        await self.reload()

    async def _apply_group_spec(self, spec: GroupSpec) -> None:
        for name in spec.users:
            if await self.store.get_user(name) is None:
                await self.store.add_user(name)
        if spec.name not in self.groups:
            await db.create_group(self.store, spec.name, spec.properties)
        elif spec.properties:
            await db.set_group_properties(self.store, spec.name, spec.properties)
        current = self.groups.get(spec.name)
        now = current.members if current else set()
        await db.remove_members(self.store, spec.name, sorted(now - set(spec.users)))
        await db.add_members(self.store, spec.name, spec.users)

    async def reload(self) -> None:
        """Read groups, assignments and shares again (another process changed the file)."""
        self.groups = await db.load_groups(self.store)
        self._assigned = await db.load_role_users(self.store)
        self._shares = {s.id: s for s in await db.load_shares(self.store)}
        self._reindex()

    def start(self) -> None:
        """Follow changes other processes make to the file (`minihub user admin` while the
        hub runs): SQLite's data_version moves only for their commits, not the hub's own."""
        self._watch = asyncio.create_task(self._follow(), name="access-watch")

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)

    async def _follow(self) -> None:
        last = await self._data_version()
        while True:
            await asyncio.sleep(WATCH_EVERY)
            now = await self._data_version()
            if now != last:
                last = now
                await self.reload()

    async def _data_version(self) -> int:
        row = await self.store._one("PRAGMA data_version")
        return int(row[0])

    def _reindex(self) -> None:
        by_user: dict[str, set[str]] = {}
        for g in self.groups.values():
            for u in g.members:
                by_user.setdefault(u, set()).add(g.name)
        self._user_groups = {u: frozenset(gs) for u, gs in by_user.items()}
        self._changed()

    def _changed(self) -> None:
        self._cache.clear()
        self._members = None
        self.version += 1
        for fn in list(self._listeners):
            fn()

    def on_change(self, fn: Callable[[], None]) -> None:
        self._listeners.append(fn)

    # --- what a principal holds ----------------------------------------------------------
    def held(self, p: Principal) -> frozenset[S.Scope]:
        hit = self._cache.pop(p, None)
        if hit is not None:
            self._cache[p] = hit  # most recently used last: the first is evicted
            return hit
        own = self._own(p)
        texts = self.token_asks(p)
        if texts is not None and "inherit" not in texts:
            # every token may say whose it is (JupyterHub's identify scopes)
            asked = S.expand((*texts, *S.IDENTIFY[p.kind]), p.name, p.kind, custom=self.custom)
            own = S.intersect(asked, own, self._user_groups)
        if len(self._cache) >= CACHE_MAX:
            del self._cache[next(iter(self._cache))]
        self._cache[p] = own
        return own

    def token_asks(self, p: Principal) -> tuple[str, ...] | None:
        """A token's scopes; one that asked for none has the "token" role's (JupyterHub's
        default for new tokens; [[roles]] may redefine it). None: not a token."""
        if p.token_scopes is None or p.token_scopes:
            return p.token_scopes
        return tuple(self.roles["token"].scopes)

    def _own(self, p: Principal) -> frozenset[S.Scope]:
        raw: list[str] = []
        for role in self.roles_of(p):
            raw += self.roles[role].scopes
        if p.is_service:
            raw += self.services.get(p.name, [])
        own = S.expand(raw, p.name, p.kind, custom=self.custom)
        if not p.is_service:
            for share in self.shares_reaching(p.name):
                own |= S.expand(share.scopes, custom=self.custom)
        return own

    def roles_of(self, p: Principal) -> list[str]:
        """The roles a principal has: its own, and (users) every user's and its groups'."""
        if p.is_service:
            return [r.name for r in self.roles.values() if p.name in r.services]
        groups = self._user_groups.get(p.name, frozenset())
        out = ["user"]
        for r in self.roles.values():
            if r.name == "user":
                continue
            if (
                p.name in r.users
                or p.name in self._assigned.get(r.name, ())
                or groups.intersection(r.groups)
            ):
                out.append(r.name)
        return out

    def allows(
        self,
        p: Principal | None,
        scope: str,
        *,
        user: str | None = None,
        server: str | None = None,
        group: str | None = None,
        service: str | None = None,
    ) -> bool:
        """May `p` use `scope` on the target: a user (and one of their servers), a group,
        a service, or with no target the scope unfiltered (on everything)."""
        if p is None:
            return False
        held = self.held(p)
        if S.Scope(scope) in held:
            return True
        if user is not None:
            want = S.Scope(scope, "server", f"{user}/{server}") if server is not None else None
            if want is not None and want in held:
                return True
            if S.covers(held, S.Scope(scope, "user", user), self._user_groups):
                return True
        if group is not None and S.Scope(scope, "group", group) in held:
            return True
        return service is not None and S.Scope(scope, "service", service) in held

    def grants(self, p: Principal, want: S.Scope) -> bool:
        """Does `p` hold this (possibly filtered) scope: may it hand it on to a token?"""
        return S.covers(self.held(p), want, self._user_groups)

    def require(self, p: Principal | None, scope: str, what: str = "", **target: str) -> None:
        """Forbidden, naming the scope, unless `allows`."""
        if not self.allows(p, scope, **target):
            if p is None:
                raise Forbidden("Missing or invalid credentials: log in or send a token.")
            on = f" on {what}" if what else ""
            raise Forbidden(f"{p.name} may not do this{on} (needs the scope {scope}).")

    def visible(self, p: Principal | None, scope: str) -> set[str] | None:
        """The users `scope` is held for: None means every user."""
        if p is None:
            return set()
        held = self.held(p)
        if S.Scope(scope) in held:
            return None
        out: set[str] = set()
        for s in held:
            if s.name != scope or not s.kind:
                continue
            if s.kind in ("user", "server"):
                out.add(s.value.split("/", 1)[0])
            elif s.kind == "group" and s.value in self.groups:
                out |= self.groups[s.value].members
        return out

    def groups_visible(self, p: Principal | None, scope: str) -> set[str] | None:
        if p is None:
            return set()
        held = self.held(p)
        if S.Scope(scope) in held:
            return None
        return {s.value for s in held if s.name == scope and s.kind == "group"}

    def is_admin(self, name: str) -> bool:
        return "admin" in self.roles_of(Principal("user", name))

    def role_members(self, role: str) -> set[str]:
        """Every user who has `role` (configured, assigned, or through a group): one pass,
        for a listing that filters on it (the admin page's "admins only")."""
        r = self.roles.get(role)
        out = set(self._assigned.get(role, ()))
        if r is not None:
            out |= set(r.users)
            for g in r.groups:
                if g in self.groups:
                    out |= self.groups[g].members
        return out

    def user_roles(self, name: str) -> list[str]:
        """As sorted(roles_of(the user)), from each role's members worked out once per change
        (a listing asks this for every user it shows)."""
        if self._members is None:
            self._members = {r: frozenset(self.role_members(r)) for r in self.roles if r != "user"}
        return sorted(["user", *(r for r, m in self._members.items() if name in m)])

    def groups_of(self, name: str) -> list[str]:
        return sorted(self._user_groups.get(name, ()))

    def user(self, name: str) -> Principal:
        return Principal("user", name)

    # --- changes: users ------------------------------------------------------------------
    async def set_admin(self, name: str, admin: bool) -> None:
        """Assign or take away the admin role (as the REST API's and admin page's flag)."""
        if admin:
            await db.assign_role(self.store, "admin", name)
            self._assigned.setdefault("admin", set()).add(name)
        else:
            await db.unassign_role(self.store, "admin", name)
            self._assigned.get("admin", set()).discard(name)
        self._changed()

    def renamed(self, old: str, new: str) -> None:
        """After Store.rename_user: the same rows, a new name in memory."""
        for members in self._assigned.values():
            if old in members:
                members.discard(old)
                members.add(new)
        for g in self.groups.values():
            if old in g.members:
                g.members.discard(old)
                g.members.add(new)
        for share in self._shares.values():
            if share.owner == old:
                share.owner = new
                share.scopes = db.on_server(share.scopes, new, share.server)
            share.user = new if share.user == old else share.user
        self._reindex()

    def forgotten(self, name: str) -> None:
        """After Store.delete_user (rows went by cascade)."""
        for members in self._assigned.values():
            members.discard(name)
        for g in self.groups.values():
            g.members.discard(name)
        self._shares = {i: s for i, s in self._shares.items() if name not in (s.owner, s.user)}
        self._reindex()

    # --- changes: groups -----------------------------------------------------------------
    def group(self, name: str) -> GroupRow:
        g = self.groups.get(name)
        if g is None:
            raise NotFound(f"No such group: {name[:64]!r}")
        return g

    async def create_group(
        self, name: str, properties: dict[str, Any] | None = None, users: Iterable[str] = ()
    ) -> GroupRow:
        if name in self.groups:
            raise BadRequest(f"Group {name[:64]} already exists", 409)
        gid = await db.create_group(self.store, name, properties or {})
        self.groups[name] = GroupRow(gid, name, dict(properties or {}))
        await self.add_members(name, list(users))
        return self.groups[name]

    async def delete_group(self, name: str) -> None:
        self.group(name)
        await db.delete_group(self.store, name)
        del self.groups[name]
        self._shares = {i: s for i, s in self._shares.items() if s.group != name}
        self._reindex()

    async def add_members(self, group: str, users: list[str]) -> None:
        g = self.group(group)
        await db.add_members(self.store, group, users)
        g.members |= set(users)
        self._reindex()

    async def remove_members(self, group: str, users: list[str]) -> None:
        g = self.group(group)
        await db.remove_members(self.store, group, users)
        g.members -= set(users)
        self._reindex()

    async def set_properties(self, group: str, properties: dict[str, Any]) -> None:
        g = self.group(group)
        await db.set_group_properties(self.store, group, properties)
        g.properties = dict(properties)

    async def set_user_groups(self, name: str, wanted: Iterable[str]) -> None:
        """Make `name` a member of exactly `wanted` (an authenticator's manage_groups):
        groups that do not exist yet are created."""
        want = set(wanted)
        have = set(self._user_groups.get(name, ()))
        for g in sorted(want - have):
            if g not in self.groups:
                await self.create_group(g)
            await db.add_members(self.store, g, [name])
            self.groups[g].members.add(name)
        for g in sorted(have - want):
            await db.remove_members(self.store, g, [name])
            self.groups[g].members.discard(name)
        if want != have:
            self._reindex()

    # --- changes: shares -----------------------------------------------------------------
    def shares_reaching(self, user: str) -> list[ShareRow]:
        """Shares made with `user` or with a group they are in."""
        groups = self._user_groups.get(user, frozenset())
        return [
            s for s in self._shares.values() if s.user == user or (s.group and s.group in groups)
        ]

    def shares_of(self, owner: str, server: str | None = None) -> list[ShareRow]:
        return [
            s
            for s in self._shares.values()
            if s.owner == owner and (server is None or s.server == server)
        ]

    def shares_with(self, user: str | None = None, group: str | None = None) -> list[ShareRow]:
        return [
            s
            for s in self._shares.values()
            if (user is not None and s.user == user) or (group is not None and s.group == group)
        ]

    async def share(
        self,
        owner: str,
        server: str,
        scopes: list[str],
        user: str | None = None,
        group: str | None = None,
    ) -> ShareRow:
        row = await db.upsert_share(self.store, owner, server, user, group, scopes)
        self._shares = {
            i: s
            for i, s in self._shares.items()
            if not (s.owner == owner and s.server == server and s.user == user and s.group == group)
        }
        self._shares[row.id] = row
        self._changed()
        return row

    async def unshare(self, share_id: int) -> None:
        await db.delete_share(self.store, share_id)
        self._shares.pop(share_id, None)
        self._changed()

    async def unshare_server(self, owner: str, server: str) -> None:
        """A removed server's shares and share codes go with it."""
        await db.delete_share_codes(self.store, owner, server)
        for s in self.shares_of(owner, server):
            await db.delete_share(self.store, s.id)
            self._shares.pop(s.id, None)
        self._changed()
