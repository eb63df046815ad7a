"""Carrying Companion commands to a real Companion player over HTTP, and following its timeline.

The bridge talks to the player as a controller of its own: its own X-Plex-Client-Identifier and
its own increasing commandID, whatever the phone sent. The player's timeline comes back through
the bridge's one :class:`TimelineListener` (the player POSTs to ``/:/timeline``); when a player
refuses to subscribe (or stops pushing) the adapter falls back to long-polling it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
from collections.abc import Callable, Mapping
from urllib.parse import urlencode
from xml.etree import ElementTree

import aiohttp
from aiohttp import web

from companion.connections import ConnectionGate, start_site
from companion.errors import (
    CommandNotSupported,
    CompanionError,
    ProtocolError,
    TargetError,
    TargetTimeout,
    TargetUnavailable,
)
from companion.limits import ThrottledLog
from companion.model import Command, FaceMarks, MediaRequest, Target, clean_params
from companion.parts import StartStopContext
from companion.proto.gdm import FACE_PRODUCT
from companion.proto.safexml import parse_xml
from companion.proto.timeline import parse_player_timeline
from companion.targets.base import PLAYBACK_COMMANDS, AvailabilityCallback, StateCallback

log = logging.getLogger(__name__)


# What we pass through to a Companion player. Navigation/application need a UI on the player and
# are only offered when the player itself advertises the "navigation" capability.
_BASE_FEATURES = frozenset({f"playback/{name}" for name in PLAYBACK_COMMANDS} | {"mirror/details"})
_NAVIGATION = frozenset({
    "navigation/moveUp", "navigation/moveDown", "navigation/moveLeft", "navigation/moveRight",
    "navigation/select", "navigation/back", "navigation/home", "navigation/music",
    "navigation/contextMenu", "navigation/toggleOSD", "navigation/pageUp", "navigation/pageDown",
    "navigation/nextLetter", "navigation/previousLetter",
    "application/setText", "application/sendString", "application/sendVirtualKey", "application/sendKey",
})
RESUBSCRIBE_EVERY = 60.0  # players expire subscribers 90 s after the last subscribe


def _players(body: bytes) -> list[ElementTree.Element]:
    try:
        root = parse_xml(body, "player /resources")
    except ProtocolError:
        return []  # the callers treat it as an answer without a machineIdentifier
    return list(root.iter("Player"))


def player_identifier(body: bytes) -> str | None:
    """The machineIdentifier in a player's /resources answer (no DTDs, no entities), or None."""
    for element in _players(body):
        ident = element.get("machineIdentifier", "").strip()
        if ident:
            return ident
    return None


def face_marks_in(body: bytes) -> FaceMarks | None:
    """The face marks in a /resources answer (a bridge's face, not a player), or None."""
    for element in _players(body):
        bridge = element.get("bridgeIdentifier", "").strip()
        if bridge or element.get("product", "").strip().lower() == FACE_PRODUCT:
            return FaceMarks(bridge_id=bridge, target_id=element.get("bridgedTarget", "").strip())
    return None


class TimelineListener(StartStopContext):
    """The bridge's own ``/:/timeline`` endpoint: real players push their timelines here.

    Routed by the pushing player's X-Plex-Client-Identifier (its Resource-Identifier); one
    listener serves every Companion target of a bridge. A push counts only when it comes from the
    address of the player it names: anyone on the LAN can name a player (issue 12 row 10).
    """

    def __init__(self, *, bind: str, port: int = 0, max_body: int = 256 * 1024,
                 gate: ConnectionGate | None = None) -> None:
        self._bind = bind
        self._gate = gate
        self._want_port = port
        self._max_body = max_body
        self._routes: dict[str, tuple[Callable[[bytes], None], Callable[[], str]]] = {}
        self._refusals = ThrottledLog(log)  # forged pushes: one line a minute per source, with counts
        self._runner: web.AppRunner | None = None
        self.port = 0

    def register(self, player_ident: str, deliver: Callable[[bytes], None], address: Callable[[], str]) -> None:
        """Deliver pushes naming ``player_ident`` that come from ``address()`` (the player's IP now)."""
        self._routes[player_ident] = (deliver, address)

    def unregister(self, player_ident: str) -> None:
        """Stop delivering pushes that name ``player_ident``."""
        self._routes.pop(player_ident, None)

    async def start(self) -> None:
        """Listen on ``bind`` (any free port unless one was given); ``port`` is the bound one."""
        app = web.Application(client_max_size=self._max_body)
        app.router.add_post("/:/timeline", self._handle)
        runner = web.AppRunner(app, access_log=None, keepalive_timeout=60.0, handle_signals=False)
        self.port = await start_site(runner, self._bind, self._want_port, gate=self._gate,
                                     what="the timeline listener")
        self._runner = runner

    async def stop(self) -> None:
        """Stop listening (idempotent)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        ident = request.headers.get("X-Plex-Client-Identifier") or request.query.get("X-Plex-Client-Identifier", "")
        route = self._routes.get(ident)
        if route is None:
            return web.Response(status=404, text="unknown player")
        deliver, address = route
        if not _same_ip(request.remote or "", address()):
            self._refusals.log(("forged", request.remote), asyncio.get_running_loop().time(), logging.WARNING,
                               "refused a timeline push naming %s from %s: that player is at %s", ident[:64],
                               request.remote, address())
            return web.Response(status=403, text="this player's timeline comes from the player's own address")
        deliver(await request.read())
        return web.Response(text="")


def _same_ip(peer: str, expected: str) -> bool:
    """True when two addresses name one IP (``::ffff:a.b.c.d`` is a.b.c.d on a dual-stack socket)."""
    try:
        a, b = ipaddress.ip_address(peer.split("%", 1)[0]), ipaddress.ip_address(expected.strip("[]"))
    except ValueError:
        return False
    a = a.ipv4_mapped or a if isinstance(a, ipaddress.IPv6Address) else a
    b = b.ipv4_mapped or b if isinstance(b, ipaddress.IPv6Address) else b
    return a == b


class CompanionPlayerTarget(StartStopContext):
    """TargetAdapter for a real Plex Companion player."""

    def __init__(self, target: Target, *, session: aiohttp.ClientSession, bridge_id: str,
                 bridge_name: str, listener: TimelineListener | None, on_state: StateCallback,
                 on_available: AvailabilityCallback, command_timeout: float = 5.0,
                 poll_hold: float = 30.0, on_face: Callable[[FaceMarks], None] | None = None) -> None:
        self.target = target
        self._session = session
        self._bridge_id = bridge_id
        self._bridge_name = bridge_name
        self._listener = listener
        self._on_state = on_state
        self._on_available = on_available
        self._timeout = command_timeout
        self._poll_hold = poll_hold
        self._command_ids = itertools.count(1)
        self._available = True
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        # The player's own Resource-Identifier: from GDM it is the sighting's; a configured player is
        # asked through /resources, since it names itself that way in its timeline pushes.
        self._player_ident = target.ident
        self._ident_known = not target.ident.startswith("config:")
        self._bad_timelines = ThrottledLog(log)  # one line a minute, with counts
        # A configured address may be another bridge's face (or ours): found out through /resources.
        self._on_face = on_face
        self.identity_checked = asyncio.Event()  # set after the first /resources attempt
        if self._ident_known:
            self.identity_checked.set()

    # -- TargetAdapter ------------------------------------------------------------------------

    @property
    def features(self) -> frozenset[str]:
        """The Companion commands the player takes (navigation only when it advertises it)."""
        if "navigation" in self.target.capabilities:
            return _BASE_FEATURES | _NAVIGATION
        return _BASE_FEATURES

    @property
    def capabilities(self) -> tuple[str, ...]:
        """The capabilities the player offers that a face passes on (timeline and playback if it names none)."""
        offered = self.target.capabilities or ("timeline", "playback")
        return tuple(c for c in offered if c in ("timeline", "playback", "navigation", "mirror", "playqueues"))

    @property
    def available(self) -> bool:
        """Whether the player answered the last request."""
        return self._available

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the player."""
        host = f"[{self.target.address}]" if ":" in self.target.address else self.target.address
        return f"http://{host}:{self.target.port}"

    async def start(self) -> None:
        """Start following the player's timeline (pushes, or polls when it will not push)."""
        if self._listener is not None:
            self._listener.register(self._player_ident, self._deliver, self._address)
        self._task = asyncio.create_task(self._follow(), name=f"timeline-follow:{self.target.id}")

    async def stop(self) -> None:
        """Stop following the player and unsubscribe from its timeline."""
        self._stopping = True
        if self._listener is not None:
            self._listener.unregister(self._player_ident)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._subscribed:
            # Best effort, bounded: a player that is gone must not delay shutdown.
            with contextlib.suppress(CompanionError):
                await self._get("timeline", "unsubscribe", {}, timeout=min(self._timeout, 1.0))

    async def send(self, command: Command) -> None:
        """Carry ``command`` to the player; CommandNotSupported when it does not take it."""
        feature = f"{command.group}/{command.name}"
        if feature not in self.features:
            raise CommandNotSupported(f"{self.target.name} does not support {command.path}")
        await self._get(command.group, command.name, clean_params(command.params))

    async def play_media(self, request: MediaRequest, command: Command) -> None:
        """Carry a playMedia to the player with the server block the fling decision chose."""
        params = clean_params(command.params)  # no token the phone sent, nested or not
        # The server block comes from the decision, not from the phone: drop the phone's copy,
        # including Alexa-style query* aliases, before adding ours.
        for key in list(params):
            if key.lower().startswith("query") or key in ("protocol", "address", "port", "token"):
                params.pop(key)
        params.update(request.to_params())
        await self._get(command.group, command.name, params)

    def _address(self) -> str:
        return self.target.address  # follows a player that moved (the bridge updates ``target``)

    # -- HTTP ---------------------------------------------------------------------------------

    _subscribed = False

    def _headers(self) -> dict[str, str]:
        return {
            "X-Plex-Client-Identifier": self._bridge_id,
            "X-Plex-Device-Name": self._bridge_name,
            "X-Plex-Product": "companion-bridge",
            "X-Plex-Target-Client-Identifier": self._player_ident,
            "X-Plex-Provides": "controller",
        }

    async def _get(self, group: str, name: str, params: Mapping[str, str], *,
                   timeout: float | None = None) -> bytes:
        query = dict(params)
        query["commandID"] = str(next(self._command_ids))
        url = f"{self.base_url}/player/{group}/{name}?{urlencode(query)}"
        what = f"/player/{group}/{name}"
        limit = self._timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                async with self._session.get(url, headers=self._headers(), allow_redirects=False) as resp:
                    body = await resp.content.read(1024 * 1024)
        except TimeoutError as exc:
            self._set_available(False)
            raise TargetTimeout(f"{self.target.name} did not answer {what} within {limit:g} s") from exc
        except aiohttp.ClientError as exc:
            self._set_available(False)
            # The cause hidden on purpose: aiohttp's errors carry the request URL, whose query holds
            # the token a playMedia passes to the player.
            raise TargetUnavailable(f"{self.target.name} cannot be reached for {what}: "
                                    f"{type(exc).__name__}") from None
        self._set_available(True)
        if resp.status >= 400:
            raise TargetError(f"{self.target.name} answered {what} with HTTP {resp.status}")
        return body

    def _set_available(self, available: bool) -> None:
        if available != self._available:
            self._available = available
            log.info("target %s is %s", self.target.name, "available again" if available else "unavailable")
            self._on_available(available)

    # -- timeline -----------------------------------------------------------------------------

    def _deliver(self, body: bytes) -> None:
        try:
            state = parse_player_timeline(body)
        except ProtocolError as exc:
            self._bad_timelines.log("timeline", asyncio.get_running_loop().time(), logging.WARNING,
                                    "timeline from %s ignored: %s", self.target.name, exc)
            return
        self._set_available(True)
        self._on_state(state)

    async def _follow(self) -> None:
        """Subscribe (and keep re-subscribing); if the player refuses, long-poll it instead."""
        use_push = self._listener is not None
        backoff = 1.0
        while not self._stopping:
            if not self._ident_known:
                await self._learn_ident()
            if use_push:
                if await self._subscribe():
                    backoff = 1.0
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(RESUBSCRIBE_EVERY):
                            await asyncio.Event().wait()
                    continue
                if self._available:
                    # The player is up but refuses subscriptions: poll from now on.
                    use_push = False
                    continue
            else:
                try:
                    await self._poll_once()
                    backoff = 1.0
                    continue
                except CompanionError as exc:
                    log.debug("polling %s failed: %s", self.target.name, exc)
            await asyncio.sleep(backoff)  # retry pacing for an absent player, not synchronisation
            backoff = min(backoff * 2, 30.0)

    async def _learn_ident(self) -> None:
        """Ask a configured player for its machineIdentifier (GET /resources)."""
        url = f"{self.base_url}/resources"
        try:
            async with asyncio.timeout(self._timeout):
                async with self._session.get(url, headers={"X-Plex-Client-Identifier": self._bridge_id}) as resp:
                    body = await resp.content.read(64 * 1024)
        except (TimeoutError, aiohttp.ClientError):
            self.identity_checked.set()
            return  # not reachable yet; the follow loop tries again
        marks = face_marks_in(body)
        if marks is not None:
            self._ident_known = True
            self.identity_checked.set()
            self._stopping = True  # never command or follow a face; the bridge closes this one
            if self._on_face is not None:
                self._on_face(marks)
            return
        self.identity_checked.set()
        ident = player_identifier(body)
        if ident is None:
            log.warning("%s answered /resources without a machineIdentifier", self.target.name)
            self._ident_known = True  # keep the configured id; polling still works
            return
        if self._listener is not None:
            self._listener.unregister(self._player_ident)
            self._listener.register(ident, self._deliver, self._address)
        self._player_ident = ident
        self._ident_known = True

    async def _subscribe(self) -> bool:
        assert self._listener is not None
        try:
            await self._get("timeline", "subscribe", {"protocol": "http", "port": str(self._listener.port)})
        except CompanionError as exc:
            log.info("subscribing to %s failed (%s); polling its timeline instead", self.target.name, exc)
            self._subscribed = False
            return False
        self._subscribed = True
        return True

    async def _poll_once(self) -> None:
        body = await self._get("timeline", "poll", {"wait": "1"}, timeout=self._poll_hold + self._timeout)
        try:
            state = parse_player_timeline(body)
        except ProtocolError as exc:
            raise TargetUnavailable(f"{self.target.name} sent a timeline we cannot read: {exc}") from exc
        self._on_state(state)
