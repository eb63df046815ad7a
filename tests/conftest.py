"""Suite-wide guards: no thread may outlive a test, and the suite must run in its own netns."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("COMPANION_IN_NETNS") != "1":
        raise pytest.UsageError(
            "run the suite through scripts/netns-run (make test): GDM and mDNS tests use multicast, "
            "which must stay inside a private network namespace")


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    before = {t.ident for t in threading.enumerate()}
    yield
    deadline = time.monotonic() + 3.0
    for thread in threading.enumerate():
        if thread.ident not in before:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))  # bounded: threads already ending
    leaked = [t.name for t in threading.enumerate() if t.ident not in before and t.is_alive()]
    assert not leaked, f"threads left running after the test: {leaked}"
