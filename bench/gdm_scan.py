"""gdm_scan: time until a scan has found N GDM players, ours vs python-plexapi's ``GDM.scan``.

Method. N FakeGdmPeers (players answering M-SEARCH, distinct Resource-Identifiers) share UDP
0.0.0.0:32412 in one helper process; their sockets set SO_REUSEPORT, so each broadcast search
reaches all of them (port 32412 is only ever used inside the private namespace of
scripts/netns-run; the runner refuses to run outside it). The runner process then scans:

* ours: the ``GdmScanner`` behind ``companion scan`` (``companion.discovery.gdm``), with the
  group set to 255.255.255.255 and the player port to 32412, timed from ``start()`` until the
  N-th distinct player has been seen (the answer ``companion scan`` could give at that moment;
  the CLI's fixed listening window is a presentation choice, not discovery time), at most 5 s;
* baseline: ``plexapi.gdm.GDM().scan(scan_for_clients=True)``, which broadcasts the same search
  to 255.255.255.255:32412 and returns after 1 s without a new answer; timed until it returns,
  the earliest moment its caller has the list.

The two alternate ROUNDS times; the medians are reported, with how many players each found.
Goal: ours >= 3x faster and none missed.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from multiprocessing.connection import Connection

from common import BenchError, Child, Options, Result, in_child, ms, progress, serve

PLAYER_PORT = 32412
BROADCAST = "255.255.255.255"


def _peers(conn: Connection, count: int) -> None:
    in_child(lambda: _peers_main(conn, count))


async def _peers_main(conn: Connection, count: int) -> None:
    from tests.fakes.gdm_peer import FakeGdmPeer

    peers = [FakeGdmPeer("player", bind=("0.0.0.0", PLAYER_PORT), headers={
        "Resource-Identifier": f"bench-player-{i:04d}", "Name": f"Bench Player {i}", "Port": str(40000 + i)})
        for i in range(count)]
    try:
        for peer in peers:
            await peer.start()
        conn.send("ready")
        await serve(conn, {})
    finally:
        for peer in peers:
            await peer.stop()


async def _ours(count: int, announce_port: int, server_port: int) -> tuple[float, int]:
    from companion.config import GdmConfig
    from companion.discovery.gdm import GdmScanner
    from companion.model import Sighting

    seen: set[str] = set()
    enough = asyncio.Event()

    def sighted(sighting: Sighting) -> None:
        if sighting.kind != "server":
            seen.add(sighting.ident)
            if len(seen) >= count:
                enough.set()

    settings = GdmConfig(group=BROADCAST, player_port=PLAYER_PORT, announce_port=announce_port,
                         server_port=server_port, search_interval=10.0)
    scanner = GdmScanner(settings, sighted)
    started = time.perf_counter()
    await scanner.start()
    try:
        try:
            await asyncio.wait_for(enough.wait(), 5.0)
        except TimeoutError:
            pass
        took = time.perf_counter() - started
    finally:
        await scanner.stop()
    return took, len(seen)


def _plexapi() -> tuple[float, int]:
    from plexapi.gdm import GDM

    gdm = GDM()
    started = time.perf_counter()
    gdm.scan(scan_for_clients=True)
    took = time.perf_counter() - started
    return took, len({e["data"].get("Resource-Identifier") for e in gdm.entries})


def run(options: Options) -> Result:
    """Time our GdmScanner and python-plexapi's scan over the same fake peers."""
    from tests.helpers import free_port

    count = 10 if options.smoke else 100
    rounds = 2 if options.smoke else 5
    ours: list[tuple[float, int]] = []
    theirs: list[tuple[float, int]] = []
    with Child(_peers, count, name="gdm-peers") as peers:
        peers.recv()
        progress(f"gdm_scan: {count} players on UDP {PLAYER_PORT}; {rounds} rounds")
        for r in range(rounds):
            ours.append(asyncio.run(_ours(count, free_port(), free_port())))
            theirs.append(_plexapi())
            progress(f"gdm_scan: round {r + 1}: ours {ms(ours[-1][0])} ({ours[-1][1]} found), "
                     f"plexapi {ms(theirs[-1][0])} ({theirs[-1][1]} found)")
    our_time = statistics.median(t for t, _ in ours)
    their_time = statistics.median(t for t, _ in theirs)
    our_min_found = min(n for _, n in ours)
    their_min_found = min(n for _, n in theirs)
    if our_time <= 0:
        raise BenchError("scan took no time at all")
    speedup = their_time / our_time
    return Result(
        name="gdm_scan",
        figure=f"{ms(our_time)} to {count} ({our_min_found} found)",
        baseline=f"plexapi {ms(their_time)} ({their_min_found} found)",
        ratio=f"{speedup:.1f}x faster",
        goal=">= 3x faster, none missed",
        meets=speedup >= 3.0 and our_min_found == count,
        details={"players": count, "rounds": rounds, "ours_s": [t for t, _ in ours], "ours_found": [n for _, n in ours],
                 "plexapi_s": [t for t, _ in theirs], "plexapi_found": [n for _, n in theirs], "speedup": speedup},
    )
