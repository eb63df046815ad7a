"""Discovery may add, never rewrite what the owner configured (issue 12 rows 2 and 3), and a discovered
server follows a new address only when the bridge's certificate check says so."""

from __future__ import annotations

import logging

import pytest

from companion.model import Server, Sighting
from companion.registry import Registry

CFG = Server(id="cfg-1", name="NAS", address="10.0.0.10", port=32400, source="config", scheme="https",
             host="0123456789abcdef0123456789abcdef.plex.direct", token="owner-token-1234")


def server_sighting(ident: str, address: str, port: int = 32400, host: str = "") -> Sighting:
    return Sighting(source="gdm", kind="server", ident=ident, name="Spoofed", address=address, port=port,
                    host=host)


def configured(reg: Registry) -> Server:
    (server,) = [s for s in reg.servers() if reg.is_configured(s)]
    return server


def test_a_sighting_claiming_a_configured_identifier_from_another_address_is_logged_and_ignored(
        caplog: pytest.LogCaptureFixture) -> None:
    reg = Registry(expiry=100)
    reg.configure_server(CFG)
    reg.observe(server_sighting("srv-real", "10.0.0.10"), 0)  # the real server teaches its identifier
    assert configured(reg).id == "srv-real"
    with caplog.at_level(logging.WARNING, logger="companion.registry"):
        for ident in ("srv-real", "cfg-1"):  # what /api/servers shows, before or after discovery
            for _ in range(3):
                reg.observe(server_sighting(ident, "10.0.0.66", host="ffffffffffffffffffffffffffffffff.plex.direct"), 1)
    server = configured(reg)
    assert (server.address, server.port, server.host, server.token) == (
        "10.0.0.10", 32400, CFG.host, "owner-token-1234")
    assert [s.address for s in reg.servers()] == ["10.0.0.10"], "the attacker's address became no server"
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, "one warning per (server, address), not one per datagram"
    assert "10.0.0.66" in warnings[0] and "comes only from the config" in warnings[0]


def test_a_reload_never_gives_the_configured_token_to_a_sighting_that_took_the_config_id() -> None:
    reg = Registry(expiry=100)
    reg.observe(server_sighting("cfg-1", "10.0.0.66"), 0)  # the attacker, before the owner adds the server
    reg.configure_server(CFG)
    reg.configure_server(CFG)  # and an ordinary reload
    with_token = [s for s in reg.servers() if s.token]
    assert [(s.address, s.token) for s in with_token] == [("10.0.0.10", "owner-token-1234")]
    assert reg.resolve_server("cfg-1", "10.0.0.66", 32400) is None


def test_a_discovered_server_never_holds_a_token_and_the_configured_one_wins_its_identifier() -> None:
    reg = Registry(expiry=100)
    reg.observe(server_sighting("srv-real", "10.0.0.66"), 0)  # attacker claims the real id first
    reg.configure_server(CFG)
    reg.observe(server_sighting("srv-real", "10.0.0.10"), 1)  # the real server answers from its address
    assert [(s.id, s.address) for s in reg.servers()] == [("srv-real", "10.0.0.10")]
    assert reg.resolve_server("srv-real", "10.0.0.66", 32400) is None
    assert all(s.token is None for s in reg.servers() if not reg.is_configured(s))


def test_a_bye_never_removes_a_configured_server_and_only_its_own_address_removes_a_discovered_one() -> None:
    reg = Registry(expiry=100)
    reg.configure_server(CFG)
    reg.observe(server_sighting("srv-real", "10.0.0.10"), 0)
    reg.observe(server_sighting("other", "10.0.0.20"), 0)
    for ident in ("srv-real", "cfg-1"):
        reg.forget(server_sighting(ident, "10.0.0.66"))
        reg.forget(server_sighting(ident, "10.0.0.10"))  # even one from its own address (spoofable)
    reg.forget(server_sighting("other", "10.0.0.66"))
    assert sorted(s.id for s in reg.servers()) == ["other", "srv-real"]
    reg.forget(server_sighting("other", "10.0.0.20"))  # the discovered server's own goodbye
    assert [s.id for s in reg.servers()] == ["srv-real"]


def test_a_discovered_server_moves_only_through_the_move_check() -> None:
    reg = Registry(expiry=100)
    claims: list[tuple[str, str]] = []
    reg.on_server_move(lambda server, sighting: claims.append((server.address, sighting.address)))
    reg.observe(server_sighting("srv", "10.0.0.20"), 0)
    reg.observe(server_sighting("srv", "10.0.0.66"), 10)
    assert claims == [("10.0.0.20", "10.0.0.66")]
    assert reg.server("srv") is not None and reg.server("srv").address == "10.0.0.20"  # type: ignore[union-attr]
    reg.move_server("srv", "10.0.0.21", 32400)  # the certificate check passed
    assert reg.server("srv").address == "10.0.0.21"  # type: ignore[union-attr]
    # Silent for longer than the expiry: gone, so a new sighting is simply a new server.
    reg.observe(server_sighting("srv", "10.0.0.30"), 500)
    assert reg.server("srv").address == "10.0.0.30"  # type: ignore[union-attr]
    assert len(claims) == 1


def test_a_configured_server_cannot_be_moved() -> None:
    reg = Registry(expiry=100)
    reg.configure_server(CFG)
    reg.move_server("cfg-1", "10.0.0.66", 32400)
    assert configured(reg).address == "10.0.0.10"


def test_a_configured_player_is_not_moved_by_a_sighting_of_its_guessable_identifier() -> None:
    reg = Registry(expiry=100)
    reg.observe(Sighting(source="config", kind="companion", ident="config:Bedroom TV", name="Bedroom TV",
                         address="10.0.0.30", port=32500), 0)
    forged = Sighting(source="gdm", kind="companion", ident="config:Bedroom TV", name="Evil",
                      address="10.0.0.66", port=40001)
    reg.observe(forged, 1)
    reg.forget(forged)
    (target,) = reg.targets()
    assert (target.name, target.address, target.port) == ("Bedroom TV", "10.0.0.30", 32500)
    reg.observe(Sighting(source="gdm", kind="companion", ident="config:Bedroom TV", name="TV",
                         address="10.0.0.30", port=32500, version="2.0"), 2)
    assert reg.targets()[0].version == "2.0", "a sighting from its own address still refreshes it"
