"""Bounds against a hostile LAN: rate-limited log lines with counts, per-source rate limits, and the
inbound-connection budget derived from the file limit.

Pure helpers: no sockets, no tasks; the clock is a parameter (monotonic seconds) so the unit tests
drive it. The connection gate that applies the budget to listeners lives in connections.py.
"""

from __future__ import annotations

import logging
import resource
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass

# One line per kind of event per minute: enough to see an attack in the journal, never a flood.
LOG_INTERVAL = 60.0
# Sources remembered by a rate limiter; the oldest is forgotten first (a spoofer inventing
# addresses costs memory nowhere).
MAX_TRACKED_SOURCES = 1024


class ThrottledLog:
    """Logs an event at most once per ``interval`` per key; the rest go to DEBUG and are counted in
    the next line ("... (and 4211 more like it in the last 60 s)").

    Keys are bounded: a key never seen before when ``max_keys`` are held evicts the oldest one.
    """

    def __init__(self, logger: logging.Logger, *, interval: float = LOG_INTERVAL, max_keys: int = 256) -> None:
        self._logger = logger
        self._interval = interval
        self._max_keys = max_keys
        self._keys: OrderedDict[Hashable, tuple[float, int]] = OrderedDict()

    def due(self, key: Hashable, now: float) -> tuple[int, float] | None:
        """(events suppressed since the last line, seconds since it) when a line of ``key`` is due
        now, else None (and the event is counted)."""
        last = self._keys.get(key)
        if last is not None and now - last[0] < self._interval:
            self._keys[key] = (last[0], last[1] + 1)
            return None
        self._keys[key] = (now, 0)
        self._keys.move_to_end(key)
        while len(self._keys) > self._max_keys:
            self._keys.popitem(last=False)
        return (last[1], now - last[0]) if last is not None else (0, 0.0)

    def log(self, key: Hashable, now: float, level: int, msg: str, *args: object) -> bool:
        """Log ``msg % args`` at ``level`` unless ``key`` was logged less than ``interval`` ago; True
        when the line went out at ``level``."""
        due = self.due(key, now)
        if due is None:
            self._logger.debug(msg, *args, stacklevel=2)
            return False
        if due[0]:
            msg += " (and %d more like it in the last %.0f s)"
            args = (*args, *due)
        self._logger.log(level, msg, *args, stacklevel=2)
        return True

    def suppressed(self, key: Hashable) -> int:
        """How many events of ``key`` went unlogged since its last line."""
        entry = self._keys.get(key)
        return entry[1] if entry is not None else 0


class SourceRateLimit:
    """A token bucket per source address: ``burst`` events at once, then ``rate`` per second.

    ``total_rate`` bounds all sources together, so a spoofer rotating addresses gains nothing
    beyond it.
    """

    def __init__(self, rate: float, burst: float, *, total_rate: float | None = None,
                 max_sources: int = MAX_TRACKED_SOURCES) -> None:
        self._rate = rate
        self._burst = burst
        self._total_rate = total_rate
        self._total_burst = max(burst, (total_rate or 0.0) * 2)
        self._total: tuple[float, float] | None = None
        self._max_sources = max_sources
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @staticmethod
    def _take(bucket: tuple[float, float] | None, now: float, rate: float, burst: float) -> tuple[bool, float, float]:
        tokens, stamp = bucket if bucket is not None else (burst, now)
        tokens = min(burst, tokens + max(0.0, now - stamp) * rate)
        if tokens >= 1.0:
            return True, tokens - 1.0, now
        return False, tokens, now

    def allow(self, source: str, now: float) -> bool:
        """True (and one token spent) when ``source`` may have one more event now."""
        ok, tokens, stamp = self._take(self._buckets.get(source), now, self._rate, self._burst)
        self._buckets[source] = (tokens, stamp)
        self._buckets.move_to_end(source)
        while len(self._buckets) > self._max_sources:
            self._buckets.popitem(last=False)
        if not ok:
            return False
        if self._total_rate is not None:
            total_ok, total_tokens, total_stamp = self._take(self._total, now, self._total_rate, self._total_burst)
            self._total = (total_tokens, total_stamp)
            return total_ok
        return True


def heaviest_source(counts: Mapping[str, int], newcomer: str) -> str | None:
    """The source to take a slot from when a table is full and ``newcomer`` wants in: the one holding
    the most, and only when it holds at least two more than the newcomer (so a full table of fair
    users is never churned). None means: refuse the newcomer."""
    if not counts:
        return None
    source = max(counts, key=lambda s: counts[s])
    return source if counts[source] >= counts.get(newcomer, 0) + 2 else None


@dataclass(frozen=True)
class ConnectionBudget:
    """How many accepted connections the whole daemon holds at once, and each listener and source."""

    total: int
    per_listener: int
    per_source: int
    nofile: int
    backlog: int = 128


def nofile_limit() -> int:
    """The soft RLIMIT_NOFILE of this process (what the systemd unit's LimitNOFILE= sets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return hard if hard != resource.RLIM_INFINITY else 1 << 20
    return soft


def connection_budget(nofile: int, *, per_listener: int, per_source: int) -> ConnectionBudget:
    """Inbound connections get half the file limit. The other half is for the listening sockets,
    the outbound pools (the bridge's session up to 256, timeline pushes up to a quarter of the file
    limit, the relay's up to 64), GDM and mDNS sockets, the audit database and logs; so accepting
    never runs the process out of descriptors, and raising LimitNOFILE= raises the budget with it.

    The listen backlog stays at 128: asyncio accepts up to that many connections of a listener in
    one go before the gate sees them (an over-cap one is closed a loop turn later), so a burst can
    briefly overshoot the budget; a smaller backlog would avoid that but makes the kernel drop SYNs
    under a flood, and a phone's dropped SYN waits a second to retry (measured: 6 to 8 one-second
    stalls per 300 connections with a backlog of 32, none with 128). Should a burst reach the file
    limit, accept() fails with EMFILE, asyncio pauses that listener for a second, and the daemon
    logs it once a minute (connections.quiet_loop_errors)."""
    total = max(8, nofile // 2)
    return ConnectionBudget(total=total, per_listener=min(per_listener, total), per_source=min(per_source, total),
                            nofile=nofile)
