"""api/sessions: which kernel a notebook (or console, file) path is using, as jupyter_server.

Sessions live in memory and vanish with their kernel; deleting a session shuts its kernel down.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..errors import BadRequest, NotFound
from ..kernels.manager import KernelManager
from .http import api_url, json_body, reply, text_field
from .kernels_api import check_kernel_path

SESSION = r"{session_id:[\w-]+}"


@dataclass
class Session:
    id: str
    path: str
    name: str
    type: str
    kernel_id: str


class SessionManager:
    def __init__(self, kernels: KernelManager) -> None:
        self.kernels = kernels
        self.sessions: dict[str, Session] = {}
        kernels.on_removed.append(self._kernel_gone)

    def _kernel_gone(self, kernel_id: str) -> None:
        for sid in [s.id for s in self.sessions.values() if s.kernel_id == kernel_id]:
            del self.sessions[sid]

    def model(self, s: Session) -> dict[str, Any]:
        return {
            "id": s.id,
            "path": s.path,
            "name": s.name,
            "type": s.type,
            "kernel": self.kernels.get(s.kernel_id).model(),
            "notebook": {"path": s.path, "name": s.name},
        }

    def get(self, session_id: str) -> Session:
        s = self.sessions.get(session_id)
        if s is None:
            raise NotFound(f"Session not found: {session_id}")
        return s

    def by_path(self, path: str) -> Session | None:
        return next((s for s in self.sessions.values() if s.path == path), None)

    async def _kernel_for(self, spec: dict[str, Any], path: str) -> str:
        kernel_id, name = text_field(spec, "id"), text_field(spec, "name")
        if kernel_id:
            if kernel_id not in self.kernels.kernels:
                raise BadRequest(f"No such kernel: {kernel_id[:100]}")
            return kernel_id
        kernel = await self.kernels.start(name or None, check_kernel_path(path))
        return kernel.id

    async def create(self, body: dict[str, Any]) -> Session:
        path = _path_of(body)
        if path is None:
            raise BadRequest("Missing field in JSON data: path")
        spec = _kernel_spec(body)
        name, kind = text_field(body, "name"), text_field(body, "type")
        existing = self.by_path(path)
        if existing is not None:
            return existing
        kernel_id = await self._kernel_for(spec or {}, path)
        s = Session(str(uuid.uuid4()), path, name, kind, kernel_id)
        self.sessions[s.id] = s
        return s

    async def update(self, session_id: str, body: dict[str, Any]) -> Session:
        s = self.get(session_id)
        old_kernel = s.kernel_id
        # Every field is checked before any is applied: a refused PATCH changes nothing.
        path, spec = _path_of(body), _kernel_spec(body)
        texts = {key: text_field(body, key) for key in ("name", "type") if key in body}
        kernel_id = old_kernel
        if spec and (spec.get("id") or spec.get("name")):  # may refuse: nothing changed yet
            kernel_id = await self._kernel_for(spec, s.path if path is None else path)
        if path is not None:
            s.path = path
        for key, value in texts.items():
            setattr(s, key, value)
        s.kernel_id = kernel_id
        if s.kernel_id != old_kernel and old_kernel in self.kernels.kernels:
            # As jupyter_server: the session's previous kernel is shut down.
            await self.kernels.shutdown(old_kernel)
        return s

    async def delete(self, session_id: str) -> None:
        s = self.get(session_id)
        del self.sessions[session_id]
        if s.kernel_id in self.kernels.kernels:
            await self.kernels.shutdown(s.kernel_id)


def _path_of(body: dict[str, Any]) -> str | None:
    notebook = body.get("notebook")
    if isinstance(notebook, dict) and notebook.get("path"):
        return text_field(notebook, "path")
    return text_field(body, "path") or None


def _kernel_spec(body: dict[str, Any]) -> dict[str, Any] | None:
    spec = body.get("kernel")
    if spec is not None and not isinstance(spec, dict):
        raise BadRequest('kernel must be an object such as {"name": "python3"}')
    return spec


SESSIONS = web.AppKey("sessions", SessionManager)


async def list_sessions(request: web.Request) -> web.Response:
    sm = request.app[SESSIONS]
    return reply([sm.model(s) for s in list(sm.sessions.values())])


async def create_session(request: web.Request) -> web.Response:
    body = await json_body(request)
    if body is None:
        raise BadRequest("No JSON data provided")
    sm = request.app[SESSIONS]
    s = await sm.create(body)
    return reply(sm.model(s), 201, api_url(request, "api/sessions", s.id))


async def get_session(request: web.Request) -> web.Response:
    sm = request.app[SESSIONS]
    return reply(sm.model(sm.get(request.match_info["session_id"])))


async def patch_session(request: web.Request) -> web.Response:
    body = await json_body(request)
    if body is None:
        raise BadRequest("No JSON data provided")
    sm = request.app[SESSIONS]
    return reply(sm.model(await sm.update(request.match_info["session_id"], body)))


async def delete_session(request: web.Request) -> web.Response:
    await request.app[SESSIONS].delete(request.match_info["session_id"])
    return web.Response(status=204)


def setup(app: web.Application, base_url: str, kernels: KernelManager) -> None:
    app[SESSIONS] = SessionManager(kernels)
    api = base_url + "api/sessions"
    app.router.add_get(api, list_sessions)
    app.router.add_post(api, create_session)
    app.router.add_get(f"{api}/{SESSION}", get_session)
    app.router.add_patch(f"{api}/{SESSION}", patch_session)
    app.router.add_delete(f"{api}/{SESSION}", delete_session)
