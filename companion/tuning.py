"""Process-wide runtime settings the daemon's memory depends on, set once by ``companion run``."""

from __future__ import annotations

import asyncio.sslproto

# One TLS record holds at most 16 KiB of data, so a read of 16 KiB still takes a whole record.
TLS_READ_BUFFER = 16 * 1024


def lean_tls_buffers(size: int = TLS_READ_BUFFER) -> None:
    """Give each asyncio TLS connection a ``size``-byte read buffer instead of 256 KiB.

    Python 3.11's ``SSLProtocol`` allocates, and zeroes, a 256 KiB buffer for every connection it
    makes. The bridge holds one HTTPS long-poll per face and server (the companion proxy), so 50
    faces cost 12 MB resident for buffers that a poll answer of a few hundred bytes never fills
    (``bench/memory.py``). Bulk media does not read through these buffers: the relay reads direct-play
    parts with blocking sockets (``companion.relay.pump``). The class attribute is the only hook asyncio has.
    """
    asyncio.sslproto.SSLProtocol.max_size = size
