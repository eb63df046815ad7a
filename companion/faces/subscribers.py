"""A face's timeline audience: push subscribers, long-polls, and each controller's latest commandID.

Pushes go out in parallel, one in flight per subscriber (later changes coalesce into one more
push), each bounded by a timeout, so a dead controller never delays a live one. Subscriptions
expire ``subscriber_expiry`` seconds after the controller's last subscribe or poll; expiry is
checked lazily against an injectable clock, so no timer task exists just for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from companion.errors import CompanionError, ProtocolError
from companion.faces.push import PushConnection, PushFailed, open_push_connection, push_request
from companion.limits import ThrottledLog, heaviest_source

log = logging.getLogger(__name__)

Clock = Callable[[], float]
# Renders the current timeline for one controller's commandID (and whether it asked for metadata).
Renderer = Callable[[int | None, bool], bytes]

# Remembered commandIDs are bounded: controllers come and go, a hostile one could invent ids.
_MAX_COMMAND_IDS = 1024


class FaceBusy(CompanionError):
    """A face is at its subscriber limit (answered 503)."""


@dataclass
class _Subscriber:
    client_id: str
    url: str
    name: str
    last_seen: float
    source: str = ""
    task: asyncio.Task[None] | None = None
    dirty: bool = False
    failures: int = 0
    # Where plain-http pushes go (host, port, Host header), and the connection kept for them.
    address: tuple[str, int, str] | None = None
    connection: PushConnection | None = None

    def close(self) -> None:
        """Close the kept push connection, if any."""
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def callback_url(protocol: str, peer: str, port: int) -> str:
    """``protocol://<peer>:<port>/:/timeline``; the peer is the TCP peer, never a parameter."""
    if protocol not in ("http", "https"):
        raise ProtocolError(f"subscribe: protocol: expected http or https, got {protocol[:16]!r}")
    if peer.startswith("::ffff:") and "." in peer:
        peer = peer[len("::ffff:"):]
    host = f"[{peer}]" if ":" in peer else peer
    return f"{protocol}://{host}:{port}/:/timeline"


def _push_address(protocol: str, peer: str, port: int) -> tuple[str, int, str] | None:
    """(host, port, Host header) of a plain-http callback; None for https (sent through the session)."""
    if protocol != "http":
        return None
    if peer.startswith("::ffff:") and "." in peer:
        peer = peer[len("::ffff:"):]
    host = f"[{peer}]" if ":" in peer else peer
    return peer, port, host if port == 80 else f"{host}:{port}"


class Subscribers:
    """Push subscribers and long-polls of one face.

    ``render`` gives the current timeline for a commandID; ``headers`` the face's X-Plex-* push
    headers. Both are read at send time so a push always carries the latest state.
    """

    def __init__(self, *, render: Renderer, headers: Callable[[], Mapping[str, str]],
                 session: aiohttp.ClientSession, max_subscribers: int = 64, per_source: int = 8,
                 max_long_polls: int = 256,
                 poll_hold: float = 30.0, push_timeout: float = 5.0, expiry: float = 90.0,
                 playing_push_interval: float = 1.0, clock: Clock = time.monotonic,
                 name: str = "face") -> None:
        self._render = render
        self._headers = headers
        self._session = session
        self._max_subscribers = max_subscribers
        self._per_source = per_source
        self._push_failures = ThrottledLog(log)
        self._max_long_polls = max_long_polls
        self._poll_hold = poll_hold
        self._push_timeout = push_timeout
        self._expiry = expiry
        self._interval = playing_push_interval
        self._clock = clock
        self._name = name
        self._subs: dict[str, _Subscriber] = {}
        self._command_ids: OrderedDict[str, int] = OrderedDict()
        self._changed = asyncio.Event()
        self._open_polls = 0
        self._closing = False
        self._playing = False
        self._ticker: asyncio.Task[None] | None = None
        self._last_broadcast = 0.0
        self._tasks: set[asyncio.Task[None]] = set()

    # -- commandIDs -----------------------------------------------------------------------

    def note_command(self, client_id: str, command_id: int | None) -> None:
        """Remember a controller's latest commandID (echoed in its pushes and polls)."""
        if not client_id or command_id is None:
            return
        self._command_ids[client_id] = command_id
        self._command_ids.move_to_end(client_id)
        while len(self._command_ids) > _MAX_COMMAND_IDS:
            self._command_ids.popitem(last=False)

    def command_id(self, client_id: str) -> int | None:
        """That controller's latest commandID, if known."""
        return self._command_ids.get(client_id)

    def render_for(self, client_id: str) -> bytes:
        """The current timeline with that controller's latest commandID."""
        return self._render(self.command_id(client_id), False)

    # -- counts (metrics) -----------------------------------------------------------------

    @property
    def count(self) -> int:
        """Live push subscribers."""
        self._expire()
        return len(self._subs)

    @property
    def open_polls(self) -> int:
        """Long-polls currently held."""
        return self._open_polls

    def subscribed(self, client_id: str) -> bool:
        """True while that controller holds a live push subscription."""
        self._expire()
        return client_id in self._subs

    # -- subscribe / unsubscribe / poll ---------------------------------------------------

    def subscribe(self, client_id: str, *, protocol: str, peer: str, port: int, name: str = "",
                  command_id: int | None = None) -> None:
        """Add or refresh a push subscriber and push the current timeline to it at once."""
        if not client_id:
            raise ProtocolError("subscribe: X-Plex-Client-Identifier is required")
        if self._closing:
            raise FaceBusy("subscribe: this player is shutting down")
        url = callback_url(protocol, peer, port)
        address = _push_address(protocol, peer, port)
        self.note_command(client_id, command_id)
        self._expire()
        sub = self._subs.get(client_id)
        if sub is None:
            self._make_room(peer)
            sub = _Subscriber(client_id=client_id, url=url, name=name, last_seen=self._clock(), source=peer,
                              address=address)
            self._subs[client_id] = sub
            log.info("%s: controller %r (%s) subscribed, pushing to %s", self._name, name, client_id, url)
        else:
            if address != sub.address:
                sub.close()
            sub.url, sub.name, sub.last_seen, sub.failures = url, name, self._clock(), 0
            sub.address = address
        self._kick(sub)

    def _make_room(self, peer: str) -> None:
        """Room for one more subscriber from ``peer``, or FaceBusy. The cap is per source address: one
        address inventing client ids fills only its own share, and when the face is full the address
        holding the most gives up its oldest subscriber to an address holding fewer."""
        counts: dict[str, int] = {}
        for sub in self._subs.values():
            counts[sub.source] = counts.get(sub.source, 0) + 1
        if counts.get(peer, 0) >= self._per_source:
            raise FaceBusy(f"subscribe: this player already has {self._per_source} subscribers from {peer}")
        if len(self._subs) < self._max_subscribers:
            return
        source = heaviest_source(counts, peer)
        if source is None:
            raise FaceBusy(f"subscribe: this player already has {self._max_subscribers} subscribers")
        oldest = min((s for s in self._subs.values() if s.source == source), key=lambda s: s.last_seen)
        self._drop(oldest.client_id, f"gave way to a subscriber from {peer} ({source} held the most)")

    def unsubscribe(self, client_id: str, command_id: int | None = None) -> None:
        """Drop that controller's push subscription (remembering its commandID)."""
        self.note_command(client_id, command_id)
        self._drop(client_id, "unsubscribed")

    def _drop(self, client_id: str, why: str) -> None:
        sub = self._subs.pop(client_id, None)
        if sub is not None:
            log.info("%s: controller %r (%s) %s", self._name, sub.name, client_id, why)
            if sub.task is not None:
                sub.task.cancel()
            sub.close()

    def touch(self, client_id: str) -> None:
        """A poll counts as a sign of life for that controller's push subscription."""
        sub = self._subs.get(client_id)
        if sub is not None:
            sub.last_seen = self._clock()

    def answer(self, client_id: str, *, command_id: int | None, include_metadata: bool = False) -> bytes:
        """The timeline for this controller now: a poll without ``wait``, answered without a coroutine."""
        self.note_command(client_id, command_id)
        self.touch(client_id)
        return self._render(self.command_id(client_id), include_metadata)

    async def poll(self, client_id: str, *, command_id: int | None, wait: bool,
                   include_metadata: bool = False) -> bytes:
        """The timeline for this controller: at once, or (``wait``) after the next change.

        A long-poll is answered at the latest after ``poll_hold`` seconds, at stop, or at once
        when ``max_long_polls`` are already held (degrading to a plain poll rather than refusing).
        """
        if not wait:
            return self.answer(client_id, command_id=command_id, include_metadata=include_metadata)
        self.note_command(client_id, command_id)
        self.touch(client_id)
        if not self._closing and self._open_polls < self._max_long_polls:
            event = self._changed
            self._open_polls += 1
            try:
                # asyncio.timeout, not wait_for: no task per held poll, one wake-up step per answer.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll_hold):
                        await event.wait()
            finally:
                self._open_polls -= 1
            self.touch(client_id)
        return self._render(self.command_id(client_id), include_metadata)

    # -- state changes --------------------------------------------------------------------

    def changed(self, *, playing: bool) -> None:
        """The timeline changed: wake long-polls, push to every subscriber, keep the ticker right."""
        self._wake()
        self._broadcast()
        self._playing = playing
        if playing and not self._closing and (self._ticker is None or self._ticker.done()):
            self._ticker = self._spawn(self._tick(), f"{self._name}: timeline ticker")

    def push_to(self, client_id: str) -> None:
        """Push the current timeline to one subscriber (after its command, to echo the commandID)."""
        self._expire()
        sub = self._subs.get(client_id)
        if sub is not None:
            self._kick(sub)

    async def stop(self) -> None:
        """Answer every held long-poll now, cancel every push and the ticker, and wait for them."""
        self._closing = True
        self._wake()
        for sub in self._subs.values():
            sub.close()
        self._subs.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._ticker = None

    # -- internals ------------------------------------------------------------------------

    def _wake(self) -> None:
        # A fresh Event per change: waiters of the old one all wake, new polls wait for the next.
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    def _expire(self) -> None:
        now = self._clock()
        for client_id, sub in list(self._subs.items()):
            if now - sub.last_seen > self._expiry:
                self._drop(client_id, f"expired after {now - sub.last_seen:.0f} s without subscribe or poll")

    def _broadcast(self) -> None:
        self._last_broadcast = asyncio.get_running_loop().time()
        self._expire()
        for sub in self._subs.values():
            self._kick(sub)

    def _kick(self, sub: _Subscriber) -> None:
        if self._closing:
            return
        if sub.task is not None and not sub.task.done():
            sub.dirty = True
            return
        sub.dirty = False
        sub.task = self._spawn(self._push_loop(sub), f"{self._name}: push to {sub.client_id}")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _push_loop(self, sub: _Subscriber) -> None:
        while True:
            await self._push(sub)
            if not sub.dirty or self._subs.get(sub.client_id) is not sub:
                return
            sub.dirty = False

    async def _push(self, sub: _Subscriber) -> None:
        body = self._render(self.command_id(sub.client_id), False)
        deadline = asyncio.get_running_loop().time() + self._push_timeout
        try:
            if sub.address is not None:
                status = await self._post(sub, sub.address, body, deadline)
            else:
                async with asyncio.timeout_at(deadline):
                    status = await self._post_tls(sub, body)
            if status >= 400:
                raise PushFailed(f"the controller answered HTTP {status}")
        except (aiohttp.ClientError, PushFailed, OSError) as exc:  # OSError includes TimeoutError
            sub.failures += 1
            # PMP keeps failing subscribers until expiry; log the first failure of a run only, and
            # those of all subscribers at most once a minute (anyone can subscribe a dead address).
            reason = type(exc).__name__ if isinstance(exc, TimeoutError) else exc
            if sub.failures == 1:
                self._push_failures.log("push", self._clock(), logging.WARNING, "%s: timeline push to %r (%s) "
                                        "failed: %s", self._name, sub.name, sub.url, reason)
            else:
                log.debug("%s: timeline push to %r (%s) failed: %s", self._name, sub.name, sub.url, reason)
        else:
            sub.failures = 0

    async def _post(self, sub: _Subscriber, address: tuple[str, int, str], body: bytes, deadline: float) -> int:
        """A plain-http push on the subscriber's kept connection (one new connection if it was closed),
        answered by ``deadline`` (loop time: the push connections keep their deadlines without a
        timer each; only opening a connection takes an asyncio timeout)."""
        host, port, host_header = address
        data = push_request(host_header, self._headers(), body)
        connection = sub.connection
        if connection is not None and connection.reusable:
            try:
                return await connection.push(data, deadline)
            except PushFailed:
                if connection.answered:
                    raise
                # The controller had closed the idle connection as we wrote: one fresh try, as
                # HTTP clients do for a kept-alive connection.
        sub.connection = None
        async with asyncio.timeout_at(deadline):
            connection = await open_push_connection(host, port)
        if sub.address == address and self._subs.get(sub.client_id) is sub:
            sub.connection = connection
            return await connection.push(data, deadline)
        try:  # dropped or moved while connecting: this push still goes, the connection is not kept
            return await connection.push(data, deadline)
        finally:
            connection.close()

    async def _post_tls(self, sub: _Subscriber, body: bytes) -> int:
        """An https push, through the bridge's aiohttp session (its TLS settings)."""
        headers = dict(self._headers())
        headers["Content-Type"] = "application/xml"
        async with self._session.post(sub.url, data=body, headers=headers) as resp:
            await resp.read()
            return resp.status

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while self._playing and not self._closing:
            await asyncio.sleep(self._interval)
            # State changes push on their own; only fill gaps longer than one interval.
            if self._playing and loop.time() - self._last_broadcast >= self._interval * 0.9:
                self._broadcast()
