"""The relay's media pump against a TLS FakePlexServer: bytes, ranges, the pin, back-pressure, close."""

from __future__ import annotations

import hashlib
import threading

import pytest

from companion.relay.pump import PinMismatch, UpstreamError, UpstreamStream
from tests.fakes.plex_server import FakePlexServer
from tests.helpers import free_port

TOKEN = "pump-token-0123456789"


def _pin(server: FakePlexServer) -> bytes:
    return hashlib.sha256(server.chain.chain_der()[0]).digest()


def _stream(server: FakePlexServer, *, fingerprint: bytes | None = None, headers: list[tuple[str, str]] | None = None,
            chunk: int = 64 * 1024, depth: int = 2) -> UpstreamStream:
    name = server.plex_direct_name()
    return UpstreamStream(address="127.0.0.1", port=server.port, sni=name,
                          fingerprint=fingerprint if fingerprint is not None else _pin(server),
                          method="GET", target="/library/parts/501/file",
                          headers=[("Host", f"{name}:{server.port}"), ("X-Plex-Token", TOKEN), *(headers or [])],
                          timeout=5.0, chunk=chunk, depth=depth)


async def _body(stream: UpstreamStream) -> bytes:
    out = bytearray()
    async for chunk in stream.chunks():
        out += chunk
    return bytes(out)


async def test_the_whole_part_arrives_byte_for_byte_through_a_verified_pin() -> None:
    async with FakePlexServer(token=TOKEN, media_size=3 * 1024 * 1024 + 17) as server:
        stream = _stream(server)
        status, headers = await stream.open()
        assert status == 200
        assert dict((k.lower(), v) for k, v in headers)["content-length"] == str(len(server.media))
        assert await _body(stream) == server.media
        await stream.aclose()
        assert server.server_names[-1] == server.plex_direct_name()  # SNI is the plex.direct name


async def test_a_range_request_gets_exactly_its_bytes() -> None:
    async with FakePlexServer(token=TOKEN, media_size=1024 * 1024) as server:
        stream = _stream(server, headers=[("Range", "bytes=1000-200999")])
        status, _ = await stream.open()
        assert status == 206
        assert await _body(stream) == server.media[1000:201000]
        await stream.aclose()


async def test_another_leaf_than_the_pinned_one_gets_no_request() -> None:
    async with FakePlexServer(token=TOKEN) as server:
        stream = _stream(server, fingerprint=hashlib.sha256(b"some other certificate").digest())
        with pytest.raises(PinMismatch):
            await stream.open()
        await stream.aclose()
        assert not server.requests_to("/library/parts/")  # the token never went out


async def test_an_unreachable_server_is_an_upstream_error() -> None:
    stream = UpstreamStream(address="127.0.0.1", port=free_port(), sni=None, fingerprint=b"x" * 32, method="GET",
                            target="/", headers=[], timeout=2.0)
    with pytest.raises(UpstreamError, match="ConnectionRefused"):
        await stream.open()
    await stream.aclose()


async def test_a_reader_that_stops_early_ends_the_thread_without_reading_the_rest() -> None:
    async with FakePlexServer(token=TOKEN, media_size=16 * 1024 * 1024) as server:
        stream = _stream(server, chunk=16 * 1024, depth=2)
        await stream.open()
        chunks = stream.chunks()
        first = await anext(chunks)
        assert first == server.media[:len(first)]
        await stream.aclose()
        await chunks.aclose()
        # aclose joined it: the reader thread is gone although 16 MiB were left unread.
        assert not [t.name for t in threading.enumerate() if t.name == "relay-stream"]
