"""Shared pieces of the hardening tests: a recognisable token, a running bridge, raw HTTP on sockets."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from companion.bridge import Bridge
from tests.fakes.companion_player import FakeCompanionPlayer
from tests.fakes.plex_server import FakePlexServer
from tests.helpers import bridge_config, until

# Recognisable: searched for in every log line, database file and answer.
TOKEN = "HARDENING-TOKEN-b7e41f0c93"


@contextlib.asynccontextmanager
async def running_bridge(tmp_path: Path, extra: str = "", *, faces: int = 1,
                         timeouts: dict[str, float] | None = None) -> AsyncIterator[Bridge]:
    """A started Bridge from ``bridge_config``; stopped (and the wait for its faces bounded) after."""
    async with Bridge(bridge_config(tmp_path, extra, timeouts=timeouts)) as bridge:
        await until(lambda: len(bridge.faces) >= faces, message=f"{faces} face(s) open")
        yield bridge


def face_port(bridge: Bridge, name: str | None = None) -> int:
    return next(s.face.port for s in bridge.faces.values() if name is None or s.target.name == name)


async def raw_exchange(port: int, data: bytes, *, host: str = "127.0.0.1", timeout: float = 3.0) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes or the timeout passes."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        chunks: list[bytes] = []
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(timeout):
                while chunk := await reader.read(65536):
                    chunks.append(chunk)
                    if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                        break
        return b"".join(chunks)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return False


def status_of(answer: bytes) -> int:
    """The status code of a raw HTTP answer (0 when the server closed without answering)."""
    if not answer.startswith(b"HTTP/1."):
        return 0
    return int(answer.split(b" ", 2)[1])


@pytest.fixture
async def player() -> AsyncIterator[FakeCompanionPlayer]:
    fake = FakeCompanionPlayer(name="Hardening TV", product="Lab TV")
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def server() -> AsyncIterator[FakePlexServer]:
    fake = FakePlexServer(token=TOKEN)
    await fake.start()
    yield fake
    await fake.stop()
