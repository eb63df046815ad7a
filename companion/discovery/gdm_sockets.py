"""GDM's socket plumbing: UDP sockets bound (and joined to the group) per interface, and the two
datagram endpoints the responder and the scanner read them through.

:mod:`companion.discovery.gdm` owns the sockets these make; this module only makes and wraps them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct
import sys
from collections.abc import Callable, Sequence
from typing import cast

from companion.errors import ConfigError
from companion.proto.gdm import MAX_DATAGRAM

logger = logging.getLogger(__name__)

# Linux constant; Python 3.11 does not export it. With it cleared a socket receives only the groups
# it joined itself on the interfaces it joined them on, which is what keeps the per-interface
# listeners from all answering the same multicast search.
_IP_MULTICAST_ALL = getattr(socket, "IP_MULTICAST_ALL", 49)
# GDM never crosses a router (research 1.6), so multicast stays on the link.
_MULTICAST_TTL = 1

# Linux's IP_PKTINFO, which Python does not export: each datagram then comes with the index of the
# interface it arrived on (struct in_pktinfo: int ipi_ifindex, then two addresses).
_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_PKTINFO_SPACE = socket.CMSG_SPACE(12)
_READS_PER_WAKEUP = 64

Address = tuple[str, int]


def is_multicast(group: str) -> bool:
    """Whether the GDM ``group`` is a multicast address (else it is sent to but never joined)."""
    try:
        return ipaddress.IPv4Address(group).is_multicast
    except ValueError as exc:
        raise ConfigError(f"expected an IPv4 address, got {group!r}", key="gdm.group") from exc


class ArrivalEndpoint:
    """A bound UDP socket read with ``recvmsg``, so every datagram comes with its arrival interface.

    Same surface as :class:`Endpoint` (label, interface, send, close, local_address); asyncio's
    datagram transport cannot hand over ancillary data, so this one reads the socket itself.
    """

    def __init__(self, label: str, interface: str, sock: socket.socket,
                 on_datagram: Callable[[ArrivalEndpoint, bytes, Address, int | None], None]) -> None:
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
        """The (address, port) the socket is bound to."""
        host, port = self._sock.getsockname()[:2]
        return (str(host), int(port))

    def send(self, data: bytes, to: Address) -> None:
        """Send one datagram; a socket error is logged at DEBUG (GDM repeats itself anyway)."""
        if self._sock.fileno() < 0:
            return
        try:
            self._sock.sendto(data, to)
        except OSError as exc:  # a full buffer included: a search is repeated anyway
            logger.debug("%s: cannot send to %s:%d: %s", self.label, to[0], to[1], exc)

    async def close(self) -> None:
        """Stop reading and close the socket."""
        if self._sock.fileno() >= 0:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()


class Endpoint(asyncio.DatagramProtocol):
    """One bound UDP socket and what to do with each datagram it receives."""

    def __init__(self, label: str, interface: str, on_datagram: Callable[[Endpoint, bytes, Address], None]):
        self.label = label
        self.interface = interface
        self._on_datagram = on_datagram
        self._transport: asyncio.DatagramTransport | None = None
        self._closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport asyncio made for the socket."""
        # The selector loop's datagram transport does not subclass DatagramTransport in 3.11.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        """Hand one datagram to the callback; a bug there is logged, not raised into asyncio."""
        sender = (addr[0], addr[1])
        try:
            self._on_datagram(self, data, sender)
        except Exception:
            # A bug in a callback must not take the listener down with it.
            logger.exception("%s: handling a datagram from %s:%d failed", self.label, *sender)

    def error_received(self, exc: Exception) -> None:
        """Log a socket error at DEBUG."""
        # ICMP port-unreachable after a reply to a searcher that already left; nothing to do.
        logger.debug("%s: socket error: %s", self.label, exc)

    def connection_lost(self, exc: Exception | None) -> None:
        """Mark the endpoint closed (what :meth:`close` waits for)."""
        if not self._closed.done():
            self._closed.set_result(None)

    @property
    def local_address(self) -> Address:
        """The (address, port) the socket is bound to."""
        assert self._transport is not None
        host, port = self._transport.get_extra_info("sockname")[:2]
        return (str(host), int(port))

    def send(self, data: bytes, to: Address) -> None:
        """Send one datagram; a socket error is logged at DEBUG."""
        if self._transport is None or self._transport.is_closing():
            return
        try:
            self._transport.sendto(data, to)
        except OSError as exc:
            logger.debug("%s: cannot send to %s:%d: %s", self.label, to[0], to[1], exc)

    async def close(self) -> None:
        """Close the socket once the datagrams still queued (the BYEs) are sent."""
        if self._transport is not None:
            self._transport.close()  # flushes datagrams still queued (the BYEs) before closing
            await self._closed


def udp_socket(group: str, interface: str, bind: Address, *, shared: bool, join: bool) -> socket.socket:
    """A bound, non-blocking UDP socket; joined to ``group`` on ``interface`` when asked to."""
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
                              key="gdm") from exc
        if join and is_multicast(group):
            membership = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton(interface or "0.0.0.0"))
            try:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
            except OSError as exc:
                # As Music Assistant does: carry on, broadcast and unicast searches still arrive.
                logger.warning("cannot join GDM group %s on %s: %s; multicast searches will be missed",
                               group, interface or "the default interface", exc.strerror or exc)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def open_endpoint(label: str, interface: str, sock: socket.socket,
                        on_datagram: Callable[[Endpoint, bytes, Address], None]) -> Endpoint:
    """An :class:`Endpoint` reading ``sock`` through asyncio; the socket is closed if that fails."""
    loop = asyncio.get_running_loop()
    try:
        _, endpoint = await loop.create_datagram_endpoint(
            lambda: Endpoint(label, interface, on_datagram), sock=sock)
    except BaseException:
        sock.close()
        raise
    return endpoint


def open_arrival_endpoint(label: str, interface: str, sock: socket.socket,
                          on_datagram: Callable[[ArrivalEndpoint, bytes, Address, int | None], None],
                          ) -> ArrivalEndpoint:
    """An :class:`ArrivalEndpoint` reading ``sock``; the socket is closed if that fails."""
    try:
        return ArrivalEndpoint(label, interface, sock, on_datagram)
    except BaseException:
        sock.close()
        raise


def listen_interfaces(group: str, interfaces: Sequence[str]) -> tuple[str, ...]:
    """The interfaces to listen on ("" = all), after checking ``group`` and every interface address."""
    is_multicast(group)  # raises ConfigError for a group that is no IPv4 address
    for address in interfaces:
        try:
            ipaddress.IPv4Address(address)
        except ValueError as exc:
            raise ConfigError(f"expected an IPv4 interface address, got {address!r}", key="interfaces") from exc
    return tuple(interfaces) or ("",)


async def cancel(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has ended."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
