"""The companion proxy's wire shapes (companion.proto.proxy): what a poll hands over, golden bytes."""

from __future__ import annotations

import pytest

from companion.errors import ProtocolError
from companion.proto.companion import parse_request
from companion.proto.proxy import MAX_COMMANDS_PER_POLL, command_request_values, parse_poll, poll_params

HANDED = (b'<?xml version="1.0" encoding="UTF-8"?>\n<MediaContainer size="1">'
          b'<Command path="/player/playback/seekTo" commandID="12" clientIdentifier="phone-1" '
          b'queryOffset="90000" queryType="video"/></MediaContainer>')


def test_an_empty_answer_is_a_held_poll_that_brought_nothing():
    assert parse_poll(b"") == []
    assert parse_poll(b"  \n") == []


def test_a_command_becomes_the_request_the_controller_sent_to_the_server():
    [handed] = parse_poll(HANDED)
    assert (handed.path, handed.command_id, handed.client_id) == ("/player/playback/seekTo", "12", "phone-1")
    assert dict(handed.query) == {"offset": "90000", "type": "video"}
    query, headers = command_request_values(handed)
    command = parse_request("GET", handed.path, query, headers, "10.0.0.5")
    assert (command.group, command.name, command.command_id) == ("playback", "seekTo", 12)
    assert command.params["offset"] == "90000"
    assert command.controller.client_id == "phone-1"


def test_the_paths_own_query_wins_over_the_attributes():
    [handed] = parse_poll(b'<MediaContainer><Command path="/player/playback/setParameters?volume=40" '
                          b'commandID="3" queryVolume="90"/></MediaContainer>')
    assert handed.query["volume"] == "40"


def test_a_token_never_shows_in_the_repr():
    [handed] = parse_poll(b'<MediaContainer><Command path="/player/playback/playMedia" commandID="1" '
                          b'queryKey="/library/metadata/1" queryToken="sekrit"/></MediaContainer>')
    assert handed.query["token"] == "sekrit"  # carried to the decision, like a direct playMedia's
    assert "sekrit" not in repr(handed)


@pytest.mark.parametrize(("body", "what"), [
    (b"<MediaContainer><Command path='http://evil/player/x' commandID='1'/></MediaContainer>", "path"),
    (b"<MediaContainer><Command path='/library/sections' commandID='1'/></MediaContainer>", "path"),
    (b"<!DOCTYPE x [<!ENTITY a 'b'>]><MediaContainer/>", "DOCTYPE"),
    (b"<Response code='200'/>", "root element"),
    (b"<MediaContainer><Command", "malformed"),
    (b"<MediaContainer>" + b"<Command path='/player/playback/play'/>" * (MAX_COMMANDS_PER_POLL + 1)
     + b"</MediaContainer>", "commands in one answer"),
])
def test_a_bad_answer_is_refused_with_what_is_wrong(body: bytes, what: str):
    with pytest.raises(ProtocolError, match=what):
        parse_poll(body)


def test_the_poll_says_who_the_face_is_and_asks_to_be_held():
    params = poll_params(device_class="stb", capabilities=("timeline", "playback"))
    assert params == {"timeout": "1", "deviceClass": "stb", "protocolVersion": "1",
                      "protocolCapabilities": "timeline,playback"}
