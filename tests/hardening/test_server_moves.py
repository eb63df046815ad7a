"""A discovered server follows a new address only when the certificate there is the one it showed before
(issue 12, Build 2): an impostor's announcement moves nothing, the real server's move is followed."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from companion.model import Server
from tests.fakes.gdm_peer import FakeGdmPeer
from tests.fakes.plex_server import FakePlexServer, make_plex_chain
from tests.hardening.conftest import TOKEN, running_bridge
from tests.helpers import until

IDENT = "srv-that-moves"


async def announce(bridge_port: int, address: str, port: int) -> None:
    peer = FakeGdmPeer("server", headers={"Resource-Identifier": IDENT, "Port": str(port), "Name": "NAS"},
                       bind=(address, 0))
    async with peer:
        await peer.send_hello(("127.0.0.1", bridge_port))


async def test_a_discovered_server_moves_only_where_its_certificate_is(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    chain = make_plex_chain(addresses=("127.0.0.1", "127.0.0.2"))
    real = FakePlexServer(token=TOKEN, chain=chain, host="127.0.0.1", machine_identifier=IDENT)
    moved = FakePlexServer(token=TOKEN, chain=chain, host="127.0.0.2", machine_identifier=IDENT)
    impostor = FakePlexServer(token="impostor-token", host="127.0.0.3", machine_identifier=IDENT)
    for fake in (real, moved, impostor):
        await fake.start()
    caplog.set_level(logging.INFO, logger="companion")
    try:
        async with running_bridge(tmp_path, faces=0) as bridge:
            port = bridge.config.gdm.announce_port

            def where() -> tuple[str, int] | None:
                server: Server | None = bridge.registry.server(IDENT)
                return (server.address, server.port) if server is not None else None

            await announce(port, "127.0.0.1", real.port)
            await until(lambda: where() == ("127.0.0.1", real.port), timeout=10, message="the server is discovered")

            await announce(port, "127.0.0.3", impostor.port)
            await until(lambda: "announced from 127.0.0.3" in caplog.text, timeout=15,
                        message="the impostor's certificate is checked")
            assert "is not the one it has" in caplog.text
            assert where() == ("127.0.0.1", real.port)
            assert impostor.requests == [], "a handshake only: no request, no token"

            await announce(port, "127.0.0.2", moved.port)  # the real server, renumbered by DHCP
            await until(lambda: where() == ("127.0.0.2", moved.port), timeout=15,
                        message="the server is followed to the address that shows its certificate")
            assert "(same certificate)" in caplog.text
            assert all(s.token is None for s in bridge.registry.servers()), "a discovered server has no token"
    finally:
        for fake in (real, moved, impostor):
            await fake.stop()
