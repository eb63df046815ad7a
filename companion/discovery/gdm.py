"""GDM sockets: the responder that answers searches for our faces and announces them, the scanner
that finds Plex players and servers, and the one-shot :func:`scan` behind ``companion scan``.

The wire format lives in :mod:`companion.proto.gdm`; this module only owns sockets and tasks.
Every socket is non-blocking (asyncio datagram endpoints) and every task is named, tracked and
awaited on stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import cast

import ifaddr

from companion.errors import ConfigError, ProtocolError
from companion.limits import SourceRateLimit, ThrottledLog
from companion.model import Sighting
from companion.proto.gdm import (
    MAX_DATAGRAM,
    Advert,
    GdmMessage,
    encode_bye,
    encode_hello,
    encode_reply,
    encode_search,
    parse,
    sighting_from_message,
)

logger = logging.getLogger("companion.gdm")

# Linux constant; Python 3.11 does not export it. With it cleared a socket receives only the groups
# it joined itself on the interfaces it joined them on, which is what keeps the per-interface
# listeners from all answering the same multicast search.
_IP_MULTICAST_ALL = getattr(socket, "IP_MULTICAST_ALL", 49)
# GDM never crosses a router (research 1.6), so multicast stays on the link.
_MULTICAST_TTL = 1
_DROP_LOG_INTERVAL = 60.0

Address = tuple[str, int]


@dataclass(frozen=True)
class GdmSettings:
    """Where GDM is spoken. ``interfaces`` are IPv4 addresses of local interfaces; empty means one
    listener on 0.0.0.0 joined through INADDR_ANY. A ``group`` that is not multicast (a broadcast
    or unicast address) is sent to but never joined."""

    group: str = "239.0.0.250"
    player_port: int = 32412
    announce_port: int = 32413
    server_port: int = 32414
    hello_interval: float = 30.0
    search_interval: float = 10.0
    interfaces: tuple[str, ...] = ()
    # One 23-byte search draws one ~300-byte reply per face, to a source address anyone can spoof:
    # the replies to one search are capped, and searches are answered per source at a rate.
    replies_per_search: int = 32
    search_rate: float = 1.0
    search_burst: int = 5
    search_rate_total: float = 20.0

    @property
    def is_multicast(self) -> bool:
        try:
            return ipaddress.IPv4Address(self.group).is_multicast
        except ValueError:
            raise ConfigError(f"expected an IPv4 address, got {self.group!r}", key="gdm.group") from None


class _DropLog:
    """One line per dropped datagram, but at most one WARNING a minute: a flood of garbage from
    the LAN must not fill the logs. The rest go to DEBUG and are counted in the next warning."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._last: float | None = None
        self._suppressed = 0

    def note(self, now: float, sender: Address, reason: str) -> None:
        if self._last is None or now - self._last >= _DROP_LOG_INTERVAL:
            also = f" ({self._suppressed} more dropped since the last warning)" if self._suppressed else ""
            logger.warning("%s: dropped GDM datagram from %s:%d: %s%s",
                           self._what, sender[0], sender[1], reason, also)
            self._last = now
            self._suppressed = 0
        else:
            self._suppressed += 1
            logger.debug("%s: dropped GDM datagram from %s:%d: %s", self._what, sender[0], sender[1], reason)


LocalNetwork = tuple[int, ipaddress.IPv4Interface]  # (interface index, address/prefix)


def implausible_source(sender: str, networks: Sequence[ipaddress.IPv4Interface], where: str) -> str:
    """Why a sighting from ``sender`` cannot be genuine when it arrived on an interface with
    ``networks`` (``where`` names that interface in the reason), or "".

    A player or server answers from an address on the link the datagram arrived on. A source that
    is not (a multicast, broadcast or off-link address, or another interface's network) is
    spoofed, and the bridge would otherwise send commands wherever it points (issue 12 row 9).
    """
    try:
        ip = ipaddress.IPv4Address(sender)
    except ValueError:
        return f"source {sender!r} is not an IPv4 address"
    if ip.is_multicast or ip.is_unspecified or ip == ipaddress.IPv4Address("255.255.255.255"):
        return f"source {sender} is not a unicast address"
    for net in networks:
        if ip in net.network and (net.network.prefixlen >= 31 or ip != net.network.broadcast_address):
            return ""
    return f"source {sender} is not on the network of {where} ({', '.join(str(n.network) for n in networks) or 'none'})"


def arrival_networks(local: Sequence[LocalNetwork], ifindex: int | None,
                     interface: str) -> tuple[list[ipaddress.IPv4Interface], str]:
    """The networks of the interface a datagram arrived on, and its name for a log line.

    By the kernel's word (IP_PKTINFO) when it gave one; else by the configured interface address
    the socket listens for; else every local network (a source on some link of this host).
    """
    if ifindex is not None:
        return [n for i, n in local if i == ifindex], f"interface #{ifindex}"
    if interface:
        nets = [n for _, n in local if str(n.ip) == interface]
        if nets:
            return nets, f"interface {interface}"
    return [n for _, n in local], "any interface"


_NETWORKS_TTL = 30.0  # DHCP renewals and new interfaces are picked up this quickly
_NETWORKS_RETRY = 1.0  # an interface not in the cache yet: read again, at most this often


def local_networks() -> list[LocalNetwork]:
    """The IPv4 address and network of every local interface (through ifaddr, zeroconf's own helper)."""
    found: list[LocalNetwork] = []
    for adapter in ifaddr.get_adapters():
        for address in adapter.ips:
            if isinstance(address.ip, str):
                found.append((adapter.index or 0, ipaddress.IPv4Interface(f"{address.ip}/{address.network_prefix}")))
    return found


# Linux's IP_PKTINFO, which Python does not export: each datagram then comes with the index of the
# interface it arrived on (struct in_pktinfo: int ipi_ifindex, then two addresses).
_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_PKTINFO_SPACE = socket.CMSG_SPACE(12)
_READS_PER_WAKEUP = 64


class _ArrivalEndpoint:
    """A bound UDP socket read with ``recvmsg``, so every datagram comes with its arrival interface.

    Same surface as :class:`_Endpoint` (label, interface, send, close, local_address); asyncio's
    datagram transport cannot hand over ancillary data, so this one reads the socket itself.
    """

    def __init__(self, label: str, interface: str, sock: socket.socket,
                 on_datagram: Callable[[_ArrivalEndpoint, bytes, Address, int | None], None]) -> None:
        self.label = label
        self.interface = interface
        self._sock = sock
        self._on_datagram = on_datagram
        self._loop = asyncio.get_running_loop()
        if sys.platform == "linux":
            sock.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
        self._loop.add_reader(sock.fileno(), self._read)

    def _read(self) -> None:
        for _ in range(_READS_PER_WAKEUP):  # then the loop serves others and comes back
            try:
                # One byte over the limit is enough for the parser to refuse an oversize datagram.
                data, ancillary, _flags, addr = self._sock.recvmsg(MAX_DATAGRAM + 1, _PKTINFO_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                logger.debug("%s: socket error: %s", self.label, exc)
                return
            ifindex = None
            for level, kind, cdata in ancillary:
                if level == socket.IPPROTO_IP and kind == _IP_PKTINFO and len(cdata) >= 4:
                    ifindex = int(struct.unpack("@i", cdata[:4])[0])
            sender = (str(addr[0]), int(addr[1]))
            try:
                self._on_datagram(self, data, sender, ifindex)
            except Exception:
                logger.exception("%s: handling a datagram from %s:%d failed", self.label, *sender)

    @property
    def local_address(self) -> Address:
        host, port = self._sock.getsockname()[:2]
        return (str(host), int(port))

    def send(self, data: bytes, to: Address) -> None:
        if self._sock.fileno() < 0:
            return
        try:
            self._sock.sendto(data, to)
        except OSError as exc:  # a full buffer included: a search is repeated anyway
            logger.debug("%s: cannot send to %s:%d: %s", self.label, to[0], to[1], exc)

    async def close(self) -> None:
        if self._sock.fileno() >= 0:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()


class _Endpoint(asyncio.DatagramProtocol):
    """One bound UDP socket and what to do with each datagram it receives."""

    def __init__(self, label: str, interface: str, on_datagram: Callable[[_Endpoint, bytes, Address], None]):
        self.label = label
        self.interface = interface
        self._on_datagram = on_datagram
        self._transport: asyncio.DatagramTransport | None = None
        self._closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport does not subclass DatagramTransport in 3.11.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        sender = (addr[0], addr[1])
        try:
            self._on_datagram(self, data, sender)
        except Exception:
            # A bug in a callback must not take the listener down with it.
            logger.exception("%s: handling a datagram from %s:%d failed", self.label, *sender)

    def error_received(self, exc: Exception) -> None:
        # ICMP port-unreachable after a reply to a searcher that already left; nothing to do.
        logger.debug("%s: socket error: %s", self.label, exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closed.done():
            self._closed.set_result(None)

    @property
    def local_address(self) -> Address:
        assert self._transport is not None
        host, port = self._transport.get_extra_info("sockname")[:2]
        return (str(host), int(port))

    def send(self, data: bytes, to: Address) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        try:
            self._transport.sendto(data, to)
        except OSError as exc:
            logger.debug("%s: cannot send to %s:%d: %s", self.label, to[0], to[1], exc)

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()  # flushes datagrams still queued (the BYEs) before closing
            await self._closed


def _udp_socket(settings: GdmSettings, interface: str, bind: Address, *,
                shared: bool, join: bool) -> socket.socket:
    """A bound, non-blocking UDP socket; joined to the group on ``interface`` when asked to."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if shared:
            # Another Plex app or server on this host may hold the same port (PMP #70).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "SO_REUSEPORT"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, _MULTICAST_TTL)
        if sys.platform == "linux":
            sock.setsockopt(socket.IPPROTO_IP, _IP_MULTICAST_ALL, 0)
        if interface:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
        try:
            sock.bind(bind)
        except OSError as exc:
            raise ConfigError(f"cannot listen on UDP {bind[0]}:{bind[1]}: {exc.strerror or exc}",
                              key="gdm") from None
        if join and settings.is_multicast:
            membership = struct.pack("4s4s", socket.inet_aton(settings.group),
                                     socket.inet_aton(interface or "0.0.0.0"))
            try:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
            except OSError as exc:
                # As Music Assistant does: carry on, broadcast and unicast searches still arrive.
                logger.warning("cannot join GDM group %s on %s: %s; multicast searches will be missed",
                               settings.group, interface or "the default interface", exc.strerror or exc)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def _open(label: str, interface: str, sock: socket.socket,
                on_datagram: Callable[[_Endpoint, bytes, Address], None]) -> _Endpoint:
    loop = asyncio.get_running_loop()
    try:
        _, endpoint = await loop.create_datagram_endpoint(
            lambda: _Endpoint(label, interface, on_datagram), sock=sock)
    except BaseException:
        sock.close()
        raise
    return endpoint


def _arrival_endpoint(label: str, interface: str, sock: socket.socket,
                      on_datagram: Callable[[_ArrivalEndpoint, bytes, Address, int | None], None]) -> _ArrivalEndpoint:
    try:
        return _ArrivalEndpoint(label, interface, sock, on_datagram)
    except BaseException:
        sock.close()
        raise


def _interfaces(settings: GdmSettings) -> tuple[str, ...]:
    """The interfaces to listen on ("" = all), after checking the addresses in ``settings``."""
    settings.is_multicast  # noqa: B018  # raises ConfigError for a group that is no IPv4 address
    for address in settings.interfaces:
        try:
            ipaddress.IPv4Address(address)
        except ValueError:
            raise ConfigError(f"expected an IPv4 interface address, got {address!r}",
                              key="interfaces") from None
    return settings.interfaces or ("",)


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class GdmResponder:
    """Answers M-SEARCH for every face and announces faces with HELLO and BYE.

    One listener per interface on ``player_port``; each search gets one datagram per advert,
    unicast to the searcher from the listening socket (strict clients ignore replies from other
    source ports, per Music Assistant). Several faces behind one reply would collapse into one
    device, so each advert carries its own Resource-Identifier and Port.

    Each listener binds 0.0.0.0 (a socket bound to an interface address hears no multicast) and
    hears only the group on its own interface. A broadcast search reaches every listener, so with
    several interfaces configured it is answered once per interface; controllers de-duplicate
    on Resource-Identifier, so that costs only datagrams.
    """

    def __init__(self, settings: GdmSettings, adverts: Callable[[], Sequence[Advert]]) -> None:
        self._settings = settings
        self._adverts = adverts
        self._endpoints: list[_Endpoint] = []
        self._hello_task: asyncio.Task[None] | None = None
        self._drops = _DropLog("gdm responder")
        self._answering = False
        self._searches = SourceRateLimit(settings.search_rate, settings.search_burst,
                                         total_rate=settings.search_rate_total)
        self._next = 0  # where the next capped answer starts, so every face is answered in turn
        self._limited = ThrottledLog(logger)
        self.searches_answered = 0
        self.searches_refused = 0
        # For the status page (where each face is visible): wall-clock times, None until it happens.
        self.last_hello_at: float | None = None
        self.last_search_at: float | None = None

    @property
    def bound_ports(self) -> list[Address]:
        """The (address, port) of every listener, for tests and ``companion doctor``."""
        return [endpoint.local_address for endpoint in self._endpoints]

    async def start(self) -> None:
        if self._endpoints:
            raise RuntimeError("GdmResponder already started")
        try:
            for interface in _interfaces(self._settings):
                sock = _udp_socket(self._settings, interface, ("0.0.0.0", self._settings.player_port),
                                   shared=True, join=True)
                label = f"gdm responder on {interface or 'all interfaces'}"
                self._endpoints.append(await _open(label, interface, sock, self._on_datagram))
        except BaseException:
            await self._close_endpoints()
            raise
        self._answering = True
        logger.info("GDM responder listening on UDP %d (%s)", self._settings.player_port,
                    ", ".join(self._settings.interfaces) or "all interfaces")
        self._announce(encode_hello, self._current_adverts())
        if self._settings.hello_interval > 0:
            self._hello_task = asyncio.create_task(self._hello_loop(), name="gdm-hello")

    async def hello(self, advert: Advert) -> None:
        """Announce a face that was just added."""
        self._announce(encode_hello, [advert])

    async def bye(self, advert: Advert) -> None:
        """Say goodbye for a face that went away."""
        self._announce(encode_bye, [advert])

    async def stop(self) -> None:
        """BYE for every current face, then close: no reply or HELLO can follow the BYE."""
        was_answering, self._answering = self._answering, False
        await _cancel(self._hello_task)
        self._hello_task = None
        if was_answering:
            self._announce(encode_bye, self._current_adverts())
        await self._close_endpoints()

    async def _close_endpoints(self) -> None:
        endpoints, self._endpoints = self._endpoints, []
        for endpoint in endpoints:
            await endpoint.close()

    async def _hello_loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.hello_interval)
            self._announce(encode_hello, self._current_adverts())

    def _current_adverts(self) -> Sequence[Advert]:
        try:
            return list(self._adverts())
        except Exception:
            logger.exception("listing the faces to advertise failed")
            return []

    def _announce(self, encode: Callable[[Advert], bytes], adverts: Iterable[Advert]) -> None:
        destination = (self._settings.group, self._settings.announce_port)
        if encode is encode_hello and self._endpoints:
            self.last_hello_at = time.time()
        for advert in adverts:
            try:
                payload = encode(advert)
            except ProtocolError as exc:
                logger.error("cannot announce face %r: %s", advert.name, exc)
                continue
            for endpoint in self._endpoints:
                endpoint.send(payload, destination)

    def _on_datagram(self, endpoint: _Endpoint, data: bytes, sender: Address) -> None:
        if not self._answering:
            return
        try:
            message = parse(data)
        except ProtocolError as exc:
            self._drops.note(asyncio.get_running_loop().time(), sender, str(exc))
            return
        if message.kind != "search":
            return  # other players' HELLOs and replies are not addressed to us
        now = asyncio.get_running_loop().time()
        if not self._searches.allow(sender[0], now):
            self.searches_refused += 1
            self._limited.log("rate", now, logging.WARNING, "%s: not answering M-SEARCH from %s:%d: more than "
                              "%g per second from that address or %g from all (limits.gdm_search_rate)",
                              endpoint.label, sender[0], sender[1], self._settings.search_rate,
                              self._settings.search_rate_total)
            return
        self.last_search_at = time.time()
        self.searches_answered += 1
        adverts = self._current_adverts()
        cap = self._settings.replies_per_search
        if len(adverts) > cap:
            # Faces take turns: controllers search again every few seconds and keep what they saw.
            self._limited.log("cap", now, logging.INFO, "%s: %d faces, answering searches with %d at a time "
                              "(limits.gdm_replies_per_search)", endpoint.label, len(adverts), cap)
            adverts = _rotated(adverts, cap, self._next)
            self._next += cap
        for advert in adverts:
            try:
                endpoint.send(encode_reply(advert), sender)
            except ProtocolError as exc:
                logger.error("cannot answer for face %r: %s", advert.name, exc)


def _rotated(adverts: Sequence[Advert], cap: int, start: int) -> list[Advert]:
    """``cap`` adverts from ``start`` onwards, wrapping around."""
    start %= len(adverts)
    return [*adverts[start:], *adverts[:start]][:cap]


class GdmScanner:
    """Finds Plex players and servers: periodic M-SEARCH plus the HELLO/BYE announcements.

    Replies and HELLOs whose Resource-Identifier ``is_own`` (our own faces, heard through
    multicast loopback) are ignored.
    """

    def __init__(self, settings: GdmSettings, on_sighting: Callable[[Sighting], None],
                 on_bye: Callable[[Sighting], None] | None = None, *,
                 is_own: Callable[[str], bool] = lambda ident: False,
                 networks: Callable[[], Sequence[LocalNetwork]] = local_networks) -> None:
        """``networks``: the local interfaces' networks, against which a sighting's source must fit."""
        self._settings = settings
        self._read_networks = networks
        self._networks: Sequence[LocalNetwork] = ()
        self._networks_at = -_NETWORKS_TTL
        self._on_sighting = on_sighting
        self._on_bye = on_bye
        self._is_own = is_own
        self._searchers: list[_ArrivalEndpoint] = []
        self._listeners: list[_ArrivalEndpoint] = []
        self._search_task: asyncio.Task[None] | None = None
        self._drops = _DropLog("gdm scanner")
        self._running = False

    @property
    def bound_ports(self) -> list[Address]:
        """The (address, port) of every search socket and announcement listener."""
        return [endpoint.local_address for endpoint in (*self._searchers, *self._listeners)]

    async def start(self) -> None:
        if self._running:
            raise RuntimeError("GdmScanner already started")
        try:
            for interface in _interfaces(self._settings):
                where = interface or "all interfaces"
                sock = _udp_socket(self._settings, interface, (interface or "0.0.0.0", 0),
                                   shared=False, join=False)
                self._searchers.append(_arrival_endpoint(f"gdm search on {where}", interface, sock, self._on_reply))
                try:
                    sock = _udp_socket(self._settings, interface, ("0.0.0.0", self._settings.announce_port),
                                       shared=True, join=True)
                except ConfigError as exc:
                    # Searching still finds everyone; announcements only make players appear sooner.
                    logger.warning("%s; HELLO/BYE from players will be missed", exc)
                    continue
                self._listeners.append(
                    _arrival_endpoint(f"gdm announcements on {where}", interface, sock, self._on_announcement))
        except BaseException:
            await self._close_endpoints()
            raise
        self._running = True
        self._search_task = asyncio.create_task(self._search_loop(), name="gdm-search")

    async def search_once(self) -> None:
        """Ask every player and server on the link to answer now."""
        payload = encode_search()
        for port in (self._settings.player_port, self._settings.server_port):
            for endpoint in self._searchers:
                endpoint.send(payload, (self._settings.group, port))

    async def stop(self) -> None:
        self._running = False
        await _cancel(self._search_task)
        self._search_task = None
        await self._close_endpoints()

    async def _close_endpoints(self) -> None:
        endpoints = [*self._searchers, *self._listeners]
        self._searchers, self._listeners = [], []
        for endpoint in endpoints:
            await endpoint.close()

    async def _search_loop(self) -> None:
        while True:
            await self.search_once()
            await asyncio.sleep(self._settings.search_interval)

    def _sighting(self, endpoint: _ArrivalEndpoint, data: bytes, sender: Address,
                  ifindex: int | None) -> tuple[GdmMessage, Sighting] | None:
        try:
            message = parse(data)
            if message.kind == "search":
                return None  # another controller searching; not for the scanner
            sighting = sighting_from_message(message, sender[0], interface=endpoint.interface)
        except ProtocolError as exc:
            self._drops.note(asyncio.get_running_loop().time(), sender, str(exc))
            return None
        now = asyncio.get_running_loop().time()
        if now - self._networks_at >= _NETWORKS_TTL:
            self._networks, self._networks_at = list(self._read_networks()), now
        nets, where = arrival_networks(self._networks, ifindex, endpoint.interface)
        if not nets and now - self._networks_at >= _NETWORKS_RETRY:  # an interface newer than the cache
            self._networks, self._networks_at = list(self._read_networks()), now
            nets, where = arrival_networks(self._networks, ifindex, endpoint.interface)
        why = implausible_source(sender[0], nets, where)
        if why:
            self._drops.note(now, sender, why)
            return None
        if self._is_own(sighting.ident):
            return None
        return message, sighting

    def _on_reply(self, endpoint: _ArrivalEndpoint, data: bytes, sender: Address, ifindex: int | None) -> None:
        if not self._running:
            return
        found = self._sighting(endpoint, data, sender, ifindex)
        if found is not None and found[0].kind == "reply":
            self._on_sighting(found[1])

    def _on_announcement(self, endpoint: _ArrivalEndpoint, data: bytes, sender: Address,
                         ifindex: int | None) -> None:
        if not self._running:
            return
        found = self._sighting(endpoint, data, sender, ifindex)
        if found is None:
            return
        message, sighting = found
        if message.kind == "hello":
            self._on_sighting(sighting)
        elif message.kind == "bye" and self._on_bye is not None:
            self._on_bye(sighting)


# The timeout is the collection window, not a deadline to cancel on, hence the plain parameter.
async def scan(settings: GdmSettings, timeout: float) -> list[Sighting]:
    """Search once for players and servers and return what answered within ``timeout`` seconds,
    one sighting per (kind, Resource-Identifier), first answer kept."""
    found: dict[tuple[str, str], Sighting] = {}

    def keep(sighting: Sighting) -> None:
        found.setdefault((sighting.kind, sighting.ident), sighting)

    scanner = GdmScanner(settings, keep)
    await scanner.start()
    try:
        await asyncio.sleep(timeout)
    finally:
        await scanner.stop()
    return list(found.values())
