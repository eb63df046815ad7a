"""The connection gate on real sockets: per-source and per-listener caps, one budget shared by the
listeners, the heaviest address giving way to a newcomer, and throttled accept-error reports."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import web

from companion.connections import ConnectionLimits, GatedTCPSite, ListenError, quiet_loop_errors, start_site
from companion.errors import StateError
from companion.limits import ConnectionBudget
from tests.helpers import until


@contextlib.asynccontextmanager
async def listener(limits: ConnectionLimits, name: str) -> AsyncIterator[int]:
    async def hello(_request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, handle_signals=False)
    port = await start_site(runner, "127.0.0.1", 0, gate=limits.gate(name), what=name)
    try:
        yield port
    finally:
        await runner.cleanup()


async def connect(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def was_reset(reader: asyncio.StreamReader) -> bool:
    """True when the server closed or reset the connection (within a second)."""
    try:
        async with asyncio.timeout(1):
            return await reader.read(1) == b""
    except ConnectionError:
        return True
    except TimeoutError:
        return False


async def get_from(port: int, source: str) -> int:
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with aiohttp.ClientSession(connector=connector) as http, http.get(
            f"http://127.0.0.1:{port}/", timeout=aiohttp.ClientTimeout(total=2)) as resp:
        await resp.read()
        return resp.status


async def test_one_address_gets_its_share_and_a_newcomer_gets_in_when_the_listener_is_full() -> None:
    limits = ConnectionLimits(ConnectionBudget(total=100, per_listener=4, per_source=2, nofile=200))
    async with listener(limits, "face") as port:
        held = [await connect(port, "127.0.0.2") for _ in range(2)]
        extra = await connect(port, "127.0.0.2")
        assert await was_reset(extra[0]), "a third connection from one address is reset"
        held += [await connect(port, "127.0.0.3") for _ in range(2)]
        await until(lambda: limits.count == 4, message="four connections held")
        assert await get_from(port, "127.0.0.4") == 200, "a newcomer is served on a full listener"
        assert await was_reset(held[0][0]), "the oldest connection of an address holding the most gave way"
        assert limits.evicted == 1 and limits.refused == 1
        for _, writer in held:
            writer.close()
        extra[1].close()


async def test_listeners_share_one_budget() -> None:
    limits = ConnectionLimits(ConnectionBudget(total=3, per_listener=10, per_source=10, nofile=6))
    async with listener(limits, "face") as face, listener(limits, "admin") as admin:
        held = [await connect(face, "127.0.0.2") for _ in range(3)]
        await until(lambda: limits.count == 3, message="the budget full")
        late = await connect(admin, "127.0.0.2")
        assert await was_reset(late[0]), "the admin listener has no slot left for the same address"
        assert await get_from(admin, "127.0.0.5") == 200, "another address gets one, taken from the heaviest"
        for _, writer in [*held, late]:
            writer.close()


async def test_a_storm_of_accept_errors_is_reported_once_per_minute(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    old = loop.get_exception_handler()
    quiet_loop_errors(loop)
    try:
        exc = OSError(errno.EMFILE, "Too many open files")
        for _ in range(10000):
            loop.call_exception_handler({"message": "socket.accept() out of system resource", "exception": exc})
    finally:
        loop.set_exception_handler(old)
    lines = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lines) == 1
    assert "Too many open files" in lines[0].getMessage() and lines[0].exc_info is None


@pytest.mark.parametrize("gated", [True, False], ids=["gated", "ungated"])
async def test_stopping_closes_connections_that_raced_the_stop(gated: bool) -> None:
    """A connection accepted just before the listener stops (its handler not yet told) is closed too,
    not left open until its peer gives up: a busy LAN must not make the daemon leak descriptors.
    Without a gate too (a face built without one, and the test suite's fake servers)."""
    limits = ConnectionLimits(ConnectionBudget(total=64, per_listener=64, per_source=64, backlog=16, nofile=1024))
    left_open = []
    for turns in range(6):  # stop after 0..5 loop turns: before, while and after the accept
        app = web.Application()
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        site = GatedTCPSite(runner, "127.0.0.1", 0, gate=limits.gate(f"listener {turns}") if gated else None)
        await site.start()
        port = int(runner.addresses[0][1])
        reader, writer = await connect(port, "127.0.0.1")
        for _ in range(turns):
            await asyncio.sleep(0)
        await runner.cleanup()
        if not await was_reset(reader):
            left_open.append(turns)
        writer.close()
    assert left_open == [], f"stopped after {left_open} loop turns, the server kept the connection open"


@pytest.mark.parametrize("gated", [True, False], ids=["gated", "ungated"])
async def test_a_tls_handshake_that_ends_after_the_stop_is_reset_not_served(gated: bool) -> None:
    """Over TLS the handler is made only when the handshake ends, which may be long after the
    stop; aiohttp's shutdown has already passed by then and would leave that connection open (and
    answering) until its peer gives up."""
    limits = ConnectionLimits(ConnectionBudget(total=64, per_listener=64, per_source=64, backlog=16, nofile=1024))
    ca = trustme.CA()
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    runner = web.AppRunner(hello_app(), handle_signals=False)
    await runner.setup()
    site = GatedTCPSite(runner, "127.0.0.1", 0, gate=limits.gate("tls") if gated else None, ssl_context=server_ctx)
    await site.start()
    port = int(runner.addresses[0][1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)  # TCP only: the server awaits a hello
    for _ in range(5):  # the server accepts and starts waiting for the TLS hello
        await asyncio.sleep(0)
    await runner.cleanup()
    answer = b""
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        async with asyncio.timeout(5):
            await writer.start_tls(client_ctx, server_hostname="127.0.0.1")
            writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            answer = await reader.read()
    writer.transport.abort()
    assert b"hello" not in answer, "a stopped server answered a connection whose handshake ended late"


def hello_app() -> web.Application:
    async def hello(_request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    return app


async def test_a_site_on_a_port_in_use_says_which_server_and_where_and_frees_its_runner() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        runner = web.AppRunner(hello_app(), handle_signals=False)
        with pytest.raises(ListenError) as caught:
            await start_site(runner, "127.0.0.1", port, what="the admin page")
    error = caught.value
    assert str(error).startswith(f"the admin page cannot listen on 127.0.0.1:{port}: "), str(error)
    assert "in use" in str(error)
    assert isinstance(error, StateError), "a CompanionError: the CLI reports it as one line"
    assert isinstance(error, OSError) and error.errno == errno.EADDRINUSE, "a face catches it to try the next port"
    assert runner.server is None and not runner.sites, "the runner was cleaned up again"


async def test_a_site_started_on_port_0_reports_its_port_and_passes_the_gate() -> None:
    limits = ConnectionLimits(ConnectionBudget(nofile=64, total=8, per_listener=4, per_source=1))
    runner = web.AppRunner(hello_app(), handle_signals=False)
    port = await start_site(runner, "127.0.0.1", 0, gate=limits.gate("hello"), what="hello")
    try:
        assert port != 0
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/") as response:
            assert await response.text() == "hello"
            assert limits.count == 1, "the connection holds a slot of the gate"
    finally:
        await runner.cleanup()


async def test_a_site_on_a_unix_socket(tmp_path: Path) -> None:
    runner = web.AppRunner(hello_app(), handle_signals=False)
    path = tmp_path / "app.sock"
    assert await start_site(runner, path=str(path), what="the lab's app") == 0
    try:
        connector = aiohttp.UnixConnector(path=str(path))
        async with aiohttp.ClientSession(connector=connector) as session, \
                session.get("http://lab/") as response:
            assert await response.text() == "hello"
    finally:
        await runner.cleanup()
