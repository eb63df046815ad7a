"""Fixtures for whole-daemon tests: a running Bridge on loopback test ports, and fake peers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from companion.bridge import Bridge
from companion.config import Config
from tests.fakes.companion_player import FakeCompanionPlayer
from tests.fakes.gdm_peer import FakeGdmPeer
from tests.fakes.plex_server import FakePlexServer
from tests.helpers import bridge_config
from tests.lab import TOKEN


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return bridge_config(tmp_path)


@pytest.fixture
async def player() -> AsyncIterator[FakeCompanionPlayer]:
    fake = FakeCompanionPlayer(name="Living Room TV", product="Plex for Roku")
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def player_gdm(config: Config, player: FakeCompanionPlayer) -> AsyncIterator[FakeGdmPeer]:
    """The fake player's GDM side: answers the bridge's searches on the test group and port."""
    peer = FakeGdmPeer("player", headers={
        "Resource-Identifier": player.ident, "Name": player.name, "Port": str(player.port),
        "Product": player.product, "Protocol-Capabilities": "timeline,playback",
    }, bind=("0.0.0.0", config.gdm.player_port), group=config.gdm.group, interface="127.0.0.1")
    await peer.start()
    yield peer
    await peer.stop()


@pytest.fixture
async def bridge(config: Config) -> AsyncIterator[Bridge]:
    b = Bridge(config)
    await b.start()
    yield b
    await b.stop()


@pytest.fixture
async def server() -> AsyncIterator[FakePlexServer]:
    """A Plex server over TLS (test PKI) that wants the lab TOKEN."""
    fake = FakePlexServer(token=TOKEN)
    await fake.start()
    yield fake
    await fake.stop()
