"""Login throttling: failures per name and per address slow down, then lock out a while.

A success is never delayed; it clears the name's (not the address's) failure count.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..config import Config
from ..errors import TooManyRequests

MAX_KEYS = 100_000  # bound memory under a spray of names/addresses


@dataclass
class _Record:
    failures: int = 0
    locked_until: float = 0.0
    last: float = field(default_factory=time.monotonic)


class Throttle:
    def __init__(self, cfg: Config) -> None:
        self.delay_after = int(cfg.get("auth.login_delay_after"))
        self.lock_after = int(cfg.get("auth.login_lockout_after"))
        self.lock_seconds = int(cfg.get("auth.login_lockout_seconds"))
        self.max_delay = float(cfg.get("auth.login_max_delay_seconds"))
        self._records: dict[str, _Record] = {}

    def check(self, name: str, address: str) -> None:
        """Raise TooManyRequests if either the name or the address is locked out."""
        now = time.monotonic()
        for key, what in ((f"n:{name}", "this account"), (f"a:{address}", "your address")):
            rec = self._records.get(key)
            if rec and rec.locked_until > now:
                wait = int(rec.locked_until - now) + 1
                raise TooManyRequests(
                    f"Too many failed logins for {what}. Try again in {_human(wait)}.", wait)

    def failure(self, name: str, address: str) -> float:
        """Record a failure; return how long to delay the answer (seconds)."""
        delay = 0.0
        for key in (f"n:{name}", f"a:{address}"):
            rec = self._get(key)
            rec.failures += 1
            rec.last = time.monotonic()
            if rec.failures >= self.lock_after:
                rec.locked_until = rec.last + self.lock_seconds
                rec.failures = 0
            elif rec.failures > self.delay_after:
                delay = max(delay, min(self.max_delay,
                                       0.25 * 2 ** (rec.failures - self.delay_after - 1)))
        return delay

    def success(self, name: str) -> None:
        self._records.pop(f"n:{name}", None)

    def _get(self, key: str) -> _Record:
        rec = self._records.get(key)
        if rec is None:
            if len(self._records) >= MAX_KEYS:
                self._evict()
            rec = self._records[key] = _Record()
        return rec

    def _evict(self) -> None:
        now = time.monotonic()
        stale = [k for k, r in self._records.items()
                 if r.locked_until < now and now - r.last > self.lock_seconds]
        for k in stale or list(self._records)[: MAX_KEYS // 10]:
            del self._records[k]


def _human(seconds: int) -> str:
    if seconds < 90:
        return f"{seconds} seconds"
    return f"{(seconds + 59) // 60} minutes"
