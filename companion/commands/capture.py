"""``companion profiles capture``: measure a player's TLS through the lab and write a profile draft."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from companion.commands.common import EXIT_FAIL, EXIT_OK, print_json, profile_set, running_target
from companion.config import Config, config_from_args
from companion.errors import CompanionError

if TYPE_CHECKING:
    from companion.lab.capture import CaptureTarget


def cmd_profiles_capture(args: argparse.Namespace) -> int:
    """Run the capture; 0 when the draft lints clean, 1 when it does not."""
    config = config_from_args(args)
    return asyncio.run(_capture(config, args))


def _capture_target(config: Config, target: str) -> CaptureTarget:
    """TARGET as ``IP:PORT``, a configured target, or one the running daemon bridges (its admin API)."""
    import ipaddress

    from companion.lab.capture import CaptureTarget
    from companion.model import stable_id

    host, _, port = target.rpartition(":")
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host.strip("[]"))
        if port.isdigit() and 0 < int(port) < 65536:
            return CaptureTarget(name=target, address=host.strip("[]"), port=int(port))
    for t in config.targets:
        if target in (t.name, stable_id(t.kind, f"config:{t.name}")):
            return CaptureTarget(name=t.name, address=t.address, port=t.port, kind=t.kind,
                                 base_profile=config.profiles.get(t.name) or t.profile or "default")
    row = running_target(config, target)
    if row is not None:
        profile = row.get("profile")
        base = str(profile.get("id") or "default") if isinstance(profile, dict) else "default"
        return CaptureTarget(name=str(row.get("name", target)), address=str(row.get("address", "")),
                             port=int(row.get("port", 0)), kind=str(row.get("kind", "companion")),
                             base_profile=base)
    raise CompanionError(f"unknown target {target!r}: give IP:PORT of a Companion player, a configured target, "
                         f"or one the running daemon bridges (see http://localhost:{config.http.admin_port}"
                         "/api/targets)")


async def _capture(config: Config, args: argparse.Namespace) -> int:
    import re

    from companion.bridge import local_address_towards
    from companion.lab.capture import Capture
    from companion.lab.draft import build_draft
    from companion.security.profiles import lint

    target = _capture_target(config, args.target)
    profiles = profile_set(config)
    base = profiles.get(args.base or target.base_profile)
    out = Path(args.out) if args.out else None
    if out is None:
        player_slug = re.sub(r"[^a-z0-9]+", "-", target.name.lower()).strip("-")[:50] or "device"
        out = Path(f"{player_slug}-measured.yaml")
    profile_id = out.stem
    if not re.match(r"^[a-z0-9][a-z0-9-]{0,63}$", profile_id):
        raise CompanionError(f"--out {out}: the file name is the profile id; use lowercase letters, digits and "
                             "dashes, e.g. my-tv.yaml")

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    capture = Capture(target, bridge_address=local_address_towards(target.address), lab_bind=config.http.bind,
                      lab_port=args.port if args.port is not None else config.lab.port,
                      listener_bind=config.http.bind, host=args.host, step_timeout=args.step_timeout,
                      command_timeout=config.timeouts.command, progress=progress)
    result = await capture.run()
    out.write_text(build_draft(result, base, profile_id), encoding="utf-8")
    errors = lint([out])
    if args.json:
        print_json({**result.to_json(), "draft": str(out), "lint_errors": [str(e) for e in errors]})
    progress(f"captured in {result.seconds:.1f} s; draft written to {out}")
    for error in errors:
        print(error, file=sys.stderr)
    return EXIT_FAIL if errors else EXIT_OK


__all__ = ["cmd_profiles_capture"]
