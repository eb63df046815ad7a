"""The bounding helpers: throttled log lines with counts, per-source rate limits, who gives way
when a table is full, and the connection budget derived from the file limit."""

from __future__ import annotations

import logging

import pytest

from companion.limits import SourceRateLimit, ThrottledLog, connection_budget, heaviest_source


def test_a_throttled_line_goes_out_once_per_interval_and_the_next_one_counts_the_rest(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="test.throttle")
    throttle = ThrottledLog(logging.getLogger("test.throttle"), interval=60.0)
    assert throttle.log("401", 0.0, logging.WARNING, "refused %s", "a")
    for n in range(1000):
        assert not throttle.log("401", 1.0 + n * 0.05, logging.WARNING, "refused %s", "b")
    assert throttle.suppressed("401") == 1000
    assert throttle.log("421", 2.0, logging.WARNING, "another kind")  # each kind has its own line
    assert throttle.log("401", 61.0, logging.WARNING, "refused %s", "c")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["refused a", "another kind", "refused c (and 1000 more like it in the last 61 s)"]
    assert sum(1 for r in caplog.records if r.levelno == logging.DEBUG) == 1000


def test_throttled_keys_are_bounded() -> None:
    throttle = ThrottledLog(logging.getLogger("test.throttle"), max_keys=4)
    for n in range(100):
        throttle.log(n, 0.0, logging.DEBUG, "x")
    assert len(throttle._keys) == 4


def test_each_source_gets_its_burst_then_its_rate() -> None:
    limit = SourceRateLimit(rate=1.0, burst=5)
    assert [limit.allow("10.0.0.9", 0.0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert limit.allow("10.0.0.8", 0.0), "another address has its own bucket"
    assert not limit.allow("10.0.0.9", 0.5)
    assert limit.allow("10.0.0.9", 1.6)
    assert [limit.allow("10.0.0.9", 100.0) for _ in range(6)] == [True] * 5 + [False]


def test_the_total_rate_bounds_a_spoofer_rotating_addresses() -> None:
    limit = SourceRateLimit(rate=1.0, burst=5, total_rate=20.0)
    answered = sum(limit.allow(f"10.0.{n // 250}.{n % 250}", 0.0) for n in range(1000))
    assert answered == 40  # the total burst (two seconds' worth), whatever the addresses
    answered = sum(limit.allow(f"10.1.{n // 250}.{n % 250}", 1.0) for n in range(1000))
    assert answered == 20


def test_tracked_sources_are_bounded() -> None:
    limit = SourceRateLimit(rate=1.0, burst=1, max_sources=10)
    for n in range(100):
        limit.allow(f"10.0.0.{n}", 0.0)
    assert len(limit._buckets) == 10


def test_the_source_holding_the_most_gives_way_only_to_one_holding_clearly_less() -> None:
    assert heaviest_source({"evil": 32, "tv": 3}, "phone") == "evil"
    assert heaviest_source({"evil": 32, "tv": 3}, "evil") is None
    assert heaviest_source({"a": 2, "b": 2}, "b") is None
    assert heaviest_source({"a": 2, "b": 1}, "b") is None, "no churn between fair users"
    assert heaviest_source({}, "phone") is None


def test_inbound_connections_get_half_the_file_limit_so_raising_it_raises_the_budget() -> None:
    small = connection_budget(256, per_listener=256, per_source=32)
    assert (small.total, small.per_listener, small.per_source) == (128, 128, 32)
    unit = connection_budget(4096, per_listener=256, per_source=32)
    assert (unit.total, unit.per_listener) == (2048, 256)
    assert connection_budget(8, per_listener=256, per_source=32).total == 8
