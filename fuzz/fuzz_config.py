"""Fuzz the YAML configuration loader: any text is a Config or a ConfigError naming where."""

from __future__ import annotations

import _harness

from companion.config import parse_config
from companion.errors import ConfigError


def body(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    try:
        parse_config(text, "fuzz.yaml")
    except ConfigError as exc:
        if exc.path != "fuzz.yaml":
            raise AssertionError(f"the error does not name the file: {exc}") from exc
        raise


SEEDS: list[object] = []

if __name__ == "__main__":
    _harness.main(body)
