"""Durability check: flings while the daemon is SIGKILLed at a random moment; nothing answered is lost.

    scripts/netns-run .venv/bin/python scripts/durability.py --flings 1000

Runs ``python -m companion run`` as a subprocess with one face, sends playMedia requests that name
an unknown server (each is refused *and recorded in the audit log* before its 403 is sent: the
fastest answered fling there is), kills the daemon with SIGKILL after a random number of answers,
restarts it, finishes the count, then checks that the audit database passes ``integrity_check``
and holds every fling whose answer was received. Prints one JSON report.

The module is also imported by tests/hardening (``Daemon``, ``run_durability``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def daemon_config(state_dir: Path, face_port: int, target_port: int) -> str:
    """One configured Companion target, nothing on multicast, no relay: a fast, quiet daemon."""
    return f"""
name: durability-bridge
interfaces: [127.0.0.1]
gdm: {{enabled: false}}
mdns: {{enabled: false}}
http: {{bind: 127.0.0.1, admin_port: 0, relay_port: 0, face_port_base: {face_port}}}
security: {{relay: false}}
timeouts: {{command: 1.0}}
targets:
  - {{name: Durable TV, address: 127.0.0.1, port: {target_port}}}
state_dir: {state_dir}
"""


class Daemon:
    """``python -m companion run`` in a subprocess (optionally wrapped, e.g. by ``unshare -m``)."""

    def __init__(self, config: Path, face_port: int, log: Path, wrapper: list[str] | None = None) -> None:
        self.config = config
        self.face_port = face_port
        self.log = log
        self.wrapper = wrapper or []
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self, timeout: float = 15.0) -> None:
        with self.log.open("ab") as log:
            # Popen returns at once (readiness is polled below); nothing here blocks the loop.
            self.proc = subprocess.Popen(  # noqa: ASYNC220
                [*self.wrapper, sys.executable, "-m", "companion", "--log-level", "debug", "run",
                 "--config", str(self.config)], cwd=ROOT, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"daemon exited with {self.proc.returncode}; see {self.log}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with http.get(f"http://127.0.0.1:{self.face_port}/resources") as resp:
                        if resp.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"daemon not answering after {timeout} s; see {self.log}")
                await asyncio.sleep(0.05)  # polling a subprocess's readiness

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


async def fling(http: aiohttp.ClientSession, face_port: int, n: int, address: str = "10.99.0.1") -> int:
    """One playMedia to an unknown server (refused and audited); returns the HTTP status."""
    params = {"key": f"/library/metadata/{n}", "address": address, "port": "32400", "protocol": "http",
              "machineIdentifier": "x", "commandID": str(n)}
    async with http.get(f"http://127.0.0.1:{face_port}/player/playback/playMedia", params=params,
                        headers={"X-Plex-Client-Identifier": "durability"},
                        timeout=aiohttp.ClientTimeout(total=10)) as resp:
        await resp.read()
        return resp.status


@dataclass
class Report:
    flings: int
    answered: int
    killed_after_answers: int
    in_flight_at_kill: int
    recorded: int
    answered_but_missing: int
    recorded_without_answer: int
    integrity: str
    seconds: float


async def _flings_until(daemon: Daemon, numbers: list[int], answered: set[int], stop_after: int | None,
                        concurrency: int) -> int:
    """Send ``numbers`` with ``concurrency`` workers; SIGKILL once ``stop_after`` answers came.
    Returns how many requests were in flight when the daemon was killed."""
    queue = list(reversed(numbers))
    killed = asyncio.Event()
    in_flight: set[int] = set()
    at_kill = 0

    async def worker(http: aiohttp.ClientSession) -> None:
        nonlocal at_kill
        while queue and not killed.is_set():
            n = queue.pop()
            in_flight.add(n)
            try:
                status = await fling(http, daemon.face_port, n)
            except (aiohttp.ClientError, OSError, TimeoutError):
                continue  # no answer: the daemon died under it
            finally:
                in_flight.discard(n)
            if status == 403 and not killed.is_set():
                answered.add(n)
                if stop_after is not None and len(answered) >= stop_after:
                    at_kill = len(in_flight)
                    killed.set()
                    daemon.kill()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    return at_kill


async def run_durability(workdir: Path, count: int, *, seed: int | None = None, concurrency: int = 8) -> Report:
    rng = random.Random(seed)
    started = time.monotonic()
    state = workdir / "state"
    face_port = free_port()
    config = workdir / "config.yaml"
    config.write_text(daemon_config(state, face_port, free_port()))
    daemon = Daemon(config, face_port, workdir / "daemon.log")
    answered: set[int] = set()
    kill_at = rng.randrange(count // 5, count * 4 // 5)
    await daemon.start()
    try:
        in_flight = await _flings_until(daemon, list(range(count)), answered, kill_at, concurrency)
        await daemon.start()  # the restart opens the audit database left by the killed process
        rest = list(range(count, count * 2))[: count - len(answered)]
        await _flings_until(daemon, rest, answered, None, concurrency)
    finally:
        daemon.stop()
    db = sqlite3.connect(state / "audit.sqlite3")
    try:
        integrity = str(db.execute("PRAGMA integrity_check").fetchone()[0])
        keys = {row[0] for row in db.execute("SELECT media_key FROM flings")}
    finally:
        db.close()
    recorded = {int(k.rsplit("/", 1)[1]) for k in keys}
    return Report(flings=count, answered=len(answered), killed_after_answers=kill_at, in_flight_at_kill=in_flight,
                  recorded=len(recorded), answered_but_missing=len(answered - recorded),
                  recorded_without_answer=len(recorded - answered), integrity=integrity,
                  seconds=round(time.monotonic() - started, 2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flings", type=int, default=1000, help="answered flings to reach (default 1000)")
    parser.add_argument("--seed", type=int, default=None, help="random seed for the kill moment")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep state and the daemon log here")
    args = parser.parse_args(argv)
    if os.environ.get("COMPANION_IN_NETNS") != "1":
        print("run inside scripts/netns-run", file=sys.stderr)
        return 2
    import tempfile

    with tempfile.TemporaryDirectory(prefix="durability-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        report = asyncio.run(run_durability(workdir, args.flings, seed=args.seed, concurrency=args.concurrency))
    print(json.dumps(asdict(report), indent=2))
    return 0 if report.answered_but_missing == 0 and report.integrity == "ok" else 1


if __name__ == "__main__":
    raise SystemExit(main())
