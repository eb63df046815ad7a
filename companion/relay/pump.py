"""Media bodies through the relay: one thread per stream reads the upstream over blocking TLS.

Why a thread: on Python 3.11 asyncio's TLS runs per record in Python, and the selector transport
moves its whole write buffer down after every partial send, so the relay spent about 2.9 CPU
seconds per GiB where nginx, doing the same job, spends 0.9 (``bench/relay_throughput.py``). A
blocking ``ssl`` socket read by ``http.client`` fills a whole chunk in C with the GIL released;
the event loop only writes the chunks out. Only media bodies take this path (a part played
directly); everything the relay reads whole (XML, JSON, playlists) keeps the aiohttp path.

Trust is the relay's pin: the thread's handshake verifies nothing by itself, and the leaf the
server shows must be the one the relay verified for the plex.direct name (SHA-256 of its DER, the
same check aiohttp's ``Fingerprint`` makes), checked before a request byte, and so the token, is
written. A mismatch raises :class:`PinMismatch` and the caller verifies the new leaf first.

Back-pressure: the thread posts at most ``depth`` chunks ahead of the writer, then waits; closing
the stream shuts the socket down, which ends a blocked read at once.

Direct send (:meth:`UpstreamStream.send_to`): for a body the relay passes on unchanged (media,
Content-Length known, plain HTTP downstream, the response head already on the wire), the same
thread also writes each chunk to the target's socket with a blocking ``sendall`` on a duplicate of
its descriptor, so the bytes never enter the event loop: no chunk objects, no queue, no write
buffer. The loop hears of progress every ``REPORT`` bytes, which is where the relay checks that the
grant still holds; a grant that ends stops the thread within one report.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import os
import socket
import threading
from collections.abc import AsyncIterator, Callable, Sequence

from companion.relay.tlsstream import TlsStream
from companion.security.tls import unverified_context

CHUNK = 256 * 1024  # as large as helps; larger chunks cost memmoves in the 3.11 write buffer
DEPTH = 4
REPORT = 4 * 1024 * 1024  # direct send: bytes between progress reports to the loop


class PinMismatch(Exception):
    """The server showed another leaf than the one the relay verified (a renewed certificate)."""


class UpstreamError(Exception):
    """The upstream could not be reached or answered something that is not HTTP."""


class DownstreamGone(Exception):
    """The target's socket failed or closed during a direct send."""


_END = object()


class UpstreamStream:
    """One upstream request whose response body a thread reads into chunks for the event loop."""

    def __init__(self, *, address: str, port: int, sni: str | None, fingerprint: bytes, method: str,
                 target: str, headers: Sequence[tuple[str, str]], timeout: float, chunk: int = CHUNK,
                 depth: int = DEPTH, name: str = "relay-stream") -> None:
        self._address = address
        self._port = port
        self._sni = sni
        self._fingerprint = fingerprint
        self._method = method
        self._target = target
        self._headers = list(headers)
        self._timeout = timeout
        self._chunk = chunk
        self._room = threading.Semaphore(depth)
        self._stop = threading.Event()
        self._sock: TlsStream | None = None
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._head: asyncio.Future[tuple[int, list[tuple[str, str]]]] | None = None
        # After the head, the thread waits to learn where the body goes: the queue or a socket.
        self._mode = threading.Event()
        self._out_fd: int | None = None
        self._on_progress: Callable[[int, int], None] | None = None
        self._keep_going: Callable[[], bool] = lambda: True
        self._sent: asyncio.Future[int] | None = None
        self._finished: asyncio.Future[None] | None = None  # the thread has ended

    async def open(self) -> tuple[int, list[tuple[str, str]]]:
        """Connect, check the pin, send the request; the status and headers of the answer."""
        self._loop = asyncio.get_running_loop()
        self._head = self._loop.create_future()
        self._finished = self._loop.create_future()
        self._thread.start()
        return await self._head

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body, chunk by chunk, until its end; raises UpstreamError if it broke off."""
        self._mode.set()
        while True:
            item = await self._queue.get()
            self._room.release()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, bytes | bytearray | memoryview)
            yield bytes(item) if isinstance(item, memoryview) else item  # type: ignore[misc]

    async def send_to(self, sock: socket.socket, on_progress: Callable[[int, int], None],
                      keep_going: Callable[[], bool]) -> int:
        """Write the whole body to ``sock`` from the thread; the byte count once it is all sent.

        ``sock`` is the target's connection (non-blocking, owned by the event loop, with nothing
        left in its write buffer); the thread writes to a duplicate of its descriptor, so a socket
        the loop closes meanwhile only fails the send. ``on_progress(bytes, chunks)`` runs in the loop
        every ``REPORT`` bytes read and for the last chunk, before it is sent. The thread calls
        ``keep_going()`` before each chunk it sends (so it must be a read-only check, safe from
        another thread); False ends the send with DownstreamGone. Raises UpstreamError when the
        upstream broke off, DownstreamGone when the target did; :meth:`stop` ends it early.
        """
        assert self._loop is not None
        self._sent = self._loop.create_future()
        self._on_progress = on_progress
        self._keep_going = keep_going
        self._out_fd = os.dup(sock.fileno())
        self._mode.set()
        return await self._sent

    def stop(self) -> None:
        """Stop reading (also mid-body) without waiting: a blocked read or send ends at once."""
        self._stop.set()
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    async def aclose(self) -> None:
        """Stop reading (also mid-body) and wait for the thread to end."""
        self.stop()
        # Let a thread waiting for room, or for where the body goes, see the stop flag.
        self._room.release()
        self._mode.set()
        if self._finished is not None and not self._finished.done():
            # The thread says when it ends: no executor thread is spent on a join.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._finished), self._timeout + 5)

    # -- the thread --

    def _post(self, item: object) -> bool:
        """Hand one item to the loop, waiting for room; False once the stream was closed."""
        while not self._room.acquire(timeout=0.5):
            if self._stop.is_set():
                return False
        if self._stop.is_set():
            return False
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is reading any more
            return False
        return True

    def _answer_head(self, result: tuple[int, list[tuple[str, str]]] | BaseException) -> None:
        assert self._loop is not None
        assert self._head is not None
        head = self._head

        def settle() -> None:
            if head.done():
                return
            if isinstance(result, BaseException):
                head.set_exception(result)
            else:
                head.set_result(result)

        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(settle)

    def _connect(self) -> http.client.HTTPConnection:
        ctx = unverified_context()  # trust is the pin below, checked before anything is sent
        raw = socket.create_connection((self._address, self._port), timeout=self._timeout)
        stream = TlsStream(raw, ctx, self._sni)
        self._sock = stream
        try:
            stream.handshake()
        except BaseException:
            raw.close()
            raise
        leaf = stream.ssl.getpeercert(binary_form=True) or b""
        if hashlib.sha256(leaf).digest() != self._fingerprint:
            raise PinMismatch("the server presented another certificate than the one verified")
        conn = http.client.HTTPConnection(self._address, self._port, timeout=self._timeout)
        conn.sock = stream  # http.client needs only sendall, makefile and close of its socket
        return conn

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        try:
            try:
                conn = self._connect()
                conn.putrequest(self._method, self._target, skip_host=True, skip_accept_encoding=True)
                for name, value in self._headers:
                    conn.putheader(name, value)
                conn.endheaders()
                resp = conn.getresponse()
            except PinMismatch as exc:
                self._answer_head(exc)
                return
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self._answer_head(UpstreamError(f"{type(exc).__name__}: {exc}"))
                return
            self._answer_head((resp.status, resp.getheaders()))
            self._mode.wait()
            if self._out_fd is not None:
                self._send_direct(resp, self._out_fd)
                return
            while not self._stop.is_set():
                buf = bytearray(self._chunk)
                try:
                    n = resp.readinto(buf)
                except (OSError, http.client.HTTPException, ValueError) as exc:
                    if not self._stop.is_set():
                        self._post(UpstreamError(f"{type(exc).__name__}: {exc}"))
                    return
                if not n:
                    break
                if not self._post(memoryview(buf)[:n] if n < len(buf) else buf):
                    return
            self._post(_END)
        except Exception as exc:  # never leave the loop waiting on a thread that died
            self._answer_head(UpstreamError(f"{type(exc).__name__}: {exc}"))
            self._post(UpstreamError(f"{type(exc).__name__}: {exc}"))
        finally:
            if conn is not None:
                conn.close()
            elif self._sock is not None:
                self._sock.close()
            self._ended()

    def _ended(self) -> None:
        assert self._loop is not None
        finished = self._finished

        def settle() -> None:
            if finished is not None and not finished.done():
                finished.set_result(None)

        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(settle)

    def _settle_sent(self, result: int | BaseException) -> None:
        assert self._loop is not None
        sent = self._sent

        def settle() -> None:
            if sent is None or sent.done():
                return
            if isinstance(result, BaseException):
                sent.set_exception(result)
            else:
                sent.set_result(result)

        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(settle)

    def _report(self, n: int, chunks: int) -> None:
        assert self._loop is not None
        assert self._on_progress is not None
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._on_progress, n, chunks)

    def _send_direct(self, resp: http.client.HTTPResponse, fd: int) -> None:
        """Read a chunk, send it, repeat: both calls block in C with the GIL released."""
        out = socket.socket(fileno=fd)
        # A timeout keeps the descriptor non-blocking (the loop shares it); it is only how often a
        # send blocked by a paused target looks at the stop flag, never a limit on the pause.
        out.settimeout(1.0)
        buf = bytearray(self._chunk)  # one buffer: each chunk is sent before the next is read
        view = memoryview(buf)
        total = unreported = chunks = 0
        try:
            while not self._stop.is_set():
                try:
                    n = resp.readinto(buf)
                except (OSError, http.client.HTTPException, ValueError) as exc:
                    self._settle_sent(UpstreamError(f"{type(exc).__name__}: {exc}"))
                    return
                if not n:
                    break
                if not self._keep_going():
                    self._settle_sent(DownstreamGone("the stream was cut"))
                    return
                # Counted before the send: a client that has the last byte finds it counted.
                unreported += n
                chunks += 1
                if unreported >= REPORT or resp.length == 0:
                    self._report(unreported, chunks)
                    unreported = chunks = 0
                off = 0
                while off < n:
                    try:
                        off += out.send(view[off:n])
                    except TimeoutError:
                        if self._stop.is_set():
                            break
                    except OSError as exc:
                        self._settle_sent(DownstreamGone(f"{type(exc).__name__}: {exc}"))
                        return
                total += off
            if unreported:
                self._report(unreported, chunks)
            if self._stop.is_set():
                self._settle_sent(DownstreamGone("the stream was stopped"))
            else:
                self._settle_sent(total)
        finally:
            view.release()
            out.close()
