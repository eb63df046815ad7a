"""The timeline push client: one kept-alive HTTP/1.1 connection per subscribed controller.

A state change pushes to every subscriber at once; through a general client library each push
cost about five times what writing it does (URL and header objects, connector bookkeeping, a
response object), which on one core made a thousand pushes take longer than a controller
notices. A push is always the same exchange (a small POST, an answer we only need the status
of), so it runs on an asyncio protocol with h11, the sans-I/O HTTP/1.1 state machine, doing the
framing both ways: h11 validates the request's headers, reads answers framed by Content-Length,
chunked coding or the end of the connection, skips interim 1xx answers, and says whether the
connection may carry the next push. Answer bodies are dropped, never kept. A connection idle for
``IDLE_CLOSE`` seconds is closed, as an HTTP client pool does. Only plain ``http`` callbacks come
here; ``https`` ones keep going through the bridge's aiohttp session.

Time limits. A push has a deadline and a kept connection an idle limit, but neither gets a timer
of its own: a fan-out would create and cancel two timer handles per push, a quarter of its cost.
The :class:`PushBudget` that counts the connections also watches their times with one timer,
set for the earliest one and firing at most every ``SWEEP_GRAIN`` seconds: a push that is late
fails with TimeoutError (up to that grain after its deadline), and an idle connection is closed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import h11

from companion.limits import nofile_limit

log = logging.getLogger(__name__)

# Seconds an idle push connection is kept for the next push (aiohttp's pool default).
IDLE_CLOSE = 15.0
# The watch timer fires at most this often: a late push fails, and an idle connection closes, up to
# this much after its time. One pass looks at every open connection (at most the budget's limit).
SWEEP_GRAIN = 0.25
# Push connections open at once in the whole process, by default a quarter of the file limit (1,024
# under the unit's LimitNOFILE=4096): inbound connections have half (limits.connection_budget),
# and the rest is for the other outbound pools, the listening sockets and files.
MIN_OPEN = 64


def default_push_limit() -> int:
    """How many push connections the process keeps open at most."""
    return max(MIN_OPEN, nofile_limit() // 4)


# A controller's answer head (status line and headers, or a chunk header) larger than this is refused.
MAX_HEAD = 16 * 1024


class PushFailed(Exception):
    """A push got no usable answer (connection refused or closed, a malformed answer, an error status)."""


@dataclass(frozen=True)
class PushRequest:
    """One ``POST /:/timeline``, validated: the request head as h11 holds it, and the body."""

    head: h11.Request
    body: bytes


def push_request(host: str, headers: Mapping[str, str], body: bytes) -> PushRequest:
    """``POST /:/timeline`` with Host, the face's headers, Content-Type and Content-Length.

    A header that could start another one (a line break or NUL in a name or value) is refused
    with PushFailed, as h11 refuses it.
    """
    return PushRequest(_head(host, tuple(headers.items()), len(body)), body)


@functools.lru_cache(maxsize=256)
def _head(host: str, headers: tuple[tuple[str, str], ...], length: int) -> h11.Request:
    # A fan-out pushes the same head (one Host, the face's headers, a few body lengths) to each
    # subscriber again and again; h11 validates every header on each new Request, a tenth of a
    # push's cost, so a validated head is kept. Requests are immutable; a refusal is not cached.
    fields = [("Host", host), *headers, ("Content-Type", "application/xml"), ("Content-Length", str(length))]
    try:
        return h11.Request(method="POST", target="/:/timeline", headers=fields)
    except h11.LocalProtocolError as exc:
        # h11's message repeats the value; say what is wrong, not what the value was.
        raise PushFailed("a push header holds a line break or NUL, or is not a valid header") from exc


class PushConnection(asyncio.Protocol):
    """One connection to a controller's timeline listener; one push at a time."""

    def __init__(self, budget: PushBudget) -> None:
        self._budget = budget
        self._transport: asyncio.Transport | None = None
        self._http = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self._status = 0
        self._waiter: asyncio.Future[int] | None = None
        # loop time by which the push in flight must be answered, or (idle) the connection is closed
        self.due = math.inf
        self.answered = False  # some answer byte arrived for the push in flight
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport (asyncio callback)."""
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    @property
    def reusable(self) -> bool:
        """Open, idle and kept alive by the controller."""
        return not self.closed and self._waiter is None and self._transport is not None \
            and not self._transport.is_closing() and self._http.our_state is h11.IDLE

    async def push(self, request: PushRequest, deadline: float = math.inf) -> int:
        """Send one request and return the answer's status once the answer is complete.

        ``deadline`` is in loop time (``loop.time()``): TimeoutError once it has passed without a
        complete answer (the budget's watch notices it within ``SWEEP_GRAIN``), and the
        connection is closed.
        """
        if not self.reusable or self._transport is None:
            raise PushFailed("the push connection is closed")
        try:
            data = self._http.send(request.head) or b""
            data += self._http.send(h11.Data(data=request.body)) or b""
            data += self._http.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError as exc:
            self.close()
            raise PushFailed(f"the push could not be written: {exc}") from exc
        loop = asyncio.get_running_loop()
        self._status = 0
        self.answered = False
        waiter: asyncio.Future[int] = loop.create_future()
        self._waiter = waiter
        self.due = deadline
        self._budget.watch(deadline)
        self._transport.write(data)
        try:
            status = await waiter
        except BaseException:
            self.close()  # cancelled or failed half way: the connection's state is unknown
            raise
        finally:
            self._waiter = None
        if self.reusable:
            self.due = loop.time() + self._budget.idle_close
            self._budget.idle(self.due)
        return status

    def expire(self) -> None:
        """Its time has come (the budget's watch): fail the push in flight, or close the idle connection."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(TimeoutError("the controller did not answer the push in time"))
        self.close()

    def data_received(self, data: bytes) -> None:
        """Feed the answer in flight (asyncio callback); anything unasked for closes the connection."""
        waiter = self._waiter
        if waiter is None or waiter.done():
            self.close()
            return
        self.answered = True
        self._http.receive_data(data)
        self._read()

    def eof_received(self) -> bool | None:
        """The controller closed its side: an answer without a length ends here (asyncio callback)."""
        self._http.receive_data(b"")
        self._read()
        self.close()
        return None

    def _read(self) -> None:
        """Run h11 over what arrived: settle the push in flight once its answer is complete."""
        waiter = self._waiter
        while waiter is not None and not waiter.done():
            try:
                event = self._http.next_event()
            except h11.RemoteProtocolError as exc:
                waiter.set_exception(PushFailed(f"the controller's answer is not valid HTTP/1.1: {exc}"))
                self.close()
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Response):
                self._status = event.status_code
            elif isinstance(event, h11.EndOfMessage):
                if self._http.our_state is h11.DONE and self._http.their_state is h11.DONE:
                    self._http.start_next_cycle()
                else:  # the controller closes (HTTP/1.0, Connection: close, or an answer ended by close)
                    self.close()
                if self._http.trailing_data[0]:
                    self.close()  # bytes nobody asked for: the connection's state is unknown
                waiter.set_result(self._status)
            elif isinstance(event, h11.ConnectionClosed):
                waiter.set_exception(PushFailed("the controller closed the connection before answering"))
                self.close()
            # InformationalResponse (1xx) and Data (the body, dropped): read on

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail the push in flight, if any (asyncio callback)."""
        self.closed = True
        self._budget.release(self)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            why = f": {exc}" if exc is not None else ""
            waiter.set_exception(PushFailed(f"the controller closed the connection before answering{why}"))

    def close(self) -> None:
        """Close the connection now (idempotent)."""
        self.closed = True
        self._budget.release(self)
        if self._transport is not None:
            self._transport.close()


class PushBudget:
    """At most ``limit`` push connections open (or opening) at once: at the limit, the longest-idle
    kept connection is closed for a new one, and when none is idle the push waits for one to close.

    It also keeps its connections' times (module docstring): one timer for all of them.
    """

    def __init__(self, limit: int | None = None, *, idle_close: float = IDLE_CLOSE,
                 grain: float = SWEEP_GRAIN) -> None:
        self._limit = limit
        self.idle_close = idle_close
        self._grain = grain
        self._open: dict[PushConnection, None] = {}  # insertion order: oldest first
        self._opening = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    @property
    def limit(self) -> int:
        """At most this many connections (the file limit is read at first use when none was given)."""
        if self._limit is None:
            self._limit = default_push_limit()
        return self._limit

    @property
    def open(self) -> int:
        """Push connections open or being opened now."""
        return len(self._open) + self._opening

    @property
    def waiting(self) -> int:
        """Pushes waiting for room."""
        return sum(not w.done() for w in self._waiters)

    async def _reserve(self) -> None:
        while self.open >= self.limit:
            idle = next((c for c in self._open if c.reusable), None)
            if idle is not None:
                idle.close()
                continue
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self._opening += 1

    def idle(self, until: float) -> None:
        """A connection finished its push and is kept until ``until`` (loop time): a push waiting
        for room may now close it."""
        self.watch(until)
        if self._waiters:
            self._wake()

    def watch(self, when: float) -> None:
        """Some connection's time is ``when`` (loop time): make sure the watch fires by then."""
        if when < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = when
            self._timer = asyncio.get_running_loop().call_at(when, self._sweep)

    def _sweep(self) -> None:
        """Expire every connection whose time has passed; set the timer for the next one."""
        self._timer, self._timer_at = None, math.inf
        now = asyncio.get_running_loop().time()
        upcoming = math.inf
        for connection in list(self._open):
            if connection.due <= now:
                connection.expire()
            elif connection.due < upcoming:
                upcoming = connection.due
        if upcoming < math.inf:
            self.watch(max(upcoming, now + self._grain))

    def release(self, connection: PushConnection) -> None:
        """A connection closed: uncount it and wake one waiting push (idempotent)."""
        if connection in self._open:
            del self._open[connection]
            self._wake()
            if not self._open and self._timer is not None:
                self._timer.cancel()
                self._timer, self._timer_at = None, math.inf

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return

    async def connect(self, host: str, port: int) -> PushConnection:
        """Open a counted connection to ``host:port`` (OSError when it cannot be reached)."""
        await self._reserve()
        try:
            loop = asyncio.get_running_loop()
            _, connection = await loop.create_connection(lambda: PushConnection(self), host, port)
        except BaseException:
            self._opening -= 1
            self._wake()
            raise
        self._opening -= 1
        if connection.closed:  # lost while connecting
            self._wake()
        else:
            self._open[connection] = None
        return connection


_PROCESS_BUDGET = PushBudget()


async def open_push_connection(host: str, port: int, budget: PushBudget | None = None) -> PushConnection:
    """Connect to a controller's listener within ``budget`` (the whole process's by default);
    OSError when it cannot be reached."""
    return await (budget or _PROCESS_BUDGET).connect(host, port)
