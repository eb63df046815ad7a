"""Fling outcomes end to end: after every fling the bridge watches the target's timeline; a
direct-secure fling the player cannot play is recorded as failed, re-flung once through the relay
(which plays), and `companion profiles evidence` names the claim the failure contradicts."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import requests
from plexapi.client import PlexClient

from companion.audit import FlingRecord
from companion.bridge import Bridge
from companion.config import Config
from tests.fakes.companion_player import FakeCompanionPlayer
from tests.fakes.plex_server import FakePlexServer
from tests.helpers import bridge_config, free_port, until
from tests.lab import TOKEN, companion, plex_server, write_test_profiles

CLAIM = "trusts the lab root (made up for this test)"


@pytest.fixture
async def tv() -> AsyncIterator[FakeCompanionPlayer]:
    player = FakeCompanionPlayer(name="Lab HTTPS TV", product="Lab TV")
    await player.start()
    yield player
    await player.stop()


def outcome_config(tmp_path: Path, server: FakePlexServer, tv: FakeCompanionPlayer, *,
                   policy: str = "preferred", outcome: float = 15.0) -> Config:
    """The profile says the TV verifies the lab's chain (so the fling is direct-secure); the fake
    TV in fact trusts only the system's roots, like a TV whose store lacks the server's root."""
    if not (tmp_path / "profiles").exists():
        write_test_profiles(tmp_path / "profiles", server)
    (tmp_path / "profiles" / "devices" / "lab-https-tv.yaml").write_text(f"""id: lab-https-tv
name: Lab TV said to verify the lab chain
match: []
transport: companion
media: {{https: true, http: true}}
tls:
  roots: {{store: test-lab}}
dns: {{resolver: public}}
evidence:
  - {{claim: "{CLAIM}", about: [tls.roots, roots.fake-test-root], confidence: assumed}}
  - {{claim: "plays https media", about: [media.https], confidence: assumed}}
""")
    root_pem = tmp_path / "lab-root.pem"
    root_pem.write_bytes(server.root_pem)  # the bridge's relay trusts the lab root
    (tmp_path / "c.yaml").write_text(f"state_dir: {tmp_path / 'state'}\nprofiles_dirs: [{tmp_path / 'profiles'}]\n")
    return bridge_config(tmp_path, f"""
servers:
  - {{url: "https://127.0.0.1:{server.port}", token: "{TOKEN}"}}
targets:
  - {{name: Lab HTTPS TV, address: 127.0.0.1, port: {tv.port}, profile: lab-https-tv}}
profiles_dirs: [{tmp_path / "profiles"}]
security: {{policy: {policy}, relay: true, extra_roots: ["{root_pem}"]}}
""", timeouts={"outcome": outcome})


def with_admin(config: Config, port: int) -> Config:
    return dataclasses.replace(config, http=dataclasses.replace(config.http, admin_port=port))


async def fling_once(bridge: Bridge, server: FakePlexServer, tmp_path: Path) -> None:
    """python-plexapi flings movie 501 to the TV's face, as a phone would."""
    await until(lambda: len(bridge.faces) == 1, message="the TV's face is up")
    port = next(iter(bridge.faces.values())).face.port
    sessions: list[requests.Session] = []
    try:
        pms = await asyncio.to_thread(plex_server, server, tmp_path)
        sessions.append(pms._session)
        movie = await asyncio.to_thread(pms.fetchItem, 501)
        client = await asyncio.to_thread(PlexClient, baseurl=f"http://127.0.0.1:{port}", timeout=10)
        sessions.append(client._session)
        await asyncio.to_thread(client.playMedia, movie)
    finally:
        for session in sessions:
            session.close()


async def test_a_direct_secure_fling_the_tv_cannot_play_fails_is_reflung_through_the_relay_and_counts_as_evidence(
        tmp_path: Path, server: FakePlexServer, tv: FakeCompanionPlayer, caplog: pytest.LogCaptureFixture) -> None:
    tv.use_cases.report_playback = True
    admin_port = free_port()
    caplog.set_level(logging.INFO)
    async with Bridge(with_admin(outcome_config(tmp_path, server, tv), admin_port)) as bridge:
        await fling_once(bridge, server, tmp_path)

        def settled() -> list[FlingRecord]:
            records = bridge.audit.recent(10)
            return records if len(records) == 2 and all(r.playback in ("ok", "failed") for r in records) else []

        await until(settled, timeout=30, message="both flings have an outcome")
        relay, direct = bridge.audit.recent(10)
        metrics = bridge.metrics.render().decode()
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{admin_port}/") as resp:
            live_page = await resp.text()

    # The TV got the secure stream first, then the relay, with the same media.
    first, second = (c.params for c in tv.received("playMedia"))
    assert (first["protocol"], first["address"]) == ("https", f"127-0-0-1.{server.hash}.plex.direct")
    assert (second["protocol"], second["address"]) == ("http", "127.0.0.1")
    assert second["key"] == first["key"] == "/library/metadata/501"
    [failure] = tv.state.fetch_failures
    assert "CERTIFICATE_VERIFY_FAILED" in failure, "the TV resolved the name and rejected the lab's chain"
    assert tv.state.state == "playing"

    assert (direct.mode, direct.playback) == ("direct-secure", "failed")
    assert direct.playback_reason == "the player reported an error: cannot open the stream"
    assert {"tls.roots", "roots.fake-test-root", "media.https", "dns.resolver"} <= set(direct.relied_on)
    assert (relay.mode, relay.playback, relay.refling_of) == ("relay", "ok", direct.id)
    assert [code for code, _ in relay.reasons] == ["direct-secure-failed", "relay-last-hop-plaintext"]
    assert relay.token_exposed is False
    # The retry is the controller's fling carried on: the relay fetched with the controller's token,
    # and the TV never saw a token.
    fetched = [(r.path, r.token) for r in server.requests if r.path.startswith(("/library/metadata", "/library/parts"))]
    assert fetched == [("/library/metadata/501", TOKEN),  # python-plexapi looking the movie up
                       ("/library/metadata/501", server.transient_token),  # the relay, for the TV
                       ("/library/parts/501/file", server.transient_token)]
    assert second["token"] not in (TOKEN, server.transient_token)

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("failed on the target: the player reported an error" in m for m in warnings)
    assert any("re-flinging it once through the relay" in m for m in warnings)
    assert "companion_relay_reflings_total 1.0" in metrics
    assert 'companion_fling_outcomes_total{mode="direct-secure",result="failed"} 1.0' in metrics
    assert 'companion_fling_outcomes_total{mode="relay",result="ok"} 1.0' in metrics
    assert 'data-playback="failed">failed on the device: the player reported an error' in live_page
    assert 'data-playback="ok"' in live_page and 'data-contradicted="1"' in live_page

    code, out, err = await companion("--config", str(tmp_path / "c.yaml"), "profiles", "evidence", "--json")
    assert code == 0, err
    [row] = json.loads(out)
    assert (row["profile"], row["flings"], row["ok"], row["failures"], row["direct_secure_failures"],
            row["reflings"], row["contradicted"]) == ("lab-https-tv", 2, 1, 1, 1, 1, True)
    named = {c["about"]: [claim["claim"] for claim in c["claims"]] for c in row["claims"]}
    assert named["roots.fake-test-root"] == [CLAIM]
    assert named["tls.roots"] == [CLAIM]
    assert named["media.https"] == ["plays https media"]
    assert named["dns.resolver"] == [], "no claim backs the resolver"
    code, out, _ = await companion("--config", str(tmp_path / "c.yaml"), "profiles", "evidence")
    assert f'roots.fake-test-root: "{CLAIM}" [assumed]' in out
    assert "dns.resolver: no claim backs this key" in out

    # After a restart the status page still marks the profile: the count comes back from the audit log.
    admin_port = free_port()
    async with Bridge(with_admin(outcome_config(tmp_path, server, tv), admin_port)) as again:
        await until(lambda: len(again.faces) == 1, message="the TV's face is up again")
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{admin_port}/") as resp:
            page = await resp.text()
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{admin_port}/api/targets") as resp:
            [target] = await resp.json()
    assert 'data-contradicted="1"' in page and "contradicted by 1 failed fling(s)" in page
    assert target["profile"]["contradicted_by_failed_flings"] == 1


async def test_a_fling_that_plays_is_recorded_ok_and_not_reflung(
        tmp_path: Path, server: FakePlexServer, tv: FakeCompanionPlayer) -> None:
    async with Bridge(outcome_config(tmp_path, server, tv)) as bridge:  # the fake plays whatever it is given
        await fling_once(bridge, server, tmp_path)
        await until(lambda: [r.playback for r in bridge.audit.recent(10)] == ["ok"], timeout=15,
                    message="the fling is recorded as playing")
    assert len(tv.received("playMedia")) == 1


async def test_buffering_that_never_ends_fails_after_the_outcome_timeout_and_policy_required_does_not_refling(
        tmp_path: Path, server: FakePlexServer, tv: FakeCompanionPlayer) -> None:
    tv.use_cases.never_plays = True
    async with Bridge(outcome_config(tmp_path, server, tv, policy="required", outcome=1.0)) as bridge:
        await fling_once(bridge, server, tmp_path)
        await until(lambda: [r.playback for r in bridge.audit.recent(10)] == ["failed"], timeout=15,
                    message="the fling is recorded as failed")
        [record] = bridge.audit.recent(10)
    assert (record.mode, record.playback_reason) == ("direct-secure", "the player was still buffering after 1 s")
    assert len(tv.received("playMedia")) == 1, "only 'preferred' re-flings through the relay"
