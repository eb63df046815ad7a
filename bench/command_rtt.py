"""command_rtt: Companion command round trips through a face vs straight to the player.

Method. Three processes on loopback, as on a LAN where controller, bridge and player are three
devices:

* the player: one FakeCompanionPlayer, alone in its process; it serves both ways, so its own
  work per command (including the timeline push it sends its subscriber, the bridge, after
  every command) is the same in both;
* the bridge: a whole Bridge (tests.helpers.bridge_config, one configured Companion target: that
  player), alone in its process;
* the client: the runner process.

"Through face" is client -> face -> player -> face -> client; "direct" is client -> player ->
client. The client, one aiohttp session (keep-alive, like a controller) sends
``GET /player/playback/setParameters?volume=V&commandID=N`` one at a time, times each answer
with ``perf_counter``. After 50 untimed warm-up commands each way, the COUNT commands per way
are sent in alternating blocks of 100 (face, direct, face, ...) so that other load on the
machine hits both ways alike. Reported: p50 and p99 of each way; the goal is that the face adds
at most one direct round trip at p50, i.e. face p50 <= 2 x direct p50. At the end the player's
own count of setParameters must equal what was sent both ways.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

import aiohttp
from common import Child, Options, Result, in_child, ms, percentile, progress, serve

BLOCK = 100
WARMUP = 50


def _player(conn: Connection) -> None:
    in_child(lambda: _player_main(conn))


async def _player_main(conn: Connection) -> None:
    from tests.fakes.companion_player import FakeCompanionPlayer

    player = FakeCompanionPlayer(name="Bench TV")
    await player.start()
    try:
        conn.send(player.port)

        async def count() -> int:
            return len(player.received("setParameters"))

        await serve(conn, {"count": count})
    finally:
        await player.stop()


def _bridge(conn: Connection, player_port: int) -> None:
    in_child(lambda: _bridge_main(conn, player_port))


async def _bridge_main(conn: Connection, player_port: int) -> None:
    from companion.bridge import Bridge
    from tests.helpers import bridge_config

    with tempfile.TemporaryDirectory(prefix="bench-rtt-") as tmp:
        extra = f"targets: [{{name: bench-tv, address: 127.0.0.1, port: {player_port}}}]"
        bridge = Bridge(bridge_config(Path(tmp), extra, timeouts={"command": 5.0}))
        try:
            await bridge.start()
            slot = next(iter(bridge.faces.values()))
            conn.send(f"http://127.0.0.1:{slot.face.port}")
            await serve(conn, {})
        finally:
            await bridge.stop()


async def _rtts(session: aiohttp.ClientSession, base: str, first_id: int, n: int) -> list[float]:
    headers = {"X-Plex-Client-Identifier": "bench-controller", "X-Plex-Device-Name": "bench"}
    out: list[float] = []
    for i in range(n):
        url = f"{base}/player/playback/setParameters?volume={(first_id + i) % 101}&commandID={first_id + i}"
        started = time.perf_counter()
        async with session.get(url, headers=headers) as resp:
            await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{base}: HTTP {resp.status}")
        out.append(time.perf_counter() - started)
    return out


async def _client(face: str, direct: str, count: int) -> tuple[list[float], list[float]]:
    async with aiohttp.ClientSession() as session:
        await _rtts(session, face, 1, WARMUP)
        await _rtts(session, direct, 1, WARMUP)
        through: list[float] = []
        straight: list[float] = []
        sent = 0
        while sent < count:
            n = min(BLOCK, count - sent)
            through += await _rtts(session, face, 1000 + sent, n)
            straight += await _rtts(session, direct, 1000 + sent, n)
            sent += n
            if sent % 500 == 0:
                progress(f"command_rtt: {sent}/{count} commands each way")
    return through, straight


def run(options: Options) -> Result:
    """Measure face and direct command round trips; judge the face p50 against twice the direct one."""
    count = 100 if options.smoke else 2000
    with Child(_player, name="rtt-player") as player:
        direct_base = f"http://127.0.0.1:{player.recv()}"
        with Child(_bridge, int(direct_base.rsplit(":", 1)[1]), name="rtt-bridge") as bridge:
            face_base = bridge.recv()
            progress(f"command_rtt: {count} setParameters each way, face {face_base}, direct {direct_base}")
            through, straight = asyncio.run(_client(face_base, direct_base, count))
        delivered = player.call("count")
    f50, f99 = percentile(through, 50), percentile(through, 99)
    d50, d99 = percentile(straight, 50), percentile(straight, 99)
    added = f50 - d50
    ratio = f50 / d50
    complete = delivered == 2 * (count + WARMUP)
    return Result(
        name="command_rtt",
        figure=f"face p50 {ms(f50)} p99 {ms(f99)}",
        baseline=f"direct p50 {ms(d50)} p99 {ms(d99)}",
        ratio=f"{ratio:.2f}x (added {added / d50:.2f} RT)",
        goal="face p50 <= 2.0x direct p50",
        meets=ratio <= 2.0 and complete,
        details={"count": count, "face_p50_s": f50, "face_p99_s": f99, "direct_p50_s": d50, "direct_p99_s": d99,
                 "added_p50_s": added, "ratio_p50": ratio, "player_received": delivered,
                 "sent_both_ways": 2 * (count + WARMUP)},
        note="" if complete else f"FAILED: player got {delivered} of {2 * (count + WARMUP)}",
    )
