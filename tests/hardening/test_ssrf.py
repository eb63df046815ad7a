"""No SSRF: a playMedia may only send a player (and the bridge's probe) to a server the bridge knows,
and the relay only lets a transcoder read sources on the granted server.

Honeypot listeners sit on the addresses a forged playMedia names; none may ever be contacted.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
from yarl import URL

from companion.registry import config_server_id
from tests.fakes.companion_player import FakeCompanionPlayer
from tests.fakes.plex_server import FakePlexServer
from tests.hardening.conftest import TOKEN, face_port, running_bridge


class Honeypot:
    """TCP listeners that count every connection made to them."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self._servers: list[asyncio.Server] = []

    async def listen(self, host: str, port: int) -> int:
        async def hit(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.hits.append(f"{host}:{port}")
            writer.close()

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server = await asyncio.start_server(hit, host, port, family=family)
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        for server in self._servers:
            server.close()
            await server.wait_closed()


@pytest.fixture
async def honeypot() -> AsyncIterator[Honeypot]:
    pot = Honeypot()
    yield pot
    await pot.close()


def ssrf_config(server: FakePlexServer, player: FakeCompanionPlayer, root_pem: Path) -> str:
    return f"""
servers:
  - {{url: "https://127.0.0.1:{server.port}", token: "{TOKEN}"}}
targets:
  - {{name: Hardening TV, address: 127.0.0.1, port: {player.port}}}
security: {{policy: preferred, relay: true, extra_roots: ["{root_pem}"]}}
"""


def forged_addresses(server: FakePlexServer, other_port: int) -> list[tuple[str, int]]:
    """(address, port) pairs that are not the known server, each a different trick."""
    p = server.port
    unknown_pd = f"10-1-2-3.{server.hash}.plex.direct"
    return [
        ("127.0.0.2", p),  # another loopback address, the server's port
        ("127.0.0.1", other_port),  # the known server's IP, another port
        (f"127-0-0-1.{server.hash}.plex.direct", other_port),  # its own plex.direct name, another port
        ("10.1.2.3", p), ("192.168.1.20", p), ("172.16.0.9", 8080),  # other LAN hosts
        ("169.254.169.254", 80), ("169.254.10.10", p),  # link-local (cloud metadata)
        ("0.0.0.0", p), ("255.255.255.255", p), ("224.0.0.251", 5353),
        ("localhost", p), ("nas.example", p), ("plex.example.com", 32400), ("localhost.", p),  # names
        ("::1", p), ("[::1]", p), ("::ffff:127.0.0.2", p), ("fe80::1", p), ("[fe80::1%25lo]", p),
        ("fd00::5", p), ("::", p),
        (unknown_pd, p),  # plex.direct name of an IP the bridge does not know
        (f"127-0-0-2.{server.hash}.plex.direct", p),  # the right hash, another loopback IP
        ("2130706433", p), ("0x7f000001", p), ("127.1", p), ("017700000001", p),  # odd IPv4 spellings
    ]


async def test_playmedia_to_anything_but_a_known_server_is_refused_recorded_and_nothing_is_contacted(
        tmp_path: Path, server: FakePlexServer, player: FakeCompanionPlayer, honeypot: Honeypot) -> None:
    root_pem = tmp_path / "root.pem"
    root_pem.write_bytes(server.root_pem)
    other_port = await honeypot.listen("127.0.0.1", 0)
    await honeypot.listen("127.0.0.2", server.port)
    with contextlib.suppress(OSError):  # IPv6 loopback may be absent
        await honeypot.listen("::1", server.port)
    cases = forged_addresses(server, other_port)
    def caused() -> list[object]:  # what a fling would cause; the face's own proxy poll is not that
        return [r for r in server.requests if not r.path.startswith("/player/proxy/")]

    requests_before = len(caused())
    async with running_bridge(tmp_path, ssrf_config(server, player, root_pem)) as bridge:
        url = f"http://127.0.0.1:{face_port(bridge)}/player/playback/playMedia"
        known_id = config_server_id(f"https://127.0.0.1:{server.port}")
        answers: list[tuple[str, int, str]] = []
        async with aiohttp.ClientSession() as http:
            for address, port in cases:
                for machine_id in ("", known_id, server.machine_identifier):
                    params = {"key": "/library/metadata/501", "address": address, "port": str(port),
                              "protocol": "https", "machineIdentifier": machine_id, "token": TOKEN,
                              "commandID": "1"}
                    async with http.get(url, params=params, headers={"X-Plex-Client-Identifier": "ssrf"}) as resp:
                        answers.append((f"{address}:{port} (machineIdentifier={machine_id!r})", resp.status,
                                        await resp.text()))
        records = bridge.audit.recent(1000)
    wrong = [(what, status) for what, status, _ in answers if status != 403]
    assert wrong == [], "every forged server address is refused with 403"
    assert all("not a Plex server this bridge knows" in body for _, _, body in answers)
    assert all(TOKEN not in body for _, _, body in answers)
    assert len(records) == len(answers), "each refusal is in the audit log"
    assert {r.mode for r in records} == {"refused"}
    assert {r.reasons[0][0] for r in records} == {"unknown-server"}
    assert player.received("playMedia") == []
    assert honeypot.hits == [], "the bridge never connected to a forged address"
    assert len(caused()) == requests_before, "not even the known server was contacted"


async def test_relay_refuses_transcoder_sources_that_point_anywhere_but_the_granted_server(
        tmp_path: Path, server: FakePlexServer, player: FakeCompanionPlayer, honeypot: Honeypot) -> None:
    root_pem = tmp_path / "root.pem"
    root_pem.write_bytes(server.root_pem)
    pot_port = await honeypot.listen("127.0.0.2", 0)
    forged = [
        f"http://127.0.0.2:{pot_port}/library/metadata/501", "http://10.0.0.5:32400/library/metadata/1",
        "http://169.254.169.254/latest/meta-data/", "https://evil.example/x.mkv", "//evil.example/x",
        "http://127.0.0.1@evil.example/", "http://localhost.evil.example/", "http://[::ffff:a00:5]/",
        "file:///etc/passwd", "http:%2F%2Fevil.example/", "%2F%2Fevil.example%2Fx", "\\\\evil.example\\x",
        "http://0x7f000001/", "gopher://127.0.0.1:25/", " http://evil.example/",
    ]
    async with running_bridge(tmp_path, ssrf_config(server, player, root_pem)) as bridge:
        assert bridge.relay is not None
        grant = bridge.relay.grant(target_address="127.0.0.1", server_id="s", upstream_host=server.plex_direct_name(),
                                   upstream_address="127.0.0.1", upstream_port=server.port, token=TOKEN)
        base = f"http://127.0.0.1:{bridge.relay.port}/{grant.capability}/video/:/transcode/universal/start.m3u8"
        statuses: dict[str, int] = {}
        async with aiohttp.ClientSession() as http:
            for param in ("path", "url", "PATH", "Url"):
                for source in forged:
                    query = f"{param}={quote(source, safe='')}&protocol=hls"
                    async with http.get(URL(f"{base}?{query}", encoded=True)) as resp:
                        statuses[f"{param}={source}"] = resp.status
                        assert TOKEN not in await resp.text()
            # Smuggled as a second value after a harmless first one.
            async with http.get(URL(
                    f"{base}?path=%2Flibrary%2Fmetadata%2F501&path=http%3A%2F%2F10.0.0.5%2F", encoded=True)) as resp:
                statuses["second path value"] = resp.status
            # Control: a source on the granted server passes the check (the fake has no transcoder: 404).
            async with http.get(URL(f"{base}?path=%2Flibrary%2Fmetadata%2F501", encoded=True)) as resp:
                control = resp.status
    assert {k: v for k, v in statuses.items() if v != 403} == {}
    assert control != 403, "a source on the granted server is not refused"
    assert honeypot.hits == []
    assert not [r for r in server.requests if "transcode" in r.path and "evil" in r.path]
