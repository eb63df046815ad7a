"""The daemon's lean TLS read buffers: each connection's buffer shrinks, bodies still arrive whole."""

from __future__ import annotations

import asyncio.sslproto
import hashlib
import ssl
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from companion.tuning import TLS_READ_BUFFER, lean_tls_buffers
from tests.fakes.plex_server import make_plex_chain


async def test_lean_buffers_shrink_each_tls_connection_and_keep_every_byte(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # monkeypatch restores asyncio's own value after the test, whatever happens.
    monkeypatch.setattr(asyncio.sslproto.SSLProtocol, "max_size", asyncio.sslproto.SSLProtocol.max_size)
    lean_tls_buffers()
    chain = make_plex_chain()
    body = bytes(range(256)) * (3 * 4096 + 7)  # 3 MiB and a bit: many records, an odd tail
    (tmp_path / "chain.pem").write_bytes(chain.leaf_pem + chain.intermediate_pem)
    (tmp_path / "key.pem").write_bytes(chain.leaf_key_pem)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "chain.pem", tmp_path / "key.pem")
    sizes: list[int] = []
    made = asyncio.sslproto.SSLProtocol.__init__

    def record(self: asyncio.sslproto.SSLProtocol, *args: object, **kwargs: object) -> None:
        made(self, *args, **kwargs)  # type: ignore[arg-type]
        sizes.append(len(self._ssl_buffer))  # type: ignore[attr-defined]

    monkeypatch.setattr(asyncio.sslproto.SSLProtocol, "__init__", record)

    async def part(_request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="video/x-matroska")

    app = web.Application()
    app.router.add_get("/part", part)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx).start()
        port = runner.addresses[0][1]
        client_ctx = ssl.create_default_context(cadata=chain.root_pem.decode())
        async with aiohttp.ClientSession() as session, session.get(
                f"https://127.0.0.1:{port}/part", ssl=client_ctx, server_hostname=chain.name("127.0.0.1")) as resp:
            got = await resp.read()
    finally:
        await runner.cleanup()
    assert hashlib.sha256(got).digest() == hashlib.sha256(body).digest()
    assert sizes and all(size == TLS_READ_BUFFER for size in sizes), sizes  # server side and client side
