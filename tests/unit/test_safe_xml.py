"""Every XML parser of the bridge refuses DTDs and entities, in whatever encoding the body is, with
an error naming what is wrong and where; a body without a DTD still parses in those encodings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from companion.errors import ProtocolError
from companion.lab.capture import player_facts
from companion.playqueue import parse_created_queue
from companion.proto.plextv import parse_devices, parse_resources
from companion.proto.proxy import parse_poll
from companion.proto.safexml import parse_xml
from companion.proto.timeline import parse_player_timeline
from companion.targets.companion_player import face_marks_in, player_identifier

DATA = Path(__file__).parent.parent / "data" / "timeline"
DECLARATION = '<?xml version="1.0"?>'

# The classic exponential expansion, and an external entity that would read a local file (XXE).
BILLION_LAUGHS = (DATA / "entity-expansion.xml").read_text()
EXTERNAL = (f'{DECLARATION}\n<!DOCTYPE MediaContainer [ <!ENTITY xxe SYSTEM "file:///etc/passwd"> ]>\n'
            '<MediaContainer location="&xxe;"/>')
# What a hostile player would gain: an identity made of an entity (here, another bridge's face marks).
FORGED_RESOURCES = (f'{DECLARATION}<!DOCTYPE MediaContainer [<!ENTITY b "other-bridge">]>'
                    '<MediaContainer><Player machineIdentifier="p-1" bridgeIdentifier="&b;" '
                    'product="Plex for Test"/></MediaContainer>')
PLAIN_RESOURCES = ('<MediaContainer><Player machineIdentifier="p-1" product="Plex for Test" '
                   'title="Den"/></MediaContainer>')

# Python's codec name -> the name the document declares (no declaration of UTF-8: the default).
ENCODINGS = {"utf-8": "", "utf-16": "UTF-16", "utf-16-le": "UTF-16LE", "utf-16-be": "UTF-16BE"}


def encoded(text: str, codec: str) -> bytes:
    """``text`` in ``codec``, its declaration naming that encoding, as a well-formed document does."""
    declared = ENCODINGS[codec]
    if declared:
        declaration = f'<?xml version="1.0" encoding="{declared}"?>'
        text = text.replace(DECLARATION, declaration) if DECLARATION in text else declaration + text
    return text.encode(codec)


PARSERS: dict[str, tuple[Callable[[bytes], object], str]] = {
    "proxy poll": (parse_poll, "proxy poll"),
    "plex.tv devices": (parse_devices, "plex.tv devices"),
    "plex.tv resources": (parse_resources, "plex.tv resources"),
    "play queue": (parse_created_queue, "play queue answer"),
    "shared parser": (lambda body: parse_xml(body, "a test document"), "a test document"),
}


@pytest.mark.parametrize("codec", ENCODINGS)
@pytest.mark.parametrize("document", [BILLION_LAUGHS, EXTERNAL], ids=["billion-laughs", "external-entity"])
@pytest.mark.parametrize("parser", PARSERS)
def test_a_dtd_is_refused_by_every_parser_in_every_encoding_naming_where(parser: str, document: str,
                                                                        codec: str) -> None:
    parse, where = PARSERS[parser]
    body = encoded(document, codec)
    if codec != "utf-8":
        assert b"<!DOCTYPE" not in body, "a check of the raw bytes would have let this body through"
    with pytest.raises(ProtocolError, match=f"^{where}: DOCTYPE and entity declarations are not accepted$"):
        parse(body)


@pytest.mark.parametrize("codec", ENCODINGS)
def test_the_same_documents_without_a_dtd_still_parse_in_every_encoding(codec: str) -> None:
    poll = '<MediaContainer><Command path="/player/playback/pause" commandID="3"/></MediaContainer>'
    assert [c.path for c in parse_poll(encoded(poll, codec))] == ["/player/playback/pause"]
    devices = '<MediaContainer><Device clientIdentifier="d-1" name="TV"/></MediaContainer>'
    assert [d.client_identifier for d in parse_devices(encoded(devices, codec))] == ["d-1"]
    queue = '<MediaContainer playQueueID="12" playQueueSelectedItemID="7"/>'
    assert parse_created_queue(encoded(queue, codec)).play_queue_id == "12"
    assert player_identifier(encoded(PLAIN_RESOURCES, codec)) == "p-1"
    assert player_facts(encoded(PLAIN_RESOURCES, codec))["title"] == "Den"


@pytest.mark.parametrize("codec", ENCODINGS)
def test_the_companion_player_adapter_reads_no_identity_or_face_marks_from_a_dtd(codec: str) -> None:
    body = encoded(FORGED_RESOURCES, codec)
    assert player_identifier(body) is None
    assert face_marks_in(body) is None
    assert player_facts(body) == {}


@pytest.mark.parametrize("document", [BILLION_LAUGHS, EXTERNAL], ids=["billion-laughs", "external-entity"])
def test_a_player_timeline_refuses_a_dtd_in_utf8_and_anything_not_utf8(document: str) -> None:
    with pytest.raises(ProtocolError, match="^player timeline: DOCTYPE and entity declarations are not accepted$"):
        parse_player_timeline(encoded(document, "utf-8"))
    for codec in ("utf-16", "utf-16-le", "utf-16-be"):
        # Without a BOM, UTF-16 of ASCII text is valid UTF-8 with a NUL in every other byte.
        with pytest.raises(ProtocolError, match="^player timeline: (not UTF-8|NUL bytes are not accepted)"):
            parse_player_timeline(encoded(document, codec))


@pytest.mark.parametrize(("body", "named"), [
    (b"<MediaContainer><Command", "malformed XML"),
    (b"<MediaContainer>&undeclared;</MediaContainer>", r"malformed XML \(undefined entity"),
    (b'<?xml version="1.0" encoding="x-no-such-codec"?><MediaContainer/>', "malformed XML"),
    (b"", "malformed XML"),
])
def test_bad_xml_is_a_protocol_error_naming_where(body: bytes, named: str) -> None:
    with pytest.raises(ProtocolError, match=f"^a test document: {named}"):
        parse_xml(body, "a test document")
