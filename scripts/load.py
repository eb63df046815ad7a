"""Load test: many controllers long-polling plus a steady command rate against a daemon's faces.

    scripts/netns-run .venv/bin/python scripts/load.py                    # 500 pollers, 100 cmd/s, 60 s, 20 faces
    scripts/netns-run .venv/bin/python scripts/load.py --pollers 50 --rate 20 --seconds 10 --faces 5

The daemon (``python -m companion run``) runs as a subprocess with one configured Companion target
per face, each a FakeCompanionPlayer in this process. Pollers hold ``poll?wait=1`` requests in a
loop, spread over the faces; commands (play/pause/volume) are sent open-loop at a fixed rate to
random faces, so a slow daemon shows as latency, not as a lower rate. Each command changes the
player's state, which it pushes back, which wakes that face's long-polls: the daemon carries the
whole loop. Prints a JSON report: errors, command latency p50/p99, poll answers, and the daemon's
RSS sampled once a second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for path in (str(ROOT), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)

import durability  # noqa: E402  (scripts/durability.py: Daemon, free_port)

from tests.fakes.companion_player import FakeCompanionPlayer  # noqa: E402


@dataclass
class LoadReport:
    pollers: int
    rate: float
    seconds: float
    faces: int
    commands_sent: int
    command_errors: int
    command_p50_ms: float
    command_p99_ms: float
    command_max_ms: float
    poll_answers: int
    poll_errors: int
    rss_mb: list[float] = field(default_factory=list)
    rss_after_warmup_mb: float = 0.0
    rss_end_mb: float = 0.0
    rss_growth_after_warmup_pct: float = 0.0
    error_samples: list[str] = field(default_factory=list)


def config_text(state: Path, face_base: int, players: list[FakeCompanionPlayer]) -> str:
    targets = "\n".join(f"  - {{name: {p.name}, address: 127.0.0.1, port: {p.port}}}" for p in players)
    return f"""
name: load-bridge
interfaces: [127.0.0.1]
gdm: {{enabled: false}}
mdns: {{enabled: false}}
http: {{bind: 127.0.0.1, admin_port: 0, relay_port: 0, face_port_base: {face_base}}}
security: {{relay: false}}
timeouts: {{command: 5.0}}
targets:
{targets}
state_dir: {state}
"""


def rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def free_block(n: int) -> int:
    """The first of ``n`` consecutive free TCP ports on loopback."""
    import socket

    for _ in range(200):
        base = random.randrange(20000, 60000 - n)
        socks = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port block")


async def face_ports(base: int, faces: int) -> list[int]:
    """The faces' ports (assigned from ``base`` upwards by the daemon), found by asking /resources."""
    found: list[int] = []
    async with aiohttp.ClientSession() as http:
        for port in range(base, base + faces * 3):
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(f"http://127.0.0.1:{port}/resources",
                                    timeout=aiohttp.ClientTimeout(total=1)) as resp:
                    if resp.status == 200:
                        found.append(port)
            if len(found) == faces:
                break
    return found


async def run_load(workdir: Path, *, pollers: int = 500, rate: float = 100.0, seconds: float = 60.0,
                   faces: int = 20, seed: int | None = None) -> LoadReport:
    rng = random.Random(seed)
    # The pushes are routed by the sighting ident of a configured target ("config:<name>"), not the
    # player's machineIdentifier (a reported bug); the fakes use that ident so pushes flow.
    players = [FakeCompanionPlayer(name=f"Load TV {i}", ident=f"config:Load TV {i}") for i in range(faces)]
    for p in players:
        await p.start()
    base = free_block(faces * 3)
    config = workdir / "config.yaml"
    config.write_text(config_text(workdir / "state", base, players))
    daemon = durability.Daemon(config, base, workdir / "daemon.log")
    latencies: list[float] = []
    errors: list[str] = []
    poll_errors: list[str] = []
    poll_answers = 0
    rss: list[float] = []
    stop = asyncio.Event()
    try:
        await daemon.start(timeout=30)
        ports: list[int] = []
        deadline = time.monotonic() + 30
        while len(ports) < faces and time.monotonic() < deadline:
            ports = await face_ports(base, faces)
        if len(ports) < faces:
            raise RuntimeError(f"only {len(ports)} of {faces} faces answer; see {daemon.log}")
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        async with aiohttp.ClientSession(connector=connector) as http:
            async def poller(i: int) -> None:
                nonlocal poll_answers
                port = ports[i % len(ports)]
                headers = {"X-Plex-Client-Identifier": f"load-poller-{i}", "X-Plex-Device-Name": f"Poller {i}"}
                command_id = 0
                while not stop.is_set():
                    command_id += 1
                    try:
                        async with http.get(f"http://127.0.0.1:{port}/player/timeline/poll",
                                            params={"wait": "1", "commandID": str(command_id)}, headers=headers,
                                            timeout=aiohttp.ClientTimeout(total=40)) as resp:
                            await resp.read()
                            if resp.status != 200:
                                poll_errors.append(f"poll {port}: HTTP {resp.status}")
                            else:
                                poll_answers += 1
                    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                        if not stop.is_set():
                            poll_errors.append(f"poll {port}: {type(exc).__name__}: {exc}")
                            await asyncio.sleep(0.1)  # pacing a failing poller, not synchronisation

            async def one_command(n: int) -> None:
                port = rng.choice(ports)
                name, params = rng.choice([("play", {}), ("pause", {}), ("setParameters", {"volume": str(n % 101)})])
                started = time.monotonic()
                try:
                    async with http.get(f"http://127.0.0.1:{port}/player/playback/{name}",
                                        params={**params, "commandID": str(n)},
                                        headers={"X-Plex-Client-Identifier": "load-commander"},
                                        timeout=aiohttp.ClientTimeout(total=10)) as resp:
                        await resp.read()
                        if resp.status != 200:
                            errors.append(f"{name} {port}: HTTP {resp.status}")
                            return
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    errors.append(f"{name} {port}: {type(exc).__name__}: {exc}")
                    return
                latencies.append(time.monotonic() - started)

            async def sampler() -> None:
                while not stop.is_set():
                    rss.append(rss_mb(daemon.pid))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 1.0)

            poll_tasks = [asyncio.create_task(poller(i)) for i in range(pollers)]
            sample_task = asyncio.create_task(sampler())
            command_tasks: list[asyncio.Task[None]] = []
            started = time.monotonic()
            total = int(rate * seconds)
            for n in range(total):
                due = started + n / rate
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)  # open-loop pacing of the command rate
                command_tasks.append(asyncio.create_task(one_command(n + 1)))
            await asyncio.gather(*command_tasks)
            stop.set()
            await sample_task
            for task in poll_tasks:
                task.cancel()
            await asyncio.gather(*poll_tasks, return_exceptions=True)
    finally:
        daemon.stop()
        for p in players:
            await p.stop()
    ordered = sorted(latencies) or [0.0]
    warm = rss[max(1, len(rss) // 5)] if len(rss) > 1 else (rss[0] if rss else 0.0)
    end = rss[-1] if rss else 0.0
    return LoadReport(
        pollers=pollers, rate=rate, seconds=seconds, faces=faces, commands_sent=int(rate * seconds),
        command_errors=len(errors), command_p50_ms=round(statistics.median(ordered) * 1000, 1),
        command_p99_ms=round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1),
        command_max_ms=round(ordered[-1] * 1000, 1), poll_answers=poll_answers, poll_errors=len(poll_errors),
        rss_mb=rss, rss_after_warmup_mb=warm, rss_end_mb=end,
        rss_growth_after_warmup_pct=round((end - warm) / warm * 100, 1) if warm else 0.0,
        error_samples=(errors + poll_errors)[:10])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pollers", type=int, default=500)
    parser.add_argument("--rate", type=float, default=100.0, help="commands per second")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--faces", type=int, default=20)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    if os.environ.get("COMPANION_IN_NETNS") != "1":
        print("run inside scripts/netns-run", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="load-") as tmp:
        report = asyncio.run(run_load(Path(tmp), pollers=args.pollers, rate=args.rate, seconds=args.seconds,
                                      faces=args.faces, seed=args.seed))
    print(json.dumps(asdict(report), indent=2))
    return 0 if report.command_errors == 0 and report.poll_errors == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
