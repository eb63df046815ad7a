"""The secure relay between a FakePlexServer (TLS, loopback) and targets on 127.0.0.2/127.0.0.3.

The relay listens on 127.0.0.1; the "target" is an aiohttp client bound to 127.0.0.2 so the relay
sees it as a distinct TCP peer. Every body and header the target receives is checked for the
user's token; the fake server's request log shows what reached the server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from companion.errors import ProtocolError
from companion.relay.grants import Grant
from companion.relay.paths import check_path, filter_query
from companion.relay.scrub import TokenScrubber, body_needles
from companion.relay.server import CHUNK, Relay
from tests.fakes.aia import FakeCaIssuers, make_aia_pki
from tests.fakes.plex_server import FakePlexServer, make_plex_chain, media_bytes

TOKEN = "real-user-token-Q9x7Zp2m"
TARGET = "127.0.0.2"
OTHER = "127.0.0.3"
IDLE = 600.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


Route = Callable[[web.Request], Awaitable[web.StreamResponse]]


class PlexWithExtras(FakePlexServer):
    """FakePlexServer plus per-test routes (transcoder playlists, echoing endpoints), still
    recorded and token-checked by the fake's own middleware."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.extra: dict[str, Route] = {}

    @web.middleware
    async def _record_and_authorize(self, request: web.Request, handler):  # type: ignore[no-untyped-def]
        return await super()._record_and_authorize(request, self.extra.get(request.path, handler))


@dataclass
class Seen:
    """Everything the target side received, to search for the token."""

    texts: list[str]

    def add(self, resp: aiohttp.ClientResponse, body: bytes) -> None:
        self.texts.append(" ".join(f"{k}: {v}" for k, v in resp.headers.items()))
        self.texts.append(body.decode("latin-1"))

    def holds_token(self) -> bool:
        return any(TOKEN in t for t in self.texts)


@asynccontextmanager
async def target(address: str = TARGET) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0))) as session:
        yield session


async def get(session: aiohttp.ClientSession, url: str | URL, seen: Seen | None = None, *, method: str = "GET",
              **kwargs: object) -> tuple[int, bytes, aiohttp.ClientResponse]:
    async with session.request(method, url, **kwargs) as resp:  # type: ignore[arg-type]
        body = await resp.read()
        if seen is not None:
            seen.add(resp, body)
        return resp.status, body, resp


@pytest.fixture
async def plex() -> AsyncIterator[PlexWithExtras]:
    server = PlexWithExtras(token=TOKEN, media_size=1024 * 1024)
    async with server:
        yield server


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def relay(tmp_path: Path, plex: PlexWithExtras, clock: Clock) -> AsyncIterator[Relay]:
    async with Relay(bind="127.0.0.1", port=0, state_dir=tmp_path, extra_roots=[plex.chain.root],
                     idle_timeout=IDLE, clock=clock) as r:
        yield r


def fling(relay: Relay, plex: FakePlexServer, address: str = TARGET) -> tuple[Grant, str]:
    grant = relay.grant(target_address=address, server_id=plex.machine_identifier,
                        upstream_host=plex.plex_direct_name(), upstream_address="127.0.0.1",
                        upstream_port=plex.port, token=TOKEN)
    return grant, relay.base_url(grant, "127.0.0.1")


# --- playback through the relay -------------------------------------------------------------------


async def test_target_plays_metadata_queue_and_ranged_part_while_only_the_server_sees_the_token(
        relay: Relay, plex: PlexWithExtras) -> None:
    _, base = fling(relay, plex)
    seen = Seen([])
    async with target() as session:
        status, body, _ = await get(session, f"{base}/library/metadata/501", seen)
        assert status == 200 and b'key="/library/parts/501/file"' in body
        status, body, _ = await get(session, f"{base}/playQueues/7?window=100&own=1", seen)
        assert status == 200 and b'playQueueID="7"' in body
        status, body, resp = await get(session, f"{base}/library/parts/501/file", seen,
                                       headers={"Range": "bytes=1000-1999"})
        assert status == 206 and body == plex.media[1000:2000]
        assert resp.headers["Content-Range"] == f"bytes 1000-1999/{len(plex.media)}"
        status, body, resp = await get(session, f"{base}/library/parts/501/file", seen, method="HEAD")
        assert status == 200 and body == b"" and resp.headers["Content-Length"] == str(len(plex.media))
    assert not seen.holds_token(), "the target received the user's token"
    relayed = [r for r in plex.requests if r.path != "/identity"]
    assert [r.path for r in relayed] == ["/library/metadata/501", "/playQueues/7", "/library/parts/501/file",
                                         "/library/parts/501/file"]
    assert all(r.token == TOKEN for r in relayed)
    assert relay.counters.requests == 4 and relay.counters.bytes_relayed > 1000


async def test_a_token_the_target_sends_is_replaced_never_forwarded(relay: Relay, plex: PlexWithExtras) -> None:
    _, base = fling(relay, plex)
    async with target() as session:
        status, _, _ = await get(session, f"{base}/library/metadata/501?X-Plex-Token=stolen-guess&includeMarkers=1",
                                 headers={"X-Plex-Token": "stolen-guess-2"})
    assert status == 200
    (seen_by_server,) = plex.requests_to("/library/metadata/501")
    assert seen_by_server.headers["X-Plex-Token"] == TOKEN
    assert "X-Plex-Token" not in seen_by_server.query and seen_by_server.query["includeMarkers"] == "1"
    assert "stolen-guess" not in repr(dict(seen_by_server.headers)) + repr(dict(seen_by_server.query))


async def test_a_server_echoing_the_token_in_text_headers_or_media_never_shows_it_to_the_target(
        relay: Relay, plex: PlexWithExtras) -> None:
    async def decision(_request: web.Request) -> web.Response:
        return web.Response(text=f'<MediaContainer token="{TOKEN}" url="/x?X-Plex-Token={TOKEN}"/>',
                            content_type="text/xml", headers={"X-Plex-Token": TOKEN, "ETag": TOKEN})

    media = bytearray(media_bytes(3 * CHUNK))
    media[CHUNK - 5:CHUNK - 5 + len(TOKEN)] = TOKEN.encode()  # straddles the relay's first chunk

    async def part(_request: web.Request) -> web.Response:
        return web.Response(body=bytes(media), content_type="application/octet-stream")

    plex.extra["/video/:/transcode/universal/decision"] = decision
    plex.extra["/library/parts/77/file"] = part
    _, base = fling(relay, plex)
    seen = Seen([])
    async with target() as session:
        status, body, _ = await get(session, f"{base}/video/:/transcode/universal/decision?path=/library/metadata/501",
                                    seen)
        assert status == 200 and b"<MediaContainer" in body
        status, body, _ = await get(session, f"{base}/library/parts/77/file", seen)
        assert status == 200 and len(body) == len(media), "media length must survive scrubbing"
        assert body[:CHUNK - 5] == media[:CHUNK - 5] and body[CHUNK + 100:] == media[CHUNK + 100:]
    assert not seen.holds_token()


async def test_identity_is_relayed_without_the_token(relay: Relay, plex: PlexWithExtras) -> None:
    _, base = fling(relay, plex)
    async with target() as session:
        status, body, _ = await get(session, f"{base}/identity")
    assert status == 200 and plex.machine_identifier.encode() in body
    assert plex.requests_to("/identity")[-1].token is None


async def test_a_part_larger_than_a_chunk_is_forwarded_in_chunks(relay: Relay, plex: PlexWithExtras) -> None:
    _, base = fling(relay, plex)
    assert len(plex.media) > 2 * CHUNK
    async with target() as session:
        status, body, _ = await get(session, f"{base}/library/parts/501/file")
    assert status == 200 and body == plex.media
    assert relay.counters.chunks_relayed >= 2


async def test_a_media_part_sent_by_the_reader_thread_leaves_the_connection_ready_for_the_next_request(
        relay: Relay, plex: PlexWithExtras) -> None:
    _, base = fling(relay, plex)
    opened: list[object] = []
    trace = aiohttp.TraceConfig()

    async def on_create(_session: object, _ctx: object, params: object) -> None:
        opened.append(params)

    trace.on_connection_create_end.append(on_create)
    connector = aiohttp.TCPConnector(local_addr=(TARGET, 0), limit=1)
    async with aiohttp.ClientSession(connector=connector, trace_configs=[trace]) as session:
        for _ in range(3):
            status, body, _ = await get(session, f"{base}/library/parts/501/file")
            assert status == 200 and body == plex.media
        status, body, _ = await get(session, f"{base}/identity")
    assert status == 200 and plex.machine_identifier.encode() in body
    assert len(opened) == 1, "every request after a direct-sent body reuses the same connection"
    assert relay.counters.bytes_relayed >= 3 * len(plex.media)


async def test_a_target_that_pauses_mid_part_gets_the_rest_when_it_reads_again(tmp_path: Path) -> None:
    # Larger than loopback's socket buffers, so the relay's send really waits on the paused reader.
    big = PlexWithExtras(token=TOKEN, media_size=48 * 1024 * 1024)
    async with big, Relay(bind="127.0.0.1", port=0, state_dir=tmp_path, extra_roots=[big.chain.root]) as r:
        _, base = fling(r, big)
        async with target() as session, session.get(f"{base}/library/parts/501/file") as resp:
            head = await resp.content.readexactly(64 * 1024)
            # The pause is what is tested (a player paused for longer than the thread's 1 s
            # wake-ups), not a wait for something to happen.
            await asyncio.sleep(2.5)
            rest = await resp.read()
    assert head + rest == big.media


async def test_hls_playlist_urls_pointing_at_the_server_are_rewritten_to_the_relay(
        relay: Relay, plex: PlexWithExtras) -> None:
    origin_name = f"https://{plex.plex_direct_name()}:{plex.port}"
    origin_ip = f"http://127.0.0.1:{plex.port}"

    async def playlist(_request: web.Request) -> web.Response:
        text = ("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=2000000\n"
                f"{origin_name}/video/:/transcode/universal/session/s1/0/index.m3u8?X-Plex-Token={TOKEN}\n"
                "#EXT-X-STREAM-INF:BANDWIDTH=1000000\n"
                f"{origin_ip}/video/:/transcode/universal/session/s1/1/index.m3u8\n"
                "#EXT-X-STREAM-INF:BANDWIDTH=500000\n"
                "session/s1/2/index.m3u8\n")
        return web.Response(text=text, content_type="application/vnd.apple.mpegurl")

    plex.extra["/video/:/transcode/universal/start.m3u8"] = playlist
    _, base = fling(relay, plex)
    async with target() as session:
        status, body, resp = await get(session, f"{base}/video/:/transcode/universal/start.m3u8?session=s1")
    assert status == 200 and resp.headers["Content-Type"].startswith("application/vnd.apple.mpegurl")
    lines = [line for line in body.decode().splitlines() if not line.startswith("#")]
    assert lines == [
        f"{base}/video/:/transcode/universal/session/s1/0/index.m3u8?X-Plex-Token=",
        f"{base}/video/:/transcode/universal/session/s1/1/index.m3u8",
        "session/s1/2/index.m3u8",
    ]


# --- who may use a capability ----------------------------------------------------------------------


async def test_another_device_with_the_same_capability_gets_403(relay: Relay, plex: PlexWithExtras) -> None:
    _, base = fling(relay, plex)
    async with target(OTHER) as session:
        status, body, _ = await get(session, f"{base}/library/metadata/501")
    assert status == 403 and b"another device" in body
    assert plex.requests == [] and relay.counters.denials == {"wrong-peer": 1}


async def test_an_idle_capability_expires_and_use_keeps_it_alive(
        relay: Relay, plex: PlexWithExtras, clock: Clock) -> None:
    _, base = fling(relay, plex)
    async with target() as session:
        clock.now += IDLE * 0.6
        assert (await get(session, f"{base}/identity"))[0] == 200
        clock.now += IDLE * 0.6
        assert (await get(session, f"{base}/identity"))[0] == 200
        clock.now += IDLE + 1
        status, body, _ = await get(session, f"{base}/identity")
    assert status == 403 and b"expired" in body


async def test_revoked_capabilities_and_stopped_targets_get_403(relay: Relay, plex: PlexWithExtras) -> None:
    grant, base = fling(relay, plex)
    other = relay.grant(target_address=TARGET, server_id="another-server", upstream_host=plex.plex_direct_name(),
                        upstream_address="127.0.0.1", upstream_port=plex.port, token=TOKEN)
    other_base = relay.base_url(other, "127.0.0.1")
    async with target() as session:
        relay.revoke(grant.capability)
        status, body, _ = await get(session, f"{base}/identity")
        assert status == 403 and b"revoked" in body
        assert (await get(session, f"{other_base}/identity"))[0] == 200
        relay.revoke_target(TARGET)
        status, body, _ = await get(session, f"{other_base}/identity")
        assert status == 403 and b"stopped" in body
        status, body, _ = await get(session, f"http://127.0.0.1:{relay.port}/not-a-capability/identity")
        assert status == 403 and b"no such relay URL" in body
    assert relay.grants() == []


async def test_a_new_fling_to_the_same_target_and_server_replaces_the_old_grant(
        relay: Relay, plex: PlexWithExtras) -> None:
    old, old_base = fling(relay, plex)
    new, new_base = fling(relay, plex)
    assert old.capability != new.capability
    async with target() as session:
        status, body, _ = await get(session, f"{old_base}/identity")
        assert status == 403 and b"replaced" in body
        assert (await get(session, f"{new_base}/identity"))[0] == 200
    assert relay.grants() == [new]


@pytest.mark.parametrize(("path", "why"), [
    ("/library/sections/1/all", b"not a playback path"),
    ("/:/prefs", b"not a playback path"),
    ("/status/sessions", b"not a playback path"),
    ("/security/token?type=delegation", b"not a playback path"),
    ("/library/metadata/..%2F..%2Fsecurity/token", b"encoded-slash"),
    ("/library/parts/%2e%2e/%2e%2e/accounts", b"dot"),
    ("/photo/:/transcode?url=http://192.168.1.1/admin", b"must name a path on this server"),
])
async def test_paths_outside_the_playback_allow_list_get_403_with_a_reason(
        relay: Relay, plex: PlexWithExtras, path: str, why: bytes) -> None:
    _, base = fling(relay, plex)
    async with target() as session:
        status, body, _ = await get(session, URL(base + path, encoded=True))
    assert status == 403 and why in body, body
    assert plex.requests == []


async def test_the_server_root_is_answered_from_identity_without_the_token(
        relay: Relay, plex: PlexWithExtras) -> None:
    _, base = fling(relay, plex)
    seen = Seen([])
    async with target() as session:
        status, body, _ = await get(session, f"{base}/", seen)
    assert status == 200 and f'machineIdentifier="{plex.machine_identifier}"'.encode() in body, body
    assert [(r.method, r.path, r.token) for r in plex.requests] == [("GET", "/identity", None)], \
        "the root listing (account facts) is never fetched; /identity goes without the token"
    assert not seen.holds_token()


async def test_each_refused_path_is_logged_once_by_name_and_counted(
        relay: Relay, plex: PlexWithExtras, caplog: pytest.LogCaptureFixture) -> None:
    _, base = fling(relay, plex)
    caplog.set_level(logging.INFO, logger="companion.relay")
    async with target() as session:
        for path in ("/library/sections/1/all", "/library/sections/2/all", "/library/sections/1/all",
                     "/:/prefs"):
            assert (await get(session, f"{base}{path}?X-Plex-Token=whatever"))[0] == 403
        assert (await get(session, f"{base}/playQueues/1", method="DELETE"))[0] == 403
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 3, lines
    assert any("GET /library/sections/{n}/all" in line for line in lines)
    assert any("GET /:/prefs" in line for line in lines)
    assert any("DELETE /playQueues/{n}" in line for line in lines)
    assert all("whatever" not in line and TOKEN not in line for line in lines)
    assert relay.counters.refused_paths == {"GET /library/sections/{n}/all": 3, "GET /:/prefs": 1,
                                            "DELETE /playQueues/{n}": 1}
    assert relay.counters.denials == {"path-not-allowed": 5}
    assert plex.requests == []


async def test_a_method_a_player_does_not_need_gets_403(relay: Relay, plex: PlexWithExtras) -> None:
    _, base = fling(relay, plex)
    async with target() as session:
        status, body, _ = await get(session, f"{base}/library/metadata/501", method="DELETE")
    assert status == 403 and b"DELETE is not allowed" in body


async def test_a_foreign_host_header_gets_421(relay: Relay, plex: PlexWithExtras) -> None:
    _, base = fling(relay, plex)
    async with target() as session:
        status, _, _ = await get(session, f"{base}/identity", headers={"Host": "evil.example.com"})
    assert status == 421 and plex.requests == []


async def test_leaving_the_async_with_block_stops_the_relay_and_a_restart_tells_old_urls_why(
        tmp_path: Path, plex: PlexWithExtras) -> None:
    relay = Relay(bind="127.0.0.1", port=0, state_dir=tmp_path, extra_roots=[plex.chain.root])
    async with relay:
        grant, base = fling(relay, plex)
        async with target() as session:
            assert (await get(session, f"{base}/identity"))[0] == 200
        port = relay.port
    assert relay.grants() == []
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    async with relay, target() as session:
        status, body, _ = await get(session, f"{relay.base_url(grant, '127.0.0.1')}/identity")
    assert status == 403 and b"relay-stopped: the relay was restarted; fling again" in body, body


def test_grant_repr_shows_neither_token_nor_full_capability() -> None:
    grant = Grant(capability="A" * 43, target_address=TARGET, server_id="s", upstream_host="h",
                  upstream_address="1.2.3.4", upstream_port=32400, token=TOKEN, expires_at=0.0, idle_timeout=1.0)
    assert TOKEN not in repr(grant) and "A" * 10 not in repr(grant)


async def test_a_grant_with_a_bad_address_or_no_token_is_refused_with_a_clear_error(
        relay: Relay, plex: PlexWithExtras) -> None:
    with pytest.raises(ProtocolError, match="target address 'kitchen-tv' is not an IP address"):
        relay.grant(target_address="kitchen-tv", server_id="s", upstream_host="h", upstream_address="127.0.0.1",
                    upstream_port=1, token=TOKEN)
    with pytest.raises(ProtocolError, match="token is missing"):
        relay.grant(target_address=TARGET, server_id="s", upstream_host="h", upstream_address="127.0.0.1",
                    upstream_port=1, token="")


# --- upstream trust ---------------------------------------------------------------------------------


async def test_an_untrusted_server_chain_gets_502_with_a_reason_and_never_the_token(tmp_path: Path) -> None:
    # The fake's root is not trusted.
    async with PlexWithExtras(token=TOKEN) as plex, Relay(bind="127.0.0.1", port=0, state_dir=tmp_path) as relay:
        _, base = fling(relay, plex)
        async with target() as session:
            status, body, _ = await get(session, f"{base}/library/metadata/501")
    assert status == 502
    assert b"does not trust the Plex server" in body and b"root-missing" in body, body
    assert plex.requests == [] and plex.handshakes >= 1
    assert relay.counters.upstream_failures == {"upstream-untrusted": 1}


async def test_a_certificate_changed_to_an_untrusted_one_is_verified_again_and_refused(
        relay: Relay, plex: PlexWithExtras) -> None:
    async def closing(_request: web.Request) -> web.Response:
        resp = web.Response(text="<MediaContainer/>", content_type="text/xml")
        resp.force_close()  # the next relayed request needs a new TLS connection
        return resp

    plex.extra["/library/metadata/closing"] = closing
    _, base = fling(relay, plex)
    async with target() as session:
        assert (await get(session, f"{base}/library/metadata/closing"))[0] == 200
        before = len(plex.requests)
        plex.rotate_certificate()  # a new root the relay does not trust
        status, body, _ = await get(session, f"{base}/library/metadata/501")
    assert status == 502 and b"root-missing" in body
    assert len(plex.requests) == before, "a request (and the token) went to an unverified certificate"
    assert relay.counters.verifications == 2


async def test_a_renewed_certificate_from_a_trusted_root_is_verified_and_playback_continues(
        tmp_path: Path) -> None:
    async def closing(_request: web.Request) -> web.Response:
        resp = web.Response(text="<MediaContainer/>", content_type="text/xml")
        resp.force_close()
        return resp

    async with PlexWithExtras(token=TOKEN) as plex:
        renewed = make_plex_chain(server_hash=plex.hash)
        plex.extra["/library/metadata/closing"] = closing
        async with Relay(bind="127.0.0.1", port=0, state_dir=tmp_path,
                         extra_roots=[plex.chain.root, renewed.root]) as relay:
            _, base = fling(relay, plex)
            async with target() as session:
                assert (await get(session, f"{base}/library/metadata/closing"))[0] == 200
                plex.rotate_certificate(renewed)
                status, _, _ = await get(session, f"{base}/library/metadata/501")
    assert status == 200 and relay.counters.verifications == 2


async def test_revoking_a_grant_cuts_its_stream_in_progress(relay: Relay, plex: PlexWithExtras) -> None:
    go_on = asyncio.Event()

    async def slow_part(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "video/x-matroska"})
        resp.content_length = 4 * CHUNK
        await resp.prepare(request)
        await resp.write(b"a" * CHUNK)
        await go_on.wait()
        for _ in range(3):
            await resp.write(b"b" * CHUNK)
        return resp

    plex.extra["/library/parts/9/file"] = slow_part
    grant, base = fling(relay, plex)
    async with target() as session, session.get(f"{base}/library/parts/9/file") as resp:
        assert resp.status == 200
        first = await resp.content.readexactly(CHUNK - 64)
        relay.revoke(grant.capability)
        go_on.set()
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    assert set(first) == {ord("a")}


async def test_missing_issuer_is_fetched_through_aia_once_and_then_read_from_the_disk_cache(tmp_path: Path) -> None:
    async with FakeCaIssuers() as issuers:
        pki = make_aia_pki(issuers.url("yr-by-x1.der"))
        issuers.publish("yr-by-x1.der", pki.cross_der)
        async with PlexWithExtras(token=TOKEN, chain=pki.chain) as plex:
            for _ in range(2):  # the second Relay is a restarted bridge with the same state_dir
                async with Relay(bind="127.0.0.1", port=0, state_dir=tmp_path, extra_roots=[pki.trusted_root],
                                 aia_hosts={"127.0.0.1"}) as relay:
                    _, base = fling(relay, plex)
                    async with target() as session:
                        status, body, _ = await get(session, f"{base}/library/metadata/501")
                assert status == 200, body
    assert issuers.fetches["yr-by-x1.der"] == 1
    assert len(list((tmp_path / "aia").glob("*.der"))) == 1


async def test_an_aia_url_pointing_into_the_lan_is_not_fetched_by_default(tmp_path: Path) -> None:
    async with FakeCaIssuers() as issuers:
        pki = make_aia_pki(issuers.url("yr-by-x1.der"))
        issuers.publish("yr-by-x1.der", pki.cross_der)
        async with (PlexWithExtras(token=TOKEN, chain=pki.chain) as plex,
                    Relay(bind="127.0.0.1", port=0, state_dir=tmp_path, extra_roots=[pki.trusted_root]) as relay):
            _, base = fling(relay, plex)
            async with target() as session:
                status, body, _ = await get(session, f"{base}/library/metadata/501")
    assert status == 502 and b"root-missing" in body, body
    assert issuers.fetches["yr-by-x1.der"] == 0


# --- pure helpers -------------------------------------------------------------------------------------


def test_scrubber_finds_the_token_across_every_chunk_boundary() -> None:
    secret = TOKEN.encode()
    data = b"a" * 50 + secret + b"b" * 50 + secret
    for split in range(len(data) + 1):
        scrubber = TokenScrubber([secret])
        parts = [*scrubber.feed(data[:split]), *scrubber.feed(data[split:]), scrubber.finish()]
        out = b"".join(bytes(p) for p in parts)
        assert len(out) == len(data) and secret not in out, split
        assert out.replace(b"x" * len(secret), b"") == data.replace(secret, b""), split


def test_scrubber_passes_media_without_a_token_unchanged_across_many_chunks() -> None:
    data = media_bytes(5000)
    scrubber = TokenScrubber([TOKEN.encode()])
    parts = [p for i in range(0, len(data), 7) for p in scrubber.feed(data[i:i + 7])] + [scrubber.finish()]
    assert b"".join(bytes(p) for p in parts) == data


def test_media_bodies_stream_unscrubbed_and_every_other_streamed_type_is_scrubbed() -> None:
    for media in ("video/x-matroska", "Video/MP4; codecs=avc1", "audio/flac", "image/jpeg"):
        assert body_needles(media, TOKEN) == (), media
    for other in ("application/octet-stream", "", "text/srt", "audio/mpegurl", "audio/x-mpegurl",
                  "image/svg+xml", "application/x-subrip"):
        assert TOKEN.encode() in body_needles(other, TOKEN), other


def test_allow_list_and_query_filter_decisions() -> None:
    assert check_path("/library/parts/1/file", "GET")[0] is not None
    assert check_path("/:/timeline", "POST")[0] is not None
    assert check_path("/:/timeline/extra", "GET")[0] is None
    assert check_path("/playQueues", "POST")[0] is None
    assert check_path("/library/metadata/", "GET")[0] is None
    assert filter_query("a=1&x-plex-TOKEN=z&b=2") == ("a=1&b=2", "")
    assert filter_query("url=%2Flibrary%2Fmetadata%2F1%2Fthumb")[1] == ""
    assert filter_query("url=http://127.0.0.1:32400/library/metadata/1/thumb")[1] == ""
    assert filter_query("url=//evil.example/x")[1] != ""

