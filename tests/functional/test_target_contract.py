"""The TargetAdapter contract (companion/targets/base.py), run against every adapter.

As pyatv runs one functional suite against every protocol, each test here drives an adapter only
through the Protocol (start, stop, send, play_media, features, capabilities, available and the
on_state / on_available callbacks) against a peer that speaks the adapter's real protocol, and
looks at that peer through a small :class:`Rig`:

* ``companion_player``: CompanionPlayerTarget over HTTP against FakeCompanionPlayer, its timeline
  pushed to a real TimelineListener;
* ``chromecast``: ChromecastTarget driving real pychromecast against FakeCastDevice (Cast v2 over
  TLS on loopback).

A later adapter joins by writing one rig fixture and adding its name to ``RIGS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import companion.targets
from companion.errors import (
    CommandNotSupported,
    CompanionError,
    ProtocolError,
    TargetError,
    TargetTimeout,
    TargetUnavailable,
)
from companion.model import Command, MediaRequest, Target, TargetKind
from companion.proto.timeline import PlayerState, TimelineEntry
from companion.targets.base import TargetAdapter
from companion.targets.chromecast.adapter import ChromecastTarget
from companion.targets.companion_player import CompanionPlayerTarget, TimelineListener
from tests.fakes.cast_device import FakeCastDevice
from tests.fakes.companion_player import FakeCompanionPlayer
from tests.helpers import until

RIGS = ["companion_player_rig", "chromecast_rig"]

TOKEN = "contract-token-123"
WAIT = 5.0  # bound for conditions on a loaded 2-core machine; each normally holds within a second
KNOWN_GROUPS = {"playback", "mirror", "navigation", "application", "timeline"}
KNOWN_CAPABILITIES = {"timeline", "playback", "navigation", "mirror", "playqueues"}
CORE_FEATURES = {"playback/playMedia", "playback/play", "playback/pause", "playback/stop", "playback/seekTo"}
TARGETS_DIR = Path(companion.targets.__file__).resolve().parent
REQUEST = MediaRequest(key="/library/metadata/42", offset_ms=0, media_type="video",
                       container_key="/playQueues/7?own=1&window=200", machine_identifier="server-abc",
                       protocol="http", address="127.0.0.10", port=32400, token=TOKEN)


def cmd(name: str, group: str = "playback", **params: str) -> Command:
    """A command as a face hands it to the adapter."""
    return Command(group=group, name=name, params=params)


def play_command() -> Command:
    """The playMedia a controller sent (the adapter takes the server block from the request)."""
    return cmd("playMedia", key=REQUEST.key, offset="0", type="video")


class Rig:
    """One adapter wired to its peer: builds the adapter, and reads and steers the peer."""

    kind = ""

    def __init__(self) -> None:
        self.states: list[PlayerState] = []
        self.availability: list[bool] = []
        self._adapters: list[TargetAdapter] = []

    def build(self, command_timeout: float) -> TargetAdapter:
        """A new adapter for the peer (not started)."""
        raise NotImplementedError

    @contextlib.asynccontextmanager
    async def running(self, command_timeout: float = 1.0) -> AsyncIterator[TargetAdapter]:
        """A started adapter, stopped on the way out."""
        adapter = self.build(command_timeout)
        await adapter.start()
        try:
            yield adapter
        finally:
            await adapter.stop()

    async def following(self, adapter: TargetAdapter) -> None:
        """Wait until the adapter follows the peer (it is the peer's subscriber, or connected)."""
        raise NotImplementedError

    def played_key(self) -> str:
        """The item the peer was last told to play ("" if none)."""
        raise NotImplementedError

    def peer_state(self) -> str:
        """What the peer is doing: playing, paused, buffering or stopped."""
        raise NotImplementedError

    def peer_position_ms(self) -> int:
        """Where the peer is in the media."""
        raise NotImplementedError

    def peer_volume(self) -> int:
        """The peer's volume, 0..100."""
        raise NotImplementedError

    async def press(self, state: str, time_ms: int) -> None:
        """Someone uses the player's own remote: it changes state and says so."""
        raise NotImplementedError

    def refuse(self) -> None:
        """From now on the peer refuses to play."""
        raise NotImplementedError

    def silence(self, silent: bool) -> None:
        """The peer keeps its connections but stops (or starts again) answering commands."""
        raise NotImplementedError

    async def take_away(self) -> None:
        """The player goes off the network (its port closes)."""
        raise NotImplementedError

    async def bring_back(self) -> None:
        """The player comes back on the same address and port."""
        raise NotImplementedError

    def holds_nothing(self) -> bool:
        """The peer holds nothing of the adapter's: no connection, no subscription."""
        raise NotImplementedError


class CompanionPlayerRig(Rig):
    """CompanionPlayerTarget and a FakeCompanionPlayer (HTTP, timelines pushed to a listener)."""

    kind = "companion_player"

    def __init__(self, player: FakeCompanionPlayer, session: aiohttp.ClientSession,
                 listener: TimelineListener) -> None:
        super().__init__()
        self.player = player
        self._session = session
        self._listener = listener
        self.gone = False

    def build(self, command_timeout: float) -> TargetAdapter:
        """A CompanionPlayerTarget for the fake player, as the bridge builds one."""
        target = Target(id="contract-companion", kind=TargetKind.COMPANION, name="Contract TV",
                        address=self.player.host, port=self.player.port, source="gdm",
                        ident=self.player.ident, capabilities=("timeline", "playback"))
        return CompanionPlayerTarget(target, session=self._session, bridge_id="contract-bridge",
                                     bridge_name="contract", listener=self._listener,
                                     on_state=self.states.append, on_available=self.availability.append,
                                     command_timeout=command_timeout, poll_hold=0.5)

    async def following(self, adapter: TargetAdapter) -> None:
        """The player lists the bridge as a timeline subscriber."""
        await until(lambda: len(self.player.state.subscribers) == 1, WAIT, message="subscribed to the player")

    def played_key(self) -> str:
        """The key of the last playMedia the player took."""
        return self.player.state.key

    def peer_state(self) -> str:
        """The fake player's own state."""
        return self.player.state.state

    def peer_position_ms(self) -> int:
        """The fake player's position."""
        return self.player.state.time

    def peer_volume(self) -> int:
        """The fake player's volume."""
        return self.player.state.volume

    async def press(self, state: str, time_ms: int) -> None:
        """Change state on the player; it pushes its timeline."""
        await self.player.set_playback(state=state, time=time_ms)

    def refuse(self) -> None:
        """Every command is answered HTTP 500."""
        self.player.use_cases.status = 500

    def silence(self, silent: bool) -> None:
        """Commands are answered only after 5 s (or at once again)."""
        self.player.use_cases.delay = 5.0 if silent else 0.0

    async def take_away(self) -> None:
        """Stop the fake player's HTTP server."""
        await self.player.stop()
        self.gone = True

    async def bring_back(self) -> None:
        """Serve again on the same port."""
        await self.player.start(port=self.player.port)
        self.gone = False

    def holds_nothing(self) -> bool:
        """No timeline subscription of ours is left on the player."""
        return self.player.state.subscribers == {}


class ChromecastRig(Rig):
    """ChromecastTarget (real pychromecast) and a FakeCastDevice."""

    kind = "chromecast"

    def __init__(self, device: FakeCastDevice) -> None:
        super().__init__()
        self.device = device

    def build(self, command_timeout: float) -> TargetAdapter:
        """A ChromecastTarget for the fake device, with quick reconnects."""
        dev = self.device
        target = Target(id="contract-chromecast", kind=TargetKind.CHROMECAST, name=dev.name,
                        address=dev.host, port=dev.port, source="mdns", ident=dev.cast_id, model=dev.model)
        return ChromecastTarget(target, zeroconf=None, on_state=self.states.append,
                                on_available=self.availability.append, command_timeout=command_timeout,
                                connect_retries=2, retry_wait=0.05)

    async def following(self, adapter: TargetAdapter) -> None:
        """The device answered over a live connection."""
        await until(lambda: adapter.available, WAIT, message="connected to the Chromecast")

    def played_key(self) -> str:
        """The contentId of the last LOAD the device took."""
        return str(self.device.state.loads[-1]["media"]["contentId"]) if self.device.state.loads else ""

    def peer_state(self) -> str:
        """The device's player state, in timeline words."""
        return {"PLAYING": "playing", "PAUSED": "paused", "BUFFERING": "buffering"}.get(
            self.device.state.player_state, "stopped")

    def peer_position_ms(self) -> int:
        """The device's currentTime."""
        return round(self.device.state.current_time * 1000)

    def peer_volume(self) -> int:
        """The receiver's volume level."""
        return round(self.device.state.volume_level * 100)

    async def press(self, state: str, time_ms: int) -> None:
        """Change the media status on the device; it broadcasts MEDIA_STATUS."""
        await self.device.change_media_status(player_state=state.upper(), current_time=time_ms / 1000)

    def refuse(self) -> None:
        """LOADs are answered LOAD_FAILED."""
        self.device.use_cases.load_failed = True

    def silence(self, silent: bool) -> None:
        """The device reads everything and answers nothing (or answers again)."""
        self.device.use_cases.silent = silent

    async def take_away(self) -> None:
        """Stop listening and cut every connection."""
        await self.device.stop()

    async def bring_back(self) -> None:
        """Listen again on the same port."""
        await self.device.start(port=self.device.port)

    def holds_nothing(self) -> bool:
        """No Cast connection of ours is open on the device."""
        return self.device.connected == 0


# --- rig fixtures: one per adapter --------------------------------------------------------------


@pytest.fixture
async def companion_player_rig() -> AsyncIterator[Rig]:
    """The Companion player adapter against FakeCompanionPlayer, timelines pushed to a TimelineListener."""
    player = FakeCompanionPlayer(name="Contract TV")
    await player.start()
    listener = TimelineListener(bind="127.0.0.1")
    await listener.start()
    rig: CompanionPlayerRig | None = None
    try:
        async with aiohttp.ClientSession() as session:
            rig = CompanionPlayerRig(player, session, listener)
            yield rig
    finally:
        await listener.stop()
        if rig is None or not rig.gone:
            await player.stop()


@pytest.fixture
async def chromecast_rig() -> AsyncIterator[Rig]:
    """The Chromecast adapter (real pychromecast) against FakeCastDevice."""
    device = FakeCastDevice(name="Contract Cast")
    await device.start()
    try:
        yield ChromecastRig(device)
    finally:
        await device.stop()
    assert device.state.errors == [], "the Cast stream was corrupted or malformed"


@pytest.fixture(params=RIGS, ids=lambda name: name.removesuffix("_rig"))
def rig(request: pytest.FixtureRequest) -> Rig:
    """Every adapter in turn."""
    got = request.getfixturevalue(request.param)
    assert isinstance(got, Rig)
    return got


# --- helpers ------------------------------------------------------------------------------------


def last_active(rig: Rig) -> TimelineEntry | None:
    """The active entry of the last state the adapter reported through on_state."""
    return rig.states[-1].active if rig.states else None


def reported(rig: Rig, check: Callable[[TimelineEntry], bool]) -> Callable[[], bool]:
    """A condition: the last reported state has an active entry that passes ``check``."""
    def holds() -> bool:
        active = last_active(rig)
        return active is not None and check(active)
    return holds


async def playing(rig: Rig, adapter: TargetAdapter) -> None:
    """Follow the peer, fling REQUEST, and wait until the timeline says it plays."""
    await rig.following(adapter)
    await adapter.play_media(REQUEST, play_command())
    await until(reported(rig, lambda a: a.state == "playing" and a.key == REQUEST.key), WAIT,
                message="the timeline says the flung item plays")


def live_threads() -> set[threading.Thread]:
    """Threads alive now, but for the event loop's executor workers (the loop owns those)."""
    return {t for t in threading.enumerate() if t.is_alive() and not t.name.startswith("asyncio_")}


def adapter_tasks() -> list[asyncio.Task[Any]]:
    """Unfinished tasks whose coroutine is target-adapter code (companion/targets/)."""
    found = []
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        if not task.done() and code is not None and Path(code.co_filename).resolve().is_relative_to(TARGETS_DIR):
            found.append(task)
    return found


@contextlib.contextmanager
def no_time_beyond(seconds: float) -> Iterator[None]:
    """Fail if the block takes longer than ``seconds``."""
    started = time.monotonic()
    yield
    took = time.monotonic() - started
    assert took < seconds, f"took {took:.2f} s, bound {seconds:g} s"


# --- the contract -------------------------------------------------------------------------------


async def test_it_declares_its_features_and_capabilities(rig: Rig) -> None:
    """features are group/name paths with the core playback commands; capabilities a known subset."""
    async with rig.running() as adapter:
        features, capabilities = adapter.features, adapter.capabilities
    assert isinstance(features, frozenset)
    assert all(f.count("/") == 1 and f.split("/")[0] in KNOWN_GROUPS for f in features), features
    assert features >= CORE_FEATURES, f"missing {CORE_FEATURES - features}"
    assert isinstance(capabilities, tuple)
    assert {"timeline", "playback"} <= set(capabilities) <= KNOWN_CAPABILITIES, capabilities


async def test_start_follows_a_present_player_and_reports_its_idle_state(rig: Rig) -> None:
    """start() follows the player: available, and a first (idle) state through on_state."""
    async with rig.running() as adapter:
        await rig.following(adapter)
        await until(lambda: bool(rig.states), WAIT, message="a first state through on_state")
        assert adapter.available
        assert False not in rig.availability
        assert rig.states[-1].active is None, "nothing plays yet"


async def test_play_media_plays_the_decided_item_and_the_timeline_follows(rig: Rig) -> None:
    """play_media plays the request's item on the player, and on_state reports it playing."""
    async with rig.running() as adapter:
        await playing(rig, adapter)
        assert rig.played_key() == REQUEST.key
        assert rig.peer_state() == "playing"
        active = last_active(rig)
        assert active is not None and active.type == "video"


async def test_pause_and_play_reach_the_player_and_its_timeline(rig: Rig) -> None:
    """pause and play (resume) change the player, and on_state follows."""
    async with rig.running() as adapter:
        await playing(rig, adapter)
        await adapter.send(cmd("pause"))
        assert rig.peer_state() == "paused"
        await until(reported(rig, lambda a: a.state == "paused"), WAIT, message="the timeline says paused")
        await adapter.send(cmd("play"))
        assert rig.peer_state() == "playing"
        await until(reported(rig, lambda a: a.state == "playing"), WAIT, message="the timeline says playing")


async def test_seek_moves_the_player_and_its_timeline(rig: Rig) -> None:
    """seekTo (offset in ms) moves the player, and on_state reports the new position."""
    async with rig.running() as adapter:
        await playing(rig, adapter)
        await adapter.send(cmd("seekTo", offset="90000"))
        assert rig.peer_position_ms() == 90000
        await until(reported(rig, lambda a: 90000 <= a.time < 90000 + 30000), WAIT,
                    message="the timeline is at 90 s")


async def test_stop_ends_playback_and_the_timeline_goes_stopped(rig: Rig) -> None:
    """stop ends playback, and on_state reports nothing active."""
    async with rig.running() as adapter:
        await playing(rig, adapter)
        await adapter.send(cmd("stop"))
        assert rig.peer_state() == "stopped"
        await until(lambda: last_active(rig) is None, WAIT, message="the timeline says stopped")


async def test_volume_reaches_the_player(rig: Rig) -> None:
    """setParameters volume (0..100) sets the player's volume."""
    async with rig.running() as adapter:
        await playing(rig, adapter)
        await adapter.send(cmd("setParameters", volume="30"))
        assert rig.peer_volume() == 30


async def test_a_change_made_on_the_player_reaches_on_state(rig: Rig) -> None:
    """What someone does on the player itself reaches on_state, without a command from us."""
    async with rig.running() as adapter:
        await playing(rig, adapter)
        await rig.press("paused", 42000)
        await until(reported(rig, lambda a: a.state == "paused" and a.time == 42000), WAIT,
                    message="the player's own pause reached on_state")


async def test_commands_outside_its_features_are_command_not_supported(rig: Rig) -> None:
    """send() of a command outside features raises CommandNotSupported naming it."""
    async with rig.running() as adapter:
        await rig.following(adapter)
        outside = [cmd("bogusCommand")] + [
            cmd(name, group="navigation") for name in ("moveUp", "select")
            if f"navigation/{name}" not in adapter.features]
        for command in outside:
            with pytest.raises(CommandNotSupported, match=command.name):
                await adapter.send(command)


async def test_a_malformed_command_is_our_error_not_a_library_one(rig: Rig) -> None:
    """A malformed parameter ends in a CompanionError, never a library or builtin exception."""
    async with rig.running() as adapter:
        await playing(rig, adapter)
        with pytest.raises(CompanionError):
            await adapter.send(cmd("seekTo", offset="soon"))


async def test_a_refusing_player_is_a_target_error_naming_the_target(rig: Rig) -> None:
    """A player that refuses to play gives a TargetError naming the target, without the token."""
    async with rig.running() as adapter:
        await rig.following(adapter)
        rig.refuse()
        with pytest.raises(TargetError) as refused:
            await adapter.play_media(REQUEST, play_command())
        assert not isinstance(refused.value, (CommandNotSupported, ProtocolError))
        assert adapter.target.name in str(refused.value)
        assert TOKEN not in str(refused.value)


async def test_a_silent_player_times_out_within_the_command_timeout_and_recovers(rig: Rig) -> None:
    """A player that stops answering: TargetTimeout within the timeout, unavailable; available again when it answers."""
    async with rig.running(command_timeout=0.3) as adapter:
        await playing(rig, adapter)
        rig.silence(True)
        with no_time_beyond(0.3 + 0.7), pytest.raises(TargetTimeout, match="0.3 s"):
            await adapter.send(cmd("pause"))
        assert not adapter.available
        assert rig.availability[-1] is False
        rig.silence(False)
        await adapter.send(cmd("pause"))
        assert adapter.available
        assert rig.availability[-1] is True


async def test_an_absent_player_never_fails_start_and_commands_say_unavailable(rig: Rig) -> None:
    """start() never raises for an absent player; it is unavailable and commands raise TargetUnavailable."""
    await rig.take_away()
    async with rig.running() as adapter:  # start() must not raise
        await until(lambda: not adapter.available, WAIT, message="the absent player reported unavailable")
        with no_time_beyond(2.0), pytest.raises(TargetUnavailable):
            await adapter.send(cmd("pause"))


async def test_a_player_that_leaves_and_returns_is_commanded_again(rig: Rig) -> None:
    """A player that leaves is reported gone (available, on_available); when it returns, commands reach it again."""
    async with rig.running() as adapter:
        await playing(rig, adapter)
        await rig.take_away()
        with pytest.raises((TargetUnavailable, TargetTimeout)):
            await adapter.send(cmd("pause"))
        await until(lambda: not adapter.available and rig.availability[-1:] == [False], WAIT,
                    message="the player reported gone, through on_available too")

        await rig.bring_back()

        async def pause_lands() -> bool:
            with contextlib.suppress(TargetUnavailable, TargetTimeout):
                await adapter.send(cmd("pause"))
                return True
            return False

        await until(pause_lands, WAIT, message="a command reached the returned player", interval=0.1)
        assert adapter.available
        assert rig.availability[-1] is True


async def test_stop_releases_every_connection_task_and_thread(rig: Rig) -> None:
    """stop() releases what the adapter holds: the player's connection or subscription, its tasks and threads."""
    threads_before = live_threads()
    adapter = rig.build(command_timeout=1.0)
    await adapter.start()
    try:
        await playing(rig, adapter)
        assert adapter_tasks(), "a following adapter runs at least one task of its own"
    finally:
        await adapter.stop()
    assert adapter_tasks() == [], "no task of the adapter outlives stop()"
    await until(rig.holds_nothing, WAIT, message="the player holds nothing of ours")
    await until(lambda: live_threads() <= threads_before, WAIT, message="no thread of the adapter left")
    seen = len(rig.states)
    await rig.press("paused", 1000)
    assert len(rig.states) == seen, "on_state is silent after stop()"
