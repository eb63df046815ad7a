"""Several bridges on one LAN (two Bridge objects in one process, and fake rival faces speaking real
GDM): never a face of a face, and one face per real target, kept by the bridge that ranks first,
taken over when it goes."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from companion.bridge import Bridge
from companion.config import Config
from companion.election import outranks
from companion.model import stable_id
from companion.proto.gdm import GdmMessage, face_identifier
from tests.fakes.companion_player import FakeCompanionPlayer
from tests.fakes.gdm_peer import FakeGdmPeer
from tests.helpers import bridge_config, free_port_block, until

GROUP = "239.0.0.250"


def _twin(config: Config, tmp_path: Path, name: str) -> Config:
    """A second bridge on the same GDM group and ports, with its own state and face ports."""
    return dataclasses.replace(config, name=name, state_dir=str(tmp_path / name),
                               http=dataclasses.replace(config.http, face_port_base=free_port_block(8)))


def _with_id(config: Config, bridge_id: str) -> Config:
    state = Path(config.state_dir)
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    (state / "identity").write_text(bridge_id + "\n")
    return config


def _ranked(target_id: str) -> tuple[str, str]:
    """Two fresh bridge ids, the one that ranks first for ``target_id`` first."""
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    return (a, b) if outranks(a, b, target_id) else (b, a)


def _announced(bridge: Bridge) -> list[str]:
    return [tid for tid, slot in bridge.faces.items() if slot.announced]


async def _faces_on_the_lan(config: Config, target_id: str) -> list[GdmMessage]:
    """What a controller sees: every face reply for ``target_id`` to one multicast search."""
    async with FakeGdmPeer("player", bind=("127.0.0.1", 0)) as controller:
        replies = await controller.search((GROUP, config.gdm.player_port), timeout=0.4)
    return [m for m in replies if m.get("Resource-Identifier") == face_identifier(target_id)]


@pytest.fixture
def short(tmp_path: Path) -> Config:
    # Expiry 3 s with searches every 0.5 s: a silent holder's claim lapses after 2.5 s. On loopback
    # every bridge, player and controller searches from 127.0.0.1, one source to the per-source
    # search rate limit, so that limit is lifted here (on a LAN each host is its own source).
    return bridge_config(tmp_path, "limits: {gdm_search_rate: 100, gdm_search_burst: 100}\n",
                         timeouts={"target_expiry": 3.0})


@pytest.fixture
async def player_gdm_short(short: Config, player: FakeCompanionPlayer) -> AsyncIterator[FakeGdmPeer]:
    peer = FakeGdmPeer("player", headers={
        "Resource-Identifier": player.ident, "Name": player.name, "Port": str(player.port),
        "Product": player.product, "Protocol-Capabilities": "timeline,playback",
    }, bind=("0.0.0.0", short.gdm.player_port), group=short.gdm.group, interface="127.0.0.1")
    await peer.start()
    yield peer
    await peer.stop()


async def test_two_bridges_one_player_one_face_kept_by_the_first_ranked_then_taken_over_on_bye(
        short: Config, tmp_path: Path, player: FakeCompanionPlayer, player_gdm_short: FakeGdmPeer,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="companion")
    target_id = stable_id("companion", player.ident)
    first, second = _ranked(target_id)
    one = Bridge(_with_id(short, first))
    two = Bridge(_with_id(_twin(short, tmp_path, "two"), second))
    await asyncio.gather(one.start(), two.start())  # the start-up race: both search at once
    try:
        await until(lambda: _announced(one) == [target_id] and not two.faces, timeout=5,
                    message="the first-ranked bridge keeps the face, the other holds none")
        for bridge in (one, two):
            assert [t.id for t in bridge.registry.targets()] == [target_id], "a face was bridged again"
        seen = await _faces_on_the_lan(short, target_id)
        assert [(m.get("Port"), m.get("Bridge-Identifier")) for m in seen] == [
            (str(one.faces[target_id].face.port), first)]
        assert "(bridge) (bridge)" not in caplog.text

        # A second search round changes nothing: no flapping.
        await two._scanner.search_once()  # type: ignore[union-attr]
        await one._scanner.search_once()  # type: ignore[union-attr]
        assert len(await _faces_on_the_lan(short, target_id)) == 1
        assert not two.faces

        await one.stop()  # BYE for its face
        await until(lambda: _announced(two) == [target_id], timeout=2,
                    message="the other bridge took over at the holder's BYE")
        assert two.faces[target_id].face.identity.machine_identifier == face_identifier(target_id)
        takeovers = [r.getMessage() for r in caplog.records if "taking it over" in r.getMessage()]
        assert takeovers == [f"face for Living Room TV: taking it over, bridge {first} said BYE for its face"]
    finally:
        await one.stop()
        await two.stop()


async def test_a_better_ranked_rival_face_keeps_this_bridge_out_until_it_falls_silent(
        short: Config, player: FakeCompanionPlayer, player_gdm_short: FakeGdmPeer,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="companion")
    target_id = stable_id("companion", player.ident)
    rival, ours = _ranked(target_id)
    rival_face = FakeGdmPeer("player", headers={
        "Resource-Identifier": face_identifier(target_id), "Name": "Living Room TV (bridge)", "Port": "9",
        "Product": "companion-bridge", "Bridge-Identifier": rival, "Bridged-Target": target_id,
    }, bind=("0.0.0.0", short.gdm.player_port), group=GROUP, interface="127.0.0.1")
    await rival_face.start()
    try:
        async with Bridge(_with_id(short, ours)) as bridge:
            await until(lambda: bridge.registry.target(target_id) is not None and bridge.claims.holder(target_id),
                        timeout=3, message="the bridge sees the player and the rival's face")
            await asyncio.wait_for(player_gdm_short.wait_for(lambda got: got.message is not None
                                                            and got.message.kind == "search"), 3)
            assert not bridge.faces
            assert [t.id for t in bridge.registry.targets()] == [target_id]
            await rival_face.stop()  # silent: no BYE
            gone = asyncio.get_running_loop().time()
            await until(lambda: _announced(bridge) == [target_id], timeout=short.timeouts.target_expiry + 1,
                        message="takeover after the rival's claim lapsed")
            took = asyncio.get_running_loop().time() - gone
            assert took <= short.timeouts.target_expiry, f"takeover took {took:.1f} s"
    finally:
        await rival_face.stop()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("leaving it to bridge" in m for m in messages) == 1
    assert sum("taking it over" in m and "has not been heard for 2.5 s" in m for m in messages) == 1


async def test_an_outranked_rival_face_is_answered_with_a_hello_and_ours_stays(
        short: Config, player: FakeCompanionPlayer, player_gdm_short: FakeGdmPeer) -> None:
    target_id = stable_id("companion", player.ident)
    ours, loser = _ranked(target_id)
    async with Bridge(_with_id(short, ours)) as bridge:
        await until(lambda: _announced(bridge) == [target_id], timeout=3, message="our face is announced")
        async with FakeGdmPeer("player", bind=("0.0.0.0", short.gdm.announce_port), group=GROUP,
                               interface="127.0.0.1") as rival:
            rival.headers.update({"Resource-Identifier": face_identifier(target_id), "Port": "9",
                                  "Product": "companion-bridge", "Bridge-Identifier": loser,
                                  "Bridged-Target": target_id})
            await rival.send_hello((GROUP, short.gdm.announce_port))
            hello = await rival.wait_for(lambda got: got.message is not None and got.message.kind == "hello"
                                         and got.message.get("Bridge-Identifier") == ours, timeout=2)
        assert hello.message is not None
        assert hello.message.get("Bridged-Target") == target_id
        assert _announced(bridge) == [target_id]


async def test_adverts_of_faces_are_never_bridged_marked_or_not(config: Config) -> None:
    async with Bridge(config) as bridge:
        marked_target = stable_id("companion", "somewhere")
        async with (
            FakeGdmPeer("player", headers={
                "Resource-Identifier": face_identifier(marked_target), "Name": "Den (bridge)", "Port": "9",
                "Product": "companion-bridge", "Bridge-Identifier": "other-bridge-1",
                "Bridged-Target": marked_target,
            }, bind=("0.0.0.0", config.gdm.player_port), group=GROUP, interface="127.0.0.1") as marked,
            FakeGdmPeer("player", headers={  # a bridge too old to mark its faces
                "Resource-Identifier": "old-face-1", "Name": "Hall (bridge)", "Port": "10",
                "Product": "companion-bridge",
            }, bind=("0.0.0.0", config.gdm.player_port), group=GROUP, interface="127.0.0.1") as unmarked,
        ):
            for peer in (marked, unmarked):
                await peer.wait_for(lambda got: got.message is not None and got.message.kind == "search", 3)
                await peer.send_hello((GROUP, config.gdm.announce_port))
            await bridge._scanner.search_once()  # type: ignore[union-attr]
            await until(lambda: bridge.claims.holder(marked_target) is not None, timeout=2,
                        message="the marked face was heard (as a claim)")
        assert bridge.registry.targets() == []
        assert bridge.faces == {}


async def test_a_configured_target_pointing_at_a_face_is_refused_with_a_clear_line(
        tmp_path: Path, player: FakeCompanionPlayer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="companion")
    base = bridge_config(tmp_path / "one", f"targets:\n  - {{name: Den TV, address: 127.0.0.1, port: {player.port}}}\n")
    async with Bridge(base) as one:
        await until(lambda: len(_announced(one)) == 1, timeout=3, message="bridge one's face is announced")
        (face_port,) = (slot.face.port for slot in one.faces.values())
        two_config = bridge_config(
            tmp_path / "two", f"targets:\n  - {{name: Den again, address: 127.0.0.1, port: {face_port}}}\n")
        async with FakeGdmPeer("server", bind=("0.0.0.0", two_config.gdm.announce_port), group=GROUP,
                               interface="127.0.0.1") as listener, Bridge(two_config) as two:
            await until(lambda: "is a face of bridge" in caplog.text, timeout=3,
                        message="bridge two refuses the configured face")
            await until(lambda: two.faces == {}, timeout=2, message="the refused face is closed")
            await two._scanner.search_once()  # type: ignore[union-attr]
        announced = [got.message.get("Name") for got in listener.received if got.message is not None]
    assert "Den again (bridge)" not in announced, "a face of a face was announced"
    (line,) = [r for r in caplog.records if "is a face of" in r.getMessage()]
    assert line.levelno == logging.ERROR
    assert line.getMessage() == (
        f"configured target Den again (127.0.0.1:{face_port}) is a face of bridge {one.bridge_id}, not a player: "
        "refused; point targets: at the real player instead")


async def test_a_configured_target_pointing_at_its_own_face_is_refused(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="companion")
    own_port = free_port_block(8)  # the first face this bridge opens takes this port
    config = bridge_config(tmp_path, f"targets:\n  - {{name: Loop, address: 127.0.0.1, port: {own_port}}}\n")
    config = dataclasses.replace(config, http=dataclasses.replace(config.http, face_port_base=own_port))
    async with Bridge(config) as bridge:
        await until(lambda: "is a face of this bridge" in caplog.text, timeout=3,
                    message="the bridge refuses a target that is its own face")
        await until(lambda: bridge.faces == {}, timeout=2, message="the refused face is closed")


async def test_a_face_from_this_bridges_earlier_run_is_neither_bridged_nor_a_rival(
        short: Config, player: FakeCompanionPlayer, player_gdm_short: FakeGdmPeer) -> None:
    # The same identity as ours (same state dir): an advert of our previous run still on the LAN.
    ours = str(uuid.uuid4())
    target_id = stable_id("companion", player.ident)
    old_advert = FakeGdmPeer("player", headers={
        "Resource-Identifier": face_identifier(target_id), "Name": "Living Room TV (bridge)", "Port": "9",
        "Product": "companion-bridge", "Bridge-Identifier": ours, "Bridged-Target": target_id,
    }, bind=("0.0.0.0", short.gdm.player_port), group=GROUP, interface="127.0.0.1")
    async with old_advert, Bridge(_with_id(short, ours)) as bridge:
        await until(lambda: _announced(bridge) == [target_id], timeout=3,
                    message="our face opens despite the old advert of the same bridge")
        assert [t.id for t in bridge.registry.targets()] == [target_id]
        assert len(bridge.claims) == 0
