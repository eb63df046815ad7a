"""GDM over real multicast between two network namespaces joined by a veth pair.

Side A (this module run as ``python -m tests.functional.test_multicast_netns --side-a ...``) is
the bridge side: a GdmResponder advertising one face and a GdmScanner printing sightings as JSON
lines. It stands in for ``python -m companion run --config ...`` until the daemon exists.
Side B is a FakeGdmPeer player, then a FakeGdmPeer controller searching.

The namespaces, the veth pair and its 10.250.x addresses exist only for the test and are deleted
at teardown; all traffic stays inside them. Needs root (the suite runs as root in scripts/netns-run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from companion.discovery.gdm import GdmResponder, GdmScanner, GdmSettings
from companion.proto.gdm import Advert

REPO = Path(__file__).resolve().parents[2]
GROUP = "239.0.0.250"
ADDR_A = "10.250.0.1"
ADDR_B = "10.250.0.2"
PLAYER_PORT, ANNOUNCE_PORT, SERVER_PORT = 41412, 41413, 41414
FACE_IDENT = "cb-netns-face-1"
WAIT = 5.0  # generous bound for subprocess start-up on a loaded machine; normally well under 1 s


# --- side A: the bridge side, run inside namespace A -------------------------------------------

def _emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


async def _side_a(args: argparse.Namespace) -> None:
    settings = GdmSettings(group=args.group, player_port=args.player_port,
                           announce_port=args.announce_port, server_port=args.server_port,
                           search_interval=args.search_interval, interfaces=tuple(args.interface))
    advert = Advert(resource_identifier=args.ident, name=args.name, port=args.face_port,
                    product="companion-bridge", version="0.1.0", capabilities=("timeline", "playback"))
    responder = GdmResponder(settings, lambda: [advert])
    scanner = GdmScanner(settings, lambda s: _emit("sighting", **dataclasses.asdict(s)),
                         lambda s: _emit("bye", **dataclasses.asdict(s)),
                         is_own=lambda ident: ident == advert.resource_identifier)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await responder.start()
    try:
        await scanner.start()
        try:
            _emit("ready")
            await stop.wait()
        finally:
            await scanner.stop()
    finally:
        await responder.stop()
    _emit("stopped")


def side_a_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.functional.test_multicast_netns --side-a")
    parser.add_argument("--side-a", action="store_true", required=True)
    parser.add_argument("--group", default=GROUP)
    parser.add_argument("--player-port", type=int, default=PLAYER_PORT)
    parser.add_argument("--announce-port", type=int, default=ANNOUNCE_PORT)
    parser.add_argument("--server-port", type=int, default=SERVER_PORT)
    parser.add_argument("--search-interval", type=float, default=0.25)
    parser.add_argument("--interface", action="append", default=[])
    parser.add_argument("--ident", default=FACE_IDENT)
    parser.add_argument("--name", default="Netns Face")
    parser.add_argument("--face-port", type=int, default=32500)
    asyncio.run(_side_a(parser.parse_args(argv)))


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
    ports = ["--player-port", str(PLAYER_PORT), "--announce-port", str(ANNOUNCE_PORT),
             "--server-port", str(SERVER_PORT)]
    player_args = ["--player", "--bind", f"0.0.0.0:{PLAYER_PORT}", "--group", GROUP,
                   "--interface", ADDR_B, "--ident", "netns-player-1", "--name", "Netns TV", "--port", "8123"]
    async with run_in(ns_b, "tests.fakes.gdm_peer", *player_args, stderr=tmp_path / "player.err") as player:
        await player.wait_for(lambda e: e["event"] == "ready", "fake player ready")
        async with run_in(ns_a, "tests.functional.test_multicast_netns", "--side-a", *ports,
                          "--interface", ADDR_A, stderr=tmp_path / "bridge.err") as bridge:
            sighting = await bridge.wait_for(
                lambda e: e["event"] == "sighting" and e["ident"] == "netns-player-1",
                "bridge side discovering the player in the other namespace")
            assert (sighting["kind"], sighting["name"]) == ("companion", "Netns TV")
            assert (sighting["address"], sighting["port"]) == (ADDR_B, 8123)
            assert sighting["interface"] == ADDR_A

            controller_args = ["--search", f"{GROUP}:{PLAYER_PORT}", "--bind", f"{ADDR_B}:0",
                               "--interface", ADDR_B, "--timeout", str(WAIT), "--expect", "2"]
            async with run_in(ns_b, "tests.fakes.gdm_peer", *controller_args,
                              stderr=tmp_path / "controller.err") as controller:
                reply = await controller.wait_for(
                    lambda e: e["event"] == "reply"
                    and e.get("headers", {}).get("Resource-Identifier") == FACE_IDENT,
                    "a controller in the player's namespace finding the bridge's face")
            assert reply["from"] == [ADDR_A, PLAYER_PORT]
            assert reply["headers"]["Name"] == "Netns Face"
            assert reply["headers"]["Port"] == "32500"
        assert not [e for e in bridge.events if e["event"] == "sighting" and e["ident"] == FACE_IDENT], \
            "the bridge must not list its own face as a player"


if __name__ == "__main__":
    side_a_main(sys.argv[1:])
