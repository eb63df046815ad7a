"""Suite-wide guards: no thread, task or connection may outlive a test; tests beyond tests/unit run
in a private netns."""

from __future__ import annotations

import asyncio
import asyncio.selector_events
import os
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

_ANYWHERE = Path(__file__).resolve().parent / "unit"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Unit tests (pure code, no sockets beyond loopback) run on any machine; everything else
    sends GDM or mDNS multicast or builds network namespaces, so it must run inside the private
    namespace scripts/netns-run makes (as root)."""
    if os.environ.get("COMPANION_IN_NETNS") == "1":
        return
    outside = [item.nodeid for item in items if _ANYWHERE not in Path(str(item.path)).resolve().parents]
    if outside:
        raise pytest.UsageError(
            f"{len(outside)} collected test(s) use multicast or network namespaces (e.g. {outside[0]}): run "
            "them through scripts/netns-run (make test, as root); only tests/unit runs anywhere "
            "(pytest tests/unit)")


# Every asyncio socket transport the suite makes, to find those still open when their loop has
# closed. Such a transport is otherwise reported only when the garbage collector reaches it (an
# "unclosed transport" warning), in whichever later test that happens to be. The class is
# asyncio's own (private, so typed Any here): every TCP and UDP transport of the selector loop.
_SELECTOR_TRANSPORT: Any = getattr(asyncio.selector_events, "_SelectorTransport")  # noqa: B009
_TRANSPORTS: weakref.WeakSet[Any] = weakref.WeakSet()
_made = _SELECTOR_TRANSPORT.__init__


def _tracked(self: Any, *args: Any, **kwargs: Any) -> None:
    _made(self, *args, **kwargs)
    _TRANSPORTS.add(self)


_SELECTOR_TRANSPORT.__init__ = _tracked


def _describe(transport: Any) -> str:
    sock = transport._sock
    try:
        ends = f"{sock.getsockname()} -> {sock.getpeername()}"
    except OSError:
        ends = "not connected"
    protocol = transport.get_protocol()
    return f"{type(protocol).__module__}.{type(protocol).__qualname__} {ends}"


@pytest.fixture(autouse=True)
def no_leaked_connections() -> Iterator[None]:
    """No socket transport may be left open when its event loop has closed. First among the
    autouse fixtures, so this runs after the test's loop is closed; the sockets found are closed
    here, so the test that left them is the one that fails."""
    yield
    left = [t for t in list(_TRANSPORTS) if t._sock is not None and t._loop.is_closed()]
    described = [_describe(t) for t in left]
    for transport in left:
        transport._sock.close()
        transport._sock = None
    assert not left, f"connections left open after the test's event loop closed: {described}"


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    before = {t.ident for t in threading.enumerate()}
    yield
    deadline = time.monotonic() + 3.0
    for thread in threading.enumerate():
        if thread.ident not in before and not thread.name.startswith("asyncio_"):
            thread.join(timeout=max(0.0, deadline - time.monotonic()))  # bounded: threads already ending
    # asyncio_N are the event loop's default executor, shut down with the loop itself.
    leaked = [t.name for t in threading.enumerate()
              if t.ident not in before and t.is_alive() and not t.name.startswith("asyncio_")]
    assert not leaked, f"threads left running after the test: {leaked}"


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Every task a test (or the code under test) started must be finished when it ends."""
    yield
    current = asyncio.current_task()
    for _ in range(5):  # let tasks that were just cancelled run their last step
        await asyncio.sleep(0)
    leaked = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    assert not leaked, f"tasks left running after the test: {[(t.get_name(), t.get_coro()) for t in leaked]}"
