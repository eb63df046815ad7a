"""The timeline push client: one kept-alive HTTP/1.1 connection per subscribed controller.

A state change pushes to every subscriber at once; through a general client library each push
cost about five times what writing it does (URL and header objects, connector bookkeeping, a
response object), which on one core made a thousand pushes take longer than a controller
notices. A push is always the same exchange (a small POST, an answer we only need the status
of), so it runs on an asyncio protocol:

* the request head is built and validated by h11 (a header that could start another one is
  refused), once per distinct head, and written as bytes;
* answers are read by httptools, the binding of llhttp (Node.js's HTTP parser, also under
  uvicorn): framed by Content-Length, chunked coding or the end of the connection, interim 1xx
  answers skipped, keep-alive as the answer says. h11, in pure Python, spent about 110 us on a
  push's request and answer, most of it reading the answer; llhttp reads one in about 1 us.
  Answer bodies are dropped, never kept.

Both load with the first push: a bridge whose controllers only poll never holds them (0.5 MB).

A connection idle for ``IDLE_CLOSE`` seconds is closed, as an HTTP client pool does. Only plain
``http`` callbacks come here; ``https`` ones keep going through the bridge's aiohttp session.

Time limits. A push has a deadline and a kept connection an idle limit, but neither gets a timer
of its own: a fan-out would create and cancel two timer handles per push, about a sixth of the
face's time in a fan-out of 1,000 pushes. The :class:`PushBudget` that counts the connections
also watches their times with one timer, set for the earliest one and firing at most every
``SWEEP_GRAIN`` seconds: a push that is late fails with TimeoutError (up to that grain after its
deadline), and an idle connection is closed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

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


# A controller's answer whose headers (names and values) hold more bytes than this is refused.
MAX_HEAD = 16 * 1024


class PushFailed(Exception):
    """A push got no usable answer (connection refused or closed, a malformed answer, an error status)."""


@dataclass(frozen=True)
class PushRequest:
    """One ``POST /:/timeline``, validated and serialised: the request's bytes."""

    data: bytes


def push_request(host: str, headers: Mapping[str, str], body: bytes) -> PushRequest:
    """``POST /:/timeline`` with Host, the face's headers, Content-Type and Content-Length.

    A header that could start another one (a line break or NUL in a name or value) is refused
    with PushFailed, as h11 refuses it.
    """
    return PushRequest(_head(host, tuple(headers.items()), len(body)) + body)


@functools.lru_cache(maxsize=256)
def _head(host: str, headers: tuple[tuple[str, str], ...], length: int) -> bytes:
    # A fan-out pushes the same head (one Host, the face's headers, a few body lengths) to each
    # subscriber again and again: it is validated and serialised once. A refusal is not cached.
    import h11  # on the first push only (see the module's docstring)

    fields = [("Host", host), *headers, ("Content-Type", "application/xml"), ("Content-Length", str(length))]
    try:
        request = h11.Request(method="POST", target="/:/timeline", headers=fields)
    except h11.LocalProtocolError as exc:
        # h11's message repeats the value; say what is wrong, not what the value was.
        raise PushFailed("a push header holds a line break or NUL, or is not a valid header") from exc
    lines = [b"POST /:/timeline HTTP/1.1"]
    lines += [name + b": " + value for name, value in request.headers.raw_items()]
    return b"\r\n".join(lines) + b"\r\n\r\n"


class PushConnection(asyncio.Protocol):
    """One connection to a controller's timeline listener; one push at a time.

    The answer parser's callbacks (``on_*``) run inside ``feed_data``.
    """

    def __init__(self, budget: PushBudget) -> None:
        import httptools  # with the first push connection only (see the module's docstring)

        self._budget = budget
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[int] | None = None
        self._head_bytes = 0  # header bytes of the answer so far
        self._headers_done = False
        self._framed = False  # the answer says where it ends (length, chunks, or a status without a body)
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
            and not self._transport.is_closing()

    async def push(self, request: PushRequest, deadline: float = math.inf) -> int:
        """Send one request and return the answer's status once the answer is complete.

        ``deadline`` is in loop time (``loop.time()``): TimeoutError once it has passed without a
        complete answer (the budget's watch notices it within ``SWEEP_GRAIN``), and the
        connection is closed.
        """
        if not self.reusable or self._transport is None:
            raise PushFailed("the push connection is closed")
        loop = asyncio.get_running_loop()
        self.answered = False
        self._head_bytes = 0
        self._headers_done = self._framed = False
        waiter: asyncio.Future[int] = loop.create_future()
        self._waiter = waiter
        self.due = deadline
        self._budget.watch(deadline)
        self._transport.write(request.data)
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
        self._fail(TimeoutError("the controller did not answer the push in time"))

    def data_received(self, data: bytes) -> None:
        """Feed the answer in flight (asyncio callback); anything unasked for closes the connection."""
        waiter = self._waiter
        if waiter is None or waiter.done():
            self.close()
            return
        self.answered = True
        try:
            self._parser.feed_data(data)
        except Exception as exc:
            import httptools  # loaded already, by __init__

            if isinstance(exc, httptools.HttpParserUpgrade):
                self._fail(PushFailed("the controller's answer switches protocols"))
            elif isinstance(exc, httptools.HttpParserError):
                self._fail(PushFailed(f"the controller's answer is not valid HTTP/1.1: {exc}"))
            else:
                raise

    def eof_received(self) -> bool | None:
        """The controller closed its side: an answer without a length ends here (asyncio callback)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done() and self._headers_done and not self._framed:
            waiter.set_result(self._parser.get_status_code())
        self.close()
        return None

    # -- the parser's callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        """An answer starts (parser callback): bytes after the answer to our push close the connection."""
        waiter = self._waiter
        if waiter is None or waiter.done():
            self.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        """A header of the answer (parser callback)."""
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > MAX_HEAD:
            self._fail(PushFailed(f"the controller's answer has over {MAX_HEAD} bytes of headers"))
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self._framed = True

    def on_headers_complete(self) -> None:
        """The answer's head is complete (parser callback)."""
        status = self._parser.get_status_code()
        if status >= 200:
            self._headers_done = True
            self._framed = self._framed or status in (204, 304)
        else:
            self._framed = False  # an interim answer (1xx): its own headers say nothing of the final one

    def on_message_complete(self) -> None:
        """One answer is complete (parser callback): settle the push, unless it was an interim 1xx."""
        status = self._parser.get_status_code()
        waiter = self._waiter
        if status < 200:
            return
        if waiter is None or waiter.done():
            self.close()  # a second answer nobody asked for: the connection's state is unknown
            return
        if not self._parser.should_keep_alive():
            self.close()
        waiter.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail the push in flight, if any (asyncio callback)."""
        why = f": {exc}" if exc is not None else ""
        self._fail(PushFailed(f"the controller closed the connection before answering{why}"))

    def _fail(self, exc: Exception) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.close()

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
