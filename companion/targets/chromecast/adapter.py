"""Carrying Companion commands to a Chromecast through pychromecast, and following its status.

pychromecast is thread-based: one socket thread per device, listeners called on that thread,
blocking request/response. This adapter keeps that world behind a fence:

* requests are written by pychromecast's own socket thread, never by ours: pychromecast reads
  its TLS socket on that thread, and a write from another thread at the same moment corrupts
  the TLS stream (``DECRYPTION_FAILED_OR_BAD_RECORD_MAC``; our stress runs hit it, and so do
  Home Assistant users, home-assistant/core#111762 and #141619). Each request is queued on the
  connection and the socket thread is woken to send it;
* the other blocking calls (disconnect and join) go through ``asyncio.to_thread``;
* every listener callback is snapshotted on the socket thread (pychromecast mutates its status
  objects in place) and handed to the event loop with ``call_soon_threadsafe``;
* replies are awaited in the loop, not in a thread: each request carries a pychromecast
  ``callback_function`` that resolves an asyncio future, so a device that never answers costs a
  timeout, not a worker thread parked for pychromecast's 10 s ``WaitResponse``.

The socket thread reconnects by itself after a drop (``connect_retries`` attempts, ``retry_wait``
apart); when it gives up and ends, a supervisor task builds a fresh connection after a backoff,
so the target comes back when the device does. ``stop()`` disconnects and joins every socket
thread this adapter started.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import queue
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

import pychromecast
import zeroconf
from pychromecast.const import CAST_TYPE_CHROMECAST, CAST_TYPES
from pychromecast.controllers import BaseController
from pychromecast.controllers.media import (
    BaseMediaPlayer,
    DefaultMediaReceiverController,
    MediaStatus,
    MediaStatusListener,
)
from pychromecast.controllers.plex import media_to_chromecast_command
from pychromecast.controllers.receiver import CastStatus, CastStatusListener
from pychromecast.error import PyChromecastError
from pychromecast.models import CastInfo, HostServiceInfo
from pychromecast.response_handler import CallbackType
from pychromecast.socket_client import (
    CONNECTION_STATUS_CONNECTED,
    CONNECTION_STATUS_CONNECTING,
    CONNECTION_STATUS_DISCONNECTED,
    ConnectionStatus,
    ConnectionStatusListener,
)

from companion.errors import (
    CommandNotSupported,
    ProtocolError,
    TargetError,
    TargetTimeout,
    TargetUnavailable,
)
from companion.model import Command, MediaRequest, Target
from companion.proto.timeline import MEDIA_TYPES, PlayerState, TimelineEntry
from companion.targets.base import AvailabilityCallback, StateCallback

log = logging.getLogger("companion.target.chromecast")

PLEX_APP_ID = "9AC194DC"
DEFAULT_MEDIA_RECEIVER_APP_ID = "CC1AD845"
STEP_FORWARD_S = 30.0
STEP_BACK_S = 10.0
MAX_RECONNECT_BACKOFF = 60.0
# Cast devices report their position only when something changes; while playing, the timeline
# is re-published this often with the position extrapolated from the last report.
TICK_INTERVAL = 1.0
CONTROLLABLE = ("playPause", "stop", "volume", "seekTo", "stepBack", "stepForward")
# Only with a play queue to move in (the Plex receiver plays one: its LOAD names it in customData).
QUEUE_CONTROLLABLE = ("skipPrevious", "skipNext")
FEATURES = frozenset({
    "playback/playMedia", "playback/play", "playback/pause", "playback/stop", "playback/seekTo",
    "playback/stepForward", "playback/stepBack", "playback/setParameters",
    "playback/skipNext", "playback/skipPrevious", "playback/skipTo", "mirror/details",
})
# mirror: /player/mirror/details shows the item's details page (the Plex receiver's SHOWDETAILS).
CAPABILITIES = ("timeline", "playback", "mirror")
# The Plex receiver's own messages on its namespace (pychromecast controllers/plex.py: TYPE_NEXT,
# TYPE_PREVIOUS, TYPE_DETAILS); sent without waiting for a reply, as PlexController does.
PLEX_NAMESPACE = "urn:x-cast:plex"
PLEX_NEXT = "NEXT"
PLEX_PREVIOUS = "PREVIOUS"
PLEX_DETAILS = "SHOWDETAILS"

_MEDIA_OK = frozenset({"MEDIA_STATUS"})
_RECEIVER_OK = frozenset({"RECEIVER_STATUS"})
_PLAYER_STATES = {"PLAYING": "playing", "PAUSED": "paused", "BUFFERING": "buffering"}
_LOCATIONS = {"video": "fullScreenVideo", "music": "fullScreenMusic", "photo": "fullScreenPhoto"}
# pychromecast metadataType: 1 movie, 2 tv show, 3 music track, 4 photo.
_METADATA_TYPES = {1: "video", 2: "video", 3: "music", 4: "photo"}


# --- token hygiene --------------------------------------------------------------------------

_TOKEN_RE = re.compile(
    r"""((?:accessToken|X-Plex-Token|token)['"]?\s*[:=]\s*['"]?)[^'"&,}\s]+""", re.IGNORECASE)


class _RedactTokens(logging.Filter):
    """Masks Plex tokens in pychromecast's debug lines (it logs every message it sends, and our
    Plex LOAD carries the server token in customData)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _TOKEN_RE.sub(r"\1<redacted>", message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


_PYCHROMECAST_LOGGERS = ("pychromecast", "pychromecast.socket_client", "pychromecast.controllers",
                         "pychromecast.controllers.media", "pychromecast.controllers.receiver",
                         "pychromecast.controllers.plex")


def _guard_pychromecast_logs() -> None:
    # Logger filters apply only to records created on that very logger, so each pychromecast
    # logger that can print a payload gets one; idempotent, so many adapters add one each.
    for name in _PYCHROMECAST_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactTokens) for f in logger.filters):
            logger.addFilter(_RedactTokens())


# --- status snapshots and the pure mapping to a timeline ------------------------------------


@dataclass(frozen=True)
class MediaSnapshot:
    """An immutable copy of pychromecast's (mutable) MediaStatus, taken on its socket thread."""

    player_state: str = "UNKNOWN"
    idle_reason: str | None = None
    current_time: float = 0.0
    duration: float | None = None
    content_id: str | None = None
    content_type: str | None = None
    metadata_type: int | None = None
    media_session_id: int | None = None
    playback_rate: float = 1.0
    reported_at: float = 0.0  # monotonic clock when the device reported current_time
    play_queue_item_id: str = ""  # from the status's media customData, when the receiver says

    @classmethod
    def of(cls, status: MediaStatus, now: float) -> MediaSnapshot:
        metadata_type = status.metadata_type
        return cls(
            player_state=str(status.player_state), idle_reason=status.idle_reason,
            current_time=float(status.current_time or 0.0),
            duration=float(status.duration) if status.duration is not None else None,
            content_id=status.content_id, content_type=status.content_type,
            metadata_type=metadata_type if isinstance(metadata_type, int) else None,
            media_session_id=status.media_session_id,
            playback_rate=float(status.playback_rate or 1.0), reported_at=now,
            play_queue_item_id=_queue_item_id(status.media_custom_data))

    def position(self, now: float) -> float:
        """Seconds into the media at ``now``: extrapolated while playing, as reported otherwise."""
        if self.player_state != "PLAYING":
            return self.current_time
        return self.current_time + self.playback_rate * max(0.0, now - self.reported_at)


@dataclass(frozen=True)
class ReceiverSnapshot:
    volume_level: float = 1.0
    muted: bool = False
    app_id: str | None = None


def _queue_item_id(custom: object) -> str:
    value = custom.get("playQueueItemID") if isinstance(custom, dict) else None
    return str(value) if isinstance(value, int | str) and str(value).isdigit() else ""


def play_queue_id(container_key: str) -> str:
    """``/playQueues/123?own=1`` -> ``123``; "" for anything that is not a play queue."""
    if not container_key.startswith("/playQueues/"):
        return ""
    head = container_key[len("/playQueues/"):].split("?", 1)[0].strip("/")
    return head if head.isdigit() else ""


def media_type_of(content_type: str | None, metadata_type: int | None, fallback: str) -> str:
    """Timeline media type (music/video/photo) from a Cast content type or metadata type."""
    ct = (content_type or "").lower()
    if ct.startswith(("video", "application/x-mpegurl", "application/dash")):
        return "video"
    if ct.startswith(("audio", "music")):
        return "music"
    if ct.startswith(("image", "photo")):
        return "photo"
    if metadata_type in _METADATA_TYPES:
        return _METADATA_TYPES[metadata_type]
    return _timeline_type(fallback)


def _timeline_type(media_type: str) -> str:
    t = media_type.lower()
    if t in ("audio", "music", "track"):
        return "music"
    return t if t in MEDIA_TYPES else "video"


def player_state_from(media: MediaSnapshot | None, receiver: ReceiverSnapshot | None,
                      request: MediaRequest | None, now: float) -> PlayerState:
    """The timeline a controller sees at ``now`` (monotonic seconds), from the device's last media
    and receiver status and the playMedia that started it (server and play-queue fields)."""
    if media is None:
        return _IDLE
    state = _PLAYER_STATES.get(media.player_state)
    if state is None:
        if media.player_state == "IDLE" and media.idle_reason == "ERROR":
            state = "error"
        else:
            return _IDLE
    mtype = media_type_of(media.content_type, media.metadata_type,
                          request.media_type if request else "video")
    duration = round(media.duration * 1000) if media.duration else 0
    time_ms = max(0, round(media.position(now) * 1000))
    if duration:
        time_ms = min(time_ms, duration)
    key = ""
    if media.content_id and media.content_id.startswith("/library/"):
        key = media.content_id
    elif request is not None:
        key = request.key
    rating_key = key.rstrip("/").rsplit("/", 1)[-1] if key.startswith("/library/metadata/") else ""
    queue_id = play_queue_id(request.container_key) if request else ""
    item_id = media.play_queue_item_id or (request.extra.get("playQueueItemID", "") if request else "")
    entry = TimelineEntry(
        type=mtype, state=state, time=time_ms, duration=duration, key=key, rating_key=rating_key,
        container_key=request.container_key if request else "",
        play_queue_id=queue_id, play_queue_item_id=item_id,
        machine_identifier=request.machine_identifier if request else "",
        protocol=request.protocol if request and request.address else "",
        address=request.address if request else "",
        port=str(request.port) if request and request.address else "",
        volume=round(receiver.volume_level * 100) if receiver else None,
        mute=receiver.muted if receiver else None,
        controllable=CONTROLLABLE + (QUEUE_CONTROLLABLE if queue_id else ()),
    )
    location = _LOCATIONS.get(mtype, "navigation") if state != "error" else "navigation"
    return replace(_IDLE, location=location).with_entry(entry)


# Nothing playing: every entry stopped, still saying what the Chromecast can do (as real players'
# stopped entries do), so a controller draws its volume control before the first fling.
_IDLE = PlayerState(entries=MappingProxyType({t: TimelineEntry(type=t, controllable=CONTROLLABLE)
                                              for t in MEDIA_TYPES}))


def plex_load_message(request: MediaRequest, message_type: str = "LOAD") -> dict[str, Any]:
    """The LOAD the Plex receiver app expects, built with pychromecast's own helper (same shape
    as ``PlexController``) and completed with what that helper only fills from a plexapi object:
    the server's machineIdentifier, the token and our container key."""
    offset_s = request.offset_ms / 1000
    content_type = {"music": "audio", "audio": "audio", "photo": "photo"}.get(
        request.media_type.lower(), "video")
    msg = media_to_chromecast_command(
        None, type=message_type, contentId=request.key, contentType=content_type,
        protocol=request.protocol, address=request.address, port=request.port,
        version=request.extra.get("serverVersion", "1.10.1.4602"))
    # The helper's offset is typed as whole seconds; the Plex app takes fractional ones too.
    msg["media"]["currentTime"] = offset_s
    custom = msg["media"]["customData"]
    custom["offset"] = offset_s
    custom["server"]["machineIdentifier"] = request.machine_identifier
    custom["server"]["accessToken"] = request.token
    custom["containerKey"] = request.container_key or request.key
    custom["providerIdentifier"] = request.provider_identifier or "com.plexapp.plugins.library"
    if request.extra.get("playQueueItemID", "").isdigit():
        custom["playQueueItemID"] = int(request.extra["playQueueItemID"])
    return msg


def _cast_type_of(model: str) -> tuple[str, str]:
    # Both must be set, or the Chromecast constructor does a blocking DIAL lookup (30 s timeout
    # on port 8009) and on any other port silently decides the device is a cast group.
    return CAST_TYPES.get(model.lower(), (CAST_TYPE_CHROMECAST, "Unknown manufacturer"))


def _cast_uuid(ident: str) -> uuid.UUID:
    try:
        return uuid.UUID(ident)
    except ValueError:
        return uuid.uuid5(uuid.NAMESPACE_URL, f"companion-cast:{ident}")


# --- the adapter -----------------------------------------------------------------------------


class _NothingPlaying(Exception):
    """Raised on the worker thread when a media command has no media session to act on."""


class _NoOp(Exception):
    """A command with nothing to act on: a real player accepts it (200) and does nothing."""


class _PlexChannel(BaseController):
    """The Plex receiver's own namespace (urn:x-cast:plex): NEXT, PREVIOUS, SHOWDETAILS."""

    def __init__(self) -> None:
        super().__init__(PLEX_NAMESPACE, PLEX_APP_ID, app_must_match=True)

    def receive_message(self, _message: Any, _data: dict[str, Any]) -> bool:
        return False  # its MEDIA_STATUS also arrives on the media namespace, which we follow


class _Link:
    """One pychromecast connection (Chromecast + socket thread), its controllers, and the queue
    of requests its socket thread sends for us."""

    def __init__(self, generation: int, cast: pychromecast.Chromecast) -> None:
        self.generation = generation
        self.cast = cast
        self.plex = BaseMediaPlayer(supporting_app_id=PLEX_APP_ID, app_must_match=True)
        self.dmr = DefaultMediaReceiverController()
        self.plex_channel = _PlexChannel()
        self._outbox: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        client = cast.socket_client
        original = client._run_once

        def run_once() -> int:
            self.drain()
            return original()

        # SocketClient.run() calls self._run_once() in its loop; wrapping it on this instance
        # is the one place our requests can be written from the thread that also reads.
        client._run_once = run_once  # type: ignore[method-assign]

    def submit(self, job: Callable[[], None]) -> None:
        """Queue a job for the socket thread and wake it from its select()."""
        self._outbox.put(job)
        with contextlib.suppress(OSError):  # the thread is gone: the supervisor fails the rest
            self.cast.socket_client.socketpair[1].send(b"x")

    def drain(self) -> None:
        while True:
            try:
                job = self._outbox.get_nowait()
            except queue.Empty:
                return
            job()


class _Listener(CastStatusListener, MediaStatusListener, ConnectionStatusListener):
    """Runs on pychromecast's socket thread: snapshot, then hop to the event loop."""

    def __init__(self, owner: ChromecastTarget, generation: int) -> None:
        self._owner = owner
        self._generation = generation

    def new_cast_status(self, status: CastStatus) -> None:
        snap = ReceiverSnapshot(float(status.volume_level), bool(status.volume_muted), status.app_id)
        self._owner._post(self._owner._on_receiver, self._generation, snap)

    def new_media_status(self, status: MediaStatus) -> None:
        snap = MediaSnapshot.of(status, time.monotonic())
        self._owner._post(self._owner._on_media, self._generation, snap)

    def load_media_failed(self, queue_item_id: int, error_code: int) -> None:
        self._owner._post(self._owner._on_load_failed, self._generation, error_code)

    def new_connection_status(self, status: ConnectionStatus) -> None:
        self._owner._post(self._owner._on_connection, self._generation, status.status)


class ChromecastTarget:
    """A Chromecast as a bridge target (implements :class:`~companion.targets.base.TargetAdapter`)."""

    def __init__(self, target: Target, *, zeroconf: zeroconf.Zeroconf | None,
                 on_state: StateCallback, on_available: AvailabilityCallback,
                 command_timeout: float = 5.0, connect_retries: int = 3,
                 retry_wait: float = 5.0) -> None:
        self.target = target
        self._zeroconf = zeroconf
        self._on_state = on_state
        self._on_available = on_available
        self._command_timeout = command_timeout
        self._connect_retries = max(1, connect_retries)
        self._retry_wait = retry_wait
        self._loop: asyncio.AbstractEventLoop | None = None
        self._link: _Link | None = None
        self._retired: list[_Link] = []
        self._generation = 0
        self._connected = False
        self._available = False
        self._ever_connected = False
        self._thread_ended = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._stopping = False
        self._media: MediaSnapshot | None = None
        self._receiver: ReceiverSnapshot | None = None
        self._request: MediaRequest | None = None
        self._state = PlayerState()
        _guard_pychromecast_logs()

    def __repr__(self) -> str:
        return (f"ChromecastTarget({self.target.name!r}, {self.target.address}:{self.target.port}, "
                f"available={self._available})")

    # --- TargetAdapter surface ----------------------------------------------------------

    @property
    def features(self) -> frozenset[str]:
        return FEATURES

    @property
    def capabilities(self) -> tuple[str, ...]:
        return CAPABILITIES

    @property
    def available(self) -> bool:
        return self._available

    @property
    def state(self) -> PlayerState:
        return self._state

    async def start(self) -> None:
        if self._supervisor is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        self._supervisor = self._loop.create_task(
            self._supervise(), name=f"chromecast-supervisor:{self.target.id}")
        self._ticker = self._loop.create_task(
            self._tick(), name=f"chromecast-timeline:{self.target.id}")

    async def stop(self) -> None:
        self._stopping = True
        for task in (self._supervisor, self._ticker):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._supervisor = self._ticker = None
        links = [*self._retired, *([self._link] if self._link else [])]
        self._retired.clear()
        self._link = None
        self._connected = False
        self._available = False
        for link in links:
            await asyncio.to_thread(self._release, link)
            link.drain()

    async def send(self, command: Command) -> None:
        if command.group != "playback" or f"playback/{command.name}" not in FEATURES \
                or command.name == "playMedia":
            raise CommandNotSupported(
                f"{command.path} is not supported by Chromecast {self.target.name!r}")
        try:
            await self._send(command)
        except _NoOp as exc:
            # Per the Remote control API a controller treats a failed command as a disconnected
            # player; a real player accepts these and does nothing, so do we.
            log.info("Chromecast %r: %s is a no-op (%s); answered OK as a real player does",
                     self.target.name, command.path, exc)

    async def _send(self, command: Command) -> None:
        name = command.name
        if name in ("skipNext", "skipPrevious"):
            await self._plex_message(name, {"type": PLEX_NEXT if name == "skipNext" else PLEX_PREVIOUS})
        elif name == "skipTo":
            await self._skip_to(command)
        elif name in ("play", "pause", "stop"):
            await self._media_command(name, {"type": name.upper()})
        elif name == "seekTo":
            offset = max(0, _int_param(command, "offset"))
            await self._media_command(name, {"type": "SEEK", "currentTime": offset / 1000,
                                             "resumeState": "PLAYBACK_START"})
        elif name in ("stepForward", "stepBack"):
            await self._step(STEP_FORWARD_S if name == "stepForward" else -STEP_BACK_S)
        elif name == "setParameters":
            await self._set_parameters(command)

    async def play_media(self, request: MediaRequest, command: Command) -> None:
        if command.group == "mirror":
            await self._show_details(request)
            return
        if not request.extra.get("stream_url") and not (
                request.protocol in ("http", "https") and request.address):
            raise ProtocolError(
                f"playMedia for Chromecast {self.target.name!r} has neither a server address nor "
                "a stream URL")
        link = self._require_link()
        # Known before the LOAD is answered, so the first MEDIA_STATUS already carries the
        # server and play-queue fields; put back if the device refuses.
        previous, self._request = self._request, request
        try:
            await self._load(link, request)
        except BaseException:
            self._request = previous
            raise
        self._publish()

    async def _load(self, link: _Link, request: MediaRequest) -> None:
        stream_url = request.extra.get("stream_url", "")
        if stream_url:
            content_type = request.extra.get("content_type") or (
                "audio/mpeg" if _timeline_type(request.media_type) == "music" else "video/mp4")
            offset_s = request.offset_ms / 1000

            def load_url(cb: CallbackType) -> None:
                link.dmr.play_media(stream_url, content_type, current_time=offset_s,
                                    stream_type="BUFFERED", callback_function=cb)

            await self._call(link, "playMedia (Default Media Receiver)", load_url, _MEDIA_OK)
        else:
            def load_plex(cb: CallbackType) -> None:
                # Launches the Plex app first when it is not the running app (app_must_match),
                # then sends LOAD on the media namespace to the app's transport.
                link.plex.send_message(plex_load_message(request), inc_session_id=True,
                                       callback_function=cb)

            await self._call(link, "playMedia (Plex app)", load_plex, _MEDIA_OK)

    # --- commands ----------------------------------------------------------------------------

    def _plex_app_playing(self) -> bool:
        return (self._receiver is not None and self._receiver.app_id == PLEX_APP_ID
                and self._media is not None and self._media.player_state in _PLAYER_STATES)

    async def _plex_message(self, what: str, payload: dict[str, Any]) -> None:
        """One of the Plex receiver's own commands, on its namespace, without waiting for a reply."""
        if not self._plex_app_playing():
            raise _NoOp("the Plex app is not playing anything")
        link = self._require_link()

        def send(cb: CallbackType) -> None:
            # cb fires when the message is written (no reply is awaited, as PlexController does).
            link.plex_channel.send_message(dict(payload), inc_session_id=True, callback_function=cb,
                                           no_add_request_id=True)

        await self._call(link, what, send, _MEDIA_OK)

    async def _skip_to(self, command: Command) -> None:
        """skipTo: the Plex receiver LOADs the same play queue at the chosen item."""
        key = command.params.get("key", "").strip()
        if not key:
            raise ProtocolError(f"{command.path}: key is required")
        request = self._request
        if request is None or not play_queue_id(request.container_key) or not self._plex_app_playing():
            raise _NoOp("no play queue is playing")
        extra = dict(request.extra)
        if key.isdigit():  # a playQueueItemID (MA, PKC): the receiver selects it in the queue
            extra["playQueueItemID"] = key
            key = request.key
        elif not key.startswith("/library/"):
            raise ProtocolError(f"{command.path}: key: expected /library/metadata/N or a playQueueItemID")
        else:
            extra.pop("playQueueItemID", None)
        await self.play_media(dataclasses.replace(request, key=key, offset_ms=0, extra=extra),
                              Command(group="playback", name="playMedia"))

    async def _show_details(self, request: MediaRequest) -> None:
        """mirror/details: the Plex app shows the item's page (SHOWDETAILS), nothing starts playing."""
        link = self._require_link()
        message = plex_load_message(request, PLEX_DETAILS)

        def send(cb: CallbackType) -> None:
            # As pychromecast's PlexController.show_media: the app launched if need be, then the
            # message (it carries its own requestId) written; cb fires then, no reply is awaited.
            link.plex_channel.send_message(message, inc_session_id=True, callback_function=cb,
                                           no_add_request_id=True)

        await self._call(link, "mirror/details", send, _MEDIA_OK)

    async def _media_command(self, what: str, payload: dict[str, Any]) -> None:
        link = self._require_link()
        controller = link.cast.media_controller

        def send(cb: CallbackType) -> None:
            session = controller.status.media_session_id
            if session is None:
                raise _NothingPlaying
            controller.send_message({**payload, "mediaSessionId": session}, inc_session_id=True,
                                    callback_function=cb)

        await self._call(link, what, send, _MEDIA_OK)

    async def _step(self, delta_s: float) -> None:
        link = self._require_link()
        controller = link.cast.media_controller

        def send(cb: CallbackType) -> None:
            status = controller.status
            if status.media_session_id is None:
                raise _NothingPlaying
            position = max(0.0, (status.adjusted_current_time or 0.0) + delta_s)
            if status.duration:
                position = min(position, float(status.duration))
            controller.send_message(
                {"type": "SEEK", "currentTime": position, "resumeState": "PLAYBACK_START",
                 "mediaSessionId": status.media_session_id},
                inc_session_id=True, callback_function=cb)

        await self._call(link, "stepForward" if delta_s > 0 else "stepBack", send, _MEDIA_OK)

    async def _set_parameters(self, command: Command) -> None:
        params = command.params
        volume: dict[str, Any] = {}
        if "volume" in params:
            level = _int_param(command, "volume")
            if not 0 <= level <= 100:
                raise ProtocolError(f"{command.path}: volume must be 0..100, got {level}")
            volume["level"] = level / 100
        if "mute" in params:
            raw = params["mute"].strip().lower()
            if raw not in ("0", "1", "true", "false"):
                raise ProtocolError(f"{command.path}: mute must be 0 or 1, got {params['mute']!r}")
            volume["muted"] = raw in ("1", "true")
        if not volume:
            # shuffle, repeat, subtitle settings...: not in this face's controllable list, so a
            # controller should not send them; a real player accepts what it ignores (PMP).
            raise _NoOp(f"a Chromecast takes only volume and mute here (got "
                        f"{', '.join(sorted(params)) or 'no parameters'})")
        link = self._require_link()
        receiver = link.cast.socket_client.receiver_controller
        for key, value in volume.items():
            def send(cb: CallbackType, key: str = key, value: Any = value) -> None:
                receiver.send_message({"type": "SET_VOLUME", "volume": {key: value}},
                                      callback_function=cb)

            await self._call(link, "setParameters", send, _RECEIVER_OK)

    def _require_link(self) -> _Link:
        if self._link is None or not self._connected:
            raise TargetUnavailable(
                f"Chromecast {self.target.name!r} at {self.target.address}:{self.target.port} "
                "is not connected")
        return self._link

    async def _call(self, link: _Link, what: str, send: Callable[[CallbackType], None],
                    ok: frozenset[str]) -> dict[str, Any] | None:
        """Have the socket thread send one request; await its reply (matched by requestId by
        pychromecast) in the loop, within command_timeout."""
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[tuple[bool, dict[str, Any] | None]] = loop.create_future()

        def callback(sent: bool, response: dict[str, Any] | None) -> None:
            self._post(_settle, reply, sent, response)

        def job() -> None:  # runs on pychromecast's socket thread
            try:
                send(callback)
            except Exception as err:  # handed to the waiting coroutine, which translates it
                self._post(_fail, reply, err)

        who = f"Chromecast {self.target.name!r} ({self.target.address}:{self.target.port})"
        try:
            # No thread of ours blocks here. A device that stops reading can still hold the
            # socket thread in sendall until the socket timeout (set to command_timeout).
            async with asyncio.timeout(self._command_timeout):
                link.submit(job)
                sent, response = await reply
        except TimeoutError:
            self._set_available(False)
            raise TargetTimeout(f"{who} did not answer {what} within "
                                f"{self._command_timeout:g} s") from None
        except _NothingPlaying:
            raise _NoOp(f"{what} needs something playing, and nothing is") from None
        except PyChromecastError as err:
            raise TargetUnavailable(f"{who} could not take {what}: {err}") from None
        if not sent:
            if response is not None:
                reason = response.get("reason") or response.get("type") or "refused"
                raise TargetError(f"{who} refused {what}: {reason}")
            raise TargetUnavailable(f"{who} lost the connection during {what}")
        if response is not None and response.get("type") not in ok:
            reason = response.get("reason") or response.get("detailedErrorCode") or ""
            raise TargetError(f"{who} refused {what}: {response.get('type')} {reason}".rstrip())
        self._set_available(True)
        return response

    # --- connection lifecycle ---------------------------------------------------------------

    async def _supervise(self) -> None:
        backoff = self._retry_wait
        while not self._stopping:
            self._thread_ended.clear()
            self._ever_connected = False
            try:
                self._link = self._connect()
            except (PyChromecastError, OSError, ValueError) as err:
                log.warning("%r: cannot set up a Cast connection: %s", self, err)
            else:
                await self._thread_ended.wait()
                # pychromecast's thread gave up (retries exhausted) and is ending: retire it
                # and build a fresh connection later, so the target comes back with the device.
                link, self._link = self._link, None
                if link is not None:
                    self._retired.append(link)
                    await asyncio.to_thread(self._release, link)
                    self._retired.remove(link)
                    # Requests queued after the thread's last loop: pychromecast is stopped, so
                    # each fails at once with PyChromecastStopped instead of timing out.
                    link.drain()
            backoff = self._retry_wait if self._ever_connected else min(
                backoff * 2, MAX_RECONNECT_BACKOFF)
            log.debug("%r: reconnecting in %.1f s", self, backoff)
            await asyncio.sleep(backoff)

    def _connect(self) -> _Link:
        self._generation += 1
        cast_type, manufacturer = _cast_type_of(self.target.model)
        info = CastInfo(
            services={HostServiceInfo(self.target.address, self.target.port)},
            uuid=_cast_uuid(self.target.ident), model_name=self.target.model or None,
            friendly_name=self.target.name, host=self.target.address, port=self.target.port,
            cast_type=cast_type, manufacturer=manufacturer)
        # With cast_type set this does no network I/O (no DIAL), so it is safe in the loop; the
        # connection itself happens on the socket thread started below.
        cast = pychromecast.get_chromecast_from_cast_info(
            info, self._zeroconf, tries=self._connect_retries, retry_wait=self._retry_wait,
            timeout=self._command_timeout)
        link = _Link(self._generation, cast)
        listener = _Listener(self, self._generation)
        cast.register_status_listener(listener)
        cast.media_controller.register_status_listener(listener)
        cast.register_connection_listener(listener)
        cast.register_handler(link.plex)
        cast.register_handler(link.dmr)
        cast.register_handler(link.plex_channel)
        cast.start()
        return link

    def _release(self, link: _Link) -> None:
        """Worker thread: stop one socket thread and wait for it (bounded)."""
        join_timeout = self._command_timeout + self._retry_wait + 1.0
        try:
            link.cast.disconnect(timeout=join_timeout)
        except TimeoutError:
            log.warning("%r: pychromecast thread did not end within %.1f s", self, join_timeout)
            return
        client = link.cast.socket_client
        # When the first connection never succeeds, pychromecast's thread returns without its
        # own cleanup and leaves the wake-up socketpair, the selector and the last socket open.
        for sock in (*client.socketpair, client.socket):
            if sock is not None:
                sock.close()
        client.selector.close()

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        """Thread-safe hop into the event loop (dropped once the loop is gone)."""
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(fn, *args)

    def _set_available(self, available: bool) -> None:
        if available == self._available or self._stopping:
            return
        self._available = available
        log.info("Chromecast %r is %s", self.target.name, "available" if available else "unavailable")
        self._on_available(available)

    # --- loop-side handlers of pychromecast events --------------------------------------------

    def _on_connection(self, generation: int, status: str) -> None:
        if generation != self._generation or self._stopping:
            return
        if status == CONNECTION_STATUS_CONNECTED:
            # Not yet "available": a device that accepts TLS but never speaks Cast is not a
            # usable player. pychromecast asks for the receiver status right after connecting;
            # the answer (see _on_receiver) is what makes the target available.
            self._connected = True
            self._ever_connected = True
            return
        self._connected = False
        if status != CONNECTION_STATUS_CONNECTING:
            self._set_available(False)
        if status == CONNECTION_STATUS_DISCONNECTED:
            self._media = None
            self._publish()
            self._thread_ended.set()

    def _on_receiver(self, generation: int, snap: ReceiverSnapshot) -> None:
        if generation != self._generation or self._stopping:
            return
        self._receiver = snap
        if self._connected:
            self._set_available(True)  # it talks again after a timeout
        self._publish()

    def _on_media(self, generation: int, snap: MediaSnapshot) -> None:
        if generation != self._generation or self._stopping:
            return
        self._media = snap
        if self._connected:
            self._set_available(True)
        self._publish()

    def _on_load_failed(self, generation: int, error_code: int) -> None:
        if generation == self._generation:
            log.warning("Chromecast %r could not load the media (Cast error %d)", self.target.name,
                        error_code)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_INTERVAL)
            if self._media is not None and self._media.player_state == "PLAYING":
                self._publish()

    def _publish(self) -> None:
        state = player_state_from(self._media, self._receiver, self._request, time.monotonic())
        if state != self._state:
            self._state = state
            self._on_state(state)


def _fail(fut: asyncio.Future[tuple[bool, dict[str, Any] | None]], err: Exception) -> None:
    if not fut.done():
        fut.set_exception(err)


def _settle(fut: asyncio.Future[tuple[bool, dict[str, Any] | None]], sent: bool,
            response: dict[str, Any] | None) -> None:
    if not fut.done():
        fut.set_result((sent, response))


def _int_param(command: Command, name: str) -> int:
    raw = command.params.get(name)
    if raw is None:
        raise ProtocolError(f"{command.path}: missing parameter {name!r}")
    try:
        return int(float(raw))
    except (ValueError, OverflowError):
        raise ProtocolError(f"{command.path}: {name} must be a number, got {raw!r}") from None
