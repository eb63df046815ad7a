"""Faults: a target that refuses, one that never answers, one that answers garbage, a Chromecast that
drops mid-LOAD, a server whose certificate changes under the relay, a LAN resolver that is down.
Each gives the controller a clear error in bounded time, the daemon keeps serving, and it recovers
on its own once the fault ends. (The full-disk audit fault is in test_durability.py: it needs a
tmpfs in a private mount namespace, so it runs the daemon as a subprocess.)"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from companion.errors import TargetError
from companion.model import Command, Controller, MediaRequest, Target, TargetKind
from companion.targets.chromecast.adapter import ChromecastTarget
from tests.fakes.cast_device import FakeCastDevice
from tests.fakes.companion_player import FakeCompanionPlayer
from tests.fakes.plex_server import FakePlexServer, make_plex_chain
from tests.hardening.conftest import TOKEN, face_port, running_bridge
from tests.helpers import until
from tests.lab import write_test_profiles

COMMAND_TIMEOUT = 1.0
BOUND = COMMAND_TIMEOUT + 1.5  # the longest a controller may wait for an answer


class Misbehaving:
    """A TCP port that, per ``mode``, never answers ("silent") or answers bytes that are not HTTP."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.port = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        if self.mode == "garbage":
            with contextlib.suppress(ConnectionError):
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\x00\x01\x02 this is not HTTP at all\r\n\r\n")
                await writer.drain()
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()
        for writer in self._writers:
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
        if self._server is not None:
            await self._server.wait_closed()


async def command(port: int, name: str = "pause") -> tuple[int, str, float]:
    started = time.monotonic()
    async with aiohttp.ClientSession() as http, http.get(
            f"http://127.0.0.1:{port}/player/playback/{name}", params={"commandID": "1"},
            headers={"X-Plex-Client-Identifier": "fault-phone"},
            timeout=aiohttp.ClientTimeout(total=10)) as resp:
        return resp.status, await resp.text(), time.monotonic() - started


async def resources_ok(port: int) -> bool:
    async with aiohttp.ClientSession() as http, http.get(
            f"http://127.0.0.1:{port}/resources", timeout=aiohttp.ClientTimeout(total=1)) as resp:
        return resp.status == 200


def one_target(port: int) -> str:
    return f"targets:\n  - {{name: Fault TV, address: 127.0.0.1, port: {port}}}\n"


@pytest.mark.parametrize("fault", ["refused", "silent", "garbage"])
async def test_a_broken_target_gives_a_clear_error_in_bounded_time_and_recovery_is_automatic(
        tmp_path: Path, fault: str) -> None:
    bad = Misbehaving(fault)
    await bad.start()
    port = bad.port
    if fault == "refused":
        await bad.stop()  # nothing listens on the port any more
    player = FakeCompanionPlayer(name="Fault TV")
    try:
        async with running_bridge(tmp_path, one_target(port), timeouts={"command": COMMAND_TIMEOUT}) as bridge:
            fp = face_port(bridge)
            for _ in range(3):
                status, body, took = await command(fp)
                assert status in (502, 504), body
                assert took < BOUND, f"{fault}: the controller waited {took:.2f} s"
                assert "Fault TV" in body, "the error names the player"
                assert await resources_ok(fp), "the face keeps answering"
            if fault == "silent":
                assert status == 504
            await bad.stop()
            await player.start(port)  # the fault ends: a working player on the same address
            await until(lambda: True)
            status, body, took = await command(fp)
            assert (status, took < BOUND) == (200, True), body
            assert player.received("pause")
    finally:
        await player.stop()
        await bad.stop()


async def _garbage_then_good(tmp_path: Path, player: FakeCompanionPlayer) -> None:
    await player.start()
    try:
        async with running_bridge(tmp_path, one_target(player.port)) as bridge:
            fp = face_port(bridge)
            face = next(iter(bridge.faces.values())).face
            await until(lambda: bool(player.state.subscribers), timeout=3, message="the bridge subscribed")
            status, body, _ = await command(fp, "play")
            assert status == 200, body
            player.use_cases.garbage_timeline = True
            await player.set_playback(state="paused")  # pushes the garbage timeline
            assert await resources_ok(fp)
            player.use_cases.garbage_timeline = False
            await player.set_playback(state="playing", key="/library/metadata/9", duration=1000)
            await until(lambda: any(e.state == "playing" for e in face.state.entries.values()), timeout=3,
                        message="the good timeline after the garbage one reaches the face")
    finally:
        await player.stop()


async def test_a_target_sending_garbage_timelines_does_not_break_its_face(tmp_path: Path) -> None:
    # The ident is set to what the bridge expects of a configured target (see the next test).
    await _garbage_then_good(tmp_path, FakeCompanionPlayer(name="Fault TV", ident="config:Fault TV"))


async def test_a_configured_players_timeline_pushes_reach_its_face(tmp_path: Path) -> None:
    # A configured Companion target is registered with the timeline listener under the sighting
    # ident "config:<name>", but the player pushes with its own machineIdentifier: the listener
    # answers 404 and the face never sees the player's state. The same ident is sent to the player
    # as X-Plex-Target-Client-Identifier.
    await _garbage_then_good(tmp_path, FakeCompanionPlayer(name="Fault TV"))


class DroppingCast(FakeCastDevice):
    """A Chromecast that cuts every connection the moment a LOAD arrives, while ``dropping``."""

    dropping = True

    def _media(self, namespace: str, data: dict[str, Any], reply: Any) -> None:
        if self.dropping and data.get("type") == "LOAD":
            for conn in list(self._conns):
                conn.writer.transport.abort()
            return
        super()._media(namespace, data, reply)


def _cast_request() -> MediaRequest:
    return MediaRequest(key="/library/metadata/42", protocol="https", port=32400, token=TOKEN,
                        address="10-0-0-5.0123456789abcdef0123456789abcdef.plex.direct",
                        machine_identifier="server-abc", container_key="/playQueues/7?own=1")


@pytest.fixture
async def dropping_cast() -> AsyncIterator[DroppingCast]:
    dev = DroppingCast()
    await dev.start()
    yield dev
    await dev.stop()


async def test_a_chromecast_that_drops_mid_load_gives_a_clear_error_and_the_next_load_works(
        dropping_cast: DroppingCast) -> None:
    target = Target(id="cast-drop", kind=TargetKind.CHROMECAST, name="Dropping Cast", address="127.0.0.1",
                    port=dropping_cast.port, source="mdns", ident=dropping_cast.cast_id, model=dropping_cast.model)
    availability: list[bool] = []
    adapter = ChromecastTarget(target, zeroconf=None, on_state=lambda _s: None, on_available=availability.append,
                               command_timeout=COMMAND_TIMEOUT, connect_retries=2, retry_wait=0.05)
    cmd = Command(group="playback", name="playMedia", controller=Controller(client_id="c"))
    await adapter.start()
    try:
        await until(lambda: adapter.available, timeout=5, message="connected to the cast device")
        started = time.monotonic()
        with pytest.raises(TargetError) as info:
            await adapter.play_media(_cast_request(), cmd)
        assert time.monotonic() - started < BOUND + 2.0
        assert TOKEN not in str(info.value)
        dropping_cast.dropping = False  # the device behaves again
        await until(lambda: adapter.available, timeout=10, message="reconnected after the drop")
        await adapter.play_media(_cast_request(), cmd)
        assert dropping_cast.state.loads, "the second LOAD arrived"
    finally:
        await adapter.stop()


def drop_server_connections(server: FakePlexServer) -> None:
    """Close the fake server's kept-alive connections (as a restarted PMS would)."""
    runner = server._runner
    assert runner is not None and runner.server is not None
    for handler in list(runner.server.connections):
        handler.force_close()


async def test_the_relay_refuses_a_server_whose_certificate_changed_and_recovers_when_it_changes_back(
        tmp_path: Path, server: FakePlexServer) -> None:
    root_pem = tmp_path / "root.pem"
    root_pem.write_bytes(server.root_pem)
    extra = f"security: {{relay: true, extra_roots: [\"{root_pem}\"]}}\n"
    async with running_bridge(tmp_path, extra, faces=0) as bridge:
        assert bridge.relay is not None
        grant = bridge.relay.grant(target_address="127.0.0.1", server_id="s", upstream_host=server.plex_direct_name(),
                                   upstream_address="127.0.0.1", upstream_port=server.port, token=TOKEN)
        url = f"http://127.0.0.1:{bridge.relay.port}/{grant.capability}/library/metadata/501"
        async with aiohttp.ClientSession() as http:
            async def fetch() -> tuple[int, str, float]:
                started = time.monotonic()
                async with http.get(url, timeout=aiohttp.ClientTimeout(total=15)) as resp:
                    return resp.status, await resp.text(), time.monotonic() - started

            assert (await fetch())[0] == 200
            good = server.chain
            server.rotate_certificate(make_plex_chain(server_hash=server.hash))  # signed by an unknown root
            drop_server_connections(server)  # the next request needs a new handshake
            status, body, took = await fetch()
            assert status == 502, body
            assert took < 10, "bounded even with the AIA fetch attempts"
            assert TOKEN not in body and body.strip(), "a clear reason, no token"
            server.rotate_certificate(good)
            drop_server_connections(server)
            status, body, _ = await fetch()
            assert status == 200, body


async def test_a_lan_resolver_that_is_down_still_gives_a_decision_in_bounded_time(
        tmp_path: Path, server: FakePlexServer) -> None:
    closed = Misbehaving("silent")  # bound then closed: nothing answers UDP on it
    await closed.start()
    await closed.stop()
    player = FakeCompanionPlayer(name="Resolver TV")
    await player.start()
    write_test_profiles(tmp_path / "profiles", server)
    lan = (tmp_path / "profiles" / "devices" / "lab-secure-tv.yaml")
    lan.write_text(lan.read_text().replace("dns: {resolver: public}", "dns: {resolver: lan}"))
    extra = f"""
servers:
  - {{url: "https://127.0.0.1:{server.port}", token: "{TOKEN}"}}
targets:
  - {{name: Resolver TV, address: 127.0.0.1, port: {player.port}, profile: lab-secure-tv}}
profiles_dirs: [{tmp_path / "profiles"}]
security: {{policy: preferred, relay: false, dns_check: true, resolver: "127.0.0.1:{closed.port}"}}
"""
    try:
        async with running_bridge(tmp_path, extra) as bridge:
            started = time.monotonic()
            async with aiohttp.ClientSession() as http, http.get(
                    f"http://127.0.0.1:{face_port(bridge)}/player/playback/playMedia",
                    params={"key": "/library/metadata/501", "address": "127.0.0.1", "port": str(server.port),
                            "protocol": "https", "machineIdentifier": "", "token": TOKEN}) as resp:
                status = resp.status
            took = time.monotonic() - started
            records = bridge.audit.recent(1)
            assert await resources_ok(face_port(bridge))
    finally:
        await player.stop()
    assert status in (200, 403)
    assert took < 5.0, f"the fling waited {took:.2f} s on a dead resolver"
    assert records and any("dns" in code for code, _ in records[0].reasons), records[0].reasons if records else None
