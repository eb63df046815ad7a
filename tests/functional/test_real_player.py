"""A real player on every fling path: plex-mpv-shim 1.11 behind the bridge, python-plexapi in front.

The bridge finds the shim by GDM on the real port 32412 (the suite's private network namespace),
matches its shipped profile (plex-mpv-shim), and opens a face for it. python-plexapi, a real
controller library, flings a movie from a FakePlexServer through the face; a FakeController
subscribed to the face receives the timeline. The shim must reach ``playing`` (libmpv decoding a
real WAV file with null audio and video outputs) and obey pause, seek and stop, in each mode:

* direct-insecure: a plain-http server; the shim fetches from it directly with the token;
* relay: a TLS server whose test root the shim's profile (certifi's Mozilla roots) lacks; the
  shim gets the bridge's relay and a capability, never the token, and everything it asks for must
  be on the relay's allow-list (none refused: the relay counts every refusal);
* direct-secure: a TLS server whose root a test profile for the shim trusts; the shim resolves the
  ``127-0-0-1.<hash>.plex.direct`` name through a private /etc/hosts and trusts the test root in
  its own mount namespace only (both its Python API leg and libmpv with tls-verify=yes).

Also: the relay again with the shim on its own host of a tests/netlab.py LAN (GDM, the relay's
peer check and timeline pushes over a real segment), and the evidence behind the shipped profile:
a shim that lacks the root really refuses a direct-secure fling (its API leg verifies).

Every test checks the requests the shim made (recorded by the FakePlexServer) against what its
source says it fetches; docs/relay-allow-list.md quotes these lists.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from plexapi.client import PlexClient
from plexapi.server import PlexServer

from companion.bridge import Bridge
from companion.config import Config, parse_config
from companion.faceslot import FaceSlot
from companion.proto.timeline import TimelineEntry
from tests.fakes.controller import FakeController, Push
from tests.fakes.dns import PlexDirectResolver
from tests.fakes.mpv_shim import MpvShim
from tests.fakes.plex_server import FakePlexServer, RecordedRequest, make_plex_chain, wav_bytes
from tests.helpers import bridge_config, free_port_block, until
from tests.lab import TOKEN, write_test_profiles
from tests.netlab import Lan

MEDIA_SECONDS = 120  # long enough never to end during a test, short enough to stay small (960 KB)
SUBTITLES = b"1\r\n00:00:01,000 --> 00:00:04,000\r\nA line the player fetches beside the media.\r\n"
SEEK_MS = 60_000
WAIT = 30.0  # bounds for a loaded 2-core machine; each wait normally ends within a second or two
SHIM_PORT = 32433


def plex_server(server: FakePlexServer, tmp_path: Path) -> PlexServer:
    """python-plexapi's view of the server, by IP (trusting the test root for https)."""
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE in the environment would override verify
    scheme = "https" if server.base_url().startswith("https") else "http"
    if scheme == "https":
        ca = tmp_path / "controller-trusts.pem"
        ca.write_bytes(server.root_pem)
        session.verify = str(ca)
    return PlexServer(f"{scheme}://{server.address}:{server.port}", TOKEN, session=session, timeout=10)


def make_server(*, tls: bool, host: str = "127.0.0.1") -> FakePlexServer:
    # The leaf also names the IP, for python-plexapi, which connects by address.
    chain = make_plex_chain(addresses=(host,)) if tls else None
    return FakePlexServer(token=TOKEN, tls=tls, host=host, chain=chain, media=wav_bytes(MEDIA_SECONDS),
                          media_content_type="audio/wav", container="wav", duration_ms=MEDIA_SECONDS * 1000,
                          subtitles=SUBTITLES)


def shim_requests(server: FakePlexServer, shim: MpvShim) -> list[RecordedRequest]:
    """What the shim (its Python side and libmpv) asked the server: get_plex_url puts the shim's
    id in the query of every URL it builds, the media URLs handed to libmpv included."""
    return [r for r in server.requests if r.query.get("X-Plex-Client-Identifier") == shim.ident]


def shape(request: RecordedRequest) -> tuple[str, str]:
    return request.method, re.sub(r"/[0-9]+(?=/|$)", "/{n}", request.path)


# What plex-mpv-shim 1.11 fetches for one fling, direct play, with a sidecar subtitle (its source:
# media.py Media/upd_play_queue/get_decision/get_machine_identifier, player.py via libmpv,
# timeline.py SendTimelineToPlexServer), pause, seek and stop: checked in every mode.
EXPECTED_SHIM_REQUESTS = {
    ("GET", "/library/metadata/{n}"), ("GET", "/playQueues/{n}"), ("GET", "/video/:/transcode/universal/decision"),
    ("GET", "/library/parts/{n}/file"), ("GET", "/library/streams/{n}"), ("GET", "/"), ("GET", "/:/timeline"),
}


@dataclass
class Rig:
    bridge: Bridge
    server: FakePlexServer
    shim: MpvShim
    controller: FakeController
    slot: FaceSlot

    @property
    def face_url(self) -> str:
        return f"http://127.0.0.1:{self.slot.face.port}"


def loopback_config(tmp_path: Path, extra: str) -> Config:
    config: Config = bridge_config(tmp_path, extra, real_gdm_ports=True,
                                   timeouts={"command": 10.0, "target_expiry": 120.0})
    return config


def secure_config(tmp_path: Path, server: FakePlexServer, dns: PlexDirectResolver) -> Config:
    """A config whose profile for the shim (lab-mpv-shim: the shipped one plus the test root, as the
    shim is run with ``trust_pem``) passes every check, with ``dns`` as the LAN resolver."""
    profiles = tmp_path / "profiles"
    write_test_profiles(profiles, server)
    (profiles / "devices" / "lab-mpv-shim.yaml").write_text(
        (Path(__file__).parents[2] / "profiles" / "devices" / "plex-mpv-shim.yaml").read_text()
        .replace("id: plex-mpv-shim", "id: lab-mpv-shim")
        .replace("roots: {store: mozilla}", "roots: {store: mozilla, add: [fake-test-root]}"))
    host, port = dns.address
    return loopback_config(tmp_path, f"""
servers:
  - {{url: "https://127.0.0.1:{server.port}", token: "{TOKEN}"}}
profiles_dirs: [{profiles}]
security: {{policy: preferred, relay: true, resolver: "{host}:{port}"}}
""")


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, server: FakePlexServer, config: Config, **shim_options: Any) -> AsyncIterator[Rig]:
    """Server, shim and bridge up; the bridge has found the shim by GDM and opened its face."""
    shim = MpvShim(tmp_path / "shim", name="Shim TV", port=SHIM_PORT, **shim_options)
    try:
        await shim.start()
        async with Bridge(config) as bridge, FakeController() as controller:
            def shim_face() -> FaceSlot | None:
                return next((s for s in bridge.faces.values() if s.target.product == "Plex MPV Shim"), None)

            await until(lambda: shim_face() is not None, WAIT, message="the bridge found the shim by GDM")
            slot = shim_face()
            assert slot is not None
            reply = await controller.subscribe(f"http://127.0.0.1:{slot.face.port}")
            assert reply.status == 200, reply.body
            yield Rig(bridge, server, shim, controller, slot)
    except BaseException:
        print(f"plex-mpv-shim log (tail):\n{shim.log_tail(80)}")
        raise
    finally:
        await shim.stop()
    assert not shim.killed and shim.returncode == 0, f"the shim did not stop cleanly:\n{shim.log_tail()}"


def video(push: Push) -> TimelineEntry:
    return push.state.entries["video"]


async def fling_and_control(r: Rig, tmp_path: Path) -> None:
    """python-plexapi flings through the face, then pauses, seeks and stops; the shim must obey
    each, and the controller subscribed to the face must see it in the timeline."""
    pms = await asyncio.to_thread(plex_server, r.server, tmp_path)
    client: PlexClient | None = None
    try:
        movie = await asyncio.to_thread(pms.fetchItem, 501)
        client = await asyncio.to_thread(PlexClient, baseurl=r.face_url, timeout=20)

        async def seen(what: str, predicate: Callable[[TimelineEntry], bool]) -> TimelineEntry:
            """The first push after the last command that satisfies ``predicate``."""
            start = mark[0]

            def found() -> TimelineEntry | None:
                return next((video(p) for p in r.controller.pushes[start:] if predicate(video(p))), None)

            try:
                await until(lambda: found() is not None, WAIT, message=f"the controller sees the shim {what}")
            except AssertionError as exc:
                last = [video(p) for p in r.controller.pushes[-3:]]
                raise AssertionError(f"{exc}; last pushes: {last}; shim log:\n{r.shim.log_tail()}") from None
            entry = found()
            assert entry is not None
            return entry

        async def command(call: Callable[..., object], *args: object) -> None:
            mark[0] = len(r.controller.pushes)
            await asyncio.to_thread(call, *args)

        mark = [len(r.controller.pushes)]

        await command(client.playMedia, movie)
        playing = await seen("playing", lambda e: e.state == "playing" and e.time > 0)
        assert playing.key == "/library/metadata/501"
        assert playing.duration == MEDIA_SECONDS * 1000
        await seen("advance while playing", lambda e: e.state == "playing" and e.time >= playing.time + 500)
        await command(client.pause)
        await seen("paused", lambda e: e.state == "paused")
        # The seek is checked once playing resumes: the shim pushes nothing while paused, and its
        # push right after a seek may be computed before libmpv has finished seeking.
        await command(client.seekTo, SEEK_MS)
        await command(client.play)  # plex-mpv-shim toggles on play and on pause alike
        resumed = await seen("playing again from the seek offset",
                             lambda e: e.state == "playing" and e.time >= SEEK_MS - 1000)
        assert resumed.time < SEEK_MS + 15_000, resumed
        await command(client.stop)
        await seen("stopped", lambda e: e.state == "stopped")
        # The shim reports the stop to the server too (through the relay, where there is one).
        await until(lambda: any(q.path == "/:/timeline" and q.query.get("state") == "stopped"
                                for q in shim_requests(r.server, r.shim)),
                    WAIT, message="the server received the shim's stopped timeline")
    finally:
        pms._session.close()
        if client is not None:
            client._session.close()


def assert_shim_fetched_what_its_source_says(r: Rig, *, root: str = "/") -> list[RecordedRequest]:
    """The shim's requests as the server saw them; ``root``: what its ``GET /`` arrived as."""
    requested = shim_requests(r.server, r.shim)
    shapes = {shape(q) for q in requested}
    expected = {s for s in EXPECTED_SHIM_REQUESTS if s != ("GET", "/")} | {("GET", root)}
    assert shapes == expected, f"the shim asked for {sorted(shapes)}"
    # Its reports to the server: it skips one while the previous is in flight (timeline.py), so a
    # short pause may go unreported; playing and the final stopped always arrive.
    states = {q.query.get("state") for q in requested if q.path == "/:/timeline"}
    assert {"playing", "stopped"} <= states, states
    return requested


def assert_audited(r: Rig, mode: str, profile: str) -> None:
    records = r.bridge.audit.recent(5)
    assert [(rec.mode, rec.profile, rec.target_name, rec.outcome) for rec in records] == [
        (mode, profile, "Shim TV", "ok")]


# --- the modes --------------------------------------------------------------------------------------


async def test_shim_found_by_gdm_plays_direct_insecure_from_an_http_server(tmp_path: Path) -> None:
    async with make_server(tls=False) as server, rig(tmp_path, server, loopback_config(tmp_path, f"""
servers:
  - {{url: "http://127.0.0.1:{server.port}", token: "{TOKEN}"}}
security: {{policy: preferred, relay: true}}
""")) as r:
        assert r.bridge.flings is not None
        assert r.bridge.flings.profile_for(r.slot.target).id == "plex-mpv-shim", "the shipped profile matches"
        await fling_and_control(r, tmp_path)
        assert_audited(r, "direct-insecure", "plex-mpv-shim")
    requested = assert_shim_fetched_what_its_source_says(r)
    assert {q.token for q in requested} == {server.transient_token}, "the controller's token, in clear"


async def test_shim_plays_through_the_relay_when_its_roots_lack_the_servers(tmp_path: Path) -> None:
    async with make_server(tls=True) as server:
        root = tmp_path / "lab-root.pem"
        root.write_bytes(server.root_pem)  # the bridge trusts the test root; certifi does not
        async with rig(tmp_path, server, loopback_config(tmp_path, f"""
servers:
  - {{url: "https://127.0.0.1:{server.port}", token: "{TOKEN}"}}
security: {{policy: preferred, relay: true, extra_roots: ["{root}"]}}
""")) as r:
            relay = r.bridge.relay
            assert relay is not None
            await fling_and_control(r, tmp_path)
            assert_audited(r, "relay", "plex-mpv-shim")
            refused = dict(relay.counters.refused_paths)
            denials = dict(relay.counters.denials)
    assert refused == {}, f"the relay refused what the real player needs: {refused}"
    assert denials == {}, denials
    # Through the relay, the shim's GET / arrives as /identity, without the token.
    requested = assert_shim_fetched_what_its_source_says(r, root="/identity")
    identity = [q for q in requested if q.path == "/identity"]
    assert identity and all(q.token is None for q in identity)
    rest = [q for q in requested if q.path != "/identity"]
    assert all(q.token == server.transient_token for q in rest), "the relay adds the token upstream"
    log = r.shim.log_text()
    assert f"http://127.0.0.1:{relay.port}/library/metadata/501" in log, "the shim fetched from the relay"
    for secret in (TOKEN, server.transient_token):
        assert secret not in log, "the shim never held the token"


async def test_shim_plays_direct_secure_when_it_trusts_the_root_and_resolves_plex_direct(tmp_path: Path) -> None:
    async with make_server(tls=True) as server, PlexDirectResolver("127.0.0.1") as dns:
        name = server.plex_direct_name("127.0.0.1")
        async with rig(tmp_path, server, secure_config(tmp_path, server, dns),
                       trust_pem=server.root_pem, hosts={name: "127.0.0.1"}) as r:
            assert r.bridge.flings is not None
            assert r.bridge.flings.profile_for(r.slot.target).id == "lab-mpv-shim"
            await fling_and_control(r, tmp_path)
            assert_audited(r, "direct-secure", "lab-mpv-shim")
            assert dns.query_count > 0, "the bridge asked the LAN resolver for the plex.direct name"
    requested = assert_shim_fetched_what_its_source_says(r)
    assert {q.token for q in requested} == {server.transient_token}
    # The shim went to the plex.direct name (SNI), with its API leg and libmpv verifying the chain.
    assert name in server.server_names
    log = r.shim.log_text()
    assert f"https://{name}:{server.port}/library/parts/501/file" in log


async def test_shim_on_another_host_of_the_lan_plays_through_the_relay(tmp_path: Path) -> None:
    """The shim on its own host of a tests/netlab.py LAN, the bridge and the server on the test
    process's address there: GDM, the relay's peer check and the timeline pushes cross a real
    Ethernet segment, not loopback."""
    async with Lan("player", join_self=True) as lan:
        assert lan.self_address is not None
        here, player = lan.self_address, lan["player"]
        async with make_server(tls=True, host=here) as server:
            root = tmp_path / "lab-root.pem"
            root.write_bytes(server.root_pem)
            config = parse_config(f"""
name: lan-bridge
interfaces: [{here}]
gdm: {{group: 239.0.0.250, player_port: 32412, announce_port: 32413, server_port: 32414, hello_interval: 30,
       search_interval: 0.5}}
mdns: {{enabled: false}}
http: {{bind: 0.0.0.0, admin_port: 0, relay_port: 0, face_port_base: {free_port_block(4)}}}
timeouts: {{command: 10.0, target_expiry: 120.0}}
state_dir: {tmp_path / "state"}
servers:
  - {{url: "https://{here}:{server.port}", token: "{TOKEN}"}}
security: {{policy: preferred, relay: true, extra_roots: ["{root}"]}}
""", "lan-config.yaml")
            async with rig(tmp_path, server, config, prefix=player.cmd(), connect_host=player.address) as r:
                assert r.slot.target.address == player.address
                relay = r.bridge.relay
                assert relay is not None
                await fling_and_control(r, tmp_path)
                assert_audited(r, "relay", "plex-mpv-shim")
                refused = dict(relay.counters.refused_paths)
        assert refused == {}, refused
        assert_shim_fetched_what_its_source_says(r, root="/identity")
        assert f"http://{here}:{relay.port}/library/metadata/501" in r.shim.log_text()


async def test_shim_without_the_root_refuses_a_direct_secure_fling_as_its_profile_says(tmp_path: Path) -> None:
    """Why the shipped profile sends it to the relay: its API leg really verifies against certifi.
    Here the bridge is told (by a wrong test profile) that it trusts the test root, but the real
    shim does not: it refuses the server's certificate, and the controller gets an error."""
    async with make_server(tls=True) as server, PlexDirectResolver("127.0.0.1") as dns:
        name = server.plex_direct_name("127.0.0.1")
        async with rig(tmp_path, server, secure_config(tmp_path, server, dns), hosts={name: "127.0.0.1"}) as r:
            pms = await asyncio.to_thread(plex_server, server, tmp_path)
            client = await asyncio.to_thread(PlexClient, baseurl=r.face_url, timeout=20)
            try:
                movie = await asyncio.to_thread(pms.fetchItem, 501)
                with pytest.raises(Exception, match="502"):
                    await asyncio.to_thread(client.playMedia, movie)
            finally:
                pms._session.close()
                client._session.close()
            records = r.bridge.audit.recent(5)
            assert [(rec.mode, rec.outcome.split(":")[0]) for rec in records] == [("direct-secure", "error")]
    assert "CERTIFICATE_VERIFY_FAILED" in r.shim.log_text()
    assert shim_requests(server, r.shim) == [], "nothing reached the server past the failed handshake"
