"""The server's companion proxy: a face registered on a configured server is found and controlled
through it by python-plexapi (``proxyThroughServer``), the command reaches the real player through
the same handler, decision and audit as a direct one, and the player's timeline comes back to the
server; the token is used with that server only and never logged."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from xml.etree import ElementTree

import pytest
import requests
from plexapi.client import PlexClient

from companion.admin import api
from companion.bridge import Bridge
from companion.config import Config
from companion.proxy import ProxySettings
from tests.fakes.companion_player import FakeCompanionPlayer
from tests.fakes.plex_server import FakePlexServer
from tests.helpers import bridge_config, until
from tests.lab import TOKEN, plex_server, write_test_profiles


def proxy_config(tmp_path: Path, server: FakePlexServer, player: FakeCompanionPlayer, *, token: bool = True,
                 extra: str = "") -> Config:
    write_test_profiles(tmp_path / "profiles", server)
    root = tmp_path / "fake-root.pem"
    root.write_bytes(server.root_pem)
    token_yaml = f', token: "{TOKEN}"' if token else ""
    return bridge_config(tmp_path, f"""
servers:
  - {{url: "https://127.0.0.1:{server.port}"{token_yaml}}}
targets:
  - {{name: Lab Secure TV, address: 127.0.0.1, port: {player.port}, profile: lab-secure-tv}}
profiles_dirs: [{tmp_path / "profiles"}]
security: {{policy: preferred, relay: false, extra_roots: [{root}]}}
{extra}
""")


@pytest.fixture
async def player() -> AsyncIterator[FakeCompanionPlayer]:
    fake = FakeCompanionPlayer(name="Lab Secure TV", product="Lab TV")
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def quick_server() -> AsyncIterator[FakePlexServer]:
    fake = FakePlexServer(token=TOKEN)
    fake.proxy.hold = 0.5  # a real server holds ~20 s; short here so stop() is quick either way
    await fake.start()
    yield fake
    await fake.stop()


def face_id(bridge: Bridge) -> str:
    return next(iter(bridge.faces.values())).advert.resource_identifier


def timeline_states(server: FakePlexServer, ident: str) -> list[tuple[str, str]]:
    """(state, key) of the active entry of every timeline the face reported through the proxy."""
    out = []
    for query, body in server.proxy.players[ident].timelines:
        root = ElementTree.fromstring(body)
        active = [t for t in root.findall("Timeline") if t.get("state") != "stopped"]
        out.append((query.get("state", ""), active[0].get("key", "") if active else ""))
    return out


async def test_a_command_through_the_server_proxy_reaches_the_player_and_its_timeline_comes_back(
        tmp_path: Path, quick_server: FakePlexServer, player: FakeCompanionPlayer,
        caplog: pytest.LogCaptureFixture) -> None:
    server = quick_server
    caplog.set_level(logging.DEBUG)
    async with Bridge(proxy_config(tmp_path, server, player)) as bridge:
        sessions: list[requests.Session] = []
        try:
            await until(lambda: len(bridge.faces) == 1, message="the configured target's face")
            ident = face_id(bridge)
            await until(lambda: ident in server.proxy.players, timeout=10, message="the face polls the server's proxy")
            registered = server.proxy.players[ident]
            assert registered.headers["X-Plex-Token"] == TOKEN, "the poll uses the token configured for this server"
            assert "playback" in registered.params["protocolCapabilities"]
            assert registered.params["timeout"] == "1"

            # python-plexapi finds the face among the server's clients and controls it through the server.
            pms = await asyncio.to_thread(plex_server, server, tmp_path)
            sessions.append(pms._session)
            clients = await asyncio.to_thread(pms.clients)
            client = next(c for c in clients if c.machineIdentifier == ident)
            assert isinstance(client, PlexClient)
            client.proxyThroughServer(True, server=pms)
            movie = await asyncio.to_thread(pms.fetchItem, 501)
            await asyncio.to_thread(client.playMedia, movie, offset=5000)
            await until(lambda: bool(player.received("playMedia")), timeout=10,
                        message="playMedia through the proxy reached the player")
            got = player.received("playMedia")[0].params
            # The same decision as a direct fling: the secure profile gets the plex.direct https base.
            assert (got["protocol"], got["address"]) == ("https", f"127-0-0-1.{server.hash}.plex.direct")

            await asyncio.to_thread(client.pause, mtype="video")
            await until(lambda: bool(player.received("pause")), timeout=10, message="pause reached the player")

            # The player's timeline (paused, the movie) comes back to the server through the proxy.
            await until(lambda: ("paused", "/library/metadata/501") in timeline_states(server, ident), timeout=10,
                        message="a paused timeline of the movie reported to /player/proxy/timeline")
            answers = [r for r in server.requests_to("/player/proxy/response")]
            assert len(answers) >= 2, "each handed-over command is answered"
            assert all(r.query.get("commandID") for r in answers)
        finally:
            for session in sessions:
                session.close()

    # Same audit as a direct fling; the controller is python-plexapi, seen through the server.
    db = sqlite3.connect(tmp_path / "state" / "audit.sqlite3")
    rows = db.execute("SELECT target_name, mode, outcome FROM flings").fetchall()
    db.close()
    assert rows == [("Lab Secure TV", "direct-secure", "ok")]
    # Ours only: urllib3 logs python-plexapi's request lines, the controller's own business.
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith(("companion", "aiohttp")))
    assert "through the companion proxy" in logged
    assert TOKEN not in logged, "the server token never reaches the log"
    # Stopping left no poll behind: the server saw no request after the bridge stopped.
    seen = len(server.requests)
    await asyncio.sleep(0)  # one turn of the loop for anything still scheduled
    assert len(server.requests) == seen


async def test_the_page_says_where_the_face_is_visible_and_why_not(
        tmp_path: Path, quick_server: FakePlexServer, player: FakeCompanionPlayer) -> None:
    """Without a token the proxy is not polled (and the view says how to fix it); with one it is."""
    server = quick_server

    async with Bridge(proxy_config(tmp_path, server, player, token=False)) as bridge:
        await until(lambda: len(bridge.faces) == 1, message="the face")
        views = api.target_json(api.target_views(bridge, datetime.now(UTC))[0])["visible"]
        by_channel = {v["channel"]: v for v in views}
        assert set(by_channel) == {"gdm", "plextv", "proxy"}
        assert by_channel["gdm"]["state"] == "visible"
        assert by_channel["plextv"]["state"] == "missing" and "companion link" in by_channel["plextv"]["fix"]
        assert by_channel["proxy"]["state"] == "missing"
        assert "token" in by_channel["proxy"]["fix"]
        assert server.proxy.players == {}, "no token configured: the server is not polled"


async def test_polls_back_off_on_errors_and_recover(
        tmp_path: Path, quick_server: FakePlexServer, player: FakeCompanionPlayer) -> None:
    server = quick_server
    server.proxy.offered = False
    bridge = Bridge(proxy_config(tmp_path, server, player))
    bridge.proxy_settings = ProxySettings(backoff_initial=0.05, backoff_max=0.2)
    async with bridge:
        await until(lambda: bridge.proxy is not None and bool(bridge.proxy.links()), message="a proxy link")
        assert bridge.proxy is not None
        link = bridge.proxy.links()[0]
        await until(lambda: link.state == "not-offered", timeout=5, message="the 404 is understood")
        assert link.view().fix, "a missing proxy comes with its fix"
        polls = len(server.requests_to("/player/proxy/poll"))
        await until(lambda: len(server.requests_to("/player/proxy/poll")) >= polls + 2, timeout=5,
                    message="it keeps trying, with backoff")
        server.proxy.offered = True
        await until(lambda: link.state == "polling", timeout=5, message="registered once the proxy is there")
        assert link.view().state == "visible"


async def test_companion_doctor_shows_per_face_where_it_is_visible_with_the_fixes(
        tmp_path: Path, quick_server: FakePlexServer, player: FakeCompanionPlayer) -> None:
    """The doctor CLI asks the running daemon (its admin API on loopback) and gives a finding per face."""
    import dataclasses

    from companion.doctor.visible import visibility_from_daemon
    from tests.helpers import free_port

    config = proxy_config(tmp_path, quick_server, player)
    config = dataclasses.replace(config, http=dataclasses.replace(config.http, admin_port=free_port()))
    assert visibility_from_daemon(config)[0].detail.startswith("no daemon answered"), "nothing runs yet"
    async with Bridge(config) as bridge:
        await until(lambda: bridge.proxy is not None and all(link.state == "polling" for link in bridge.proxy.links())
                    and bool(bridge.proxy.links()), timeout=10, message="the face registered on the proxy")
        [finding] = await asyncio.to_thread(visibility_from_daemon, config)
    assert finding.check == "visible (Lab Secure TV (bridge))"
    assert finding.status == "WARN", "visible, but not everywhere"
    assert "gdm" in finding.detail and "proxy" in finding.detail
    assert "plextv" in finding.detail and "companion link" in finding.fix
