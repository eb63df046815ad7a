"""GDM over real multicast between two network namespaces joined by a veth pair.

Side A runs the real daemon (``python -m companion run --config ...``) on the default group.
Side B is a FakeGdmPeer player, then a FakeGdmPeer controller searching: the face the daemon opened
for the player (proof that it discovered it) must be found from the player's side.

The namespaces, the veth pair and its 10.250.x addresses exist only for the test and are deleted
at teardown; all traffic stays inside them. Needs root (the suite runs as root in scripts/netns-run).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
GROUP = "239.0.0.250"
ADDR_A = "10.250.0.1"
ADDR_B = "10.250.0.2"
PLAYER_PORT, ANNOUNCE_PORT, SERVER_PORT = 41412, 41413, 41414
FACE_PORT = 42500
WAIT = 5.0  # generous bound for subprocess start-up on a loaded machine; normally well under 1 s


# --- the test --------------------------------------------------------------------------------------

def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    tag = uuid.uuid4().hex[:8]
    ns_a, ns_b = f"cbt-gdm-a-{tag}", f"cbt-gdm-b-{tag}"
    created: list[str] = []
    try:
        for ns in (ns_a, ns_b):
            _ip("netns", "add", ns)
            created.append(ns)
        _ip("-n", ns_a, "link", "add", "gdm0", "type", "veth", "peer", "name", "gdm0", "netns", ns_b)
        for ns, address in ((ns_a, ADDR_A), (ns_b, ADDR_B)):
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "gdm0")
            _ip("-n", ns, "link", "set", "gdm0", "up")
            _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", "gdm0")
        yield ns_a, ns_b
    finally:
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True, timeout=10)


class Child:
    """A Python module running in a namespace, read as JSON lines with bounded waits."""

    def __init__(self, proc: asyncio.subprocess.Process, stderr: Path) -> None:
        self.proc = proc
        self.stderr = stderr
        self.events: list[dict[str, Any]] = []

    async def wait_for(self, pred: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        for event in self.events:
            if pred(event):
                return event
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(WAIT):
                while True:
                    line = await self.proc.stdout.readline()
                    if not line:
                        break
                    event = json.loads(line)
                    self.events.append(event)
                    if pred(event):
                        return event
        except TimeoutError:
            pass
        pytest.fail(f"{what}: not seen within {WAIT}s; got {self.events}; stderr: {self.stderr.read_text()}")


@contextlib.asynccontextmanager
async def run_in(ns: str, module: str, *args: str, stderr: Path) -> AsyncIterator[Child]:
    with stderr.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", ns, sys.executable, "-m", module, *args,
            cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=err,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        yield Child(proc, stderr)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(WAIT):
                    await proc.communicate()
            except TimeoutError:
                proc.kill()
                await proc.wait()


@pytest.mark.netns
async def test_bridge_and_player_in_separate_namespaces_find_each_other_over_multicast(namespaces, tmp_path):
    ns_a, ns_b = namespaces
    config = tmp_path / "bridge.yaml"
    config.write_text(f"""
interfaces: [{ADDR_A}]
gdm: {{group: {GROUP}, player_port: {PLAYER_PORT}, announce_port: {ANNOUNCE_PORT}, server_port: {SERVER_PORT},
       search_interval: 0.5}}
mdns: {{enabled: false}}
http: {{admin_port: 0, relay_port: 0, face_port_base: {FACE_PORT}}}
state_dir: {tmp_path / "state"}
""")
    player_args = ["--player", "--bind", f"0.0.0.0:{PLAYER_PORT}", "--group", GROUP,
                   "--interface", ADDR_B, "--ident", "netns-player-1", "--name", "Netns TV", "--port", "8123"]
    async with run_in(ns_b, "tests.fakes.gdm_peer", *player_args, stderr=tmp_path / "player.err") as player:
        await player.wait_for(lambda e: e["event"] == "ready", "fake player ready")
        async with run_in(ns_a, "companion", "--log-level", "debug", "run", "--config", str(config),
                          stderr=tmp_path / "bridge.err") as bridge:
            controller_args = ["--search", f"{GROUP}:{PLAYER_PORT}", "--bind", f"{ADDR_B}:0",
                               "--interface", ADDR_B, "--timeout", "0.5", "--expect", "2"]
            reply: dict[str, Any] | None = None
            for _ in range(int(WAIT / 0.5)):  # bounded: searches until the face exists, at most WAIT s
                async with run_in(ns_b, "tests.fakes.gdm_peer", *controller_args,
                                  stderr=tmp_path / "controller.err") as controller:
                    await controller.proc.wait()
                    assert controller.proc.stdout is not None
                    for line in (await controller.proc.stdout.read()).splitlines():
                        event = json.loads(line)
                        if event["event"] == "reply" and event["headers"].get("Name") == "Netns TV (bridge)":
                            reply = event
                if reply is not None:
                    break
            assert reply is not None, f"no face for the player; bridge log: {(tmp_path / 'bridge.err').read_text()}"
            assert reply["from"] == [ADDR_A, PLAYER_PORT]
            assert reply["headers"]["Port"] == str(FACE_PORT)
            assert reply["headers"]["Resource-Identifier"] != "netns-player-1"
            log = (tmp_path / "bridge.err").read_text()
            assert "for Netns TV (10.250.0.2:8123) listening on port" in log
            assert bridge.proc.returncode is None, "the daemon is still running"
