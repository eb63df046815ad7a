"""The inbound-connection gate: every accepted TCP connection of every listener (faces, admin,
relay, timeline listener) holds a slot of one shared budget, within its listener's cap and its
source address's cap; :class:`GatedTCPSite`, the aiohttp site that asks the gate first; and
:func:`start_site`, the one way our HTTP servers start listening.

A connection over a cap is reset at once (its descriptor freed), so accept() never meets EMFILE
because of idle connections. When a listener or the whole budget is full, the oldest connection of
the source holding the most is reset in favour of a newcomer holding less: one hostile address
cannot lock a phone out. aiohttp has no hook for this, so the site wraps the runner's protocol
factory; that use of aiohttp internals lives here and nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web

from companion.errors import StateError
from companion.limits import ConnectionBudget, ThrottledLog, heaviest_source

log = logging.getLogger(__name__)


class _Conn:
    __slots__ = ("gate", "live", "source", "transport")

    def __init__(self, gate: ConnectionGate, source: str, transport: asyncio.Transport) -> None:
        self.gate = gate
        self.source = source
        self.transport = transport
        self.live = True


class _Table:
    """Live connections by source, oldest first."""

    def __init__(self) -> None:
        self.by_source: dict[str, dict[_Conn, None]] = {}
        self.count = 0

    def add(self, conn: _Conn) -> None:
        self.by_source.setdefault(conn.source, {})[conn] = None
        self.count += 1

    def remove(self, conn: _Conn) -> None:
        conns = self.by_source.get(conn.source)
        if conns is not None and conns.pop(conn, 0) is None:
            self.count -= 1
            if not conns:
                del self.by_source[conn.source]

    def of(self, source: str) -> int:
        return len(self.by_source.get(source, ()))

    def counts(self) -> dict[str, int]:
        return {source: len(conns) for source, conns in self.by_source.items()}

    def oldest(self, source: str) -> _Conn | None:
        return next(iter(self.by_source.get(source, {})), None)


class ConnectionLimits:
    """The daemon-wide budget (one per bridge), shared by the gates of its listeners."""

    def __init__(self, budget: ConnectionBudget, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.budget = budget
        self._all = _Table()
        self._clock = clock
        self._log = ThrottledLog(log)
        self.refused = 0
        self.evicted = 0

    @property
    def count(self) -> int:
        """Connections held by every listener together."""
        return self._all.count

    def gate(self, listener: str) -> ConnectionGate:
        """The gate of one listener (``listener`` names it in log lines)."""
        return ConnectionGate(self, listener)

    def _evict(self, table: _Table, newcomer: str, why: str) -> bool:
        source = heaviest_source(table.counts(), newcomer)
        victim = table.oldest(source) if source is not None else None
        if victim is None:
            return False
        self.evicted += 1
        self._log.log(("evict", victim.gate.listener), self._clock(), logging.WARNING,
                      "%s: %s is full; reset the oldest connection of %s (holding the most) for %s",
                      victim.gate.listener, why, victim.source, newcomer)
        victim.gate.drop(victim)
        victim.transport.abort()
        return True

    def _refuse(self, gate: ConnectionGate, source: str, why: str) -> None:
        self.refused += 1
        self._log.log(("refuse", gate.listener, why), self._clock(), logging.WARNING,
                      "%s: refused a connection from %s: %s", gate.listener, source, why)


class ConnectionGate:
    """Admission of one listener's connections (see the module docstring)."""

    def __init__(self, limits: ConnectionLimits, listener: str) -> None:
        self.limits = limits
        self.listener = listener
        self._mine = _Table()

    @property
    def count(self) -> int:
        """How many connections are open now."""
        return self._mine.count

    def admit(self, source: str, transport: asyncio.Transport) -> _Conn | None:
        """A slot for a new connection from ``source``, or None (then the caller resets it)."""
        budget = self.limits.budget
        if self._mine.of(source) >= budget.per_source:
            self.limits._refuse(self, source, f"{budget.per_source} connections from that address already")
            return None
        if self._mine.count >= budget.per_listener and not self.limits._evict(
                self._mine, source, f"this listener ({budget.per_listener} connections)"):
            self.limits._refuse(self, source, f"{budget.per_listener} connections already")
            return None
        if self.limits._all.count >= budget.total and not self.limits._evict(
                self.limits._all, source, f"the connection budget ({budget.total}, half of the file limit)"):
            self.limits._refuse(self, source, f"the bridge holds {budget.total} connections "
                                              f"(half of its file limit {budget.nofile}; raise LimitNOFILE=)")
            return None
        conn = _Conn(self, source, transport)
        self._mine.add(conn)
        self.limits._all.add(conn)
        return conn

    def drop(self, conn: _Conn) -> None:
        """Free the slot of a connection that closed (or was reset); idempotent."""
        if conn.live:
            conn.live = False
            self._mine.remove(conn)
            self.limits._all.remove(conn)


def quiet_loop_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Make the loop's error reports (accept() failing with EMFILE, above all) one line per kind a
    minute, with counts. asyncio reports each failed accept of each listener, with a traceback; a
    connection flood against the file limit made 359,035 of them in 50 s."""
    throttle = ThrottledLog(log)

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        key = (context.get("message"), type(exc), getattr(exc, "errno", None))
        due = throttle.due(key, loop.time())
        if due is None:
            return
        if isinstance(exc, OSError) and "accept" in str(context.get("message", "")):
            # A known condition, not a bug: no traceback, the errno says it all.
            log.error("%s: %s; the listener pauses for a second", context.get("message"), exc)
        else:
            loop.default_exception_handler(context)
        if due[0]:
            log.error("... and %d more like it in the last %.0f s", *due)

    loop.set_exception_handler(handler)


class _GatedProtocol(asyncio.Protocol):
    """Asks the gate on connection_made; forwards everything to aiohttp's handler once admitted."""

    def __init__(self, gate: ConnectionGate, inner: asyncio.Protocol, site: GatedTCPSite) -> None:
        self._gate = gate
        self._inner = inner
        self._site = site
        self._conn: _Conn | None = None

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)  # a TCP server's transports are full Transports
        if self._site.stopped:
            # Accepted just before the stop, made only now: aiohttp has shut its handlers down and
            # would never close this one, so it would leak until the loop is gone.
            transport.abort()
            return
        peer = transport.get_extra_info("peername")
        source = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        self._conn = self._gate.admit(source, transport)
        if self._conn is None:
            transport.abort()  # RST: the descriptor is freed now, not after a close handshake
            return
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is None:
            return
        self._gate.drop(self._conn)
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._conn is not None and self._conn.live:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._conn is not None else None

    def pause_writing(self) -> None:
        if self._conn is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._conn is not None:
            self._inner.resume_writing()


class _LateAbortProtocol(asyncio.Protocol):
    """For a listener without a gate: resets a connection made after its site stopped, and otherwise
    hands the transport to aiohttp's handler itself (``set_protocol``), so it costs nothing per request."""

    def __init__(self, inner: asyncio.Protocol, site: GatedTCPSite) -> None:
        self._inner = inner
        self._site = site

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)
        if self._site.stopped:
            transport.abort()  # as _GatedProtocol does: aiohttp would never close this one
            return
        transport.set_protocol(self._inner)
        self._inner.connection_made(transport)


class GatedTCPSite(web.TCPSite):
    """A TCPSite whose every accepted connection passes ``gate`` first (None: no gate).

    Gate or not, a connection accepted before :meth:`stop` but made after it is reset: aiohttp's
    own TCPSite leaves such a connection open, unseen by its shutdown, until the peer gives up.
    """

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, gate: ConnectionGate | None,
                 **kwargs: Any) -> None:
        super().__init__(runner, host, port, **kwargs)
        self._gate = gate
        self.stopped = False

    async def stop(self) -> None:
        """Stop listening; a connection accepted before this but made after it is reset."""
        self.stopped = True
        await super().stop()

    async def start(self) -> None:
        """Listen, every accepted connection asking the gate first."""
        await web.BaseSite.start(self)  # registers the site with its runner, as TCPSite.start does
        server = self._runner.server
        assert server is not None
        gate = self._gate
        factory: Callable[[], asyncio.Protocol]
        if gate is None:
            def factory() -> asyncio.Protocol:
                return _LateAbortProtocol(server(), self)
            backlog = self._backlog
        else:
            def factory() -> asyncio.Protocol:
                return _GatedProtocol(gate, server(), self)
            backlog = gate.limits.budget.backlog
        self._server = await asyncio.get_running_loop().create_server(
            factory, self._host, self._port, ssl=self._ssl_context, backlog=backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port)
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port


class ListenError(StateError, OSError):
    """A server could not listen on its address (most often: the port is in use).

    Also an OSError with the cause's errno and strerror, so a caller that tries the next port
    (a face) catches it as one.
    """

    def __init__(self, what: str, where: str, cause: OSError) -> None:
        self.message = f"{what} cannot listen on {where}: {cause.strerror or cause}"
        super().__init__(self.message)
        self.errno = cause.errno
        self.strerror = cause.strerror

    def __str__(self) -> str:
        return self.message


async def start_site(runner: web.BaseRunner, bind: str = "", port: int = 0, *, what: str,
                     gate: ConnectionGate | None = None, path: str | None = None) -> int:
    """Set ``runner`` up and listen on ``bind:port`` through ``gate`` (or on the Unix socket ``path``).

    Returns the bound TCP port (0 for a Unix socket). On failure the runner is cleaned up again;
    an address that cannot be bound raises :class:`ListenError` naming ``what``.
    """
    await runner.setup()
    where = path if path is not None else f"{bind}:{port}"
    try:
        if path is not None:
            await web.UnixSite(runner, path).start()
            return 0
        await GatedTCPSite(runner, bind, port, gate=gate).start()
    except OSError as exc:
        await runner.cleanup()
        raise ListenError(what, where, exc) from exc
    except BaseException:
        await runner.cleanup()
        raise
    return int(runner.addresses[0][1]) if runner.addresses else port
