"""timeline_fanout: from a target's state change to the last timeline delivery, many listeners vs one.

Method. Two helper processes on loopback, orchestrated by the runner:

* the face: a ``companion.faces.app.Face`` whose limits admit SUBS push subscribers and POLLS
  long-polls (the defaults, 64 and 256, are raised for this measurement only), with an aiohttp
  session like the bridge's (256 connections); on command it records ``time.monotonic()`` and
  calls ``update_state`` with a new paused video entry whose key names the round;
* the audience: SUBS controllers subscribed with distinct X-Plex-Client-Identifiers, their
  ``/:/timeline`` pushes received on 8 listening sockets, plus POLLS long-polls
  (``poll?wait=1``) on POLLS keep-alive connections; every delivery carrying the round's key is
  stamped with ``time.monotonic()`` when its last byte has arrived (CLOCK_MONOTONIC is
  system-wide on Linux, so the stamps of the two processes compare). The audience speaks
  HTTP/1.1 on raw asyncio protocols (subscribing, which is not timed, uses aiohttp): on two
  cores the 2,000 deliveries of a round land on one core, and a client library there would
  time its own parsing, not the face (1,000 real controllers are 1,000 devices).

Per round: the audience re-arms its long-polls; the runner waits until the face holds all of
them; the face changes state; the audience waits for SUBS pushes and POLLS answers of that round.
Latency = arrival - change. ROUNDS rounds; p50 and p99 over every delivery. The baseline is the
same with one subscriber and no long-polls (20 rounds). Goal: p99 <= 250 ms.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from multiprocessing.connection import Connection

from common import BenchError, Child, Options, Result, in_child, ms, percentile, progress, serve

LISTENERS = 8
GOAL_S = 0.250
KEY = re.compile(rb'key="/library/metadata/bench-(\d+)"')
_OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nOK"


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

    loop = asyncio.get_running_loop()
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

    def on_push(body: bytes) -> None:
        pushes_total[0] += 1
        note(body)

    servers = [await loop.create_server(lambda: _PushListener(on_push), "127.0.0.1", 0, backlog=1024)
               for _ in range(LISTENERS)]
    listener_ports = [int(server.sockets[0].getsockname()[1]) for server in servers]
    pollers: list[_LongPoll] = []
    for i in range(polls):
        request = (f"GET /player/timeline/poll?wait=1&commandID=1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                   f"X-Plex-Client-Identifier: bench-poll-{i}\r\n\r\n").encode()
        _, poller = await loop.create_connection(lambda r=request: _LongPoll(r, note), "127.0.0.1", port)
        pollers.append(poller)

    async def subscribe() -> int:
        limit = asyncio.Semaphore(64)
        async with aiohttp.ClientSession() as session:

            async def one(i: int) -> None:
                params = {"protocol": "http", "port": str(listener_ports[i % LISTENERS]), "commandID": "1"}
                headers = {"X-Plex-Client-Identifier": f"bench-sub-{i}", "X-Plex-Device-Name": f"sub {i}"}
                async with limit, session.get(f"{base}/player/timeline/subscribe", params=params,
                                              headers=headers) as resp:
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
        for poller in pollers:
            poller.arm()
        return len(pollers)

    async def collect(round_no: int, timeout: float) -> list[float]:
        want = subs + polls
        try:
            async with asyncio.timeout(timeout):
                while len(arrivals.get(round_no, [])) < want:
                    changed.clear()
                    await changed.wait()
        except TimeoutError as exc:
            raise RuntimeError(f"round {round_no}: {len(arrivals.get(round_no, []))} of {want} deliveries "
                               f"within {timeout:g} s") from exc
        return arrivals.pop(round_no)

    try:
        conn.send("ready")
        await serve(conn, {"subscribe": subscribe, "arm": arm, "collect": collect})
    finally:
        for poller in pollers:
            poller.close()
        for server in servers:
            server.close()
            await server.wait_closed()


def _message(buf: bytearray) -> tuple[bytes, bytes] | None:
    """Take one complete HTTP/1.1 message (head, body) off the front of ``buf``; None until one is whole."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).lower()
    start = head.find(b"\r\ncontent-length:")
    if start < 0:
        raise RuntimeError(f"a message without Content-Length: {head[:60]!r}")
    line_end = head.find(b"\r\n", start + 2)
    length = int(head[start + 17:line_end if line_end >= 0 else len(head)])
    if len(buf) < end + 4 + length:
        return None
    body = bytes(buf[end + 4:end + 4 + length])
    del buf[:end + 4 + length]
    return head, body


class _PushListener(asyncio.Protocol):
    """A controller's ``/:/timeline`` listener: each POST is read whole, noted, and answered 200 (keep-alive)."""

    def __init__(self, on_push: Callable[[bytes], None]) -> None:
        self._on_push = on_push
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buf += data
        while (message := _message(self._buf)) is not None:
            head, body = message
            if not head.startswith(b"post /:/timeline "):
                raise RuntimeError(f"unexpected push request {head[:60]!r}")
            self._on_push(body)
            assert self._transport is not None
            self._transport.write(_OK)


class _LongPoll(asyncio.Protocol):
    """One keep-alive connection holding a ``poll?wait=1``: :meth:`arm` sends it, the answer is noted."""

    def __init__(self, request: bytes, on_answer: Callable[[bytes], None]) -> None:
        self._request = request
        self._on_answer = on_answer
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None
        self._closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def arm(self) -> None:
        if self._transport is None or self._transport.is_closing():
            raise RuntimeError("a long-poll connection was closed by the face")
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        while (message := _message(self._buf)) is not None:
            head, body = message
            if not head.startswith(b"http/1.1 200"):
                raise RuntimeError(f"long-poll answered {head[:40]!r}")
            self._on_answer(body)

    def close(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.close()


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
    """Measure fan-out latency to 1,000 subscribers and 1,000 long-polls against one subscriber."""
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
