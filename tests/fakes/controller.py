"""FakeController: a Plex controller over real loopback sockets.

It runs the ``/:/timeline`` listener a subscribing controller must run, records every push
(parsed with the real parser, plus the raw body and headers), and talks to a face over HTTP the
way phones and python-plexapi do: X-Plex-Client-Identifier, X-Plex-Device-Name, an incrementing
commandID. ``SilentListener`` is a controller that died: it accepts connections and never answers.
"""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from companion.proto.timeline import PlayerState, parse_player_timeline


@dataclass(frozen=True)
class Push:
    """One timeline POST a face sent to this controller."""

    state: PlayerState
    command_id: int | None
    raw: bytes
    headers: Mapping[str, str]


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    headers: Mapping[str, str]


class FakeController:
    """A controller with its own /:/timeline listener on 127.0.0.1 and an HTTP client for faces."""

    def __init__(self, client_id: str = "fake-controller-1", name: str = "Fake Phone") -> None:
        self.client_id = client_id
        self.name = name
        self.pushes: list[Push] = []
        self.command_id = 0
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0

    async def __aenter__(self) -> FakeController:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/:/timeline", self._on_timeline)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self._session = aiohttp.ClientSession()

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _on_timeline(self, request: web.Request) -> web.Response:
        raw = await request.read()
        root = ET.fromstring(raw)
        cid = root.get("commandID")
        push = Push(state=parse_player_timeline(raw), command_id=int(cid) if cid is not None else None,
                    raw=raw, headers=dict(request.headers))
        async with self._changed:
            self.pushes.append(push)
            self._changed.notify_all()
        return web.Response(text="OK")

    async def wait_for(self, predicate: Callable[[Push], bool], timeout: float = 2.0) -> Push:
        """The first recorded push (past or future) satisfying ``predicate``; TimeoutError if none."""

        def found() -> Push | None:
            return next((p for p in self.pushes if predicate(p)), None)

        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: found() is not None)
        push = found()
        assert push is not None
        return push

    # -- talking to a face ----------------------------------------------------------------

    def headers(self) -> dict[str, str]:
        return {
            "X-Plex-Client-Identifier": self.client_id,
            "X-Plex-Device-Name": self.name,
            "X-Plex-Product": "Fake Controller",
        }

    async def request(self, base: str, path: str, params: Mapping[str, str] | None = None, *,
                      command_id: int | bool | None = True, headers: Mapping[str, str] | None = None,
                      method: str = "GET", timeout: float = 5.0) -> Reply:
        """One request to a face. ``command_id=True`` sends the next id, an int that id, None none."""
        assert self._session is not None
        query = dict(params or {})
        if command_id is True:
            self.command_id += 1
            query["commandID"] = str(self.command_id)
        elif isinstance(command_id, int) and not isinstance(command_id, bool):
            query["commandID"] = str(command_id)
        all_headers = self.headers()
        all_headers.update(headers or {})
        async with self._session.request(method, base + path, params=query, headers=all_headers,
                                         timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            return Reply(resp.status, await resp.read(), dict(resp.headers))

    async def subscribe(self, base: str, *, port: int | None = None) -> Reply:
        return await self.request(base, "/player/timeline/subscribe",
                                  {"protocol": "http", "port": str(port or self.port)})

    async def unsubscribe(self, base: str) -> Reply:
        return await self.request(base, "/player/timeline/unsubscribe")

    async def poll(self, base: str, *, wait: bool = False, timeout: float = 5.0) -> Reply:
        return await self.request(base, "/player/timeline/poll", {"wait": "1" if wait else "0"},
                                  timeout=timeout)


class SilentListener:
    """A TCP port on 127.0.0.1 that accepts connections and never answers (a dead controller)."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.connections = 0
        self.port = 0

    async def __aenter__(self) -> SilentListener:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        for writer in self._writers:
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
