"""The systemd notification channel: messages reach a NOTIFY_SOCKET in order, and nothing breaks without one."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from companion.sdnotify import Notifier


@pytest.fixture
def path_socket() -> Iterator[tuple[str, socket.socket]]:
    # A short directory of our own: AF_UNIX paths are limited to 107 bytes and pytest's tmp_path
    # can be longer.
    with tempfile.TemporaryDirectory(prefix="sdn-") as top:
        path = os.path.join(top, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(2.0)
        try:
            yield path, sock
        finally:
            sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[str, socket.socket]]:
    name = f"companion-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2.0)
    try:
        yield "@" + name, sock
    finally:
        sock.close()


def lifecycle(notifier: Notifier) -> None:
    notifier.ready()
    notifier.watchdog()
    notifier.status("serving 3 faces\nadmin on :32480")
    notifier.stopping()


EXPECTED = [b"READY=1", b"WATCHDOG=1", b"STATUS=serving 3 faces admin on :32480", b"STOPPING=1"]


@pytest.mark.parametrize("which", ["path_socket", "abstract_socket"])
def test_daemon_lifecycle_messages_reach_notify_socket_in_order(
    which: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    address, sock = request.getfixturevalue(which)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    with Notifier() as notifier:
        assert notifier.enabled
        lifecycle(notifier)
    assert [sock.recv(4096) for _ in EXPECTED] == EXPECTED


def test_explicit_socket_path_wins_over_environment(
    path_socket: tuple[str, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "@companion-test-nobody-listens")
    path, sock = path_socket
    with Notifier(path) as notifier:
        notifier.ready()
    assert sock.recv(4096) == b"READY=1"


def test_reloading_carries_the_monotonic_time_it_was_sent(path_socket: tuple[str, socket.socket]) -> None:
    path, sock = path_socket
    before = time.monotonic_ns() // 1000
    with Notifier(path) as notifier:
        notifier.reloading()
        notifier.ready()
    after = time.monotonic_ns() // 1000
    first, stamp = sock.recv(4096).decode().split("\n")
    assert first == "RELOADING=1"
    key, value = stamp.split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after
    assert sock.recv(4096) == b"READY=1"


def test_without_notify_socket_every_call_is_a_silent_no_op(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    caplog.set_level(logging.DEBUG, logger="companion.sdnotify")
    notifier = Notifier()
    assert not notifier.enabled
    lifecycle(notifier)
    notifier.reloading()
    assert notifier.watchdog_interval() is None
    notifier.close()
    notifier.close()
    assert caplog.records == []


def test_unreachable_socket_never_raises_and_logs_once_at_debug(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="companion.sdnotify")
    with Notifier(str(tmp_path / "nobody-listens")) as notifier:
        lifecycle(notifier)
    assert [(r.levelno, r.name) for r in caplog.records] == [(logging.DEBUG, "companion.sdnotify")]
    assert "nobody-listens" in caplog.records[0].getMessage()


def test_messages_after_close_are_dropped(path_socket: tuple[str, socket.socket]) -> None:
    path, sock = path_socket
    notifier = Notifier(path)
    notifier.close()
    notifier.ready()
    notifier.status("after close")
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(4096)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "<self>"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # inherited from a parent
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_comes_from_watchdog_usec_for_this_process(
    path_socket: tuple[str, socket.socket], env: dict[str, str], expected: float | None
) -> None:
    path, _ = path_socket
    env = {k: (str(os.getpid()) if v == "<self>" else v) for k, v in env.items()}
    with Notifier(environ={"NOTIFY_SOCKET": path, **env}) as notifier:
        assert notifier.watchdog_interval() == expected
        assert notifier.ping_period() == (None if expected is None else expected / 2)
