"""The systemd notification channel: READY, RELOADING, STOPPING, WATCHDOG and STATUS datagrams.

Owns the one AF_UNIX datagram socket to ``$NOTIFY_SOCKET`` (a path, or an abstract name written
with a leading '@'). Without a socket, outside systemd or under ``Type=simple``, every method is a
no-op, so the daemon calls them unconditionally. A failed send never raises: losing a status line
must not take the daemon down; the first failure is logged at debug.

The socket is non-blocking because the daemon calls this from its event loop; systemd drains
the queue continuously, so a full queue (the only case a send would block) is not expected.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

__all__ = ["Notifier"]

_log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify(3) messages to the service manager, or nothing when there is none."""

    def __init__(self, socket_path: str | None = None, *,
                 environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "") if socket_path is None else socket_path
        self._address: str | None = None
        if path.startswith("@"):
            self._address = "\0" + path[1:]
        elif path.startswith("/"):
            self._address = path
        # Anything else (empty, relative, vsock's "vsock:") is not a socket we can talk to.
        self._sock: socket.socket | None = None
        self._failed_once = False
        self._watchdog_s = _watchdog_interval(env) if self._address is not None else None
        if self._address is not None:
            try:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            except OSError as exc:
                self._note_failure(exc)
                self._sock = None

    def __repr__(self) -> str:
        shown = None if self._address is None else self._address.replace("\0", "@")
        return f"Notifier(socket={shown!r}, watchdog={self._watchdog_s!r})"

    @property
    def enabled(self) -> bool:
        """Whether messages go anywhere (a socket was given and is still open)."""
        return self._sock is not None

    def ready(self) -> None:
        """Startup (or a reload) is complete: the daemon serves."""
        self._send("READY=1")

    def reloading(self) -> None:
        """A reload starts; send :meth:`ready` when it is done."""
        # systemd pairs RELOADING=1 with the CLOCK_MONOTONIC time it was sent, which is the
        # clock time.monotonic_ns() reads on Linux.
        self._send(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self) -> None:
        """Shutdown has begun."""
        self._send("STOPPING=1")

    def watchdog(self) -> None:
        """The event loop is alive (send every :meth:`ping_period` seconds)."""
        self._send("WATCHDOG=1")

    def status(self, text: str) -> None:
        """A one-line status for ``systemctl status``; newlines become spaces."""
        one_line = " ".join(text.splitlines())
        self._send(f"STATUS={one_line}")

    def watchdog_interval(self) -> float | None:
        """The watchdog timeout in seconds (WatchdogSec=), or None when no watchdog is armed for us.

        None when WATCHDOG_USEC is unset or invalid, when WATCHDOG_PID names another process
        (the variables were inherited), or when there is no notify socket. Ping at half of it.
        """
        return self._watchdog_s

    def ping_period(self) -> float | None:
        """How often to send :meth:`watchdog`: half the interval, as sd_watchdog_enabled(3) advises."""
        return None if self._watchdog_s is None else self._watchdog_s / 2

    def close(self) -> None:
        """Close the socket (idempotent); later messages are dropped."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, message: str) -> None:
        if self._sock is None or self._address is None:
            return
        try:
            self._sock.sendto(message.encode("utf-8", "replace"), self._address)
        except OSError as exc:
            self._note_failure(exc)

    def _note_failure(self, exc: OSError) -> None:
        if not self._failed_once:
            self._failed_once = True
            _log.debug("sd_notify to %r failed (further failures not logged): %s",
                       (self._address or "").replace("\0", "@"), exc)


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid is not None:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 1_000_000
