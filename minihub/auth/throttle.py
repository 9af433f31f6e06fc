"""Login throttling: backoff per (name, address) and per address, and caps on attempts in flight.

Nothing is ever locked. Failures for one name from one address make that pair wait (doubling,
capped); failures from one address over all names make that address wait; a name as such is
never refused its correct password from an address that is not itself failing. Attempts in
flight (password check plus the failure delay) are capped per address and per name. The excess
from an address that has been failing is turned away at once with 429 and Retry-After, before
any password is checked; the excess from one that has not (a class logging in at once behind
one NAT) waits its turn, in a bounded queue.
Addresses are counted as people are: an IPv4 /32, an IPv6 /64, all of loopback as one, and
X-Forwarded-For is believed only from `[hub] trusted_proxies`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from ..config import Config, Network, parse_networks
from ..errors import TooManyRequests

MAX_KEYS = 100_000  # bound memory under a spray of names/addresses
# How fast recorded failures are forgiven: one failure per this many seconds. A pair (one name
# from one address) is a guesser or a person retrying, so it forgets slowly; an address holds
# everyone behind one NAT, whose occasional typos must never add up to a wait.
PAIR_LEAK_SECONDS = 60.0
ADDRESS_LEAK_SECONDS = 10.0
# Attempts from one clean address waiting for a slot, and for how long at most.
MAX_WAITING = 1000
MAX_WAIT_SECONDS = 60.0


@dataclass
class _Record:
    level: float = 0.0  # failures, leaking away over time
    at: float = field(default_factory=time.monotonic)  # when `level` was last brought up to date
    not_before: float = 0.0  # backoff: no attempt before this (monotonic)
    in_flight: int = 0
    waiting: deque[asyncio.Future[None]] = field(default_factory=deque)

    def leak(self, now: float, per_second: float) -> None:
        self.level = max(0.0, self.level - (now - self.at) * per_second)
        self.at = now


@dataclass(frozen=True)
class Attempt:
    """One login attempt let through; `trusted` when its address has not been failing."""

    name: str
    address: str
    trusted: bool


def address_group(ip: str) -> str:
    """The unit the throttle counts: IPv4 /32, IPv6 /64 (what one host gets), loopback as one."""
    try:
        a = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip[:64] or "?"
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        a = a.ipv4_mapped
    if a.is_loopback:  # 127.0.0.0/8 and ::1 are the same machine: 16 million aliases of one
        return "loopback"
    if isinstance(a, ipaddress.IPv4Address):
        return str(a)
    return str(ipaddress.IPv6Network((a, 64), strict=False))


def client_address(peer: str | None, forwarded_for: list[str], trusted: list[Network]) -> str:
    """The client's address: the peer, or, when the peer is a trusted proxy, the rightmost
    X-Forwarded-For entry that is not itself a trusted proxy (entries left of it are whatever
    the client chose to send, so they are never believed)."""
    addr = peer or "?"
    if not in_networks(addr, trusted):
        return addr
    hops = [h.strip() for header in forwarded_for for h in header.split(",")]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return addr  # garbage: stop at the last hop we could read
        addr = hop
        if not in_networks(hop, trusted):
            break
    return addr


def in_networks(ip: str, networks: list[Network]) -> bool:
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        a = a.ipv4_mapped
    return any(a.version == n.version and a in n for n in networks)


class Throttle:
    def __init__(self, cfg: Config) -> None:
        self.pair_after = int(cfg.get("auth.login_delay_after"))
        self.address_after = int(cfg.get("auth.login_address_delay_after"))
        self.max_backoff = float(cfg.get("auth.login_max_backoff_seconds"))
        self.per_name = int(cfg.get("auth.login_concurrent_per_name"))
        self.per_address = int(cfg.get("auth.login_concurrent_per_address"))
        self.failure_delay = float(cfg.get("auth.login_failure_delay_seconds"))
        self.trusted_proxies = parse_networks(cfg.get("hub.trusted_proxies"))
        self._records: dict[tuple[str, ...], _Record] = {}

    @asynccontextmanager
    async def attempt(self, name: str, address: str) -> AsyncIterator[Attempt]:
        """Let one attempt through (perhaps after a wait) or raise TooManyRequests; hold its
        in-flight slots meanwhile."""
        group = address_group(address)
        now = time.monotonic()
        pair, addr, person = (
            self._get(("p", name, group)),
            self._get(("a", group)),
            self._get(("n", name)),
        )
        pair.leak(now, 1 / PAIR_LEAK_SECONDS)
        addr.leak(now, 1 / ADDRESS_LEAK_SECONDS)
        _wait(pair, now, "for this name from your address")
        _wait(addr, now, "from your address")
        # An address that has not been failing may always try: a flood of one name from
        # elsewhere must not keep its owner out.
        trusted = pair.level < self.pair_after and addr.level < self.pair_after
        if person.in_flight >= self.per_name and not trusted:
            raise _busy("for this name", self.failure_delay)
        if addr.in_flight >= self.per_address:
            if not trusted or len(addr.waiting) >= MAX_WAITING:
                raise _busy("from your address", self.failure_delay)
            await self._turn(addr)
            _wait(addr, time.monotonic(), "from your address")  # it may have failed meanwhile
        for r in (addr, person):
            r.in_flight += 1
        try:
            yield Attempt(name, group, trusted)
        finally:
            addr.in_flight -= 1
            person.in_flight -= 1
            _wake(addr)
            if not person.in_flight:  # a name's record only counts attempts in flight
                self._records.pop(("n", name), None)

    async def _turn(self, addr: _Record) -> None:
        """Wait until the address has a free slot (bounded: 429 after MAX_WAIT_SECONDS)."""
        deadline = time.monotonic() + MAX_WAIT_SECONDS
        while addr.in_flight >= self.per_address:
            turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            addr.waiting.append(turn)
            try:
                await asyncio.wait_for(turn, max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise _busy("from your address", self.failure_delay) from None
            finally:
                if turn in addr.waiting:
                    addr.waiting.remove(turn)

    def failure(self, attempt: Attempt) -> None:
        """Record a failed password: the pair and the address back off past their allowance."""
        now = time.monotonic()
        for key, after, per_second in (
            (("p", attempt.name, attempt.address), self.pair_after, 1 / PAIR_LEAK_SECONDS),
            (("a", attempt.address), self.address_after, 1 / ADDRESS_LEAK_SECONDS),
        ):
            rec = self._get(key)
            rec.leak(now, per_second)
            rec.level += 1
            if rec.level > after:
                rec.not_before = now + min(self.max_backoff, 2 ** (rec.level - after - 1))

    def success(self, attempt: Attempt) -> None:
        """The pair is forgiven; the address is not (a valid account must not launder it)."""
        self._records.pop(("p", attempt.name, attempt.address), None)

    def _get(self, key: tuple[str, ...]) -> _Record:
        rec = self._records.get(key)
        if rec is None:
            if len(self._records) >= MAX_KEYS:
                self._evict()
            rec = self._records[key] = _Record()
        return rec

    def _evict(self) -> None:
        now = time.monotonic()
        stale = [
            k
            for k, r in self._records.items()
            if not r.in_flight
            and not r.waiting
            and r.not_before < now
            and now - r.at > self.max_backoff
        ]
        for k in stale or [
            k
            for k, r in list(self._records.items())[: MAX_KEYS // 10]
            if not r.in_flight and not r.waiting
        ]:
            del self._records[k]


def _wake(rec: _Record) -> None:
    while rec.waiting:
        turn = rec.waiting.popleft()
        if not turn.done():
            turn.set_result(None)
            return


def _wait(rec: _Record, now: float, what: str) -> None:
    if rec.not_before > now:
        wait = math.ceil(rec.not_before - now)
        raise TooManyRequests(f"Too many failed logins {what}. Try again in {_human(wait)}.", wait)


def _busy(what: str, delay: float) -> TooManyRequests:
    wait = max(1, math.ceil(delay))
    return TooManyRequests(
        f"Too many logins in progress {what}. Try again in {_human(wait)}.", wait
    )


def _human(seconds: int) -> str:
    if seconds < 90:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    return f"{(seconds + 59) // 60} minutes"
