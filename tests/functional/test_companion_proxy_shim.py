"""The server's companion proxy in front of a real player: python-plexapi finds the face of
plex-mpv-shim 1.11 among a FakePlexServer's ``/clients`` and, with ``proxyThroughServer()``, sends
playMedia and pause through the server's proxy endpoints; the shim (libmpv, null outputs) really
plays and pauses, and its timeline comes back to the server through ``/player/proxy/timeline``.

The shim is found by GDM on its real port (the suite's private namespace) and gets the shipped
plex-mpv-shim profile, so the fling goes through the relay: the server is TLS with a test root the
shim lacks (tests/functional/test_real_player.py shows each mode with a direct controller).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from xml.etree import ElementTree

import requests
from plexapi.client import PlexClient
from plexapi.server import PlexServer

from companion.bridge import Bridge
from companion.faceslot import FaceSlot
from tests.fakes.mpv_shim import MpvShim
from tests.fakes.plex_server import FakePlexServer
from tests.functional.test_real_player import SHIM_PORT, WAIT, loopback_config, make_server, shim_requests
from tests.helpers import until
from tests.lab import TOKEN


def proxied_timelines(server: FakePlexServer, ident: str) -> list[tuple[str, str, int]]:
    """(state, key, time) of the video entry of every timeline the face reported through the proxy."""
    player = server.proxy.players.get(ident)
    out = []
    for _query, body in player.timelines if player is not None else []:
        video = next((t for t in ElementTree.fromstring(body).findall("Timeline") if t.get("type") == "video"), None)
        if video is not None:
            out.append((video.get("state", ""), video.get("key", ""), int(video.get("time") or 0)))
    return out


def controller_view(server: FakePlexServer, tmp_path: Path) -> PlexServer:
    """python-plexapi's view of the TLS server, by IP, trusting the test root; bounds for a loaded machine."""
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE in the environment would override verify
    ca = tmp_path / "controller-trusts.pem"
    ca.write_bytes(server.root_pem)
    session.verify = str(ca)
    return PlexServer(f"https://{server.address}:{server.port}", TOKEN, session=session, timeout=WAIT)


async def test_plexapi_through_the_servers_proxy_plays_and_pauses_plex_mpv_shim(tmp_path: Path) -> None:
    async with make_server(tls=True) as server:
        server.proxy.hold = 0.5  # a real server holds ~20 s; short here so stopping is quick
        server.proxy.answer_timeout = WAIT  # the face answers once the shim has answered
        root = tmp_path / "lab-root.pem"
        root.write_bytes(server.root_pem)
        config = loopback_config(tmp_path, f"""
servers:
  - {{url: "https://127.0.0.1:{server.port}", token: "{TOKEN}"}}
security: {{policy: preferred, relay: true, extra_roots: ["{root}"]}}
""")
        shim = MpvShim(tmp_path / "shim", name="Shim TV", port=SHIM_PORT)
        bridge = Bridge(config)
        sessions: list[requests.Session] = []
        try:
            await shim.start()
            await bridge.start()

            def shim_slot() -> FaceSlot | None:
                return next((s for s in bridge.faces.values() if s.target.product == "Plex MPV Shim"), None)

            await until(lambda: shim_slot() is not None, WAIT, message="the bridge found the shim by GDM")
            slot = shim_slot()
            assert slot is not None
            ident = slot.advert.resource_identifier
            await until(lambda: ident in server.proxy.players, WAIT, message="the shim's face polls the server's proxy")

            # The controller knows only the server: it finds the face among the server's clients.
            pms = await asyncio.to_thread(controller_view, server, tmp_path)
            sessions.append(pms._session)
            client = next(c for c in await asyncio.to_thread(pms.clients) if c.machineIdentifier == ident)
            assert isinstance(client, PlexClient) and client.title == "Shim TV (bridge)"
            client.proxyThroughServer(True, server=pms)
            movie = await asyncio.to_thread(pms.fetchItem, 501)
            through_proxy = len(server.requests_to("/player/playback/"))

            await asyncio.to_thread(client.playMedia, movie)
            await until(lambda: any(s == "playing" and k == "/library/metadata/501" and t > 0
                                    for s, k, t in proxied_timelines(server, ident)),
                        WAIT, message="a playing timeline of the movie came back through the proxy")
            await until(lambda: any(q.path == "/:/timeline" and q.query.get("state") == "playing"
                                    for q in shim_requests(server, shim)),
                        WAIT, message="the shim itself reported playing to the server (through the relay)")
            playing = len(proxied_timelines(server, ident))

            # The face has no state of its own: "paused" is what the shim pushed to the bridge.
            await asyncio.to_thread(client.pause, mtype="video")
            await until(lambda: any(s == "paused" and k == "/library/metadata/501"
                                    for s, k, _ in proxied_timelines(server, ident)[playing:]),
                        WAIT, message="the paused timeline came back through /player/proxy/timeline")
            # Both commands went through the server (never to the face directly), each answered.
            assert len(server.requests_to("/player/playback/")) == through_proxy + 2
            answers = server.requests_to("/player/proxy/response")
            assert len(answers) >= 2 and all(r.query.get("commandID") for r in answers)
            assert {q.get("state") for q, _ in server.proxy.players[ident].timelines} >= {"playing", "paused"}
            # The same decision and audit as a direct fling: the shipped profile sends it to the relay.
            records = bridge.audit.recent(5)
            assert [(r.mode, r.profile, r.target_name, r.outcome) for r in records] == [
                ("relay", "plex-mpv-shim", "Shim TV", "ok")]
        except BaseException:
            print(f"plex-mpv-shim log (tail):\n{shim.log_tail(80)}")
            raise
        finally:
            for session in sessions:
                session.close()
            await bridge.stop()
            await shim.stop()
    assert not shim.killed and shim.returncode == 0, f"the shim did not stop cleanly:\n{shim.log_tail()}"
    log = shim.log_text()
    assert TOKEN not in log and server.transient_token not in log, "the shim never held a token (relay)"
