"""Log format: timestamps in a terminal, none (and syslog priorities) under systemd's journal."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from companion.cli import setup_logging


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _format(record_level: int) -> str:
    handler = logging.getLogger().handlers[0]
    record = logging.LogRecord("companion.test", record_level, __file__, 1, "hello %s", ("world",), None)
    return handler.format(record)


def test_terminal_logs_carry_timestamps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    setup_logging("info")
    line = _format(logging.WARNING)
    assert line.endswith("WARNING companion.test: hello world")
    assert line[:4].isdigit(), "starts with the date"


def test_journal_logs_have_no_timestamp_but_a_priority(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    setup_logging("debug")
    assert _format(logging.WARNING) == "<4>companion.test: hello world"
    assert _format(logging.ERROR) == "<3>companion.test: hello world"
    assert logging.getLogger().level == logging.DEBUG
