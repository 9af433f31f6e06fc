"""The Kubernetes API as the spawner needs it, on lightkube's async client: creating and
deleting a server's objects, one cache of this hub's pods (one LIST, then a WATCH: no
request per pod to poll or re-adopt), a pod's events as they come, and its log.

Imported only when [spawner] class = "kubernetes" is chosen, so other hubs never load the
client (lightkube, httpx2, the models: several MiB).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.config.kubeconfig import SERVICE_ACCOUNT
from lightkube.core.exceptions import ConfigError
from lightkube.resources.core_v1 import Event, PersistentVolumeClaim, Pod, Secret, Service

from ...errors import StartupError
from .podspec import CONTAINER, LABEL_HUB

log = logging.getLogger("minihub.spawner.kubernetes")
# The HTTP client logs every request (each watch too) at INFO: not the hub log's business.
logging.getLogger("httpx2").setLevel(logging.WARNING)
logging.getLogger("httpx").setLevel(logging.WARNING)

_RESYNC_MIN, _RESYNC_MAX = 0.5, 30.0  # backoff of a broken watch
KINDS: dict[str, Any] = {
    "Pod": Pod,
    "Secret": Secret,
    "PersistentVolumeClaim": PersistentVolumeClaim,
    "Service": Service,
}


@dataclass(frozen=True)
class PodInfo:
    """What the spawner needs of a pod, read off its last known version."""

    name: str
    uid: str
    phase: str
    ip: str
    deleting: bool
    port: int  # the port the hub gave it (annotation), 0 if none
    waiting: tuple[str, str] | None  # the server container's (reason, message)
    exit_code: int | None  # the server container's, once it terminated
    exit_reason: str  # e.g. OOMKilled, Error, Completed
    exit_message: str
    unschedulable: str  # the scheduler's message while no node can take it
    running: bool  # the server container runs

    @classmethod
    def of(cls, pod: Any) -> PodInfo:
        meta, status = pod.metadata, pod.status
        waiting = terminated = None
        running = False
        for cs in (status.containerStatuses if status else None) or []:
            if cs.name != CONTAINER:
                continue
            state = cs.state
            if state and state.waiting:
                waiting = (state.waiting.reason or "", state.waiting.message or "")
            if state and state.terminated:
                terminated = state.terminated
            running = bool(state and state.running)
        unschedulable = ""
        for cond in (status.conditions if status else None) or []:
            if cond.type == "PodScheduled" and cond.status == "False":
                unschedulable = cond.message or cond.reason or "no node can take it"
        port = (meta.annotations or {}).get("minihub.org/port", "0")
        return cls(
            name=meta.name,
            uid=meta.uid or "",
            phase=(status.phase if status else None) or "Pending",
            ip=(status.podIP if status else None) or "",
            deleting=meta.deletionTimestamp is not None,
            port=int(port) if port.isdigit() else 0,
            waiting=waiting,
            exit_code=terminated.exitCode if terminated else None,
            exit_reason=(terminated.reason or "") if terminated else "",
            exit_message=(terminated.message or "") if terminated else "",
            unschedulable=unschedulable,
            running=running,
        )


async def _infos(listing: Any) -> AsyncIterator[PodInfo]:
    async for pod in listing:
        yield PodInfo.of(pod)


def load_config(kubeconfig: str, context: str) -> Any:
    """The API server and credentials: a kubeconfig path, else in-cluster, else $KUBECONFIG
    or ~/.kube/config. StartupError naming [kubernetes] kubeconfig when none is usable."""
    try:
        if kubeconfig:
            conf = KubeConfig.from_file(kubeconfig)
        else:
            conf = KubeConfig.from_env()
        return conf.get(context or None)
    except (ConfigError, OSError, ValueError, KeyError) as e:
        where = kubeconfig or "in-cluster / $KUBECONFIG / ~/.kube/config"
        raise StartupError(
            f"[kubernetes] kubeconfig: no usable Kubernetes configuration ({where}): {e}"
        ) from None


def default_namespace(config: Any) -> str:
    """The hub's own namespace in a pod, else the context's, else 'default'."""
    try:
        with open(os.path.join(SERVICE_ACCOUNT, "namespace"), encoding="utf-8") as f:
            return f.read().strip() or "default"
    except OSError:
        return str(getattr(config, "namespace", "") or "default")


class Cluster:
    """One client and one pod cache for the hub's pods in one namespace."""

    def __init__(self, config: Any, namespace: str, hub: str) -> None:
        self.namespace, self.hub = namespace, hub
        self.client = AsyncClient(config, namespace=namespace, field_manager="minihub")
        self.pods: dict[str, PodInfo] = {}
        self.synced = asyncio.Event()
        self.changed = asyncio.Condition()
        self.on_change: Callable[[PodInfo | None, PodInfo | None], None] | None = None
        self._watcher: asyncio.Task[None] | None = None

    # -- the pod cache ------------------------------------------------------------------------
    def start_watch(self) -> None:
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch(), name="kubernetes-pod-watch")

    async def wait_synced(self, timeout: float) -> bool:
        self.start_watch()
        try:
            await asyncio.wait_for(self.synced.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def _watch(self) -> None:
        delay = _RESYNC_MIN
        while True:
            try:
                await self._list_then_watch()
                delay = _RESYNC_MIN
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - a broken watch is retried, never fatal
                self.synced.clear()
                log.warning(
                    "watching pods failed (%s: %s); again in %.1fs", type(e).__name__, e, delay
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RESYNC_MAX)

    async def _list_then_watch(self) -> None:
        listing = self.client.list(Pod, namespace=self.namespace, labels={LABEL_HUB: self.hub})
        fresh = {info.name: info async for info in _infos(listing)}
        for name in set(self.pods) - set(fresh):
            await self._update(name, None)
        for name, info in fresh.items():
            await self._update(name, info)
        self.synced.set()
        watch: AsyncIterator[tuple[str, Any]] = aiter(
            self.client.watch(
                Pod,
                namespace=self.namespace,
                labels={LABEL_HUB: self.hub},
                resource_version=listing.resourceVersion,
            )
        )
        async for kind, pod in watch:
            info = PodInfo.of(pod)
            await self._update(info.name, None if kind == "DELETED" else info)

    async def _update(self, name: str, info: PodInfo | None) -> None:
        old = self.pods.get(name)
        if info is None:
            self.pods.pop(name, None)
        else:
            self.pods[name] = info
        if self.on_change is not None and old != info:
            self.on_change(old, info)
        async with self.changed:
            self.changed.notify_all()

    async def wait_change(self, timeout: float) -> None:
        """Until the cache changes, or `timeout` seconds."""
        async with self.changed:
            try:
                await asyncio.wait_for(self.changed.wait(), timeout)
            except TimeoutError:
                pass

    async def pod(self, name: str) -> PodInfo | None:
        """The pod from the cache when it is in sync, else from the API."""
        if self.synced.is_set():
            return self.pods.get(name)
        try:
            return PodInfo.of(await self.client.get(Pod, name, namespace=self.namespace))
        except ApiError as e:
            if e.status.code == 404:
                return None
            raise

    def ports_in_use(self) -> set[int]:
        return {p.port for p in self.pods.values() if p.port}

    def free_port(self, low: int, high: int, taken: set[int]) -> int:
        used = self.ports_in_use() | taken
        free = [p for p in range(low, high + 1) if p not in used]
        if not free:
            raise RuntimeError(f"every port of {low}-{high} is taken by this hub's pods")
        return random.choice(free)

    # -- objects ----------------------------------------------------------------------------------
    async def create(self, manifest: dict[str, Any]) -> Any:
        cls = KINDS[manifest["kind"]]
        return await self.client.create(cls.from_dict(manifest))

    async def get(self, kind: str, name: str) -> Any:
        return await self.client.get(KINDS[kind], name, namespace=self.namespace)

    async def exists(self, kind: str, name: str) -> bool:
        try:
            await self.client.get(KINDS[kind], name, namespace=self.namespace)
            return True
        except ApiError as e:
            if e.status.code == 404:
                return False
            raise

    async def delete(self, kind: str, name: str, grace: int | None = None) -> bool:
        """False when it was already gone."""
        try:
            await self.client.delete(
                KINDS[kind], name, namespace=self.namespace, grace_period=grace
            )
            return True
        except ApiError as e:
            if e.status.code == 404:
                return False
            raise

    async def labels_of(self, kind: str, name: str) -> dict[str, str]:
        """An object's labels, by an empty patch (whose answer is the object): the hub's
        Role may not read Secrets back."""
        found = await self.client.patch(
            KINDS[kind], name, {"metadata": {}}, namespace=self.namespace
        )
        return dict(found.metadata.labels or {})

    async def annotate(self, kind: str, name: str, annotations: dict[str, str]) -> None:
        patch = {"metadata": {"annotations": annotations}}
        await self.client.patch(KINDS[kind], name, patch, namespace=self.namespace)

    async def own(self, kind: str, name: str, pod_name: str, pod_uid: str) -> None:
        """Make the pod the owner of `name`, so the cluster deletes it with the pod."""
        patch = {
            "metadata": {
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Pod", "name": pod_name, "uid": pod_uid}
                ]
            }
        }
        await self.client.patch(KINDS[kind], name, patch, namespace=self.namespace)

    async def events(self, pod_name: str) -> AsyncIterator[Any]:
        """The pod's events as they come (old ones of an earlier pod of the name included:
        the caller filters by uid)."""
        watch = self.client.watch(
            Event, namespace=self.namespace, fields={"involvedObject.name": pod_name}
        )
        async for _kind, event in watch:
            yield event

    async def log_tail(self, name: str, lines: int) -> str:
        try:
            out = [
                line async for line in self.client.log(name, tail_lines=lines, container=CONTAINER)
            ]
        except ApiError:
            return ""
        return "".join(out)

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None
        await self.client.close()
