"""Face marks: a bridge's face is recognisable as a face in its GDM advert and its /resources,
by every bridge and by python-plexapi's colon-splitting parser alike (no sockets)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from companion.errors import ProtocolError
from companion.model import FaceMarks, stable_id
from companion.proto.companion import FaceIdentity, resources_xml
from companion.proto.gdm import (
    Advert,
    encode_bye,
    encode_hello,
    encode_reply,
    face_identifier,
    is_mark,
    parse,
    sighting_from_message,
)
from companion.targets.companion_player import face_marks_in, player_identifier
from tests.unit.test_gdm_codec import plexapi_style_headers

DATA = Path(__file__).parent.parent / "data" / "gdm"
BRIDGE = "0b8f3c1e-2a47-4d36-9c1e-5f0a7d2e9b64"
TARGET = stable_id("companion", "shim-uuid-1")
FACE = Advert(resource_identifier=face_identifier(TARGET), name="Den TV (bridge)", port=32500,
              product="companion-bridge", version="0.1.0", capabilities=("timeline", "playback"),
              platform="Plex MPV Shim", platform_version="1.11.0", marks=FaceMarks(BRIDGE, TARGET))


def test_face_identity_is_the_same_on_every_bridge_and_across_versions() -> None:
    # Pinned: a phone that remembered a face must find the same identity after a restart, an
    # upgrade, or another bridge taking the face over.
    assert TARGET == "companion-a8399c5459c975ea"
    assert face_identifier(TARGET) == "d766a6e3-7c3b-5a60-8465-7d4d41e237ae"


def test_a_marked_face_reply_matches_the_golden_bytes() -> None:
    assert encode_reply(FACE) == (DATA / "our_reply_marked_face.gdm").read_bytes()


@pytest.mark.parametrize("encode", [encode_reply, encode_hello, encode_bye])
def test_a_face_advert_is_read_back_as_a_claim_of_that_bridge_on_that_target(encode) -> None:
    sighting = sighting_from_message(parse(encode(FACE)), "10.0.0.5")
    assert sighting.face == FaceMarks(BRIDGE, TARGET)
    assert sighting.face.is_claim
    assert sighting.ident == face_identifier(TARGET)


def test_python_plexapi_reads_every_header_of_a_marked_face() -> None:
    headers = plexapi_style_headers(encode_reply(FACE))  # raises on any value holding a colon
    assert headers["Bridge-Identifier"] == BRIDGE
    assert headers["Bridged-Target"] == TARGET
    assert headers["Resource-Identifier"] == face_identifier(TARGET)


@pytest.mark.parametrize("name", ["player_reply_pmp_crlf.gdm", "player_reply_http11_extra.gdm",
                                  "player_hello_lf.gdm", "player_bye_lf.gdm", "server_reply_crlf.gdm"])
def test_real_players_and_servers_are_not_faces(name: str) -> None:
    sighting = sighting_from_message(parse((DATA / name).read_bytes()), "10.0.0.5")
    assert sighting.face is None


def test_an_unmarked_advert_of_our_product_is_a_face_without_a_claim() -> None:
    # A bridge too old to mark its faces: never bridged, but says nothing about who holds what.
    old = Advert("some-old-face", "Den TV (bridge)", 32500, "companion-bridge", "0.0.9", ("timeline",))
    sighting = sighting_from_message(parse(encode_reply(old)), "10.0.0.5")
    assert sighting.face == FaceMarks()
    assert not sighting.face.is_claim


def test_marks_whose_identifier_is_not_derived_from_the_target_make_no_claim() -> None:
    forged = Advert("not-the-derived-id", "TV", 32500, "something", "1", ("timeline",),
                    marks=FaceMarks(BRIDGE, TARGET))
    sighting = sighting_from_message(parse(encode_reply(forged)), "10.0.0.5")
    assert sighting.face == FaceMarks()


def test_a_datagram_with_malformed_marks_is_still_a_face() -> None:
    data = encode_reply(FACE).replace(BRIDGE.encode(), b"bridge with spaces")
    sighting = sighting_from_message(parse(data), "10.0.0.5")
    assert sighting.face == FaceMarks()


@pytest.mark.parametrize("bad", ["with:colon", "", "a b", "x" * 65, "caf\u00e9"])
def test_a_mark_that_would_not_survive_the_wire_cannot_be_encoded(bad: str) -> None:
    assert not is_mark(bad)
    advert = Advert(face_identifier(TARGET), "TV", 32500, "companion-bridge", "1", (),
                    marks=FaceMarks(bad, TARGET))
    with pytest.raises(ProtocolError, match="Bridge-Identifier .* is not an id of letters"):
        encode_reply(advert)


def test_resources_of_a_face_carry_the_same_marks_and_are_recognised() -> None:
    identity = FaceIdentity(machine_identifier=face_identifier(TARGET), name="Den TV (bridge)",
                            product="companion-bridge", version="0.1.0", platform="Plex MPV Shim",
                            platform_version="1.11.0", device_class="stb", capabilities=("timeline",),
                            bridge_id=BRIDGE, target_id=TARGET)
    body = resources_xml(identity)
    player = ET.fromstring(body).find("Player")
    assert player is not None
    assert (player.get("bridgeIdentifier"), player.get("bridgedTarget")) == (BRIDGE, TARGET)
    assert face_marks_in(body) == FaceMarks(BRIDGE, TARGET)


def test_resources_of_a_real_player_are_not_a_face() -> None:
    body = (b'<?xml version="1.0" encoding="utf-8"?><MediaContainer><Player title="Den" '
            b'machineIdentifier="shim-uuid-1" product="Plex MPV Shim" protocol="plex"/></MediaContainer>')
    assert face_marks_in(body) is None
    assert player_identifier(body) == "shim-uuid-1"
