"""System accounts through PAM (python-pam), with the account checks pam_acct_mgmt makes.

A locked (usermod -L) or expired account fails; so does a name with no Unix account.
PAM's own failure delay (pam_faildelay, pam_unix: ~3 s, randomised) is taken over by the hub
through PAM_FAIL_DELAY: a failed check returns at once, freeing its thread, and the login
handler answers every failure, whether or not the name exists, after the same
`[auth] login_failure_delay_seconds`, asleep in the event loop rather than in a thread.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pwd
import threading
from typing import TYPE_CHECKING, Any, ClassVar

import pam as _pam

from ..config import Config
from ..setting import Setting
from .base import Authenticator

if TYPE_CHECKING:
    from ..store import Store

log = logging.getLogger("minihub.auth")
PAM_FAIL_DELAY = 10  # pam_set_item: the application's delay function (Linux-PAM _pam_types.h)
_DELAY_FN = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p)
_requested = threading.local()


def _record_delay(status: int, usec: int, appdata: object) -> None:
    """Called by libpam instead of sleeping; remembers what PAM asked for (for the log)."""
    _requested.usec = usec


_DELAY_CB = _DELAY_FN(_record_delay)  # module-level, so ctypes never frees it
_DELAY_PTR = ctypes.cast(_DELAY_CB, ctypes.c_void_p)


def requested_delay() -> float:
    """Seconds of failure delay PAM asked for in this thread's last check (0 if none)."""
    return float(getattr(_requested, "usec", 0)) / 1e6


def _without_pam_delay(p: Any) -> None:
    """Make this PamAuthenticator hand its failure delay to `_record_delay`.

    python-pam keeps its libpam calls as per-instance attributes for exactly this kind of
    wrapping; PAM_FAIL_DELAY must be set between pam_start and pam_authenticate.
    """
    real = p.pam_authenticate

    def pam_authenticate(handle: Any, flags: int) -> int:
        p.pam_set_item(handle, PAM_FAIL_DELAY, _DELAY_PTR)
        return int(real(handle, flags))

    p.pam_authenticate = pam_authenticate


class PAMAuthenticator(Authenticator):
    kind = "pam"
    settings: ClassVar[list[Setting]] = [
        Setting("auth", "pam_service", str, "login", "PAM service name used to check passwords."),
    ]

    def __init__(self, cfg: Config, store: Store | None = None) -> None:
        super().__init__(cfg)
        self.service = cfg.get("auth.pam_service")

    async def check_password(self, username: str, password: str) -> bool:
        return await self.pool.run(self._check, username, password)

    def _check(self, username: str, password: str) -> bool:
        try:
            pwd.getpwnam(username)
        except KeyError:
            return False
        if "\x00" in password:
            return False
        _requested.usec = 0
        p = _pam.PamAuthenticator()
        _without_pam_delay(p)
        ok = bool(p.authenticate(username, password, service=self.service, resetcreds=False))
        if not ok:
            log.info(
                "PAM refused %s: %s (PAM asked for a %.2f s delay; the hub applies its "
                "own to every failure)",
                username,
                p.reason,
                requested_delay(),
            )
            if os.geteuid() != 0 and username != pwd.getpwuid(os.geteuid()).pw_name:
                log.info(
                    "the hub is not root: PAM can only check the password of %s",
                    pwd.getpwuid(os.geteuid()).pw_name,
                )
        return ok
