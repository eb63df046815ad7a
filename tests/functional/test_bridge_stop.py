"""Stopping a bridge: a part that fails to stop leaves no other part running, and each failure is logged."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

import pytest

from companion.bridge import Bridge
from companion.errors import StateError
from tests.fakes.companion_player import FakeCompanionPlayer
from tests.helpers import bridge_config, free_port, until


async def refuses(port: int) -> bool:
    """True when nothing listens on the loopback ``port`` any more."""
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    await writer.wait_closed()
    return False


async def test_a_part_failing_to_stop_leaves_no_other_part_running(
        tmp_path: Path, player: FakeCompanionPlayer, caplog: pytest.LogCaptureFixture) -> None:
    config = bridge_config(tmp_path, f"targets:\n  - {{name: Den, address: 127.0.0.1, port: {player.port}}}\n"
                                     "security: {relay: true}\n")
    config = dataclasses.replace(config, http=dataclasses.replace(config.http, admin_port=free_port()))
    bridge = Bridge(config)
    await bridge.start()
    relay, admin, listener, session = bridge.relay, bridge.admin, bridge._listener, bridge._session
    assert relay is not None and admin is not None and listener is not None and session is not None
    await until(lambda: len(bridge.faces) == 1, message="the face of Den")
    face_port = next(iter(bridge.faces.values())).face.port
    relay_stop, admin_stop = relay.stop, admin.stop

    async def relay_breaks() -> None:  # fails before it stops anything
        raise OSError("the relay lost its socket")

    async def admin_breaks() -> None:  # stops, then fails
        await admin_stop()
        raise StateError("the admin page could not flush its state")

    relay.stop = relay_breaks  # type: ignore[method-assign]
    admin.stop = admin_breaks  # type: ignore[method-assign]
    caplog.set_level(logging.ERROR, logger="companion.bridge")
    try:
        await bridge.stop()  # does not raise: every other part still stops
        for what, port in (("the face", face_port), ("the timeline listener", listener.port),
                           ("the admin page", admin.port)):
            assert await refuses(port), f"{what} still listens on {port} after a stop that met failures"
        assert not await refuses(relay.port), "the relay's failed stop left it as it was"
        assert session.closed, "the HTTP client session was left open"
        assert bridge.faces == {} and bridge.relay is None and bridge.admin is None
        with pytest.raises(StateError, match="not open"):
            bridge.audit.recent()
        failures = [r.getMessage() for r in caplog.records
                    if r.name == "companion.bridge" and r.levelno >= logging.ERROR]
        assert failures == ["stopping the admin server failed: the admin page could not flush its state",
                            "stopping the relay failed: the relay lost its socket"], failures
    finally:
        await relay_stop()


async def test_async_with_stops_the_bridge_when_the_block_fails(tmp_path: Path, player: FakeCompanionPlayer) -> None:
    config = bridge_config(tmp_path, f"targets:\n  - {{name: Den, address: 127.0.0.1, port: {player.port}}}\n")
    ports: list[int] = []
    bridges: list[Bridge] = []

    async def run() -> None:
        async with Bridge(config) as bridge:
            bridges.append(bridge)
            await until(lambda: len(bridge.faces) == 1, message="the face of Den")
            ports.append(next(iter(bridge.faces.values())).face.port)
            raise RuntimeError("the block failed")

    with pytest.raises(RuntimeError, match="the block failed"):
        await run()
    assert ports and await refuses(ports[0]), "the face still listens after the block"
    assert bridges[0].faces == {}
