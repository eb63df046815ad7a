"""Secrets: a full scenario with recognisable tokens — flings in every mode, errors, refusals, timeline
traffic, the relay, the owner's admin-API fling, a linked plex.tv account registering every face — then
every token of the configuration (each server token and the admin token), the controller's token, the
plex.tv account token and every plex.tv device token are searched for in every log record (all loggers,
DEBUG), every audit database file (-wal and -shm included, while running and after stop), every HTTP
answer the controller and the admin client got, the /metrics text, and what the players and the server
received (no plex.tv token). None may occur."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from types import MappingProxyType
from urllib.parse import quote

import aiohttp
import pytest

from companion.bridge import Bridge
from companion.model import Command, Controller, redacted
from companion.plextv.store import AccountToken, PlexTvStore
from companion.proto.companion import media_request, parse_request
from tests.fakes.companion_player import FakeCompanionPlayer
from tests.fakes.plex_server import FakePlexServer
from tests.fakes.plextv import FakePlexTv
from tests.hardening.conftest import TOKEN, face_port
from tests.helpers import bridge_config, free_port, until
from tests.lab import write_test_profiles

PLAYERS = ("Secure TV", "Old TV", "Insecure TV", "Strict TV", "Broken TV")
SECOND_TOKEN = "SECOND-SERVER-TOKEN-61d0aa4e"  # a second configured server's token


@pytest.fixture
async def players() -> AsyncIterator[dict[str, FakeCompanionPlayer]]:
    made = {name: FakeCompanionPlayer(name=name, product="Lab TV") for name in PLAYERS}
    made["Old TV"].use_cases.fetch_media = True  # plays through the relay like a real TV
    made["Broken TV"].use_cases.status = 500
    for p in made.values():
        await p.start()
    yield made
    for p in made.values():
        await p.stop()


@pytest.fixture
async def plextv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakePlexTv]:
    async with FakePlexTv() as fake:
        monkeypatch.setenv("SSL_CERT_FILE", fake.write_ca(tmp_path / "plextv-ca.pem"))
        yield fake


def scenario_config(tmp_path: Path, server: FakePlexServer, players: dict[str, FakeCompanionPlayer],
                    plextv_url: str = "https://plex.tv") -> str:
    write_test_profiles(tmp_path / "profiles", server)
    root_pem = tmp_path / "lab-root.pem"
    root_pem.write_bytes(server.root_pem)
    rows = {
        "Secure TV": "profile: lab-secure-tv",  # direct-secure
        "Old TV": "profile: lab-old-tv",  # relay
        "Insecure TV": "profile: lab-old-tv, policy: disabled",  # direct-insecure
        "Strict TV": "profile: lab-old-tv, policy: required",  # refused
        "Broken TV": "profile: lab-secure-tv",  # the player answers 500: an error
    }
    targets = "\n".join(f"  - {{name: {name}, address: 127.0.0.1, port: {players[name].port}, {rows[name]}}}"
                        for name in PLAYERS)
    return f"""
servers:
  - {{url: "https://127.0.0.1:{server.port}", token: "{TOKEN}"}}
  - {{url: "https://127.0.0.3:{server.port}", token: "{SECOND_TOKEN}"}}
targets:
{targets}
profiles_dirs: [{tmp_path / "profiles"}]
security: {{policy: preferred, relay: true, extra_roots: ["{root_pem}"]}}
plextv: {{url: "{plextv_url}"}}
"""


def database_bytes(state: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in state.iterdir() if p.name.startswith("audit")}


async def test_the_token_appears_in_no_log_audit_file_answer_or_metric(
        tmp_path: Path, server: FakePlexServer, players: dict[str, FakeCompanionPlayer], plextv: FakePlexTv,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    config = bridge_config(tmp_path, scenario_config(tmp_path, server, players, plextv.url))
    config = dataclasses.replace(config, http=dataclasses.replace(config.http, admin_port=free_port()))
    account_token = plextv.issue_account_token()  # linked: the account token is in use throughout
    PlexTvStore(config.state_path).save(AccountToken(account_token))
    answers: list[str] = []
    files_running: dict[str, bytes] = {}
    async with Bridge(config) as bridge:
        await until(lambda: len(bridge.faces) == len(PLAYERS), message="every face open")
        await until(lambda: len([d for d in plextv.players() if d.connections]) == len(PLAYERS), timeout=20,
                    message="every face registered on plex.tv")
        headers = {"X-Plex-Client-Identifier": "secret-phone", "X-Plex-Device-Name": "Phone",
                   "X-Plex-Token": TOKEN}
        async with aiohttp.ClientSession() as http:
            async def ask(name: str, path: str, params: dict[str, str]) -> int:
                query = {**params, "X-Plex-Token": TOKEN, "commandID": "7"}
                async with http.get(f"http://127.0.0.1:{face_port(bridge, name)}{path}", params=query,
                                    headers=headers) as resp:
                    answers.append(f"{resp.status} {dict(resp.headers)}\n{await resp.text()}")
                    return resp.status

            fling = {"key": "/library/metadata/501", "offset": "0", "type": "video", "protocol": "https",
                     "address": "127.0.0.1", "port": str(server.port), "machineIdentifier": server.machine_identifier,
                     "token": TOKEN, "containerKey": "/playQueues/1?own=1&window=100"}
            statuses = {name: await ask(name, "/player/playback/playMedia", fling) for name in PLAYERS}
            statuses["unknown server"] = await ask("Secure TV", "/player/playback/playMedia",
                                                   {**fling, "address": "10.9.9.9"})
            statuses["bad offset"] = await ask("Secure TV", "/player/playback/playMedia",
                                               {**fling, "offset": f"x{TOKEN}"})
            statuses["bad volume"] = await ask("Secure TV", "/player/playback/setParameters",
                                               {"volume": TOKEN, "token": TOKEN})
            for name in PLAYERS:
                await ask(name, "/resources", {})
                await ask(name, "/player/timeline/poll", {"wait": "0"})
                await ask(name, "/player/playback/pause", {"token": TOKEN})
            await ask("Secure TV", "/player/nowhere/at-all", {"token": TOKEN})

            # The owner's own fling (the configured token's one use), a refused admin call, and the
            # pages and API answers that describe servers.
            admin = f"http://127.0.0.1:{config.http.admin_port}"
            admin_token = bridge.state.admin_token()
            owner = {"Authorization": f"Bearer {admin_token}"}
            async with http.post(f"{admin}/api/fling", headers=owner, json={
                    "target": "Old TV", "server": f"https://127.0.0.1:{server.port}",
                    "key": "/library/metadata/501"}) as resp:
                answers.append(f"{resp.status} {dict(resp.headers)}\n{await resp.text()}")
                statuses["admin fling"] = resp.status
            async with http.post(f"{admin}/api/fling", headers={"Authorization": f"Bearer {admin_token}x"},
                                 json={"target": "Old TV", "key": "/library/metadata/501"}) as resp:
                answers.append(f"{resp.status} {dict(resp.headers)}\n{await resp.text()}")
                statuses["admin wrong token"] = resp.status
            for path in ("/", "/api/servers", "/api/targets", "/api/flings", "/metrics"):
                async with http.get(f"{admin}{path}") as resp:
                    answers.append(f"{resp.status} {dict(resp.headers)}\n{await resp.text()}")
        await until(lambda: players["Old TV"].playback_done.is_set(), timeout=10, message="relayed playback")
        metrics = bridge.metrics.render().decode()
        files_running = database_bytes(tmp_path / "state")
        modes = sorted(f.decision.mode for f in bridge.flings.recent) if bridge.flings else []
    files_stopped = database_bytes(tmp_path / "state")

    assert statuses == {"Secure TV": 200, "Old TV": 200, "Insecure TV": 200, "Strict TV": 403, "Broken TV": 502,
                        "unknown server": 403, "bad offset": 400, "bad volume": 400, "admin fling": 200,
                        "admin wrong token": 401}
    assert {"direct-secure", "relay", "direct-insecure", "refused"} <= set(modes), "every mode was exercised"
    assert "-wal" in " ".join(files_running), "the WAL file was searched while the daemon ran"

    secret = TOKEN.encode()
    # Every token the configuration holds, the admin token, and the controller's (here the same as
    # the first server's, as python-plexapi's would be).
    tokens = {TOKEN, admin_token, *(s.token for s in config.servers if s.token)}
    assert len(tokens) == 3, "two server tokens and the admin token are searched for"
    plextv_tokens = plextv.tokens() | {account_token}
    assert len(plextv_tokens) == len(PLAYERS) + 1, "the account token and one device token per face"
    needles = tuple({form.encode() for t in tokens | plextv_tokens for form in (t, quote(t), t.lower())})
    found: list[str] = []

    def around(text: str) -> str:
        at = min((i for i in (text.find(n.decode()) for n in needles) if i >= 0), default=0)
        return text[max(0, at - 120):at + 40]

    for record in caplog.records:
        text = record.getMessage() + (logging.Formatter().formatException(record.exc_info) if record.exc_info else "")
        if any(n.decode() in text for n in needles):
            found.append(f"log {record.name}: ...{around(text)}")
    found += [f"answer: ...{around(a)}" for a in answers if any(n.decode() in a for n in needles)]
    found += [f"audit file {name} (running)" for name, data in files_running.items() if any(n in data for n in needles)]
    found += [f"audit file {name} (stopped)" for name, data in files_stopped.items() if any(n in data for n in needles)]
    if any(n.decode() in metrics for n in needles):
        found.append("metrics")
    assert any(r.levelno == logging.DEBUG for r in caplog.records), "DEBUG records were captured and searched"
    assert any(r.levelno == logging.WARNING for r in caplog.records), "the insecure flings were flagged"
    for player in players.values():
        found += [f"sent to the target {player.name}: {c.path}" for c in player.state.commands
                  if any(t in repr(c) for t in plextv_tokens)]
    found += [f"sent to the server: {r.path}" for r in server.requests if any(t in repr(r) for t in plextv_tokens)]
    assert not found, "token found in:\n" + "\n".join(found)
    old = players["Old TV"]
    assert [f.status for f in old.fetched][:2] == [200, 200]
    for f in old.fetched:
        assert TOKEN not in f.url and TOKEN not in str(f.request_headers) and secret not in f.body


def test_a_command_repr_never_shows_the_playmedia_token() -> None:
    # Command is a dataclass whose default repr prints params, where a playMedia token lives until
    # the decision; a stray log.debug("%r", command) or an exception note would leak it.
    command = parse_request("GET", "/player/playback/playMedia",
                            {"key": "/library/metadata/1", "token": TOKEN, "address": "10.0.0.2", "port": "32400"},
                            {"X-Plex-Token": TOKEN}, "127.0.0.1")
    assert TOKEN not in repr(media_request(command))
    assert TOKEN not in repr(command)
    direct = Command(group="playback", name="playMedia", params=MappingProxyType({"token": TOKEN}),
                     controller=Controller(client_id="c"))
    assert TOKEN not in repr(direct)


def test_a_token_embedded_in_another_parameter_is_masked_before_logging() -> None:
    # The face logs playMedia params at DEBUG through redacted(), which masks only parameters
    # *named* token; a containerKey (or any URL-valued parameter) carrying X-Plex-Token=... in its
    # own query went to the log verbatim. The audit's scrub() already finds such values.
    params = {"key": "/library/metadata/501", "token": TOKEN,
              "containerKey": f"/playQueues/1?own=1&X-Plex-Token={TOKEN}",
              "url": f"http://10.0.0.2:32400/x?foo=1&token={quote(TOKEN)}"}
    assert TOKEN not in str(redacted(params))
    assert quote(TOKEN) not in str(redacted(params))
