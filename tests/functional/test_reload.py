"""Reloading (SIGHUP) takes new policies, servers and targets while every face stays up."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from companion.bridge import Bridge
from companion.config import parse_config
from tests.fakes.companion_player import FakeCompanionPlayer
from tests.helpers import bridge_config, until


async def test_reload_adds_targets_and_servers_and_keeps_existing_faces(tmp_path: Path) -> None:
    den, attic = FakeCompanionPlayer(name="Den TV"), FakeCompanionPlayer(name="Attic TV")
    await den.start()
    await attic.start()
    one = f"targets:\n  - {{name: Den TV, address: 127.0.0.1, port: {den.port}}}\n"
    config = bridge_config(tmp_path, one)
    try:
        async with Bridge(config) as bridge:
            await until(lambda: len(bridge.faces) == 1, message="the Den face")
            den_face = next(iter(bridge.faces.values())).face
            two = parse_config(f"""
security: {{policy: required}}
servers:
  - {{url: "https://127.0.0.1:32999", token: "abcdefgh1234"}}
targets:
  - {{name: Den TV, address: 127.0.0.1, port: {den.port}}}
  - {{name: Attic TV, address: 127.0.0.1, port: {attic.port}}}
""", "reloaded.yaml")
            await bridge.reload(dataclasses.replace(two, state_dir=config.state_dir))
            await until(lambda: len(bridge.faces) == 2, message="a face for the target added by the reload")
            assert any(s.face is den_face for s in bridge.faces.values()), "the existing face was not replaced"
            assert bridge.flings is not None
            assert bridge.flings.config.security.policy == "required"
            assert [s.port for s in bridge.registry.servers()] == [32999]
            assert bridge.config.http == config.http, "listening addresses stay until a restart"
    finally:
        await den.stop()
        await attic.stop()
