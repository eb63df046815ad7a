"""The ``companion`` command line: its arguments, logging set-up and dispatch to the subcommands.

The daemon (``run``) and the one-shot tools for people and scripts live in ``companion.commands``.
Every reporting command takes ``--json`` for scripts; the human output is a short table. Exit
codes: 0 success, 1 a check or lint failed, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from companion import __version__
from companion.commands.common import EXIT_CONFIG, EXIT_FAIL
from companion.errors import CompanionError, ConfigError
from companion.security.terms import POLICIES


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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``companion`` and every subcommand; each sets ``func``, the command's name
    for :func:`command`."""
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
    run.set_defaults(func="run")

    scan = sub.add_parser("scan", help="one-shot discovery of players and servers")
    scan.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="YAML config file")
    scan.add_argument("--timeout", type=float, default=3.0, metavar="S", help="seconds to listen (default 3)")
    scan.add_argument("--json", action="store_true", help="machine-readable output")
    scan.set_defaults(func="scan")

    profiles = sub.add_parser("profiles", help="device profiles: lint and list")
    psub = profiles.add_subparsers(dest="profiles_command", required=True, metavar="ACTION")
    plint = psub.add_parser("lint", help="validate profile and root-store files; file:line: message per error")
    plint.add_argument("paths", nargs="*", metavar="PATH", help="files or directories (default: shipped)")
    plint.set_defaults(func="profiles lint")
    plist = psub.add_parser("list", help="the loaded profiles and what they match")
    plist.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="YAML config file")
    plist.add_argument("--json", action="store_true", help="machine-readable output")
    plist.set_defaults(func="profiles list")
    pev = psub.add_parser("evidence", help="per profile: flings, failures on the device, and the claims they "
                          "contradict (from the audit log)")
    pev.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="YAML config file")
    pev.add_argument("--json", action="store_true", help="machine-readable output")
    pev.set_defaults(func="profiles evidence")
    pcap = psub.add_parser("capture", help="measure a player's TLS through the lab and write a profile draft")
    pcap.add_argument("target", metavar="TARGET", help="IP:PORT of a Companion player, a configured target, or "
                      "a target the running daemon bridges (name or id)")
    pcap.add_argument("--out", metavar="FILE", help="draft to write (default: <target>-measured.yaml); its "
                      "name is the profile id")
    pcap.add_argument("--base", metavar="PROFILE", help="profile whose unmeasurable claims (roots, key sizes, "
                      "DNS) the draft keeps (default: the target's current profile)")
    pcap.add_argument("--host", default="plex-direct", metavar="MODE", help="what the player is told to connect "
                      "to: plex-direct (<dashed-ip>.<lab-hash>.plex.direct, the default), ip, or a DNS name")
    pcap.add_argument("--port", type=int, metavar="N", help="lab port (default: lab.port, 32482)")
    pcap.add_argument("--step-timeout", type=float, default=30.0, metavar="S",
                      help="seconds each lab endpoint waits for the player (default 30)")
    pcap.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="YAML config file")
    pcap.add_argument("--json", action="store_true", help="also print everything seen, as JSON")
    pcap.set_defaults(func="profiles capture")

    flings = sub.add_parser("flings", help="the audit log of flings, newest first")
    flings.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="YAML config file")
    flings.add_argument("--insecure", action="store_true", help="only flings that were not fully secure")
    flings.add_argument("--limit", type=int, default=50, metavar="N", help="at most N records (default 50)")
    flings.add_argument("--json", action="store_true", help="machine-readable output")
    flings.set_defaults(func="flings")

    explain = sub.add_parser("explain", help="the secure/insecure decision for a target and a server, check by "
                             "check (exit 0 when secure, 1 when not)")
    explain.add_argument("target", nargs="?", metavar="TARGET", help="a configured target's name or id")
    explain.add_argument("--profile", metavar="ID", help="judge this device profile instead of a target")
    explain.add_argument("--server", required=True, metavar="URL", help="https://<ip>:<port> or the plex.direct URL")
    explain.add_argument("--policy", choices=POLICIES, help="override the policy")
    explain.add_argument("--resolver", metavar="IP[:PORT]", help="LAN resolver to check plex.direct names with")
    explain.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="YAML config file")
    explain.add_argument("--json", action="store_true", help="machine-readable output")
    explain.set_defaults(func="explain")

    doctor = sub.add_parser("doctor", help="check multicast, ports, DNS rebinding, server chains and the clock "
                            "(exit 0 all PASS, 1 a WARN, 2 a FAIL)")
    doctor.add_argument("--server", metavar="URL", help="also check this server (https://<ip>:<port>)")
    doctor.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="YAML config file")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.set_defaults(func="doctor")

    link = sub.add_parser("link", help="link the bridge to a Plex account (PIN flow at plex.tv/link) so its faces "
                          "are registered on plex.tv (exit 0 linked, 1 expired/denied/refused/unreachable)")
    link.add_argument("--timeout", type=float, default=300.0, metavar="S",
                      help="seconds to wait for the code to be entered (default 300)")
    link.add_argument("--token-file", metavar="PATH", help="write the account token there (mode 0600) instead of "
                      "<state_dir>/plextv-token, e.g. the file a systemd LoadCredential= names")
    link.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="YAML config file")
    link.set_defaults(func="link")
    unlink = sub.add_parser("unlink", help="delete every plex.tv device the bridge registered, then the token")
    unlink.add_argument("--token-file", metavar="PATH", help="the token file `companion link --token-file` wrote")
    unlink.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="YAML config file")
    unlink.set_defaults(func="unlink")
    return parser


def command(name: str) -> Callable[[argparse.Namespace], int]:
    """The command ``name`` (``"run"``, ``"profiles lint"``...); KeyError for an unknown name.

    Each command's module is imported here, when it is asked for: the daemon loads none of the
    tools' code (0.2 MB resident for its lifetime, ``bench/memory.py``), and a tool none of the
    daemon's.
    """
    if name == "run":
        from companion.commands.run import cmd_run
        return cmd_run
    if name == "scan":
        from companion.commands.scan import cmd_scan
        return cmd_scan
    if name == "flings":
        from companion.commands.flings import cmd_flings
        return cmd_flings
    if name == "explain":
        from companion.commands.explain import cmd_explain
        return cmd_explain
    if name == "doctor":
        from companion.commands.doctor import cmd_doctor
        return cmd_doctor
    if name in ("link", "unlink"):
        from companion.commands.link import cmd_link, cmd_unlink
        return cmd_link if name == "link" else cmd_unlink
    if name == "profiles capture":
        from companion.commands.capture import cmd_profiles_capture
        return cmd_profiles_capture
    from companion.commands.profiles import cmd_profiles_evidence, cmd_profiles_lint, cmd_profiles_list
    commands = {"profiles lint": cmd_profiles_lint, "profiles list": cmd_profiles_list,
                "profiles evidence": cmd_profiles_evidence}
    return commands[name]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, set up logging and run the command; returns the exit code (78 on a config error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "explain" and not args.target and not args.profile:
        parser.error("explain: give a TARGET or --profile ID")
    setup_logging(args.log_level)
    try:
        return int(command(args.func)(args))
    except ConfigError as exc:
        for line in str(exc).splitlines():  # one line per problem in the file
            print(f"companion: configuration error: {line}", file=sys.stderr)
        return EXIT_CONFIG
    except CompanionError as exc:
        print(f"companion: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130


__all__ = ["build_parser", "command", "main", "setup_logging"]
