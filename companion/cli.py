"""The ``companion`` command line: the daemon (``run``) and the one-shot tools for people and scripts.

Every reporting command takes ``--json`` for scripts; the human output is a short table. Exit
codes: 0 success, 1 a check or lint failed, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import Any

from companion import __version__
from companion.config import DEFAULT_STATE_DIR, Config, load_config
from companion.errors import CompanionError, ConfigError

log = logging.getLogger("companion")

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def setup_logging(level: str) -> None:
    """Logs go to stderr; under systemd (JOURNAL_STREAM set) without timestamps, the journal adds them."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        fmt = "<%(levelno)s>%(name)s: %(message)s"
        handler.setFormatter(_JournalFormatter(fmt))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log would print every controller request; keep it for debugging only.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class _JournalFormatter(logging.Formatter):
    """Prefix each line with its syslog priority (<3> error ... <7> debug) so journald keeps levels."""

    _PRIO = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}

    def format(self, record: logging.LogRecord) -> str:
        prio = self._PRIO.get(record.levelno, 6)
        return f"<{prio}>{record.name}: {record.getMessage()}" + (
            "\n" + self.formatException(record.exc_info) if record.exc_info else "")


def _config_from_args(args: argparse.Namespace) -> Config:
    path = args.config or os.environ.get("COMPANION_CONFIG")
    if path and not args.config and not os.path.exists(path):
        # COMPANION_CONFIG from the service unit names the usual place; no file there = defaults.
        path = None
    config = load_config(path)
    state_env = os.environ.get("STATE_DIRECTORY")
    if state_env and config.state_dir == DEFAULT_STATE_DIR:
        config = replace(config, state_dir=state_env.split(":")[0])
    return config


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def _table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


# -- run ----------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    config = _config_from_args(args)
    return asyncio.run(_run(config))


async def _run(config: Config) -> int:
    from companion.bridge import Bridge

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bridge = Bridge(config)
    try:
        await bridge.start()
    except CompanionError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_USAGE
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_FAIL
    try:
        await stop.wait()
        log.info("stopping")
    finally:
        await bridge.stop()
    return EXIT_OK


# -- scan ---------------------------------------------------------------------------------------


def cmd_scan(args: argparse.Namespace) -> int:
    config = _config_from_args(args)
    return asyncio.run(_scan(config, args.timeout, args.json))


async def _scan(config: Config, timeout: float, as_json: bool) -> int:
    from companion.bridge import Bridge
    from companion.discovery.gdm import scan

    print(f"searching for {timeout:g} s ...", file=sys.stderr) if not as_json else None
    sightings = await scan(Bridge(config).gdm_settings, timeout)
    rows = [{
        "kind": s.kind, "name": s.name, "address": s.address, "port": s.port, "product": s.product,
        "version": s.version, "id": s.ident, "source": s.source, "capabilities": list(s.capabilities),
        **({"host": s.host} if s.host else {}),
    } for s in sorted(sightings, key=lambda s: (s.kind, s.name))]
    if as_json:
        _print_json(rows)
        return EXIT_OK
    if not rows:
        print("nothing answered (is GDM multicast reaching this host? try `companion doctor`)")
        return EXIT_OK
    print(_table([[str(r["kind"]), str(r["name"]), f"{r['address']}:{r['port']}", str(r["product"]), str(r["id"])]
                  for r in rows],
                 ["KIND", "NAME", "ADDRESS", "PRODUCT", "ID"]))
    return EXIT_OK


# -- parser -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="companion", description=(
        "companion-bridge: presents LAN players as Plex Companion players and secures every fling."))
    parser.add_argument("--version", action="version", version=f"companion-bridge {__version__}")
    parser.add_argument("--log-level", default=os.environ.get("COMPANION_LOG_LEVEL", "info"),
                        choices=["debug", "info", "warning", "error"], help="log verbosity (default: info)")
    parser.add_argument("--config", metavar="FILE", help="YAML config file (default: $COMPANION_CONFIG, "
                        "else embedded defaults)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="YAML config file")
    run.set_defaults(func=cmd_run)

    scan = sub.add_parser("scan", help="one-shot discovery of players and servers")
    scan.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="YAML config file")
    scan.add_argument("--timeout", type=float, default=3.0, metavar="S", help="seconds to listen (default 3)")
    scan.add_argument("--json", action="store_true", help="machine-readable output")
    scan.set_defaults(func=cmd_scan)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"companion: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CompanionError as exc:
        print(f"companion: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130


__all__ = ["asdict", "build_parser", "main"]
