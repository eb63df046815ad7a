"""Server TLS facts: what one Plex server sends and accepts over TLS, gathered once and cached.

The I/O shell of the trust decision (SECURITY.md section 2). It connects with verification OFF
and records the chain exactly as the server sends it, the plex.direct hash from the leaf, which
TLS versions and (for TLS <= 1.2) which cipher suites the server accepts, and the leaf's key and
validity. Whether a given device would accept all that is decided later, per profile, by
:mod:`companion.security.trust` and :mod:`companion.security.decide`; one probe serves every
profile.

Local limits are told apart from server refusals: before a handshake is sent, the ClientHello is
built in memory; when the local OpenSSL cannot even produce one (TLS 1.0 without ``@SECLEVEL=0``,
a cipher it does not build) the version or cipher is recorded as untestable or skipped, never as
refused by the server (research/secure-connections-and-tls.md section 5.2).
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from companion.errors import TrustError
from companion.security.facts import ServerFacts
from companion.security.terms import TLS_VERSIONS
from companion.security.tls import handshake

_SSL_VERSION: Mapping[str, ssl.TLSVersion] = MappingProxyType({
    "1.0": ssl.TLSVersion.TLSv1,
    "1.1": ssl.TLSVersion.TLSv1_1,
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
})
# SECLEVEL=0 so that the local OpenSSL still offers what old devices offer; we measure the
# server, not our own taste. PSK/SRP/anonymous suites need credentials no device has.
_ALL_CIPHERS = "ALL:!PSK:!SRP:!aNULL:@SECLEVEL=0"
_CIPHER_CONCURRENCY = 8


def _client_context(min_version: str, max_version: str, ciphers: str) -> ssl.SSLContext:
    # Setting TLS 1.0/1.1 bounds emits a DeprecationWarning; probing old servers is the point.
    # No await happens inside, so the global warnings state is not shared with other tasks.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = _SSL_VERSION[min_version]
        ctx.maximum_version = _SSL_VERSION[max_version]
        ctx.set_ciphers(ciphers)
    return ctx


def _locally_offerable(ctx: ssl.SSLContext) -> bool:
    """Can the local OpenSSL build a ClientHello with this context? (no network involved)"""
    obj = ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO())
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        return True  # the ClientHello is written and it waits for the server: offerable
    except ssl.SSLError:
        return False
    return True


def _unreachable(address: str, port: int, exc: BaseException, timeout: float) -> TrustError:
    where = f"server {address}:{port}"
    if isinstance(exc, TimeoutError):
        return TrustError(f"{where} did not complete a TLS handshake within {timeout:g} s")
    if isinstance(exc, ConnectionRefusedError):
        return TrustError(f"{where} refused the connection (is Plex running, and on this port?)")
    if isinstance(exc, ssl.SSLError):
        return TrustError(
            f"{where} does not speak TLS on this port or rejected every offer ({exc.reason or exc})"
        )
    return TrustError(f"{where} cannot be reached: {exc.strerror or exc}" if isinstance(exc, OSError)
                      else f"{where} cannot be reached: {exc}")


async def _accepts(
    address: str, port: int, ctx: ssl.SSLContext, server_name: str | None, timeout: float,
    limit: asyncio.Semaphore,
) -> bool:
    async with limit:
        try:
            await handshake(address, port, ctx, server_name, timeout)
        except (OSError, TimeoutError, ssl.SSLError):
            return False
    return True


async def leaf_fingerprint(
    address: str, port: int, *, server_name: str | None = None, timeout: float = 5.0
) -> str:
    """SHA-256 of the server's leaf certificate: one handshake, for cheap change detection."""
    ctx = _client_context("1.0", "1.3", _ALL_CIPHERS)
    try:
        shake = await handshake(address, port, ctx, server_name, timeout)
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        raise _unreachable(address, port, exc, timeout) from exc
    if not shake.chain_der:
        raise TrustError(f"server {address}:{port} sent no certificate")
    return hashlib.sha256(shake.chain_der[0]).hexdigest()


async def probe_server(
    address: str, port: int, *, server_name: str | None = None, timeout: float = 5.0
) -> ServerFacts:
    """Measure a server's TLS: chain as sent, versions, TLS <= 1.2 ciphers, leaf key and validity.

    ``server_name`` is sent as SNI (a plex.direct name, typically); None sends no SNI.
    Raises TrustError with a readable message when the server cannot be reached or speaks no TLS.
    """
    first = _client_context("1.0", "1.3", _ALL_CIPHERS)
    try:
        shake = await handshake(address, port, first, server_name, timeout)
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        raise _unreachable(address, port, exc, timeout) from exc

    limit = asyncio.Semaphore(_CIPHER_CONCURRENCY)
    untestable: set[str] = set()
    version_jobs: dict[str, asyncio.Task[bool]] = {}
    async with asyncio.TaskGroup() as group:
        for version in TLS_VERSIONS:
            ctx = _client_context(version, version, _ALL_CIPHERS)
            if not _locally_offerable(ctx):
                untestable.add(version)
                continue
            version_jobs[version] = group.create_task(
                _accepts(address, port, ctx, server_name, timeout, limit), name=f"probe-tls-{version}"
            )
    accepted = {v for v, job in version_jobs.items() if job.result()}

    ciphers = await _accepted_ciphers(address, port, server_name, timeout, accepted, limit)
    return ServerFacts.from_chain(
        address, port, shake.chain_der,
        tls_versions=accepted, tls_versions_untestable=untestable, ciphers=ciphers,
    )


async def _accepted_ciphers(
    address: str, port: int, server_name: str | None, timeout: float, accepted_versions: set[str],
    limit: asyncio.Semaphore,
) -> frozenset[str]:
    """Offer one local TLS <= 1.2 cipher at a time, within the versions the server accepts."""
    old = [v for v in TLS_VERSIONS[:3] if v in accepted_versions]
    if not old:
        return frozenset()
    low, high = old[0], old[-1]
    listing = _client_context(low, high, _ALL_CIPHERS)
    names = sorted({c["name"] for c in listing.get_ciphers() if c["protocol"] != "TLSv1.3"})
    jobs: dict[str, asyncio.Task[bool]] = {}
    async with asyncio.TaskGroup() as group:
        for name in names:
            try:
                ctx = _client_context(low, high, f"{name}:@SECLEVEL=0")
            except ssl.SSLError:
                continue
            if not _locally_offerable(ctx):
                continue  # e.g. a TLS 1.2-only suite while the server only speaks 1.0
            jobs[name] = group.create_task(
                _accepts(address, port, ctx, server_name, timeout, limit), name=f"probe-cipher-{name}"
            )
    return frozenset(name for name, job in jobs.items() if job.result())


@dataclass
class _Entry:
    facts: ServerFacts
    server_name: str | None
    checked_at: float


@dataclass(frozen=True)
class ProbeStatus:
    """What is known of a server's TLS right now: measured facts, the last failure, or nothing."""

    facts: ServerFacts | None
    error: str | None  # the last probe failed (no TLS, unreachable): why
    checked_at: float | None  # wall clock of that probe

    @property
    def state(self) -> str:
        """``measured``, ``failed`` or ``not-probed``."""
        return "measured" if self.facts is not None else ("failed" if self.error else "not-probed")


_MAX_FAILURES = 256


class ProbeCache:
    """ServerFacts per server, re-probed only when the server's certificate changed.

    A cached entry is trusted for ``recheck_interval`` seconds; after that one handshake fetches
    the leaf fingerprint, and only a different fingerprint (or a new address/port) costs a full
    probe. ``clock`` is injectable (monotonic seconds).
    """

    def __init__(
        self, *, recheck_interval: float = 300.0, timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval = recheck_interval
        self._timeout = timeout
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # The last failed probe per server (key -> (address, port, why, wall clock)): a server that
        # offers no TLS has been measured too, and the status page must say so, not "not probed".
        self._failures: dict[str, tuple[str, int, str, float]] = {}
        self._measured_at: dict[str, float] = {}

    async def get(self, server_key: str, address: str, port: int, server_name: str | None) -> ServerFacts:
        """Cached facts for ``server_key``; probes on first use and when the certificate changed.

        Raises TrustError (and forgets the entry) when the server cannot be reached.
        """
        lock = self._locks.setdefault(server_key, asyncio.Lock())
        async with lock:
            entry = self._entries.get(server_key)
            same = (entry is not None and entry.facts.address == address and entry.facts.port == port
                    and entry.server_name == server_name)
            if entry is not None and same:
                now = self._clock()
                if now - entry.checked_at < self._interval:
                    return entry.facts
                try:
                    current = await leaf_fingerprint(address, port, server_name=server_name,
                                                     timeout=self._timeout)
                except TrustError as exc:
                    self._entries.pop(server_key, None)
                    self._failed(server_key, address, port, exc)
                    raise
                if current == entry.facts.fingerprint:
                    entry.checked_at = now
                    return entry.facts
            try:
                facts = await probe_server(address, port, server_name=server_name, timeout=self._timeout)
            except TrustError as exc:
                self._entries.pop(server_key, None)
                self._failed(server_key, address, port, exc)
                raise
            self._entries[server_key] = _Entry(facts, server_name, self._clock())
            self._failures.pop(server_key, None)
            self._measured_at[server_key] = time.time()
            return facts

    def _failed(self, server_key: str, address: str, port: int, exc: TrustError) -> None:
        if len(self._failures) >= _MAX_FAILURES:
            self._failures.pop(next(iter(self._failures)))
        self._failures[server_key] = (address, port, str(exc), time.time())

    def status(self, server_key: str, address: str = "", port: int = 0) -> ProbeStatus:
        """Facts, or the last failure, for a server: by its key, else by its address and port (a
        server's key changes when GDM reveals the machineIdentifier of a configured one)."""
        entry = self._entries.get(server_key)
        if entry is None and address:
            entry = next((e for e in self._entries.values()
                          if e.facts.address == address and e.facts.port == port), None)
        if entry is not None:
            key = next((k for k, e in self._entries.items() if e is entry), server_key)
            return ProbeStatus(entry.facts, None, self._measured_at.get(key))
        failure = self._failures.get(server_key)
        if failure is None and address:
            failure = next((f for f in self._failures.values() if f[0] == address and f[1] == port), None)
        if failure is not None:
            return ProbeStatus(None, failure[2], failure[3])
        return ProbeStatus(None, None, None)

    def peek(self, server_key: str, address: str = "", port: int = 0) -> ServerFacts | None:
        """The cached facts without any I/O (for status pages), or None."""
        return self.status(server_key, address, port).facts

    def invalidate(self, server_key: str) -> None:
        """Forget a server; the next get() probes it afresh."""
        self._entries.pop(server_key, None)
