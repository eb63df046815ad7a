"""The admin HTTP surface against a running Bridge: JSON API, locks, /metrics, the Host allow-list,
the admin token on POST /api/fling, and no token in any answer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from companion.admin import AdminServer
from companion.bridge import Bridge
from companion.config import Config
from companion.proto.timeline import PlayerState
from tests.fakes.companion_player import FakeCompanionPlayer
from tests.fakes.plex_server import FakePlexServer
from tests.helpers import bridge_config, until
from tests.lab import write_test_profiles

TOKEN = "ACCOUNT-TOKEN-7d2e4b90"  # recognisable: searched for in every answer
SECURE, OLD = "Lab Secure TV", "Lab Old TV"
GET_ROUTES = ("/", "/api/targets", "/api/servers", "/api/flings", "/api/profiles", "/api/health", "/api/doctor",
              "/metrics")


def admin_config(tmp_path: Path, server: FakePlexServer, secure: FakeCompanionPlayer, old: FakeCompanionPlayer,
                 *, extra_target: str = "") -> Config:
    write_test_profiles(tmp_path / "profiles", server)
    return bridge_config(tmp_path, f"""
servers:
  - {{url: "https://127.0.0.1:{server.port}", token: "{TOKEN}"}}
targets:
  - {{name: {SECURE}, address: 127.0.0.1, port: {secure.port}, profile: lab-secure-tv}}
  - {{name: {OLD}, address: 127.0.0.1, port: {old.port}, profile: lab-old-tv}}
{extra_target}
profiles_dirs: [{tmp_path / "profiles"}]
security: {{policy: preferred, relay: false, dns_check: false}}
""")


@dataclass
class Rig:
    bridge: Bridge
    admin: AdminServer
    server: FakePlexServer
    secure: FakeCompanionPlayer
    old: FakeCompanionPlayer
    http: aiohttp.ClientSession

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.admin.port}"

    @property
    def admin_token(self) -> str:
        return self.bridge.state.admin_token()

    def face_port(self, name: str) -> int:
        return next(s.face.port for s in self.bridge.faces.values() if s.target.name == name)

    async def fling_via_face(self, name: str) -> None:
        """What a phone does: playMedia on the face, pointing at the server, with its token."""
        url = f"http://127.0.0.1:{self.face_port(name)}/player/playback/playMedia"
        params = {"key": "/library/metadata/501", "address": "127.0.0.1", "port": str(self.server.port),
                  "protocol": "https", "machineIdentifier": self.server.machine_identifier, "offset": "0",
                  "token": self.server.transient_token, "commandID": "1"}
        async with self.http.get(url, params=params,
                                 headers={"X-Plex-Client-Identifier": "test-phone"}) as resp:
            assert resp.status == 200, await resp.text()

    async def get(self, path: str, **kw: object) -> tuple[int, str]:
        async with self.http.get(self.base + path, **kw) as resp:  # type: ignore[arg-type]
            return resp.status, await resp.text()

    async def get_json(self, path: str) -> object:
        async with self.http.get(self.base + path) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()


@pytest.fixture
async def server() -> AsyncIterator[FakePlexServer]:
    async with FakePlexServer(token=TOKEN) as fake:
        yield fake


@pytest.fixture
async def players() -> AsyncIterator[tuple[FakeCompanionPlayer, FakeCompanionPlayer]]:
    secure = FakeCompanionPlayer(name=SECURE, product="Lab TV")
    old = FakeCompanionPlayer(name=OLD, product="Lab TV")
    await secure.start()
    await old.start()
    yield secure, old
    await secure.stop()
    await old.stop()


@asynccontextmanager
async def running(tmp_path: Path, server: FakePlexServer, players: tuple[FakeCompanionPlayer, FakeCompanionPlayer],
                  *, doctor_interval: float = 0, extra_target: str = "") -> AsyncIterator[Rig]:
    secure, old = players
    async with Bridge(admin_config(tmp_path, server, secure, old, extra_target=extra_target)) as bridge:
        admin = AdminServer(bridge, bind="127.0.0.1", port=0, token=bridge.state.admin_token(),
                            doctor_interval=doctor_interval)
        async with admin, aiohttp.ClientSession() as http:
            rig = Rig(bridge, admin, server, secure, old, http)
            await until(lambda: len(bridge.faces) >= 2, message="faces for the configured targets")
            yield rig


@pytest.fixture
async def rig(tmp_path: Path, server: FakePlexServer,
              players: tuple[FakeCompanionPlayer, FakeCompanionPlayer]) -> AsyncIterator[Rig]:
    async with running(tmp_path, server, players) as r:
        yield r


def secrets_of(rig: Rig) -> list[str]:
    return [TOKEN, rig.server.transient_token, rig.admin_token]


def by_name(targets: object, name: str) -> dict:
    assert isinstance(targets, list)
    return next(t for t in targets if t["name"] == name)


# -- JSON ----------------------------------------------------------------------------------------


async def test_targets_api_shows_a_closed_lock_for_the_secure_fling_and_an_open_one_with_reasons(rig: Rig):
    await rig.fling_via_face(SECURE)
    await rig.fling_via_face(OLD)
    targets = await rig.get_json("/api/targets")

    secure = by_name(targets, SECURE)
    assert secure["secure_possible"] is True
    assert [lock["lock"] for lock in secure["locks"]] == ["closed"]
    assert secure["locks"][0]["source"] == "fling"
    assert secure["locks"][0]["mode"] == "direct-secure"
    assert secure["profile"] == {"id": "lab-secure-tv", "name": "Lab TV that trusts the test root",
                                 "confidence": "assumed", "assumed": True, "contradicted_by_failed_flings": 0}
    assert secure["available"] is True
    assert secure["kind"] == "companion"

    old = by_name(targets, OLD)
    assert old["secure_possible"] is False
    lock = old["locks"][0]
    assert (lock["lock"], lock["mode"], lock["token_exposed"]) == ("open", "direct-insecure", True)
    codes = [r["code"] for r in lock["reasons"]]
    assert "root-missing" in codes
    assert "token-exposed-plaintext" in codes


async def test_before_any_fling_the_locks_are_predicted_from_the_probed_certificate(rig: Rig):
    targets = await rig.get_json("/api/targets")
    assert {t["locks"][0]["lock"] for t in targets} == {"unknown"}, "nothing measured yet: no lock claimed"

    await rig.admin.run_doctor()  # the checks measure the server through the bridge's probe cache
    targets = await rig.get_json("/api/targets")
    secure, old = by_name(targets, SECURE), by_name(targets, OLD)
    assert (secure["locks"][0]["lock"], secure["locks"][0]["source"]) == ("closed", "probe")
    assert (old["locks"][0]["lock"], old["locks"][0]["source"]) == ("open", "probe")
    assert "root-missing" in [r["code"] for r in old["locks"][0]["reasons"]]


async def test_servers_api_shows_the_chain_as_sent_with_hash_versions_and_validity(rig: Rig):
    servers = await rig.get_json("/api/servers")
    assert isinstance(servers, list) and len(servers) == 1
    assert servers[0]["tls"] is None, "not probed yet"
    await rig.fling_via_face(SECURE)

    (server,) = await rig.get_json("/api/servers")  # type: ignore[misc]
    assert (server["address"], server["port"]) == ("127.0.0.1", rig.server.port)
    tls = server["tls"]
    assert tls["hash"] == rig.server.hash
    assert "1.2" in tls["tls_versions"] and "1.3" in tls["tls_versions"]
    assert [c["subject"] for c in tls["chain"]] == [f"*.{rig.server.hash}.plex.direct",
                                                    tls["chain"][1]["subject"]]
    assert len(tls["chain"]) == 2, "leaf and intermediate, exactly as the server sent them"
    assert tls["leaf"]["key_type"] == "rsa"
    assert tls["leaf"]["not_after"] > tls["leaf"]["not_before"]
    assert "token" not in server


async def test_flings_api_reads_the_audit_log_with_the_insecure_filter_and_a_limit(rig: Rig):
    await rig.fling_via_face(SECURE)
    await rig.fling_via_face(OLD)
    await rig.fling_via_face(OLD)

    everything = await rig.get_json("/api/flings")
    assert [f["mode"] for f in everything] == ["direct-insecure", "direct-insecure", "direct-secure"]
    insecure = await rig.get_json("/api/flings?insecure=1")
    assert {f["target"]["name"] for f in insecure} == {OLD}
    assert len(await rig.get_json("/api/flings?limit=1")) == 1
    for bad in ("0", "-1", "abc", "100000"):
        status, body = await rig.get(f"/api/flings?limit={bad}")
        assert status == 400, bad
        assert "limit" in body


async def test_profiles_and_health_api(rig: Rig):
    profiles = await rig.get_json("/api/profiles")
    ids = {p["id"] for p in profiles}
    assert {"lab-secure-tv", "lab-old-tv", "default"} <= ids

    health = await rig.get_json("/api/health")
    assert health["status"] == "ok"
    assert health["targets"] == 2 and health["targets_available"] == 2
    assert health["servers"] == 1
    assert health["version"]
    assert health["uptime_seconds"] >= 0


async def test_health_is_degraded_when_a_player_is_unavailable(rig: Rig):
    slot = next(s for s in rig.bridge.faces.values() if s.target.name == OLD)
    await rig.old.stop()
    async with rig.http.get(f"http://127.0.0.1:{slot.face.port}/player/playback/pause",
                            params={"commandID": "2"}, headers={"X-Plex-Client-Identifier": "p"}) as resp:
        assert resp.status >= 500
    await until(lambda: not slot.adapter.available, message="the adapter marks the gone player unavailable")
    health = await rig.get_json("/api/health")
    assert health["status"] == "degraded"
    assert health["targets_available"] == 1
    assert any("unavailable" in p for p in health["problems"])


# -- /metrics -------------------------------------------------------------------------------------


async def test_metrics_are_prometheus_text_with_fling_counters_and_face_gauges(rig: Rig):
    await rig.fling_via_face(SECURE)
    await rig.fling_via_face(OLD)
    async with rig.http.get(rig.base + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await resp.text()
    assert 'companion_flings_total{mode="direct-secure",outcome="ok",secure="true"} 1.0' in text
    assert 'companion_insecure_flings_total{mode="direct-insecure"} 1.0' in text
    assert "companion_long_polls_open 0.0" in text
    assert "companion_timeline_subscribers 0.0" in text
    assert 'companion_targets{available="true",kind="companion"} 2.0' in text


async def test_metrics_count_the_long_polls_held_by_the_faces(rig: Rig):
    url = f"http://127.0.0.1:{rig.face_port(SECURE)}/player/timeline/poll"
    slot = next(s for s in rig.bridge.faces.values() if s.target.name == SECURE)
    # The player's first timeline answers every waiting poll; let it arrive first.
    await until(lambda: slot.face.state != PlayerState(), timeout=5, message="the player's first timeline")

    async def long_poll() -> None:
        async with rig.http.get(url, params={"wait": "1", "commandID": "5"},
                                headers={"X-Plex-Client-Identifier": "poller"}) as resp:
            await resp.read()

    held = asyncio.ensure_future(long_poll())
    try:
        await until(lambda: slot.face.long_poll_count == 1, message="the face holds the long-poll")
        _, text = await rig.get("/metrics")
        assert "companion_long_polls_open 1.0" in text
    finally:
        held.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await held


# -- Host allow-list, token, sizes ----------------------------------------------------------------


async def test_a_foreign_host_header_gets_421_on_every_admin_route_and_is_logged(
        rig: Rig, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING, logger="companion.admin")
    for path in GET_ROUTES:
        status, body = await rig.get(path, headers={"Host": "evil.example"})
        assert status == 421, path
        assert "evil.example" in body
    async with rig.http.post(rig.base + "/api/fling", json={"target": SECURE, "key": "/library/metadata/501"},
                             headers={"Host": "evil.example:32480",
                                      "Authorization": f"Bearer {rig.admin_token}"}) as resp:
        assert resp.status == 421
    assert rig.secure.received("playMedia") == []
    assert any("evil.example" in r.getMessage() for r in caplog.records)
    # Names that are ours pass: IP literals and localhost.
    for host in ("127.0.0.1", f"localhost:{rig.admin.port}", "[::1]"):
        status, _ = await rig.get("/api/health", headers={"Host": host})
        assert status == 200, host


async def test_fling_api_refuses_without_the_admin_token_or_with_a_wrong_one(rig: Rig):
    body = {"target": SECURE, "server": rig.bridge.registry.servers()[0].id, "key": "/library/metadata/501"}
    for headers in ({}, {"Authorization": "Bearer not-the-token"}, {"Authorization": rig.admin_token},
                    {"Authorization": f"Basic {rig.admin_token}"}):
        async with rig.http.post(rig.base + "/api/fling", json=body, headers=headers) as resp:
            assert resp.status == 401, headers
            answer = await resp.json()
        assert "admin token" in answer["error"]
    status, _ = await rig.get("/api/fling")
    assert status == 405, "GET does not fling"
    async with rig.http.post(rig.base + "/api/doctor") as resp:
        assert resp.status == 401, "running the checks on demand needs the token too"
    assert rig.secure.received("playMedia") == []


async def test_fling_api_with_the_admin_token_plays_on_the_target_and_reports_the_decision(rig: Rig):
    server_id = rig.bridge.registry.servers()[0].id
    auth = {"Authorization": f"Bearer {rig.admin_token}"}
    async with rig.http.post(rig.base + "/api/fling", headers=auth, json={
            "target": SECURE, "server": server_id, "key": "/library/metadata/501", "offset": 5000}) as resp:
        text = await resp.text()
        assert resp.status == 200, text
        answer = await resp.json()
    assert (answer["mode"], answer["secure"], answer["flag"]) == ("direct-secure", True, "secure")
    await until(lambda: bool(rig.secure.received("playMedia")), message="the player received playMedia")
    params = rig.secure.received("playMedia")[0].params
    assert (params["protocol"], params["key"], params["offset"]) == ("https", "/library/metadata/501", "5000")
    for secret in secrets_of(rig):
        assert secret not in text


async def test_fling_api_explains_bad_requests(rig: Rig):
    auth = {"Authorization": f"Bearer {rig.admin_token}"}
    cases = [
        (b"not json", 400, "JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"target": "Nobody", "key": "/library/metadata/1"}', 404, "Nobody"),
        (b'{"target": "Lab Secure TV", "server": "https://10.9.9.9:32400", "key": "/x"}', 404, "10.9.9.9"),
        (b'{"target": "Lab Secure TV", "key": "library"}', 400, "key"),
        (b'{"target": "Lab Secure TV", "key": "/x", "offset": -5}', 400, "offset"),
    ]
    for raw, status, needle in cases:
        async with rig.http.post(rig.base + "/api/fling", data=raw,
                                 headers={**auth, "Content-Type": "application/json"}) as resp:
            answer = await resp.json()
            assert resp.status == status, (raw, answer)
        assert needle in answer["error"], (raw, answer)
    async with rig.http.post(rig.base + "/api/fling", data=b"{" + b" " * 40_000 + b"}",
                             headers={**auth, "Content-Type": "application/json"}) as resp:
        assert resp.status == 413, "request bodies are bounded"
    assert rig.secure.received("playMedia") == []


async def test_no_token_appears_in_any_admin_answer(rig: Rig):
    await rig.fling_via_face(SECURE)
    await rig.fling_via_face(OLD)
    await rig.admin.run_doctor()
    bodies = [(await rig.get(path))[1] for path in GET_ROUTES]
    async with rig.http.post(rig.base + "/api/fling", json={"target": "x"},
                             headers={"Authorization": "Bearer wrong"}) as resp:
        bodies.append(await resp.text())
    async with rig.http.post(rig.base + "/api/doctor",
                             headers={"Authorization": f"Bearer {rig.admin_token}"}) as resp:
        assert resp.status == 200
        bodies.append(await resp.text())
    for body in bodies:
        for secret in secrets_of(rig):
            assert secret not in body


# -- the page -------------------------------------------------------------------------------------


async def test_status_page_is_plain_html_that_refreshes_itself_and_explains_the_locks(rig: Rig):
    await rig.fling_via_face(SECURE)
    await rig.fling_via_face(OLD)
    async with rig.http.get(rig.base + "/") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        assert "script-src" not in resp.headers["Content-Security-Policy"]
        page = await resp.text()
    assert '<meta http-equiv="refresh" content="10">' in page
    assert "<script" not in page, "usable without JavaScript"
    assert page.count('data-lock="closed"') == 1
    assert page.count('data-lock="open"') == 1
    assert "root-missing" in page
    assert "closed lock" in page and "open lock" in page, "the legend"
    assert 'data-fling-flag="secure"' in page and 'data-fling-flag="insecure"' in page
    assert ">assumed<" in page, "an assumed profile says so"


async def test_status_page_escapes_names_that_came_off_the_network(
        tmp_path: Path, server: FakePlexServer, players: tuple[FakeCompanionPlayer, FakeCompanionPlayer]):
    evil = FakeCompanionPlayer(name="evil")
    await evil.start()
    try:
        extra = (f'  - {{name: "<img src=x onerror=alert(1)>&Co", address: 127.0.0.1, port: {evil.port}, '
                 'profile: lab-old-tv}')
        async with running(tmp_path, server, players, extra_target=extra) as rig:
            await until(lambda: len(rig.bridge.faces) == 3, message="the third face")
            _, page = await rig.get("/")
            targets = await rig.get_json("/api/targets")
    finally:
        await evil.stop()
    assert "<img src=x" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;&amp;Co" in page
    assert any(t["name"] == "<img src=x onerror=alert(1)>&Co" for t in targets), "JSON keeps the real name"


async def test_background_checks_show_on_the_page_and_in_health(
        tmp_path: Path, server: FakePlexServer, players: tuple[FakeCompanionPlayer, FakeCompanionPlayer]):
    async with running(tmp_path, server, players, doctor_interval=60) as rig:
        await until(lambda: bool(rig.admin.findings), timeout=5, message="the first background doctor run")
        _, page = await rig.get("/")
        health = await rig.get_json("/api/health")
        doctor = await rig.get_json("/api/doctor")
    checks = {f["check"]: f["status"] for f in doctor["findings"]}
    assert checks["gdm-multicast (127.0.0.1)"] == "PASS"
    assert checks["ports"] == "PASS", "the bridge's own face ports count as fine"
    assert health["doctor"]["PASS"] >= 2
    assert 'data-check-status="PASS"' in page
    assert "gdm-multicast (127.0.0.1)" in page
