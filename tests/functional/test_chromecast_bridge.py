"""A Chromecast found by mDNS becomes a face; python-plexapi flings to it; its status comes back."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import requests
from plexapi.client import PlexClient
from zeroconf import ServiceInfo
from zeroconf.asyncio import AsyncZeroconf

from companion.bridge import Bridge
from companion.config import Config, MdnsConfig
from companion.discovery.mdns import CAST_SERVICE
from companion.faceslot import FaceSlot
from companion.proto.timeline import parse_player_timeline
from tests.fakes.cast_device import FakeCastDevice
from tests.fakes.controller import FakeController
from tests.fakes.plex_server import FakePlexServer
from tests.helpers import bridge_config, until
from tests.lab import TOKEN, companion, plex_server, write_test_profiles

CAST_NAME = "Kitchen Cast"


@pytest.fixture
async def device() -> AsyncIterator[FakeCastDevice]:
    dev = FakeCastDevice(name=CAST_NAME)
    await dev.start()
    yield dev
    await dev.stop()


@pytest.fixture
async def announcer() -> AsyncIterator[AsyncZeroconf]:
    aiozc = AsyncZeroconf(interfaces=["127.0.0.1"])
    yield aiozc
    await aiozc.async_unregister_all_services()
    await aiozc.async_close()


def cast_service(dev: FakeCastDevice) -> ServiceInfo:
    return ServiceInfo(CAST_SERVICE, f"Chromecast-{dev.cast_id}.{CAST_SERVICE}",
                       addresses=[socket.inet_aton("127.0.0.1")], port=dev.port,
                       properties={"id": dev.cast_id, "fn": CAST_NAME, "md": "Chromecast Ultra"},
                       server=f"{dev.cast_id}.local.")


def cast_config(tmp_path: Path, server: FakePlexServer, *, secure: bool) -> Config:
    write_test_profiles(tmp_path / "profiles", server)
    profile = tmp_path / "profiles" / "devices" / "lab-cast.yaml"
    store = "test-lab" if secure else "mozilla"
    profile.write_text(f"""id: lab-cast
name: Lab Chromecast
match: []
transport: chromecast
media: {{https: true, http: true}}
tls:
  versions: {{min: "1.2", max: "1.3"}}
  roots: {{store: {store}}}
dns: {{resolver: public}}
evidence:
  - {{claim: "a device made up for this test", confidence: assumed}}
""")
    root = tmp_path / "lab-root.pem"
    root.write_bytes(server.root_pem)
    config = bridge_config(tmp_path, f"""
servers:
  - {{url: "https://127.0.0.1:{server.port}", token: "{TOKEN}"}}
profiles_dirs: [{tmp_path / "profiles"}]
profiles: {{"{CAST_NAME}": lab-cast}}
security: {{policy: preferred, relay: true, extra_roots: ["{root}"]}}
""")
    return dataclasses.replace(config, mdns=MdnsConfig(enabled=True))


@contextlib.asynccontextmanager
async def bridged_cast(config: Config, device: FakeCastDevice,
                       announcer: AsyncZeroconf) -> AsyncIterator[tuple[Bridge, FaceSlot]]:
    """A running bridge with a connected face for ``device``, announced by mDNS."""
    async with Bridge(config) as bridge:
        await (await announcer.async_register_service(cast_service(device)))  # and its announcement
        await until(lambda: len(bridge.faces) == 1, timeout=2.0, message="a face for the Chromecast")
        slot = next(iter(bridge.faces.values()))
        await until(lambda: slot.adapter.available, timeout=5, message="the bridge connected to the device")
        yield bridge, slot


async def _fling(bridge: Bridge, server: FakePlexServer, tmp_path: Path) -> None:
    port = next(iter(bridge.faces.values())).face.port
    sessions: list[requests.Session] = []
    try:
        pms = await asyncio.to_thread(plex_server, server, tmp_path)
        sessions.append(pms._session)
        movie = await asyncio.to_thread(pms.fetchItem, 501)
        client = await asyncio.to_thread(PlexClient, baseurl=f"http://127.0.0.1:{port}", timeout=10)
        sessions.append(client._session)
        await asyncio.to_thread(client.playMedia, movie, offset=3000)
        await asyncio.to_thread(client.pause)
        await asyncio.to_thread(client.seekTo, 60000)
        await asyncio.to_thread(client.setVolume, 30)
    finally:
        for session in sessions:
            session.close()


async def test_chromecast_gets_a_face_within_2s_takes_a_secure_fling_and_reports_its_status(
        tmp_path: Path, server: FakePlexServer, device: FakeCastDevice, announcer: AsyncZeroconf) -> None:
    config = cast_config(tmp_path, server, secure=True)
    async with Bridge(config) as bridge:
        announced = time.monotonic()
        broadcast = await announcer.async_register_service(cast_service(device))
        await until(lambda: len(bridge.faces) == 1, timeout=2.0, message="a face within 2 s of the announcement")
        assert time.monotonic() - announced < 2.0
        await broadcast  # zeroconf's repeated announcements, so no task outlives the test
        slot = next(iter(bridge.faces.values()))
        assert slot.face.identity.name == f"{CAST_NAME} (bridge)"
        await until(lambda: slot.adapter.available, timeout=5, message="the bridge connected to the device")

        await _fling(bridge, server, tmp_path)
        load = device.state.loads[-1]
        block = load["media"]["customData"]["server"]
        assert (block["protocol"], block["address"], block["port"]) == (
            "https", f"127-0-0-1.{server.hash}.plex.direct", server.port)
        assert load["media"]["contentId"] == "/library/metadata/501"
        assert "PAUSE" in device.state.commands()
        assert "SEEK" in device.state.commands()
        assert device.state.volume_level == pytest.approx(0.3)
        assert bridge.audit.recent(1)[0].mode == "direct-secure"
        assert bridge.audit.recent(1)[0].command_plain_http is False, "the Cast channel is TLS"

        async with FakeController() as phone:
            base = f"http://127.0.0.1:{slot.face.port}"
            assert (await phone.subscribe(base)).status == 200
            await device.change_media_status(player_state="PLAYING", current_time=90.0, duration=600.0)
            push = await phone.wait_for(lambda p: p.state.active is not None and p.state.active.state == "playing"
                                        and p.state.active.time >= 90000, timeout=2.0)
            assert push.state.active is not None
            assert push.state.active.duration == 600000


async def test_chromecast_that_cannot_verify_plays_through_the_relay(
        tmp_path: Path, server: FakePlexServer, device: FakeCastDevice, announcer: AsyncZeroconf) -> None:
    async with bridged_cast(cast_config(tmp_path, server, secure=False), device, announcer) as (bridge, _):
        await _fling(bridge, server, tmp_path)
        assert bridge.relay is not None
        block = device.state.loads[-1]["media"]["customData"]["server"]
        assert (block["protocol"], block["address"], block["port"]) == ("http", "127.0.0.1", bridge.relay.port)
        assert block["accessToken"] not in (TOKEN, server.transient_token), "the device gets a capability"
        record = bridge.audit.recent(1)[0]
        assert (record.mode, record.token_exposed) == ("relay", False)


async def test_chromecast_drop_marks_the_face_unavailable_and_it_recovers(
        tmp_path: Path, server: FakePlexServer, device: FakeCastDevice, announcer: AsyncZeroconf) -> None:
    async with bridged_cast(cast_config(tmp_path, server, secure=True), device, announcer) as (_, slot):
        port = device.port
        await device.stop()
        await until(lambda: not slot.adapter.available, timeout=5, message="the face reports unavailable")
        async with FakeController() as phone:
            reply = await phone.poll(f"http://127.0.0.1:{slot.face.port}")
            assert b'disconnected="1"' in reply.body
            assert parse_player_timeline(reply.body).active is None
            await device.start(port=port)
            await until(lambda: slot.adapter.available, timeout=15, message="the face recovers with the device")
            reply = await phone.request(f"http://127.0.0.1:{slot.face.port}", "/player/playback/setParameters",
                                        {"volume": "20"})
            assert reply.status == 200


async def test_scan_lists_a_chromecast_found_by_mdns_with_its_profile(
        tmp_path: Path, device: FakeCastDevice, announcer: AsyncZeroconf) -> None:
    await (await announcer.async_register_service(cast_service(device)))
    config = tmp_path / "scan.yaml"
    config.write_text(f"interfaces: [127.0.0.1]\ngdm: {{enabled: false}}\nstate_dir: {tmp_path / 'state'}\n")
    code, out, err = await companion("--config", str(config), "scan", "--timeout", "1.5", "--json")
    assert code == 0, err
    (row,) = [r for r in json.loads(out) if r["kind"] == "chromecast"]
    assert (row["name"], row["port"], row["id"]) == (CAST_NAME, device.port, device.cast_id)
    assert row["profile"].startswith("chromecast")


async def test_a_bare_fling_gets_a_play_queue_and_the_face_carries_skips_as_plex_messages(
        tmp_path: Path, server: FakePlexServer, device: FakeCastDevice, announcer: AsyncZeroconf) -> None:
    """containerKey is always a play queue; the timeline names it with the skip controls; skipNext
    and skipPrevious reach the receiver as the Plex app's own NEXT and PREVIOUS messages."""
    async with bridged_cast(cast_config(tmp_path, server, secure=True), device, announcer) as (bridge, slot):
        assert "mirror" in slot.face.identity.capabilities
        assert "navigation" not in slot.face.identity.capabilities, "a Chromecast has no UI to navigate"
        await bridge.fling_api(target_id=slot.target.id, server_id=f"https://127.0.0.1:{server.port}",
                               key="/library/metadata/501")
        assert server.requests_to("/playQueues")[-1].method == "POST"
        custom = device.state.loads[-1]["media"]["customData"]
        assert custom["containerKey"].startswith("/playQueues/1?")

        async with FakeController() as phone:
            base = f"http://127.0.0.1:{slot.face.port}"
            await until(lambda: slot.face.state.active is not None, message="the Chromecast reports playing")
            active = parse_player_timeline((await phone.poll(base)).body).active
            assert active is not None
            assert (active.play_queue_id, active.play_queue_item_id) == ("1", "1")
            assert {"skipNext", "skipPrevious"} <= set(active.controllable)
            for name in ("skipNext", "skipPrevious"):
                assert (await phone.request(base, f"/player/playback/{name}")).status == 200
        await until(lambda: device.state.commands("urn:x-cast:plex")[-2:] == ["NEXT", "PREVIOUS"],
                    message="NEXT and PREVIOUS on the Plex namespace")
