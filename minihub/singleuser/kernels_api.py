"""HTTP handlers for api/kernels, api/kernelspecs and kernelspec resources.

Shapes follow jupyter_server; the work is in minihub.kernels.
"""

from __future__ import annotations

import glob
import os
from typing import Any

from aiohttp import web

from ..errors import BadRequest, NotFound
from .http import BRIDGE, KERNELS, api_url, json_body, reply

KERNEL = r"{kernel_id:[\w-]+}"


async def list_kernels(request: web.Request) -> web.Response:
    return reply(request.app[KERNELS].models())


async def start_kernel(request: web.Request) -> web.Response:
    body = await json_body(request) or {}
    name, path = body.get("name") or None, body.get("path") or None
    if not isinstance(name, str | None) or not isinstance(path, str | None):
        raise BadRequest("name and path must be strings")
    kernel = await request.app[KERNELS].start(name, check_kernel_path(path))
    return reply(kernel.model(), 201, api_url(request, "api/kernels", kernel.id))


def check_kernel_path(path: str | None) -> str | None:
    """A notebook path a kernel is started for: it becomes the kernel's cwd and environment,
    where a NUL byte is refused by the OS (a 500 from deep in the kernel launch)."""
    if path is not None and "\x00" in path:
        raise BadRequest("A path cannot contain a NUL character")
    return path


async def get_kernel(request: web.Request) -> web.Response:
    return reply(request.app[KERNELS].get(request.match_info["kernel_id"]).model())


async def delete_kernel(request: web.Request) -> web.Response:
    await request.app[KERNELS].shutdown(request.match_info["kernel_id"])
    return web.Response(status=204)


async def interrupt_kernel(request: web.Request) -> web.Response:
    await request.app[KERNELS].get(request.match_info["kernel_id"]).interrupt()
    return web.Response(status=204)


async def restart_kernel(request: web.Request) -> web.Response:
    kernel = request.app[KERNELS].get(request.match_info["kernel_id"])
    await kernel.restart()
    return reply(kernel.model())


async def kernel_channels(request: web.Request) -> web.StreamResponse:
    return await request.app[BRIDGE].handle(request)


def _spec_model(request: web.Request, name: str, info: dict[str, Any]) -> dict[str, Any]:
    resource_dir = info.get("resource_dir", "")
    resources: dict[str, str] = {}
    for fname in ("kernel.js", "kernel.css"):
        if os.path.exists(os.path.join(resource_dir, fname)):
            resources[fname] = api_url(request, "kernelspecs", name, fname)
    for logo in sorted(glob.glob(os.path.join(glob.escape(resource_dir), "logo-*"))):
        fname = os.path.basename(logo)
        resources[os.path.splitext(fname)[0]] = api_url(request, "kernelspecs", name, fname)
    return {"name": name, "spec": info.get("spec", {}), "resources": resources}


async def list_kernelspecs(request: web.Request) -> web.Response:
    kernels = request.app[KERNELS]
    specs = await kernels.all_specs()
    models = {name: _spec_model(request, name, info) for name, info in specs.items()}
    return reply({"default": await kernels.default_name(), "kernelspecs": models})


async def get_kernelspec(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    specs = await request.app[KERNELS].all_specs()
    if name not in specs:
        raise NotFound(f"Kernel spec {name} not found")
    return reply(_spec_model(request, name, specs[name]))


async def kernelspec_resource(request: web.Request) -> web.StreamResponse:
    name, fname = request.match_info["name"], request.match_info["file"]
    specs = await request.app[KERNELS].all_specs()
    if name not in specs:
        raise NotFound(f"Kernel spec {name} not found")
    root = os.path.realpath(specs[name]["resource_dir"])
    target = os.path.realpath(os.path.join(root, fname))
    if not target.startswith(root + os.sep) or not os.path.isfile(target):
        raise NotFound(f"Kernel spec resource not found: {name}/{fname}")
    # The user's own kernelspecs (~/.local/share/jupyter/kernels) are theirs to write: an
    # HTML or SVG file there must not run as a page of the hub's origin for a visitor.
    headers = {"Content-Security-Policy": "sandbox", "X-Content-Type-Options": "nosniff"}
    return web.FileResponse(target, headers=headers)


def setup(app: web.Application, base_url: str) -> None:
    api = base_url + "api/kernels"
    app.router.add_get(api, list_kernels)
    app.router.add_post(api, start_kernel)
    app.router.add_get(f"{api}/{KERNEL}", get_kernel)
    app.router.add_delete(f"{api}/{KERNEL}", delete_kernel)
    app.router.add_post(f"{api}/{KERNEL}/interrupt", interrupt_kernel)
    app.router.add_post(f"{api}/{KERNEL}/restart", restart_kernel)
    app.router.add_get(f"{api}/{KERNEL}/channels", kernel_channels)
    app.router.add_get(base_url + "api/kernelspecs", list_kernelspecs)
    app.router.add_get(base_url + r"api/kernelspecs/{name:[\w.-]+}", get_kernelspec)
    app.router.add_get(base_url + r"kernelspecs/{name:[\w.-]+}/{file:[^/]+}", kernelspec_resource)
