"""The relay's blocking TLS over memory BIOs (companion.relay.tlsstream) against asyncio TLS servers."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from companion.relay.tlsstream import TlsStream
from companion.security.tls import unverified_context
from tests.fakes.plex_server import make_plex_chain

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def tls_server(tmp_path: Path, handler: Handler, *, tls: bool = True) -> AsyncIterator[int]:
    chain = make_plex_chain()
    (tmp_path / "chain.pem").write_bytes(chain.leaf_pem + chain.intermediate_pem)
    (tmp_path / "key.pem").write_bytes(chain.leaf_key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "chain.pem", tmp_path / "key.pem")
    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=ctx if tls else None)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def _read_all(port: int) -> bytes:
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    stream = TlsStream(raw, unverified_context(), "x.plex.direct", read_size=64 * 1024)
    try:
        stream.handshake()
        stream.sendall(b"go\n")
        reader = stream.makefile("rb")
        return reader.read()
    finally:
        stream.close()


async def test_everything_the_server_sends_arrives_in_order_and_a_clean_close_ends_it(tmp_path: Path) -> None:
    body = os.urandom(5 * 1024 * 1024 + 3)  # many reads of the socket, many records each

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(body)
        await writer.drain()
        writer.close()  # close_notify, then the close
        await writer.wait_closed()

    async with tls_server(tmp_path, serve) as port:
        got = await asyncio.to_thread(_read_all, port)
    assert hashlib.sha256(got).digest() == hashlib.sha256(body).digest()


async def test_a_connection_cut_without_close_notify_is_an_error_not_an_end(tmp_path: Path) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"x" * 100_000)
        await writer.drain()
        writer.transport.abort()  # the TCP connection ends with no TLS close_notify

    async with tls_server(tmp_path, serve) as port:
        with pytest.raises(ssl.SSLError):
            await asyncio.to_thread(_read_all, port)


async def test_a_server_that_hangs_up_during_the_handshake_fails_it(tmp_path: Path) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()

    async with tls_server(tmp_path, serve, tls=False) as port:
        with pytest.raises(OSError):
            await asyncio.to_thread(_read_all, port)


async def test_a_server_that_is_not_tls_fails_the_handshake(tmp_path: Path) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    async with tls_server(tmp_path, serve, tls=False) as port:
        with pytest.raises(ssl.SSLError):
            await asyncio.to_thread(_read_all, port)


async def test_a_silent_server_times_the_read_out(tmp_path: Path) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # says nothing until the client goes

    def read_with_short_timeout(port: int) -> bytes:
        raw = socket.create_connection(("127.0.0.1", port), timeout=0.3)
        stream = TlsStream(raw, unverified_context(), "x.plex.direct")
        try:
            stream.handshake()
            return stream.makefile("rb").read(1)
        finally:
            stream.close()

    async with tls_server(tmp_path, serve) as port:
        with pytest.raises(TimeoutError):
            await asyncio.to_thread(read_with_short_timeout, port)
