"""KubeSpawner: each server a pod that the hub creates through the Kubernetes API.

A start resolves the user's profile and overrides into [kubernetes] settings, makes the
user's PersistentVolumeClaim if asked (kept after the server stops), a Secret with the
server's launch secrets (owned by the pod, so the cluster deletes it with the pod), the
pod, and optionally a Service; it follows the pod through one shared cache (a LIST, then a
WATCH) and the pod's events, and fails at once with the reason when the pod cannot run:
an image that cannot be pulled, no node with the resources asked for, a container that
exits, a quota. The state is {pod, namespace, uid, port, ...}: a restarted hub finds its
pods again by name and uid from that one cache, without a request per pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, ClassVar

from ...config import Config
from ...errors import SpawnError
from ...setting import Setting
from ..base import UNKNOWN_EXIT, Endpoint, Launch, ProgressLog, Spawner, Started, State
from . import podspec
from .profiles import form_html, from_form, resolve
from .settings import SETTINGS

if TYPE_CHECKING:
    from .cluster import Cluster, PodInfo

log = logging.getLogger("minihub.spawner.kubernetes")

# A container waiting for one of these will not start by waiting longer.
FAILING = {
    "ErrImagePull": "The image {image} cannot be pulled",
    "ImagePullBackOff": "The image {image} cannot be pulled",
    "ErrImageNeverPull": "The image {image} is not on the node, and image_pull_policy is Never",
    "InvalidImageName": "The image name {image} is not valid",
    "CreateContainerConfigError": "The server's container cannot be configured",
    "CreateContainerError": "The server's container cannot be created",
    "RunContainerError": "The server's container cannot be run",
    "CrashLoopBackOff": "The server's container keeps crashing",
}
# ... except the kubelet's own caches still syncing a Secret or ConfigMap the pod was created
# with an instant ago ("failed to sync secret cache: timed out waiting for the condition"):
# the kubelet retries, and the container starts (seen with 50 spawns at once).
_TRANSIENT = ("failed to sync secret cache", "failed to sync configmap cache")


def _transient(reason: str, message: str) -> bool:
    return reason == "CreateContainerConfigError" and message.startswith(_TRANSIENT)


_SYNC_WAIT = 10.0  # how long a call waits for the first LIST before asking the API itself
_GONE_WAIT = 60.0  # after a forced delete, for the API object to go
_MAX_EXITED = 1000


class KubeSpawner(Spawner):
    name = "kubernetes"
    settings: ClassVar[list[Setting]] = SETTINGS

    def __init__(self, cfg: Config | None = None) -> None:
        self.cfg = cfg
        self._cluster: Cluster | None = None
        self._lock = asyncio.Lock()
        self._progress = ProgressLog()
        self._reserved: set[int] = set()  # host ports of pods being created
        self._exited: dict[str, tuple[int, str]] = {}  # pod uid -> (status, reason)
        # Read now, so a hub with an unusable kubeconfig stops at start-up saying so.
        self._kube_config = self._load_config() if cfg is not None else None

    # -- the seam ----------------------------------------------------------------------------
    async def start(self, launch: Launch) -> Started:
        cfg = self._config()
        settings, profile = resolve(
            cfg, launch.user, launch.user_options, self.groups_of(launch.user)
        )
        cluster = await self.cluster()
        await cluster.wait_synced(_SYNC_WAIT)
        names = podspec.names_for(settings, launch, cluster.namespace)
        hostnet = podspec.host_network(settings)
        port = self._port(cluster, settings) if hostnet else int(settings["port"])
        try:
            return await self._start(cluster, launch, settings, names, port, profile)
        finally:
            self._reserved.discard(port)

    async def _start(
        self,
        cluster: Cluster,
        launch: Launch,
        settings: dict[str, Any],
        names: podspec.Names,
        port: int,
        profile: str,
    ) -> Started:
        scheme = self._listen(launch, settings, port)
        manifest, data = podspec.pod(settings, launch, names, cluster.hub, port)
        manifest["metadata"]["annotations"].update(
            {"minihub.org/port": str(port), "minihub.org/profile": profile}
        )
        state: State = {"pod": names.pod, "namespace": names.namespace, "port": port}
        try:
            if names.pvc:
                await self._ensure_pvc(cluster, settings, launch, names)
            labels = podspec.labels(settings, launch, cluster.hub)
            await self._replace(cluster, podspec.secret(names, data, labels))
            state["secret"] = names.secret  # ours from here: a failure below discards it
            self._say(launch, f"Creating pod {names.pod}" + (f" ({profile})" if profile else ""))
            uid = await self._create_pod(cluster, manifest)
            state["uid"] = uid
            await cluster.own("Secret", names.secret, names.pod, uid)
            if settings["services_enabled"]:
                svc = podspec.service(names, labels, port)
                await self._replace(cluster, svc)
                state["service"] = names.pod
                await cluster.own("Service", names.pod, names.pod, uid)
            info = await self._follow(cluster, launch, settings, names.pod, uid)
        except BaseException as e:
            await self._discard(cluster, state)
            if isinstance(e, Exception) and not isinstance(e, SpawnError):
                raise _api_failure(e) from e
            raise
        host = self._connect_host(settings, names, info)
        return Started(Endpoint(host, port, scheme), state)

    async def poll(self, state: State) -> int | None:
        cluster = await self.cluster()
        await cluster.wait_synced(_SYNC_WAIT)
        info = await cluster.pod(state["pod"])
        if info is None or info.uid != state.get("uid"):
            return self._exited.get(str(state.get("uid")), (UNKNOWN_EXIT, ""))[0]
        if info.exit_code is not None:
            return _status(info.exit_code, info.exit_reason)
        if info.phase in ("Failed", "Succeeded"):
            return UNKNOWN_EXIT
        return None

    async def stop(self, state: State, timeout: float) -> None:
        cluster = await self.cluster()
        await cluster.wait_synced(_SYNC_WAIT)
        info = await cluster.pod(state["pod"])
        if info is not None and info.uid == state.get("uid"):
            grace = min(int(self._config().get("kubernetes.delete_grace_period")), int(timeout))
            await cluster.delete("Pod", info.name, grace)
            if not await self._gone(cluster, info.name, info.uid, timeout + grace):
                log.warning("pod %s outlived its grace period: deleting it at once", info.name)
                await cluster.delete("Pod", info.name, 0)
                await self._gone(cluster, info.name, info.uid, _GONE_WAIT)
        await self._discard(cluster, state, pod=False)

    async def progress(self, launch: Launch) -> AsyncIterator[str]:
        async for message in self._progress.follow(launch):
            yield message

    async def log_tail(self, state: State, lines: int = 20) -> str:
        if not state.get("uid"):
            return ""
        cluster = await self.cluster()
        return await cluster.log_tail(state["pod"], lines)

    def oom_killed(self, state: State) -> bool:
        uid = str(state.get("uid", ""))
        if self._exited.get(uid, (0, ""))[1] == "OOMKilled":
            return True
        info = self._cluster.pods.get(state.get("pod", "")) if self._cluster else None
        return bool(info and info.uid == uid and info.exit_reason == "OOMKilled")

    async def close(self) -> None:
        if self._cluster is not None:
            await self._cluster.close()
            self._cluster = None

    # -- JupyterHub's options form (profiles) -----------------------------------------------------
    def options_form(self, user: str) -> str:
        return form_html(self._config(), user, self.groups_of(user))

    def options_from_form(self, form: dict[str, str]) -> dict[str, Any]:
        return from_form(form)

    def check_options(self, user: str, options: dict[str, Any]) -> None:
        resolve(self._config(), user, options, self.groups_of(user))

    # -- the cluster --------------------------------------------------------------------------------
    async def cluster(self) -> Cluster:
        """The client and pod cache, made at first use (so loading the class costs nothing)."""
        async with self._lock:
            if self._cluster is None:
                from . import cluster as k8s  # here: the client loads only when used

                cfg = self._config()
                config = self._kube_config or self._load_config()
                ns = cfg.get("kubernetes.namespace") or k8s.default_namespace(config)
                self._cluster = k8s.Cluster(config, ns, cfg.get("kubernetes.hub_instance"))
                self._cluster.on_change = self._changed
                self._cluster.start_watch()
                log.info("servers run as pods in namespace %s (%s)", ns, config.cluster.server)
            return self._cluster

    def _load_config(self) -> Any:
        from .cluster import load_config  # here: the client loads only when used

        cfg = self._config()
        return load_config(cfg.get("kubernetes.kubeconfig"), cfg.get("kubernetes.context"))

    def _changed(self, old: PodInfo | None, new: PodInfo | None) -> None:
        """A pod of ours changed in the cache: note an exit and tell the hub at once."""
        ended = old is not None and (
            new is None or (new.exit_code is not None and old.exit_code is None)
        )
        if not ended or old is None:
            return
        last = new or old
        if last.exit_code is not None:
            self._exited[last.uid] = (_status(last.exit_code, last.exit_reason), last.exit_reason)
        else:
            self._exited.setdefault(last.uid, (UNKNOWN_EXIT, ""))
        while len(self._exited) > _MAX_EXITED:
            self._exited.pop(next(iter(self._exited)))
        if self.on_exit is not None:
            self.on_exit({"pod": last.name, "uid": last.uid})

    def _config(self) -> Config:
        if self.cfg is None:
            raise SpawnError("This spawner was made without a configuration.")
        return self.cfg

    def _say(self, launch: Launch, message: str) -> None:
        self._progress.say(launch, message)

    def _port(self, cluster: Cluster, settings: dict[str, Any]) -> int:
        low, high = (int(x) for x in str(settings["host_port_range"]).split("-"))
        try:
            port = cluster.free_port(low, high, self._reserved)
        except RuntimeError as e:
            raise SpawnError(f"{e}: widen [kubernetes] host_port_range.", "", 503) from None
        self._reserved.add(port)
        return port

    def _listen(self, launch: Launch, settings: dict[str, Any], port: int) -> str:
        """Tell the server where to listen (and with which certificate); its scheme."""
        launch.listen_on(settings["ip"], port)
        if launch.protocol == "minihub":
            launch.config["ip"] = settings["ip"]
        if not settings["ssl_secret"]:
            return "http"
        cert, key = f"{podspec.TLS_DIR}/tls.crt", f"{podspec.TLS_DIR}/tls.key"
        if launch.protocol == "minihub":
            launch.config.update({"certfile": cert, "keyfile": key})
        else:
            launch.env.update({"JUPYTERHUB_SSL_CERTFILE": cert, "JUPYTERHUB_SSL_KEYFILE": key})
            url = launch.env["JUPYTERHUB_SERVICE_URL"]
            launch.env["JUPYTERHUB_SERVICE_URL"] = "https" + url.removeprefix("http")
        return "https"

    def _connect_host(self, settings: dict[str, Any], names: podspec.Names, info: PodInfo) -> str:
        template = str(settings["pod_connect_ip"])
        if template:
            return template.replace("{podname}", names.pod).replace("{namespace}", names.namespace)
        if settings["services_enabled"]:
            return f"{names.pod}.{names.namespace}.svc"
        return info.ip

    # -- the steps of a start ---------------------------------------------------------------------
    async def _ensure_pvc(
        self, cluster: Cluster, settings: dict[str, Any], launch: Launch, names: podspec.Names
    ) -> None:
        if await cluster.exists("PersistentVolumeClaim", names.pvc):
            await self._check_claim_owner(cluster, launch, names.pvc)
            return
        self._say(launch, f"Creating your storage (volume claim {names.pvc})")
        try:
            await cluster.create(podspec.pvc(settings, launch, names, cluster.hub))
        except Exception as e:
            if _code(e) != 409:  # made by a start of another server of the user meanwhile
                raise

    async def _check_claim_owner(self, cluster: Cluster, launch: Launch, claim: str) -> None:
        """The claim is this hub user's: one left by an earlier user of the name (removed
        from the hub, then the name signed up again) is not mounted. A claim from before
        claims named their owner is taken as this user's."""
        if not launch.owner:
            return
        found = await cluster.get("PersistentVolumeClaim", claim)
        owner = (found.metadata.annotations or {}).get(podspec.ANNOTATION_OWNER)
        if owner is None:
            await cluster.annotate(
                "PersistentVolumeClaim", claim, {podspec.ANNOTATION_OWNER: launch.owner}
            )
        elif owner != launch.owner:
            raise SpawnError(
                f"The volume claim {claim} was made for an earlier user named {launch.user}, "
                "since removed from the hub, so it is not given to this one. An admin can "
                f"delete it (kubectl delete pvc {claim}) or hand it over (kubectl annotate "
                f"--overwrite pvc {claim} {podspec.ANNOTATION_OWNER}={launch.owner}).",
                "",
                409,
            )

    async def _replace(self, cluster: Cluster, manifest: dict[str, Any]) -> None:
        """Create an object, replacing a leftover of this hub's of the same name; another
        hub's (two hubs in one namespace) is not touched."""
        try:
            await cluster.create(manifest)
        except Exception as e:
            if _code(e) != 409:
                raise
            kind, name = manifest["kind"], manifest["metadata"]["name"]
            if (await cluster.labels_of(kind, name)).get(podspec.LABEL_HUB) != cluster.hub:
                raise SpawnError(
                    f"A {kind} named {name} that another hub made is in the way; the admin "
                    "can change [kubernetes] pod_name_template or hub_instance.",
                    "",
                    409,
                ) from None
            await cluster.delete(kind, name, 0)
            await cluster.create(manifest)

    async def _create_pod(self, cluster: Cluster, manifest: dict[str, Any]) -> str:
        """Create the pod; a leftover pod of this hub with its name (a server the hub lost
        track of) is deleted first, another hub's is not touched."""
        name = manifest["metadata"]["name"]
        try:
            created = await cluster.create(manifest)
        except Exception as e:
            if _code(e) != 409:
                raise
            old = await cluster.get("Pod", name)
            if (old.metadata.labels or {}).get(podspec.LABEL_HUB) != cluster.hub:
                raise SpawnError(
                    f"A pod named {name} that another hub made is in the way; the admin can "
                    "change [kubernetes] pod_name_template or hub_instance.",
                    "",
                    409,
                ) from None
            log.warning("deleting leftover pod %s (uid %s)", name, old.metadata.uid)
            await cluster.delete("Pod", name, 0)
            await self._gone(cluster, name, old.metadata.uid, _GONE_WAIT)
            created = await cluster.create(manifest)
        return str(created.metadata.uid)

    async def _follow(
        self, cluster: Cluster, launch: Launch, settings: dict[str, Any], name: str, uid: str
    ) -> PodInfo:
        """Until the server's container runs; SpawnError with the reason when it cannot."""
        events = None
        if settings["events_enabled"]:
            events = asyncio.create_task(self._relay_events(cluster, launch, name, uid))
        try:
            return await self._until_running(cluster, launch, settings, name, uid)
        finally:
            if events is not None:
                events.cancel()
                await asyncio.gather(events, return_exceptions=True)

    async def _until_running(
        self, cluster: Cluster, launch: Launch, settings: dict[str, Any], name: str, uid: str
    ) -> PodInfo:
        timeout = float(self._config().get("spawner.start_timeout"))
        t0 = time.monotonic()
        last: PodInfo | None = None
        while (elapsed := time.monotonic() - t0) < timeout:
            info = await cluster.pod(name)
            if info is not None and info.uid == uid:
                last = info
                if info.running and (info.ip or settings["pod_connect_ip"]):
                    return info
                await self._check(cluster, settings, info, elapsed)
            elif info is None and elapsed > 5 and cluster.synced.is_set():
                raise SpawnError("The server's pod was deleted while it started.")
            await cluster.wait_change(1.0)
        phase = f" (still {last.phase}{_waiting_text(last)})" if last else ""
        raise SpawnError(
            f"The server's pod did not start within {timeout:g} seconds{phase}. The admin can "
            "raise [spawner] start_timeout.",
            await cluster.log_tail(name, 20),
        )

    async def _check(
        self, cluster: Cluster, settings: dict[str, Any], info: PodInfo, elapsed: float
    ) -> None:
        """Fail fast: raise SpawnError when the pod will not run by waiting longer."""
        image = settings["image"]
        if info.exit_code is not None or info.phase in ("Failed", "Succeeded"):
            code = "" if info.exit_code is None else f"exit code {info.exit_code}"
            why = ", ".join(x for x in (code, info.exit_reason, info.exit_message) if x)
            raise SpawnError(
                f"The server exited during start ({why or info.phase}); its last output is below.",
                await cluster.log_tail(info.name, 20),
            )
        if info.waiting and info.waiting[0] in FAILING and not _transient(*info.waiting):
            reason, message = info.waiting
            text = FAILING[reason].format(image=image)
            tail = await cluster.log_tail(info.name, 20) if reason == "CrashLoopBackOff" else ""
            raise SpawnError(
                f"{text} ({reason}: {message})." if message else f"{text} ({reason}).", tail
            )
        # The scheduler waits for a claim being provisioned (a user's first spawn): no node
        # is short of anything, and waiting resolves it.
        claim = "persistentvolumeclaim" in info.unschedulable.lower()
        if info.unschedulable and not claim and elapsed >= float(settings["unschedulable_timeout"]):
            raise SpawnError(f"No node of the cluster can run this server: {info.unschedulable}")

    async def _relay_events(self, cluster: Cluster, launch: Launch, name: str, uid: str) -> None:
        try:
            async for event in cluster.events(name):
                if event.involvedObject.uid == uid and event.message:
                    self._say(
                        launch,
                        f"{event.reason}: {event.message}" if event.reason else event.message,
                    )
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - progress is best effort; the start goes on
            log.debug("events of %s: %s", name, e)

    async def _gone(self, cluster: Cluster, name: str, uid: str, timeout: float) -> bool:
        """Until the pod with this uid is gone (True), or `timeout` seconds (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = await cluster.pod(name)
            if info is None or info.uid != uid:
                return True
            await cluster.wait_change(min(1.0, max(0.05, deadline - time.monotonic())))
        return False

    async def _discard(self, cluster: Cluster, state: State, pod: bool = True) -> None:
        """Delete what a start made (the claim stays), even when the start was cancelled."""

        async def delete() -> None:
            if pod and state.get("uid"):
                await cluster.delete("Pod", state["pod"], 0)
            if state.get("service"):
                await cluster.delete("Service", state["service"], 0)
            if state.get("secret"):
                await cluster.delete("Secret", state["secret"], 0)

        with contextlib.suppress(Exception):
            await asyncio.shield(delete())


def _code(e: BaseException) -> int:
    status = getattr(e, "status", None)
    return int(getattr(status, "code", 0) or 0)


def _api_failure(e: Exception) -> SpawnError:
    """An API refusal (a quota, RBAC, an invalid spec) or an unreachable cluster, in words."""
    code = _code(e)
    message = str(getattr(getattr(e, "status", None), "message", "") or e)[:500]
    if code == 403 and "quota" in message:
        return SpawnError(f"The cluster's quota does not allow this server: {message}", "", 403)
    if code:
        return SpawnError(f"The cluster refused the server ({code}): {message}")
    return SpawnError(f"The cluster cannot be reached: {type(e).__name__}: {message}", "", 503)


def _status(exit_code: int, reason: str) -> int:
    """A container's exit as the seam's status: 128+N (or OOMKilled) is killed by signal N."""
    if reason == "OOMKilled":
        return -9
    return -(exit_code - 128) if 128 < exit_code < 160 else exit_code


def _waiting_text(info: PodInfo) -> str:
    if info.waiting:
        return f", {info.waiting[0]}"
    return f": {info.unschedulable}" if info.unschedulable else ""
