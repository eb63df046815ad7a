"""``companion profiles capture TARGET`` finds a target the running daemon bridges through its admin
API, takes the profile the daemon matched as the base, and does not count a player's "playing"
timeline as a played stream when the stream was never fetched."""

from __future__ import annotations

import dataclasses
import json
import socket
from pathlib import Path

import yaml

from companion.bridge import Bridge
from companion.security.profiles import lint
from tests.fakes.companion_player import FakeCompanionPlayer
from tests.helpers import bridge_config, free_port, until
from tests.lab import companion


async def test_capture_finds_a_target_the_running_daemon_bridges_and_uses_its_profile(tmp_path: Path) -> None:
    # The fake reports "playing" as soon as it gets playMedia, and fetches with aiohttp's default
    # verification, so it refuses every lab chain.
    player = FakeCompanionPlayer(name="Lab Den TV", product="Plex for Den")
    player.use_cases.fetch_media = True
    await player.start()
    admin_port = free_port()
    config = bridge_config(tmp_path, f"""
targets:
  - {{name: Lab Den TV, address: 127.0.0.1, port: {player.port}, profile: roku}}
""")
    config = dataclasses.replace(config, http=dataclasses.replace(config.http, admin_port=admin_port))
    try:
        async with Bridge(config) as bridge:
            out = tmp_path / "den-tv.yaml"
            await until(lambda: len(bridge.faces) == 1, message="the face")
            cli_config = tmp_path / "cli.yaml"
            cli_config.write_text(f"http: {{bind: 127.0.0.1, admin_port: {admin_port}}}\nlab: {{port: 0}}\n"
                                  f"state_dir: {tmp_path / 'cli-state'}\n")
            code, stdout, err = await companion("--config", str(cli_config), "profiles", "capture", "lab den tv",
                                                "--out", str(out), "--host", "ip", "--step-timeout", "10", "--json",
                                                timeout=120)
    finally:
        await player.stop()
    assert code == 0, err
    assert f"capturing Lab Den TV (127.0.0.1:{player.port}) through the lab at 127.0.0.1:" in err
    report = json.loads(stdout)
    assert [s["played"] for s in report["steps"]] == [False] * 5
    assert all(s["timeline"][:1] == ["playing"] for s in report["steps"])
    assert all(h["outcome"] != "completed" for s in report["steps"] for h in s["handshakes"])
    assert lint([out]) == []
    draft = yaml.safe_load(out.read_text())
    assert draft["match"] == [{"product": "Plex for Den", "platform": "Test"}]  # from its /resources
    assert any("kept from the base profile roku" in e["claim"] for e in draft["evidence"])
    assert "plays the https test stream" not in out.read_text()


async def test_capture_of_an_unknown_target_says_what_to_give(tmp_path: Path) -> None:
    cli_config = tmp_path / "cli.yaml"
    cli_config.write_text(f"http: {{admin_port: {free_port()}}}\nstate_dir: {tmp_path / 'state'}\n")
    code, _, err = await companion("--config", str(cli_config), "profiles", "capture", "Nobody TV")
    assert code == 1
    assert "unknown target 'Nobody TV': give IP:PORT of a Companion player" in err
    code, _, err = await companion("--config", str(cli_config), "profiles", "capture", "127.0.0.1:1",
                                   "--out", str(tmp_path / "Bad Name.yaml"))
    assert code == 1 and "the file name is the profile id" in err


async def test_a_lab_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    cli_config = tmp_path / "cli.yaml"
    cli_config.write_text(f"http: {{bind: 127.0.0.1, admin_port: 0}}\nstate_dir: {tmp_path / 'state'}\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = await companion("--config", str(cli_config), "profiles", "capture", "127.0.0.1:9",
                                       "--port", str(port), "--out", str(tmp_path / "x.yaml"))
    assert code == 1
    assert f"cannot listen on the lab port {port}" in err and "Traceback" not in err
