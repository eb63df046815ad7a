"""Shared plumbing of the atheris harnesses: instrumented imports, the typed-error contract, seeds.

Every harness feeds one parser arbitrary input and lets only ``CompanionError`` subclasses pass;
any other exception (or a failed invariant) is a crash that atheris reports with its input.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
# Recognisable secret: a harness may put it into an input and check no error message echoes it.
TOKEN = "FUZZ-TOKEN-7d1e3c9a"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

with atheris.instrument_imports(include=["companion"]):
    import companion.config
    import companion.lab.hello
    import companion.proto.companion
    import companion.proto.gdm
    import companion.proto.timeline
    import companion.security.profiles  # noqa: F401

from companion.errors import CompanionError  # noqa: E402

# Bugs already reported, each pinned by a failing test in tests/hardening: (exception type name,
# the innermost companion function it escaped from, pinning test). With
# COMPANION_FUZZ_IGNORE_KNOWN=1 (run.py --ignore-known) they are not crashes, so a run keeps
# exploring for new ones. Remove an entry once it is fixed.
KNOWN_BUGS: tuple[tuple[str, str, str], ...] = ()


def _known(exc: BaseException) -> bool:
    if os.environ.get("COMPANION_FUZZ_IGNORE_KNOWN") != "1":
        return False
    where = ""
    tb = exc.__traceback__
    while tb is not None:
        if f"{os.sep}companion{os.sep}" in tb.tb_frame.f_code.co_filename:
            where = tb.tb_frame.f_code.co_name
        tb = tb.tb_next
    return any(type(exc).__name__ == kind and where == func for kind, func, _ in KNOWN_BUGS)


def typed_errors_only(body: Callable[[bytes], None]) -> Callable[[bytes], None]:
    """Wrap a harness body: CompanionError is an accepted outcome, anything else propagates."""

    def one_input(data: bytes) -> None:
        try:
            body(data)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError) as exc:
            if not _known(exc):
                raise
        except CompanionError as exc:
            message = str(exc)
            if not message:
                raise AssertionError(f"{type(exc).__name__} without a message") from exc
            if TOKEN in message:
                raise AssertionError(f"{type(exc).__name__} echoes a token: {message[:200]!r}") from exc

    return one_input


def main(body: Callable[[bytes], None]) -> None:
    """Run the harness under libFuzzer with the command line's flags (-max_total_time=N, corpus dirs)."""
    sys.setrecursionlimit(2000)
    atheris.Setup(sys.argv, typed_errors_only(body))
    atheris.Fuzz()
