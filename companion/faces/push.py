"""The timeline push client: one kept-alive HTTP/1.1 connection per subscribed controller.

A state change pushes to every subscriber at once; through a general client library each push
cost about five times what writing it does (URL and header objects, connector bookkeeping, a
response object), which on one core made a thousand pushes take longer than a controller
notices. A push is always the same exchange (a small POST, an answer we only need the status
of), so it is written and read here on an asyncio protocol. Answers may use Content-Length,
chunked transfer coding or end at close; their bodies are counted and dropped, never kept. A
connection idle for ``IDLE_CLOSE`` seconds is closed, as an HTTP client pool does. Only plain
``http`` callbacks come here; ``https`` ones keep going through the bridge's aiohttp session.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

log = logging.getLogger(__name__)

# Seconds an idle push connection is kept for the next push (aiohttp's pool default).
IDLE_CLOSE = 15.0
# A controller's answer head (status line and headers) larger than this is refused.
MAX_HEAD = 16 * 1024
_FORBIDDEN = frozenset("\r\n\0")


class PushFailed(Exception):
    """A push got no usable answer (connection refused or closed, a malformed answer, an error status)."""


def request_head(host: str, headers: Mapping[str, str], length: int) -> bytes:
    """The head of ``POST /:/timeline``: Host, the face's headers, Content-Type and Content-Length."""
    lines = [f"POST /:/timeline HTTP/1.1\r\nHost: {host}\r\n"]
    for name, value in headers.items():
        if _FORBIDDEN.intersection(name) or _FORBIDDEN.intersection(value) or ":" in name:
            # The same refusal an HTTP library makes: a header must not be able to start another one.
            raise PushFailed(f"push header {name[:40]!r} holds a line break or NUL")
        lines.append(f"{name}: {value}\r\n")
    lines.append(f"Content-Type: application/xml\r\nContent-Length: {length}\r\n\r\n")
    return "".join(lines).encode("utf-8")


class _Answer:
    """Incremental parser of one HTTP/1.x answer; ``feed`` returns True once it is complete."""

    def __init__(self) -> None:
        self.status = 0
        self.keep_alive = True
        self._head = bytearray()
        self._remaining = -1  # body bytes still to come (Content-Length or the current chunk)
        self._mode = "head"  # head, length, chunk-size, chunk-data, chunk-end, trailer, close

    @property
    def until_close(self) -> bool:
        """The answer has no length: it ends when the controller closes the connection."""
        return self._mode == "close"

    def feed(self, data: bytes) -> tuple[bool, bytes]:
        """Consume ``data``; (complete, bytes after the answer)."""
        view = memoryview(data)
        while True:
            if self._mode == "head":
                self._head += view
                view = memoryview(b"")
                end = self._head.find(b"\r\n\r\n")
                if end < 0:
                    if len(self._head) > MAX_HEAD:
                        raise PushFailed("the controller's answer head is too large")
                    return False, b""
                rest = bytes(self._head[end + 4:])
                head = bytes(self._head[:end])
                del self._head[:]
                if self._start(head):  # an interim 1xx answer: the final one follows
                    view = memoryview(rest)
                    continue
                view = memoryview(rest)
                if self._mode == "done":
                    return True, bytes(view)
            elif self._mode == "close":
                return False, b""
            elif self._mode == "length":
                take = min(self._remaining, len(view))
                self._remaining -= take
                view = view[take:]
                if self._remaining == 0:
                    self._mode = "done"
                    return True, bytes(view)
                return False, b""
            elif self._mode == "chunk-data":
                take = min(self._remaining, len(view))
                self._remaining -= take
                view = view[take:]
                if self._remaining:
                    return False, b""
                self._mode = "chunk-end"
            else:  # chunk-size, chunk-end, trailer: line based
                self._head += view
                view = memoryview(b"")
                end = self._head.find(b"\r\n")
                if end < 0:
                    if len(self._head) > MAX_HEAD:
                        raise PushFailed("the controller's chunked answer has an overlong line")
                    return False, b""
                line = bytes(self._head[:end])
                view = memoryview(bytes(self._head[end + 2:]))
                del self._head[:]
                if self._mode == "chunk-end":
                    if line:
                        raise PushFailed("the controller's chunked answer is malformed")
                    self._mode = "chunk-size"
                elif self._mode == "chunk-size":
                    try:
                        self._remaining = int(line.split(b";", 1)[0].strip(), 16)
                    except ValueError as exc:
                        raise PushFailed("the controller's chunked answer has a bad chunk size") from exc
                    self._mode = "trailer" if self._remaining == 0 else "chunk-data"
                elif not line:  # the empty line that ends the trailer
                    self._mode = "done"
                    return True, bytes(view)

    def _start(self, head: bytes) -> bool:
        """Parse the status line and headers; True for an interim (1xx) answer."""
        lines = head.split(b"\r\n")
        parts = lines[0].split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise PushFailed(f"the controller answered something that is not HTTP/1.x ({lines[0][:40]!r})")
        self.status = int(parts[1])
        if 100 <= self.status < 200:
            return True
        self.keep_alive = parts[0] == b"HTTP/1.1"
        length: int | None = None
        chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            value = value.strip().lower()
            if name == b"content-length":
                if not value.isdigit():
                    raise PushFailed("the controller's answer has a bad Content-Length")
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = value.endswith(b"chunked")
            elif name == b"connection":
                if b"close" in value:
                    self.keep_alive = False
                elif b"keep-alive" in value:
                    self.keep_alive = True
        if chunked:
            self._mode = "chunk-size"
        elif length is not None:
            self._remaining = length
            self._mode = "length" if length else "done"
        elif self.status in (204, 304):
            self._mode = "done"
        else:
            self._mode = "close"
            self.keep_alive = False
        return False


class PushConnection(asyncio.Protocol):
    """One connection to a controller's timeline listener; one push at a time."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._answer: _Answer | None = None
        self._waiter: asyncio.Future[int] | None = None
        self._idle: asyncio.TimerHandle | None = None
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

    async def push(self, data: bytes) -> int:
        """Send one request and return the answer's status once the answer is complete."""
        if not self.reusable or self._transport is None:
            raise PushFailed("the push connection is closed")
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        loop = asyncio.get_running_loop()
        self._answer = _Answer()
        self.answered = False
        waiter: asyncio.Future[int] = loop.create_future()
        self._waiter = waiter
        self._transport.write(data)
        try:
            status = await waiter
        except BaseException:
            self.close()  # cancelled or failed half way: the connection's state is unknown
            raise
        finally:
            self._waiter = None
        if self.reusable:
            self._idle = loop.call_later(IDLE_CLOSE, self.close)
        return status

    def data_received(self, data: bytes) -> None:
        """Feed the answer in flight (asyncio callback); anything unasked for closes the connection."""
        answer, waiter = self._answer, self._waiter
        if answer is None or waiter is None or waiter.done():
            self.close()
            return
        self.answered = True
        try:
            complete, extra = answer.feed(data)
        except PushFailed as exc:
            waiter.set_exception(exc)
            self.close()
            return
        if complete:
            self._answer = None
            if extra or not answer.keep_alive:
                self.close()
            waiter.set_result(answer.status)

    def eof_received(self) -> bool | None:
        """The controller closed its side: an answer without a length ends here (asyncio callback)."""
        answer, waiter = self._answer, self._waiter
        if answer is not None and answer.until_close and waiter is not None and not waiter.done():
            self._answer = None
            waiter.set_result(answer.status)
        self.close()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail the push in flight, if any (asyncio callback)."""
        self.closed = True
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            why = f": {exc}" if exc is not None else ""
            waiter.set_exception(PushFailed(f"the controller closed the connection before answering{why}"))

    def close(self) -> None:
        """Close the connection now (idempotent)."""
        self.closed = True
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._transport is not None:
            self._transport.close()


async def open_push_connection(host: str, port: int) -> PushConnection:
    """Connect to a controller's listener (OSError when it cannot be reached)."""
    loop = asyncio.get_running_loop()
    _, connection = await loop.create_connection(PushConnection, host, port)
    return connection
