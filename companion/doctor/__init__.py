"""``companion doctor``: checks of the machine and network the bridge depends on, each with its fix.

Owns the checks (GDM multicast loop-back per interface, free face and admin ports, plex.direct
through the LAN resolver, each known server's chain against every profile, the clock), their
Finding records, the exit code and the two renderings (people and ``--json``). Every network
step is bounded by a timeout; nothing here sends a token anywhere (the clock check asks the
server's ``/identity``, which Plex answers without one).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import secrets
import socket
import ssl
import struct
import sys
from collections.abc import Collection, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

import aiohttp
from cryptography import x509

from companion.config import Config
from companion.discovery.mdns import MdnsDiscovery, MdnsSettings
from companion.errors import CompanionError, ConfigError, ProtocolError, TrustError
from companion.proto import plexdirect
from companion.security.dnscheck import check_plex_direct
from companion.security.facts import DNS_REBIND_FIX, ServerFacts
from companion.security.probe import probe_server
from companion.security.profiles import ProfileSet, load_with_extra
from companion.security.trust import display_name, verify_chain

if TYPE_CHECKING:
    from companion.bridge import Bridge

Status = Literal["PASS", "WARN", "FAIL"]
_RANK: dict[str, int] = {"PASS": 0, "WARN": 1, "FAIL": 2}

# This release was written after this day: a clock showing an earlier date is certainly wrong,
# and every certificate check made with it would be too.
BUILD_DATE = datetime(2025, 6, 1, tzinfo=UTC)
# Plex tokens and TLS validity tolerate small skews; beyond this, devices and the bridge disagree.
CLOCK_SKEW_WARN = timedelta(seconds=60)
CLOCK_SKEW_FAIL = timedelta(minutes=5)
MULTICAST_WAIT = 1.0
DNS_TIMEOUT = 2.0
HTTP_TIMEOUT = 3.0
# A private LAN address under a made-up hash: what a stripping resolver drops, whatever server
# exists. Plex's DNS answers any hash, so a resolver that passes plex.direct answers this too.
SYNTHETIC_ADDRESS = "192.168.1.10"
SYNTHETIC_HASH = "0123456789abcdef0123456789abcdef"
_IP_MULTICAST_ALL = getattr(socket, "IP_MULTICAST_ALL", 49)


@dataclass(frozen=True)
class Finding:
    """One check's verdict: what was checked, how it went, what to do about it, and when."""

    check: str
    status: Status
    detail: str
    fix: str
    checked_at: datetime | None = None  # when this verdict was reached (its age is shown)


@dataclass(frozen=True)
class KnownServer:
    """A server the doctor looks at: where it is and the plex.direct hash it is known by."""

    label: str
    address: str
    port: int
    hash: str | None = None
    key: str = ""  # the bridge's server id, when it comes from a running bridge


def exit_code(findings: Iterable[Finding]) -> int:
    """0 when everything passed, 1 when the worst is a WARN, 2 when anything FAILed."""
    return max((_RANK[f.status] for f in findings), default=0)


def format_findings(findings: Sequence[Finding]) -> str:
    """The report for people: one block per check, the fix under every WARN and FAIL."""
    lines: list[str] = []
    for f in findings:
        lines.append(f"{f.status:<4}  {f.check}: {f.detail}")
        if f.status != "PASS" and f.fix:
            lines.append(f"      fix: {f.fix}")
    counts = {s: sum(1 for f in findings if f.status == s) for s in ("PASS", "WARN", "FAIL")}
    lines.append(f"{counts['PASS']} passed, {counts['WARN']} warning(s), {counts['FAIL']} failed")
    return "\n".join(lines)


def findings_to_json(findings: Iterable[Finding]) -> list[dict[str, str | None]]:
    """The ``--json`` shape (and the admin API's): a list of {check, status, detail, fix, checked_at}."""
    out: list[dict[str, str | None]] = []
    for f in findings:
        row: dict[str, str | None] = {k: v for k, v in asdict(f).items() if k != "checked_at"}
        row["checked_at"] = f.checked_at.astimezone(UTC).isoformat() if f.checked_at is not None else None
        out.append(row)
    return out


def stamped(findings: Iterable[Finding], at: datetime) -> list[Finding]:
    """The findings with ``checked_at`` set where it is not yet."""
    return [f if f.checked_at is not None else replace(f, checked_at=at) for f in findings]


# -- GDM ----------------------------------------------------------------------------------------


async def check_gdm_multicast(config: Config, *, wait: float = MULTICAST_WAIT) -> list[Finding]:
    """Per configured interface: can a datagram to the GDM group come back to a member socket?"""
    if not config.gdm.enabled:
        return [Finding("gdm", "WARN", "GDM is disabled in the config: controllers will not discover the faces",
                        "set gdm.enabled: true unless controllers find the bridge another way")]
    return [await _multicast_loop(config.gdm.group, interface, wait)
            for interface in (config.interfaces or ("",))]


MDNS_WAIT = 2.0


async def check_mdns(config: Config, bridge: Bridge | None = None, *, wait: float = MDNS_WAIT) -> list[Finding]:
    """Does anything answer mDNS here: Chromecasts (_googlecast._tcp) and Plex servers?

    With a running bridge its own discovery is asked (its one zeroconf); alone, the doctor browses
    for ``wait`` seconds, which sends ordinary mDNS queries and nothing else.
    """
    if not config.mdns.enabled:
        return []
    where = ", ".join(config.interfaces) or "all interfaces"
    if bridge is not None:
        return mdns_from_bridge(config, bridge)
    found: set[tuple[str, str]] = set()
    discovery = MdnsDiscovery(MdnsSettings(enabled=True, interfaces=config.interfaces),
                              lambda s: found.add((s.kind, s.ident)), lambda s: None)
    try:
        await discovery.start()
    except (OSError, CompanionError) as exc:
        return [Finding("mdns", "FAIL", f"cannot listen for mDNS (UDP 5353) on {where}: {exc}",
                        "another program may hold port 5353 without sharing it (avahi shares it); "
                        "or set mdns.enabled: false if you have no Chromecasts")]
    try:
        await asyncio.sleep(wait)  # the browsing window: answers arrive as they come
    finally:
        await discovery.stop()
    casts = sum(1 for kind, _ in found if kind == "chromecast")
    servers = sum(1 for kind, _ in found if kind == "server")
    return [_mdns_finding(where, casts, servers)]


def mdns_from_bridge(config: Config, bridge: Bridge) -> list[Finding]:
    """The mDNS check from a running bridge's own discovery: what its registry holds right now."""
    if not config.mdns.enabled:
        return []
    if bridge.mdns is None:
        return [Finding("mdns", "FAIL", "mDNS discovery is not running", "see the log for why it did not start")]
    casts = sum(1 for t in bridge.registry.targets() if t.kind.value == "chromecast" and t.source == "mdns")
    servers = sum(1 for s in bridge.registry.servers() if s.source == "mdns")
    return [_mdns_finding(", ".join(config.interfaces) or "all interfaces", casts, servers)]


def _mdns_finding(where: str, casts: int, servers: int) -> Finding:
    if casts or servers:
        return Finding("mdns", "PASS", f"{casts} Chromecast(s) and {servers} Plex server(s) answered mDNS on "
                       f"{where}", "")
    return Finding("mdns", "WARN", f"nothing answered mDNS on {where}",
                   "if you have Chromecasts: mDNS (224.0.0.251, UDP 5353) must pass between this host and "
                   "them; Wi-Fi client isolation and containers without host networking block it")


async def _multicast_loop(group: str, interface: str, wait: float) -> Finding:
    where = interface or "the default interface"
    name = f"gdm-multicast ({where})"
    nonce = f"companion-doctor {secrets.token_hex(8)}".encode()
    loop = asyncio.get_running_loop()
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    except OSError as exc:
        return Finding(name, "FAIL", f"cannot open a UDP socket: {exc.strerror or exc}", "check the host's sandbox")
    with sock:
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            if sys.platform == "linux":
                sock.setsockopt(socket.IPPROTO_IP, _IP_MULTICAST_ALL, 0)
            if interface:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
            sock.bind(("0.0.0.0", 0))
            port = int(sock.getsockname()[1])
            if _is_multicast(group):
                membership = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton(interface or "0.0.0.0"))
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        except OSError as exc:
            return Finding(name, "FAIL", f"cannot join the GDM group {group} on {where}: {exc.strerror or exc}",
                           _multicast_fix(interface))
        try:
            await loop.sock_sendto(sock, nonce, (group, port))
        except OSError as exc:
            return Finding(name, "FAIL", f"cannot send to the GDM group {group} on {where}: {exc.strerror or exc}",
                           _multicast_fix(interface))
        try:
            async with asyncio.timeout(wait):
                while True:
                    data, _sender = await loop.sock_recvfrom(sock, 2048)
                    if data == nonce:
                        break
        except TimeoutError:
            return Finding(name, "FAIL",
                           f"a datagram sent to {group}:{port} on {where} did not come back within {wait:g} s",
                           _multicast_fix(interface))
        except OSError as exc:
            return Finding(name, "FAIL", f"receiving on {where} failed: {exc.strerror or exc}",
                           _multicast_fix(interface))
    return Finding(name, "PASS", f"sent to the GDM group {group} on {where} and received it back", "")


def _is_multicast(group: str) -> bool:
    try:
        return 224 <= int(group.split(".")[0]) <= 239
    except ValueError:
        return False


def _multicast_fix(interface: str) -> str:
    route = f"the interface with address {interface}" if interface else "the default interface"
    return (f"make sure {route} is up and has a multicast route (`ip route show 224.0.0.0/4`), that a "
            "firewall accepts UDP to 239.0.0.250 ports 32412-32414, and that `interfaces:` lists this "
            "host's LAN address")


# -- ports --------------------------------------------------------------------------------------


def check_ports(config: Config, *, own: Collection[int] = ()) -> list[Finding]:
    """Face ports (face_port_base .. +N) and the admin port: free, or held by this bridge (``own``)."""
    bind = config.http.bind
    count = max(1, len(config.targets))
    wanted = [(f"face port {p}", p, "http.face_port_base")
              for p in range(config.http.face_port_base, config.http.face_port_base + count)]
    if config.http.admin_port:
        wanted.append((f"admin port {config.http.admin_port}", config.http.admin_port, "http.admin_port"))
    busy: list[str] = []
    ours: list[int] = []
    for label, port, key in wanted:
        if port in own:
            ours.append(port)
            continue
        problem = _bind_problem(bind, port)
        if problem is not None:
            busy.append(f"{label} on {bind}: {problem} (config key {key})")
    if busy:
        return [Finding("ports", "FAIL", "; ".join(busy),
                        "stop the program holding the port (find it with `ss -ltnp`), or move the bridge to "
                        "free ports with http.face_port_base / http.admin_port")]
    free = [str(p) for _, p, _ in wanted if p not in ours]
    parts = ([f"TCP port(s) {', '.join(free)} on {bind} are free"] if free else []) + (
        [f"port(s) {', '.join(str(p) for p in ours)} are held by this bridge"] if ours else [])
    return [Finding("ports", "PASS", "; ".join(parts), "")]


def _bind_problem(bind: str, port: int) -> str | None:
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As the server will: SO_REUSEADDR ignores connections lingering in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((bind, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "in use by another program"
            if exc.errno == errno.EADDRNOTAVAIL:
                return "http.bind is not an address of this host"
            return exc.strerror or str(exc)
    return None


# -- DNS ----------------------------------------------------------------------------------------


def _resolver(text: str | None) -> tuple[str, int] | None:
    from companion.flinging import parse_resolver

    return parse_resolver(text)


async def check_dns(config: Config, servers: Sequence[KnownServer], *, timeout: float = DNS_TIMEOUT) -> list[Finding]:
    """Does the LAN resolver answer plex.direct names for private addresses (no rebinding strip)?"""
    if not config.security.dns_check:
        return [Finding("dns", "WARN", "the plex.direct DNS check is disabled (security.dns_check: false)",
                        "set security.dns_check: true so that stripped plex.direct answers are caught")]
    resolver = _resolver(config.security.resolver)
    names: list[tuple[str, str, str]] = [
        ("synthetic name", plexdirect.build_name(SYNTHETIC_ADDRESS, SYNTHETIC_HASH), SYNTHETIC_ADDRESS)]
    for server in servers:
        if server.hash is None:
            continue
        with contextlib.suppress(ProtocolError):
            names.append((server.label, plexdirect.build_name(server.address, server.hash), server.address))
    results = await asyncio.gather(*(check_plex_direct(name, address, resolver=resolver, timeout=timeout)
                                     for _, name, address in names))
    findings: list[Finding] = []
    for (label, _name, _address), facts in zip(names, results, strict=True):
        check = f"dns ({label})"
        if facts.outcome == "ok":
            findings.append(Finding(check, "PASS", facts.detail, ""))
        elif facts.outcome == "stripped":
            findings.append(Finding(check, "FAIL", facts.detail.split(". Fix:")[0], _dns_fix()))
        elif facts.outcome == "wrong-address":
            findings.append(Finding(check, "FAIL", facts.detail,
                                    "remove the local override for plex.direct names from the router's DNS"))
        else:
            findings.append(Finding(check, "WARN", facts.detail,
                                    "set security.resolver to the resolver your players use (usually the "
                                    "router), so the check asks the same one"))
    return findings


def _dns_fix() -> str:
    return DNS_REBIND_FIX.removeprefix("Fix: ")


# -- servers and chains -------------------------------------------------------------------------


def servers_from(config: Config, server_url: str | None, bridge: Bridge | None) -> list[KnownServer]:
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
    except ValueError:
        raise ConfigError(f"--server: bad port in {url!r}") from None
    host = parts.hostname
    try:
        parsed = plexdirect.parse_name(host)
    except ProtocolError:
        return KnownServer(f"{host}:{port}", host, port)
    return KnownServer(f"{host}:{port}", parsed.address, port, parsed.hash)


async def _facts(server: KnownServer, bridge: Bridge | None, timeout: float) -> ServerFacts:
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


def target_profiles(config: Config, profiles: ProfileSet, bridge: Bridge | None) -> set[str]:
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


NO_SERVER_FINDING = Finding("chain", "WARN", "no Plex server is known, so no certificate chain was checked",
                            "give --server https://<server ip>:32400, or list it under servers: in the config")


# -- where each face is visible -----------------------------------------------------------------


def visibility_findings(faces: Iterable[tuple[str, Sequence[dict[str, object]]]]) -> list[Finding]:
    """One finding per face from its ``visible`` views (as /api/targets gives them): PASS when every
    channel reaches it, WARN naming each channel that does not, with its fix."""
    findings: list[Finding] = []
    for name, views in faces:
        seen = [f"{v.get('channel')}" + (f" ({v.get('where')})" if v.get("where") else "")
                for v in views if v.get("visible")]
        missing = [v for v in views if not v.get("visible") and v.get("state") != "off"]
        check = f"visible ({name})"
        where = ", ".join(seen) or "nowhere"
        if not missing:
            findings.append(Finding(check, "PASS", f"visible through {where}", ""))
            continue
        gaps = "; ".join(f"{v.get('channel')}" + (f" ({v.get('where')})" if v.get("where") else "")
                         + f": {v.get('detail')}" for v in missing)
        fixes = "; ".join(dict.fromkeys(str(v.get("fix")) for v in missing if v.get("fix")))
        findings.append(Finding(check, "WARN" if seen else "FAIL", f"visible through {where}; not through {gaps}",
                                fixes))
    return findings


def visibility_from_daemon(config: Config, *, timeout: float = 2.0) -> list[Finding]:
    """Where each face is visible, asked of the daemon running on this host (its admin API on loopback)."""
    import urllib.error
    import urllib.request

    if not config.http.admin_port:
        return [Finding("visible", "WARN", "the admin port is off (http.admin_port: 0), so where each face is "
                        "visible cannot be asked of the running daemon", "set http.admin_port")]
    url = f"http://127.0.0.1:{config.http.admin_port}/api/targets"
    try:
        # Loopback only, to our own admin API; no proxy may be involved.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=timeout) as resp:
            rows = json.loads(resp.read(4 * 1024 * 1024))
    except (OSError, urllib.error.URLError, ValueError):
        return [Finding("visible", "WARN", f"no daemon answered on {url}: where each face is visible is known "
                        "only to the running daemon", "start it (`systemctl start companion-bridge`)")]
    faces = [(str(r.get("face", {}).get("name") or r.get("name")), [v for v in r.get("visible", [])
                                                                     if isinstance(v, dict)])
             for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []
    return visibility_findings(faces) or [Finding("visible", "WARN", "the daemon has no faces yet",
                                                  "see `companion scan` for the players it can find")]




# -- plex.tv ------------------------------------------------------------------------------------


async def check_plextv(config: Config) -> list[Finding]:
    """What plex.tv itself lists: is the account linked, and is every face a player with its LAN connection?

    The doctor asks plex.tv with the account token (plex.tv calls only): the account, then the
    resources list the Plex apps read, looking for every face this bridge ever had. (The running
    daemon's own view of each face's plex.tv channel is in the ``visible`` findings.)
    """
    from companion.errors import PlexTvError, PlexTvUnauthorized
    from companion.plextv.api import PlexTvApi
    from companion.plextv.devices import FIX_LINK, FIX_RELINK
    from companion.plextv.link import bridge_identity
    from companion.plextv.store import PlexTvStore
    from companion.state import StateDir

    if not config.plextv.enabled:
        return []
    not_linked = Finding("plextv", "WARN", "no Plex account is linked: the faces are not plex.tv devices, so Plex "
                         "apps that list only plex.tv players (Plexamp, recent mobile apps) do not show them",
                         FIX_LINK)
    store = PlexTvStore(config.state_path)
    try:
        token = store.load()
    except CompanionError as exc:
        return [Finding("plextv", "FAIL", str(exc), FIX_RELINK)]
    if token is None:
        return [not_linked]
    state = StateDir(config.state_path)
    identity = bridge_identity(config, state.bridge_id())
    records = store.devices()
    from companion.proto.gdm import face_identifier

    wanted = {face_identifier(t): "" for t in state.face_ports()} | {k: r.name for k, r in records.items()}
    async with PlexTvApi(config.plextv.url, timeout=HTTP_TIMEOUT * 2) as api:
        try:
            account = await api.user(identity, token)
            resources = await api.resources(identity, token)
        except PlexTvUnauthorized as exc:
            return [Finding("plextv", "FAIL", f"plex.tv rejects the account token: {exc}", FIX_RELINK)]
        except PlexTvError as exc:
            return [Finding("plextv", "WARN", f"cannot ask plex.tv: {exc}",
                            f"check that this host reaches {config.plextv.url}")]
    findings = [Finding("plextv", "PASS", f"linked to the Plex account {account.name!r}", "")]
    listed = {r.client_identifier: r for r in resources}
    for ident, name in sorted(wanted.items(), key=lambda kv: kv[1] or kv[0]):
        resource = listed.get(ident)
        label = f"plextv ({name or (resource.name if resource else ident)})"
        if resource is not None and "player" in resource.provides and resource.connections:
            findings.append(Finding(label, "PASS", f"the Plex apps see it as a player at "
                                    f"{', '.join(resource.connections)}", ""))
        else:
            why = "not in the account's resources" if resource is None else "listed, but not as a player with a " \
                                                                            "connection"
            findings.append(Finding(label, "WARN", f"{why}: the Plex apps that read plex.tv do not list it",
                                    "start the daemon (it registers every face); if it runs, its log says what "
                                    "plex.tv answered (lines starting with companion.plextv)"))
    return findings


# -- the whole run ------------------------------------------------------------------------------


async def run_doctor(config: Config, *, server_url: str | None = None, bridge: Bridge | None = None,
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
            probed.append((server, await _facts(server, bridge, config.timeouts.command), None))
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


__all__ = ["Finding", "KnownServer", "exit_code", "findings_to_json", "format_findings",
           "parse_server_url", "run_doctor"]
