"""Timeline XML (companion.proto.timeline): rendering for controllers, parsing real players' XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from companion.errors import ProtocolError
from companion.proto.timeline import (
    MAX_TIMELINE_BYTES,
    PlayerState,
    TimelineEntry,
    parse_player_timeline,
    render,
    render_document,
)

DATA = Path(__file__).parent.parent / "data" / "timeline"

PLAYING = TimelineEntry(
    type="music", state="playing", time=61000, duration=240000, key="/library/metadata/501",
    rating_key="501", container_key="/playQueues/88", play_queue_id="88", play_queue_version="3",
    play_queue_item_id="9123", machine_identifier="server-1", protocol="https",
    address="10-0-0-5.hash.plex.direct", port="32400", volume=40, mute=False, shuffle=0, repeat=2,
    controllable=("playPause", "stop", "seekTo", "volume"),
)


def timelines(body: bytes) -> tuple[ET.Element, dict[str, dict[str, str]]]:
    root = ET.fromstring(body)
    return root, {t.get("type"): dict(t.attrib) for t in root.findall("Timeline")}


def test_idle_player_renders_three_stopped_timelines():
    root, by_type = timelines(render(PlayerState(), command_id=None, machine_identifier="face-1"))
    assert root.tag == "MediaContainer"
    assert [t.get("type") for t in root.findall("Timeline")] == ["music", "video", "photo"]
    assert all(t["state"] == "stopped" for t in by_type.values())
    assert root.get("size") == "3"
    assert root.get("machineIdentifier") == "face-1"
    assert root.get("location") == "navigation"


def test_command_id_is_echoed_and_minus_one_when_unknown():
    root, _ = timelines(render(PlayerState(), command_id=17, machine_identifier="f"))
    assert root.get("commandID") == "17"
    root, _ = timelines(render(PlayerState(), command_id=None, machine_identifier="f"))
    assert root.get("commandID") == "-1"


def test_active_entry_carries_its_attributes_and_others_stay_stopped():
    state = PlayerState(location="fullScreenMusic").with_entry(PLAYING)
    _, by_type = timelines(render(state, command_id=7, machine_identifier="face-1"))
    music = by_type["music"]
    assert music["state"] == "playing"
    assert music["time"] == "61000"
    assert music["duration"] == "240000"
    assert music["seekRange"] == "0-240000"
    assert music["key"] == "/library/metadata/501"
    assert music["playQueueItemID"] == "9123"
    assert music["machineIdentifier"] == "server-1"
    assert music["volume"] == "40"
    assert music["mute"] == "0"
    assert music["repeat"] == "2"
    assert music["controllable"] == "playPause,stop,seekTo,volume"
    assert by_type["video"]["state"] == "stopped"
    assert "key" not in by_type["video"]


def test_time_is_clamped_to_duration():
    state = PlayerState().with_entry(TimelineEntry(type="video", state="playing", time=9000, duration=5000))
    _, by_type = timelines(render(state, command_id=1, machine_identifier="f"))
    assert by_type["video"]["time"] == "5000"


def test_unknown_duration_has_no_seek_range_and_no_seek_control():
    state = PlayerState().with_entry(TimelineEntry(type="video", state="playing", time=9000,
                                                   controllable=("playPause", "seekTo")))
    _, by_type = timelines(render(state, command_id=1, machine_identifier="f"))
    video = by_type["video"]
    assert "seekRange" not in video
    assert "duration" not in video
    assert video["time"] == "9000"
    assert video["controllable"] == "playPause"


def test_disconnected_face_is_marked():
    root, _ = timelines(render(PlayerState(), command_id=1, machine_identifier="f", disconnected=True))
    assert root.get("disconnected") == "1"


def test_extra_attributes_pass_through_but_tokens_and_bad_names_do_not():
    entry = TimelineEntry(type="video", state="paused", extra={
        "subtitleStreamID": "5", "token": "SECRET-TOKEN", "bad name": "x", "state": "playing"})
    body = render(PlayerState().with_entry(entry), command_id=1, machine_identifier="f")
    _, by_type = timelines(body)
    assert by_type["video"]["subtitleStreamID"] == "5"
    assert by_type["video"]["state"] == "paused"
    assert b"SECRET-TOKEN" not in body


def test_render_then_parse_round_trips_the_active_entry():
    state = PlayerState(location="fullScreenMusic").with_entry(PLAYING)
    parsed = parse_player_timeline(render(state, command_id=3, machine_identifier="f"))
    assert parsed.location == "fullScreenMusic"
    assert parsed.active == PLAYING


def test_parse_a_real_players_music_timeline():
    state = parse_player_timeline((DATA / "music-playing.xml").read_bytes())
    music = state.entries["music"]
    assert state.location == "fullScreenMusic"
    assert state.active is music
    assert (music.state, music.time, music.duration) == ("playing", 61000, 240000)
    assert (music.play_queue_id, music.play_queue_item_id) == ("88", "9123")
    assert (music.volume, music.mute, music.shuffle, music.repeat) == (40, False, 0, 2)
    assert music.controllable[0] == "playPause"
    assert music.extra == {"guid": "plex://track/abc", "audioStreamID": "77"}
    assert "TOPSECRET" not in repr(state)
    assert state.entries["video"].state == "stopped"


def test_parse_a_single_video_timeline_with_decimal_times():
    state = parse_player_timeline((DATA / "single-video-paused.xml").read_bytes())
    video = state.entries["video"]
    assert (video.state, video.time, video.duration) == ("paused", 1234, 5400000)
    assert state.entries["music"].state == "stopped"
    assert state.entries["photo"].state == "stopped"
    assert state.location == "navigation"
    assert video.extra == {"subtitleStreamID": "0"}


# A lower-case <!doctype is not XML at all: it is refused as malformed before any entity is read.
@pytest.mark.parametrize(("name", "refusal"), [("entity-expansion.xml", "DOCTYPE and entity declarations"),
                                               ("external-entity.xml", "malformed XML")])
def test_doctype_and_entities_are_refused_without_expansion(name, refusal):
    with pytest.raises(ProtocolError, match=refusal):
        parse_player_timeline((DATA / name).read_bytes())


def test_utf16_input_cannot_smuggle_a_doctype():
    data = (DATA / "entity-expansion.xml").read_text().encode("utf-16")
    with pytest.raises(ProtocolError, match="UTF-8"):
        parse_player_timeline(data)


def test_oversize_timeline_is_refused_before_parsing():
    data = b"<MediaContainer>" + b" " * MAX_TIMELINE_BYTES + b"</MediaContainer>"
    with pytest.raises(ProtocolError, match="limit"):
        parse_player_timeline(data)


@pytest.mark.parametrize(("data", "named"), [
    (b"<MediaContainer><Timeline", "malformed XML"),
    (b"", "malformed XML"),
    (b"<Response code='200'/>", "expected <MediaContainer>"),
    (b"<MediaContainer><Timeline state='playing'/></MediaContainer>", "has no type"),
    (b"<MediaContainer><Timeline type='music' state='dancing'/></MediaContainer>", "state"),
    (b"<MediaContainer><Timeline type='music' time='soon'/></MediaContainer>", "time"),
    (b"<MediaContainer><Timeline type='music' duration='nan'/></MediaContainer>", "duration"),
    (b"<MediaContainer><Timeline type='music' volume='300'/></MediaContainer>", "volume"),
    (b"<MediaContainer><Timeline type='music' repeat='7'/></MediaContainer>", "repeat"),
    (b"<MediaContainer><Timeline type='music' mute='maybe'/></MediaContainer>", "mute"),
])
def test_malformed_timelines_raise_protocol_error_naming_the_problem(data, named):
    with pytest.raises(ProtocolError, match=named):
        parse_player_timeline(data)


def test_unknown_media_types_are_ignored():
    state = parse_player_timeline(b"<MediaContainer><Timeline type='hologram' state='playing'/></MediaContainer>")
    assert state.active is None


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.binary(max_size=300),
    st.builds(lambda attrs: ("<MediaContainer><Timeline "
                             + " ".join(f'{k}="{v}"' for k, v in attrs.items())
                             + "/></MediaContainer>").encode(),
              st.dictionaries(st.sampled_from(["type", "state", "time", "duration", "volume", "mute",
                                               "shuffle", "repeat", "controllable", "x"]),
                              st.text(alphabet=st.characters(blacklist_characters='"<&', blacklist_categories=("Cs",)),
                                      max_size=12),
                              max_size=6)),
))
def test_parse_player_timeline_raises_only_protocol_error(data):
    try:
        parse_player_timeline(data)
    except ProtocolError:
        pass


PLAYER_XML = b"""<MediaContainer commandID="4" location="fullScreenVideo" textFieldFocused="search"
    textFieldContent="star" textFieldSecure="0">
  <Timeline type="video" state="playing" time="1000" duration="60000" key="/library/metadata/7"
      controllable="playPause,stop,seekTo">
    <Video ratingKey="7" key="/library/metadata/7" title="Film" X-Plex-Token="leaky">
      <Media><Part key="/library/parts/7/file" accessToken="leaky2"/></Media>
    </Video>
  </Timeline>
  <Timeline type="music" state="stopped" controllable="playPause,stop,volume,shuffle,repeat,seekTo"/>
  <Timeline type="photo" state="stopped"/>
</MediaContainer>"""


def test_stopped_entries_keep_what_the_player_can_do():
    state = parse_player_timeline(PLAYER_XML)
    _, by_type = timelines(render(state, command_id=1, machine_identifier="f"))
    # seekTo needs a position; every other control survives on the stopped entry.
    assert by_type["music"]["controllable"] == "playPause,stop,volume,shuffle,repeat"
    assert "controllable" not in by_type["photo"], "nothing invented for an entry the player left bare"


def test_the_players_text_field_attributes_reach_the_controller():
    root, _ = timelines(render(parse_player_timeline(PLAYER_XML), command_id=1, machine_identifier="f"))
    assert (root.get("textFieldFocused"), root.get("textFieldContent"), root.get("textFieldSecure")) == (
        "search", "star", "0")


def test_metadata_only_when_the_controller_asks_and_never_a_token():
    state = parse_player_timeline(PLAYER_XML)
    plain = ET.fromstring(render(state, command_id=1, machine_identifier="f"))
    assert plain.find("Timeline/Video") is None, "no metadata unless includeMetadata=1"
    asked = render(state, command_id=1, machine_identifier="f", include_metadata=True)
    video = ET.fromstring(asked).find("Timeline[@type='video']/Video")
    assert video is not None and video.get("title") == "Film"
    assert b"leaky" not in asked


def test_text_after_a_metadata_element_is_not_part_of_it():
    # Found by fuzz/fuzz_timeline.py: serialising the child took its tail text along.
    state = parse_player_timeline(b'<MediaContainer><Timeline type="video" state="playing" time="1">'
                                  b'<Video ratingKey="1"/>tail text</Timeline></MediaContainer>')
    entry = state.entries["video"]
    assert entry.metadata == '<Video ratingKey="1" />'
    assert b"tail text" not in render(state, command_id=1, machine_identifier="f", include_metadata=True)


@given(command_id=st.one_of(st.none(), st.integers(min_value=0, max_value=2**63)),
       content=st.text(max_size=40), disconnected=st.booleans())
@settings(max_examples=200, deadline=None)
def test_a_rendered_document_differs_per_controller_only_in_its_command_id(command_id, content, disconnected):
    # The text field's content may itself look like a commandID; only the root's attribute may change.
    state = PlayerState(location="fullScreenVideo",
                        container_extra={"textFieldContent": content, "textFieldFocused": "search"}).with_entry(
        replace(PLAYING, type="video", metadata='<Video ratingKey="501" title="commandID=&quot;7&quot;"/>'))
    document = render_document(state, machine_identifier="face-1", disconnected=disconnected,
                               include_metadata=True)
    sent = document.for_command(command_id)
    unnumbered = document.for_command(None)
    assert sent.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    root, base = ET.fromstring(sent), ET.fromstring(unnumbered)
    assert root.get("commandID") == (str(command_id) if command_id is not None else "-1")
    assert base.get("commandID") == "-1"
    assert {k: v for k, v in root.attrib.items() if k != "commandID"} == \
        {k: v for k, v in base.attrib.items() if k != "commandID"}
    assert [ET.tostring(t) for t in root] == [ET.tostring(t) for t in base]
    assert root.find("Timeline[@type='video']/Video").get("title") == 'commandID="7"'
    assert (root.get("disconnected") == "1") is disconnected
    assert sent == render(state, command_id=command_id, machine_identifier="face-1", disconnected=disconnected,
                          include_metadata=True)
