"""Stopping what an owner started: reverse order, every cleanup runs, each failure is logged."""

from __future__ import annotations

import logging

import pytest

from companion.parts import Parts


class Part:
    """A small real part: it records its stop in a shared journal; a broken one raises instead."""

    def __init__(self, name: str, journal: list[str], *, broken: bool = False) -> None:
        self.name = name
        self.journal = journal
        self.broken = broken
        self.running = True

    async def stop(self) -> None:
        if self.broken:
            raise OSError(f"{self.name} lost its socket")
        self.running = False
        self.journal.append(self.name)


async def test_every_part_stops_in_reverse_order_even_past_failing_ones(caplog: pytest.LogCaptureFixture) -> None:
    journal: list[str] = []
    parts = Parts(logging.getLogger("tests.owner"))
    first = Part("first", journal)
    broken_early = Part("broken-early", journal, broken=True)
    middle = Part("middle", journal)
    broken_late = Part("broken-late", journal, broken=True)
    closed: list[str] = []
    parts.on_stop("the first part", first.stop)
    parts.on_stop("the early broken part", broken_early.stop)
    parts.on_stop("a plain callback", lambda: closed.append("callback"))
    parts.on_stop("the middle part", middle.stop)
    parts.on_stop("the late broken part", broken_late.stop)
    with caplog.at_level(logging.ERROR, logger="tests.owner"):
        await parts.stop()  # does not raise: the failures are logged
    assert journal == ["middle", "first"], "every working part stopped, last started first"
    assert closed == ["callback"]
    assert parts.failures == ["the late broken part", "the early broken part"]
    messages = [r.getMessage() for r in caplog.records if r.name == "tests.owner" and r.levelno >= logging.ERROR]
    assert messages == ["stopping the late broken part failed: broken-late lost its socket",
                        "stopping the early broken part failed: broken-early lost its socket"]
    assert all(r.exc_info is not None for r in caplog.records if r.name == "tests.owner"), "each with its traceback"


async def test_a_second_stop_runs_nothing_again() -> None:
    journal: list[str] = []
    parts = Parts()
    parts.on_stop("the part", Part("part", journal).stop)
    await parts.stop()
    await parts.stop()
    assert journal == ["part"]
