"""ChromecastTarget driving real pychromecast against FakeCastDevice (Cast v2 over TLS on loopback)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from companion.errors import (
    CommandNotSupported,
    ProtocolError,
    TargetError,
    TargetTimeout,
    TargetUnavailable,
)
from companion.model import Command, MediaRequest, Target, TargetKind
from companion.proto.timeline import PlayerState
from companion.targets.chromecast.adapter import ChromecastTarget
from companion.targets.chromecast.messages import DEFAULT_MEDIA_RECEIVER_APP_ID, PLEX_APP_ID
from companion.targets.chromecast.status import MediaSnapshot, ReceiverSnapshot, player_state_from
from tests.fakes.cast_device import NS_MEDIA, NS_PLEX, NS_RECEIVER, FakeCastDevice

TOKEN = "sekrit-token-123"
SERVER_ADDRESS = "10-0-0-5.0123456789abcdef0123456789abcdef.plex.direct"


async def until(pred: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)


def cast_threads() -> list[threading.Thread]:
    from pychromecast.socket_client import SocketClient
    return [t for t in threading.enumerate() if isinstance(t, SocketClient) and t.is_alive()]


class Seen:
    def __init__(self) -> None:
        self.states: list[PlayerState] = []
        self.availability: list[bool] = []


@pytest.fixture
async def device() -> AsyncIterator[FakeCastDevice]:
    dev = FakeCastDevice()
    await dev.start()
    try:
        yield dev
    finally:
        await dev.stop()
    assert dev.state.errors == [], "the Cast stream was corrupted or malformed"


def make_target(dev: FakeCastDevice) -> Target:
    return Target(id="chromecast-test", kind=TargetKind.CHROMECAST, name=dev.name,
                  address=dev.host, port=dev.port, source="mdns", ident=dev.cast_id,
                  model=dev.model)


@pytest.fixture
async def adapter_factory() -> AsyncIterator[Callable[..., tuple[ChromecastTarget, Seen]]]:
    made: list[ChromecastTarget] = []

    def make(dev: FakeCastDevice, **kw: Any) -> tuple[ChromecastTarget, Seen]:
        seen = Seen()
        opts: dict[str, Any] = {"command_timeout": 1.0, "connect_retries": 2, "retry_wait": 0.05}
        opts.update(kw)
        adapter = ChromecastTarget(make_target(dev), zeroconf=None, on_state=seen.states.append,
                                   on_available=seen.availability.append, **opts)
        made.append(adapter)
        return adapter, seen

    yield make
    for adapter in made:
        await adapter.stop()
    assert cast_threads() == [], "a pychromecast socket thread outlived its adapter"


@pytest.fixture
async def connected(device: FakeCastDevice, adapter_factory: Callable[..., tuple[ChromecastTarget, Seen]],
                    ) -> tuple[FakeCastDevice, ChromecastTarget, Seen]:
    adapter, seen = adapter_factory(device)
    await adapter.start()
    await until(lambda: adapter.available and device.state.last("GET_STATUS", NS_RECEIVER) is not None)
    return device, adapter, seen


def plex_request(**kw: Any) -> MediaRequest:
    fields: dict[str, Any] = {
        "key": "/library/metadata/42", "offset_ms": 5000, "media_type": "video",
        "container_key": "/playQueues/7?own=1&window=200", "machine_identifier": "server-abc",
        "protocol": "https", "address": SERVER_ADDRESS, "port": 32400, "token": TOKEN,
    }
    fields.update(kw)
    return MediaRequest(**fields)


def cmd(name: str, **params: str) -> Command:
    return Command(group="playback", name=name, params=params)


async def playing(dev: FakeCastDevice, adapter: ChromecastTarget) -> None:
    await adapter.play_media(plex_request(), cmd("playMedia"))
    await until(lambda: adapter.state.active is not None)


async def test_start_connects_and_reports_the_chromecast_available(connected: Any) -> None:
    dev, adapter, seen = connected
    assert seen.availability == [True]
    assert dev.state.connections == 1
    assert adapter.capabilities == ("timeline", "playback", "mirror")
    assert "playback/pause" in adapter.features
    assert not any(f.startswith("navigation/") for f in adapter.features), "no UI to navigate: not advertised"


async def test_play_media_launches_the_plex_app_and_loads_the_decided_server_block(connected: Any) -> None:
    dev, adapter, _ = connected
    await adapter.play_media(plex_request(), cmd("playMedia"))

    assert dev.state.launches == [PLEX_APP_ID]
    load = dev.state.loads[-1]
    assert load["media"]["contentId"] == "/library/metadata/42"
    custom = load["media"]["customData"]
    assert custom["server"]["protocol"] == "https"
    assert custom["server"]["address"] == SERVER_ADDRESS
    assert custom["server"]["port"] == 32400
    assert custom["server"]["machineIdentifier"] == "server-abc"
    assert custom["server"]["accessToken"] == TOKEN
    assert custom["containerKey"] == "/playQueues/7?own=1&window=200"
    assert custom["offset"] == 5.0
    await until(lambda: adapter.state.active is not None)
    active = adapter.state.active
    assert active is not None
    assert (active.type, active.state, active.key, active.address) == (
        "video", "playing", "/library/metadata/42", SERVER_ADDRESS)


async def test_pause_seek_and_volume_reach_the_device(connected: Any) -> None:
    dev, adapter, _ = connected
    await playing(dev, adapter)

    await adapter.send(cmd("pause"))
    assert dev.state.player_state == "PAUSED"
    await adapter.send(cmd("seekTo", offset="90000"))
    assert dev.state.current_time == 90.0
    await adapter.send(cmd("stepBack"))
    assert dev.state.current_time == 80.0
    await adapter.send(cmd("play"))
    assert dev.state.player_state == "PLAYING"
    await adapter.send(cmd("setParameters", volume="30"))
    assert dev.state.volume_level == pytest.approx(0.3)
    await adapter.send(cmd("setParameters", mute="1"))
    assert dev.state.muted is True
    assert dev.state.commands(NS_MEDIA)[-4:] == ["PAUSE", "SEEK", "SEEK", "PLAY"]
    await until(lambda: adapter.state.active is not None and adapter.state.active.volume == 30)


async def test_stop_ends_playback_and_the_timeline_goes_stopped(connected: Any) -> None:
    dev, adapter, _ = connected
    await playing(dev, adapter)
    await adapter.send(cmd("stop"))
    await until(lambda: adapter.state.active is None)
    assert "STOP" in dev.state.commands(NS_MEDIA)


async def test_a_media_status_change_on_the_device_reaches_the_timeline(connected: Any) -> None:
    dev, adapter, seen = connected
    await playing(dev, adapter)

    await dev.change_media_status(player_state="PAUSED", current_time=42.5, duration=600)

    def paused() -> bool:
        active = seen.states[-1].active if seen.states else None
        return active is not None and active.state == "paused"

    await until(paused)
    active = seen.states[-1].active
    assert active is not None
    assert (active.time, active.duration, active.type) == (42500, 600000, "video")
    assert "seekTo" in active.controllable


async def test_music_content_is_reported_on_the_music_timeline(connected: Any) -> None:
    dev, adapter, _ = connected
    await adapter.play_media(plex_request(media_type="music", key="/library/metadata/7"),
                             cmd("playMedia"))
    await dev.change_media_status(player_state="PLAYING", content_type="audio/mpeg")
    await until(lambda: adapter.state.active is not None and adapter.state.active.type == "music")
    assert adapter.state.location == "fullScreenMusic"
    assert dev.state.loads[-1]["media"]["contentType"] == "audio"


async def test_a_stream_url_is_played_by_the_default_media_receiver(connected: Any) -> None:
    dev, adapter, _ = connected
    url = "https://127-0-0-1.abc.plex.direct:32480/relay/xyz.mp4"
    await adapter.play_media(plex_request(extra={"stream_url": url}), cmd("playMedia"))

    assert dev.state.launches == [DEFAULT_MEDIA_RECEIVER_APP_ID]
    load = dev.state.loads[-1]
    assert load["media"]["contentId"] == url
    assert load["media"]["contentType"] == "video/mp4"


async def test_a_refused_load_is_a_target_error(connected: Any) -> None:
    dev, adapter, _ = connected
    dev.use_cases.load_failed = True
    with pytest.raises(TargetError, match="LOAD_FAILED"):
        await adapter.play_media(plex_request(), cmd("playMedia"))


async def test_commands_with_nothing_to_act_on_are_accepted_no_ops_and_logged(
        connected: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A real player answers OK to pause or skipNext with nothing playing; an error would make the
    controller consider the player disconnected (Remote control API)."""
    dev, adapter, _ = connected
    caplog.set_level(logging.INFO, logger="companion.targets.chromecast")
    for name in ("pause", "play", "stop", "skipNext", "skipPrevious", "stepForward"):
        await adapter.send(cmd(name))
    await adapter.send(cmd("seekTo", offset="1000"))
    await adapter.send(cmd("skipTo", key="/library/metadata/43"))
    noops = [r.getMessage() for r in caplog.records if "no-op" in r.getMessage()]
    assert len(noops) == 8, noops
    assert dev.state.launches == [], "a no-op never launches the Plex app"


async def test_skip_next_and_previous_reach_the_receiver_as_plex_messages(connected: Any) -> None:
    dev, adapter, _ = connected
    await playing(dev, adapter)
    await adapter.send(cmd("skipNext"))
    await adapter.send(cmd("skipPrevious"))
    await until(lambda: dev.state.commands(NS_PLEX)[-2:] == ["NEXT", "PREVIOUS"])
    assert "NEXT" not in dev.state.commands(NS_MEDIA), "on the Plex app's own namespace, not the media one"


async def test_skip_to_loads_the_same_play_queue_at_the_chosen_item(connected: Any) -> None:
    dev, adapter, _ = connected
    await playing(dev, adapter)
    await adapter.send(cmd("skipTo", key="/library/metadata/43"))
    load = dev.state.loads[-1]
    assert load["media"]["contentId"] == "/library/metadata/43"
    assert load["media"]["customData"]["containerKey"] == "/playQueues/7?own=1&window=200"
    await adapter.send(cmd("skipTo", key="9123"))  # a playQueueItemID, as MA and PKC send
    assert dev.state.loads[-1]["media"]["customData"]["playQueueItemID"] == 9123
    await until(lambda: adapter.state.active is not None and adapter.state.active.play_queue_item_id == "9123")


async def test_mirror_details_shows_details_and_starts_nothing(connected: Any) -> None:
    dev, adapter, _ = connected
    await adapter.play_media(plex_request(), Command(group="mirror", name="details"))
    await until(lambda: dev.state.last("SHOWDETAILS", NS_PLEX) is not None)
    shown = dev.state.last("SHOWDETAILS", NS_PLEX)
    assert shown is not None
    assert shown["media"]["contentId"] == "/library/metadata/42"
    assert dev.state.loads == [], "details never LOADs"
    assert dev.state.player_state != "PLAYING"


async def test_the_timeline_carries_the_play_queue_and_the_skip_controls(connected: Any) -> None:
    dev, adapter, _ = connected
    await playing(dev, adapter)
    active = adapter.state.active
    assert active is not None
    assert active.play_queue_id == "7"
    assert active.container_key.startswith("/playQueues/")
    assert {"skipNext", "skipPrevious"} <= set(active.controllable)
    # Without a play queue there is nothing to skip in: the buttons are not drawn.
    await adapter.play_media(plex_request(container_key=""), cmd("playMedia"))
    await until(lambda: adapter.state.active is not None and adapter.state.active.play_queue_id == "")
    assert "skipNext" not in adapter.state.active.controllable


async def test_commands_outside_the_features_are_refused_clearly(connected: Any) -> None:
    _, adapter, _ = connected
    with pytest.raises(CommandNotSupported):
        await adapter.send(Command(group="navigation", name="moveUp"))
    with pytest.raises(ProtocolError, match="volume"):
        await adapter.send(cmd("setParameters", volume="loud"))
    with pytest.raises(ProtocolError):
        await adapter.play_media(plex_request(address="", protocol=""), cmd("playMedia"))


async def test_a_silent_device_times_out_within_the_command_timeout(
        device: FakeCastDevice, adapter_factory: Any) -> None:
    device.use_cases.silent = True
    adapter, seen = adapter_factory(device, command_timeout=0.3)
    await adapter.start()
    # TLS is accepted and pychromecast asks for the receiver status, which never comes.
    await until(lambda: device.state.last("GET_STATUS", NS_RECEIVER) is not None)

    started = time.monotonic()
    with pytest.raises(TargetTimeout, match="did not answer"):
        await adapter.play_media(plex_request(), cmd("playMedia"))
    assert time.monotonic() - started < 0.8
    assert not adapter.available
    assert True not in seen.availability


async def test_a_device_that_answers_again_after_a_timeout_is_available_again(
        device: FakeCastDevice, adapter_factory: Any) -> None:
    dev = device
    adapter, seen = adapter_factory(dev, command_timeout=0.3)
    await adapter.start()
    await until(lambda: adapter.available)
    await playing(dev, adapter)
    dev.use_cases.silent = True
    with pytest.raises(TargetTimeout):
        await adapter.send(cmd("pause"))
    assert seen.availability[-1] is False

    dev.use_cases.silent = False
    await adapter.send(cmd("pause"))
    assert adapter.available
    assert seen.availability[-1] is True


async def test_an_absent_device_is_unavailable_and_commands_say_so(adapter_factory: Any) -> None:
    dev = FakeCastDevice()
    await dev.start()
    port = dev.port
    await dev.stop()  # nothing listens on this port now
    dev.port = port
    adapter, _ = adapter_factory(dev)
    await adapter.start()  # never raises for an absent player
    with pytest.raises(TargetUnavailable, match="not connected"):
        await adapter.send(cmd("pause"))
    assert not adapter.available


async def test_a_drop_marks_unavailable_and_the_device_returning_brings_it_back(connected: Any) -> None:
    dev, adapter, seen = connected
    await playing(dev, adapter)
    port = dev.port

    await dev.stop()
    await until(lambda: not adapter.available)
    assert seen.availability[-1] is False

    await dev.start(port=port)
    await until(lambda: adapter.available, timeout=3.0)
    assert seen.availability[-1] is True
    await until(lambda: dev.state.connections >= 2)


async def test_a_device_absent_at_start_is_picked_up_when_it_appears(
        adapter_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    dev = FakeCastDevice()
    await dev.start()
    port = dev.port
    await dev.stop()
    adapter, seen = adapter_factory(dev, connect_retries=1, retry_wait=0.02)
    with caplog.at_level(logging.ERROR, logger="pychromecast"):
        await adapter.start()
        # pychromecast's own thread gives up after one try; wait until the adapter has built a
        # second connection, so the recovery below is the adapter's, not pychromecast's.
        await until(lambda: sum("No retries" in r.getMessage() for r in caplog.records) >= 2)

    await dev.start(port=port)
    try:
        await until(lambda: adapter.available)
        assert seen.availability == [True]
    finally:
        await adapter.stop()
        await dev.stop()


async def test_a_cut_connection_is_reconnected_by_itself(connected: Any) -> None:
    dev, adapter, _ = connected
    await dev.drop()
    await until(lambda: dev.state.connections >= 2 and adapter.available)
    await until(lambda: dev.connected == 1)


async def test_stop_leaves_no_thread_behind(device: FakeCastDevice) -> None:
    baseline = set(threading.enumerate())
    seen = Seen()
    adapter = ChromecastTarget(make_target(device), zeroconf=None, on_state=seen.states.append,
                               on_available=seen.availability.append, command_timeout=1.0,
                               retry_wait=0.05)
    await adapter.start()
    await until(lambda: adapter.available)
    await adapter.play_media(plex_request(), cmd("playMedia"))
    await adapter.send(cmd("pause"))

    await adapter.stop()
    # to_thread workers belong to the loop's default executor; shut it down to compare fully.
    await asyncio.get_running_loop().shutdown_default_executor()
    await until(lambda: set(threading.enumerate()) <= baseline)
    await until(lambda: device.connected == 0)


async def test_the_token_never_reaches_pychromecast_debug_logs(
        connected: Any, caplog: pytest.LogCaptureFixture) -> None:
    dev, adapter, _ = connected
    with caplog.at_level(logging.DEBUG, logger="pychromecast"):
        await adapter.play_media(plex_request(), cmd("playMedia"))
    assert dev.state.loads[-1]["media"]["customData"]["server"]["accessToken"] == TOKEN
    assert any("accessToken" in r.getMessage() for r in caplog.records)
    assert all(TOKEN not in r.getMessage() for r in caplog.records)
    assert TOKEN not in repr(adapter)


def test_timeline_mapping_clamps_time_and_reports_volume() -> None:
    media = MediaSnapshot(player_state="BUFFERING", current_time=700.0, duration=600.0,
                          content_type="video/mp4", media_session_id=1)
    state = player_state_from(media, ReceiverSnapshot(volume_level=0.25, muted=True), None, 0.0)
    active = state.active
    assert active is not None
    assert (active.state, active.time, active.duration, active.volume, active.mute) == (
        "buffering", 600000, 600000, 25, True)
    assert player_state_from(MediaSnapshot(player_state="IDLE"), None, None, 0.0).active is None
    photo = player_state_from(MediaSnapshot(player_state="PLAYING", metadata_type=4), None, None, 0.0)
    assert photo.active is not None
    assert photo.active.type == "photo"


def test_the_position_advances_while_playing_and_holds_while_paused() -> None:
    moving = MediaSnapshot(player_state="PLAYING", current_time=10.0, duration=100.0,
                           reported_at=50.0)
    paused = MediaSnapshot(player_state="PAUSED", current_time=10.0, duration=100.0,
                           reported_at=50.0)
    at = 52.5
    active = player_state_from(moving, None, None, at).active
    assert active is not None
    assert active.time == 12500
    held = player_state_from(paused, None, None, at).active
    assert held is not None
    assert held.time == 10000


async def test_set_parameters_it_cannot_carry_is_an_accepted_no_op(connected: Any) -> None:
    dev, adapter, _ = connected
    await playing(dev, adapter)
    await adapter.send(cmd("setParameters", shuffle="1", repeat="2"))
    assert "SET_VOLUME" not in dev.state.commands(NS_RECEIVER)
    active = adapter.state.active
    assert active is not None
    assert "shuffle" not in active.controllable and "repeat" not in active.controllable, "never advertised"
