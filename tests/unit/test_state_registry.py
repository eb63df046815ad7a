"""State directory (face ports kept across restarts) and the registry (sightings -> targets)."""

from __future__ import annotations

from pathlib import Path

from companion.model import Server, Sighting, Target
from companion.registry import Registry
from companion.state import StateDir


def test_face_port_is_kept_across_restarts(tmp_path: Path) -> None:
    first = StateDir(tmp_path)
    a = first.assign_face_port("tv-a", 33000)
    b = first.assign_face_port("tv-b", 33000)
    assert (a, b) == (33000, 33001)
    again = StateDir(tmp_path)
    assert again.assign_face_port("tv-b", 33000) == 33001
    assert again.assign_face_port("tv-c", 33000) == 33002


def test_damaged_ports_file_is_set_aside_not_lost(tmp_path: Path) -> None:
    (tmp_path / "faces.json").write_text("{not json")
    state = StateDir(tmp_path)
    assert state.assign_face_port("tv", 33000) == 33000
    assert (tmp_path / "faces.json.damaged").read_text() == "{not json"


def test_bridge_id_and_admin_token_are_stable(tmp_path: Path) -> None:
    assert StateDir(tmp_path).bridge_id() == StateDir(tmp_path).bridge_id()
    token = StateDir(tmp_path).admin_token()
    assert len(token) >= 32
    assert StateDir(tmp_path).admin_token() == token
    assert (tmp_path / "admin-token").stat().st_mode & 0o077 == 0


def _player(ident: str = "abc", name: str = "TV", address: str = "127.0.0.5") -> Sighting:
    return Sighting(source="gdm", kind="companion", ident=ident, name=name, address=address, port=32500,
                    product="Plex for Roku")


def test_registry_merges_sightings_and_expires_silent_targets() -> None:
    reg = Registry(expiry=10)
    added: list[Target] = []
    removed: list[Target] = []
    reg.on_added(added.append)
    reg.on_removed(removed.append)
    reg.observe(_player(), now=0)
    reg.observe(_player(), now=5)
    assert len(added) == 1
    assert reg.targets()[0].id == added[0].id
    assert reg.expire(now=14) == []
    assert [t.name for t in reg.expire(now=16)] == ["TV"]
    assert removed == added


def test_target_id_is_stable_and_configured_targets_never_expire() -> None:
    reg1, reg2 = Registry(expiry=1), Registry(expiry=1)
    reg1.observe(_player(), 0)
    reg2.observe(_player(), 100)
    assert reg1.targets()[0].id == reg2.targets()[0].id
    reg1.observe(Sighting(source="config", kind="companion", ident="config:Den", name="Den",
                          address="127.0.0.9", port=1), 0)
    gone = reg1.expire(1000)
    assert [t.name for t in gone] == ["TV"]
    assert [t.name for t in reg1.targets()] == ["Den"]


def test_bye_removes_a_target() -> None:
    reg = Registry(expiry=100)
    reg.observe(_player(), 0)
    reg.forget(_player())
    assert reg.targets() == []


def test_playmedia_may_only_point_at_known_servers() -> None:
    reg = Registry(expiry=100)
    h = "0123456789abcdef0123456789abcdef"
    reg.observe(Sighting(source="gdm", kind="server", ident="srv1", name="NAS", address="127.0.0.10", port=32400,
                         host=f"{h}.plex.direct"), 0)
    assert reg.resolve_server("srv1", "127.0.0.10", 32400) is not None
    assert reg.resolve_server("srv1", f"127-0-0-10.{h}.plex.direct", 32400) is not None
    assert reg.resolve_server("srv1", "127.0.0.11", 32400) is None  # another host
    assert reg.resolve_server("srv1", "127.0.0.10", 22) is None  # another port
    assert reg.resolve_server("srv1", "nas.lan", 32400) is None  # names are never resolved
    assert reg.resolve_server("", "169.254.1.1", 32400) is None


def test_configured_server_keeps_its_token_when_discovered() -> None:
    reg = Registry(expiry=100)
    reg.configure_server(Server(id="cfg-1", name="NAS", address="127.0.0.10", port=32400, source="config",
                                scheme="https", token="t0k"))
    reg.observe(Sighting(source="gdm", kind="server", ident="srv1", name="NAS", address="127.0.0.10",
                         port=32400), 0)
    (server,) = reg.servers()
    assert server.id == "srv1"
    assert server.token == "t0k"
    assert server.scheme == "https"


def test_an_expired_target_leaves_faces_json_and_a_flood_left_there_is_pruned(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.assign_face_port("configured-tv", 33000)
    for n in range(300):
        state.assign_face_port(f"evil-{n}", 33000)
    state.forget_face_port("evil-299")
    assert "evil-299" not in StateDir(tmp_path).face_ports()
    dropped = StateDir(tmp_path).prune_face_ports({"configured-tv"}, 8)
    assert len(dropped) == 291
    kept = StateDir(tmp_path).face_ports()
    assert kept["configured-tv"] == 33000
    assert sorted(kept.values()) == list(range(33000, 33009)), "the lowest ports (handed out first) stay"


def test_discovered_targets_are_capped_in_all_and_per_address_and_configured_ones_never_count() -> None:
    reg = Registry(expiry=60.0, max_discovered=8, per_address=4)
    for n in range(100):
        reg.observe(_player(ident=f"evil-a-{n}", address="10.0.0.66"), now=0.0)
    assert len(reg.targets()) == 4
    for n in range(100):
        reg.observe(_player(ident=f"evil-{n}", address=f"10.0.1.{n}"), now=0.0)
    assert len(reg.targets()) == 8
    assert reg.refused == 192
    reg.observe(Sighting(source="config", kind="companion", ident="config:Bedroom", name="Bedroom",
                         address="10.0.0.20", port=32500), now=0.0)
    assert len(reg.targets()) == 9, "a configured target is always taken"
    reg.observe(_player(ident="evil-a-0", address="10.0.0.66"), now=30.0)  # a known one refreshes
    reg.expire(now=61.0)
    assert sorted(t.ident for t in reg.targets()) == ["config:Bedroom", "evil-a-0"]
    reg.observe(_player(ident="real-tv", address="10.0.0.30"), now=62.0)
    assert reg.find_target("real-tv") is not None, "room again once the flood expired"


def test_discovered_servers_are_capped() -> None:
    reg = Registry(expiry=60.0, max_servers=3, per_address=2)
    for n in range(10):
        reg.observe(Sighting(source="gdm", kind="server", ident=f"srv-{n}", name="S", address="10.0.0.66",
                             port=32400 + n), now=0.0)
    assert len(reg.servers()) == 2
    for n in range(10):
        reg.observe(Sighting(source="gdm", kind="server", ident=f"other-{n}", name="S", address=f"10.0.1.{n}",
                             port=32400), now=0.0)
    assert len(reg.servers()) == 3
