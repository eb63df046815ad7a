"""The whole doctor run: every check in order, with or without a running bridge."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from companion.bridge_view import BridgeView
from companion.config import Config
from companion.doctor.findings import NO_SERVER_FINDING, Finding, KnownServer, stamped
from companion.doctor.lan import check_dns, check_gdm_multicast, check_mdns, check_ports
from companion.doctor.servers import check_chain, check_clock, server_facts, servers_from, target_profiles
from companion.doctor.visible import check_plextv, visibility_from_daemon
from companion.errors import TrustError
from companion.security.facts import ServerFacts
from companion.security.profiles import load_with_extra


async def run_doctor(config: Config, *, server_url: str | None = None, bridge: BridgeView | None = None,
                     now: datetime | None = None) -> list[Finding]:
    """Every check, in order: GDM, mDNS, ports, DNS, each server's chain, the clock.

    With ``bridge`` the ports it holds count as fine, its profiles and probe cache are used, and
    the servers it knows are checked. ``now`` defaults to the system clock (which is under test).
    """
    now = now or datetime.now(UTC)
    own: set[int] = set()
    if bridge is not None:
        own = {slot.face.port for slot in bridge.faces.values()}
        if config.http.admin_port:
            own.add(config.http.admin_port)  # the bridge runs its admin server there
        profiles = bridge.profiles
    else:
        profiles = await asyncio.to_thread(load_with_extra, config.profiles_dirs)
    servers = servers_from(config, server_url, bridge)

    findings = stamped(await check_gdm_multicast(config), datetime.now(UTC))
    findings += stamped(await check_mdns(config, bridge), datetime.now(UTC))
    findings += stamped(check_ports(config, own=own), datetime.now(UTC))

    probed: list[tuple[KnownServer, ServerFacts | None, str | None]] = []
    for server in servers:
        try:
            probed.append((server, await server_facts(server, bridge, config.timeouts.command), None))
        except TrustError as exc:
            probed.append((server, None, str(exc)))
    # Servers first known by address learn their hash from the certificate, for the DNS check.
    with_hash = [KnownServer(s.label, s.address, s.port, s.hash or (f.plex_direct_hash if f else None), s.key)
                 for s, f, _ in probed]
    findings += stamped(await check_dns(config, with_hash), datetime.now(UTC))
    if not servers:
        findings.append(NO_SERVER_FINDING)
    relevant = target_profiles(config, profiles, bridge)
    for server, facts, error in probed:
        findings.append(await check_chain(server, facts, error, profiles, now, relevant=relevant))
    findings.append(await check_clock(servers, [f for _, f, _ in probed if f is not None], now))
    if bridge is None:
        findings += stamped(await check_plextv(config), datetime.now(UTC))  # what plex.tv itself lists
    if bridge is None and server_url is None:
        findings += await asyncio.to_thread(visibility_from_daemon, config)
    return stamped(findings, datetime.now(UTC))


__all__ = ["run_doctor"]
