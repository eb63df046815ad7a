"""GDM on the network: the responder that answers searches for our faces and announces them, the
scanner that finds Plex players and servers, and the one-shot :func:`scan` behind ``companion scan``.

The wire format lives in :mod:`companion.proto.gdm` and the socket plumbing in
:mod:`companion.discovery.gdm_sockets`; this module owns the sockets and tasks. Every socket is
non-blocking and every task is named, tracked and awaited on stop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable, Sequence

import ifaddr

from companion.config import GdmConfig, LimitsConfig
from companion.discovery.gdm_sockets import (
    Address,
    ArrivalEndpoint,
    Endpoint,
    cancel,
    listen_interfaces,
    open_arrival_endpoint,
    open_endpoint,
    udp_socket,
)
from companion.errors import ConfigError, ProtocolError
from companion.limits import SourceRateLimit, ThrottledLog
from companion.model import Sighting
from companion.proto.gdm import (
    Advert,
    GdmMessage,
    encode_bye,
    encode_hello,
    encode_reply,
    encode_search,
    parse,
    sighting_from_message,
)

logger = logging.getLogger(__name__)

_DROP_LOG_INTERVAL = 60.0


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

    def __init__(self, config: GdmConfig, adverts: Callable[[], Sequence[Advert]], *,
                 interfaces: Sequence[str] = (), limits: LimitsConfig | None = None) -> None:
        """``interfaces``: IPv4 addresses of local interfaces to listen on (empty: one listener on
        0.0.0.0 joined through INADDR_ANY); ``limits``: the ``limits.gdm_*`` bounds on answers."""
        self._config = config
        self._interfaces = tuple(interfaces)
        self._limits = limits = limits or LimitsConfig()
        self._adverts = adverts
        self._endpoints: list[Endpoint] = []
        self._hello_task: asyncio.Task[None] | None = None
        self._drops = _DropLog("gdm responder")
        self._answering = False
        # One 23-byte search draws one ~300-byte reply per face, to a source address anyone can spoof:
        # the replies to one search are capped, and searches are answered per source at a rate.
        self._searches = SourceRateLimit(limits.gdm_search_rate, limits.gdm_search_burst,
                                         total_rate=limits.gdm_search_rate_total)
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
        """Listen on every interface, announce the faces (HELLO) and start repeating the HELLOs."""
        if self._endpoints:
            raise RuntimeError("GdmResponder already started")
        try:
            for interface in listen_interfaces(self._config.group, self._interfaces):
                sock = udp_socket(self._config.group, interface, ("0.0.0.0", self._config.player_port),
                                  shared=True, join=True)
                label = f"gdm responder on {interface or 'all interfaces'}"
                self._endpoints.append(await open_endpoint(label, interface, sock, self._on_datagram))
        except BaseException:
            await self._close_endpoints()
            raise
        self._answering = True
        logger.info("GDM responder listening on UDP %d (%s)", self._config.player_port,
                    ", ".join(self._interfaces) or "all interfaces")
        self._announce(encode_hello, self._current_adverts())
        if self._config.hello_interval > 0:
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
        await cancel(self._hello_task)
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
            await asyncio.sleep(self._config.hello_interval)
            self._announce(encode_hello, self._current_adverts())

    def _current_adverts(self) -> Sequence[Advert]:
        try:
            return list(self._adverts())
        except Exception:
            logger.exception("listing the faces to advertise failed")
            return []

    def _announce(self, encode: Callable[[Advert], bytes], adverts: Iterable[Advert]) -> None:
        destination = (self._config.group, self._config.announce_port)
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

    def _on_datagram(self, endpoint: Endpoint, data: bytes, sender: Address) -> None:
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
                              endpoint.label, sender[0], sender[1], self._limits.gdm_search_rate,
                              self._limits.gdm_search_rate_total)
            return
        self.last_search_at = time.time()
        self.searches_answered += 1
        adverts = self._current_adverts()
        cap = self._limits.gdm_replies_per_search
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

    def __init__(self, config: GdmConfig, on_sighting: Callable[[Sighting], None],
                 on_bye: Callable[[Sighting], None] | None = None, *,
                 interfaces: Sequence[str] = (),
                 is_own: Callable[[str], bool] = lambda ident: False,
                 networks: Callable[[], Sequence[LocalNetwork]] = local_networks) -> None:
        """``interfaces``: as for :class:`GdmResponder`; ``networks``: the local interfaces'
        networks, against which a sighting's source must fit."""
        self._config = config
        self._interfaces = tuple(interfaces)
        self._read_networks = networks
        self._networks: Sequence[LocalNetwork] = ()
        self._networks_at = -_NETWORKS_TTL
        self._on_sighting = on_sighting
        self._on_bye = on_bye
        self._is_own = is_own
        self._searchers: list[ArrivalEndpoint] = []
        self._listeners: list[ArrivalEndpoint] = []
        self._search_task: asyncio.Task[None] | None = None
        self._drops = _DropLog("gdm scanner")
        self._running = False

    @property
    def bound_ports(self) -> list[Address]:
        """The (address, port) of every search socket and announcement listener."""
        return [endpoint.local_address for endpoint in (*self._searchers, *self._listeners)]

    async def start(self) -> None:
        """Open the search sockets and announcement listeners and start searching periodically."""
        if self._running:
            raise RuntimeError("GdmScanner already started")
        try:
            for interface in listen_interfaces(self._config.group, self._interfaces):
                where = interface or "all interfaces"
                sock = udp_socket(self._config.group, interface, (interface or "0.0.0.0", 0),
                                  shared=False, join=False)
                self._searchers.append(
                    open_arrival_endpoint(f"gdm search on {where}", interface, sock, self._on_reply))
                try:
                    sock = udp_socket(self._config.group, interface, ("0.0.0.0", self._config.announce_port),
                                      shared=True, join=True)
                except ConfigError as exc:
                    # Searching still finds everyone; announcements only make players appear sooner.
                    logger.warning("%s; HELLO/BYE from players will be missed", exc)
                    continue
                self._listeners.append(
                    open_arrival_endpoint(f"gdm announcements on {where}", interface, sock, self._on_announcement))
        except BaseException:
            await self._close_endpoints()
            raise
        self._running = True
        self._search_task = asyncio.create_task(self._search_loop(), name="gdm-search")

    async def search_once(self) -> None:
        """Ask every player and server on the link to answer now."""
        payload = encode_search()
        for port in (self._config.player_port, self._config.server_port):
            for endpoint in self._searchers:
                endpoint.send(payload, (self._config.group, port))

    async def stop(self) -> None:
        """Stop searching and close every socket."""
        self._running = False
        await cancel(self._search_task)
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
            await asyncio.sleep(self._config.search_interval)

    def _sighting(self, endpoint: ArrivalEndpoint, data: bytes, sender: Address,
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

    def _on_reply(self, endpoint: ArrivalEndpoint, data: bytes, sender: Address, ifindex: int | None) -> None:
        if not self._running:
            return
        found = self._sighting(endpoint, data, sender, ifindex)
        if found is not None and found[0].kind == "reply":
            self._on_sighting(found[1])

    def _on_announcement(self, endpoint: ArrivalEndpoint, data: bytes, sender: Address,
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
async def scan(config: GdmConfig, timeout: float, *, interfaces: Sequence[str] = ()) -> list[Sighting]:
    """Search once for players and servers and return what answered within ``timeout`` seconds,
    one sighting per (kind, Resource-Identifier), first answer kept."""
    found: dict[tuple[str, str], Sighting] = {}

    def keep(sighting: Sighting) -> None:
        found.setdefault((sighting.kind, sighting.ident), sighting)

    scanner = GdmScanner(config, keep, interfaces=interfaces)
    await scanner.start()
    try:
        await asyncio.sleep(timeout)
    finally:
        await scanner.stop()
    return list(found.values())
