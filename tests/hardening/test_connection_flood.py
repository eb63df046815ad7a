"""Issue 12 row 5: 1,134 idle TCP connections against nofile=1024 stopped the faces and the admin
page answering and logged 359,035 identical tracebacks in 50 s. Now every listener's connections
hold slots of one budget (half of RLIMIT_NOFILE, read at start), capped per listener and per source
address, and an address holding the most gives way to a newcomer: the daemon (a subprocess with a
file limit of 256, so the test stays small) keeps serving a real controller, and logs a few lines."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import aiohttp
from plexapi.client import PlexClient

from tests.fakes.companion_player import FakeCompanionPlayer
from tests.hardening.on_lan import ROOT
from tests.helpers import until
from tests.netlab import Lan

NOFILE = 256


def daemon_config(tmp_path: Path, bridge_address: str, player: FakeCompanionPlayer) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"""
name: flood-bridge
interfaces: [{bridge_address}]
mdns: {{enabled: false}}
gdm: {{player_port: 40412, announce_port: 40413, server_port: 40414}}
http: {{bind: 0.0.0.0, admin_port: 32480, relay_port: 32481, face_port_base: 32500}}
security: {{dns_check: false}}
state_dir: {tmp_path / "state"}
targets:
  - {{name: Real TV, address: {player.host}, port: {player.port}}}
""")
    return path


async def _ready_line(proc: asyncio.subprocess.Process) -> dict[str, int]:
    assert proc.stdout is not None
    async with asyncio.timeout(120):
        line = await proc.stdout.readline()
    report: dict[str, int] = json.loads(line)
    return report


async def test_idle_connections_beyond_the_file_limit_neither_stop_service_nor_flood_the_log(
        tmp_path: Path) -> None:
    async with Lan("bridge", "attacker", join_self=True) as lan:
        assert lan.self_address is not None
        bridge_host, attacker = lan["bridge"], lan["attacker"]
        player = FakeCompanionPlayer(name="Real TV", product="Lab TV", host=lan.self_address)
        await player.start()
        log_path = tmp_path / "daemon.log"
        try:
            with log_path.open("wb") as log_file:
                daemon = await bridge_host.spawn(
                    "prlimit", f"--nofile={NOFILE}:{NOFILE}", sys.executable, "-m", "companion",
                    "--log-level", "info", "run", "--config", str(daemon_config(tmp_path, bridge_host.address, player)),
                    stdout=log_file, stderr=log_file, env={"PYTHONPATH": str(ROOT)})
            admin = f"http://{bridge_host.address}:32480"
            face = f"http://{bridge_host.address}:32500"

            async def healthy() -> bool:
                try:
                    async with aiohttp.ClientSession() as http, http.get(
                            f"{admin}/api/health", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                        return resp.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    return False

            await until(healthy, timeout=60, interval=0.2, message="the daemon's admin page answering")
            assert "accepting at most 128 TCP connections in all (half of the file limit 256)" in log_path.read_text()
            lines_before = len(log_path.read_text().splitlines())

            # The flood: 300 idle connections from each of four addresses to the face, 300 to the admin page.
            sources = [attacker.address]
            for n in (100, 101, 102):
                attacker.add_address(f"{lan.subnet}.{n}")
                sources.append(f"{lan.subnet}.{n}")
            to_face = await attacker.spawn(*attacker.python(
                "-m", "tests.hardening.attacker", "hold", "--to", f"{bridge_host.address}:32500", "--count", "300",
                "--sources", ",".join(sources)), env={"PYTHONPATH": str(ROOT)},
                stdin=asyncio.subprocess.PIPE)
            held_face = await _ready_line(to_face)
            to_admin = await attacker.spawn(*attacker.python(
                "-m", "tests.hardening.attacker", "hold", "--to", f"{bridge_host.address}:32480", "--count", "300"),
                env={"PYTHONPATH": str(ROOT)}, stdin=asyncio.subprocess.PIPE)
            held_admin = await _ready_line(to_admin)
            assert held_face["ready"] + held_face["failed"] == 1200
            assert held_admin["ready"] + held_admin["failed"] == 300

            # During the flood: python-plexapi finds the face and pauses the TV; the admin page answers.
            client = await asyncio.to_thread(PlexClient, baseurl=face, timeout=10)
            try:
                await asyncio.to_thread(client.pause)
            finally:
                client._session.close()
            await until(lambda: bool(player.received("pause")), timeout=10, message="the real TV paused")
            assert await healthy(), "the admin page answers during the flood"
            assert daemon.returncode is None

            for holder in (to_face, to_admin):  # end of stdin: the holders report and let go
                assert holder.stdin is not None
                holder.stdin.close()
            face_report = json.loads((await _read_rest(to_face)).splitlines()[-1])
            admin_report = json.loads((await _read_rest(to_admin)).splitlines()[-1])
            log_lines = log_path.read_text().splitlines()[lines_before:]
            print(f"\nrow 5: {face_report['opened']} connections to the face from 4 addresses, "
                  f"{face_report['closed_by_server']} reset by the bridge; {admin_report['opened']} to the admin "
                  f"page, {admin_report['closed_by_server']} reset; {len(log_lines)} log line(s) during the flood:")
            for line in log_lines:
                print("   ", line[:220])
            # Each address keeps at most its share; the rest were reset at once (their descriptors freed).
            assert face_report["opened"] - face_report["closed_by_server"] <= 128
            assert admin_report["opened"] - admin_report["closed_by_server"] <= 32
            assert len(log_lines) <= 20, "a few throttled lines, not one per connection"
            assert not any("Traceback" in line for line in log_lines)
        finally:
            await player.stop()


async def _read_rest(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    async with asyncio.timeout(60):
        out = await proc.stdout.read()
        await proc.wait()
    return out.decode()
