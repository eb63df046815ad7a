"""decision: the secure/insecure decision per fling, cached and cold, vs one bare TLS handshake.

Method. A FakePlexServer (test PKI, TLS 1.2-1.3) runs in a helper process; the runner process
decides for the shipped ``android-tv`` profile (TLS 1.2-1.3, Mozilla roots) with the fake's test
root added, policy ``preferred``, no DNS facts, as ``FlingService.prepare`` does:

* cached: what each fling costs once the server's facts are cached: ``ProfileSet.roots_for``
  (memoised per profile) + ``ProbeCache.get`` (a hit) + ``decide`` with the fling service's
  ``VerifyCache`` (a chain already judged for these roots is not verified again while every
  certificate of it stays valid). COUNT decisions in
  batches of 100 timed with ``perf_counter``; the median batch gives the time per decision.
  Each part is also timed alone, to show where the time goes;
* cold: a fresh ProbeCache per round: the full probe (chain, every TLS version, every TLS <= 1.2
  cipher) plus the decision; median of ROUNDS;
* baseline: one bare verified TLS handshake (``asyncio.open_connection`` with the test root and
  the plex.direct name) to the same server; median of 20.

Every decision must come out ``direct-secure``. Goal: a cached decision under 50 microseconds.
"""

from __future__ import annotations

import asyncio
import ssl
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from multiprocessing.connection import Connection

from common import BenchError, Child, Options, Result, in_child, ms, progress, serve

BATCH = 100


def _server(conn: Connection) -> None:
    in_child(lambda: _server_main(conn))


async def _server_main(conn: Connection) -> None:
    from tests.fakes.plex_server import FakePlexServer

    async with FakePlexServer(token="bench-token") as server:
        conn.send((server.port, server.root_pem, server.hash))
        await serve(conn, {})


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} us"


def _per_call(fn: Callable[[], object], count: int) -> float:
    batches = []
    for _ in range(max(1, count // BATCH)):
        started = time.perf_counter()
        for _ in range(BATCH):
            fn()
        batches.append((time.perf_counter() - started) / BATCH)
    return statistics.median(batches)


async def _measure(port: int, root_pem: bytes, server_hash: str, count: int, rounds: int) -> dict[str, float]:
    from cryptography import x509

    from companion.proto.plexdirect import build_name
    from companion.security.decide import decide
    from companion.security.probe import ProbeCache
    from companion.security.profiles import load_profiles, shipped_profiles_dir
    from companion.security.trust import VerifyCache

    profiles = load_profiles([shipped_profiles_dir()])
    profile = profiles.get("android-tv")
    test_root = x509.load_pem_x509_certificate(root_pem)
    address = "127.0.0.1"
    name = build_name(address, server_hash)

    # ProfileSet.roots_for hands out one tuple per profile; the test root rides along in one tuple
    # made once, as a profile whose store held it would.
    combined: dict[int, tuple[x509.Certificate, ...]] = {}

    def roots() -> tuple[x509.Certificate, ...]:
        base = profiles.roots_for(profile)
        if id(base) not in combined:
            combined[id(base)] = (*base, test_root)
        return combined[id(base)]

    verify_cache = VerifyCache()

    def decide_with(facts: object, root_set: tuple[x509.Certificate, ...]) -> str:
        decision = decide(profile=profile, roots=root_set, server_address=address, server_port=port,
                          facts=facts, dns=None, policy="preferred", relay_available=True,  # type: ignore[arg-type]
                          now=datetime.now(UTC), server_hash=server_hash, verify_cache=verify_cache)
        return decision.mode

    # Baseline: bare verified handshakes.
    ctx = ssl.create_default_context(cadata=root_pem.decode())
    shakes = []
    for _ in range(21):
        started = time.perf_counter()
        _, writer = await asyncio.open_connection(address, port, ssl=ctx, server_hostname=name)
        shakes.append(time.perf_counter() - started)
        writer.close()
        await writer.wait_closed()
    handshake = statistics.median(shakes[1:])
    progress(f"decision: bare handshake {ms(handshake)}")

    # Cold: probe + verify + decide with an empty cache.
    colds = []
    cache = ProbeCache()
    for r in range(rounds):
        cache = ProbeCache()
        verify_cache = VerifyCache()  # cold means nothing remembered
        started = time.perf_counter()
        facts = await cache.get("bench-server", address, port, name)
        mode = decide_with(facts, roots())
        colds.append(time.perf_counter() - started)
        if mode != "direct-secure":
            raise BenchError(f"cold decision came out {mode}, expected direct-secure")
        progress(f"decision: cold probe + decision {r + 1}/{rounds}: {ms(colds[-1])}")

    # Cached: the per-fling path once facts are cached (ProbeCache.get is a coroutine: drive it
    # without a loop round trip, as a hit never suspends).
    def cached_get() -> object:
        coro = cache.get("bench-server", address, port, name)
        try:
            coro.send(None)
        except StopIteration as done:
            return done.value
        coro.close()
        raise BenchError("a cached ProbeCache.get suspended (it went to the network)")

    facts = cached_get()
    fixed_roots = roots()

    def whole() -> None:
        if decide_with(cached_get(), roots()) != "direct-secure":
            raise BenchError("cached decision was not direct-secure")

    total = _per_call(whole, count)
    part_roots = _per_call(roots, max(BATCH, count // 4))
    part_get = _per_call(cached_get, max(BATCH, count // 4))
    part_decide = _per_call(lambda: decide_with(facts, fixed_roots), max(BATCH, count // 4))
    return {"cached_s": total, "roots_for_s": part_roots, "probe_get_hit_s": part_get, "decide_s": part_decide,
            "cold_s": statistics.median(colds), "handshake_s": handshake, "roots": float(len(fixed_roots))}


def run(options: Options) -> Result:
    """Measure cached and cold decisions against a bare verified TLS handshake."""
    count = 500 if options.smoke else 5000
    rounds = 1 if options.smoke else 3
    with Child(_server, name="decision-server") as server:
        port, root_pem, server_hash = server.recv()
        got = asyncio.run(_measure(port, root_pem, server_hash, count, rounds))
    cached = got["cached_s"]
    return Result(
        name="decision",
        figure=f"cached {_us(cached)} ({1 / cached:.0f}/s); cold {ms(got['cold_s'])}",
        baseline=f"bare handshake {ms(got['handshake_s'])}",
        ratio=f"cached {cached / got['handshake_s']:.2f}x, cold {got['cold_s'] / got['handshake_s']:.0f}x hs",
        goal="cached < 50 us",
        meets=cached < 50e-6,
        details={**got, "count": count, "cold_rounds": rounds, "decisions_per_s": 1 / cached},
    )
