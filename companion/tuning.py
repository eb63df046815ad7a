"""Process-wide runtime settings the daemon's memory depends on, set once by ``companion run``."""

from __future__ import annotations

import asyncio.sslproto
import ctypes
import functools
import os
from collections.abc import Callable

# Bytes asyncio reads from a TLS socket at a time, and asks OpenSSL for at a time. A TLS record
# holds up to 16 KiB; a smaller read takes a record in a few steps, each a loop iteration.
TLS_READ_BUFFER = 4 * 1024
# How often ``companion run`` hands freed heap pages back to the system (seconds).
RELEASE_EVERY = 5.0


def pure_python_frozenlist() -> None:
    """Have frozenlist (aiohttp's signal and middleware lists) use its pure-Python build.

    Its compiled build is C++, and loading it maps libstdc++ into a process that has no other
    C++ code: 1.07 MB resident for the daemon's lifetime (``bench/memory.py``, 50 faces: 63.8 MB
    with it, 62.7 without). The two builds behave alike; aiohttp reads these lists a few times a
    request (whether a response has ``on_response_prepare`` hooks, say), a Python call each.
    frozenlist reads ``FROZENLIST_NO_EXTENSIONS`` when it is first imported, so this runs before
    aiohttp is; an operator who sets the variable (empty keeps the compiled build) decides.
    """
    os.environ.setdefault("FROZENLIST_NO_EXTENSIONS", "1")


def lean_tls_buffers(size: int = TLS_READ_BUFFER) -> None:
    """Give each asyncio TLS connection a ``size``-byte read buffer instead of 256 KiB.

    Python 3.11's ``SSLProtocol`` allocates, and zeroes, a 256 KiB buffer for every connection it
    makes. The bridge holds one HTTPS long-poll per face and server (the companion proxy), so 50
    faces cost 12 MB resident for buffers that a poll answer of a few hundred bytes never fills
    (``bench/memory.py``); at 4 KiB they cost 0.2 MB. Bulk media does not read through these
    buffers: the relay reads direct-play parts with blocking sockets (``companion.relay.pump``).
    What does (transcoded segments, plex.tv, answers from servers) arrives at a few MB/s at most,
    which is a few hundred reads a second. The class attribute is the only hook asyncio has.
    """
    asyncio.sslproto.SSLProtocol.max_size = size


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    # The interpreter's own symbols include its C library's (no ldconfig run to find libc by name).
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except AttributeError:  # not glibc (musl has no malloc_trim)
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_free_memory() -> bool:
    """Hand the heap's free pages back to the system (glibc's ``malloc_trim``); False where there is none.

    glibc keeps the pages of freed memory for later allocations, so bursts (TLS handshakes of
    the companion proxy's polls at start, a fling's probe, a fan-out) stay in the resident size
    of an idle daemon long after them. A call takes about 0.2 ms after a burst, 0.03 ms otherwise.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
