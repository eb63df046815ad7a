"""The command line as a user runs it: scan, bad configs, version."""

from __future__ import annotations

import json
from pathlib import Path

from companion import __version__
from companion.model import stable_id
from companion.proto.gdm import face_identifier
from tests.fakes.gdm_peer import FakeGdmPeer
from tests.helpers import free_port_block
from tests.lab import companion


def _gdm_config(tmp_path: Path) -> tuple[Path, int]:
    base = free_port_block(3)
    path = tmp_path / "scan.yaml"
    path.write_text(f"interfaces: [127.0.0.1]\ngdm: {{player_port: {base}, announce_port: {base + 1}, "
                    f"server_port: {base + 2}}}\nstate_dir: {tmp_path / 'state'}\n")
    return path, base


async def test_scan_json_lists_a_gdm_player_with_its_companion_port_a_server_and_a_face(tmp_path: Path) -> None:
    config, base = _gdm_config(tmp_path)
    target = stable_id("companion", "tv-1")
    face = FakeGdmPeer("player", headers={"Resource-Identifier": face_identifier(target), "Name": "Den TV (bridge)",
                                          "Port": "32500", "Product": "companion-bridge",
                                          "Bridge-Identifier": "bridge-7", "Bridged-Target": target},
                       bind=("0.0.0.0", base), group="239.0.0.250", interface="127.0.0.1")
    player = FakeGdmPeer("player", headers={"Resource-Identifier": "tv-1", "Name": "Den TV", "Port": "32555",
                                            "Product": "Plex for Roku"},
                         bind=("0.0.0.0", base), group="239.0.0.250", interface="127.0.0.1")
    server = FakeGdmPeer("server", headers={"Resource-Identifier": "srv-1", "Name": "NAS", "Port": "32400",
                                            "Host": "0123456789abcdef0123456789abcdef.plex.direct"},
                         bind=("0.0.0.0", base + 2), group="239.0.0.250", interface="127.0.0.1")
    async with player, server, face:
        code, out, err = await companion("--config", str(config), "scan", "--timeout", "1", "--json")
    assert code == 0, err
    found = {row["id"]: row for row in json.loads(out)}
    assert found["tv-1"]["port"] == 32555
    assert found["tv-1"]["address"] == "127.0.0.1"
    assert found["tv-1"]["product"] == "Plex for Roku"
    assert found["tv-1"]["kind"] == "companion"
    assert found["tv-1"]["profile"] == "roku (assumed)", "the profile each matched"
    assert found["srv-1"]["kind"] == "server"
    assert found["srv-1"]["host"] == "0123456789abcdef0123456789abcdef.plex.direct"
    listed = found[face_identifier(target)]
    assert (listed["kind"], listed["bridge"], listed["profile"]) == ("face", "bridge-7", ""), "a face, not a player"


async def test_scan_table_for_people(tmp_path: Path) -> None:
    config, base = _gdm_config(tmp_path)
    player = FakeGdmPeer("player", headers={"Resource-Identifier": "tv-9", "Name": "Attic TV", "Port": "32600"},
                         bind=("0.0.0.0", base), group="239.0.0.250", interface="127.0.0.1")
    async with player:
        code, out, err = await companion("--config", str(config), "scan", "--timeout", "0.5")
    assert code == 0
    assert "Attic TV" in out
    assert "127.0.0.1:32600" in out
    assert "searching" in err


async def test_bad_config_stops_the_daemon_before_anything_starts(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("gdm:\n  player_port: 40000\n  hello_interval: often\n")
    code, _, err = await companion("run", "--config", str(config))
    assert code == 78, "EX_CONFIG: systemd does not restart a daemon whose config is wrong"
    assert f"{config}:3: gdm.hello_interval: expected a number of seconds, got 'often'" in err
    assert "started" not in err


async def test_unknown_key_is_named(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("name: x\nsecurity:\n  polcy: required\n")
    code, _, err = await companion("run", "--config", str(config))
    assert code == 78
    assert f"{config}:3: security.polcy: unknown key" in err


async def test_version() -> None:
    code, out, _ = await companion("--version")
    assert code == 0
    assert out.strip() == f"companion-bridge {__version__}"
