"""face_rps: requests per second of ``/player/timeline/poll?wait=0`` on one face vs a bare handler.

Method. Three processes on loopback, so that the load generator never shares a CPU's event loop
with the server it measures (the machine has two cores: one for the server, one for the load):

* the face: a ``companion.faces.app.Face`` (default limits and middlewares, a no-op command
  handler), alone in its process;
* the baseline: a bare aiohttp application whose one handler returns the bytes the face answered
  (same body and content type), alone in its process;
* the load generator: CONCURRENCY keep-alive connections, each sending the next
  ``GET /player/timeline/poll?wait=0`` as soon as the previous answer is complete. It speaks
  HTTP/1.1 on raw asyncio protocols (no client library) so that it stays far cheaper per
  request than either server; its CPU use, and the server's, are reported to show which side was the bottleneck.

Each server gets a 1 s untimed warm-up, then DURATION seconds counted; the two are measured
alternately ROUNDS times. The server is the bottleneck (it uses a whole core when it has one;
the load generator far less), so its throughput is the inverse of its CPU cost per request. On
a shared machine the two servers do not get the same share of a core, so the judged figure is
requests per CPU second of the server process (requests / its user+system CPU time), which is
the req/s it gives when it has its core; the wall-clock req/s is reported beside it. Medians
over the rounds. Goal: face >= 0.7 x bare.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from multiprocessing.connection import Connection

from common import Child, Options, Result, cpu_seconds, in_child, progress, serve

PATH = "/player/timeline/poll?wait=0&commandID=1"
GOAL = 0.7


async def _cpu() -> float:
    return cpu_seconds()


def _face(conn: Connection) -> None:
    in_child(lambda: _face_main(conn))


async def _face_main(conn: Connection) -> None:
    import aiohttp

    from companion.faces.app import Face
    from companion.model import Command
    from companion.proto.companion import FaceIdentity

    async def handler(command: Command) -> None:
        return None

    identity = FaceIdentity(machine_identifier="bench-face-0001", name="Bench TV (bridge)",
                            product="companion-bridge", version="bench", platform="bench",
                            platform_version="1", device_class="stb", capabilities=("timeline", "playback"))
    async with aiohttp.ClientSession() as session:
        face = Face(identity, handler, bind="127.0.0.1", port=0, session=session)
        await face.start()
        try:
            conn.send(face.port)
            await serve(conn, {"cpu": _cpu})
        finally:
            await face.stop()


def _bare(conn: Connection, body: bytes, content_type: str) -> None:
    in_child(lambda: _bare_main(conn, body, content_type))


async def _bare_main(conn: Connection, body: bytes, content_type: str) -> None:
    from aiohttp import web

    async def poll(request: web.Request) -> web.Response:
        return web.Response(body=body, headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_get("/player/timeline/poll", poll)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        conn.send(int(runner.addresses[0][1]))
        await serve(conn, {"cpu": _cpu})
    finally:
        await runner.cleanup()


class _KeepAlive(asyncio.Protocol):
    """One client connection: a request, wait for the full answer (Content-Length), repeat."""

    def __init__(self, request: bytes, counter: list[int], done: asyncio.Future[None]) -> None:
        self._request = request
        self._counter = counter
        self._done = done
        self._buf = b""
        self._need = -1
        self.transport: asyncio.Transport | None = None
        self.stopping = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        while True:
            if self._need < 0:
                end = self._buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = self._buf[:end].lower()
                if not head.startswith(b"http/1.1 200"):
                    self._fail(f"answer was {head[:40]!r}")
                    return
                start = head.find(b"content-length:")
                if start < 0:
                    self._fail("answer without Content-Length")
                    return
                line_end = head.find(b"\r\n", start)
                length = int(head[start + 15:line_end if line_end >= 0 else len(head)])
                self._need = end + 4 + length
            if len(self._buf) < self._need:
                return
            self._buf = self._buf[self._need:]
            self._need = -1
            self._counter[0] += 1
            assert self.transport is not None
            if self.stopping:
                self.transport.close()
                return
            self.transport.write(self._request)

    def _fail(self, why: str) -> None:
        if not self._done.done():
            self._done.set_exception(RuntimeError(why))
        assert self.transport is not None
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.stopping and not self._done.done():
            self._done.set_exception(RuntimeError(f"connection lost: {exc}"))


async def _load(port: int, concurrency: int, duration: float) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    counter = [0]
    conns: list[_KeepAlive] = []
    for i in range(concurrency):
        request = (f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Plex-Client-Identifier: bench-{i}\r\n"
                   f"X-Plex-Device-Name: bench\r\n\r\n").encode()
        _, proto = await loop.create_connection(lambda r=request: _KeepAlive(r, counter, done), "127.0.0.1", port)
        conns.append(proto)
    try:
        await asyncio.wait_for(asyncio.shield(done), 1.0)  # warm-up; returns early only on failure
    except TimeoutError:
        pass
    first, cpu0, t0 = counter[0], cpu_seconds(), time.perf_counter()
    try:
        await asyncio.wait_for(asyncio.shield(done), duration)
    except TimeoutError:
        pass
    got, elapsed, cpu = counter[0] - first, time.perf_counter() - t0, cpu_seconds() - cpu0
    for proto in conns:
        proto.stopping = True
    await asyncio.sleep(0.05)  # let the last answers in flight land before closing
    for proto in conns:
        if proto.transport is not None:
            proto.transport.close()
    if done.done() and done.exception() is not None:
        raise RuntimeError(str(done.exception()))
    return {"rps": got / elapsed, "client_cpu_share": cpu / elapsed}


def _loader(conn: Connection) -> None:
    in_child(lambda: _loader_main(conn))


async def _loader_main(conn: Connection) -> None:
    conn.send("ready")
    await serve(conn, {"load": _load})


def _sample(port: int) -> tuple[bytes, str]:
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{port}{PATH}", headers={"X-Plex-Client-Identifier": "bench-0"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.read(), resp.headers["Content-Type"]


def run(options: Options) -> Result:
    """Measure a face's poll throughput against a bare aiohttp handler, alternating rounds."""
    concurrency = 8 if options.smoke else 64
    duration = 2.0 if options.smoke else 6.0
    rounds = 1 if options.smoke else 5
    with Child(_face, name="rps-face") as face, Child(_loader, name="rps-load") as loader:
        face_port = face.recv()
        loader.recv()
        body, content_type = _sample(face_port)
        with Child(_bare, body, content_type, name="rps-bare") as bare:
            bare_port = bare.recv()
            seen: dict[str, list[dict[str, float]]] = {"face": [], "bare": []}
            for r in range(rounds):
                for label, port, server in (("face", face_port, face), ("bare", bare_port, bare)):
                    cpu0, t0 = server.call("cpu"), time.perf_counter()
                    got = loader.call("load", port, concurrency, duration, timeout=duration + 30)
                    got["server_cpu_share"] = (server.call("cpu") - cpu0) / (time.perf_counter() - t0)
                    got["per_cpu_second"] = got["rps"] / max(got["server_cpu_share"], 1e-9)
                    progress(f"face_rps: round {r + 1}/{rounds} {label}: {got['rps']:.0f} req/s, "
                             f"{got['per_cpu_second']:.0f} per CPU second (server used "
                             f"{got['server_cpu_share']:.0%} of a core, load generator {got['client_cpu_share']:.0%})")
                    seen[label].append(got)
    face_rps = statistics.median(g["rps"] for g in seen["face"])
    bare_rps = statistics.median(g["rps"] for g in seen["bare"])
    face_cpu = statistics.median(g["per_cpu_second"] for g in seen["face"])
    bare_cpu = statistics.median(g["per_cpu_second"] for g in seen["bare"])
    ratio, wall_ratio = face_cpu / bare_cpu, face_rps / bare_rps
    return Result(
        name="face_rps",
        figure=f"{face_cpu:.0f} req per CPU s ({face_rps:.0f} req/s)",
        baseline=f"bare {bare_cpu:.0f} req per CPU s ({bare_rps:.0f} req/s)",
        ratio=f"{ratio:.2f} (req/s {wall_ratio:.2f})",
        goal=f">= {GOAL:.2f} of bare",
        meets=ratio >= GOAL,
        details={"concurrency": concurrency, "duration_s": duration, "rounds": rounds, "face": seen["face"],
                 "bare": seen["bare"], "ratio": ratio, "wall_ratio": wall_ratio, "body_bytes": len(body)},
    )
