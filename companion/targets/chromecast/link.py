"""One pychromecast connection to a Chromecast: its socket thread, controllers, request queue and
status listener; the one place that touches pychromecast's private ``SocketClient._run_once``.

Why the private hook: pychromecast reads its TLS socket on its own socket thread, and a write
from another thread at the same moment corrupts the TLS stream (``DECRYPTION_FAILED_OR_BAD_RECORD_MAC``;
our stress runs hit it, and so do Home Assistant users, home-assistant/core#111762 and #141619).
pychromecast offers no public way to run code on that thread, so :class:`Link` wraps the
instance's ``_run_once`` (called by ``SocketClient.run()`` once per loop) to send our queued
requests first; :meth:`Link.submit` wakes the thread from its ``select()`` through the client's
wake-up socketpair. If a pychromecast release renames ``_run_once``, only this module changes.

Everything the socket thread reports is snapshotted there (pychromecast mutates its status
objects in place) and handed to the event loop through :class:`LinkEvents`.
"""

from __future__ import annotations

import contextlib
import queue
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pychromecast
import zeroconf
from pychromecast.const import CAST_TYPE_CHROMECAST, CAST_TYPES
from pychromecast.controllers.media import (
    BaseMediaPlayer,
    DefaultMediaReceiverController,
    MediaStatus,
    MediaStatusListener,
)
from pychromecast.controllers.receiver import CastStatus, CastStatusListener
from pychromecast.models import CastInfo, HostServiceInfo
from pychromecast.socket_client import ConnectionStatus, ConnectionStatusListener

from companion.model import Target
from companion.targets.chromecast.messages import PLEX_APP_ID, PlexChannel
from companion.targets.chromecast.status import MediaSnapshot, ReceiverSnapshot


@dataclass(frozen=True)
class LinkEvents:
    """Where a link reports: ``post`` hops into the event loop, where the others run with the
    link's generation (so reports of a retired link can be told apart)."""

    post: Callable[..., None]  # thread-safe: post(fn, *args) runs fn(*args) in the loop
    connection: Callable[[int, str], None]
    receiver: Callable[[int, ReceiverSnapshot], None]
    media: Callable[[int, MediaSnapshot], None]
    load_failed: Callable[[int, int], None]


class Link:
    """One pychromecast connection (Chromecast + socket thread), its controllers, and the queue
    of requests its socket thread sends for us."""

    def __init__(self, generation: int, cast: pychromecast.Chromecast) -> None:
        self.generation = generation
        self.cast = cast
        self.plex = BaseMediaPlayer(supporting_app_id=PLEX_APP_ID, app_must_match=True)
        self.dmr = DefaultMediaReceiverController()
        self.plex_channel = PlexChannel()
        self._outbox: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        client = cast.socket_client
        original = client._run_once

        def run_once() -> int:
            self.drain()
            return original()

        # SocketClient.run() calls self._run_once() in its loop; wrapping it on this instance
        # is the one place our requests can be written from the thread that also reads (the
        # module docstring says why no other thread may write).
        client._run_once = run_once  # type: ignore[method-assign]

    def submit(self, job: Callable[[], None]) -> None:
        """Queue a job for the socket thread and wake it from its select()."""
        self._outbox.put(job)
        with contextlib.suppress(OSError):  # the thread is gone: the supervisor fails the rest
            self.cast.socket_client.socketpair[1].send(b"x")

    def drain(self) -> None:
        """Run every queued job now (on the socket thread, or after it has ended)."""
        while True:
            try:
                job = self._outbox.get_nowait()
            except queue.Empty:
                return
            job()

    def close(self, join_timeout: float) -> bool:
        """Blocking (a worker thread): stop the socket thread and wait for it, bounded; False if
        it did not end in time."""
        try:
            self.cast.disconnect(timeout=join_timeout)
        except TimeoutError:
            return False
        client = self.cast.socket_client
        # When the first connection never succeeds, pychromecast's thread returns without its
        # own cleanup and leaves the wake-up socketpair, the selector and the last socket open.
        for sock in (*client.socketpair, client.socket):
            if sock is not None:
                sock.close()
        client.selector.close()
        return True


def open_link(target: Target, generation: int, zc: zeroconf.Zeroconf | None, events: LinkEvents, *,
              tries: int, retry_wait: float, timeout: float) -> Link:
    """Build the connection to ``target`` and start its socket thread (no network I/O here)."""
    cast_type, manufacturer = _cast_type_of(target.model)
    info = CastInfo(
        services={HostServiceInfo(target.address, target.port)},
        uuid=_cast_uuid(target.ident), model_name=target.model or None,
        friendly_name=target.name, host=target.address, port=target.port,
        cast_type=cast_type, manufacturer=manufacturer)
    # With cast_type set this does no network I/O (no DIAL), so it is safe in the loop; the
    # connection itself happens on the socket thread started below.
    cast = pychromecast.get_chromecast_from_cast_info(
        info, zc, tries=tries, retry_wait=retry_wait, timeout=timeout)
    link = Link(generation, cast)
    listener = _Listener(events, generation)
    cast.register_status_listener(listener)
    cast.media_controller.register_status_listener(listener)
    cast.register_connection_listener(listener)
    cast.register_handler(link.plex)
    cast.register_handler(link.dmr)
    cast.register_handler(link.plex_channel)
    cast.start()
    return link


class _Listener(CastStatusListener, MediaStatusListener, ConnectionStatusListener):
    """Runs on pychromecast's socket thread: snapshot, then hop to the event loop."""

    def __init__(self, events: LinkEvents, generation: int) -> None:
        self._events = events
        self._generation = generation

    def new_cast_status(self, status: CastStatus) -> None:
        self._events.post(self._events.receiver, self._generation, ReceiverSnapshot.of(status))

    def new_media_status(self, status: MediaStatus) -> None:
        snap = MediaSnapshot.of(status, time.monotonic())
        self._events.post(self._events.media, self._generation, snap)

    def load_media_failed(self, queue_item_id: int, error_code: int) -> None:
        self._events.post(self._events.load_failed, self._generation, error_code)

    def new_connection_status(self, status: ConnectionStatus) -> None:
        self._events.post(self._events.connection, self._generation, status.status)


def _cast_type_of(model: str) -> tuple[str, str]:
    # Both must be set, or the Chromecast constructor does a blocking DIAL lookup (30 s timeout
    # on port 8009) and on any other port silently decides the device is a cast group.
    return CAST_TYPES.get(model.lower(), (CAST_TYPE_CHROMECAST, "Unknown manufacturer"))


def _cast_uuid(ident: str) -> uuid.UUID:
    try:
        return uuid.UUID(ident)
    except ValueError:
        return uuid.uuid5(uuid.NAMESPACE_URL, f"companion-cast:{ident}")
