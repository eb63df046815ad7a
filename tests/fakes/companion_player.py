"""FakeCompanionPlayer: a Plex Companion player on loopback, speaking the real HTTP protocol.

State records every command it received (path, params, headers); UseCases make it slow, broken,
or unwilling to accept subscriptions so the bridge's fallbacks can be exercised.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import quoteattr

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from companion.errors import ProtocolError
from companion.proto.plexdirect import parse_name


@dataclass
class Received:
    path: str
    name: str
    params: dict[str, str]
    headers: dict[str, str]
    peer: str


@dataclass
class PlayerFakeState:
    commands: list[Received] = field(default_factory=list)
    state: str = "stopped"
    time: int = 0
    duration: int = 0
    volume: int = 50
    key: str = ""
    media_type: str = "video"
    subscribers: dict[str, str] = field(default_factory=dict)  # client id -> callback URL
    pushes_sent: int = 0
    error: str = ""  # sent as the active timeline's error attribute while state is "error"
    fetch_failures: list[str] = field(default_factory=list)


@dataclass
class Fetched:
    """One HTTP exchange the player made with the server base it was given (what a TV would see)."""

    url: str
    request_headers: dict[str, str]
    status: int
    response_headers: dict[str, str]
    body: bytes


@dataclass
class PlayerUseCases:
    delay: float = 0.0  # seconds before answering a command
    refuse_subscribe: bool = False  # answer 404 to subscribe (forces the bridge to poll)
    status: int = 200  # HTTP status for commands
    garbage_timeline: bool = False
    fetch_media: bool = False  # on playMedia, fetch metadata, play queue and a media range like a real TV
    # On playMedia, report buffering, fetch like a real TV (its own TLS trust: the system's, which
    # lacks the tests' roots, so an https stream fails as on a TV without the root), then report
    # playing, or an error timeline naming what failed.
    report_playback: bool = False
    never_plays: bool = False  # on playMedia, report buffering and stay there (a stream that never starts)
    resources_body: bytes | None = None  # answer /resources with these bytes (a hostile or odd player)


class _PublicDnsView(AbstractResolver):
    """Resolves ``<dashed-ip>.<hash>.plex.direct`` to its IP as public DNS does (a TV whose resolver
    answers them), and every other name through aiohttp's default resolver."""

    def __init__(self) -> None:
        self._default = DefaultResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        try:
            address = parse_name(host).address
        except ProtocolError:
            return await self._default.resolve(host, port, family)
        return [{"hostname": host, "host": address, "port": port, "family": socket.AF_INET, "proto": 0,
                 "flags": socket.AI_NUMERICHOST}]

    async def close(self) -> None:
        await self._default.close()


class FakeCompanionPlayer:
    def __init__(self, *, name: str = "Living Room TV", product: str = "Plex for Test",
                 ident: str | None = None, host: str = "127.0.0.1") -> None:
        self.name = name
        self.product = product
        self.ident = ident or f"fake-player-{uuid.uuid4().hex[:12]}"
        self.host = host
        self.state = PlayerFakeState()
        self.use_cases = PlayerUseCases()
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._changed = asyncio.Condition()
        self._poll_waiters: set[asyncio.Future[None]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.fetched: list[Fetched] = []
        self._stopping = asyncio.Event()
        self.playback_done = asyncio.Event()

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_get("/resources", self._resources)
        app.router.add_route("GET", "/player/timeline/{name}", self._timeline)
        app.router.add_route("GET", "/player/{group}/{name}", self._command)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        # Its TLS trust is the system's (not the tests' roots); its DNS answers plex.direct names.
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=_PublicDnsView()))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        self._stopping.set()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for fut in self._poll_waiters:
            if not fut.done():
                fut.set_result(None)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # -- what tests look at --------------------------------------------------------------------

    def received(self, name: str) -> list[Received]:
        return [c for c in self.state.commands if c.name == name]

    def timeline_xml(self, command_id: str = "0") -> bytes:
        s = self.state
        other = [t for t in ("music", "video", "photo") if t != s.media_type]
        active = (f'<Timeline type="{s.media_type}" itemType="{s.media_type}" state="{s.state}" '
                  f'time="{s.time}" duration="{s.duration}" volume="{s.volume}" '
                  f'key={quoteattr(s.key)} controllable="playPause,stop,volume,seekTo,skipNext,skipPrevious"'
                  + (f' error={quoteattr(s.error)}' if s.state == "error" and s.error else "") + '/>')
        rest = "".join(f'<Timeline type="{t}" state="stopped"/>' for t in other)
        body = f'<MediaContainer commandID="{command_id}" location="navigation">{active}{rest}</MediaContainer>'
        if self.use_cases.garbage_timeline:
            body = "<MediaContainer><Timeline"
        return ('<?xml version="1.0" encoding="UTF-8"?>\n' + body).encode()

    async def set_playback(self, **changes: Any) -> None:
        """Change the player's state as if the user pressed a button on the TV; push it."""
        for k, v in changes.items():
            setattr(self.state, k, v)
        await self._notify()

    # -- protocol ------------------------------------------------------------------------------

    async def _notify(self) -> None:
        for fut in list(self._poll_waiters):
            if not fut.done():
                fut.set_result(None)
        await asyncio.gather(*(self._push(url) for url in list(self.state.subscribers.values())))

    async def _push(self, url: str) -> None:
        assert self._session is not None
        try:
            async with self._session.post(url, data=self.timeline_xml(), headers={
                "X-Plex-Client-Identifier": self.ident, "Content-Type": "application/xml",
            }, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                await resp.read()
            self.state.pushes_sent += 1
        except (aiohttp.ClientError, TimeoutError):
            pass

    async def _resources(self, request: web.Request) -> web.Response:
        if self.use_cases.resources_body is not None:
            return web.Response(body=self.use_cases.resources_body, content_type="text/xml")
        body = (f'<MediaContainer><Player title={quoteattr(self.name)} machineIdentifier={quoteattr(self.ident)} '
                f'product={quoteattr(self.product)} version="1.0" platform="Test" platformVersion="1" '
                f'protocol="plex" protocolVersion="1" protocolCapabilities="timeline,playback" '
                f'deviceClass="stb"/></MediaContainer>')
        return web.Response(text=body, content_type="text/xml")

    def _record(self, request: web.Request, name: str) -> None:
        self.state.commands.append(Received(
            path=request.path, name=name, params=dict(request.query), headers=dict(request.headers),
            peer=request.remote or ""))

    async def _timeline(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self._record(request, name)
        client = request.headers.get("X-Plex-Client-Identifier", "")
        if name == "subscribe":
            if self.use_cases.refuse_subscribe:
                return web.Response(status=404, text="no")
            url = f"{request.query.get('protocol', 'http')}://{request.remote}:{request.query['port']}/:/timeline"
            self.state.subscribers[client] = url
            self._spawn(self._push(url))
            return self._ok()
        if name == "unsubscribe":
            self.state.subscribers.pop(client, None)
            return self._ok()
        if name == "poll":
            if request.query.get("wait") == "1":
                fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._poll_waiters.add(fut)
                try:
                    await asyncio.wait_for(fut, 30)
                except TimeoutError:
                    pass
                finally:
                    self._poll_waiters.discard(fut)
            return web.Response(body=self.timeline_xml(request.query.get("commandID", "0")),
                                content_type="text/xml")
        return web.Response(status=404)

    async def _command(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self._record(request, name)
        if self.use_cases.delay:
            # The fake being slow is the behaviour under test; stop() cuts the wait short.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.use_cases.delay)
        if self.use_cases.status != 200:
            return web.Response(status=self.use_cases.status, text="error")
        q = request.query
        if name == "pause":
            self.state.state = "paused"
        elif name == "play":
            self.state.state = "playing"
        elif name == "stop":
            self.state.state = "stopped"
        elif name == "seekTo":
            self.state.time = int(q.get("offset", "0"))
        elif name == "setParameters" and "volume" in q:
            self.state.volume = int(q["volume"])
        elif name == "playMedia":
            if self.use_cases.never_plays:
                pass
            elif self.use_cases.report_playback:
                self.playback_done.clear()
                self._spawn(self._play_and_report(dict(q)))
            elif self.use_cases.fetch_media:
                self._spawn(self._play(dict(q)))
            buffers = self.use_cases.report_playback or self.use_cases.never_plays
            self.state.state = "buffering" if buffers else "playing"
            self.state.key = q.get("key", "")
            self.state.time = int(q.get("offset", "0") or 0)
            self.state.duration = max(self.state.duration, self.state.time + 600000)
        self._spawn(self._notify())
        return self._ok()

    async def _play(self, params: dict[str, str]) -> bool:
        """Fetch what a real player fetches: the item, its play queue, then a range of its media part."""
        assert self._session is not None
        base = f"{params['protocol']}://{params['address']}:{params['port']}"
        headers = {"X-Plex-Token": params.get("token", ""), "X-Plex-Client-Identifier": self.ident}
        try:
            meta = await self._fetch(base + params["key"], headers)
            if params.get("containerKey"):
                await self._fetch(base + params["containerKey"], headers)
            part = meta.body.split(b'<Part ', 1)[1].split(b'key="', 1)[1].split(b'"', 1)[0].decode()
            media = await self._fetch(base + part, {**headers, "Range": "bytes=0-1023"})
            return media.status < 400
        except (aiohttp.ClientError, IndexError, KeyError, TimeoutError) as exc:
            self.state.fetch_failures.append(f"{type(exc).__name__}: {exc}"[:200])
            return False
        finally:
            self.playback_done.set()

    async def _play_and_report(self, params: dict[str, str]) -> None:
        if await self._play(params):
            await self.set_playback(state="playing", error="")
        else:
            await self.set_playback(state="error", error="cannot open the stream")

    async def _fetch(self, url: str, headers: dict[str, str]) -> Fetched:
        assert self._session is not None
        async with self._session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=5)) as resp:
            got = Fetched(url=url, request_headers=dict(headers), status=resp.status,
                          response_headers=dict(resp.headers), body=await resp.read())
        self.fetched.append(got)
        return got

    def _ok(self) -> web.Response:
        return web.Response(text='<?xml version="1.0" encoding="UTF-8"?>\n<Response code="200" status="OK"/>',
                            content_type="text/xml")
