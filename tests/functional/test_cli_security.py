"""The security commands as a user runs them: profiles lint, explain (with a real dnsmasq), flings."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest

from companion.bridge import Bridge
from tests.fakes.companion_player import FakeCompanionPlayer
from tests.fakes.dns import PlexDirectResolver
from tests.fakes.dnsmasq import dnsmasq
from tests.fakes.plex_server import FakePlexServer
from tests.helpers import bridge_config, free_port, until
from tests.lab import TOKEN, companion, write_test_profiles

REPO = Path(__file__).resolve().parents[2]
BROKEN = REPO / "tests" / "data" / "profiles" / "broken"


async def test_profiles_lint_passes_on_every_shipped_profile() -> None:
    code, out, err = await companion("profiles", "lint")
    assert code == 0, err
    assert "ok" in out


async def test_profiles_lint_names_file_line_and_key_for_broken_profiles() -> None:
    code, _, err = await companion("profiles", "lint", str(BROKEN))
    assert code == 1
    assert f"{BROKEN / 'devices' / 'unknown-key.yaml'}:" in err
    line = next(li for li in err.splitlines() if "unknown-key.yaml" in li)
    assert line.split(":")[1].isdigit(), line


async def test_a_broken_profile_at_runtime_is_skipped_and_the_rest_work(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = bridge_config(tmp_path, f"profiles_dirs: [{BROKEN}]\n")
    bridge = Bridge(config)
    with caplog.at_level(logging.ERROR, logger="companion.bridge"):
        await bridge.start()
        await bridge.stop()
    assert bridge.profiles.errors
    assert "fine" in bridge.profiles.profiles
    assert "roku" in bridge.profiles.profiles, "shipped profiles still load"
    assert any("profile skipped" in r.getMessage() for r in caplog.records)


def _lan_profile(tmp_path: Path, server: FakePlexServer) -> Path:
    write_test_profiles(tmp_path / "profiles", server)
    (tmp_path / "profiles" / "devices" / "lab-lan-tv.yaml").write_text("""id: lab-lan-tv
name: Lab TV that asks the router's DNS
match: []
transport: companion
media: {https: true, http: true}
tls:
  versions: {min: "1.2", max: "1.3"}
  roots: {store: test-lab}
dns: {resolver: lan}
evidence:
  - {claim: "a device made up for this test", confidence: assumed}
""")
    config = tmp_path / "explain.yaml"
    config.write_text(f"profiles_dirs: [{tmp_path / 'profiles'}]\nstate_dir: {tmp_path / 'state'}\n")
    return config


async def test_explain_with_dnsmasq_stripping_plex_direct_is_insecure_and_names_the_fix(
        tmp_path: Path, server: FakePlexServer) -> None:
    config = _lan_profile(tmp_path, server)
    async with PlexDirectResolver("127.0.0.11") as upstream, \
            dnsmasq(tmp_path, upstream.address, "--stop-dns-rebind") as ((host, port), _):
        code, out, err = await companion("--config", str(config), "explain", "--profile", "lab-lan-tv",
                                         "--server", f"https://127.0.0.1:{server.port}",
                                         "--resolver", f"{host}:{port}")
    assert code == 1, err
    assert "PASS  chain" in out
    assert "FAIL  dns" in out
    assert "rebind-domain-ok=/plex.direct/" in out
    assert 'private-domain: "plex.direct"' in out
    assert "verdict: relay" in out


async def test_explain_with_rebind_domain_ok_is_secure(tmp_path: Path, server: FakePlexServer) -> None:
    config = _lan_profile(tmp_path, server)
    async with PlexDirectResolver("127.0.0.11") as upstream, \
            dnsmasq(tmp_path, upstream.address, "--stop-dns-rebind",
                    "--rebind-domain-ok=/plex.direct/") as ((host, port), _):
        code, out, err = await companion("--config", str(config), "explain", "--profile", "lab-lan-tv",
                                         "--server", f"https://127.0.0.1:{server.port}",
                                         "--resolver", f"{host}:{port}", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["decision"]["mode"] == "direct-secure"
    assert report["decision"]["stream_base"] == f"https://127-0-0-1.{server.hash}.plex.direct:{server.port}"
    assert {c["name"]: c["passed"] for c in report["checks"]}["dns"] is True
    assert TOKEN not in out


async def test_flings_insecure_json_lists_the_insecure_flings_of_a_run(
        tmp_path: Path, server: FakePlexServer) -> None:
    secure, old = FakeCompanionPlayer(name="Lab Secure TV"), FakeCompanionPlayer(name="Lab Old TV")
    await secure.start()
    await old.start()
    write_test_profiles(tmp_path / "profiles", server)
    config_text = f"""
servers:
  - {{url: "https://127.0.0.1:{server.port}", token: "{TOKEN}"}}
targets:
  - {{name: Lab Secure TV, address: 127.0.0.1, port: {secure.port}, profile: lab-secure-tv}}
  - {{name: Lab Old TV, address: 127.0.0.1, port: {old.port}, profile: lab-old-tv}}
profiles_dirs: [{tmp_path / "profiles"}]
security: {{policy: preferred, relay: false}}
"""
    config = bridge_config(tmp_path, config_text)
    try:
        async with Bridge(config) as bridge:
            await until(lambda: len(bridge.faces) == 2, message="faces")
            server_id = bridge.registry.servers()[0].id
            for name in ("Lab Secure TV", "Lab Old TV"):
                await bridge.fling_api(target_id=name, server_id=server_id, key="/library/metadata/501")
    finally:
        await secure.stop()
        await old.stop()
    cfg_file = tmp_path / "cli.yaml"
    cfg_file.write_text(f"state_dir: {tmp_path / 'state'}\n")
    code, out, err = await companion("--config", str(cfg_file), "flings", "--insecure", "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert [(r["target"]["name"], r["mode"], r["token_exposed"]) for r in rows] == [
        ("Lab Old TV", "direct-insecure", True)]
    assert TOKEN not in out
    code, out, _ = await companion("--config", str(cfg_file), "flings")
    assert "Lab Secure TV" in out
    assert "direct-secure" in out


async def test_explain_finds_a_target_the_running_daemon_bridged(tmp_path: Path, server: FakePlexServer) -> None:
    player = FakeCompanionPlayer(name="Lab Old TV")
    await player.start()
    write_test_profiles(tmp_path / "profiles", server)
    admin_port = free_port()
    config = bridge_config(tmp_path, f"""
targets:
  - {{name: Lab Old TV, address: 127.0.0.1, port: {player.port}, profile: lab-old-tv}}
profiles_dirs: [{tmp_path / "profiles"}]
""")
    config = dataclasses.replace(config, http=dataclasses.replace(config.http, admin_port=admin_port))
    try:
        async with Bridge(config) as bridge:
            await until(lambda: len(bridge.faces) == 1, message="the face")
            cli_config = tmp_path / "cli.yaml"
            cli_config.write_text(f"http: {{admin_port: {admin_port}}}\nprofiles_dirs: [{tmp_path / 'profiles'}]\n"
                                  f"state_dir: {tmp_path / 'cli-state'}\nsecurity: {{dns_check: false}}\n")
            code, out, err = await companion("--config", str(cli_config), "explain", "lab old tv",
                                             "--server", f"https://127.0.0.1:{server.port}")
    finally:
        await player.stop()
    assert code == 1, err
    assert "device profile: lab-old-tv" in out
    assert "FAIL  chain" in out
