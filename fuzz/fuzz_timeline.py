"""Fuzz the player timeline XML parser (pushes to /:/timeline and poll answers from real players)."""

from __future__ import annotations

import _harness

from companion.proto.timeline import parse_player_timeline, render


def body(data: bytes) -> None:
    state = parse_player_timeline(data)
    for entry in state.entries.values():
        assert entry.time >= 0
        assert entry.duration >= 0
        assert all(k.lower() != "token" for k in entry.extra), "a token attribute was kept"
    # What was parsed renders back, metadata included (a controller may ask for it).
    render(state, command_id=1, machine_identifier="f", include_metadata=True)


SEEDS = sorted((_harness.DATA / "timeline").glob("*.xml"))

if __name__ == "__main__":
    _harness.main(body)
