"""One Companion "face": the HTTP endpoint through which controllers see and command one target.

The face owns its aiohttp runner and site, its timeline state and its audience (subscribers.py);
it parses requests (proto.companion), answers /resources and the timeline endpoints itself, and
hands every other command to the handler it was given. Checks and error statuses: middleware.py.
The access log is off on purpose: request lines carry playMedia tokens.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from companion.connections import ConnectionGate, start_site
from companion.errors import ProtocolError
from companion.faces.middleware import XML_CONTENT_TYPE, guarded, xml_response
from companion.faces.subscribers import Clock, Subscribers
from companion.limits import ThrottledLog
from companion.model import Command, redacted
from companion.parts import StartStopContext
from companion.proto.companion import (
    FaceIdentity,
    known_player_path,
    parse_int,
    parse_request,
    resources_xml,
)
from companion.proto.timeline import PlayerState, TimelineDocument, render_document

log = logging.getLogger(__name__)

CommandHandler = Callable[[Command], Awaitable[None]]


class QuietServerLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's own request-error log, without exception text.

    aiohttp logs malformed or oversized requests with an excerpt of the offending line, which
    for a request line can hold a playMedia token; we log the exception type and the peer only,
    and one line a minute per exception type (with counts): garbage from the LAN floods nothing.
    """

    def __init__(self, logger: logging.Logger, extra: Mapping[str, object] | None = None) -> None:
        super().__init__(logger, extra)
        self._throttle = ThrottledLog(logger)

    def log(self, level: int, msg: object, *args: object, exc_info: object = None,
            **kwargs: Any) -> None:
        """Log as the adapted logger does, but an exception only by its type (throttled)."""
        exc = exc_info if isinstance(exc_info, BaseException) else None
        if exc_info is True:
            exc = sys.exc_info()[1]
        if exc is not None:
            text = str(msg) % args if args else str(msg)
            if isinstance(exc, HttpProcessingError):
                level = logging.INFO
                text += f": refused a malformed or oversized request ({type(exc).__name__})"
            else:
                text += f": {type(exc).__name__}"
            self._throttle.log((level, type(exc)), time.monotonic(), level, "%s", text)
            return
        super().log(level, msg, *args, **kwargs)


# Idle keep-alive and slowloris bound for every HTTP surface of the bridge (seconds).
IDLE_TIMEOUT = 60.0


@dataclass(frozen=True)
class FaceLimits:
    """Bounds and timings of one face (SECURITY.md 5: bounded everything)."""

    max_header_size: int = 8190
    max_body: int = 64 * 1024
    max_subscribers: int = 64
    subscribers_per_source: int = 8
    max_long_polls: int = 256
    poll_hold: float = 30.0
    push_timeout: float = 5.0
    subscriber_expiry: float = 90.0
    playing_push_interval: float = 1.0
    # An idle or trickling connection (slowloris) is closed after this long; aiohttp has no
    # separate header-read timeout, and its default keep-alive bound is an hour.
    idle_timeout: float = IDLE_TIMEOUT


_XML_HEADERS = {"Content-Type": f"{XML_CONTENT_TYPE}; charset=utf-8"}
_TIMELINE_HEADERS = {**_XML_HEADERS, "X-Plex-Protocol": "1.0"}


def _not_this_player() -> web.Response:
    return xml_response(404, "Not Found: not this player (X-Plex-Target-Client-Identifier)")


def _plex_value(request: web.BaseRequest, name: str) -> str | None:
    value = request.headers.get(name)
    if value is not None:
        return value
    lower = name.lower()
    for key, qvalue in request.query.items():
        if key.lower() == lower:
            return qvalue
    return None


class Face(StartStopContext):
    """The Companion HTTP endpoint of one bridged target."""

    def __init__(self, identity: FaceIdentity, handler: CommandHandler, *, bind: str, port: int,
                 session: aiohttp.ClientSession, limits: FaceLimits = FaceLimits(),
                 allowed_hosts: Collection[str] = (), cors_origins: Collection[str] = ("*",),
                 clock: Clock = time.monotonic, gate: ConnectionGate | None = None) -> None:
        self._identity = identity
        self._gate = gate
        self._handler = handler
        self._bind = bind
        self._port = port
        self._limits = limits
        self._state = PlayerState()
        self._available = True
        self._rendered: dict[bool, TimelineDocument] = {}  # by include_metadata, for the current state
        self._runner: web.ServerRunner | None = None
        self._bound_port: int | None = None
        self._subscribers = Subscribers(
            render=self._render_for,
            headers=lambda: self._identity.push_headers(),
            session=session,
            max_subscribers=limits.max_subscribers,
            per_source=limits.subscribers_per_source,
            max_long_polls=limits.max_long_polls,
            poll_hold=limits.poll_hold,
            push_timeout=limits.push_timeout,
            expiry=limits.subscriber_expiry,
            playing_push_interval=limits.playing_push_interval,
            clock=clock,
            name=f"face {identity.name!r}",
        )
        # aiohttp's low-level server with one guarded handler, not an Application with a catch-all
        # route and a middleware chain: the same checks, a third less Python per request
        # (bench/face_rps.py).
        self._handle = guarded(self._dispatch, face_id=lambda: self._identity.machine_identifier,
                               allowed_hosts=allowed_hosts, cors_origins=cors_origins)

    # -- public ---------------------------------------------------------------------------

    @property
    def identity(self) -> FaceIdentity:
        """Who this face says it is."""
        return self._identity

    def update_identity(self, identity: FaceIdentity) -> None:
        """Take a new name/version/capabilities (the machine identifier should stay the same)."""
        self._identity = identity
        self._rendered.clear()

    @property
    def state(self) -> PlayerState:
        """The current timeline state."""
        return self._state

    @property
    def available(self) -> bool:
        """False while the target is unreachable."""
        return self._available

    @property
    def port(self) -> int:
        """The bound TCP port once started (useful with port 0), else the configured one."""
        return self._bound_port if self._bound_port is not None else self._port

    @property
    def subscriber_count(self) -> int:
        """Live push subscribers."""
        return self._subscribers.count

    @property
    def long_poll_count(self) -> int:
        """Long-polls currently held."""
        return self._subscribers.open_polls

    @property
    def subscribers(self) -> Subscribers:
        """The face's timeline audience."""
        return self._subscribers

    async def start(self) -> None:
        """Listen on ``bind:port`` (raises OSError when the port cannot be bound)."""
        if self._runner is not None:
            return
        server = web.Server(
            self._handle,
            request_factory=self._make_request,
            access_log=None,
            logger=QuietServerLog(log, {}),
            keepalive_timeout=self._limits.idle_timeout,
            max_line_size=self._limits.max_header_size,
            max_field_size=self._limits.max_header_size,
        )
        # Long-polls are released before cleanup, so handlers end quickly.
        runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=2.0)
        self._bound_port = await start_site(runner, self._bind, self._port, gate=self._gate,
                                            what=f"face {self._identity.name!r}")
        self._runner = runner
        log.info("face %r (%s) listening on %s:%d", self._identity.name,
                 self._identity.machine_identifier, self._bind, self._bound_port)

    async def stop(self) -> None:
        """Answer open long-polls with the current timeline, stop pushes, close the socket.

        Idempotent. A stopped face is not restarted: build a new one (use set_available for
        a target that comes and goes).
        """
        await self._subscribers.stop()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def update_state(self, state: PlayerState) -> None:
        """New timeline from the target: wake long-polls and push to subscribers (in a running loop)."""
        if state == self._state:
            return
        self._state = state
        self._changed()

    def set_available(self, available: bool) -> None:
        """While unavailable, timelines carry ``disconnected="1"``; commands still go to the adapter."""
        if available == self._available:
            return
        self._available = available
        self._changed()

    # -- internals ------------------------------------------------------------------------

    def _changed(self) -> None:
        self._rendered.clear()
        active = self._state.active
        self._subscribers.changed(playing=active is not None and active.state == "playing")

    def _render_for(self, command_id: int | None, include_metadata: bool = False) -> bytes:
        # Every poll and push of one state differs only by commandID: the tree is rendered once per
        # state (a state change with a thousand subscribers would otherwise render a thousand times).
        document = self._rendered.get(include_metadata)
        if document is None:
            document = self._rendered[include_metadata] = render_document(
                self._state, machine_identifier=self._identity.machine_identifier,
                disconnected=not self._available, include_metadata=include_metadata)
        return document.for_command(command_id)

    def _make_request(self, message: RawRequestMessage, payload: StreamReader, protocol: RequestHandler,
                      writer: AbstractStreamWriter, task: asyncio.Task[None]) -> web.BaseRequest:
        return web.BaseRequest(message, payload, protocol, writer, task, asyncio.get_running_loop(),
                               client_max_size=self._limits.max_body)

    async def _dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.can_read_body:
            await request.read()  # enforces client_max_size (413) before anything is parsed
        path = request.path
        if path.rstrip("/") == "/resources":
            # How a controller learns who we are, so a stale target id is ignored here:
            # python-plexapi keeps the last player's id in its shared default headers.
            if request.method not in ("GET", "HEAD"):
                return xml_response(405, f"Method Not Allowed: {request.method[:16]} /resources")
            return web.Response(body=resources_xml(self._identity), headers=_XML_HEADERS)
        split = known_player_path(path)
        if split is None:
            if self._addressed_elsewhere(request):
                return _not_this_player()
            return xml_response(404, f"Not Found: no Companion endpoint {path[:100]!r}")
        try:
            # A repeated parameter counts by its first value (parse_request reads the MultiDict).
            command = parse_request(request.method, path, request.query, request.headers,
                                    request.remote or "", split=split)
        except ProtocolError:
            if self._addressed_elsewhere(request):  # a request for another player is not ours to judge
                return _not_this_player()
            raise
        target = command.target_client_id
        if target is not None and target != self._identity.machine_identifier:
            return _not_this_player()
        if log.isEnabledFor(logging.DEBUG):  # redacting the parameters costs; only when it is printed
            log.debug("face %r: %s from %r (%s) commandID=%s params=%s", self._identity.name,
                      command.path, command.controller.name, command.controller.client_id,
                      command.command_id, redacted(command.params))
        if command.group == "timeline":
            if command.name == "poll" and command.params.get("wait") != "1":
                # The most frequent request of all, answered at once: no coroutine on the way.
                body = self._subscribers.answer(command.controller.client_id, command_id=command.command_id,
                                                include_metadata=command.params.get("includeMetadata") == "1")
                return web.Response(body=body, headers=_TIMELINE_HEADERS)
            return await self._timeline(command)
        await self.run_command(command)
        return xml_response(200, "OK")

    def _addressed_elsewhere(self, request: web.BaseRequest) -> bool:
        # As parse_request reads it: a blank value names no player.
        target = (_plex_value(request, "X-Plex-Target-Client-Identifier") or "").strip()
        return bool(target) and target != self._identity.machine_identifier

    async def run_command(self, command: Command) -> None:
        """Carry one parsed command (not a timeline one) to the handler, as a request to this face is.

        The server's companion proxy hands its commands over here too, so both ways in get the
        same handler, decision and audit. Raises CompanionError (mapped to a status by the caller).
        """
        client_id = command.controller.client_id
        self._subscribers.note_command(client_id, command.command_id)
        # An unavailable target still gets the command: it may be back, and the adapter answers
        # quickly (502/504 through the error middleware) when it is not.
        await self._handler(command)
        # Echo the new commandID to the sender at once, as real players push after each command.
        self._subscribers.push_to(client_id)

    async def _timeline(self, command: Command) -> web.StreamResponse:
        controller = command.controller
        if command.name == "subscribe":
            port_text = command.params.get("port", "")
            if not port_text:
                raise ProtocolError(f"{command.path}: port is required")
            port = parse_int(command.path, "port", port_text, 1, 65535)
            self._subscribers.subscribe(
                controller.client_id, protocol=command.params.get("protocol", "http") or "http",
                peer=controller.address, port=port, name=controller.name, command_id=command.command_id)
            return xml_response(200, "OK")
        if command.name == "unsubscribe":
            self._subscribers.unsubscribe(controller.client_id, command.command_id)
            return xml_response(200, "OK")
        body = await self._subscribers.poll(controller.client_id, command_id=command.command_id,
                                            wait=command.params.get("wait", "0") == "1",
                                            include_metadata=command.params.get("includeMetadata", "0") == "1")
        return web.Response(body=body, headers=_TIMELINE_HEADERS)
