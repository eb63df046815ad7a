"""A bridge on the test LAN (tests.netlab) with an attacker host beside it.

The bridge runs in the test process, which joins the LAN (``join_self``): it speaks GDM on the LAN
address and its HTTP listeners bind every address, so the attacker reaches them over the veth
pair from its own namespace and address, while the legitimate phone (python-plexapi, FakeController)
and the real TV (FakeCompanionPlayer) talk to it over loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from companion.bridge import Bridge
from tests.fakes.companion_player import FakeCompanionPlayer
from tests.helpers import bridge_config, free_port, until
from tests.netlab import Host, Lan

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Scene:
    lan: Lan
    bridge: Bridge
    player: FakeCompanionPlayer
    attacker: Host

    @property
    def me(self) -> str:
        assert self.lan.self_address is not None
        return self.lan.self_address

    def tv_face_port(self) -> int:
        """The configured TV's face port."""
        return next(s.face.port for s in self.bridge.faces.values() if s.target.source == "config")

    def discovered_faces(self) -> int:
        return sum(1 for s in self.bridge.faces.values() if s.target.source != "config")


async def attack(host: Host, *args: str, timeout: float = 60.0) -> dict[str, Any]:
    """Run one attacker command (tests/hardening/attacker.py) inside ``host``; its JSON report."""
    done = await asyncio.to_thread(host.run, *host.python("-m", "tests.hardening.attacker", *args),
                                   timeout=timeout, env={"PYTHONPATH": str(ROOT)})
    lines = done.stdout.decode().strip().splitlines()
    assert lines, f"the attacker printed nothing: {done.stderr.decode()[-2000:]}"
    report: dict[str, Any] = json.loads(lines[-1])
    return report


@contextlib.asynccontextmanager
async def scene(tmp_path: Path, extra: str = "", *, timeouts: dict[str, float] | None = None,
                hosts: tuple[str, ...] = ("attacker",), admin: bool = False) -> AsyncIterator[Scene]:
    """The LAN, a real TV (configured target) and the bridge bridging it, started; all torn down after."""
    async with Lan(*hosts, join_self=True) as lan:
        assert lan.self_address is not None
        player = FakeCompanionPlayer(name="Real TV", product="Lab TV")
        await player.start()
        try:
            text = f"targets:\n  - {{name: Real TV, address: 127.0.0.1, port: {player.port}}}\n{extra}"
            config = bridge_config(tmp_path, text, timeouts=timeouts)
            config = dataclasses.replace(config, interfaces=(lan.self_address,),
                                         http=dataclasses.replace(config.http, bind="0.0.0.0",
                                                                  admin_port=free_port() if admin else 0))
            async with Bridge(config) as bridge:
                await until(lambda: len(bridge.faces) >= 1, timeout=10, message="the TV's face open")
                yield Scene(lan=lan, bridge=bridge, player=player, attacker=lan[hosts[0]])
        finally:
            await player.stop()


def open_fds() -> int:
    """Descriptors this process holds now."""
    return len(os.listdir("/proc/self/fd"))
