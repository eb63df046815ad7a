"""A real Face on 127.0.0.1 (port 0) driven by FakeController over real sockets."""

from __future__ import annotations

import asyncio
import logging
import time
import tracemalloc
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from companion.errors import (
    CommandNotSupported,
    CompanionError,
    PolicyRefusal,
    ProtocolError,
    TargetTimeout,
    TargetUnavailable,
)
from companion.faces.app import Face, FaceLimits
from companion.model import Command
from companion.proto.companion import FaceIdentity, media_request
from companion.proto.timeline import PlayerState, TimelineEntry
from tests.fakes.controller import FakeController, SilentListener

FACE_ID = "face-0001"
IDENTITY = FaceIdentity(machine_identifier=FACE_ID, name="Kitchen Speaker", product="companion-bridge",
                        version="0.1.0", platform="Chromecast", platform_version="1.0",
                        device_class="speaker", capabilities=("timeline", "playback"))
TOKEN = "transient-VERYSECRET-0042"


async def until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def playing(time_ms: int = 1000) -> PlayerState:
    return PlayerState(location="fullScreenMusic").with_entry(
        TimelineEntry(type="music", state="playing", time=time_ms, duration=200000, key="/library/metadata/5"))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """The face's command handler: records commands, optionally raises."""

    def __init__(self) -> None:
        self.commands: list[Command] = []
        self.error: Exception | None = None

    async def __call__(self, command: Command) -> None:
        self.commands.append(command)
        if self.error is not None:
            raise self.error


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def face(session, recorder, clock) -> AsyncIterator[Face]:
    async with Face(IDENTITY, recorder, bind="127.0.0.1", port=0, session=session,
                    limits=FaceLimits(poll_hold=5.0, playing_push_interval=0.05, max_body=1024),
                    allowed_hosts=("bridge.lan",), clock=clock) as f:
        yield f


@pytest.fixture
def base(face) -> str:
    return f"http://127.0.0.1:{face.port}"


@pytest.fixture
async def phone() -> AsyncIterator[FakeController]:
    async with FakeController("phone-1", "Ann's phone") as c:
        yield c


@pytest.fixture
async def tablet() -> AsyncIterator[FakeController]:
    async with FakeController("tablet-2", "Bob's tablet") as c:
        yield c


def response_of(body: bytes) -> tuple[str, str]:
    root = ET.fromstring(body)
    assert root.tag == "Response"
    return root.get("code", ""), root.get("status", "")


async def test_resources_describe_the_face(base, phone):
    reply = await phone.request(base, "/resources", command_id=None)
    assert reply.status == 200
    player = ET.fromstring(reply.body).find("Player")
    assert player is not None
    assert player.get("machineIdentifier") == FACE_ID
    assert player.get("protocolCapabilities") == "timeline,playback"


async def test_command_reaches_the_handler_with_its_params(base, phone, recorder):
    reply = await phone.request(base, "/player/playback/seekTo", {"offset": "30000", "type": "video"},
                                command_id=9)
    assert reply.status == 200
    assert response_of(reply.body) == ("200", "OK")
    [cmd] = recorder.commands
    assert (cmd.group, cmd.name, cmd.command_id) == ("playback", "seekTo", 9)
    assert dict(cmd.params) == {"offset": "30000", "type": "video"}
    assert cmd.controller.client_id == "phone-1"
    assert cmd.controller.name == "Ann's phone"
    assert cmd.controller.address == "127.0.0.1"


async def test_play_media_reaches_the_handler_and_parses(base, phone, recorder):
    params = {"key": "/library/metadata/28", "offset": "0", "type": "video", "address": "10.0.0.5",
              "port": "32400", "protocol": "http", "machineIdentifier": "srv", "token": TOKEN}
    reply = await phone.request(base, "/player/playback/playMedia", params)
    assert reply.status == 200
    request = media_request(recorder.commands[0])
    assert (request.key, request.address, request.token) == ("/library/metadata/28", "10.0.0.5", TOKEN)


async def test_unsubscribed_command_without_command_id_is_accepted(base, phone, recorder):
    reply = await phone.request(base, "/player/playback/pause", command_id=None)
    assert reply.status == 200
    assert recorder.commands[0].command_id is None


@pytest.mark.parametrize(("error", "status"), [
    (ProtocolError("seekTo: offset beyond the end"), 400),
    (PolicyRefusal("insecure stream refused by policy 'strict'"), 403),
    (CommandNotSupported("navigation is not supported by a Chromecast"), 501),
    (TargetTimeout("the player did not answer within 5 s"), 504),
    (TargetUnavailable("the player refused the connection"), 502),
    (CompanionError("something else broke"), 500),
])
async def test_handler_errors_map_to_status_and_say_what_went_wrong(base, phone, recorder, error, status):
    recorder.error = error
    reply = await phone.request(base, "/player/playback/play")
    assert reply.status == status
    code, text = response_of(reply.body)
    assert code == str(status)
    assert str(error) in text
    assert reply.headers["X-Plex-Client-Identifier"] == FACE_ID


async def test_error_body_never_carries_the_token(base, phone, recorder):
    recorder.error = TargetUnavailable(f"fetch failed for ?X-Plex-Token={TOKEN}")
    reply = await phone.request(base, "/player/playback/playMedia", {"key": "/k", "token": TOKEN})
    assert reply.status == 502
    assert TOKEN.encode() not in reply.body


async def test_bad_parameter_is_400_naming_it_and_never_reaches_the_handler(base, phone, recorder):
    reply = await phone.request(base, "/player/playback/setParameters", {"volume": "250"})
    assert reply.status == 400
    assert "volume" in response_of(reply.body)[1]
    assert recorder.commands == []


async def test_unknown_path_is_404_with_response_body(base, phone):
    reply = await phone.request(base, "/player/playback/selfDestruct")
    assert reply.status == 404
    assert response_of(reply.body)[0] == "404"
    reply = await phone.request(base, "/nothing/here")
    assert reply.status == 404


async def test_command_for_another_player_is_404(base, phone, recorder):
    reply = await phone.request(base, "/player/playback/play",
                                headers={"X-Plex-Target-Client-Identifier": "someone-else"})
    assert reply.status == 404
    assert "not this player" in response_of(reply.body)[1]
    reply = await phone.request(base, "/player/playback/play",
                                {"X-Plex-Target-Client-Identifier": FACE_ID})
    assert reply.status == 200
    assert len(recorder.commands) == 1


async def test_target_check_comes_before_the_parameters_and_a_blank_target_names_no_player(base, phone, recorder):
    # Another player's command is not ours to judge, even when its parameters are malformed.
    reply = await phone.request(base, "/player/playback/setParameters", {"volume": "loud"},
                                headers={"X-Plex-Target-Client-Identifier": "someone-else"})
    assert reply.status == 404
    assert "not this player" in response_of(reply.body)[1]
    reply = await phone.request(base, "/player/playback/setParameters", {"volume": "loud"})
    assert reply.status == 400
    reply = await phone.request(base, "/player/playback/play", headers={"X-Plex-Target-Client-Identifier": "  "})
    assert reply.status == 200
    reply = await phone.request(base, "/player/playback/play", headers={"X-Plex-Target-Client-Identifier": FACE_ID},
                                params={"x-plex-target-client-identifier": "someone-else"})
    assert reply.status == 200, "the header wins over the query, as for every X-Plex value"
    assert len(recorder.commands) == 2


async def test_unavailable_target_still_gets_commands_and_timeline_says_disconnected(face, base, phone, recorder):
    face.set_available(False)
    recorder.error = TargetUnavailable("the player refused the connection")
    reply = await phone.request(base, "/player/playback/play")
    assert reply.status == 502
    assert len(recorder.commands) == 1, "the adapter decides; a player that is back must be reachable"
    poll = await phone.poll(base)
    assert ET.fromstring(poll.body).get("disconnected") == "1"


async def test_every_response_carries_face_id_and_cors_headers(base, phone):
    for path in ("/resources", "/player/playback/play", "/nope"):
        reply = await phone.request(base, path, headers={"Origin": "https://app.plex.tv"})
        assert reply.headers["X-Plex-Client-Identifier"] == FACE_ID
        assert reply.headers["Access-Control-Allow-Origin"] == "*"
        assert "X-Plex-Client-Identifier" in reply.headers["Access-Control-Expose-Headers"]


async def test_with_every_origin_allowed_only_a_cross_site_fetch_without_origin_is_refused(base, phone, recorder):
    # The default http.cors_origins ("*"): an Origin or a Referer is always allowed, but a page
    # that hid both still says Sec-Fetch-Site.
    hidden = await phone.request(base, "/player/playback/pause", headers={"Sec-Fetch-Site": "cross-site"})
    assert hidden.status == 403, hidden.body
    assert "Access-Control-Allow-Origin" in hidden.headers
    allowed = [await phone.request(base, "/player/playback/pause", headers=headers) for headers in (
        {}, {"Sec-Fetch-Site": "same-origin"}, {"Origin": "https://elsewhere.example", "Sec-Fetch-Site": "cross-site"},
        {"Referer": "https://elsewhere.example/page", "Sec-Fetch-Site": "same-site"})]
    assert [reply.status for reply in allowed] == [200] * 4, [reply.body for reply in allowed]
    assert len(recorder.commands) == 4


async def test_options_preflight_is_answered(base, phone):
    reply = await phone.request(base, "/player/playback/playMedia", method="OPTIONS", command_id=None,
                                headers={"Origin": "https://app.plex.tv",
                                         "Access-Control-Request-Method": "GET",
                                         "Access-Control-Request-Headers": "x-plex-client-identifier,accept"})
    assert reply.status == 200
    assert "GET" in reply.headers["Access-Control-Allow-Methods"]
    assert "OPTIONS" in reply.headers["Access-Control-Allow-Methods"]
    assert reply.headers["Access-Control-Allow-Headers"] == "x-plex-client-identifier,accept"
    assert reply.headers["Access-Control-Max-Age"] == "1209600"
    assert reply.headers["Access-Control-Allow-Origin"] == "*"


async def test_preflight_from_unlisted_origin_is_refused(session, recorder):
    async with Face(IDENTITY, recorder, bind="127.0.0.1", port=0, session=session,
                    cors_origins=("https://app.plex.tv",)) as face, FakeController() as c:
        base = f"http://127.0.0.1:{face.port}"
        good = await c.request(base, "/player/playback/play", method="OPTIONS", command_id=None,
                               headers={"Origin": "https://app.plex.tv"})
        assert good.status == 200
        assert good.headers["Access-Control-Allow-Origin"] == "https://app.plex.tv"
        bad = await c.request(base, "/player/playback/play", method="OPTIONS", command_id=None,
                              headers={"Origin": "https://evil.example"})
        assert bad.status == 403
        assert "Access-Control-Allow-Origin" not in bad.headers


async def test_foreign_host_header_is_421_and_logged(base, phone, recorder, caplog):
    caplog.set_level(logging.WARNING, logger="companion.faces.middleware")
    reply = await phone.request(base, "/player/playback/play", headers={"Host": "evil.example"})
    assert reply.status == 421
    assert reply.headers["X-Plex-Client-Identifier"] == FACE_ID
    assert recorder.commands == []
    assert any("evil.example" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("host", ["localhost:32500", "127.0.0.1", "[::1]:8080", "Bridge.LAN:1", "localhost."])
async def test_ip_literal_localhost_and_configured_hosts_are_allowed(base, phone, host):
    reply = await phone.request(base, "/resources", headers={"Host": host}, command_id=None)
    assert reply.status == 200


async def test_huge_header_is_refused_and_the_face_still_answers(base, phone):
    reply = await phone.request(base, "/resources", headers={"X-Huge": "a" * 20000}, command_id=None)
    assert reply.status in (400, 431)
    reply = await phone.request(base, "/resources", command_id=None)
    assert reply.status == 200


async def test_oversized_request_line_never_logs_its_token(base, phone, caplog):
    caplog.set_level(logging.DEBUG)
    reply = await phone.request(base, "/player/playback/playMedia",
                                {"token": TOKEN, "key": "/k" + "x" * 9000}, command_id=None)
    assert reply.status in (400, 414, 431)
    assert all(TOKEN not in r.getMessage() and not r.exc_info for r in caplog.records)


async def test_oversize_body_is_413(base):
    async with aiohttp.ClientSession() as s, s.post(base + "/player/playback/play", data=b"x" * 5000) as resp:
        assert resp.status == 413
        assert response_of(await resp.read())[0] == "413"


async def test_subscribe_pushes_at_once_with_that_controllers_command_id(face, base, phone):
    phone.command_id = 40
    reply = await phone.subscribe(base)
    assert reply.status == 200
    push = await phone.wait_for(lambda p: True, timeout=1.0)
    assert push.command_id == 41
    assert push.headers["X-Plex-Client-Identifier"] == FACE_ID
    assert push.headers["Content-Type"].startswith("application/xml")
    assert push.headers["X-Plex-Device-Name"] == "Kitchen Speaker"
    assert face.subscriber_count == 1


async def test_subscribe_without_port_is_400(base, phone):
    reply = await phone.request(base, "/player/timeline/subscribe", {"protocol": "http"})
    assert reply.status == 400
    assert "port" in response_of(reply.body)[1]


async def test_state_change_reaches_subscriber_and_long_poll_within_a_second(face, base, phone, tablet):
    await phone.subscribe(base)
    await phone.wait_for(lambda p: True)
    tablet.command_id = 6
    poll = asyncio.create_task(tablet.poll(base, wait=True))
    await until(lambda: face.long_poll_count == 1)
    face.update_state(playing(5000))
    push = await phone.wait_for(lambda p: p.state.active is not None, timeout=1.0)
    assert push.state.active is not None
    assert push.state.active.time == 5000
    reply = await asyncio.wait_for(poll, 1.0)
    assert reply.status == 200
    root = ET.fromstring(reply.body)
    assert root.get("commandID") == "7"
    assert root.find("Timeline[@type='music']").get("state") == "playing"


async def test_poll_without_wait_answers_at_once_with_command_id(base, phone):
    phone.command_id = 99
    reply = await phone.poll(base)
    root = ET.fromstring(reply.body)
    assert root.get("commandID") == "100"
    assert len(root.findall("Timeline")) == 3
    assert reply.headers["X-Plex-Protocol"] == "1.0"


async def test_command_echoes_its_command_id_to_the_subscribed_sender(base, phone):
    await phone.subscribe(base)
    reply = await phone.request(base, "/player/playback/pause", command_id=77)
    assert reply.status == 200
    await phone.wait_for(lambda p: p.command_id == 77, timeout=1.0)


async def test_unsubscribe_stops_pushes(face, base, phone, tablet):
    await phone.subscribe(base)
    await tablet.subscribe(base)
    await phone.wait_for(lambda p: True)
    await phone.unsubscribe(base)
    seen = len(phone.pushes)
    face.update_state(playing(2000))
    # The tablet getting this change proves the push round happened.
    await tablet.wait_for(lambda p: p.state.active is not None)
    assert len(phone.pushes) == seen
    assert face.subscriber_count == 1


async def test_subscriber_expires_90_s_after_last_subscribe(face, base, phone, tablet, clock):
    await phone.subscribe(base)
    await phone.wait_for(lambda p: True)
    clock.now += 91
    await tablet.subscribe(base)
    seen = len(phone.pushes)
    face.update_state(playing(3000))
    await tablet.wait_for(lambda p: p.state.active is not None)
    assert len(phone.pushes) == seen
    assert face.subscriber_count == 1


async def test_poll_keeps_a_subscription_alive(face, base, phone, clock):
    await phone.subscribe(base)
    clock.now += 60
    await phone.poll(base)
    clock.now += 60
    assert face.subscriber_count == 1
    face.update_state(playing(4000))
    await phone.wait_for(lambda p: p.state.active is not None)


async def test_dead_subscriber_does_not_delay_a_live_one(face, base, phone, tablet):
    async with SilentListener() as dead:
        await tablet.subscribe(base, port=dead.port)
        await until(lambda: dead.connections >= 1)
        await phone.subscribe(base)
        await phone.wait_for(lambda p: True, timeout=1.0)
        started = time.monotonic()
        face.update_state(playing(6000))
        await phone.wait_for(lambda p: p.state.active is not None, timeout=1.0)
        assert time.monotonic() - started < 1.0
        # The push to the dead controller is still hanging; stopping must not wait for it.
        started = time.monotonic()
        await face.stop()
        assert time.monotonic() - started < 1.0


async def test_pushes_repeat_while_playing(face, base, phone):
    await phone.subscribe(base)
    face.update_state(playing(1000))
    await until(lambda: sum(p.state.active is not None for p in phone.pushes) >= 3, timeout=2.0)


async def test_stop_releases_an_open_long_poll_promptly(face, base, phone):
    poll = asyncio.create_task(phone.poll(base, wait=True))
    await until(lambda: face.long_poll_count == 1)
    started = time.monotonic()
    await face.stop()
    reply = await asyncio.wait_for(poll, 1.0)
    assert time.monotonic() - started < 1.0
    assert reply.status == 200
    assert len(ET.fromstring(reply.body).findall("Timeline")) == 3


async def test_a_poll_with_include_metadata_gets_the_players_item_and_one_without_does_not(face, base, phone):
    from companion.proto.timeline import TimelineEntry

    entry = TimelineEntry(type="video", state="playing", time=1000, duration=60000, key="/library/metadata/7",
                          metadata='<Video ratingKey="7" title="Film"/>')
    face.update_state(PlayerState().with_entry(entry))
    plain = ET.fromstring((await phone.request(base, "/player/timeline/poll", {"wait": "0"})).body)
    asked = ET.fromstring((await phone.request(base, "/player/timeline/poll",
                                               {"wait": "0", "includeMetadata": "1"})).body)
    assert plain.find("Timeline/Video") is None
    video = asked.find("Timeline[@type='video']/Video")
    assert video is not None and video.get("title") == "Film"


async def test_answers_to_ever_new_command_ids_keep_no_memory_per_number(face):
    """Plex apps number every command and poll anew, so most answers carry a number not seen before:
    a face that kept each answer it wrote grew with every poll (one face held 592 KB here)."""
    face.update_state(playing())
    subscribers = face.subscribers

    def answer(command_id: int) -> bytes:
        subscribers.note_command("phone-1", command_id)
        return subscribers.render_for("phone-1")

    answer(1)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for command_id in range(2, 3002):
            body = answer(command_id)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    root = ET.fromstring(body)
    assert root.get("commandID") == "3001"
    assert root.find("Timeline[@type='music']").get("state") == "playing"
    assert peak < 32 * 1024, f"{peak} bytes held while answering 3,000 command numbers"
