"""``companion doctor``: GDM multicast, ports, plex.direct through a real dnsmasq, server chains per
profile, the clock; exit codes 0/1/2 by the worst finding, for people and for scripts (--json)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from companion.commands.doctor import cmd_doctor
from companion.config import Config
from companion.doctor.findings import Finding, exit_code, format_findings
from companion.doctor.lan import check_gdm_multicast, check_ports
from companion.doctor.run import run_doctor
from companion.doctor.servers import check_clock, parse_server_url
from companion.errors import ConfigError
from companion.security.probe import probe_server
from tests.component.test_dnscheck import upstream  # noqa: F401  (fixture)
from tests.fakes.dnsmasq import dnsmasq
from tests.fakes.plex_server import FakePlexServer
from tests.helpers import bridge_config, free_port_block
from tests.lab import write_test_profiles

TOKEN = "DOCTOR-TOKEN-31c0a5"


@pytest.fixture
async def server() -> AsyncIterator[FakePlexServer]:
    async with FakePlexServer(token=TOKEN) as fake:
        yield fake


def config_text(tmp_path: Path, *, resolver: tuple[str, int] | None, server: FakePlexServer | None = None,
                profile: str = "lab-secure-tv") -> str:
    gdm = free_port_block(3)
    faces = free_port_block(4)
    lines = [
        "name: doctor-test",
        "interfaces: [127.0.0.1]",
        f"gdm: {{group: 239.0.0.250, player_port: {gdm}, announce_port: {gdm + 1}, server_port: {gdm + 2}}}",
        "mdns: {enabled: false}",
        f"http: {{bind: 127.0.0.1, admin_port: 0, relay_port: 0, face_port_base: {faces}}}",
        "timeouts: {command: 2.0}",
        f"state_dir: {tmp_path / 'state'}",
        "plextv: {enabled: false}",  # the plex.tv checks have their own tests (test_plextv_doctor.py)
    ]
    if resolver is not None:
        lines.append(f'security: {{resolver: "{resolver[0]}:{resolver[1]}"}}')
    else:
        lines.append("security: {dns_check: false}")
    if server is not None:
        write_test_profiles(tmp_path / "profiles", server)
        lines += [f"profiles_dirs: [{tmp_path / 'profiles'}]",
                  "targets:", f"  - {{name: Lab TV, address: 127.0.0.1, port: 32999, profile: {profile}}}"]
    return "\n".join(lines) + "\n"


def config_of(tmp_path: Path, **kw: object) -> Config:
    from companion.config import parse_config

    return parse_config(config_text(tmp_path, **kw), "doctor-test.yaml")  # type: ignore[arg-type]


def by_check(findings: list[Finding]) -> dict[str, Finding]:
    return {f.check: f for f in findings}


# -- single checks -------------------------------------------------------------------------------


async def test_gdm_multicast_comes_back_on_the_configured_interface(tmp_path: Path):
    config = bridge_config(tmp_path)
    (finding,) = await check_gdm_multicast(config)
    assert finding.check == "gdm-multicast (127.0.0.1)"
    assert finding.status == "PASS", finding


async def test_gdm_multicast_on_an_interface_that_is_not_ours_fails_with_a_fix(tmp_path: Path):
    config = dataclasses.replace(bridge_config(tmp_path), interfaces=("192.0.2.77",))
    (finding,) = await check_gdm_multicast(config, wait=0.2)
    assert finding.status == "FAIL"
    assert "192.0.2.77" in finding.detail
    assert "interfaces" in finding.fix


def test_a_face_port_held_by_another_program_fails_and_says_how_to_move(tmp_path: Path):
    config = bridge_config(tmp_path)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", config.http.face_port_base))
        holder.listen()
        (finding,) = check_ports(config)
        assert finding.status == "FAIL"
        assert f"face port {config.http.face_port_base}" in finding.detail
        assert "in use" in finding.detail
        assert "http.face_port_base" in finding.fix
        (ours,) = check_ports(config, own={config.http.face_port_base})
        assert ours.status == "PASS", "a port the running bridge holds is fine"
    (free,) = check_ports(config)
    assert free.status == "PASS"


async def test_dns_check_fails_with_the_dnsmasq_and_unbound_fixes_when_dnsmasq_stops_rebinding(
        tmp_path: Path, upstream):  # noqa: F811
    async with dnsmasq(tmp_path, upstream.address, "--stop-dns-rebind") as (resolver, _log):
        findings = await run_doctor(config_of(tmp_path, resolver=resolver))
    dns = by_check(findings)["dns (synthetic name)"]
    assert dns.status == "FAIL"
    assert "returns no address" in dns.detail
    assert "rebind-domain-ok=/plex.direct/" in dns.fix
    assert 'private-domain: "plex.direct"' in dns.fix
    assert exit_code(findings) == 2


async def test_dns_check_passes_when_dnsmasq_lets_plex_direct_through(tmp_path: Path, upstream):  # noqa: F811
    async with dnsmasq(tmp_path, upstream.address, "--stop-dns-rebind",
                       "--rebind-domain-ok=/plex.direct/") as (resolver, _log):
        findings = await run_doctor(config_of(tmp_path, resolver=resolver))
    dns = by_check(findings)["dns (synthetic name)"]
    assert dns.status == "PASS", dns
    assert "192.168.1.10" in dns.detail


async def test_chain_check_names_the_profiles_that_verify_the_server_and_warns_for_a_players_that_cannot(
        tmp_path: Path, server: FakePlexServer):
    url = f"https://127.0.0.1:{server.port}"
    good = by_check(await run_doctor(config_of(tmp_path / "a", resolver=None, server=server), server_url=url))
    chain = good[f"chain (127.0.0.1:{server.port})"]
    assert chain.status == "PASS", chain
    assert "lab-secure-tv" in chain.detail
    assert f"*.{server.hash}.plex.direct" in chain.detail, "the chain as sent"

    old = by_check(await run_doctor(config_of(tmp_path / "b", resolver=None, server=server, profile="lab-old-tv"),
                                    server_url=url))
    chain = old[f"chain (127.0.0.1:{server.port})"]
    assert chain.status == "WARN"
    assert "NOT by the profile(s) of your players: lab-old-tv (root-missing)" in chain.detail
    assert "companion explain" in chain.fix


async def test_an_unreachable_server_fails_the_chain_check(tmp_path: Path):
    closed = free_port_block(1)
    findings = by_check(await run_doctor(config_of(tmp_path, resolver=None),
                                         server_url=f"https://127.0.0.1:{closed}"))
    chain = findings[f"chain (127.0.0.1:{closed})"]
    assert chain.status == "FAIL"
    assert "refused" in chain.detail
    assert findings["clock"].status == "WARN", "no server clock to compare with"


async def test_clock_check_compares_with_the_servers_date_header(server: FakePlexServer):
    known = [parse_server_url(f"https://127.0.0.1:{server.port}")]
    facts = [await probe_server("127.0.0.1", server.port, timeout=2)]
    now = datetime.now(UTC)
    ok = await check_clock(known, facts, now)
    assert ok.status == "PASS", ok
    skewed = await check_clock(known, facts, now + timedelta(hours=1))
    assert skewed.status == "FAIL"
    assert "ahead of" in skewed.detail
    assert "time synchronisation" in skewed.fix
    behind = await check_clock(known, facts, facts[0].not_before - timedelta(days=1))
    assert behind.status == "FAIL"
    assert "clock is behind" in behind.detail


def test_a_bad_server_url_is_a_configuration_error():
    with pytest.raises(ConfigError, match="expected http"):
        parse_server_url("ftp://nas")


def test_exit_code_is_the_worst_finding_and_the_report_shows_fixes_for_problems_only():
    ok = Finding("a", "PASS", "fine", "never shown")
    warn = Finding("b", "WARN", "hmm", "do this")
    fail = Finding("c", "FAIL", "broken", "do that")
    assert [exit_code([]), exit_code([ok]), exit_code([ok, warn]), exit_code([warn, fail, ok])] == [0, 0, 1, 2]
    text = format_findings([ok, warn, fail])
    assert "never shown" not in text
    assert "fix: do this" in text and "fix: do that" in text
    assert "1 passed, 1 warning(s), 1 failed" in text


# -- the command ---------------------------------------------------------------------------------


async def run_cli(tmp_path: Path, text: str, server_url: str | None, capsys: pytest.CaptureFixture[str],
                  *, as_json: bool = True) -> tuple[int, str]:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    args = argparse.Namespace(config=str(path), server=server_url, json=as_json)
    code = await asyncio.to_thread(cmd_doctor, args)
    return code, capsys.readouterr().out


async def test_command_exits_0_when_every_check_passes_and_2_when_dns_is_stripped(
        tmp_path: Path, upstream, server: FakePlexServer, capsys: pytest.CaptureFixture[str]):  # noqa: F811
    url = f"https://127.0.0.1:{server.port}"
    async with dnsmasq(tmp_path, upstream.address, "--stop-dns-rebind",
                       "--rebind-domain-ok=/plex.direct/") as (resolver, _log):
        code, out = await run_cli(tmp_path / "ok", config_text(tmp_path / "ok", resolver=resolver, server=server),
                                  url, capsys)
    report = json.loads(out)
    assert [f["status"] for f in report["findings"]] == ["PASS"] * len(report["findings"]), report
    assert {f["check"] for f in report["findings"]} >= {
        "gdm-multicast (127.0.0.1)", "ports", "dns (synthetic name)", f"dns (127.0.0.1:{server.port})",
        f"chain (127.0.0.1:{server.port})", "clock"}
    assert (code, report["exit_code"]) == (0, 0)
    assert TOKEN not in out

    async with dnsmasq(tmp_path, upstream.address, "--stop-dns-rebind") as (resolver, _log):
        code, out = await run_cli(tmp_path / "bad", config_text(tmp_path / "bad", resolver=resolver, server=server),
                                  url, capsys, as_json=False)
    assert code == 2
    assert "FAIL  dns (synthetic name)" in out
    assert "fix: let plex.direct through" in out


async def test_command_exits_1_when_the_worst_is_a_warning(
        tmp_path: Path, server: FakePlexServer, capsys: pytest.CaptureFixture[str]):
    text = config_text(tmp_path, resolver=None, server=server, profile="lab-old-tv")
    code, out = await run_cli(tmp_path, text, f"https://127.0.0.1:{server.port}", capsys)
    report = json.loads(out)
    assert code == 1
    statuses = {f["check"]: f["status"] for f in report["findings"]}
    assert set(statuses.values()) == {"PASS", "WARN"}
    assert statuses[f"chain (127.0.0.1:{server.port})"] == "WARN", "the player's profile cannot verify the chain"


async def test_mdns_check_counts_the_chromecasts_that_answer(tmp_path: Path) -> None:
    from zeroconf import ServiceInfo
    from zeroconf.asyncio import AsyncZeroconf

    from companion.config import MdnsConfig
    from companion.discovery.mdns import CAST_SERVICE
    from companion.doctor.lan import check_mdns

    config = dataclasses.replace(config_of(tmp_path, resolver=None), mdns=MdnsConfig(enabled=True))
    (quiet,) = await check_mdns(config, wait=0.5)
    assert quiet.status == "WARN"
    assert "Wi-Fi client isolation" in quiet.fix
    announcer = AsyncZeroconf(interfaces=["127.0.0.1"])
    try:
        info = ServiceInfo(CAST_SERVICE, f"Chromecast-doctor.{CAST_SERVICE}",
                           addresses=[socket.inet_aton("127.0.0.1")], port=8009,
                           properties={"id": "doctor-cast", "fn": "Den Cast", "md": "Chromecast"},
                           server="doctor-cast.local.")
        await (await announcer.async_register_service(info))
        (found,) = await check_mdns(config, wait=1.5)
        await announcer.async_unregister_all_services()
    finally:
        await announcer.async_close()
    assert found.status == "PASS"
    assert found.detail.startswith("1 Chromecast(s)")
