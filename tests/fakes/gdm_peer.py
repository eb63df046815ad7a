"""FakeGdmPeer: a Plex player, server or controller speaking GDM over real UDP sockets.

State: the headers it advertises and every datagram it received (``received``). UseCases: answer
searches like a real player (``ANSWER``), stay silent (``SILENT``), or answer with garbage
(``GARBAGE``). It can also send HELLO/BYE and act as a controller (``search``).

Also a CLI, so a test can run it inside another network namespace; it prints JSON lines:

    python -m tests.fakes.gdm_peer --role player --bind 0.0.0.0:40412 --group 239.0.0.250 \
        --interface 10.250.0.2 --ident fake-1 --name "Fake TV" --port 32500
    python -m tests.fakes.gdm_peer --search 239.0.0.250:40412 --timeout 1 --expect 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket
import struct
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from companion.errors import ProtocolError
from companion.proto.gdm import GdmMessage, encode_search, parse

Address = tuple[str, int]


class UseCase(StrEnum):
    ANSWER = "answer"
    SILENT = "silent"
    GARBAGE = "garbage"


GARBAGE = b"\x00\xff\xfeHTTP/1.0 200 OK\r\nnot gdm at all\r\n"

PLAYER_HEADERS: Mapping[str, str] = {
    "Content-Type": "plex/media-player",
    "Resource-Identifier": "fake-player-1",
    "Name": "Fake Player",
    "Port": "32500",
    "Product": "Fake Player",
    "Version": "1.0.0",
    "Protocol": "plex",
    "Protocol-Version": "1",
    "Protocol-Capabilities": "timeline,playback,navigation",
    "Device-Class": "stb",
}

SERVER_HEADERS: Mapping[str, str] = {
    "Content-Type": "plex/media-server",
    "Resource-Identifier": "fake-server-1",
    "Name": "Fake Server",
    "Port": "32400",
    "Version": "1.40.0.1234-abcdef",
    "Updated-At": "1700000000",
    "Host": "0123456789abcdef0123456789abcdef.plex.direct",
}


@dataclass(frozen=True)
class Received:
    """One datagram the peer received; ``message`` is None when it did not parse (see ``error``)."""

    data: bytes
    sender: Address
    message: GdmMessage | None
    error: str = ""


class _Proto(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, Address], None]) -> None:
        self.on_datagram = on_datagram
        self.transport: asyncio.DatagramTransport | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram transport in practice

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.on_datagram(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP unreachable after answering a searcher that left

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


def _socket(bind: Address, *, group: str | None, interface: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        if interface != "0.0.0.0":
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
        sock.bind(bind)
        if group:
            mreq = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton(interface))
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def _open(sock: socket.socket, on_datagram: Callable[[bytes, Address], None]) -> _Proto:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_datagram_endpoint(lambda: _Proto(on_datagram), sock=sock)
    return proto


def _record(data: bytes, sender: Address) -> Received:
    try:
        return Received(data, sender, parse(data))
    except ProtocolError as exc:
        return Received(data, sender, None, str(exc))


class FakeGdmPeer:
    """A GDM player or server on a real UDP socket (bound to ``bind``, optionally joined to ``group``)."""

    def __init__(self, role: str = "player", *, headers: Mapping[str, str] | None = None,
                 bind: Address = ("127.0.0.1", 0), group: str | None = None, interface: str = "0.0.0.0",
                 use_case: UseCase = UseCase.ANSWER, line_ending: str = "\r\n") -> None:
        base = PLAYER_HEADERS if role == "player" else SERVER_HEADERS
        self.headers: dict[str, str] = {**base, **(headers or {})}
        self.bind = bind
        self.group = group
        self.interface = interface
        self.use_case = use_case
        self.line_ending = line_ending
        self.received: list[Received] = []
        self._proto: _Proto | None = None
        self._changed = asyncio.Event()

    async def __aenter__(self) -> FakeGdmPeer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._proto = await _open(_socket(self.bind, group=self.group, interface=self.interface),
                                  self._on_datagram)

    async def stop(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
            await self._proto.closed
        self._proto = None

    @property
    def address(self) -> Address:
        assert self._proto is not None
        assert self._proto.transport is not None
        host, port = self._proto.transport.get_extra_info("sockname")[:2]
        return (host, port)

    def encode(self, start_line: str) -> bytes:
        lines = [start_line, *(f"{k}: {v}" for k, v in self.headers.items()), "", ""]
        return self.line_ending.join(lines).encode()

    def send_raw(self, data: bytes, to: Address) -> None:
        assert self._proto is not None
        assert self._proto.transport is not None
        self._proto.transport.sendto(data, to)

    async def send_hello(self, to: Address) -> None:
        self.send_raw(self.encode("HELLO * HTTP/1.0"), to)

    async def send_bye(self, to: Address) -> None:
        self.send_raw(self.encode("BYE * HTTP/1.0"), to)

    def _on_datagram(self, data: bytes, sender: Address) -> None:
        got = _record(data, sender)
        self.received.append(got)
        self._changed.set()
        if got.message is None or got.message.kind != "search":
            return
        if self.use_case is UseCase.ANSWER:
            self.send_raw(self.encode("HTTP/1.0 200 OK"), sender)
        elif self.use_case is UseCase.GARBAGE:
            self.send_raw(GARBAGE, sender)

    async def wait_for(self, pred: Callable[[Received], bool], timeout: float = 2.0) -> Received:
        """The first received datagram matching ``pred``, waiting at most ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            while True:
                for got in self.received:
                    if pred(got):
                        return got
                self._changed.clear()
                await self._changed.wait()

    async def received_at(self, index: int) -> Received:
        """The ``index``-th datagram received, waiting for it to arrive."""
        while len(self.received) <= index:
            self._changed.clear()
            await self._changed.wait()
        return self.received[index]

    async def search_replies(self, to: Address, timeout: float = 1.0, *, expect: int | None = None,
                             payload: bytes | None = None) -> list[Received]:
        """Act as a controller: send an M-SEARCH to ``to`` from a fresh socket and collect what comes
        back for ``timeout`` seconds, or until ``expect`` replies arrived."""
        replies: list[Received] = []
        enough = asyncio.Event()

        def collect(data: bytes, sender: Address) -> None:
            replies.append(_record(data, sender))
            if expect is not None and len(replies) >= expect:
                enough.set()

        host = self.bind[0] if self._proto is None else self.address[0]
        proto = await _open(_socket((host, 0), group=None, interface=self.interface), collect)
        try:
            assert proto.transport is not None
            proto.transport.sendto(encode_search() if payload is None else payload, to)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await enough.wait()
        finally:
            assert proto.transport is not None
            proto.transport.close()
            await proto.closed
        return replies

    async def search(self, to: Address, timeout: float = 1.0, *, expect: int | None = None) -> list[GdmMessage]:
        """The parsed replies to one M-SEARCH (see :meth:`search_replies`)."""
        replies = await self.search_replies(to, timeout, expect=expect)
        return [got.message for got in replies if got.message is not None]


def _address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    return (host, int(port))


def _emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def _describe(got: Received) -> dict[str, object]:
    out: dict[str, object] = {"from": list(got.sender)}
    if got.message is None:
        out["error"] = got.error
    else:
        out["kind"] = got.message.kind
        out["headers"] = dict(got.message.headers)
    return out


async def _main(args: argparse.Namespace) -> None:
    headers = dict(h.split("=", 1) for h in args.header)
    if args.ident:
        headers["Resource-Identifier"] = args.ident
    if args.name:
        headers["Name"] = args.name
    if args.port:
        headers["Port"] = str(args.port)
    peer = FakeGdmPeer(args.role, headers=headers, bind=_address(args.bind), group=args.group,
                       interface=args.interface, use_case=UseCase(args.use_case))
    if args.search:
        for got in await peer.search_replies(_address(args.search), args.timeout, expect=args.expect):
            _emit("reply", **_describe(got))
        _emit("done")
        return
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    async def report() -> None:
        index = 0
        while True:
            _emit("received", **_describe(await peer.received_at(index)))
            index += 1

    async with peer:
        _emit("ready", address=list(peer.address))
        if args.hello:
            await peer.send_hello(_address(args.hello))
        reporter = asyncio.create_task(report(), name="gdm-peer-report")
        await stop.wait()
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
        if args.bye:
            await peer.send_bye(_address(args.bye))
    _emit("stopped")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.gdm_peer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=("player", "server"), default="player")
    parser.add_argument("--player", dest="role", action="store_const", const="player")
    parser.add_argument("--server", dest="role", action="store_const", const="server")
    parser.add_argument("--bind", default="127.0.0.1:0", help="HOST:PORT to listen on")
    parser.add_argument("--group", default=None, help="multicast group to join")
    parser.add_argument("--interface", default="0.0.0.0", help="IPv4 address of the interface to use")
    parser.add_argument("--ident", default="")
    parser.add_argument("--name", default="")
    parser.add_argument("--port", type=int, default=0, help="advertised (TCP) Port header")
    parser.add_argument("--header", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--use-case", choices=[u.value for u in UseCase], default="answer")
    parser.add_argument("--hello", default="", help="send a HELLO to HOST:PORT at start")
    parser.add_argument("--bye", default="", help="send a BYE to HOST:PORT at stop")
    parser.add_argument("--search", default="", help="controller mode: M-SEARCH HOST:PORT, print replies, exit")
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--expect", type=int, default=None)
    asyncio.run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    main(sys.argv[1:])
