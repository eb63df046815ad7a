"""GdmResponder, GdmScanner and scan() against FakeGdmPeer over real UDP on loopback (test netns).

Multicast to 239.0.0.250 is routed over lo by scripts/netns-run; ports are free test ports below the ephemeral range.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import types
from collections.abc import Callable

import plexapi.gdm
import pytest

from companion.config import GdmConfig, LimitsConfig
from companion.discovery.gdm import GdmResponder, GdmScanner, scan
from companion.errors import ConfigError
from companion.model import FaceMarks, Sighting, stable_id
from companion.proto.gdm import Advert, face_identifier
from tests.fakes.gdm_peer import GARBAGE, FakeGdmPeer, Received, UseCase
from tests.helpers import free_port_block

GROUP = "239.0.0.250"


async def until(pred: Callable[[], bool], timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.005)


def face(n: int, name: str = "") -> Advert:
    return Advert(resource_identifier=f"cb-face-{n}", name=name or f"Face {n}", port=32500 + n,
                  product="companion-bridge", version="0.1.0", capabilities=("timeline", "playback"))


@pytest.fixture
def settings() -> GdmConfig:
    base = free_port_block(3)
    return GdmConfig(group=GROUP, player_port=base, announce_port=base + 1, server_port=base + 2,
                     hello_interval=60.0, search_interval=60.0)


def is_kind(kind: str, ident: str = "") -> Callable[[Received], bool]:
    def pred(got: Received) -> bool:
        return (got.message is not None and got.message.kind == kind
                and (not ident or got.message.get("Resource-Identifier") == ident))
    return pred


async def test_responder_answers_a_multicast_search_with_one_datagram_per_face_from_its_port(settings):
    responder = GdmResponder(settings, lambda: [face(1), face(2)])
    await responder.start()
    try:
        async with FakeGdmPeer() as controller:
            replies = await controller.search_replies((GROUP, settings.player_port), expect=2)
    finally:
        await responder.stop()
    assert len(replies) == 2
    assert {got.sender[1] for got in replies} == {settings.player_port}
    messages = [got.message for got in replies]
    assert all(m is not None and m.kind == "reply" for m in messages)
    assert {(m.get("Resource-Identifier"), m.get("Port")) for m in messages if m} == {
        ("cb-face-1", "32501"), ("cb-face-2", "32502")}


async def test_responder_answers_a_unicast_search_with_the_faces_current_at_that_moment(settings):
    faces = [face(1)]
    responder = GdmResponder(settings, lambda: faces)
    await responder.start()
    try:
        async with FakeGdmPeer() as controller:
            first = await controller.search(("127.0.0.1", settings.player_port), expect=1)
            faces.append(face(3))
            second = await controller.search(("127.0.0.1", settings.player_port), expect=2)
    finally:
        await responder.stop()
    assert [m.get("Resource-Identifier") for m in first] == ["cb-face-1"]
    assert sorted(m.get("Resource-Identifier") for m in second) == ["cb-face-1", "cb-face-3"]


async def test_responder_on_an_explicit_interface_answers_and_reports_its_port(settings):
    responder = GdmResponder(settings, lambda: [face(1)], interfaces=("127.0.0.1",))
    await responder.start()
    try:
        assert responder.bound_ports == [("0.0.0.0", settings.player_port)]
        async with FakeGdmPeer() as controller:
            replies = await controller.search((GROUP, settings.player_port), expect=1)
    finally:
        await responder.stop()
    assert [m.get("Name") for m in replies] == ["Face 1"]


async def test_responder_says_hello_at_start_and_bye_for_every_face_on_stop(settings):
    async with FakeGdmPeer(bind=("0.0.0.0", settings.announce_port), group=GROUP) as server:
        responder = GdmResponder(settings, lambda: [face(1), face(2)])
        await responder.start()
        await server.wait_for(is_kind("hello", "cb-face-1"))
        await server.wait_for(is_kind("hello", "cb-face-2"))
        await responder.stop()
        await server.wait_for(is_kind("bye", "cb-face-1"))
        await server.wait_for(is_kind("bye", "cb-face-2"))
        hello = next(got for got in server.received if is_kind("hello", "cb-face-1")(got))
    assert hello.sender[1] == settings.player_port
    assert hello.message is not None
    assert hello.message.get("Port") == "32501"


async def test_responder_announces_added_faces_and_says_bye_for_removed_ones(settings):
    async with FakeGdmPeer(bind=("0.0.0.0", settings.announce_port), group=GROUP) as server:
        responder = GdmResponder(settings, list)
        await responder.start()
        try:
            await responder.hello(face(7))
            await server.wait_for(is_kind("hello", "cb-face-7"))
            await responder.bye(face(7))
            await server.wait_for(is_kind("bye", "cb-face-7"))
        finally:
            await responder.stop()


async def test_responder_repeats_hello_every_interval(settings):
    quick = dataclasses.replace(settings, hello_interval=0.05)
    async with FakeGdmPeer(bind=("0.0.0.0", settings.announce_port), group=GROUP) as server:
        responder = GdmResponder(quick, lambda: [face(1)])
        await responder.start()
        try:
            await until(lambda: sum(is_kind("hello")(got) for got in server.received) >= 3)
        finally:
            await responder.stop()


async def test_garbage_is_dropped_with_one_log_line_and_the_responder_keeps_answering(settings, caplog):
    caplog.set_level(logging.DEBUG, logger="companion.discovery.gdm")
    responder = GdmResponder(settings, lambda: [face(1)])
    await responder.start()
    try:
        async with FakeGdmPeer() as attacker:
            for _ in range(50):
                attacker.send_raw(GARBAGE, ("127.0.0.1", settings.player_port))
            attacker.send_raw(b"x" * 5000, ("127.0.0.1", settings.player_port))
            replies = await attacker.search(("127.0.0.1", settings.player_port), expect=1)
            await until(lambda: sum(r.name == "companion.discovery.gdm" for r in caplog.records) >= 51)
            sender = f"127.0.0.1:{attacker.address[1]}"
    finally:
        await responder.stop()
    assert [m.get("Resource-Identifier") for m in replies] == ["cb-face-1"]
    warnings = [r for r in caplog.records if r.name == "companion.discovery.gdm" and r.levelno >= logging.WARNING]
    assert len(warnings) == 1, "a flood of garbage must not flood the log"
    assert sender in warnings[0].getMessage()
    assert "not UTF-8" in warnings[0].getMessage()


async def test_responder_that_cannot_bind_says_which_port(settings):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("0.0.0.0", settings.player_port))  # no SO_REUSEPORT: the port is taken
        responder = GdmResponder(settings, list)
        with pytest.raises(ConfigError, match=f"cannot listen on UDP 0.0.0.0:{settings.player_port}"):
            await responder.start()
        await responder.stop()


async def test_scanner_finds_a_player_and_a_server_with_its_plex_direct_host(settings):
    found: list[Sighting] = []
    async with (
        FakeGdmPeer("player", bind=("0.0.0.0", settings.player_port), group=GROUP),
        FakeGdmPeer("server", bind=("0.0.0.0", settings.server_port), group=GROUP),
    ):
        scanner = GdmScanner(settings, found.append)
        await scanner.start()
        try:
            await until(lambda: {s.kind for s in found} == {"companion", "server"})
        finally:
            await scanner.stop()
    player = next(s for s in found if s.kind == "companion")
    server = next(s for s in found if s.kind == "server")
    assert (player.ident, player.name, player.address, player.port) == (
        "fake-player-1", "Fake Player", "127.0.0.1", 32500)
    assert player.capabilities == ("timeline", "playback", "navigation")
    assert (server.ident, server.port) == ("fake-server-1", 32400)
    assert server.host == "0123456789abcdef0123456789abcdef.plex.direct"


async def test_scanner_hears_hello_and_bye_from_players(settings):
    found: list[Sighting] = []
    gone: list[Sighting] = []
    scanner = GdmScanner(settings, found.append, gone.append)
    await scanner.start()
    try:
        async with FakeGdmPeer(headers={"Resource-Identifier": "tv-9", "Port": "8009"}) as player:
            await player.send_hello((GROUP, settings.announce_port))
            await until(lambda: [s.ident for s in found] == ["tv-9"])
            await player.send_bye((GROUP, settings.announce_port))
            await until(lambda: [s.ident for s in gone] == ["tv-9"])
    finally:
        await scanner.stop()
    assert gone[0].port == 8009


async def test_scanner_ignores_its_own_faces_heard_through_loopback(settings):
    asked: list[str] = []

    def is_own(ident: str) -> bool:
        asked.append(ident)
        return ident.startswith("cb-face-")

    found: list[Sighting] = []
    responder = GdmResponder(settings, lambda: [face(1)])
    await responder.start()
    scanner = GdmScanner(settings, found.append, is_own=is_own)
    try:
        async with FakeGdmPeer("player", bind=("0.0.0.0", settings.player_port), group=GROUP):
            await scanner.start()
            await until(lambda: "cb-face-1" in asked and "fake-player-1" in asked)
    finally:
        await scanner.stop()
        await responder.stop()
    assert "cb-face-1" not in {s.ident for s in found}
    assert "fake-player-1" in {s.ident for s in found}


async def test_scanner_drops_garbage_replies_and_still_finds_good_players(settings):
    found: list[Sighting] = []
    async with (
        FakeGdmPeer("player", bind=("0.0.0.0", settings.player_port), group=GROUP,
                    use_case=UseCase.GARBAGE) as liar,
        FakeGdmPeer("player", bind=("0.0.0.0", settings.player_port), group=GROUP,
                    headers={"Resource-Identifier": "good-1"}),
        FakeGdmPeer("player", bind=("0.0.0.0", settings.player_port), group=GROUP,
                    use_case=UseCase.SILENT) as mute,
    ):
        scanner = GdmScanner(settings, found.append)
        await scanner.start()
        try:
            await until(lambda: [s.ident for s in found] == ["good-1"])
            await liar.wait_for(is_kind("search"))
            await mute.wait_for(is_kind("search"))
            await scanner.search_once()
            await until(lambda: len(found) == 2)
        finally:
            await scanner.stop()
    assert {s.ident for s in found} == {"good-1"}


async def test_scan_returns_each_player_and_server_once(settings):
    quick = dataclasses.replace(settings, search_interval=0.05)
    async with (
        FakeGdmPeer("player", bind=("0.0.0.0", settings.player_port), group=GROUP) as one,
        # The same player heard twice (as on two interfaces) must still be one sighting.
        FakeGdmPeer("player", bind=("0.0.0.0", settings.player_port), group=GROUP),
        FakeGdmPeer("server", bind=("0.0.0.0", settings.server_port), group=GROUP),
    ):
        sightings = await scan(quick, 0.3)
        searches = sum(is_kind("search")(got) for got in one.received)
    assert searches >= 2, "scan() should have searched repeatedly within its window"
    assert sorted((s.kind, s.ident) for s in sightings) == [
        ("companion", "fake-player-1"), ("server", "fake-server-1")]


async def test_python_plexapi_client_scan_lists_every_face_despite_a_colon_in_a_name(settings, monkeypatch):
    """plexapi's real GDM parser (split on every colon) reads our replies, face marks included.

    plexapi sends to the fixed broadcast 255.255.255.255:32412 and waits 1 s for silence; its
    socket module is swapped for one whose sockets send to our test port and wait 0.2 s instead,
    so plexapi's own receive-and-parse code runs unchanged against real datagrams.
    """
    port = settings.player_port

    class RedirectedSocket(socket.socket):
        def sendto(self, data, *args):
            return super().sendto(data, ("127.0.0.1", port))

        def settimeout(self, value):
            super().settimeout(0.2)

    redirected = types.SimpleNamespace(**{k: getattr(socket, k) for k in dir(socket) if not k.startswith("_")})
    redirected.socket = RedirectedSocket
    monkeypatch.setattr(plexapi.gdm, "socket", redirected)

    target = stable_id("companion", "kitchen-tv")
    marked = dataclasses.replace(face(1, "Kitchen: TV"), resource_identifier=face_identifier(target),
                                 marks=FaceMarks("0b8f3c1e-2a47-4d36-9c1e-5f0a7d2e9b64", target))
    responder = GdmResponder(settings, lambda: [marked, face(2, "Den")])
    await responder.start()
    try:
        gdm = plexapi.gdm.GDM()
        await asyncio.to_thread(gdm.scan, scan_for_clients=True)
    finally:
        await responder.stop()
    by_id = {entry["data"]["Resource-Identifier"]: entry["data"] for entry in gdm.entries}
    assert set(by_id) == {face_identifier(target), "cb-face-2"}
    kitchen = by_id[face_identifier(target)]
    assert kitchen["Name"] == "Kitchen - TV"
    assert kitchen["Port"] == "32501"
    assert kitchen["Bridge-Identifier"] == "0b8f3c1e-2a47-4d36-9c1e-5f0a7d2e9b64"
    assert kitchen["Bridged-Target"] == target
    assert by_id["cb-face-2"]["Content-Type"] == "plex/media-player"


async def test_unicast_group_searches_and_announces_without_joining(settings):
    unicast = dataclasses.replace(settings, group="127.0.0.1")
    found: list[Sighting] = []
    async with (
        FakeGdmPeer("player", bind=("127.0.0.1", settings.player_port)),
        FakeGdmPeer("server", bind=("127.0.0.1", settings.announce_port)) as registry,
    ):
        responder = GdmResponder(
            dataclasses.replace(unicast, player_port=settings.server_port), lambda: [face(1)])
        await responder.start()
        scanner = GdmScanner(unicast, found.append)
        await scanner.start()
        try:
            await until(lambda: {s.ident for s in found} == {"fake-player-1", "cb-face-1"})
            await registry.wait_for(is_kind("hello", "cb-face-1"))
        finally:
            await scanner.stop()
            await responder.stop()


@pytest.mark.parametrize(("group", "interfaces", "key"), [
    ("gdm.example", (), "gdm.group"),
    (GROUP, ("eth0",), "interfaces"),
])
async def test_bad_addresses_in_settings_are_config_errors_naming_the_key(settings, group, interfaces, key):
    bad = dataclasses.replace(settings, group=group)
    for component in (GdmResponder(bad, list, interfaces=interfaces), GdmScanner(bad, print, interfaces=interfaces)):
        with pytest.raises(ConfigError, match=f"^{key}: expected an IPv4"):
            await component.start()
        await component.stop()


async def test_replies_to_one_search_are_capped_and_the_faces_take_turns(settings):
    capped = LimitsConfig(gdm_replies_per_search=4, gdm_search_burst=10)
    responder = GdmResponder(settings, lambda: [face(n) for n in range(10)], limits=capped)
    await responder.start()
    try:
        async with FakeGdmPeer() as controller:
            seen: list[str] = []
            for _ in range(3):
                replies = await controller.search(("127.0.0.1", settings.player_port), timeout=0.5, expect=5)
                assert len(replies) == 4
                seen += [m.get("Resource-Identifier") for m in replies]
    finally:
        await responder.stop()
    assert len(set(seen)) == 10, "three searches of four replies cover all ten faces"


async def test_searches_are_answered_per_source_at_a_rate(settings):
    limited = LimitsConfig(gdm_search_rate=0.1, gdm_search_burst=2)
    responder = GdmResponder(settings, lambda: [face(1)], limits=limited)
    await responder.start()
    try:
        async with FakeGdmPeer(bind=("127.0.0.2", 0)) as flooder, FakeGdmPeer() as phone:
            answered = [len(await flooder.search(("127.0.0.1", settings.player_port), timeout=0.3, expect=1))
                        for _ in range(5)]
            assert answered == [1, 1, 0, 0, 0]
            assert len(await phone.search(("127.0.0.1", settings.player_port), expect=1)) == 1, \
                "another address is still answered"
    finally:
        await responder.stop()
    assert responder.searches_refused == 3
