"""Fuzz the player timeline XML parser (pushes to /:/timeline and poll answers from real players)."""

from __future__ import annotations

import _harness

from companion.proto.timeline import parse_player_timeline


def body(data: bytes) -> None:
    state = parse_player_timeline(data)
    for entry in state.entries.values():
        assert entry.time >= 0
        assert entry.duration >= 0
        assert all(k.lower() != "token" for k in entry.extra), "a token attribute was kept"


SEEDS = sorted((_harness.DATA / "timeline").glob("*.xml"))

if __name__ == "__main__":
    _harness.main(body)
