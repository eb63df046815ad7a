"""Carrying Companion commands to a Chromecast through pychromecast, and following its status.

pychromecast is thread-based: one socket thread per device, listeners called on that thread,
blocking request/response. This adapter keeps that world behind a fence:

* requests are written by pychromecast's own socket thread, never by ours (``link.py`` says why,
  and is the one place that reaches into pychromecast for it): each request is queued on the
  connection and the socket thread is woken to send it;
* the other blocking calls (disconnect and join) go through ``asyncio.to_thread``;
* every listener callback is snapshotted on the socket thread (``status.py``) and handed to the
  event loop with ``call_soon_threadsafe``;
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
import time
from collections.abc import Callable
from typing import Any

import zeroconf
from pychromecast.error import PyChromecastError
from pychromecast.response_handler import CallbackType
from pychromecast.socket_client import (
    CONNECTION_STATUS_CONNECTED,
    CONNECTION_STATUS_CONNECTING,
    CONNECTION_STATUS_DISCONNECTED,
)

from companion.errors import (
    CommandNotSupported,
    ProtocolError,
    TargetError,
    TargetTimeout,
    TargetUnavailable,
)
from companion.model import Command, MediaRequest, Target
from companion.proto.timeline import PlayerState
from companion.targets.base import AvailabilityCallback, StateCallback
from companion.targets.chromecast import messages
from companion.targets.chromecast.link import Link, LinkEvents, open_link
from companion.targets.chromecast.messages import PLEX_APP_ID, PLEX_DETAILS, guard_pychromecast_logs
from companion.targets.chromecast.status import (
    PLAYER_STATES,
    MediaSnapshot,
    ReceiverSnapshot,
    play_queue_id,
    player_state_from,
    timeline_type,
)

log = logging.getLogger(__name__)

STEP_FORWARD_S = 30.0
STEP_BACK_S = 10.0
MAX_RECONNECT_BACKOFF = 60.0
# Cast devices report their position only when something changes; while playing, the timeline
# is re-published this often with the position extrapolated from the last report.
TICK_INTERVAL = 1.0
FEATURES = frozenset({
    "playback/playMedia", "playback/play", "playback/pause", "playback/stop", "playback/seekTo",
    "playback/stepForward", "playback/stepBack", "playback/setParameters",
    "playback/skipNext", "playback/skipPrevious", "playback/skipTo", "mirror/details",
})
# mirror: /player/mirror/details shows the item's details page (the Plex receiver's SHOWDETAILS).
CAPABILITIES = ("timeline", "playback", "mirror")

_MEDIA_OK = frozenset({"MEDIA_STATUS"})
_RECEIVER_OK = frozenset({"RECEIVER_STATUS"})


class _NothingPlaying(Exception):
    """Raised on the worker thread when a media command has no media session to act on."""


class _NoOp(Exception):
    """A command with nothing to act on: a real player accepts it (200) and does nothing."""


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
        self._link: Link | None = None
        self._retired: list[Link] = []
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
        self._events = LinkEvents(self._post, self._on_connection, self._on_receiver, self._on_media,
                                  self._on_load_failed)
        guard_pychromecast_logs()

    def __repr__(self) -> str:
        return (f"ChromecastTarget({self.target.name!r}, {self.target.address}:{self.target.port}, "
                f"available={self._available})")

    # --- TargetAdapter surface ----------------------------------------------------------

    @property
    def features(self) -> frozenset[str]:
        """The playback commands a Chromecast can carry, and mirror/details (no navigation)."""
        return FEATURES

    @property
    def capabilities(self) -> tuple[str, ...]:
        """timeline, playback and mirror: a Chromecast has no UI to navigate."""
        return CAPABILITIES

    @property
    def available(self) -> bool:
        """True once the device answered over a live connection; False while it does not."""
        return self._available

    @property
    def state(self) -> PlayerState:
        """The timeline last published through ``on_state``."""
        return self._state

    async def start(self) -> None:
        """Start the connection supervisor and the timeline ticker; never raises for an absent device."""
        if self._supervisor is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        self._supervisor = self._loop.create_task(
            self._supervise(), name=f"chromecast-supervisor:{self.target.id}")
        self._ticker = self._loop.create_task(
            self._tick(), name=f"chromecast-timeline:{self.target.id}")

    async def stop(self) -> None:
        """Stop both tasks, then disconnect and join every socket thread this adapter started."""
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
        """Carry one playback command; one with nothing to act on is an accepted no-op."""
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
            await self._plex_message(name, messages.plex_skip(name))
        elif name == "skipTo":
            await self._skip_to(command)
        elif name in ("play", "pause", "stop"):
            await self._media_command(name, messages.media_command(name))
        elif name == "seekTo":
            offset = max(0, _int_param(command, "offset"))
            await self._media_command(name, messages.seek(offset / 1000))
        elif name in ("stepForward", "stepBack"):
            await self._step(STEP_FORWARD_S if name == "stepForward" else -STEP_BACK_S)
        elif name == "setParameters":
            await self._set_parameters(command)

    async def play_media(self, request: MediaRequest, command: Command) -> None:
        """LOAD the decided media (Plex app, or a stream URL on the Default Media Receiver), or
        show its details for mirror/details."""
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

    async def _load(self, link: Link, request: MediaRequest) -> None:
        stream_url = request.extra.get("stream_url", "")
        if stream_url:
            content_type = request.extra.get("content_type") or (
                "audio/mpeg" if timeline_type(request.media_type) == "music" else "video/mp4")
            offset_s = request.offset_ms / 1000

            def load_url(cb: CallbackType) -> None:
                link.dmr.play_media(stream_url, content_type, current_time=offset_s,
                                    stream_type="BUFFERED", callback_function=cb)

            await self._call(link, "playMedia (Default Media Receiver)", load_url, _MEDIA_OK)
        else:
            def load_plex(cb: CallbackType) -> None:
                # Launches the Plex app first when it is not the running app (app_must_match),
                # then sends LOAD on the media namespace to the app's transport.
                link.plex.send_message(messages.plex_load_message(request), inc_session_id=True,
                                       callback_function=cb)

            await self._call(link, "playMedia (Plex app)", load_plex, _MEDIA_OK)

    # --- commands ----------------------------------------------------------------------------

    def _plex_app_playing(self) -> bool:
        return (self._receiver is not None and self._receiver.app_id == PLEX_APP_ID
                and self._media is not None and self._media.player_state in PLAYER_STATES)

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
        message = messages.plex_load_message(request, PLEX_DETAILS)

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
                {**messages.seek(position), "mediaSessionId": status.media_session_id},
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
                receiver.send_message(messages.set_volume(key, value),
                                      callback_function=cb)

            await self._call(link, "setParameters", send, _RECEIVER_OK)

    def _require_link(self) -> Link:
        if self._link is None or not self._connected:
            raise TargetUnavailable(
                f"Chromecast {self.target.name!r} at {self.target.address}:{self.target.port} "
                "is not connected")
        return self._link

    async def _call(self, link: Link, what: str, send: Callable[[CallbackType], None],
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
        except TimeoutError as exc:
            self._set_available(False)
            raise TargetTimeout(f"{who} did not answer {what} within "
                                f"{self._command_timeout:g} s") from exc
        except _NothingPlaying as exc:
            raise _NoOp(f"{what} needs something playing, and nothing is") from exc
        except PyChromecastError as exc:
            raise TargetUnavailable(f"{who} could not take {what}: {exc}") from exc
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

    def _connect(self) -> Link:
        self._generation += 1
        return open_link(self.target, self._generation, self._zeroconf, self._events,
                         tries=self._connect_retries, retry_wait=self._retry_wait,
                         timeout=self._command_timeout)

    def _release(self, link: Link) -> None:
        """Worker thread: stop one socket thread and wait for it (bounded)."""
        join_timeout = self._command_timeout + self._retry_wait + 1.0
        if not link.close(join_timeout):
            log.warning("%r: pychromecast thread did not end within %.1f s", self, join_timeout)

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
    except (ValueError, OverflowError) as exc:
        raise ProtocolError(f"{command.path}: {name} must be a number, got {raw!r}") from exc
