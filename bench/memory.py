"""memory: RSS of ``companion run`` with 50 faces, idle and after sustained load, vs bare imports.

Method. A helper process runs 50 FakeCompanionPlayers and a FakePlexServer on loopback. The
daemon is the real CLI, ``python -m companion run --config FILE``, in its own process, with one
configured target per player (so 50 faces), that server under ``servers:`` (token included), GDM
on test ports, mDNS off, DNS check off, its own state directory. Its RSS (VmRSS from /proc) is
read:

* idle: once the log says all 50 faces started, after a settling pause;
* after load: at the end of LOAD seconds (``--memory-load-seconds``, default 600) during which a
  load-generator process keeps every face busy at a modest, steady rate: each face gets
  setParameters and play/pause commands, ``poll?wait=0`` and a long-poll, one subscribed
  controller per face (re-subscribed every 30 s, so pushes flow), and every 2 s one playMedia
  fling to the configured server (probe, decision, relay grant, audit record). RSS is sampled
  every 5 s; the peak is reported too.

The baseline is a Python process that imports what the daemon imports (``companion.cli`` and
``companion.bridge``, and through them aiohttp, cryptography, yaml, prometheus_client; zeroconf,
pychromecast and dnspython load only when mDNS, a Cast device or the DNS check needs them), with
frozenlist's pure-Python build as ``companion run`` has it, and does nothing else. Goal: idle RSS
at most 64 MB (the after-load figure and its distance from the baseline are reported too, for
growth under load). The idle figure is also
shown split into anonymous and file-backed pages: the file-backed part (code of the interpreter
and extensions) moves with the machine's page cache, 2 MB between two checkouts of one commit.
The daemon is stopped with SIGTERM and must exit 0 within 20 s.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

from common import ROOT, BenchError, Child, Options, Result, in_child, progress, rss_bytes, rss_parts, serve

FACES = 50
STARTED = re.compile(r"companion-bridge \S+ started: (\d+) face")
FACE_PORT = re.compile(r"face '.*?' for (\S+) \(.*?\) listening on port (\d+)")
MB = 1e6
IDLE_GOAL_MB = 64.0


def _fakes(conn: Connection, count: int) -> None:
    in_child(lambda: _fakes_main(conn, count))


async def _fakes_main(conn: Connection, count: int) -> None:
    from tests.fakes.companion_player import FakeCompanionPlayer
    from tests.fakes.plex_server import FakePlexServer

    players = [FakeCompanionPlayer(name=f"Bench TV {i}") for i in range(count)]
    server = FakePlexServer(token="bench-token", media_size=64 * 1024)
    try:
        await server.start()
        for player in players:
            await player.start()
        conn.send(([p.port for p in players], server.port, server.root_pem))
        await serve(conn, {})
    finally:
        for player in players:
            await player.stop()
        await server.stop()


def _load(conn: Connection, face_ports: list[int], server_port: int, seconds: float) -> None:
    in_child(lambda: _load_main(conn, face_ports, server_port, seconds))


async def _load_main(conn: Connection, face_ports: list[int], server_port: int, seconds: float) -> None:
    import aiohttp
    from aiohttp import web

    counts = {"requests": 0, "errors": 0, "refused_4xx": 0, "pushes": 0, "flings": 0}

    async def on_push(request: web.Request) -> web.Response:
        await request.read()
        counts["pushes"] += 1
        return web.Response(text="OK")

    app = web.Application()
    app.router.add_post("/:/timeline", on_push)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    listen = int(runner.addresses[0][1])
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
    deadline = time.monotonic() + seconds

    async def get(face: int, path: str, client: str, params: dict[str, str]) -> None:
        try:
            async with session.get(f"http://127.0.0.1:{face}{path}", params=params,
                                   headers={"X-Plex-Client-Identifier": client, "X-Plex-Device-Name": client}) as resp:
                await resp.read()
                counts["requests"] += 1
                if resp.status >= 500:
                    counts["errors"] += 1
                elif resp.status >= 400:
                    counts["refused_4xx"] += 1
        except (aiohttp.ClientError, TimeoutError):
            counts["errors"] += 1

    async def face_load(i: int, port: int) -> None:
        client = f"bench-load-{i}"
        n = 0
        await asyncio.sleep(i * 0.02)  # stagger the faces so the load is steady, not in waves
        while time.monotonic() < deadline:
            n += 1
            if n % 30 == 1:
                await get(port, "/player/timeline/subscribe", client,
                          {"protocol": "http", "port": str(listen), "commandID": str(n)})
            await get(port, "/player/playback/setParameters", client, {"volume": str(n % 101), "commandID": str(n)})
            await get(port, "/player/timeline/poll", client, {"wait": "0", "commandID": str(n)})
            await get(port, f"/player/playback/{'pause' if n % 2 else 'play'}", client, {"commandID": str(n)})
            await asyncio.sleep(1.0)  # pacing of a steady load, not synchronisation

    async def long_polls(i: int, port: int) -> None:
        while time.monotonic() < deadline:
            await get(port, "/player/timeline/poll", f"bench-poller-{i}", {"wait": "1", "commandID": "1"})

    async def flings() -> None:
        n = 0
        while time.monotonic() < deadline:
            port = face_ports[n % len(face_ports)]
            n += 1
            await get(port, "/player/playback/playMedia", "bench-flinger", {
                "key": "/library/metadata/501", "offset": "0", "machineIdentifier": "fake-plex-server-0001",
                "protocol": "https", "address": "127.0.0.1", "port": str(server_port), "token": "bench-token",
                "commandID": str(n)})
            counts["flings"] += 1
            await asyncio.sleep(2.0)

    tasks = [asyncio.create_task(face_load(i, p), name=f"load-{i}") for i, p in enumerate(face_ports)]
    tasks += [asyncio.create_task(long_polls(i, p), name=f"poller-{i}") for i, p in enumerate(face_ports)]
    tasks.append(asyncio.create_task(flings(), name="flings"))

    async def status() -> dict[str, int]:
        return dict(counts)

    async def finish() -> dict[str, int]:
        # Long-polls end at the face's poll hold at the latest; cancel rather than wait for it.
        await asyncio.gather(*(t for t in tasks if not t.get_name().startswith("poller")))
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return dict(counts)

    try:
        conn.send("ready")
        await serve(conn, {"status": status, "finish": finish})
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await session.close()
        await runner.cleanup()


def _config(tmp: Path, player_ports: list[int], server_port: int, root_pem: bytes) -> Path:
    from tests.helpers import free_port_block

    gdm = free_port_block(3)
    faces = free_port_block(FACES + 10)
    (tmp / "root.pem").write_bytes(root_pem)
    targets = "\n".join(f"  - {{name: bench-tv-{i}, address: 127.0.0.1, port: {port}}}"
                        for i, port in enumerate(player_ports))
    text = f"""
name: bench-bridge
interfaces: [127.0.0.1]
gdm: {{group: 239.0.0.250, player_port: {gdm}, announce_port: {gdm + 1}, server_port: {gdm + 2}}}
mdns: {{enabled: false}}
http: {{bind: 127.0.0.1, admin_port: 0, relay_port: 0, face_port_base: {faces}}}
security: {{policy: preferred, relay: true, dns_check: false, extra_roots: [{tmp / "root.pem"}]}}
servers:
  - {{url: "https://127.0.0.1:{server_port}", token: bench-token}}
targets:
{targets}
state_dir: {tmp / "state"}
"""
    path = tmp / "config.yaml"
    path.write_text(text)
    return path


def _baseline_rss() -> int:
    code = ("import sys, companion.tuning; companion.tuning.pure_python_frozenlist(); "
            "import companion.cli, companion.bridge; sys.stdout.write('ready\\n'); sys.stdout.flush(); "
            "sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise BenchError("the baseline process did not start")
        return rss_bytes(proc.pid)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_started(log: Path, proc: subprocess.Popen[bytes], timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        found = STARTED.search(text)
        if found is not None:
            if int(found.group(1)) != FACES:
                raise BenchError(f"the daemon started {found.group(1)} faces, not {FACES}")
            return {name: int(port) for name, port in FACE_PORT.findall(text)}
        if proc.poll() is not None:
            raise BenchError(f"companion run exited with {proc.returncode}: {text[-500:]}")
        time.sleep(0.2)  # waiting on another process's log file; nothing to await
    raise BenchError(f"companion run did not report {FACES} faces within {timeout:g} s")


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return -9
    return proc.returncode


def run(options: Options) -> Result:
    """Measure the daemon's RSS with 50 faces, idle and after load, against bare imports."""
    load_seconds = options.memory_load_seconds
    settle = 3.0 if options.smoke else 10.0
    baseline = _baseline_rss()
    progress(f"memory: baseline (imports only) {baseline / MB:.1f} MB")
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp_name, \
            Child(_fakes, FACES, name="memory-fakes") as fakes:
        tmp = Path(tmp_name)
        player_ports, server_port, root_pem = fakes.recv()
        config = _config(tmp, player_ports, server_port, root_pem)
        log = tmp / "daemon.log"
        with log.open("wb") as log_file:
            proc = subprocess.Popen([sys.executable, "-m", "companion", "--log-level", "info", "run",
                                     "--config", str(config)],
                                    stdout=log_file, stderr=log_file, cwd=ROOT,
                                    env={**os.environ, "PYTHONPATH": str(ROOT)})
        exit_code = None
        try:
            face_ports = _wait_started(log, proc, 90)
            if len(face_ports) != FACES:
                raise BenchError(f"found {len(face_ports)} face ports in the log, expected {FACES}")
            time.sleep(settle)  # idle is the point here
            idle = rss_bytes(proc.pid)
            idle_anon, idle_file = rss_parts(proc.pid)
            progress(f"memory: idle with {FACES} faces {idle / MB:.1f} MB (anonymous {idle_anon / MB:.1f}, "
                     f"file-backed {idle_file / MB:.1f}); loading for {load_seconds:g} s")
            samples = [idle]
            with Child(_load, sorted(face_ports.values()), server_port, load_seconds, name="memory-load") as load:
                load.recv()
                started = time.monotonic()
                next_report = started + 60
                while time.monotonic() - started < load_seconds:
                    time.sleep(min(5.0, max(0.1, load_seconds - (time.monotonic() - started))))
                    samples.append(rss_bytes(proc.pid))
                    if time.monotonic() >= next_report:
                        next_report += 60
                        counts = load.call("status")
                        progress(f"memory: {time.monotonic() - started:.0f}/{load_seconds:g} s, RSS "
                                 f"{samples[-1] / MB:.1f} MB, {counts}")
                counts = load.call("finish", timeout=120)
            after = rss_bytes(proc.pid)
            samples.append(after)
        finally:
            exit_code = _stop(proc)
        tail = log.read_text(errors="replace")[-2000:]
    if exit_code != 0:
        raise BenchError(f"companion run exited with {exit_code} on SIGTERM: {tail[-400:]}")
    if counts["requests"] == 0:
        raise BenchError("the load generator made no request")
    above = (after - baseline) / MB
    return Result(
        name="memory",
        figure=f"idle {idle / MB:.1f} MB, after {load_seconds:g}s load {after / MB:.1f} MB",
        baseline=f"imports {baseline / MB:.1f} MB",
        ratio=f"idle +{(idle - baseline) / MB:.1f} MB, after load +{above:.1f} MB",
        goal=f"idle <= {IDLE_GOAL_MB:g} MB",
        meets=idle / MB <= IDLE_GOAL_MB,
        details={"faces": FACES, "baseline_bytes": baseline, "idle_bytes": idle, "idle_anon_bytes": idle_anon,
                 "idle_file_bytes": idle_file, "after_load_bytes": after,
                 "peak_bytes": max(samples), "load_seconds": load_seconds, "load": counts,
                 "idle_above_mb": (idle - baseline) / MB, "after_above_mb": above},
    )
