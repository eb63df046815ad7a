"""Flings end to end: python-plexapi flings to faces; each target gets the server block its profile
allows; every fling is audited, non-secure ones are logged as warnings; the token is nowhere."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import requests
from plexapi.client import PlexClient

from companion.bridge import Bridge
from companion.config import Config
from tests.fakes.companion_player import FakeCompanionPlayer
from tests.fakes.plex_server import FakePlexServer
from tests.helpers import bridge_config, until
from tests.lab import TOKEN, plex_server, write_test_profiles


@pytest.fixture
async def players() -> AsyncIterator[tuple[FakeCompanionPlayer, FakeCompanionPlayer]]:
    secure = FakeCompanionPlayer(name="Lab Secure TV", product="Lab TV")
    old = FakeCompanionPlayer(name="Lab Old TV", product="Lab TV")
    await secure.start()
    await old.start()
    yield secure, old
    await secure.stop()
    await old.stop()


def fling_config(tmp_path: Path, server: FakePlexServer, secure: FakeCompanionPlayer, old: FakeCompanionPlayer,
                 policy: str = "preferred") -> Config:
    write_test_profiles(tmp_path / "profiles", server)
    return bridge_config(tmp_path, f"""
servers:
  - {{url: "https://127.0.0.1:{server.port}", token: "{TOKEN}"}}
targets:
  - {{name: Lab Secure TV, address: 127.0.0.1, port: {secure.port}, profile: lab-secure-tv}}
  - {{name: Lab Old TV, address: 127.0.0.1, port: {old.port}, profile: lab-old-tv}}
profiles_dirs: [{tmp_path / "profiles"}]
security: {{policy: {policy}, relay: false}}
""")


def face_port(bridge: Bridge, name: str) -> int:
    return next(s.face.port for s in bridge.faces.values() if s.target.name == name)


async def test_each_target_gets_the_stream_its_profile_allows_and_insecure_ones_are_flagged(
        tmp_path: Path, server: FakePlexServer, players: tuple[FakeCompanionPlayer, FakeCompanionPlayer],
        caplog: pytest.LogCaptureFixture) -> None:
    secure, old = players
    config = fling_config(tmp_path, server, secure, old)
    caplog.set_level(logging.DEBUG)
    async with Bridge(config) as bridge:
        sessions: list[requests.Session] = []
        try:
            await until(lambda: len(bridge.faces) == 2, message="faces for both configured targets")
            pms = await asyncio.to_thread(plex_server, server, tmp_path)
            sessions.append(pms._session)
            movie = await asyncio.to_thread(pms.fetchItem, 501)
            for player, name in ((secure, "Lab Secure TV"), (old, "Lab Old TV")):
                client = await asyncio.to_thread(PlexClient, baseurl=f"http://127.0.0.1:{face_port(bridge, name)}",
                                                 timeout=10)
                sessions.append(client._session)
                await asyncio.to_thread(client.playMedia, movie, offset=5000)
                await until(lambda p=player: bool(p.received("playMedia")), message=f"{name} received playMedia")
        finally:
            for session in sessions:
                session.close()  # the controller hangs up before the servers stop, as a phone would

    got_secure = secure.received("playMedia")[0].params
    assert got_secure["protocol"] == "https"
    assert got_secure["address"] == f"127-0-0-1.{server.hash}.plex.direct"
    assert got_secure["port"] == str(server.port)
    assert got_secure["key"] == "/library/metadata/501"
    assert got_secure["offset"] == "5000"
    assert got_secure["token"] == server.transient_token, "the player needs the controller's token to play"

    got_old = old.received("playMedia")[0].params
    assert (got_old["protocol"], got_old["address"], got_old["port"]) == ("http", "127.0.0.1", str(server.port))

    # The audit holds both flings, with the reasons for the insecure one.
    db = sqlite3.connect(tmp_path / "state" / "audit.sqlite3")
    rows = db.execute("SELECT target_name, mode, secure, token_exposed, command_plain_http, reasons, outcome "
                      "FROM flings ORDER BY id").fetchall()
    db.close()
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        ("Lab Secure TV", "direct-secure", 1, 0), ("Lab Old TV", "direct-insecure", 0, 1)]
    assert all(r[4] == 1 for r in rows), "Companion commands travel over plain http"
    assert all(r[6] == "ok" for r in rows)
    codes = [reason[0] for reason in json.loads(rows[1][5])]
    assert "root-missing" in codes
    assert "token-exposed-plaintext" in codes

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "companion.flinging"]
    assert len(warnings) == 1
    assert "Lab Old TV" in warnings[0].getMessage()
    assert "root-missing" in warnings[0].getMessage()

    # The token (account and transient) never reaches the logs or the audit database.
    ours = [r for r in caplog.records if r.name.startswith(("companion", "aiohttp"))]
    assert ours, "the daemon logged"
    logged = "\n".join(r.getMessage() for r in ours)
    assert TOKEN not in logged
    assert server.transient_token not in logged
    for path in (tmp_path / "state").iterdir():
        assert TOKEN.encode() not in path.read_bytes(), f"token found in {path.name}"


async def test_policy_required_refuses_the_insecure_target_with_a_readable_error(
        tmp_path: Path, server: FakePlexServer, players: tuple[FakeCompanionPlayer, FakeCompanionPlayer]) -> None:
    secure, old = players
    config = fling_config(tmp_path, server, secure, old, policy="required")
    async with Bridge(config) as bridge:
        sessions: list[requests.Session] = []
        try:
            await until(lambda: len(bridge.faces) == 2, message="faces for both targets")
            pms = await asyncio.to_thread(plex_server, server, tmp_path)
            sessions.append(pms._session)
            movie = await asyncio.to_thread(pms.fetchItem, 501)
            client = await asyncio.to_thread(PlexClient, baseurl=f"http://127.0.0.1:{face_port(bridge, 'Lab Old TV')}",
                                             timeout=10)
            sessions.append(client._session)
            with pytest.raises(Exception, match=r"\(403\)") as info:
                await asyncio.to_thread(client.playMedia, movie)
            assert "root" in str(info.value).lower(), "the controller is told why"
            assert "security.policy" in str(info.value), "and what to change"
            assert old.received("playMedia") == []
            records = bridge.audit.recent(5)
        finally:
            for session in sessions:
                session.close()
    assert records[0].mode == "refused"
    assert records[0].outcome == "refused"
    assert "policy-required-refused" in [code for code, _ in records[0].reasons]


async def test_fling_to_an_unknown_server_is_refused_and_recorded(
        tmp_path: Path, server: FakePlexServer, players: tuple[FakeCompanionPlayer, FakeCompanionPlayer]) -> None:
    secure, old = players
    async with Bridge(fling_config(tmp_path, server, secure, old)) as bridge:
        await until(lambda: len(bridge.faces) == 2, message="faces")
        import aiohttp

        async with aiohttp.ClientSession() as http:
            for address in ("127.0.0.99", "169.254.10.10", "nas.example", "10.1.2.3"):
                url = f"http://127.0.0.1:{face_port(bridge, 'Lab Secure TV')}/player/playback/playMedia"
                async with http.get(url, params={"key": "/library/metadata/501", "address": address,
                                                 "port": str(server.port), "protocol": "https",
                                                 "machineIdentifier": "x", "token": TOKEN}) as resp:
                    body = await resp.text()
                assert resp.status == 403, body
                assert "not a Plex server this bridge knows" in body
                assert TOKEN not in body
        records = bridge.audit.recent(10)
    assert secure.received("playMedia") == []
    assert [r.mode for r in records] == ["refused"] * 4
    assert {r.reasons[0][0] for r in records} == {"unknown-server"}



async def test_target_that_cannot_verify_plays_through_the_relay_and_never_sees_the_token(
        tmp_path: Path, server: FakePlexServer, players: tuple[FakeCompanionPlayer, FakeCompanionPlayer]) -> None:
    _, old = players
    old.use_cases.fetch_media = True
    root_pem = tmp_path / "lab-root.pem"
    root_pem.write_bytes(server.root_pem)  # the bridge trusts the lab root; the old TV does not
    write_test_profiles(tmp_path / "profiles", server)
    config = bridge_config(tmp_path, f"""
servers:
  - {{url: "https://127.0.0.1:{server.port}", token: "{TOKEN}"}}
targets:
  - {{name: Lab Old TV, address: 127.0.0.1, port: {old.port}, profile: lab-old-tv}}
profiles_dirs: [{tmp_path / "profiles"}]
security: {{policy: preferred, relay: true, extra_roots: ["{root_pem}"]}}
""")
    async with Bridge(config) as bridge:
        sessions: list[requests.Session] = []
        try:
            await until(lambda: len(bridge.faces) == 1, message="face for the old TV")
            pms = await asyncio.to_thread(plex_server, server, tmp_path)
            sessions.append(pms._session)
            movie = await asyncio.to_thread(pms.fetchItem, 501)
            client = await asyncio.to_thread(PlexClient, baseurl=f"http://127.0.0.1:{face_port(bridge, 'Lab Old TV')}",
                                             timeout=10)
            sessions.append(client._session)
            await asyncio.to_thread(client.playMedia, movie)
            await asyncio.wait_for(old.playback_done.wait(), 10)
            assert bridge.relay is not None
            relay_port = bridge.relay.port
            records = bridge.audit.recent(5)
        finally:
            for session in sessions:
                session.close()

    got = old.received("playMedia")[0].params
    assert (got["protocol"], got["address"], got["port"]) == ("http", "127.0.0.1", str(relay_port))
    assert [f.status for f in old.fetched] == [200, 200, 206], [f.url for f in old.fetched]
    assert old.fetched[2].body == server.media[:1024]
    # The server saw the user's token on every relayed request ...
    relayed = [r for r in server.requests if r.path.startswith(("/library/metadata", "/playQueues", "/library/parts"))]
    assert len(relayed) >= 3
    assert all(r.token in (TOKEN, server.transient_token) for r in relayed)
    # ... and the TV never did: not in what it was told, sent or received.
    for secret in (TOKEN, server.transient_token):
        assert secret not in json.dumps(got)
        for f in old.fetched:
            assert secret not in f.url
            assert secret not in json.dumps(f.request_headers)
            assert secret not in json.dumps(f.response_headers)
            assert secret.encode() not in f.body
    assert records[0].mode == "relay"
    assert records[0].token_exposed is False
    assert records[0].secure is False
    assert "relay-last-hop-plaintext" in [code for code, _ in records[0].reasons]
