"""The started parts of one owner, stopped in reverse order: every cleanup runs even when an
earlier one fails, and each failure is logged (a failed stop must not leave the rest running);
and the ``async with`` form of every part that has ``start()`` and ``stop()``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

log = logging.getLogger(__name__)

Cleanup = Callable[[], Awaitable[None] | None]


class Startable(Protocol):
    """A part with an async start and stop."""

    async def start(self) -> None:
        """Start the part (undoing what it did when it fails)."""

    async def stop(self) -> None:
        """Stop the part (idempotent)."""


_Part = TypeVar("_Part", bound=Startable)


class StartStopContext:
    """``async with part:`` starts a part on entry and stops it on the way out (a mixin)."""

    async def __aenter__(self: _Part) -> _Part:
        """Start the part; a start that fails has undone itself, so there is nothing to stop."""
        await self.start()
        return self

    async def __aexit__(self: Startable, *exc_info: object) -> None:
        """Stop the part, however the block ended."""
        await self.stop()


class Parts:
    """What an owner started, as an :class:`contextlib.AsyncExitStack` of named cleanups."""

    def __init__(self, owner: logging.Logger = log) -> None:
        self._stack = contextlib.AsyncExitStack()
        self._log = owner  # failures are logged where the owner logs
        self.failures: list[str] = []  # what failed to stop, in the order it was stopped

    def on_stop(self, what: str, cleanup: Cleanup) -> None:
        """Run ``cleanup`` (sync or async) at :meth:`stop`, before every cleanup added earlier."""

        async def run() -> None:
            try:
                result = cleanup()
                if result is not None:
                    await result
            except Exception as exc:  # any failure: it is logged, and the other parts still stop
                self.failures.append(what)
                self._log.error("stopping %s failed: %s", what, exc, exc_info=exc)

        self._stack.push_async_callback(run)

    async def stop(self) -> None:
        """Run every cleanup, last added first (idempotent: a second call finds none left)."""
        await self._stack.aclose()
