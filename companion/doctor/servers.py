"""The doctor's checks of the Plex servers: which are known, which profiles verify each chain, the clock.

The clock check asks a server's ``/identity`` (Plex answers it without a token) for its Date header.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import aiohttp
from cryptography import x509

from companion.bridge_view import BridgeView
from companion.config import Config
from companion.doctor.findings import Finding, KnownServer
from companion.errors import CompanionError, ConfigError, ProtocolError, TrustError
from companion.proto import plexdirect
from companion.security.facts import ServerFacts
from companion.security.probe import probe_server
from companion.security.profiles import ProfileSet
from companion.security.trust import display_name, verify_chain

# This release was written after this day: a clock showing an earlier date is certainly wrong,
# and every certificate check made with it would be too.
BUILD_DATE = datetime(2025, 6, 1, tzinfo=UTC)
# Plex tokens and TLS validity tolerate small skews; beyond this, devices and the bridge disagree.
CLOCK_SKEW_WARN = timedelta(seconds=60)
CLOCK_SKEW_FAIL = timedelta(minutes=5)
HTTP_TIMEOUT = 3.0


# -- servers and chains -------------------------------------------------------------------------


def servers_from(config: Config, server_url: str | None, bridge: BridgeView | None) -> list[KnownServer]:
    """``--server URL`` first, then the config's servers, then those a running bridge knows."""
    out: list[KnownServer] = []
    if server_url:
        out.append(parse_server_url(server_url))
    for configured in config.servers:
        with contextlib.suppress(ConfigError):
            out.append(parse_server_url(configured.url))
    if bridge is not None:
        for server in bridge.registry.servers():
            server_hash = bridge.flings.server_hash(server) if bridge.flings is not None else None
            out.append(KnownServer(server.name or server.address, server.address, server.port, server_hash,
                                   server.id))
    merged: dict[tuple[str, int], KnownServer] = {}
    for known in out:
        first = merged.get((known.address, known.port))
        if first is None:
            merged[(known.address, known.port)] = known
        else:  # one server named twice: keep the first label, learn the hash and the bridge's id
            merged[(known.address, known.port)] = KnownServer(first.label, first.address, first.port,
                                                              first.hash or known.hash, first.key or known.key)
    return list(merged.values())


def parse_server_url(url: str) -> KnownServer:
    """``https://<ip>:<port>`` or a plex.direct URL -> KnownServer; ConfigError otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--server: expected http(s)://host:port, got {url!r}")
    try:
        port = parts.port or 32400
    except ValueError as exc:
        raise ConfigError(f"--server: bad port in {url!r}") from exc
    host = parts.hostname
    try:
        parsed = plexdirect.parse_name(host)
    except ProtocolError:
        return KnownServer(f"{host}:{port}", host, port)
    return KnownServer(f"{host}:{port}", parsed.address, port, parsed.hash)


async def server_facts(server: KnownServer, bridge: BridgeView | None, timeout: float) -> ServerFacts:
    """A server's TLS as the running bridge measured it, else probed now."""
    if bridge is not None and bridge.flings is not None and server.key:
        known = bridge.registry.server(server.key)
        if known is not None:
            facts = await bridge.flings.server_facts(known, server.hash)
            if facts is None:
                raise TrustError(f"server {server.address}:{server.port} offers no usable TLS")
            return facts
    sni = None
    if server.hash:
        with contextlib.suppress(ProtocolError):
            sni = plexdirect.build_name(server.address, server.hash)
    return await probe_server(server.address, server.port, server_name=sni, timeout=timeout)


def _verifying_profiles(facts: ServerFacts, server: KnownServer, profiles: ProfileSet,
                        now: datetime) -> tuple[list[str], list[tuple[str, str]]]:
    """(profiles that accept the chain, [(profile, first reason)] for those that do not)."""
    server_hash = server.hash or facts.plex_direct_hash
    if server_hash is None:
        return [], []
    try:
        name = plexdirect.build_name(server.address, server_hash)
    except ProtocolError:
        return [], []
    good: list[str] = []
    bad: list[tuple[str, str]] = []
    for profile in profiles.profiles.values():
        if not profile.media_https:
            continue
        try:
            roots = profiles.roots_for(profile)
        except CompanionError as exc:
            bad.append((profile.id, str(exc)))
            continue
        result = verify_chain(facts, roots, name=name, now=now, tls=profile.tls, cross_signs=profiles.cross_signs)
        if result.ok:
            good.append(profile.id)
        else:
            bad.append((profile.id, result.reasons[0].code if result.reasons else "rejected"))
    return good, bad


async def check_chain(server: KnownServer, facts: ServerFacts | None, error: str | None,
                      profiles: ProfileSet, now: datetime, *, relevant: Collection[str] = ()) -> Finding:
    """Which profiles verify the server's chain as sent; ``relevant``: the profiles of the known targets.

    FAIL when the server cannot be probed or no profile verifies it; WARN when a target's profile
    does not; otherwise PASS (with no targets known, one verifying profile is enough).
    """
    check = f"chain ({server.label})"
    if facts is None:
        return Finding(check, "FAIL", error or "the server could not be probed",
                       "check that Plex runs there and that Settings > Network > Secure connections is not "
                       "disabled; then run `companion explain TARGET --server URL`")
    subjects = " <- ".join(_cn(cert) for cert in facts.chain)
    if facts.plex_direct_hash is None and server.hash is None:
        return Finding(check, "FAIL", f"the certificate ({subjects}) has no *.<hash>.plex.direct name",
                       "enable secure connections in the server's network settings and sign it in to Plex")
    good, bad = await asyncio.to_thread(_verifying_profiles, facts, server, profiles, now)
    sent = f"sent chain: {subjects}"
    if not good:
        shown = ", ".join(f"{p} ({why})" for p, why in bad[:6]) or "no profile plays https"
        return Finding(check, "FAIL", f"{sent}; no device profile can verify it: {shown}",
                       "make the server send its intermediate certificate (restart Plex to refresh its "
                       "certificate), and check the clock; `companion explain` shows the reason per device")
    verified = f"verified by {_listing(good)}"
    failing = [(p, why) for p, why in bad if p in relevant]
    if failing:
        shown = ", ".join(f"{p} ({why})" for p, why in failing)
        return Finding(check, "WARN", f"{sent}; {verified}; NOT by the profile(s) of your players: {shown}",
                       "flings to those players go insecure (or through the relay); "
                       "`companion explain TARGET --server URL` shows why and what would fix it")
    others = f"; not by {len(bad)} other profile(s)" if bad else ""
    return Finding(check, "PASS", f"{sent}; {verified}{others}", "")


def _listing(names: Sequence[str], limit: int = 8) -> str:
    more = len(names) - limit
    return ", ".join(names[:limit]) + (f" and {more} more" if more > 0 else "")


def target_profiles(config: Config, profiles: ProfileSet, bridge: BridgeView | None) -> set[str]:
    """The profile ids of the configured targets (and of the bridged ones, with a bridge)."""
    from companion.model import Target, TargetKind

    ids: set[str] = set()
    for t in config.targets:
        fields = Target(id="", kind=TargetKind(t.kind), name=t.name, address=t.address, port=t.port,
                        source="config", ident="").match_fields
        with contextlib.suppress(CompanionError):
            ids.add(profiles.match(fields, override=config.profiles.get(t.name) or t.profile).id)
    if bridge is not None and bridge.flings is not None:
        for slot in bridge.faces.values():
            with contextlib.suppress(CompanionError):
                ids.add(bridge.flings.profile_for(slot.target).id)
    return ids


def _cn(cert: x509.Certificate) -> str:
    return display_name(cert.subject)


# -- clock --------------------------------------------------------------------------------------


async def server_date(session: aiohttp.ClientSession, server: KnownServer) -> datetime | None:
    """The server's clock from the Date header of ``/identity`` (no token needed), or None."""
    host = f"[{server.address}]" if ":" in server.address else server.address
    ctx = ssl.create_default_context()
    # Only the Date header is read; the chain is judged by the chain check, not here.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    for scheme in ("https", "http"):
        try:
            async with session.get(f"{scheme}://{host}:{server.port}/identity",
                                   ssl=ctx if scheme == "https" else False, allow_redirects=False) as resp:
                date = resp.headers.get("Date")
        except (aiohttp.ClientError, TimeoutError, OSError):
            continue
        if date:
            with contextlib.suppress(TypeError, ValueError):
                parsed = parsedate_to_datetime(date)
                return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


async def check_clock(servers: Sequence[KnownServer], leaves: Sequence[ServerFacts], now: datetime,
                      *, timeout: float = HTTP_TIMEOUT) -> Finding:
    """Is this machine's clock plausible, and close to the servers' (their certificates, their Date header)?"""
    if now < BUILD_DATE:
        return Finding("clock", "FAIL", f"the clock says {now:%Y-%m-%d %H:%M} UTC, before this release was built",
                       "enable time synchronisation (e.g. `timedatectl set-ntp true`)")
    for facts in leaves:
        if facts.not_before > now:
            return Finding("clock", "FAIL",
                           f"the server's certificate only becomes valid at {facts.not_before:%Y-%m-%d %H:%M} "
                           f"UTC, after this machine's clock ({now:%Y-%m-%d %H:%M} UTC): the clock is behind",
                           "enable time synchronisation (e.g. `timedatectl set-ntp true`)")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        for server in servers:
            theirs = await server_date(session, server)
            if theirs is None:
                continue
            skew = now - theirs
            ahead = "ahead of" if skew > timedelta(0) else "behind"
            text = (f"this machine's clock is {abs(skew).total_seconds():.0f} s {ahead} the clock of "
                    f"{server.label} (Date header)")
            fix = "enable time synchronisation on this machine and on the server (e.g. `timedatectl set-ntp true`)"
            if abs(skew) > CLOCK_SKEW_FAIL:
                return Finding("clock", "FAIL", text, fix)
            if abs(skew) > CLOCK_SKEW_WARN:
                return Finding("clock", "WARN", text, fix)
            return Finding("clock", "PASS", text, "")
    return Finding("clock", "WARN",
                   f"the clock ({now:%Y-%m-%d %H:%M} UTC) is after this release's date, but no server's "
                   "clock could be compared with it",
                   "give --server URL of a reachable Plex server, or list it under servers: in the config")


__all__ = ["check_chain", "check_clock", "parse_server_url", "server_date", "server_facts", "servers_from",
           "target_profiles"]
