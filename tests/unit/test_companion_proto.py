"""Companion request parsing and response XML (companion.proto.companion), no sockets."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

from companion.errors import ProtocolError
from companion.proto.companion import (
    COMMANDS,
    FaceIdentity,
    known_command,
    known_player_path,
    media_request,
    parse_request,
    resources_xml,
    response_xml,
    split_player_path,
)

TOKEN = "transient-SECRET-1234567890"
PLAY_MEDIA = {
    "providerIdentifier": "com.plexapp.plugins.library",
    "protocol": "https",
    "containerKey": "/playQueues/43?own=1",
    "address": "10-0-0-215.0123456789abcdef0123456789abcdef.plex.direct",
    "port": "32400",
    "token": TOKEN,
    "key": "/library/metadata/28",
    "offset": "1500",
    "machineIdentifier": "server-abc",
    "type": "video",
    "commandID": "1",
}


def parse(path: str, query: dict[str, str] | None = None, headers: dict[str, str] | None = None):
    return parse_request("GET", path, query or {}, headers or {}, "192.0.2.7")


def test_plex_values_from_headers_fill_the_controller():
    cmd = parse("/player/playback/pause", {"type": "video", "commandID": "12"}, {
        "x-plex-client-identifier": "phone-1", "X-Plex-Device-Name": "Ann's phone",
        "X-PLEX-PRODUCT": "Plex for Android", "X-Plex-Target-Client-Identifier": "face-1"})
    assert (cmd.group, cmd.name) == ("playback", "pause")
    assert cmd.controller.client_id == "phone-1"
    assert cmd.controller.name == "Ann's phone"
    assert cmd.controller.product == "Plex for Android"
    assert cmd.controller.address == "192.0.2.7"
    assert cmd.command_id == 12
    assert cmd.target_client_id == "face-1"
    assert dict(cmd.params) == {"type": "video"}


def test_plex_values_in_the_query_count_like_headers_and_leave_params():
    cmd = parse("/player/playback/play", {
        "X-Plex-Client-Identifier": "web-1", "x-plex-device-name": "Browser",
        "X-Plex-Token": TOKEN, "type": "music"})
    assert cmd.controller.client_id == "web-1"
    assert cmd.controller.name == "Browser"
    assert dict(cmd.params) == {"type": "music"}


def test_header_wins_over_query_for_the_same_plex_value():
    cmd = parse("/player/playback/play", {"X-Plex-Client-Identifier": "from-query"},
                {"X-Plex-Client-Identifier": "from-header"})
    assert cmd.controller.client_id == "from-header"


def test_aiohttp_headers_give_the_same_command_as_a_plain_mapping():
    # The face passes aiohttp's case-insensitive headers, which parse_request looks names up in.
    query = {"X-Plex-Client-Identifier": "from-query", "x-plex-product": "Query App", "commandID": "7"}
    headers = {"x-plex-client-identifier": "from-header", "X-PLEX-DEVICE-NAME": "Ann's phone",
               "X-Plex-Target-Client-Identifier": " face-1 ", "Host": "10.0.0.2:32500"}
    plain = parse("/player/playback/pause", query, headers)
    multi = parse("/player/playback/pause", query, CIMultiDictProxy(CIMultiDict(headers)))
    assert multi == plain
    assert (multi.controller.client_id, multi.controller.name, multi.controller.product) == (
        "from-header", "Ann's phone", "Query App")
    assert multi.target_client_id == "face-1"


@given(st.dictionaries(st.sampled_from(["X-Plex-Client-Identifier", "x-plex-device-name", "X-PLEX-PRODUCT",
                                        "X-Plex-Target-Client-Identifier", "X-Plex-Token", "Host", "Origin"]),
                       st.text(max_size=8), max_size=7))
@settings(max_examples=200, deadline=None)
def test_header_lookup_matches_the_plain_reading_for_any_headers(headers):
    plain = parse("/player/timeline/poll", {"wait": "0"}, headers)
    assert parse("/player/timeline/poll", {"wait": "0"}, CIMultiDictProxy(CIMultiDict(headers))) == plain


@given(st.lists(st.tuples(st.sampled_from(["commandID", "commandid", "offset", "type", "X-Plex-Product",
                                             "x-plex-product", "wait"]),
                           st.sampled_from(["", "0", "1", "7", "12", "music"])), max_size=6))
@settings(max_examples=300, deadline=None)
def test_a_query_with_repeated_names_reads_as_its_first_values(pairs):
    # The face passes aiohttp's query MultiDict as it is: each name counts by its first value,
    # which is what dict() of that MultiDict keeps, and case variants of one name do too.
    def outcome(query):
        try:
            return parse("/player/playback/seekTo", query)
        except ProtocolError as exc:
            return type(exc)
    multi = MultiDict(pairs)
    first: dict[str, str] = {}
    seen: set[str] = set()
    for key, value in pairs:
        folded = key.lower() if key.lower() in ("commandid", "x-plex-product") else key
        if folded not in seen:
            seen.add(folded)
            first[key] = value
    assert outcome(MultiDictProxy(multi)) == outcome(first)


_SEGMENTS = sorted({"player", "application", "x", ""} | set(COMMANDS)
                   | {name for names in COMMANDS.values() for name in names})


@given(st.lists(st.sampled_from(_SEGMENTS), max_size=5), st.booleans(), st.booleans())
@settings(max_examples=500, deadline=None)
def test_known_player_path_says_what_split_and_known_command_say(segments, leading, trailing):
    # The face's one lookup for a command's path must accept exactly the paths the split accepts.
    path = ("/" if leading else "") + "/".join(segments) + ("/" if trailing else "")
    split = split_player_path(path)
    expected = split if split is not None and known_command(*split) else None
    assert known_player_path(path) == expected


def test_known_player_path_takes_every_command_and_the_alias():
    for group, names in COMMANDS.items():
        for name in names:
            assert known_player_path(f"/player/{group}/{name}") == (group, name)
            assert known_player_path(f"/player/{group}/{name}/") == (group, name)
    assert known_player_path("/player/application/playMedia") == ("playback", "playMedia")
    assert known_player_path("/player/playback/nonsense") is None


def test_command_without_command_id_or_controller_is_accepted():
    cmd = parse("/player/playback/stop")
    assert cmd.command_id is None
    assert cmd.controller.client_id == ""
    assert cmd.target_client_id is None


@pytest.mark.parametrize(("value", "expected"), [
    ("12", 12), ("007", 7), (" 12 ", 12), ("+3", 3), ("-1", -1), ("999999999999999", 999999999999999),
    (str(2**53), 2**53)])
def test_command_ids_read_as_integers(value, expected):
    assert parse("/player/playback/play", {"commandID": value}).command_id == expected


@pytest.mark.parametrize("value", ["abc", "1.5", "", "99999999999999999999999", str(2**53 + 1), "\u0663", "\u00b2",
                                   "-2"])
def test_bad_command_id_is_a_protocol_error_naming_it(value):
    if value == "":
        assert parse("/player/playback/play", {"commandID": value}).command_id is None
        return
    with pytest.raises(ProtocolError, match="commandID"):
        parse("/player/playback/play", {"commandID": value})


@pytest.mark.parametrize("path", [
    "/player/playback/explode", "/player/unknown/play", "/player/playback", "/resources",
    "/player/playback/play/extra", "/other/playback/play",
])
def test_unknown_paths_are_protocol_errors(path):
    with pytest.raises(ProtocolError, match="unknown Companion command"):
        parse(path)


def test_legacy_application_play_media_is_playback_play_media():
    cmd = parse("/player/application/playMedia", {"key": "/library/metadata/1"})
    assert (cmd.group, cmd.name) == ("playback", "playMedia")


@pytest.mark.parametrize(("param", "value"), [
    ("volume", "101"), ("volume", "-1"), ("volume", "loud"), ("port", "0"), ("port", "70000"),
    ("offset", "-5"), ("offset", "soon"), ("shuffle", "2"), ("repeat", "3"), ("wait", "yes"),
    ("volume", "\u0665\u0660"), ("wait", "\u00b9"),
])
def test_bad_numeric_params_name_the_parameter_and_value(param, value):
    with pytest.raises(ProtocolError) as info:
        parse("/player/playback/setParameters", {param: value})
    message = str(info.value)
    assert param in message
    assert value.lstrip("-") in message


def test_good_numeric_params_pass():
    cmd = parse("/player/playback/setParameters", {"volume": "100", "shuffle": "1", "repeat": "2"})
    assert cmd.params["volume"] == "100"


def test_play_media_request_carries_every_parameter():
    req = media_request(parse("/player/playback/playMedia", PLAY_MEDIA))
    assert req.key == "/library/metadata/28"
    assert req.offset_ms == 1500
    assert req.media_type == "video"
    assert req.container_key == "/playQueues/43?own=1"
    assert req.machine_identifier == "server-abc"
    assert req.protocol == "https"
    assert req.address.endswith(".plex.direct")
    assert req.port == 32400
    assert req.token == TOKEN
    assert req.provider_identifier == "com.plexapp.plugins.library"
    assert dict(req.extra) == {}
    assert TOKEN not in repr(req)


def test_alexa_query_variants_are_understood():
    alexa = {"queryKey": "/library/metadata/9", "queryOffset": "2000",
             "queryMachineIdentifier": "srv", "queryProtocol": "http", "queryAddress": "10.0.0.5",
             "queryPort": "32401", "queryContainerKey": "/playQueues/7", "queryToken": TOKEN,
             "deviceName": "Alexa"}
    req = media_request(parse("/player/playback/playMedia", alexa))
    assert (req.key, req.offset_ms, req.machine_identifier) == ("/library/metadata/9", 2000, "srv")
    assert (req.protocol, req.address, req.port) == ("http", "10.0.0.5", 32401)
    assert req.container_key == "/playQueues/7"
    assert req.token == TOKEN
    assert dict(req.extra) == {"deviceName": "Alexa"}


def test_unknown_play_media_params_are_kept_but_tokens_never():
    params = dict(PLAY_MEDIA, paused="1", X_Token_Like="x")
    params["Token"] = TOKEN
    req = media_request(parse("/player/playback/playMedia", params))
    assert req.extra["paused"] == "1"
    assert TOKEN not in str(dict(req.extra))


def test_defaults_when_optional_params_are_absent():
    req = media_request(parse("/player/playback/playMedia", {"key": "/library/metadata/1"}))
    assert (req.offset_ms, req.media_type, req.protocol, req.port, req.token) == (0, "video", "http", 32400, None)


def test_audio_type_means_music():
    req = media_request(parse("/player/playback/playMedia", {"key": "/k", "type": "audio"}))
    assert req.media_type == "music"


@pytest.mark.parametrize(("param", "value", "named"), [
    ("key", "", "key is required"),
    ("key", "@evil.example/x", "key"),
    ("key", "/library/metadata/1 2", "key"),
    ("protocol", "gopher", "protocol"),
    ("address", "evil.example/x?", "address"),
    ("address", "user@10.0.0.5", "address"),
    ("type", "hologram", "type"),
])
def test_bad_play_media_params_raise_naming_the_parameter_without_the_token(param, value, named):
    params = dict(PLAY_MEDIA)
    params[param] = value
    with pytest.raises(ProtocolError, match=named) as info:
        media_request(parse("/player/playback/playMedia", params))
    assert TOKEN not in str(info.value)
    assert TOKEN not in repr(info.value)


def test_missing_key_error_names_key_and_never_the_token():
    params = {k: v for k, v in PLAY_MEDIA.items() if k != "key"}
    with pytest.raises(ProtocolError, match="key is required") as info:
        media_request(parse("/player/playback/playMedia", params))
    assert TOKEN not in str(info.value)


def test_response_xml_is_escaped_and_parseable():
    body = response_xml(400, 'bad "value" <&> \x01')
    assert body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    root = ET.fromstring(body)
    assert root.tag == "Response"
    assert root.get("code") == "400"
    assert root.get("status").startswith('bad "value" <&>')


def test_response_xml_ok_shape():
    assert b'<Response code="200" status="OK" />' in response_xml(200, "OK")


IDENTITY = FaceIdentity(machine_identifier="face-123", name="Living room TV", product="companion-bridge",
                        version="0.1.0", platform="Chromecast", platform_version="1.56",
                        device_class="stb", capabilities=("timeline", "playback"))


def test_resources_xml_describes_the_player():
    root = ET.fromstring(resources_xml(IDENTITY))
    assert root.tag == "MediaContainer"
    player = root.find("Player")
    assert player is not None
    assert player.attrib == {
        "title": "Living room TV", "machineIdentifier": "face-123", "product": "companion-bridge",
        "version": "0.1.0", "platform": "Chromecast", "platformVersion": "1.56", "protocol": "plex",
        "protocolVersion": "1", "protocolCapabilities": "timeline,playback", "deviceClass": "stb",
    }


text = st.text(max_size=40)


@settings(max_examples=300, deadline=None)
@given(method=st.sampled_from(["GET", "POST", "DELETE", "get", ""]),
       path=st.one_of(text, st.sampled_from(["/player/playback/playMedia", "/player/timeline/poll",
                                             "/player/playback/setParameters"])),
       query=st.dictionaries(st.one_of(text, st.sampled_from(["commandID", "volume", "port", "offset",
                                                              "key", "token", "X-Plex-Client-Identifier"])),
                             text, max_size=6),
       headers=st.dictionaries(text, text, max_size=4))
def test_parse_request_raises_only_protocol_error_on_any_input(method, path, query, headers):
    try:
        cmd = parse_request(method, path, query, headers, "127.0.0.1")
    except ProtocolError:
        return
    if cmd.name == "playMedia":
        try:
            media_request(cmd)
        except ProtocolError:
            pass
