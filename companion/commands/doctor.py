"""``companion doctor``: every check once, for people or as JSON; exit 0 all PASS, 1 worst WARN, 2 any FAIL."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from companion.config import config_from_args


def cmd_doctor(args: argparse.Namespace) -> int:
    """``companion doctor [--server URL] [--json]``: exit 0 all PASS, 1 worst WARN, 2 any FAIL."""
    from companion.doctor.findings import exit_code, findings_to_json, format_findings
    from companion.doctor.run import run_doctor
    from companion.doctor.servers import parse_server_url

    config = config_from_args(args)
    server_url: str | None = getattr(args, "server", None)
    as_json = bool(getattr(args, "json", False))
    if server_url:
        parse_server_url(server_url)  # a bad URL is a usage error before any check runs
    started = time.monotonic()
    findings = asyncio.run(run_doctor(config, server_url=server_url))
    if as_json:
        json.dump({"findings": findings_to_json(findings), "exit_code": exit_code(findings)}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_findings(findings))
        print(f"({time.monotonic() - started:.1f} s)", file=sys.stderr)
    return exit_code(findings)


__all__ = ["cmd_doctor"]
