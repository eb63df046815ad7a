"""The Companion player adapter against a FakeCompanionPlayer: commands carried, timelines followed."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from companion.errors import CommandNotSupported, TargetError, TargetTimeout, TargetUnavailable
from companion.model import Command, Controller, FaceMarks, MediaRequest, Target, TargetKind
from companion.proto.timeline import PlayerState
from companion.targets.companion_player import CompanionPlayerTarget, TimelineListener
from tests.fakes.companion_player import FakeCompanionPlayer
from tests.helpers import free_port, until


@pytest.fixture
async def player() -> AsyncIterator[FakeCompanionPlayer]:
    fake = FakeCompanionPlayer()
    await fake.start()
    yield fake
    await fake.stop()


class Harness:
    def __init__(self) -> None:
        self.states: list[PlayerState] = []
        self.availability: list[bool] = []


def _adapter(fake_port: int, ident: str, session: aiohttp.ClientSession, listener: TimelineListener | None,
             harness: Harness, timeout: float = 1.0, poll_hold: float = 30.0) -> CompanionPlayerTarget:
    """An adapter for the fake player, to run in ``async with``."""
    target = Target(id="companion-x", kind=TargetKind.COMPANION, name="Living Room TV", address="127.0.0.1",
                    port=fake_port, source="gdm", ident=ident, capabilities=("timeline", "playback"))
    adapter = CompanionPlayerTarget(target, session=session, bridge_id="bridge-id-1", bridge_name="test-bridge",
                                    listener=listener, on_state=harness.states.append,
                                    on_available=harness.availability.append, command_timeout=timeout,
                                    poll_hold=poll_hold)
    return adapter


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def listener() -> AsyncIterator[TimelineListener]:
    async with TimelineListener(bind="127.0.0.1") as lst:
        yield lst


def _cmd(name: str, group: str = "playback", **params: str) -> Command:
    return Command(group=group, name=name, params=params, controller=Controller(client_id="phone-1", name="Phone"),
                   command_id=77)


async def test_commands_reach_the_player_with_the_bridges_own_identity(
        player: FakeCompanionPlayer, session: aiohttp.ClientSession, listener: TimelineListener) -> None:
    h = Harness()
    async with _adapter(player.port, player.ident, session, listener, h) as adapter:
        await adapter.send(_cmd("pause", type="video"))
        await adapter.send(_cmd("seekTo", offset="90000"))
        await adapter.send(_cmd("setParameters", volume="30"))
        pause, = player.received("pause")
        assert pause.headers["X-Plex-Client-Identifier"] == "bridge-id-1"
        assert pause.headers["X-Plex-Target-Client-Identifier"] == player.ident
        assert player.received("seekTo")[0].params["offset"] == "90000"
        assert player.state.volume == 30
        ids = [int(c.params["commandID"]) for c in player.state.commands if "commandID" in c.params]
        assert ids == sorted(ids) and len(set(ids)) == len(ids), "the bridge's own increasing commandIDs"
        assert "77" not in [c.params["commandID"] for c in player.received("pause")]


async def test_play_media_carries_the_decided_server_block(
        player: FakeCompanionPlayer, session: aiohttp.ClientSession, listener: TimelineListener) -> None:
    h = Harness()
    async with _adapter(player.port, player.ident, session, listener, h) as adapter:
        phone = _cmd("playMedia", key="/library/metadata/5", protocol="https", address="10-0-0-1.x.plex.direct",
                     port="32400", token="PHONE-TOKEN", queryAddress="1.2.3.4")
        decided = MediaRequest(key="/library/metadata/5", offset_ms=1000, protocol="http", address="127.0.0.10",
                               port=32400, token="SERVER-TOKEN", machine_identifier="srv")
        await adapter.play_media(decided, phone)
        got = player.received("playMedia")[0].params
        assert (got["protocol"], got["address"], got["port"]) == ("http", "127.0.0.10", "32400")
        assert got["token"] == "SERVER-TOKEN"
        assert "queryAddress" not in got


async def test_state_changes_on_the_player_come_back_by_push(
        player: FakeCompanionPlayer, session: aiohttp.ClientSession, listener: TimelineListener) -> None:
    h = Harness()
    async with _adapter(player.port, player.ident, session, listener, h):
        await until(lambda: len(player.state.subscribers) == 1, message="bridge subscribed to the player")
        await player.set_playback(state="playing", time=5000, duration=60000, media_type="video")
        await until(lambda: any(s.active is not None and s.active.state == "playing" for s in h.states),
                    timeout=1.0, message="pushed timeline reached the adapter")
        active = h.states[-1].active
        assert active is not None and active.time == 5000
    assert player.state.subscribers == {}, "the bridge unsubscribes when it stops"


async def test_player_refusing_subscriptions_is_long_polled(
        player: FakeCompanionPlayer, session: aiohttp.ClientSession, listener: TimelineListener) -> None:
    player.use_cases.refuse_subscribe = True
    h = Harness()
    async with _adapter(player.port, player.ident, session, listener, h):
        await until(lambda: len(player.received("poll")) >= 1, message="bridge polls instead")
        await player.set_playback(state="paused", time=1000, duration=9000)
        await until(lambda: any(s.active is not None and s.active.state == "paused" for s in h.states),
                    timeout=1.0, message="polled timeline reached the adapter")


async def test_slow_player_gives_a_timeout_error_in_bounded_time(
        player: FakeCompanionPlayer, session: aiohttp.ClientSession) -> None:
    h = Harness()
    async with _adapter(player.port, player.ident, session, None, h, timeout=0.3, poll_hold=0.2) as adapter:
        player.use_cases.delay = 5
        try:
            started = time.monotonic()
            with pytest.raises(TargetTimeout, match="did not answer /player/playback/pause within 0.3 s"):
                await adapter.send(_cmd("pause"))
            assert time.monotonic() - started < 1.0
            assert h.availability[-1] is False
        finally:
            player.use_cases.delay = 0


async def test_unreachable_player_is_unavailable_not_a_crash(session: aiohttp.ClientSession) -> None:
    h = Harness()
    async with _adapter(free_port(), "gone", session, None, h, timeout=0.5, poll_hold=0.1) as adapter:
        with pytest.raises(TargetUnavailable, match="cannot be reached"):
            await adapter.send(_cmd("play"))
        assert adapter.available is False


async def test_player_error_status_and_unsupported_commands(
        player: FakeCompanionPlayer, session: aiohttp.ClientSession) -> None:
    h = Harness()
    async with _adapter(player.port, player.ident, session, None, h) as adapter:
        try:
            player.use_cases.status = 500
            with pytest.raises(TargetError, match="HTTP 500"):
                await adapter.send(_cmd("stop"))
            with pytest.raises(CommandNotSupported):
                await adapter.send(_cmd("moveUp", group="navigation"))
        finally:
            player.use_cases.status = 200


@pytest.mark.parametrize("dtd", [True, False], ids=["with-a-dtd", "without"])
async def test_a_configured_player_reads_its_identity_from_utf16_resources_but_never_through_a_dtd(
        player: FakeCompanionPlayer, session: aiohttp.ClientSession, listener: TimelineListener,
        caplog: pytest.LogCaptureFixture, dtd: bool) -> None:
    # A DOCTYPE in UTF-16 passes a check of the raw bytes for "<!DOCTYPE"; its entity would make the
    # player pass for another bridge's face, and the bridge would stop following it.
    doctype = '<!DOCTYPE MediaContainer [<!ENTITY b "other-bridge">]>' if dtd else ""
    marks = ' bridgeIdentifier="&b;"' if dtd else ""
    text = (f'<?xml version="1.0" encoding="UTF-16"?>{doctype}<MediaContainer><Player title="Den" '
            f'machineIdentifier="{player.ident}"{marks} product="Plex for Test"/></MediaContainer>')
    player.use_cases.resources_body = text.encode("utf-16")
    assert b"<!DOCTYPE" not in player.use_cases.resources_body
    faces: list[FaceMarks] = []
    target = Target(id="companion-den", kind=TargetKind.COMPANION, name="Den TV", address="127.0.0.1",
                    port=player.port, source="config", ident="config:den", capabilities=("timeline", "playback"))
    h = Harness()
    adapter = CompanionPlayerTarget(target, session=session, bridge_id="bridge-id-1", bridge_name="test-bridge",
                                    listener=listener, on_state=h.states.append, on_available=h.availability.append,
                                    command_timeout=1.0, on_face=faces.append)
    caplog.set_level(logging.WARNING, logger="companion.targets.companion_player")
    async with adapter:
        await until(adapter.identity_checked.is_set, timeout=5, message="the adapter asked for /resources")
        assert faces == [], "a DTD's entity made the player pass for another bridge's face"
        refused = [r for r in caplog.records if "without a machineIdentifier" in r.getMessage()]
        assert len(refused) == (1 if dtd else 0)
        if not dtd:
            # The identity was learnt from the UTF-16 answer: the player's timeline pushes, which name
            # it by that identity, reach the adapter.
            await until(lambda: bool(h.states), timeout=5, message="the player's pushes are routed to the adapter")
