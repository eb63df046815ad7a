"""The doctor's checks of this host's LAN side: GDM multicast, mDNS, the face and admin ports, plex.direct DNS.

Every network step is bounded by a timeout; what is sent is a nonce to our own multicast socket,
ordinary mDNS queries and DNS questions for plex.direct names.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import secrets
import socket
import struct
import sys
from collections.abc import Collection, Sequence

from companion.bridge_view import BridgeView
from companion.config import Config
from companion.discovery.mdns import MdnsDiscovery, MdnsSettings
from companion.doctor.findings import Finding, KnownServer
from companion.errors import CompanionError, ProtocolError
from companion.proto import plexdirect
from companion.security.dnscheck import check_plex_direct
from companion.security.facts import DNS_REBIND_FIX

MULTICAST_WAIT = 1.0
DNS_TIMEOUT = 2.0

# A private LAN address under a made-up hash: what a stripping resolver drops, whatever server
# exists. Plex's DNS answers any hash, so a resolver that passes plex.direct answers this too.
SYNTHETIC_ADDRESS = "192.168.1.10"
SYNTHETIC_HASH = "0123456789abcdef0123456789abcdef"
_IP_MULTICAST_ALL = getattr(socket, "IP_MULTICAST_ALL", 49)


# -- GDM ----------------------------------------------------------------------------------------


async def check_gdm_multicast(config: Config, *, wait: float = MULTICAST_WAIT) -> list[Finding]:
    """Per configured interface: can a datagram to the GDM group come back to a member socket?"""
    if not config.gdm.enabled:
        return [Finding("gdm", "WARN", "GDM is disabled in the config: controllers will not discover the faces",
                        "set gdm.enabled: true unless controllers find the bridge another way")]
    return [await _multicast_loop(config.gdm.group, interface, wait)
            for interface in (config.interfaces or ("",))]


MDNS_WAIT = 2.0


async def check_mdns(config: Config, bridge: BridgeView | None = None, *, wait: float = MDNS_WAIT) -> list[Finding]:
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


def mdns_from_bridge(config: Config, bridge: BridgeView) -> list[Finding]:
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


__all__ = ["check_dns", "check_gdm_multicast", "check_mdns", "check_ports", "mdns_from_bridge"]
