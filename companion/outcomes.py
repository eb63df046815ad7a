"""Fling outcomes: did the target actually play what it was flung? Judged from its timeline.

:class:`PlaybackJudge` is pure (no sockets, no event loop, no clock reads): it takes the player
states the target reports after a fling and says ``ok`` (it is playing), ``failed`` (an error, a
stop after it started, or no playing before the watch ends), or nothing yet. :class:`OutcomeWatch`
is its thin asyncio shell: the bridge feeds it the target's states and waits on it for at most
``timeouts.outcome`` seconds.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Literal

from companion.proto.timeline import MEDIA_TYPES, PlayerState

# "superseded": a newer fling to the same target came before this one's outcome was known; it
# counts neither for nor against the profile.
Result = Literal["ok", "failed", "superseded"]
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@dataclass(frozen=True)
class Outcome:
    """How a fling ended on the target: ``ok`` or ``failed``, and why, in words a person can use."""

    result: Result
    reason: str


class PlaybackJudge:
    """Watches one fling's timeline.

    The first state a target reports after a fling may still be its old one (a player pushes its
    current state as soon as it gets the command), so a stop counts only once the target has shown
    that it took the fling (it buffered, paused or played); before that, only an error ends the
    watch early. ``playing`` of the flung key (or of an unnamed item, or of anything once the
    target has shown that it took the fling) is success; a target still playing its previous item
    is not.
    """

    def __init__(self, key: str) -> None:
        self.key = key
        self.started = False  # the target showed it took the fling (buffering, paused, playing)
        self.buffered = False
        self.states = 0
        self.last = "nothing"
        self.outcome: Outcome | None = None

    def observe(self, state: PlayerState) -> Outcome | None:
        """Take one reported state; the outcome once it is known (and from then on), else None."""
        if self.outcome is not None:
            return self.outcome
        self.states += 1
        for media_type in MEDIA_TYPES:
            entry = state.entries.get(media_type)
            if entry is not None and entry.state == "error":
                # The player's own words come off the network and go to the log and the audit:
                # bounded, and without control characters (no forged log lines).
                detail = _CONTROL.sub("?", (entry.extra.get("error") or entry.extra.get("errorMessage") or "")[:200])
                self.last = "error"
                return self._end("failed", "the player reported an error" + (f": {detail}" if detail else ""))
        active = state.active
        if active is None:
            self.last = "stopped"
            if self.started:
                was = "buffering" if self.buffered else "starting"
                return self._end("failed", f"the player stopped while {was}, before it played")
            return None
        self.last = active.state
        ours = not active.key or not self.key or active.key == self.key
        if active.state == "playing" and (ours or self.started):
            return self._end("ok", "the player is playing")
        if ours or self.states > 1:
            self.started = True
            self.buffered = self.buffered or active.state == "buffering"
        return None

    def expire(self, seconds: float) -> Outcome:
        """The watch ran out: success only if it already played; else why not."""
        if self.outcome is not None:
            return self.outcome
        if self.last == "buffering":
            return self._end("failed", f"the player was still buffering after {seconds:g} s")
        if self.last == "paused":
            return self._end("failed", f"the player stayed paused for {seconds:g} s without playing")
        return self._end("failed", f"the player did not start playing within {seconds:g} s "
                                   f"(last state: {self.last})")

    def _end(self, result: Result, reason: str) -> Outcome:
        self.outcome = Outcome(result, reason)
        return self.outcome


class OutcomeWatch:
    """One fling's outcome, awaited: states go in through :meth:`observe`, :meth:`wait` is bounded."""

    def __init__(self, key: str) -> None:
        self.judge = PlaybackJudge(key)
        self._known = asyncio.Event()

    def observe(self, state: PlayerState) -> None:
        """Take a state the target reported (called from the adapter's state callback)."""
        if self.judge.observe(state) is not None:
            self._known.set()

    def supersede(self) -> None:
        """A newer fling went to the same target: stop judging this one."""
        if self.judge.outcome is None:
            self.judge.outcome = Outcome("superseded", "a newer fling to this target came first")
        self._known.set()

    async def wait(self, timeout: float) -> Outcome:
        """The outcome as soon as it is known, or the judge's verdict after ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                await self._known.wait()
        except TimeoutError:
            return self.judge.expire(timeout)
        assert self.judge.outcome is not None
        return self.judge.outcome
