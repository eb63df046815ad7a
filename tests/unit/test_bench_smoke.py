"""The benchmark runner's own logic: percentiles, verdicts, the table, the netns guard.

The benchmarks themselves take minutes; `make bench` runs them. These tests pin what the runner
promises on its own: the right percentile, a verdict per row, one aligned table.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import run  # noqa: E402
from common import BenchError, Result, percentile  # noqa: E402


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([3.0], 99) == 3.0


def test_percentile_of_nothing_is_a_bench_error() -> None:
    with pytest.raises(BenchError, match="no values"):
        percentile([], 50)


def test_smoke_rows_are_never_judged_and_failures_say_so() -> None:
    met = Result("a", "1", "2", "0.5", "g", meets=True)
    missed = Result("b", "1", "2", "0.5", "g", meets=False)
    broken = Result("c", "-", "-", "-", "-", meets=None, note="FAILED: boom")
    assert [r.verdict(smoke=False) for r in (met, missed, broken)] == ["meets", "misses", "FAILED: boom"]
    assert [r.verdict(smoke=True) for r in (met, missed)] == ["smoke: not judged"] * 2


def test_table_has_one_aligned_row_per_benchmark() -> None:
    rows = [Result("command_rtt", "p50 1 ms", "p50 0.6 ms", "1.7x", "<= 2x", meets=True),
            Result("memory", "80 MB", "68 MB", "+12 MB", "<= +40 MB", meets=False)]
    lines = run.table(rows, smoke=False).splitlines()
    assert lines[0].split(" | ")[0].strip() == "name"
    assert [line.split(" | ")[0].strip() for line in lines[2:]] == ["command_rtt", "memory"]
    assert lines[2].split(" | ")[-1] == "meets" and lines[3].split(" | ")[-1] == "misses"
    assert len({line.index("|") for line in lines if "|" in line}) == 1


def test_runner_refuses_to_run_outside_the_namespace(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("COMPANION_IN_NETNS", raising=False)
    assert run.main(["--smoke", "--only", "decision"]) == 2
    assert "netns-run" in capsys.readouterr().err
