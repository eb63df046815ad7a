"""The walking bridge end to end: a player found by GDM gets a face; python-plexapi controls it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from plexapi.client import PlexClient

from companion.bridge import Bridge
from companion.config import Config
from companion.proto.gdm import face_identifier
from companion.proto.timeline import parse_player_timeline
from tests.fakes.companion_player import FakeCompanionPlayer
from tests.fakes.controller import FakeController
from tests.fakes.gdm_peer import FakeGdmPeer, UseCase
from tests.helpers import bridge_config, until


async def _face_port(bridge: Bridge, player: FakeCompanionPlayer) -> int:
    await until(lambda: len(bridge.faces) == 1, timeout=3, message="the bridge opened a face for the GDM player")
    (slot,) = bridge.faces.values()
    assert slot.target.ident == player.ident
    return slot.face.port


async def test_gdm_player_gets_a_face_that_answers_searches(
        bridge: Bridge, player: FakeCompanionPlayer, player_gdm: FakeGdmPeer) -> None:
    port = await _face_port(bridge, player)
    (slot,) = bridge.faces.values()
    assert slot.face.identity.name == "Living Room TV (bridge)"
    assert slot.face.identity.machine_identifier == face_identifier(slot.target.id) != player.ident
    controller_side = FakeGdmPeer("player", bind=("127.0.0.1", 0))
    replies = await controller_side.search(("239.0.0.250", bridge.config.gdm.player_port), timeout=1.0, expect=2)
    faces = [m for m in replies if m.get("Resource-Identifier") == slot.face.identity.machine_identifier]
    assert faces and faces[0].get("Port") == str(port)
    assert faces[0].get("Name") == "Living Room TV (bridge)"


async def test_python_plexapi_controls_the_player_through_the_face(
        bridge: Bridge, player: FakeCompanionPlayer, player_gdm: FakeGdmPeer) -> None:
    port = await _face_port(bridge, player)
    client = await asyncio.to_thread(PlexClient, baseurl=f"http://127.0.0.1:{port}", timeout=5)
    assert client.title == "Living Room TV (bridge)"
    assert "playback" in client.protocolCapabilities
    await asyncio.to_thread(client.pause)
    await asyncio.to_thread(client.play)
    await asyncio.to_thread(client.seekTo, 61000)
    await asyncio.to_thread(client.setVolume, 40)
    await asyncio.to_thread(client.skipNext)
    names = [c.name for c in player.state.commands if c.path.startswith("/player/playback/")]
    assert names == ["pause", "play", "seekTo", "setParameters", "skipNext"]
    assert player.received("seekTo")[0].params["offset"] == "61000"
    assert player.received("setParameters")[0].params["volume"] == "40"
    assert player.received("pause")[0].params["type"] == "video"


async def test_player_state_reaches_subscribers_and_long_polls_within_a_second(
        bridge: Bridge, player: FakeCompanionPlayer, player_gdm: FakeGdmPeer) -> None:
    port = await _face_port(bridge, player)
    base = f"http://127.0.0.1:{port}"
    await until(lambda: len(player.state.subscribers) == 1, message="the bridge follows the player's timeline")
    async with FakeController() as phone, FakeController(client_id="phone-2", name="Tablet") as tablet:
        reply = await phone.subscribe(base)
        assert reply.status == 200
        await phone.wait_for(lambda p: True, timeout=1.0)
        await tablet.poll(base)  # a first poll, as Plex apps do, then a waiting one
        waiting = asyncio.ensure_future(tablet.poll(base, wait=True, timeout=5))
        await until(lambda: bridge.faces and next(iter(bridge.faces.values())).face.long_poll_count >= 1,
                    message="the long-poll is held")
        loop = asyncio.get_running_loop()
        started = loop.time()
        await player.set_playback(state="playing", time=12000, duration=300000, key="/library/metadata/7")
        push = await phone.wait_for(lambda p: p.state.active is not None and p.state.active.state == "playing",
                                    timeout=1.0)
        polled = await asyncio.wait_for(waiting, 1.0)
        assert loop.time() - started < 1.0
        assert push.state.active is not None and push.state.active.key == "/library/metadata/7"
        assert push.command_id == phone.command_id
        state = parse_player_timeline(polled.body)
        assert state.active is not None and state.active.state == "playing"
        assert len(state.entries) == 3


async def test_unreachable_player_gives_the_controller_an_error_and_the_bridge_carries_on(
        bridge: Bridge, player: FakeCompanionPlayer, player_gdm: FakeGdmPeer) -> None:
    port = await _face_port(bridge, player)
    base = f"http://127.0.0.1:{port}"
    player.use_cases.delay = 3
    async with FakeController() as phone:
        started = asyncio.get_running_loop().time()
        reply = await phone.request(base, "/player/playback/pause")
        assert reply.status == 504
        assert b"did not answer" in reply.body
        assert asyncio.get_running_loop().time() - started < 2.5
        player.use_cases.delay = 0
        reply = await phone.request(base, "/player/playback/play")
        assert reply.status == 200


async def test_face_keeps_its_port_across_restarts(
        config: Config, player: FakeCompanionPlayer, player_gdm: FakeGdmPeer) -> None:
    async with Bridge(config) as first:
        port = await _face_port(first, player)
        ident = next(iter(first.faces.values())).face.identity.machine_identifier
    async with Bridge(config) as second:
        assert await _face_port(second, player) == port
        assert next(iter(second.faces.values())).face.identity.machine_identifier == ident


async def test_faces_are_announced_with_hello_and_bye(
        config: Config, player: FakeCompanionPlayer, player_gdm: FakeGdmPeer) -> None:
    listener = FakeGdmPeer("server", bind=("0.0.0.0", config.gdm.announce_port), group=config.gdm.group,
                           interface="127.0.0.1", use_case=UseCase.SILENT)
    async with listener:
        async with Bridge(config) as bridge:
            await _face_port(bridge, player)
            face_id = next(iter(bridge.faces.values())).face.identity.machine_identifier
            await listener.wait_for(lambda got: got.message is not None and got.message.kind == "hello"
                                    and got.message.get("Resource-Identifier") == face_id)
        await listener.wait_for(lambda got: got.message is not None and got.message.kind == "bye"
                                and got.message.get("Resource-Identifier") == face_id)


async def test_silent_target_goes_away_with_its_face(
        tmp_path: Path, player: FakeCompanionPlayer) -> None:
    config = bridge_config(tmp_path, timeouts={"command": 1.0, "target_expiry": 1.0})
    peer = FakeGdmPeer("player", headers={"Resource-Identifier": player.ident, "Name": player.name,
                                          "Port": str(player.port)},
                       bind=("0.0.0.0", config.gdm.player_port), group=config.gdm.group, interface="127.0.0.1")
    async with peer, Bridge(config) as bridge:
        port = await _face_port(bridge, player)
        peer.use_case = UseCase.SILENT  # the TV is switched off: it stops answering searches
        await until(lambda: not bridge.faces, timeout=4, message="the face of a silent target closes")
        async with FakeController() as phone:
            with pytest.raises(aiohttp.ClientConnectionError):
                await phone.request(f"http://127.0.0.1:{port}", "/resources", timeout=1)
