"""The status page never contradicts itself: every finding derives from the same live state as the
rest of the page, is re-checked when what it depends on changes, and shows its age.

The three contradictions seen with one Cast receiver and one server on a LAN, each as a test:
"nothing answered mDNS" above a Chromecast found by mDNS; "no Plex server is known" above a server
found by GDM; "not probed yet" for a server whose probe had just decided a fling.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from zeroconf import ServiceInfo
from zeroconf.asyncio import AsyncZeroconf

from companion.admin import AdminServer
from companion.bridge import Bridge
from companion.config import Config, MdnsConfig
from companion.discovery.mdns import CAST_SERVICE
from tests.fakes.cast_device import FakeCastDevice
from tests.fakes.companion_player import FakeCompanionPlayer
from tests.fakes.gdm_peer import FakeGdmPeer
from tests.fakes.plex_server import FakePlexServer
from tests.helpers import bridge_config, until
from tests.lab import TOKEN, write_test_profiles


@asynccontextmanager
async def page(config: Config) -> AsyncIterator[tuple[Bridge, AdminServer, aiohttp.ClientSession]]:
    """A running bridge and its admin page; the background checks re-run only on a change."""
    async with Bridge(config) as bridge:
        admin = AdminServer(bridge, bind="127.0.0.1", port=0, token=bridge.state.admin_token(), doctor_interval=600)
        async with admin, aiohttp.ClientSession() as http:
            yield bridge, admin, http


async def fetch(admin: AdminServer, http: aiohttp.ClientSession, path: str = "/") -> str:
    async with http.get(f"http://127.0.0.1:{admin.port}{path}") as resp:
        assert resp.status == 200
        return await resp.text()


async def doctor(admin: AdminServer, http: aiohttp.ClientSession) -> dict[str, dict[str, str]]:
    async with http.get(f"http://127.0.0.1:{admin.port}/api/doctor") as resp:
        return {f["check"]: f for f in (await resp.json())["findings"]}


async def test_a_chromecast_found_by_mdns_is_never_under_nothing_answered_mdns(tmp_path: Path) -> None:
    config = dataclasses.replace(bridge_config(tmp_path), mdns=MdnsConfig(enabled=True))
    device = FakeCastDevice(name="Kitchen Cast")
    await device.start()
    announcer = AsyncZeroconf(interfaces=["127.0.0.1"])
    try:
        async with page(config) as (bridge, admin, http):
            await until(lambda: admin.findings != (), timeout=15, message="the first background run")
            first_run = admin._findings_at
            assert (await doctor(admin, http))["mdns"]["status"] == "WARN", "nothing on the LAN yet"

            info = ServiceInfo(CAST_SERVICE, f"Chromecast-{device.cast_id}.{CAST_SERVICE}",
                               addresses=[socket.inet_aton("127.0.0.1")], port=device.port,
                               properties={"id": device.cast_id, "fn": "Kitchen Cast", "md": "Chromecast Ultra"},
                               server=f"{device.cast_id}.local.")
            await (await announcer.async_register_service(info))
            await until(lambda: len(bridge.faces) == 1, timeout=5, message="a face for the Chromecast")
            # At once, before any re-run: the page shows the Chromecast and no "nothing answered".
            text = await fetch(admin, http)
            assert "Kitchen Cast" in text
            assert "nothing answered mDNS" not in text
            mdns = (await doctor(admin, http))["mdns"]
            assert mdns["status"] == "PASS" and "1 Chromecast" in mdns["detail"]
            assert mdns["checked_at"] is not None, "every finding carries its age"
            # And the checks were re-run because what they depend on changed, not after 600 s.
            await until(lambda: admin._findings_at != first_run, timeout=10, message="a re-run on the change")
    finally:
        await announcer.async_unregister_all_services()
        await announcer.async_close()
        await device.stop()


async def test_a_server_found_by_gdm_is_never_under_no_plex_server_is_known(tmp_path: Path) -> None:
    config = bridge_config(tmp_path)
    async with page(config) as (bridge, admin, http):
        await until(lambda: admin.findings != (), timeout=15, message="the first background run")
        assert "no Plex server is known" in (await doctor(admin, http))["chain"]["detail"]
        first_run = admin._findings_at

        peer = FakeGdmPeer("server", headers={"Port": "1"}, bind=("0.0.0.0", config.gdm.server_port),
                           group=config.gdm.group, interface="127.0.0.1")
        await peer.start()
        try:
            await until(lambda: bool(bridge.registry.servers()), timeout=5, message="the server found by GDM")
            text = await fetch(admin, http)
            assert "Fake Server" in text
            assert "no Plex server is known" not in text, "the server table and the checks agree"
            await until(lambda: admin._findings_at != first_run, timeout=15, message="a re-run on the change")
            text = await fetch(admin, http)
            assert "no Plex server is known" not in text
            assert "chain (Fake Server)" in text, "the re-run checked the server it now knows"
        finally:
            await peer.stop()


@pytest.fixture
async def plain_server() -> AsyncIterator[FakePlexServer]:
    async with FakePlexServer(token=TOKEN, tls=False) as fake:
        yield fake


async def test_a_server_whose_probe_decided_a_fling_is_never_shown_not_probed(
        tmp_path: Path, plain_server: FakePlexServer) -> None:
    """A server without TLS: the fling's probe finds none and decides insecure; the page says so."""
    tls_server = FakePlexServer(token=TOKEN)  # only for the lab profiles' root
    await tls_server.start()
    player = FakeCompanionPlayer(name="Lab Old TV", product="Lab TV")
    await player.start()
    try:
        write_test_profiles(tmp_path / "profiles", tls_server)
        config = bridge_config(tmp_path, f"""
servers:
  - {{url: "http://127.0.0.1:{plain_server.port}", token: "{TOKEN}"}}
targets:
  - {{name: Lab Old TV, address: 127.0.0.1, port: {player.port}, profile: lab-old-tv}}
profiles_dirs: [{tmp_path / "profiles"}]
security: {{policy: preferred, relay: false, dns_check: false}}
proxy: {{enabled: false}}
""")
        async with page(config) as (bridge, admin, http):
            await until(lambda: len(bridge.faces) == 1, message="the face")
            port = next(iter(bridge.faces.values())).face.port
            params = {"key": "/library/metadata/501", "address": "127.0.0.1", "port": str(plain_server.port),
                      "protocol": "http", "offset": "0", "commandID": "1"}
            async with http.get(f"http://127.0.0.1:{port}/player/playback/playMedia", params=params,
                                headers={"X-Plex-Client-Identifier": "test-phone"}) as resp:
                assert resp.status == 200, await resp.text()
            text = await fetch(admin, http)
            assert "not probed yet" not in text
            assert 'data-probe="failed"' in text, "the probe's outcome (no TLS) is shown, with its time"
            servers = await (await http.get(f"http://127.0.0.1:{admin.port}/api/servers")).json()
            assert servers[0]["probe"]["state"] == "failed" and servers[0]["probe"]["checked_at"]
            assert "direct-insecure" in text, "the lock shows the fling's decision"
    finally:
        await player.stop()
        await tls_server.stop()


async def test_a_configured_server_keeps_its_measurement_when_gdm_reveals_its_identity(tmp_path: Path) -> None:
    """Known first by address (cfg id), then by machineIdentifier through GDM: the same server, the same
    probe and the same last fling, not "not probed yet"."""
    server = FakePlexServer(token=TOKEN)
    await server.start()
    player = FakeCompanionPlayer(name="Lab Secure TV", product="Lab TV")
    await player.start()
    try:
        write_test_profiles(tmp_path / "profiles", server)
        config = bridge_config(tmp_path, f"""
servers:
  - {{url: "https://127.0.0.1:{server.port}", token: "{TOKEN}"}}
targets:
  - {{name: Lab Secure TV, address: 127.0.0.1, port: {player.port}, profile: lab-secure-tv}}
profiles_dirs: [{tmp_path / "profiles"}]
security: {{policy: preferred, relay: false, dns_check: false}}
proxy: {{enabled: false}}
""")
        async with page(config) as (bridge, admin, http):
            await until(lambda: len(bridge.faces) == 1, message="the face")
            port = next(iter(bridge.faces.values())).face.port
            params = {"key": "/library/metadata/501", "address": "127.0.0.1", "port": str(server.port),
                      "protocol": "https", "offset": "0", "commandID": "1", "token": server.transient_token}
            async with http.get(f"http://127.0.0.1:{port}/player/playback/playMedia", params=params,
                                headers={"X-Plex-Client-Identifier": "test-phone"}) as resp:
                assert resp.status == 200, await resp.text()
            peer = FakeGdmPeer("server", headers={"Port": str(server.port), "Resource-Identifier":
                                                  server.machine_identifier, "Host": f"{server.hash}.plex.direct"},
                               bind=("0.0.0.0", config.gdm.server_port), group=config.gdm.group,
                               interface="127.0.0.1")
            await peer.start()
            try:
                await until(lambda: bridge.registry.server(server.machine_identifier) is not None, timeout=5,
                            message="GDM names the configured server")
                text = await fetch(admin, http)
                assert "not probed yet" not in text
                assert 'data-probe="measured"' in text
                assert 'data-lock="closed"' in text and "last fling" in text
            finally:
                await peer.stop()
    finally:
        await player.stop()
        await server.stop()
