"""HTTP handlers for api/contents and its checkpoints, with jupyter_server's paths and models.

The work itself is in contents.py and checkpoints.py; these only parse and reply.
"""

from __future__ import annotations

from aiohttp import web

from ..errors import BadRequest
from .contents import new_notebook
from .http import CHECKPOINTS, CONTENTS, api_url, json_body, reply, run, text_field

PATH = r"{path:(?:/[^/]+)*/?}"


def _path(request: web.Request) -> str:
    return request.match_info.get("path", "").strip("/")


def _location(request: web.Request, path: str) -> str:
    return api_url(request, "api/contents", path)


async def get_contents(request: web.Request) -> web.Response:
    q = request.query
    kind = q.get("type") or None
    fmt = q.get("format") or None
    if kind not in (None, "directory", "file", "notebook"):
        raise BadRequest(f"Type {kind!r} is invalid")
    if fmt not in (None, "text", "base64"):
        raise BadRequest(f"Format {fmt!r} is invalid")
    content = q.get("content", "1") not in ("0", "false")
    model = await run(request.app[CONTENTS].get, _path(request), content, kind, fmt)
    return reply(model)


async def patch_contents(request: web.Request) -> web.Response:
    body = await json_body(request) or {}
    new_path = body.get("path")
    if not isinstance(new_path, str) or not new_path.strip("/"):
        raise BadRequest("PATCH needs a JSON body with the new path")
    old_path = _path(request)
    model = await run(request.app[CONTENTS].rename, old_path, new_path)
    await run(request.app[CHECKPOINTS].rename_all, old_path, new_path.strip("/"))
    return reply(model, location=_location(request, model["path"]))


async def post_contents(request: web.Request) -> web.Response:
    """POST to a directory: copy a file into it (copy_from) or create an untitled one."""
    path = _path(request)
    body = await json_body(request) or {}
    cm = request.app[CONTENTS]
    copy_from = text_field(body, "copy_from")
    if copy_from:
        model = await run(cm.copy, copy_from, path)
    else:
        kind, ext = text_field(body, "type"), text_field(body, "ext")
        model = await run(cm.new_untitled, path, kind, ext)
    return reply(model, 201, _location(request, model["path"]))


async def put_contents(request: web.Request) -> web.Response:
    """PUT a model to save or upload (also chunked); with no body, create an empty file."""
    path = _path(request)
    body = await json_body(request)
    cm = request.app[CONTENTS]
    if body and body.get("copy_from"):
        raise BadRequest("Cannot copy with PUT, only POST")
    if not body:
        kind = "notebook" if path.endswith(".ipynb") else "file"
        body = {"type": kind, "format": "text", "content": "" if kind == "file" else new_notebook()}
    model, created = await run(cm.save, body, path)
    return reply(model, 201 if created else 200, _location(request, model["path"]))


async def delete_contents(request: web.Request) -> web.Response:
    path = _path(request)
    await run(request.app[CONTENTS].delete, path)
    await run(request.app[CHECKPOINTS].delete_all, path)
    return web.Response(status=204)


async def list_checkpoints(request: web.Request) -> web.Response:
    return reply(await run(request.app[CHECKPOINTS].list, _path(request)))


async def create_checkpoint(request: web.Request) -> web.Response:
    path = _path(request)
    model = await run(request.app[CHECKPOINTS].create, path)
    where = api_url(request, "api/contents", path, "checkpoints", model["id"])
    return reply(model, 201, where)


async def restore_checkpoint(request: web.Request) -> web.Response:
    await run(request.app[CHECKPOINTS].restore, _path(request), request.match_info["checkpoint_id"])
    return web.Response(status=204)


async def delete_checkpoint(request: web.Request) -> web.Response:
    await run(request.app[CHECKPOINTS].delete, _path(request), request.match_info["checkpoint_id"])
    return web.Response(status=204)


def setup(app: web.Application, base_url: str) -> None:
    prefix = base_url + "api/contents"
    cp = prefix + PATH + "/checkpoints"
    app.router.add_get(cp, list_checkpoints)
    app.router.add_post(cp, create_checkpoint)
    app.router.add_post(cp + r"/{checkpoint_id:[\w-]+}", restore_checkpoint)
    app.router.add_delete(cp + r"/{checkpoint_id:[\w-]+}", delete_checkpoint)
    app.router.add_get(prefix + PATH, get_contents)
    app.router.add_patch(prefix + PATH, patch_contents)
    app.router.add_post(prefix + PATH, post_contents)
    app.router.add_put(prefix + PATH, put_contents)
    app.router.add_delete(prefix + PATH, delete_contents)
