"""``companion scan``: one-shot discovery of players and servers (GDM and mDNS), with the profile each matches."""

from __future__ import annotations

import argparse
import asyncio
import sys

from companion.commands.common import EXIT_OK, print_json, profile_set, table
from companion.config import Config, config_from_args


def cmd_scan(args: argparse.Namespace) -> int:
    """Listen for ``--timeout`` seconds and list what answered (``--json`` for scripts)."""
    config = config_from_args(args)
    return asyncio.run(_scan(config, args.timeout, args.json))


async def _scan(config: Config, timeout: float, as_json: bool) -> int:
    from companion.discovery.gdm import scan
    from companion.discovery.mdns import MdnsDiscovery, MdnsSettings
    from companion.model import Sighting, Target, TargetKind

    if not as_json:
        protocols = " and ".join(p for p, on in (("GDM", config.gdm.enabled), ("mDNS", config.mdns.enabled)) if on)
        print(f"searching for {timeout:g} s ({protocols or 'nothing enabled'}) ...", file=sys.stderr)
    found: dict[tuple[str, str], Sighting] = {}

    def keep(sighting: Sighting) -> None:
        found.setdefault((sighting.kind, sighting.ident), sighting)

    mdns: MdnsDiscovery | None = None
    if config.mdns.enabled:
        mdns = MdnsDiscovery(MdnsSettings(enabled=True, interfaces=config.interfaces), keep, lambda s: None)
        await mdns.start()
    try:
        if config.gdm.enabled:
            for sighting in await scan(config.gdm, timeout, interfaces=config.interfaces):
                keep(sighting)
        else:
            await asyncio.sleep(timeout)  # the listening window for mDNS answers
    finally:
        if mdns is not None:
            await mdns.stop()
    profiles = profile_set(config)

    def profile_of(s: Sighting) -> str:
        if s.kind == "server" or s.face is not None:
            return ""
        fields = Target(id="", kind=TargetKind(s.kind), name=s.name, address=s.address, port=s.port,
                        source=s.source, ident=s.ident, product=s.product, version=s.version,
                        platform=s.platform, platform_version=s.platform_version, device_class=s.device_class,
                        model=s.model).match_fields
        profile = profiles.match(fields)
        return f"{profile.id} ({profile.confidence})"

    rows = [{
        # Another bridge's face (or ours) is listed as what it is, never as a player.
        "kind": "face" if s.face is not None else s.kind, "name": s.name, "address": s.address, "port": s.port,
        "product": s.product or s.model,
        "version": s.version, "id": s.ident, "source": s.source, "capabilities": list(s.capabilities),
        "profile": profile_of(s), **({"host": s.host} if s.host else {}),
        **({"bridge": s.face.bridge_id} if s.face is not None and s.face.bridge_id else {}),
    } for s in sorted(found.values(), key=lambda s: (s.kind, s.name))]
    if as_json:
        print_json(rows)
        return EXIT_OK
    if not rows:
        print("nothing answered (is multicast reaching this host? try `companion doctor`)")
        return EXIT_OK
    print(table([[str(r["kind"]), str(r["name"]), f"{r['address']}:{r['port']}", str(r["product"]),
                   str(r["profile"]), str(r["id"])] for r in rows],
                 ["KIND", "NAME", "ADDRESS", "PRODUCT", "PROFILE", "ID"]))
    return EXIT_OK


__all__ = ["cmd_scan"]
