"""Prometheus text-format metrics, without a client library: counters, gauges, histograms."""

from __future__ import annotations

import bisect
from collections.abc import Callable


class Counter:
    def __init__(self, name: str, help: str) -> None:
        self.name, self.help, self.value = name, help, 0.0

    def inc(self, n: float = 1.0) -> None:
        self.value += n

    def render(self) -> list[str]:
        return [
            f"# HELP {self.name} {self.help}",
            f"# TYPE {self.name} counter",
            f"{self.name} {self.value:g}",
        ]


class Gauge:
    def __init__(self, name: str, help: str, read: Callable[[], float]) -> None:
        self.name, self.help, self.read = name, help, read

    def render(self) -> list[str]:
        return [
            f"# HELP {self.name} {self.help}",
            f"# TYPE {self.name} gauge",
            f"{self.name} {self.read():g}",
        ]


class Histogram:
    def __init__(self, name: str, help: str, buckets: list[float]) -> None:
        self.name, self.help, self.buckets = name, help, sorted(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        total = 0
        for bound, n in zip(self.buckets, self.counts):
            total += n
            out.append(f'{self.name}_bucket{{le="{bound:g}"}} {total}')
        total += self.counts[-1]
        out += [
            f'{self.name}_bucket{{le="+Inf"}} {total}',
            f"{self.name}_sum {self.sum:g}",
            f"{self.name}_count {total}",
        ]
        return out


class Metrics:
    def __init__(self) -> None:
        self.login_failures = Counter("minihub_login_failures_total", "Failed logins.")
        self.logins = Counter("minihub_logins_total", "Successful logins.")
        self.proxied = Counter(
            "minihub_proxied_requests_total", "Requests proxied to user servers."
        )
        self.proxy_latency = Histogram(
            "minihub_proxy_request_duration_seconds",
            "Time to first byte through the proxy.",
            [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
        )
        self.spawn_duration = Histogram(
            "minihub_spawn_duration_seconds",
            "Server start to ready.",
            [0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120],
        )
        self.culls = Counter("minihub_culled_servers_total", "Servers stopped by the culler.")
        self.websockets = 0
        self.users = 0
        self.gauges: list[Gauge] = []

    def gauge(self, name: str, help: str, read: Callable[[], float]) -> None:
        self.gauges.append(Gauge(name, help, read))

    def render(self) -> str:
        lines: list[str] = []
        metrics: list[Counter | Gauge | Histogram] = [
            self.logins,
            self.login_failures,
            self.proxied,
            self.proxy_latency,
            self.spawn_duration,
            self.culls,
            *self.gauges,
        ]
        for m in metrics:
            lines += m.render()
        return "\n".join(lines) + "\n"
