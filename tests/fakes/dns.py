"""PlexDirectResolver: a tiny authoritative DNS server for plex.direct, over real UDP on loopback.

It answers like Plex's DNS does: ``<dashed-ip>.<anything>.plex.direct`` gets an A (dashed IPv4) or
AAAA (eight dashed hex groups) record for the address written in the first label, whatever the
middle label is; a well-formed name asked for the other record type gets an empty answer; any other
name under plex.direct is NXDOMAIN, and names outside it are REFUSED (not our zone). It parses and
builds messages with dnspython and deliberately does not reuse companion's plex.direct parser, so
that a bug there cannot hide behind the fake.

``overrides`` maps a name to the address to answer instead (for "wrong address" tests).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections.abc import Mapping
from typing import cast

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

_V4 = re.compile(r"^(\d{1,3}(?:-\d{1,3}){3})\.[^.]+\.plex\.direct\.$", re.IGNORECASE)
_V6 = re.compile(r"^([0-9a-f]{4}(?:-[0-9a-f]{4}){7})\.[^.]+\.plex\.direct\.$", re.IGNORECASE)


def synthesize(qname: str) -> str | None:
    """The address Plex's DNS would answer for ``qname`` (absolute, with the final dot), or None."""
    if m := _V4.match(qname):
        text = m.group(1).replace("-", ".")
    elif m := _V6.match(qname):
        text = m.group(1).replace("-", ":")
    else:
        return None
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, owner: PlexDirectResolver) -> None:
        self._owner = owner
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self._owner.answer(data)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


class PlexDirectResolver:
    """Authoritative plex.direct DNS on ``host`` (a 127.0.0.x address), UDP, port 0 = ephemeral."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *,
                 overrides: Mapping[str, str] | None = None, ttl: int = 60) -> None:
        self._host = host
        self._port = port
        self._ttl = ttl
        self.overrides = {k.lower().rstrip(".") + ".": v for k, v in (overrides or {}).items()}
        self.queries: list[tuple[str, str]] = []  # (name, type) in arrival order
        self._transport: asyncio.DatagramTransport | None = None

    @property
    def address(self) -> tuple[str, int]:
        return self._host, self._port

    @property
    def query_count(self) -> int:
        return len(self.queries)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(self._host, self._port)
        )
        self._transport = transport
        self._port = transport.get_extra_info("sockname")[1]

    async def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    async def __aenter__(self) -> PlexDirectResolver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def answer(self, data: bytes) -> bytes | None:
        """The wire reply to one query datagram (None for garbage, which real servers drop)."""
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return None
        if not query.question:
            return None
        question = query.question[0]
        qname = question.name.to_text().lower()
        qtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((qname, qtype))
        reply = dns.message.make_response(query)
        reply.flags |= dns.flags.AA
        reply.flags &= ~dns.flags.RA
        if not qname.endswith(".plex.direct.") and qname != "plex.direct.":
            reply.set_rcode(dns.rcode.REFUSED)
            return reply.to_wire()
        address = self.overrides.get(qname) or synthesize(qname)
        if address is None:
            reply.set_rcode(dns.rcode.NXDOMAIN)
            return reply.to_wire()
        version = ipaddress.ip_address(address).version
        if (qtype, version) in (("A", 4), ("AAAA", 6)):
            reply.answer.append(dns.rrset.from_text(question.name, self._ttl, "IN", qtype, address))
        return reply.to_wire()
