"""System accounts through PAM (python-pam), with the account checks pam_acct_mgmt makes.

A locked (usermod -L) or expired account fails; so does a name with no Unix account.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd

import pam as _pam

from ..config import Config
from .base import Authenticator

log = logging.getLogger("minihub.auth")


class PAMAuthenticator(Authenticator):
    kind = "pam"

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.service = cfg.get("auth.pam_service")

    async def check_password(self, username: str, password: str) -> bool:
        return await asyncio.to_thread(self._check, username, password)

    def _check(self, username: str, password: str) -> bool:
        try:
            pwd.getpwnam(username)
        except KeyError:
            return False
        if "\x00" in password:
            return False
        p = _pam.PamAuthenticator()
        ok = bool(p.authenticate(username, password, service=self.service, resetcreds=False))
        if not ok:
            log.info("PAM refused %s: %s", username, p.reason)
            if os.geteuid() != 0 and username != pwd.getpwuid(os.geteuid()).pw_name:
                log.info("the hub is not root: PAM can only check the password of %s",
                         pwd.getpwuid(os.geteuid()).pw_name)
        return ok
