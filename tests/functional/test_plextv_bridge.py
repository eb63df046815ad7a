"""The whole daemon with an account linked, against FakePlexTv: python-plexapi's MyPlexAccount sees
every face as a player resource with its LAN connection, and the PlexClient built from that resource
plays on the player through the face; the page shows the account name only; the account token never
reaches a target, a server, a fling or the relay."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from plexapi.myplex import MyPlexAccount, MyPlexResource
from plexapi.server import PlexServer

from companion.admin import api as admin_api
from companion.admin.page import render_page
from companion.bridge import Bridge
from companion.config import Config
from companion.errors import PolicyRefusal
from companion.plextv.store import AccountToken, PlexTvStore
from companion.proto.gdm import face_identifier
from tests.fakes.companion_player import FakeCompanionPlayer
from tests.fakes.mpv_shim import MpvShim
from tests.fakes.plex_server import FakePlexServer, wav_bytes
from tests.fakes.plextv import FakePlexTv
from tests.helpers import bridge_config, until
from tests.lab import TOKEN, plex_server, write_test_profiles

NAMES = ("Lab Living Room", "Lab Kitchen")


@pytest.fixture
async def plextv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakePlexTv]:
    async with FakePlexTv() as fake:
        # The daemon trusts the system store; OpenSSL's SSL_CERT_FILE makes that the fake's CA here.
        monkeypatch.setenv("SSL_CERT_FILE", fake.write_ca(tmp_path / "plextv-ca.pem"))
        yield fake


@pytest.fixture
async def players() -> AsyncIterator[list[FakeCompanionPlayer]]:
    made = [FakeCompanionPlayer(name=n, product="Lab TV") for n in NAMES]
    for p in made:
        await p.start()
    yield made
    for p in made:
        await p.stop()


@pytest.fixture
def plexapi_at_fake(plextv: FakePlexTv, monkeypatch: pytest.MonkeyPatch,
                    tmp_path: Path) -> Iterator[requests.Session]:
    """python-plexapi keeps plex.tv's URLs as class attributes (MyPlexAccount.key, MyPlexResource.key)."""
    monkeypatch.setattr(MyPlexAccount, "key", f"{plextv.url}/api/v2/user")
    monkeypatch.setattr(MyPlexResource, "key", f"{plextv.url}/api/v2/resources?includeHttps=1&includeRelay=1")
    session = requests.Session()
    session.trust_env = False
    session.verify = plextv.write_ca(tmp_path / "plexapi-ca.pem")
    yield session
    session.close()


def linked_config(tmp_path: Path, plextv: FakePlexTv, server: FakePlexServer,
                  players: list[FakeCompanionPlayer]) -> Config:
    write_test_profiles(tmp_path / "profiles", server)
    targets = "\n".join(f"  - {{name: {p.name}, address: 127.0.0.1, port: {p.port}, profile: lab-secure-tv}}"
                        for p in players)
    return bridge_config(tmp_path, f"""
plextv: {{enabled: true, url: "{plextv.url}", refresh_interval: 60}}
servers:
  - {{url: "https://127.0.0.1:{server.port}", token: "{TOKEN}"}}
targets:
{targets}
profiles_dirs: [{tmp_path / "profiles"}]
security: {{policy: preferred, relay: true}}
""")


async def test_plexapi_lists_every_face_as_a_player_resource_and_plays_through_it(
        tmp_path: Path, plextv: FakePlexTv, server: FakePlexServer, players: list[FakeCompanionPlayer],
        plexapi_at_fake: requests.Session, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    config = linked_config(tmp_path, plextv, server, players)
    account_token = plextv.issue_account_token()
    PlexTvStore(config.state_path).save(AccountToken(account_token))
    async with Bridge(config) as bridge:
        pages: list[str] = []
        await until(lambda: len([d for d in plextv.players() if d.connections]) == 2, timeout=15,
                    message="both faces registered on plex.tv with their connection")
        await until(lambda: bridge.plextv is not None and all(
            bridge.plextv.status(s.advert.resource_identifier).registered for s in bridge.faces.values()),
            message="the bridge saw both publications succeed")
        account = await asyncio.to_thread(MyPlexAccount, token=account_token, session=plexapi_at_fake, timeout=5)
        assert account.title == "Alice Example"
        resources = await asyncio.to_thread(account.resources)
        faces = {s.target.name: s for s in bridge.faces.values()}
        by_id = {r.clientIdentifier: r for r in resources}
        for name, slot in faces.items():
            resource = by_id[face_identifier(slot.target.id)]
            assert resource.name == f"{name} (bridge)"
            assert set(resource.provides.split(",")) >= {"client", "player", "pubsub-player"}
            assert resource.presence and resource.owned
            assert [c.uri for c in resource.connections] == [f"http://127.0.0.1:{slot.face.port}"]

        living = by_id[face_identifier(faces["Lab Living Room"].target.id)]
        client = await asyncio.to_thread(living.connect, timeout=5)
        assert client.title == "Lab Living Room (bridge)"
        pms = await asyncio.to_thread(plex_server, server, tmp_path)
        movie = await asyncio.to_thread(pms.fetchItem, 501)
        await asyncio.to_thread(client.playMedia, movie, offset=2000)
        await until(lambda: bool(players[0].received("playMedia")), timeout=5, message="the player got playMedia")
        got = players[0].received("playMedia")[0].params
        assert got["key"] == "/library/metadata/501" and got["protocol"] == "https"
        client._session.close()
        pms._session.close()

        now = datetime.now(UTC)
        rows = [admin_api.target_json(v) for v in admin_api.target_views(bridge, now)]
        channels = {r["name"]: next(c for c in r["visible"] if c["channel"] == "plextv") for r in rows}
        for name, slot in faces.items():
            channel = channels[name]
            assert (channel["state"], channel["visible"], channel["fix"]) == ("visible", True, ""), channel
            assert channel["detail"] == (f"a player of the plex.tv account 'Alice Example', named "
                                         f"'{name} (bridge)', at http://127.0.0.1:{slot.face.port}")
            assert channel["last_checked"] is not None, "the last publication is the channel's confirmation"
        health = admin_api.health_json(bridge, uptime=1.0, findings=(), findings_at=None)
        page = render_page(name="test", version="0", health=health, targets=admin_api.target_views(bridge, now),
                           servers=[], flings=(), findings=(), findings_at=None, now=now)
        pages.append(page + json.dumps(rows) + json.dumps(health))
        assert "plex.tv account: <strong>Alice Example</strong>" in page
        assert page.count('data-channel="plextv" data-visible-state="visible"') == 2
    secrets = plextv.tokens() | {account_token}
    assert account_token in secrets
    for p in players:
        for received in p.state.commands:
            blob = repr(received)
            assert not any(t in blob for t in secrets), "no plex.tv token reaches a target"
    for request in server.requests:
        assert not any(t in repr(request) for t in secrets), "no plex.tv token reaches a Plex server"
    logs = "\n".join(r.getMessage() for r in caplog.records)
    assert not any(t in logs for t in secrets), "no plex.tv token is logged"
    assert not any(t in "".join(pages) for t in secrets), "the page and the API show the account name only"


async def test_with_an_account_linked_the_relay_still_refuses_a_fling_that_carries_no_token(
        tmp_path: Path, plextv: FakePlexTv, server: FakePlexServer, players: list[FakeCompanionPlayer]) -> None:
    write_test_profiles(tmp_path / "profiles", server)
    config = bridge_config(tmp_path, f"""
plextv: {{enabled: true, url: "{plextv.url}"}}
servers:
  - {{url: "https://127.0.0.1:{server.port}"}}
targets:
  - {{name: {players[0].name}, address: 127.0.0.1, port: {players[0].port}, profile: lab-old-tv}}
profiles_dirs: [{tmp_path / "profiles"}]
security: {{policy: preferred, relay: true}}
""")
    account_token = plextv.issue_account_token()
    PlexTvStore(config.state_path).save(AccountToken(account_token))
    async with Bridge(config) as bridge:
        await until(lambda: len(plextv.players()) == 1 and bool(plextv.players()[0].connections), timeout=15,
                    message="the face is registered, so the account token is in use")
        (slot,) = bridge.faces.values()
        (known,) = bridge.registry.servers()
        # The relay takes the controller's token only; the linked account's token is never a fallback.
        with pytest.raises(PolicyRefusal, match="the relay fetches the stream with the token the controller sends "
                                                "with its fling, and this fling carried none"):
            await bridge.fling_api(target_id=slot.target.id, server_id=known.id, key="/library/metadata/501")
    assert players[0].received("playMedia") == []
    assert not any(account_token in repr(r) for r in server.requests), "the account token never reached the server"


@pytest.fixture
def config(tmp_path: Path, plextv: FakePlexTv, monkeypatch: pytest.MonkeyPatch) -> Config:
    """The conftest's GDM test config, plus plex.tv at the fake (looked at every 0.2 s instead of 30 s)."""
    monkeypatch.setattr("companion.plextv.devices.ADDRESS_CHECK", 0.2)
    return bridge_config(tmp_path, f'plextv: {{url: "{plextv.url}"}}')


async def test_a_link_made_while_running_registers_the_face_and_its_bye_deletes_the_device(
        config: Config, plextv: FakePlexTv, bridge: Bridge, player: FakeCompanionPlayer, player_gdm: Any) -> None:
    await until(lambda: len(bridge.faces) == 1, timeout=5, message="a face for the GDM player")
    (slot,) = bridge.faces.values()
    ident = slot.advert.resource_identifier
    assert bridge.plextv is not None and bridge.plextv.status(ident).fix.startswith("run `companion link`")
    PlexTvStore(config.state_path).save(AccountToken(plextv.issue_account_token()))  # `companion link`, meanwhile
    await until(lambda: (d := plextv.device_by_client(ident)) is not None and bool(d.connections), timeout=10,
                message="registered without a restart")
    assert plextv.device_by_client(ident).connections == [f"http://127.0.0.1:{slot.face.port}"]  # type: ignore[union-attr]
    await player_gdm.send_bye((config.gdm.group, config.gdm.announce_port))
    await until(lambda: not bridge.faces, timeout=5, message="the face closed on the player's BYE")
    await until(lambda: plextv.device_by_client(ident) is None, timeout=10, message="its plex.tv device deleted")
    await until(lambda: PlexTvStore(config.state_path).devices() == {}, message="and its record dropped")


async def test_plexapi_plays_on_plex_mpv_shim_through_its_plextv_resource(
        tmp_path: Path, plextv: FakePlexTv, plexapi_at_fake: requests.Session) -> None:
    # The real player: plex-mpv-shim 1.11 (libmpv, null outputs), found by GDM on its real port in
    # the suite's private namespace; the controller finds the face only through plex.tv.
    server = FakePlexServer(token=TOKEN, tls=False, host="127.0.0.1", media=wav_bytes(120),
                            media_content_type="audio/wav", container="wav", duration_ms=120_000,
                            subtitles=b"1\r\n00:00:01,000 --> 00:00:04,000\r\nA line.\r\n")
    shim = MpvShim(tmp_path / "shim", name="Shim TV", port=32433)
    async with server:
        config = bridge_config(tmp_path, f"""
plextv: {{url: "{plextv.url}"}}
servers:
  - {{url: "http://127.0.0.1:{server.port}", token: "{TOKEN}"}}
security: {{policy: preferred, relay: true}}
""", real_gdm_ports=True, timeouts={"command": 10.0, "target_expiry": 120.0})
        account_token = plextv.issue_account_token()
        PlexTvStore(config.state_path).save(AccountToken(account_token))
        bridge = Bridge(config)
        sessions: list[requests.Session] = []
        try:
            await shim.start()
            await bridge.start()

            def shim_slot() -> Any:
                return next((s for s in bridge.faces.values() if s.target.product == "Plex MPV Shim"), None)

            await until(lambda: shim_slot() is not None, 30, message="the bridge found the shim by GDM")
            ident = shim_slot().advert.resource_identifier
            await until(lambda: (d := plextv.device_by_client(ident)) is not None and bool(d.connections), 30,
                        message="the shim's face registered on plex.tv")
            account = await asyncio.to_thread(MyPlexAccount, token=account_token, session=plexapi_at_fake, timeout=10)
            resource = next(r for r in await asyncio.to_thread(account.resources) if r.clientIdentifier == ident)
            assert resource.name == "Shim TV (bridge)" and "player" in resource.provides.split(",")
            client = await asyncio.to_thread(resource.connect, timeout=20)
            sessions.append(client._session)
            pms_session = requests.Session()
            pms_session.trust_env = False
            sessions.append(pms_session)
            pms = await asyncio.to_thread(PlexServer, f"http://127.0.0.1:{server.port}", TOKEN, session=pms_session,
                                          timeout=10)
            movie = await asyncio.to_thread(pms.fetchItem, 501)
            await asyncio.to_thread(client.playMedia, movie)

            def shim_fetched_media() -> bool:
                return any(r.path.startswith("/library/parts/")
                           and r.query.get("X-Plex-Client-Identifier") == shim.ident for r in server.requests)

            await until(shim_fetched_media, 30, message="plex-mpv-shim fetched the media it was flung")
            await asyncio.to_thread(client.stop)
        except BaseException:
            print(f"plex-mpv-shim log (tail):\n{shim.log_tail(80)}")
            raise
        finally:
            for session in sessions:
                session.close()
            await bridge.stop()
            await shim.stop()
    secrets = plextv.tokens() | {account_token}
    assert not any(t in repr(r) for r in server.requests for t in secrets), "no plex.tv token reached the server"
    assert not any(t in shim.log_text() for t in secrets), "nor the player"
