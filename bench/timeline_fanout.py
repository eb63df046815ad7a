"""timeline_fanout: from a target's state change to the last timeline delivery, many listeners vs one.

Method. Two helper processes on loopback, orchestrated by the runner:

* the face: a ``companion.faces.app.Face`` whose limits admit SUBS push subscribers and POLLS
  long-polls (the defaults, 64 and 256, are raised for this measurement only), with an aiohttp
  session like the bridge's (256 connections); on command it records ``time.monotonic()`` and
  calls ``update_state`` with a new paused video entry whose key names the round;
* the audience: SUBS controllers subscribed with distinct X-Plex-Client-Identifiers, their
  ``/:/timeline`` pushes received by 8 aiohttp listeners, plus POLLS long-polls
  (``poll?wait=1``) on keep-alive connections; every delivery carrying the round's key is
  stamped with ``time.monotonic()`` on arrival (CLOCK_MONOTONIC is system-wide on Linux, so the
  stamps of the two processes compare).

Per round: the audience re-arms its long-polls; the runner waits until the face holds all of
them; the face changes state; the audience waits for SUBS pushes and POLLS answers of that round.
Latency = arrival - change. ROUNDS rounds; p50 and p99 over every delivery. The baseline is the
same with one subscriber and no long-polls (20 rounds). Goal: p99 <= 250 ms.
"""

from __future__ import annotations

import asyncio
import re
import time
from multiprocessing.connection import Connection

from common import BenchError, Child, Options, Result, in_child, ms, percentile, progress, serve

LISTENERS = 8
GOAL_S = 0.250
KEY = re.compile(rb'key="/library/metadata/bench-(\d+)"')


def _face(conn: Connection, subs: int, polls: int) -> None:
    in_child(lambda: _face_main(conn, subs, polls))


async def _face_main(conn: Connection, subs: int, polls: int) -> None:
    import aiohttp

    from companion.faces.app import Face, FaceLimits
    from companion.model import Command
    from companion.proto.companion import FaceIdentity
    from companion.proto.timeline import PlayerState, TimelineEntry

    async def handler(command: Command) -> None:
        return None

    identity = FaceIdentity(machine_identifier="bench-face-fanout", name="Bench TV (bridge)",
                            product="companion-bridge", version="bench", platform="bench",
                            platform_version="1", device_class="stb", capabilities=("timeline", "playback"))
    # Every subscriber comes from 127.0.0.1 here, so the per-source cap is raised with the total.
    limits = FaceLimits(max_subscribers=subs + 8, subscribers_per_source=subs + 8, max_long_polls=polls + 8,
                        poll_hold=120.0, push_timeout=10.0)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
    face = Face(identity, handler, bind="127.0.0.1", port=0, session=session, limits=limits)
    await face.start()

    async def held() -> int:
        return face.long_poll_count

    async def subscribers() -> int:
        return face.subscriber_count

    async def change(round_no: int) -> float:
        entry = TimelineEntry(type="video", state="paused", time=round_no * 1000, duration=3_600_000,
                              key=f"/library/metadata/bench-{round_no}")
        started = time.monotonic()
        face.update_state(PlayerState().with_entry(entry))
        return started

    try:
        conn.send(face.port)
        await serve(conn, {"held": held, "subscribers": subscribers, "change": change})
    finally:
        await face.stop()
        await session.close()


def _audience(conn: Connection, port: int, subs: int, polls: int) -> None:
    in_child(lambda: _audience_main(conn, port, subs, polls))


async def _audience_main(conn: Connection, port: int, subs: int, polls: int) -> None:
    import aiohttp
    from aiohttp import web

    arrivals: dict[int, list[float]] = {}
    pushes_total = [0]
    changed = asyncio.Event()
    base = f"http://127.0.0.1:{port}"

    def note(body: bytes) -> None:
        now = time.monotonic()
        found = KEY.search(body)
        if found is not None:
            arrivals.setdefault(int(found.group(1)), []).append(now)
        changed.set()

    async def on_push(request: web.Request) -> web.Response:
        pushes_total[0] += 1
        note(await request.read())
        return web.Response(text="OK")

    app = web.Application()
    app.router.add_post("/:/timeline", on_push)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    listener_ports: list[int] = []
    for _ in range(LISTENERS):
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
    listener_ports = [int(address[1]) for address in runner.addresses]
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=False),
                                    timeout=aiohttp.ClientTimeout(total=None))
    polling: set[asyncio.Task[None]] = set()

    async def long_poll(i: int) -> None:
        async with session.get(f"{base}/player/timeline/poll", params={"wait": "1", "commandID": "1"},
                               headers={"X-Plex-Client-Identifier": f"bench-poll-{i}"}) as resp:
            note(await resp.read())

    async def subscribe() -> int:
        limit = asyncio.Semaphore(64)

        async def one(i: int) -> None:
            async with limit, session.get(
                    f"{base}/player/timeline/subscribe",
                    params={"protocol": "http", "port": str(listener_ports[i % LISTENERS]), "commandID": "1"},
                    headers={"X-Plex-Client-Identifier": f"bench-sub-{i}", "X-Plex-Device-Name": f"sub {i}"}) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"subscribe {i}: HTTP {resp.status}")

        await asyncio.gather(*(one(i) for i in range(subs)))
        # Each subscription is answered with a push of the current timeline; wait for them all.
        async with asyncio.timeout(60):
            while pushes_total[0] < subs:
                changed.clear()
                await changed.wait()
        return pushes_total[0]

    async def arm() -> int:
        for i in range(polls):
            task = asyncio.get_running_loop().create_task(long_poll(i), name=f"long-poll-{i}")
            polling.add(task)
            task.add_done_callback(polling.discard)
        return len(polling)

    async def collect(round_no: int, timeout: float) -> list[float]:
        want = subs + polls
        try:
            async with asyncio.timeout(timeout):
                while len(arrivals.get(round_no, [])) < want:
                    changed.clear()
                    await changed.wait()
        except TimeoutError:
            raise RuntimeError(f"round {round_no}: {len(arrivals.get(round_no, []))} of {want} deliveries "
                               f"within {timeout:g} s") from None
        return arrivals.pop(round_no)

    try:
        conn.send("ready")
        await serve(conn, {"subscribe": subscribe, "arm": arm, "collect": collect})
    finally:
        for task in list(polling):
            task.cancel()
        await asyncio.gather(*polling, return_exceptions=True)
        await session.close()
        await runner.cleanup()


def _measure(subs: int, polls: int, rounds: int, label: str) -> list[float]:
    with Child(_face, subs, polls, name=f"fanout-face-{label}") as face:
        port = face.recv()
        with Child(_audience, port, subs, polls, name=f"fanout-audience-{label}") as audience:
            audience.recv()
            audience.call("subscribe", timeout=120)
            if face.call("subscribers") != subs:
                raise BenchError(f"{label}: the face has {face.call('subscribers')} subscribers, not {subs}")
            latencies: list[float] = []
            for r in range(1, rounds + 1):
                audience.call("arm")
                deadline = time.monotonic() + 60
                while face.call("held") < polls:
                    if time.monotonic() > deadline:
                        raise BenchError(f"{label}: only {face.call('held')} of {polls} long-polls held")
                    time.sleep(0.02)  # polling another process's count; nothing to await across processes
                started = face.call("change", r)
                arrived = audience.call("collect", r, 60.0, timeout=90)
                latencies += [t - started for t in arrived]
                if rounds <= 10 or r % 5 == 0:
                    progress(f"timeline_fanout {label}: round {r}/{rounds}: last delivery after "
                             f"{ms(max(arrived) - started)}")
    return latencies


def run(options: Options) -> Result:
    subs, polls = (50, 50) if options.smoke else (1000, 1000)
    rounds = 3 if options.smoke else 10
    base = _measure(1, 0, 5 if options.smoke else 20, "one subscriber")
    fan = _measure(subs, polls, rounds, f"{subs}+{polls}")
    b50, b99 = percentile(base, 50), percentile(base, 99)
    f50, f99 = percentile(fan, 50), percentile(fan, 99)
    return Result(
        name="timeline_fanout",
        figure=f"{subs}+{polls}: p50 {ms(f50)} p99 {ms(f99)}",
        baseline=f"1 sub: p50 {ms(b50)} p99 {ms(b99)}",
        ratio=f"p99 {f99 / b99:.0f}x",
        goal=f"p99 <= {GOAL_S * 1000:.0f} ms",
        meets=f99 <= GOAL_S,
        details={"subscribers": subs, "long_polls": polls, "rounds": rounds, "p50_s": f50, "p99_s": f99,
                 "max_s": max(fan), "baseline_p50_s": b50, "baseline_p99_s": b99, "deliveries": len(fan)},
    )
