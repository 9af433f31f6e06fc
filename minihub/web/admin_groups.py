"""The admin page's groups: create and delete groups, add members from a pasted class list,
remove a member. Each action needs its own scope on the group (admin:groups to create,
delete:groups, groups), so a teaching assistant with `groups!group=x` manages x alone."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from ..access.http import allows, principal, require
from ..api.groups import MAX_MEMBERS, group_name
from ..auth import names
from ..body import read_form
from ..context import parts
from ..errors import BadRequest
from .admin import admin_page, require_admin, section

routes = web.RouteTableDef()
# Members listed per group on the admin page; a bigger group's are in the users table,
# filtered by the group and paged (a 3,333-member group made the page 1.4 MB)
MEMBERS_SHOWN = 50
SEPARATORS = re.compile(r"[\s,;]+")


def class_list(text: str) -> list[str]:
    """Names from a pasted list: one a line, or separated by commas, semicolons or spaces."""
    given = [names.normalise(n) for n in SEPARATORS.split(text) if n.strip()]
    if len(given) > MAX_MEMBERS:
        raise BadRequest(f"At most {MAX_MEMBERS} names at a time.")
    return list(dict.fromkeys(given))


@section("_admin_groups.html", 40)
async def groups_values(request: web.Request) -> dict[str, Any]:
    p = parts(request)
    seen = p.access.groups_visible(principal(request), "read:groups")
    groups = [g for _, g in sorted(p.access.groups.items()) if seen is None or g.name in seen]
    return {
        "groups": groups,
        "may_create_groups": allows(request, "admin:groups"),
        "member_limit": MEMBERS_SHOWN,
    }


def _group(request: web.Request, scope: str) -> str:
    require_admin(request)
    name = group_name(request.match_info["name"])
    require(request, scope, f"group {name[:64]!r}", group=name)
    parts(request).access.group(name)  # 404 if it is gone
    return name


@routes.post("/hub/admin/groups")
async def create(request: web.Request) -> web.Response:
    require_admin(request)
    require(request, "admin:groups")
    p = parts(request)
    name = (await read_form(request)).get("name", "").strip()
    if not name:
        return await admin_page(request, error="Give the group a name.", status=400)
    name = group_name(name)
    if name in p.access.groups:
        return await admin_page(request, error=f"Group {name} already exists.", status=409)
    await p.access.create_group(name)
    return await admin_page(request, f"Created group {name}.")


@routes.post("/hub/admin/groups/{name}/delete")
async def delete(request: web.Request) -> web.Response:
    name = _group(request, "delete:groups")
    await parts(request).access.delete_group(name)
    return await admin_page(request, f"Deleted group {name}.")


@routes.post("/hub/admin/groups/{name}/add")
async def add(request: web.Request) -> web.Response:
    """Add the pasted names that are hub users; name every one that is not."""
    name = _group(request, "groups")
    p = parts(request)
    wanted = class_list((await read_form(request)).get("users", ""))
    if not wanted:
        return await admin_page(request, error="Paste at least one username.", status=400)
    known = [n for n in wanted if await p.store.get_user(n) is not None]
    unknown = [n for n in wanted if n not in known]
    already = p.access.group(name).members
    new = [n for n in known if n not in already]
    await p.access.add_members(name, new)
    msg = f"Added {len(new)} to {name}: {', '.join(new)}." if new else ""
    if known and not new:
        msg = f"All of them are already in {name}."
    error = ""
    if unknown:
        error = f"Not added, not hub users (add them under Add users first): {', '.join(unknown)}"
    return await admin_page(request, msg, error, 200 if known else 400)


@routes.post("/hub/admin/groups/{name}/remove")
async def remove(request: web.Request) -> web.Response:
    name = _group(request, "groups")
    p = parts(request)
    member = names.normalise((await read_form(request)).get("user", ""))
    if member not in p.access.group(name).members:
        return await admin_page(request, error=f"{member[:64]} is not in {name}.", status=400)
    await p.access.remove_members(name, [member])
    return await admin_page(request, f"Removed {member} from {name}.")
