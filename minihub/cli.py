"""The `minihub` command: serve the hub, write a config, manage users, tokens, the user env.

Global options come before the command and apply to all of them:
`minihub -f /etc/minihub.toml token alice`. Start-up errors are one line, no traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from . import __version__
from .config import BY_KEY, SETTINGS, Config, find_config, generate, load
from .errors import HubError, StartupError
from .singleuser import lean

EPILOG = """\
first steps:
  minihub                               serve on http://127.0.0.1:8000 (no config needed)
  minihub user add alice --admin        make the first admin (PAM: an existing system user)
  minihub --generate-config             write a commented minihub.toml
  minihub --ssl-cert c.pem --ssl-key k.pem --ip 0.0.0.0 --port 443 --redirect-port 80
                                        serve HTTPS on a VM (see README: Deploy on a small VM)
"""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="minihub",
        description="A multi-user Jupyter notebook hub in one process.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--version", action="version", version=f"minihub {__version__}")
    ap.add_argument(
        "-f",
        "--config",
        metavar="PATH",
        help="TOML config file (default: ./minihub.toml if present)",
    )
    for s in SETTINGS:
        if s.flag:
            typ = int if s.type is int else str
            ap.add_argument(
                s.flag,
                dest=s.key,
                type=typ,
                default=None,
                metavar=s.name.upper(),
                help=f"{s.help} [{s.section}] {s.name}",
            )
    ap.add_argument(
        "--no-ssl",
        action="store_true",
        help="serve plain HTTP even if the config names a certificate",
    )
    ap.add_argument(
        "--generate-config",
        nargs="?",
        const="minihub.toml",
        metavar="PATH",
        help="write a commented config with every key and its default, then exit",
    )
    ap.add_argument("--force", action="store_true", help="with --generate-config: overwrite")
    sub = ap.add_subparsers(dest="command", metavar="command")
    user = sub.add_parser("user", help="manage users").add_subparsers(
        dest="action", metavar="action"
    )
    add = user.add_parser("add", help="add a user (native: password read from stdin)")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true")
    user.add_parser("list", help="list users")
    rm = user.add_parser("remove", help="remove a user (stops their server)")
    rm.add_argument("name")
    sp = user.add_parser("set-password", help="set a native password (read from stdin)")
    sp.add_argument("name")
    adm = user.add_parser("admin", help="make a user admin (or --remove)")
    adm.add_argument("name")
    adm.add_argument("--remove", action="store_true")
    imp = user.add_parser("import", help="add users from a file, one name per line")
    imp.add_argument("file")
    user.add_parser("requests", help="list sign-up requests awaiting approval")
    for action, text in (("approve", "approve a sign-up request"), ("refuse", "refuse one")):
        user.add_parser(action, help=text).add_argument("name")
    env = sub.add_parser("env", help="the user environment kernels run in (as root)")
    env_sub = env.add_subparsers(dest="action", metavar="action")
    for name, text in (
        ("create", "create it with the default packages, or bring it up to date"),
        ("install", "pip install packages into it and say which kernels need a restart"),
        ("list", "list its packages and the running kernels"),
    ):
        cmd = env_sub.add_parser(name, help=text)
        cmd.add_argument("--path", help="the environment (default: [spawner] user_env)")
        if name == "install":
            cmd.add_argument("packages", nargs="+", metavar="PKG")
    tok = sub.add_parser("token", help="print a new API token for a user")
    tok.add_argument("name")
    tok.add_argument("--note", default="Requested via minihub token")
    return ap


def config_from(args: argparse.Namespace) -> Config:
    overrides: dict[str, Any] = {}
    for key in BY_KEY:
        value = getattr(args, key, None)
        if value is not None:
            overrides[key] = value
    if args.no_ssl:
        overrides["hub.ssl_cert"] = overrides["hub.ssl_key"] = ""
    return load(find_config(args.config), overrides)


def main(argv: list[str] | None = None) -> int:
    lean.install_hub()  # before anything imports aiohttp
    args = build_parser().parse_args(argv)
    try:
        if args.generate_config:
            return write_config(Path(args.generate_config), args.force)
        cfg = config_from(args)
        logging.basicConfig(
            level=cfg.get("hub.log_level").upper(),
            format="[%(levelname).1s %(asctime)s %(name)s] %(message)s",
        )
        if args.command is None:
            from .serve import serve

            return serve(cfg)
        return run_command(cfg, args)
    except StartupError as e:
        print(f"minihub: {e}", file=sys.stderr)
        return 2
    except HubError as e:
        print(f"minihub: {e.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def write_config(path: Path, force: bool) -> int:
    if path.exists() and not force:
        raise StartupError(f"{path} exists; use --force to overwrite it")
    try:
        path.write_text(generate())
    except OSError as e:
        raise StartupError(f"{path}: cannot write: {e.strerror}") from None
    print(f"wrote {path}")
    return 0


def run_command(cfg: Config, args: argparse.Namespace) -> int:
    # Imported here so that --help and --generate-config do not load the hub's parts.
    from .commands import COMMANDS

    fn = COMMANDS.get((args.command, getattr(args, "action", None)))
    if fn is None:
        build_parser().parse_args([args.command, "--help"])
        return 2
    return asyncio.run(fn(cfg, args))


if __name__ == "__main__":
    raise SystemExit(main())
