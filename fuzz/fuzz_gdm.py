"""Fuzz the GDM datagram codec: parse(), then turning any parsed advert into a sighting."""

from __future__ import annotations

import _harness

from companion.proto import gdm


def body(data: bytes) -> None:
    message = gdm.parse(data)
    assert message.kind in ("search", "reply", "hello", "bye"), message.kind
    if message.kind != "search":
        sighting = gdm.sighting_from_message(message, "127.0.0.1")
        # Names end up in logs and terminals: the codec must have cleaned them.
        assert "\x00" not in sighting.name


SEEDS = sorted((_harness.DATA / "gdm").glob("*.gdm"))

if __name__ == "__main__":
    _harness.main(body)
