"""Fuzz the device profile parser: any text is a Profile or a ProfileError naming file and line."""

from __future__ import annotations

import _harness

from companion.errors import ProfileError
from companion.security.profiles import parse_profile


def body(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    try:
        parse_profile(text, "fuzz.yaml")
    except ProfileError as exc:
        if exc.path != "fuzz.yaml":
            raise AssertionError(f"the error does not name the file: {exc}") from exc
        raise


SEEDS = sorted((_harness.DATA / "profiles").rglob("devices/*.yaml"))

if __name__ == "__main__":
    _harness.main(body)
