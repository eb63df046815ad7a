"""Blocking TLS for the relay's reader threads, decrypted from memory BIOs fed by large reads.

An ``ssl.SSLSocket`` reads each TLS record with two ``recv`` calls (its 5-byte header, then its
body; OpenSSL's read-ahead, which would read more, is not reachable from Python), so a GiB of
media took 130,000 system calls to come in. Here the socket is read up to ``READ`` bytes at a
time into the incoming memory BIO, and the ``ssl.SSLObject`` decrypts every record already there
before the next read: the reader thread of ``companion.relay.pump`` spent about 15% less CPU per
GiB reading this way (``bench/relay_throughput.py``). Reads of up to 1 MiB, not 256 KiB, took
the relay from 1.27-1.67 to 0.89-1.22 CPU s/GiB (five runs each, nginx 0.96-1.40 beside them):
three 1 GiB downloads made 4,793 ``recv`` calls instead of 13,869 and 15,544 ``poll`` calls (one
before each blocking call with a timeout) instead of 24,615, and each read that ends mid-record
costs one ``SSLWantReadError``. The TLS itself is the ``ssl`` module's:
OpenSSL does the handshake, the records, the alerts and close_notify.

:class:`TlsStream` gives ``http.client`` what it needs from a socket (``sendall``, ``makefile``,
``close``), so the request and the answer's head and framing stay ``http.client``'s.
"""

from __future__ import annotations

import io
import socket
import ssl
from typing import Any

READ = 1024 * 1024  # bytes asked of the socket per recv (about 64 TLS records); per stream, while it runs


class TlsStream:
    """A client TLS connection over a connected blocking socket (its timeout bounds each read)."""

    def __init__(self, raw: socket.socket, ctx: ssl.SSLContext, server_hostname: str | None,
                 read_size: int = READ) -> None:
        self.raw = raw
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.ssl = ctx.wrap_bio(self._incoming, self._outgoing, server_side=False, server_hostname=server_hostname)
        self._buffer = bytearray(read_size)
        self._view = memoryview(self._buffer)
        self._eof = False

    def handshake(self) -> None:
        """Run the TLS handshake (ssl.SSLError, OSError or TimeoutError when it fails)."""
        while True:
            try:
                self.ssl.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                if not self._fill():
                    raise ConnectionResetError("the server closed the connection during the TLS handshake") from None
        self._flush()

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt ``data`` and write it all (what ``http.client`` sends a request with)."""
        self.ssl.write(data)
        self._flush()

    def readinto(self, buffer: Any) -> int:
        """Decrypt into ``buffer`` what has arrived (reading the socket only when nothing has); 0 at the end."""
        view = memoryview(buffer).cast("B")
        size = len(view)
        got = 0
        while got < size:
            try:
                # With a buffer, read() returns the count (typeshed says bytes).
                count: int = self.ssl.read(size - got, view[got:])  # type: ignore[assignment]
                if count == 0:
                    break  # close_notify came: the server ended the stream cleanly
                got += count
            except ssl.SSLWantReadError:
                if got:
                    break  # what is here now; the next call reads the socket again
                self._flush()  # anything OpenSSL has to answer (a key update) goes first
                if not self._fill():
                    self._incoming.write_eof()  # the next read says whether that end was clean
            except ssl.SSLZeroReturnError:
                break  # the same, said as an error
        return got

    def makefile(self, mode: str = "rb", buffering: int = io.DEFAULT_BUFFER_SIZE) -> io.BufferedReader:
        """A buffered reader of the decrypted bytes (``http.client`` reads the answer through it)."""
        if mode != "rb":
            raise ValueError(f"TlsStream reads only, in binary: mode {mode!r}")
        return io.BufferedReader(_Raw(self), buffering)

    def shutdown(self, how: int) -> None:
        """Shut the socket down, which ends a read blocked in another thread at once."""
        self.raw.shutdown(how)

    def close(self) -> None:
        """Close the socket (no close_notify: the relay leaves a stream it no longer wants)."""
        self.raw.close()

    def _fill(self) -> bool:
        """One read of the socket into the incoming BIO; False at the end of the connection."""
        if self._eof:
            return False
        n = self.raw.recv_into(self._view)
        if n == 0:
            self._eof = True
            return False
        self._incoming.write(self._view[:n])
        return True

    def _flush(self) -> None:
        if self._outgoing.pending:
            self.raw.sendall(self._outgoing.read())


class _Raw(io.RawIOBase):
    """The decrypted side of a TlsStream as a raw binary stream."""

    def __init__(self, stream: TlsStream) -> None:
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._stream.readinto(buffer)
