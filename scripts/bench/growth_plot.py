"""Draw the growth benchmark's curves from growth.json (run by the plot venv's python, which
has matplotlib): users.png (cost against registered users) and servers.png (against running
servers), minihub and JupyterHub on the same axes.

Usage: python growth_plot.py docs/growth/growth.json docs/growth/
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HUBS = (("jupyterhub", "JupyterHub 6 + CHP", "tab:orange"), ("minihub", "minihub", "tab:blue"))
USERS = [
    ("pss_all", "hub + proxy PSS at rest (MiB)", 1),
    ("startup", "start-up to /hub/health (s)", 1),
    ("page_p99", "page of 200 users, p99 (ms)", 1000),
    ("full", "all users, pages of 200 (ms)", 1000),
    ("admin_p50", "admin page, first page, median (ms)", 1000),
    ("me_max", "GET /hub/api/user while listing, max (ms)", 1000),
]
SERVERS = [
    ("pss_all", "hub + proxy PSS (MiB)", 1),
    ("idle_cpu_pct", "hub idle CPU (% of a core)", 1),
    ("rps", "proxied req/s over all servers", 1),
    ("restart_all", "restart until all answer (s)", 1),
    ("spawn_wall", "spawn all, 20 at a time (s)", 1),
    ("fds_after", "hub fds after spawn+stop of all", 1),
]


def rows(result: dict[str, Any], hub: str, part: str) -> list[dict[str, float]]:
    got = result.get(hub, {}).get(part)
    return got if isinstance(got, list) else []


def draw(
    result: dict[str, Any], part: str, x: str, spec: list[tuple[str, str, float]], path: Path
) -> None:
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (key, title, scale) in zip(axes.flat, spec, strict=True):
        for hub, label, color in HUBS:
            rs = [r for r in rows(result, hub, part) if key in r]
            if rs:
                ax.plot(
                    [r[x] for r in rs], [r[key] * scale for r in rs], "o-", label=label, color=color
                )
        own = (
            [r for r in rows(result, "minihub", "own_servers") if key in r]
            if part == "servers"
            else []
        )
        if own:
            ax.plot(
                [r[x] for r in own],
                [r[key] * scale for r in own],
                "s--",
                label="minihub own server",
                color="tab:green",
            )
        ax.set_title(title, fontsize=10)
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.set_xlabel(x)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"How cost grows: {part} ({result.get('date', '')})")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> None:
    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    result = json.loads(data.read_text())
    draw(result, "users", "users", USERS, out / "users.png")
    draw(result, "servers", "servers", SERVERS, out / "servers.png")


if __name__ == "__main__":
    main()
