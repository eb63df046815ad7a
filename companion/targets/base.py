"""The one interface every target adapter implements (Companion player, Chromecast).

Shaped after pyatv: a declared feature set, and a typed "not supported" for the rest. Adapters
translate their library's errors into TargetError subclasses, and report playback state as a
:class:`~companion.proto.timeline.PlayerState` through the ``on_state`` callback they are given.
tests/functional/test_target_contract.py holds every adapter to this interface (a new adapter
joins it with one rig fixture), as pyatv runs one functional suite against every protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from companion.model import Command, MediaRequest, Target
from companion.proto.timeline import PlayerState

StateCallback = Callable[[PlayerState], None]
AvailabilityCallback = Callable[[bool], None]

# Companion command names (``/player/playback/<name>`` etc.) a target may support.
PLAYBACK_COMMANDS = frozenset({
    "playMedia", "play", "pause", "stop", "seekTo", "skipNext", "skipPrevious", "skipTo",
    "stepForward", "stepBack", "setParameters", "setStreams", "refreshPlayQueue", "createPlayQueue",
})


class TargetAdapter(Protocol):
    """A connection to one real player."""

    target: Target

    @property
    def features(self) -> frozenset[str]:
        """Companion command paths this target supports, e.g. ``"playback/pause"``, ``"mirror/details"``."""
        ...

    @property
    def capabilities(self) -> tuple[str, ...]:
        """Protocol-Capabilities to advertise for this target's face (timeline, playback, ...)."""
        ...

    @property
    def available(self) -> bool:
        """False while the real player is unreachable."""
        ...

    async def start(self) -> None:
        """Connect and begin following the player's state; never raises for an absent player."""
        ...

    async def stop(self) -> None:
        """Release every connection, task and thread this adapter owns."""
        ...

    async def send(self, command: Command) -> None:
        """Carry one command (not playMedia) to the player.

        Raises TargetTimeout, TargetUnavailable or CommandNotSupported.
        """
        ...

    async def play_media(self, request: MediaRequest, command: Command) -> None:
        """Carry a playMedia whose server block the decision has already rewritten."""
        ...
