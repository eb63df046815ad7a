"""The daemon as systemd runs it: sd_notify READY/WATCHDOG/STOPPING, SIGTERM within 5 s, SIGHUP reload."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.fakes.companion_player import FakeCompanionPlayer
from tests.helpers import free_port_block, until


def _config(tmp_path: Path, player: FakeCompanionPlayer, face_base: int, policy: str = "preferred") -> Path:
    gdm = free_port_block(3)
    path = tmp_path / "config.yaml"
    path.write_text(f"""
interfaces: [127.0.0.1]
gdm: {{player_port: {gdm}, announce_port: {gdm + 1}, server_port: {gdm + 2}}}
mdns: {{enabled: false}}
http: {{bind: 127.0.0.1, admin_port: 0, relay_port: 0, face_port_base: {face_base}}}
security: {{policy: {policy}}}
targets:
  - {{name: Den TV, address: 127.0.0.1, port: {player.port}}}
state_dir: {tmp_path / "state"}
""")
    return path


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.messages

    def seen(self, prefix: str) -> bool:
        return any(line.startswith(prefix) for m in self.drain() for line in m.splitlines())

    def order(self) -> list[str]:
        return [line.split("=")[0] for m in self.drain() for line in m.splitlines()]


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.sock.close()


@pytest.fixture
async def player() -> AsyncIterator[FakeCompanionPlayer]:
    fake = FakeCompanionPlayer(name="Den TV")
    await fake.start()
    yield fake
    await fake.stop()


async def _daemon(config: Path, notify: NotifySocket, stderr: Path) -> asyncio.subprocess.Process:
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "200000",
           "WATCHDOG_PID": "", "COMPANION_CONFIG": ""}
    env.pop("WATCHDOG_PID")
    with stderr.open("wb") as err:
        return await asyncio.create_subprocess_exec(sys.executable, "-m", "companion", "run", "--config",
                                                    str(config), env=env, stderr=err)


@contextlib.asynccontextmanager
async def _ready_daemon(tmp_path: Path, player: FakeCompanionPlayer, notify: NotifySocket,
                        base: int) -> AsyncIterator[asyncio.subprocess.Process]:
    """``companion run`` once it has said READY=1; killed afterwards if the test did not stop it."""
    proc = await _daemon(_config(tmp_path, player, base), notify, tmp_path / "daemon.err")
    try:
        await until(lambda: notify.seen("READY=1"), timeout=10, message="READY=1 once listeners are up")
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_notify_ready_watchdog_then_stopping_and_sigterm_stops_within_5s(
        tmp_path: Path, player: FakeCompanionPlayer, notify: NotifySocket) -> None:
    base = free_port_block(4)
    async with _ready_daemon(tmp_path, player, notify, base) as proc:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{base}/resources") as resp:
            assert resp.status == 200, "the face is listening when READY=1 arrives"
        await until(lambda: notify.order().count("WATCHDOG") >= 2, timeout=3, message="watchdog pings")
        assert notify.seen("STATUS=1 face(s)")
        loop = asyncio.get_running_loop()
        started = loop.time()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 5)
        assert loop.time() - started < 5
        assert code == 0
    order = [m for m in notify.order() if m in ("READY", "WATCHDOG", "STOPPING")]
    assert order[0] == "READY"
    assert order[-1] == "STOPPING"
    assert "WATCHDOG" in order[1:-1]
    assert player.state.subscribers == {}, "the bridge unsubscribed from the player on the way out"


async def test_the_running_daemon_loads_no_cpp_runtime(
        tmp_path: Path, player: FakeCompanionPlayer, notify: NotifySocket) -> None:
    # frozenlist's compiled build is C++ and would map libstdc++ (1 MB resident, bench/memory.py);
    # `companion run` has it use its pure-Python build (companion.tuning.pure_python_frozenlist).
    async with _ready_daemon(tmp_path, player, notify, free_port_block(4)) as proc:
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert "aiohttp" in maps, "the daemon has loaded aiohttp's compiled parts by READY=1"
        assert "libstdc++" not in maps and "_frozenlist" not in maps
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 5) == 0


async def test_sighup_reloads_the_config_without_dropping_faces(
        tmp_path: Path, player: FakeCompanionPlayer, notify: NotifySocket) -> None:
    base = free_port_block(4)
    config = _config(tmp_path, player, base)
    proc = await _daemon(config, notify, tmp_path / "daemon.err")
    try:
        await until(lambda: notify.seen("READY=1"), timeout=10, message="READY=1")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{base}/player/timeline/subscribe",
                                params={"protocol": "http", "port": "9", "commandID": "1"},
                                headers={"X-Plex-Client-Identifier": "phone-1", "X-Plex-Device-Name": "P"}) as r:
                assert r.status == 200
            _config(tmp_path, player, base, policy="required")
            proc.send_signal(signal.SIGHUP)
            await until(lambda: notify.seen("RELOADING=1"), timeout=5, message="RELOADING=1")
            await until(lambda: "reloaded configuration" in (tmp_path / "daemon.err").read_text(), timeout=5,
                        message="the reload is logged")
            async with http.get(f"http://127.0.0.1:{base}/resources") as resp:
                assert resp.status == 200, "the face survived the reload"
        assert proc.returncode is None
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 5)
