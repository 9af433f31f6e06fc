"""The growth benchmark's report: docs/growth/growth.json, the PNG curves (drawn by
growth_plot.py in the plot venv, so matplotlib stays out of the hub's venv) and the
generated block of the "## Growth" section in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

BEGIN = "<!-- bench-growth:begin (written by scripts/bench/growth.py) -->"
END = "<!-- bench-growth:end -->"
SECTION = "## Growth"

Row = dict[str, float]

# (key, label, scale, unit)
USER_ROWS = [
    ("startup", "start-up to /hub/health", 1, "s"),
    ("pss_hub", "hub process at rest, PSS", 1, "MiB"),
    ("pss_all", "hub + proxy/helpers at rest, PSS", 1, "MiB"),
    ("anon_hub", "hub process at rest, its own memory (Pss_Anon)", 1, "MiB"),
    ("rss_hub", "hub process at rest, RSS", 1, "MiB"),
    ("page_p50", "GET /hub/api/users page of 200, median", 1000, "ms"),
    ("page_p99", "GET /hub/api/users page of 200, p99", 1000, "ms"),
    ("full", "all users, pages of 200", 1000, "ms"),
    ("admin_first", "admin page, the first request after start", 1000, "ms"),
    ("admin_p50", "admin page, first page, median", 1000, "ms"),
    ("admin_p99", "admin page, first page, p99", 1000, "ms"),
    ("me_p50", "GET /hub/api/user while listing, median", 1000, "ms"),
    ("me_max", "GET /hub/api/user while listing, max", 1000, "ms"),
]
SERVER_ROWS = [
    ("registered", "registered users besides the servers' users", 1, ""),
    ("spawned", "servers spawned", 1, ""),
    ("spawn_wall", "spawn all (20 at a time): wall", 1, "s"),
    ("pss_all", "hub + proxy/helpers, PSS", 1, "MiB"),
    ("pss_per_server_kib", "hub memory per running server", 1, "KiB"),
    ("idle_cpu_pct", "hub idle CPU, % of a core", 1, "%"),
    ("cpu_ms_per_server_min", "hub idle CPU per server per minute", 1, "ms"),
    ("page_p50", "GET /hub/api/users page of 200 meanwhile, median", 1000, "ms"),
    ("page_p99", "GET /hub/api/users page of 200 meanwhile, p99", 1000, "ms"),
    ("full", "all registered users meanwhile, pages of 200", 1000, "ms"),
    ("rps", "proxied GETs spread over all servers, req/s", 1, ""),
    ("rps_p99", "proxied GET p99", 1000, "ms"),
    ("rps_errors", "proxied GET errors", 1, ""),
    ("restart_health", "restart: to /hub/health", 1, "s"),
    ("restart_all", "restart: until every server answers via the hub", 1, "s"),
    ("running_at_restart", "servers running when the hub was stopped", 1, ""),
    ("readopted", "servers answering after the restart", 1, ""),
    ("fds_before", "hub fds before any spawn", 1, ""),
    ("fds_first_cycle", "hub fds after the first spawn + stop of all", 1, ""),
    ("cycles", "spawn + stop cycles of all", 1, ""),
    ("fds_max", "hub fds, most after any cycle", 1, ""),
    ("fds_after", "hub fds after the last cycle", 1, ""),
    ("socks_before", "hub sockets before any spawn", 1, ""),
    ("socks_after", "hub sockets after the last cycle", 1, ""),
]


def fmt(v: Any, scale: float = 1, unit: str = "") -> str:
    if not isinstance(v, (int, float)) or math.isnan(v):
        return "n/a"
    x = v * scale
    text = f"{x:,.0f}" if abs(x) >= 100 or float(x).is_integer() else f"{x:.3g}"
    return f"{text} {unit}".strip()


def rows_of(result: dict[str, Any], hub: str, part: str) -> list[Row]:
    got = result.get(hub, {}).get(part)
    return got if isinstance(got, list) else []


def table(
    result: dict[str, Any],
    part: str,
    key: str,
    spec: list[tuple[str, str, float, str]],
    names: tuple[str, str] = ("JupyterHub", "minihub"),
) -> str:
    cols: list[tuple[str, Row]] = []
    for hub, label in zip(("jupyterhub", "minihub"), names, strict=True):
        for row in rows_of(result, hub, part):
            cols.append((f"{label} {int(row[key]):,}", row))
    if not cols:
        return ""
    out = ["| figure | " + " | ".join(c for c, _ in cols) + " |"]
    out.append("|---|" + "---:|" * len(cols))
    for k, label, scale, unit in spec:
        out.append(f"| {label} | " + " | ".join(fmt(r.get(k), scale, unit) for _, r in cols) + " |")
    return "\n".join(out)


def per_user_kib(rows: list[Row]) -> float:
    """Hub PSS growth per registered user between the smallest and largest point."""
    if len(rows) < 2:
        return float("nan")
    a, b = rows[0], rows[-1]
    # its own memory where measured: PSS also moves with what else shares its file pages
    key = "anon_hub" if "anon_hub" in a and "anon_hub" in b else "pss_hub"
    return (b[key] - a[key]) * 1024 / (b["users"] - a["users"])


def targets(result: dict[str, Any]) -> list[str]:
    users = rows_of(result, "minihub", "users")
    servers = rows_of(result, "minihub", "servers")
    mh = result.get("minihub", {})
    # the burst: a class arriving within one minute and running a first cell
    burst = mh.get("burst_kernel_spread") or mh.get("burst_spread") or mh.get("burst") or {}
    big = users[-1] if users else {}
    top = servers[-1] if servers else {}
    checks: list[tuple[str, Any, Any, str]] = [
        ("hub at rest ≤ 30 MiB PSS", big.get("pss_hub"), 30, "MiB"),
        ("per registered user ≤ 2 KiB", per_user_kib(users), 2, "KiB"),
        ("page of 200 ≤ 5 ms p99", big.get("page_p99", math.nan) * 1000, 5, "ms"),
        ("all users via pagination ≤ 0.25 s", big.get("full"), 0.25, "s"),
        ("GET /hub/api/user while listing ≤ 20 ms", big.get("me_max", math.nan) * 1000, 20, "ms"),
        ("start-up to serving ≤ 1 s", big.get("startup"), 1, "s"),
        ("idle CPU ≤ 1 % of a core (most servers)", top.get("idle_cpu_pct"), 1, "%"),
        ("restart until all servers answer ≤ 5 s", top.get("restart_all"), 5, "s"),
        (
            f"class-start burst ({burst_what(burst)}) p95 ≤ 10 s",
            burst.get("p95"),
            10,
            "s",
        ),
        ("class-start burst 0 errors", burst.get("errors"), 0, ""),
    ]
    out = []
    for what, got, bar, unit in checks:
        if not isinstance(got, (int, float)) or math.isnan(got):
            out.append(f"- {what}: not measured")
            continue
        verdict = "**met**" if got <= bar else "**not met**"
        out.append(f"- {what}: {fmt(got, 1, unit)} at the largest point: {verdict}")
    if len(servers) >= 2:
        a, b = servers[0], servers[-1]
        slope = (b["pss_all"] - a["pss_all"]) * 1024 / (b["servers"] - a["servers"])
        out.append(
            f"- (no target) hub memory per running server, slope {int(a['servers'])} → "
            f"{int(b['servers'])}: {fmt(slope, 1, 'KiB')}"
        )
    fd_rows = [r for r in servers if "fds_after" in r]
    if fd_rows:
        grew = [int(r["fds_after"] - r["fds_before"]) for r in fd_rows]
        verdict = "**met**" if max(grew) <= 0 else "**not met**"
        out.append(f"- no fd growth over spawn/stop cycles: growth {grew}: {verdict}")
        for r in fd_rows:
            if r.get("cycles", 1) > 1:
                more = int(r["fds_max"] - r["fds_first_cycle"])
                verdict = "**met**" if more <= 0 else "**not met**"
                out.append(
                    f"- no fd growth over {int(r['cycles'])} spawn/stop cycles of "
                    f"{int(r['servers'])} servers: {int(r['fds_before'])} before, "
                    f"{int(r['fds_first_cycle'])} after the first, at most "
                    f"{int(r['fds_max'])} after any later one: {verdict}"
                )
            if r.get("registered"):
                verdict = "**met**" if r["restart_health"] <= 1 else "**not met**"
                out.append(
                    f"- start-up with {int(r['registered']):,} more registered users and "
                    f"{int(r['running_at_restart'])} running servers ≤ 1 s to serving: "
                    f"{fmt(r['restart_health'], 1, 's')}: {verdict}; until all re-adopted "
                    f"answer ≤ 5 s: {fmt(r['restart_all'], 1, 's')}"
                )
    return out


def burst_what(b: dict[str, Any]) -> str:
    over = b.get("over", 0)
    return f"{int(b.get('n', 0))} users " + (f"arriving over {over:.0f} s" if over else "at once")


def burst_lines(result: dict[str, Any]) -> list[str]:
    out = []
    for hub, label in (("jupyterhub", "JupyterHub"), ("minihub", "minihub")):
        for key, what in (
            ("burst", "stand-in, first answer"),
            ("burst_kernel", "own server, 1+1"),
            ("burst_spread", "stand-in, first answer"),
            ("burst_kernel_spread", "own server, 1+1"),
        ):
            b = result.get(hub, {}).get(key)
            if not isinstance(b, dict):
                continue
            if "error" in b:
                out.append(f"| {label} | {what} | | failed: {b['error'][:100]} | | | | |")
                continue
            over = b.get("over", 0)
            arrive = f"over {over:.0f} s" if over else "at once"
            out.append(
                f"| {label} | {what} | {arrive} | {int(b['n'])} | {int(b['errors'])} | "
                f"{fmt(b['wall'], 1, 's')} | {fmt(b['p50'], 1, 's')} | {fmt(b['p95'], 1, 's')} | "
                f"{fmt(b['p99'], 1, 's')} |"
            )
    if not out:
        return []
    head = "| hub | first result | arrivals | users | errors | wall | p50 | p95 | p99 |"
    return [head, "|---|---|---|---:|---:|---:|---:|---:|---:|", *out]


def render(result: dict[str, Any]) -> str:
    mode = "`--quick`" if result.get("quick") else "full"
    parts = [
        (
            f"### Run: {result['date']} ({mode}; {result.get('seconds', 0) / 60:.0f} min; "
            f"`{' '.join(['scripts/bench/growth.py', *result.get('argv', [])])}`)"
        ),
        "",
        "![registered users](growth/users.png) ![running servers](growth/servers.png)",
        "",
        (
            "**Registered users** (created through the REST API, 500 a request; each point a "
            "restart of the hub on the same database):"
        ),
        "",
        table(result, "users", "users", USER_ROWS),
        "",
        (
            "**Running servers** (the stand-in scripts/bench/standin.py on both hubs; `minihub "
            "own` is minihub's own server, no kernels):"
        ),
        "",
        table(result, "servers", "servers", SERVER_ROWS),
    ]
    own = rows_of(result, "minihub", "own_servers")
    if own:
        parts += [
            "",
            table({"minihub": {"s": own}}, "s", "servers", SERVER_ROWS, ("", "minihub own")),
        ]
    burst = burst_lines(result)
    if burst:
        parts += [
            "",
            "**Class-start burst** (log in through the form with PAM, spawn, first result):",
            "",
            *burst,
        ]
    parts += ["", "**Against the issue's targets** (minihub):", "", *targets(result), ""]
    return "\n".join(parts)


def update(path: Path, block: str) -> None:
    old = path.read_text()
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        text = head + BEGIN + "\n" + block + END + rest.split(END, 1)[1]
    elif SECTION in old:
        head, rest = old.split(SECTION, 1)
        text = head + SECTION + rest.rstrip("\n") + "\n\n" + BEGIN + "\n" + block + END + "\n"
    else:
        text = old.rstrip("\n") + f"\n\n{SECTION}\n\n{BEGIN}\n{block}{END}\n"
    path.write_text(text)


def write(result: dict[str, Any], out: Path, doc: Path, plot_python: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    data = out / "growth.json"
    data.write_text(json.dumps(result, indent=1) + "\n")
    if plot_python.exists():
        script = Path(__file__).with_name("growth_plot.py")
        subprocess.run(
            [str(plot_python), str(script), str(data), str(out)], check=True, timeout=120
        )
    update(doc, render(result))
