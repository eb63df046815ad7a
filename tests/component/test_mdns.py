"""MdnsDiscovery against a real second zeroconf instance announcing services on 127.0.0.1.

mDNS has one fixed port (5353) that python-zeroconf does not let us change, so these tests only
run inside scripts/netns-run's private namespace, where that traffic cannot leave loopback.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from zeroconf import ServiceInfo
from zeroconf.asyncio import AsyncZeroconf

from companion.discovery.mdns import CAST_SERVICE, PLEX_SERVER_SERVICE, MdnsDiscovery, MdnsSettings
from companion.model import Sighting
from tests.fakes.cast_device import FakeCastDevice


async def until(pred: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)


@pytest.fixture(autouse=True)
def _isolated_network() -> None:
    if os.environ.get("COMPANION_IN_NETNS") != "1":
        pytest.fail("mDNS tests use port 5353 and must run inside scripts/netns-run")


class Recorder:
    def __init__(self) -> None:
        self.seen: list[Sighting] = []
        self.gone: list[Sighting] = []


@pytest.fixture
async def discovery() -> AsyncIterator[tuple[MdnsDiscovery, Recorder]]:
    rec = Recorder()
    disc = MdnsDiscovery(MdnsSettings(interfaces=("127.0.0.1",)), rec.seen.append, rec.gone.append)
    await disc.start()
    try:
        yield disc, rec
    finally:
        await disc.stop()


@pytest.fixture
async def announcer() -> AsyncIterator[AsyncZeroconf]:
    aiozc = AsyncZeroconf(interfaces=["127.0.0.1"])
    try:
        yield aiozc
    finally:
        await aiozc.async_close()


@pytest.fixture
async def cast_device() -> AsyncIterator[FakeCastDevice]:
    dev = FakeCastDevice()
    await dev.start()
    try:
        yield dev
    finally:
        await dev.stop()


def cast_service(port: int, cast_id: str, name: str = "Living Room TV") -> ServiceInfo:
    return ServiceInfo(
        CAST_SERVICE, f"Chromecast-{cast_id}.{CAST_SERVICE}",
        addresses=[socket.inet_aton("127.0.0.1")], port=port,
        properties={"id": cast_id, "fn": name, "md": "Chromecast Ultra", "ve": "05"},
        server=f"{cast_id}.local.")


async def register(aiozc: AsyncZeroconf, info: ServiceInfo) -> None:
    # cooperating_responders skips the three 250 ms uniqueness probes: the test owns the name.
    await (await aiozc.async_register_service(info, cooperating_responders=True))


async def test_an_announced_chromecast_is_reported_with_its_id_name_model_and_address(
        discovery: tuple[MdnsDiscovery, Recorder], announcer: AsyncZeroconf,
        cast_device: FakeCastDevice) -> None:
    _, rec = discovery
    cast_id = uuid.uuid4().hex
    await register(announcer, cast_service(cast_device.port, cast_id))

    await until(lambda: any(s.ident == cast_id for s in rec.seen))
    sighting = next(s for s in rec.seen if s.ident == cast_id)
    assert sighting.source == "mdns"
    assert sighting.kind == "chromecast"
    assert sighting.name == "Living Room TV"
    assert sighting.model == "Chromecast Ultra"
    assert sighting.address == "127.0.0.1"
    assert sighting.port == cast_device.port


async def test_a_chromecast_that_says_goodbye_is_reported_gone(
        discovery: tuple[MdnsDiscovery, Recorder], announcer: AsyncZeroconf,
        cast_device: FakeCastDevice) -> None:
    _, rec = discovery
    cast_id = uuid.uuid4().hex
    info = cast_service(cast_device.port, cast_id, name="Bedroom")
    await register(announcer, info)
    await until(lambda: any(s.ident == cast_id for s in rec.seen))

    await (await announcer.async_unregister_service(info))

    await until(lambda: any(s.ident == cast_id for s in rec.gone))
    assert next(s for s in rec.gone if s.ident == cast_id).name == "Bedroom"


async def test_an_announced_plex_server_is_reported_as_a_server(
        discovery: tuple[MdnsDiscovery, Recorder], announcer: AsyncZeroconf) -> None:
    _, rec = discovery
    info = ServiceInfo(
        PLEX_SERVER_SERVICE, f"Media Shelf.{PLEX_SERVER_SERVICE}",
        addresses=[socket.inet_aton("127.0.0.1")], port=32400,
        properties={"machineIdentifier": "abc123", "version": "1.40.0"}, server="shelf.local.")
    await register(announcer, info)

    await until(lambda: any(s.kind == "server" for s in rec.seen))
    server = next(s for s in rec.seen if s.kind == "server")
    assert (server.ident, server.name, server.address, server.port, server.version) == (
        "abc123", "Media Shelf", "127.0.0.1", 32400, "1.40.0")


async def test_the_zeroconf_instance_is_lent_while_running_and_closed_by_stop() -> None:
    disc = MdnsDiscovery(MdnsSettings(interfaces=("127.0.0.1",)), lambda s: None, lambda s: None)
    await disc.start()
    zc = disc.zeroconf
    assert not zc.done
    await disc.stop()
    assert zc.done
    with pytest.raises(RuntimeError):
        _ = disc.zeroconf


async def test_disabled_mdns_opens_no_zeroconf() -> None:
    disc = MdnsDiscovery(MdnsSettings(enabled=False), lambda s: None, lambda s: None)
    await disc.start()
    assert not disc.running
    await disc.stop()
