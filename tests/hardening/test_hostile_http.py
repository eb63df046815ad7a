"""Hostile HTTP against a running Bridge's faces and relay: oversized requests, slowloris, long-poll
floods, DNS-rebinding Host values and CORS. Each attack is followed by a check that other
clients are still served promptly."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import aiohttp

from companion.faces.app import Face, FaceLimits
from companion.proto.companion import FaceIdentity
from companion.proto.timeline import PlayerState
from tests.fakes.companion_player import FakeCompanionPlayer
from tests.hardening.conftest import face_port, raw_exchange, running_bridge, status_of
from tests.helpers import until


def target_yaml(player: FakeCompanionPlayer, extra: str = "") -> str:
    return f"""
targets:
  - {{name: Hardening TV, address: 127.0.0.1, port: {player.port}}}
{extra}
"""


async def served_quickly(port: int, *, within: float = 1.0, source: str | None = None) -> float:
    """One GET /resources from a well-behaved client (from ``source``, a loopback address, when
    given): assert 200 within ``within`` s; return the time."""
    started = time.monotonic()
    connector = aiohttp.TCPConnector(local_addr=(source, 0)) if source else None
    async with aiohttp.ClientSession(connector=connector) as http, http.get(
            f"http://127.0.0.1:{port}/resources", timeout=aiohttp.ClientTimeout(total=within)) as resp:
        assert resp.status == 200
        await resp.read()
    return time.monotonic() - started


OVERSIZED = {
    "a 20 KB header value": b"GET /resources HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
    "a 20 KB request line": b"GET /resources?" + b"q" * 20000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "a 20 KB header name": b"GET /resources HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X" * 20000 + b": 1\r\n\r\n",
    "a 1 MB body": (b"POST /player/playback/play HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1048576\r\n\r\n"
                    + b"z" * 1048576),
    "a 1 MB chunked body": (b"POST /player/playback/play HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                            b"Transfer-Encoding: chunked\r\n\r\n"
                            + b"".join(b"10000\r\n" + b"z" * 0x10000 + b"\r\n" for _ in range(16)) + b"0\r\n\r\n"),
    "a negative Content-Length": (b"POST /player/playback/play HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                  b"Content-Length: -5\r\n\r\n"),
    "both Content-Length and chunked": (b"POST /player/playback/play HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                        b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    "a NUL in the request line": b"GET /reso\x00urces HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "not HTTP at all": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)) * 4,
}


async def test_oversized_and_malformed_requests_get_4xx_and_the_face_keeps_answering(
        tmp_path: Path, player: FakeCompanionPlayer) -> None:
    async with running_bridge(tmp_path, target_yaml(player)) as bridge:
        port = face_port(bridge)
        for what, data in OVERSIZED.items():
            answer = await raw_exchange(port, data)
            status = status_of(answer)
            assert 400 <= status < 500, f"{what}: got {answer[:200]!r}"
            await served_quickly(port)
        assert player.received("play") == [], "no oversized command reached the player"


async def test_oversized_requests_to_the_relay_get_4xx_and_it_keeps_answering(
        tmp_path: Path, player: FakeCompanionPlayer) -> None:
    async with running_bridge(tmp_path, target_yaml(player, "security: {relay: true}")) as bridge:
        assert bridge.relay is not None
        port = bridge.relay.port
        for what, data in OVERSIZED.items():
            answer = await raw_exchange(port, data)
            status = status_of(answer)
            assert 400 <= status < 500, f"{what}: got {answer[:200]!r}"
            ping = await raw_exchange(port, b"GET /nothing/identity HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                            b"Connection: close\r\n\r\n")
            assert status_of(ping) == 403, "the relay still answers (no such capability)"


async def _slowloris(port: int, opened: asyncio.Event, count: int, stop: asyncio.Event) -> int:
    """``count`` connections each sending request headers one byte at a time until ``stop``."""
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(count):
            conns.append(await asyncio.open_connection("127.0.0.1", port))
        opened.set()
        header = b"GET /resources HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"s" * 4000
        sent = 0
        while not stop.is_set() and sent < len(header):
            for _, writer in conns:
                writer.write(header[sent:sent + 1])
            sent += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.02)
        return sum(1 for reader, writer in conns
                   if not reader.at_eof() and reader.exception() is None and not writer.transport.is_closing())
    finally:
        for _, writer in conns:
            writer.close()
        for _, writer in conns:
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def test_slowloris_connections_do_not_stop_other_controllers_being_served(
        tmp_path: Path, player: FakeCompanionPlayer) -> None:
    async with running_bridge(tmp_path, target_yaml(player)) as bridge:
        port = face_port(bridge)
        opened, stop = asyncio.Event(), asyncio.Event()
        attack = asyncio.create_task(_slowloris(port, opened, 300, stop))
        try:
            await asyncio.wait_for(opened.wait(), 5)
            # The controller is another address: the attacker's own address is capped.
            times = [await served_quickly(port, within=1.0, source="127.0.0.2") for _ in range(20)]
        finally:
            stop.set()
            still_open = await attack
        assert max(times) < 0.5, f"a normal request took {max(times):.3f} s during the attack"
        cap = bridge.config.limits.connections_per_source
        assert still_open == cap, f"{cap} slow connections from one address are read, the rest reset; got {still_open}"


async def test_a_connection_that_never_finishes_its_headers_is_closed_by_the_face(tmp_path: Path) -> None:
    # aiohttp has no request-header timeout; its keep-alive timer (armed when a connection opens
    # and re-armed after each response) is the only bound, and its default is 3630 s. The face
    # must pass its own bound so a few thousand trickling connections cannot pin file descriptors.
    limits = FaceLimits(idle_timeout=0.5)  # type: ignore[call-arg]
    identity = FaceIdentity(machine_identifier="slow-face", name="Slow", product="companion-bridge",
                            version="0", platform="test", platform_version="0", device_class="stb",
                            capabilities=("timeline", "playback"))

    async def handler(_command: object) -> None:
        return None

    async with aiohttp.ClientSession() as session, \
            Face(identity, handler, bind="127.0.0.1", port=0, session=session, limits=limits) as face:
        reader, writer = await asyncio.open_connection("127.0.0.1", face.port)
        writer.write(b"GET /resources HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: s")
        await writer.drain()
        started = time.monotonic()
        async with asyncio.timeout(3):
            assert await reader.read() == b""
        assert time.monotonic() - started < 2.0
        writer.close()


async def test_a_flood_of_long_polls_beyond_the_limit_is_answered_at_once(
        tmp_path: Path, player: FakeCompanionPlayer) -> None:
    # One address holds every poll here: the connection caps are raised so the poll limit is measured.
    wide = "limits: {connections_per_listener: 1000, connections_per_source: 1000}"
    async with running_bridge(tmp_path, target_yaml(player, wide)) as bridge:
        slot = next(iter(bridge.faces.values()))
        # The player's first timeline push changes the face's state and answers every waiting
        # poll, as it should; let it arrive before the flood so only the limit is measured.
        await until(lambda: slot.face.state != PlayerState(), timeout=5, message="the player's first timeline")
        limit = FaceLimits().max_long_polls
        flood = limit + 60
        url = f"http://127.0.0.1:{slot.face.port}/player/timeline/poll"
        answered_at: list[float] = []
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            async def poll(i: int) -> int:
                async with http.get(url, params={"wait": "1", "commandID": "1"},
                                    headers={"X-Plex-Client-Identifier": f"flood-{i}"}) as resp:
                    await resp.read()
                    answered_at.append(time.monotonic())
                    return resp.status

            started = time.monotonic()
            polls = [asyncio.create_task(poll(i)) for i in range(flood)]
            await until(lambda: len(answered_at) >= flood - limit and slot.face.long_poll_count == limit,
                        timeout=5, message="the polls beyond the limit answered, the rest held")
            assert slot.face.long_poll_count == limit, "no more than the limit is ever held"
            assert max(answered_at) - started < 3.0
            # The face still serves commands and plain polls while the limit is reached.
            async with http.get(f"http://127.0.0.1:{slot.face.port}/player/timeline/poll",
                                params={"wait": "0"}, timeout=aiohttp.ClientTimeout(total=1)) as resp:
                assert resp.status == 200
            await served_quickly(slot.face.port)
            # A second wave finds the limit still enforced (nothing grew).
            second = [asyncio.create_task(poll(flood + i)) for i in range(50)]
            await until(lambda: len(answered_at) >= flood - limit + 50, timeout=5, message="second wave answered")
            assert slot.face.long_poll_count == limit
            await slot.face.stop()  # releases the held polls with the current timeline
            statuses = await asyncio.gather(*polls, *second)
        assert set(statuses) == {200}


REBINDING_HOSTS = [
    "evil.example", "evil.example:32500", "127.0.0.1.nip.io", "127.0.0.1.nip.io:80", "localhost.evil.example",
    "bridge.lan.evil.example", "2130706433", "0x7f000001", "127.1", "[::1].evil.example", "[::1]x",
    "127.0.0.1:80:80", "127.0.0.1:http", "evil.example\t", "xn--80ak6aa92e.com", "EVIL.EXAMPLE.",
]


async def test_dns_rebinding_host_values_get_421_from_faces_and_relay(
        tmp_path: Path, player: FakeCompanionPlayer) -> None:
    extra = "security: {relay: true}\n"
    async with running_bridge(tmp_path, target_yaml(player, extra)) as bridge:
        assert bridge.relay is not None
        ports = {"face": face_port(bridge), "relay": bridge.relay.port}
        async with aiohttp.ClientSession() as http:
            for where, port in ports.items():
                for host in REBINDING_HOSTS:
                    async with http.get(f"http://127.0.0.1:{port}/resources", headers={"Host": host}) as resp:
                        assert resp.status == 421, f"{where}: Host {host!r} got {resp.status}"
                for host in ("127.0.0.1", f"127.0.0.1:{port}", "localhost", "[::1]", f"[::1]:{port}"):
                    async with http.get(f"http://127.0.0.1:{port}/resources", headers={"Host": host}) as resp:
                        assert resp.status != 421, f"{where}: Host {host!r} is ours but got 421"
        assert [c.path for c in player.state.commands if not c.path.startswith("/player/timeline/")] == []


async def test_a_configured_host_name_is_accepted_and_look_alikes_are_not() -> None:
    identity = FaceIdentity(machine_identifier="host-face", name="Hosts", product="companion-bridge", version="0",
                            platform="test", platform_version="0", device_class="stb", capabilities=("timeline",))

    async def handler(_command: object) -> None:
        return None

    async with aiohttp.ClientSession() as session, \
            Face(identity, handler, bind="127.0.0.1", port=0, session=session, allowed_hosts=("bridge.lan",)) as face:
        for host, want in (("bridge.lan", 200), ("BRIDGE.LAN:1234", 200), ("bridge.lan.", 200),
                           ("bridge.lan.evil.example", 421), ("evil-bridge.lan", 421), ("lan", 421)):
            async with session.get(f"http://127.0.0.1:{face.port}/resources", headers={"Host": host}) as resp:
                assert resp.status == want, f"Host {host!r}"


async def test_cors_headers_only_for_configured_origins(tmp_path: Path, player: FakeCompanionPlayer) -> None:
    async with running_bridge(tmp_path, target_yaml(player)) as bridge:
        base = f"http://127.0.0.1:{face_port(bridge)}"
        async with aiohttp.ClientSession() as http:
            async with http.get(base + "/resources", headers={"Origin": "https://app.plex.tv"}) as resp:
                assert resp.headers.get("Access-Control-Allow-Origin") == "https://app.plex.tv"
            for origin in ("https://evil.example", "https://app.plex.tv.evil.example", "null",
                           "http://app.plex.tv", "https://APP.PLEX.TV"):
                async with http.get(base + "/resources", headers={"Origin": origin}) as resp:
                    assert "Access-Control-Allow-Origin" not in resp.headers, origin
                async with http.options(base + "/player/playback/play", headers={
                        "Origin": origin, "Access-Control-Request-Method": "GET"}) as resp:
                    assert resp.status == 403, origin
                    assert "Access-Control-Allow-Origin" not in resp.headers
            async with http.options(base + "/player/playback/play", headers={
                    "Origin": "https://app.plex.tv", "Access-Control-Request-Method": "GET"}) as resp:
                assert resp.status == 200
                assert resp.headers.get("Access-Control-Allow-Origin") == "https://app.plex.tv"
        assert player.received("play") == [], "a preflight never carries the command"

