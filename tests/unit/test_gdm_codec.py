"""GDM codec: golden datagrams from real players and servers, our own encoding, and properties."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from companion.errors import ProtocolError
from companion.proto.gdm import (
    MAX_DATAGRAM,
    Advert,
    encode_bye,
    encode_hello,
    encode_reply,
    encode_search,
    parse,
    sanitise_value,
    sighting_from_message,
)

DATA = Path(__file__).parent.parent / "data" / "gdm"

LIVING_ROOM = Advert(
    resource_identifier="cb-face-0001",
    name="Living Room: TV",
    port=32500,
    product="companion-bridge",
    version="0.1.0",
    capabilities=("timeline", "playback", "playqueues"),
    platform="Chromecast",
    platform_version="1.56",
)


def golden(name: str) -> bytes:
    return (DATA / name).read_bytes()


def plexapi_style_headers(data: bytes) -> dict[str, str]:
    """How python-plexapi reads a reply: every line with a colon, split on every colon, two parts.

    Written from its documented behaviour (research 1.4); a value with a colon makes the unpacking
    raise ValueError, which aborts plexapi's whole scan.
    """
    out: dict[str, str] = {}
    for line in data.decode("utf-8").splitlines():
        if ":" in line:
            key, value = line.split(":")
            out[key] = value.strip()
    return out


@pytest.mark.parametrize(("name", "kind"), [
    ("search_http10_bare.gdm", "search"),
    ("search_http11_crlf.gdm", "search"),
    ("search_http11_extra_headers.gdm", "search"),
    ("player_reply_pmp_crlf.gdm", "reply"),
    ("player_reply_http11_extra.gdm", "reply"),
    ("server_reply_crlf.gdm", "reply"),
    ("player_hello_lf.gdm", "hello"),
    ("player_bye_lf.gdm", "bye"),
])
def test_real_world_datagrams_are_recognised(name: str, kind: str) -> None:
    assert parse(golden(name)).kind == kind


def test_pmp_crlf_reply_becomes_a_companion_sighting() -> None:
    sighting = sighting_from_message(parse(golden("player_reply_pmp_crlf.gdm")), "192.168.1.30",
                                     interface="192.168.1.2")
    assert sighting.kind == "companion"
    assert sighting.source == "gdm"
    assert sighting.ident == "5f1c1b0e-pmp-livingroom"
    assert sighting.name == "Living Room PMP"
    assert (sighting.address, sighting.port) == ("192.168.1.30", 32433)
    assert sighting.product == "Plex Media Player"
    assert sighting.version == "2.58.0.1076-38e019da"
    assert sighting.capabilities == ("timeline", "playback", "navigation", "mirror", "playqueues")
    assert sighting.device_class == "HTPC"
    assert sighting.interface == "192.168.1.2"
    assert sighting.host == ""


def test_lf_hello_without_closing_blank_line_becomes_a_sighting() -> None:
    sighting = sighting_from_message(parse(golden("player_hello_lf.gdm")), "10.0.0.7")
    assert (sighting.ident, sighting.name, sighting.port) == ("mpv-shim-0a1b2c", "Bedroom mpv", 3000)


def test_server_reply_becomes_a_server_sighting_with_its_plex_direct_host() -> None:
    sighting = sighting_from_message(parse(golden("server_reply_crlf.gdm")), "10.10.10.100")
    assert sighting.kind == "server"
    assert sighting.port == 32400
    assert sighting.host == "53f4b5b6023d41182fe88a99b0e714ba.plex.direct"
    assert sighting.version == "1.18.8.2527-740d4c206"


def test_values_with_colons_in_others_datagrams_are_split_on_the_first_colon_only() -> None:
    message = parse(golden("player_reply_http11_extra.gdm"))
    assert message.get("Name") == "Kitchen: Squeezebox"
    assert message.get("location") == "http://192.168.1.20:3000/resources"
    assert message.get("X-Trailing-After-Blank") == "kept"
    sighting = sighting_from_message(message, "192.168.1.20")
    assert sighting.name == "Kitchen: Squeezebox"
    assert sighting.capabilities == ("timeline", "playback", "playqueues")


def test_header_lookup_ignores_case_and_defaults_when_absent() -> None:
    message = parse(golden("server_reply_crlf.gdm"))
    assert message.get("CONTENT-TYPE") == "plex/media-server"
    assert message.get("Model") == ""
    assert message.get("Model", "unknown") == "unknown"


@pytest.mark.parametrize(("name", "reason"), [
    ("bad_nul_bytes.gdm", "control character 0x00"),
    ("bad_not_utf8.gdm", "not UTF-8"),
    ("bad_header_without_colon.gdm", "line 3 has no colon"),
    ("bad_start_line_ssdp_notify.gdm", "unknown GDM start line 'NOTIFY"),
    ("bad_start_line_not_found.gdm", "unknown GDM start line 'HTTP/1.0 404"),
])
def test_malformed_datagrams_are_rejected_with_the_reason(name: str, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        parse(golden(name))


def test_oversize_datagram_is_rejected_even_when_otherwise_valid() -> None:
    data = golden("player_reply_pmp_crlf.gdm") + b"X-Pad: " + b"a" * MAX_DATAGRAM + b"\r\n"
    with pytest.raises(ProtocolError, match="exceeds the 4096-byte limit"):
        parse(data)


def test_empty_datagram_is_rejected() -> None:
    with pytest.raises(ProtocolError, match="empty"):
        parse(b"\r\n")


@pytest.mark.parametrize(("header", "value", "reason"), [
    ("Resource-Identifier", "", "no Resource-Identifier"),
    ("Port", "", "bad Port"),
    ("Port", "0", "bad Port"),
    ("Port", "65536", "bad Port"),
    ("Port", "32400abc", "bad Port"),
    ("Port", "\u0663\u0662", "bad Port"),  # Arabic-Indic digits: int() would accept them
    ("Content-Type", "text/html", "unknown Content-Type"),
])
def test_adverts_with_missing_or_bad_identity_are_rejected(header: str, value: str, reason: str) -> None:
    text = golden("player_reply_pmp_crlf.gdm").decode()
    lines = [f"{header}: {value}" if line.startswith(f"{header}:") else line for line in text.split("\r\n")]
    message = parse("\r\n".join(lines).encode())
    with pytest.raises(ProtocolError, match=reason):
        sighting_from_message(message, "192.168.1.30")


def test_a_search_is_not_an_advert() -> None:
    with pytest.raises(ProtocolError, match=r"M-SEARCH from 10\.0\.0\.1 is not an advertisement"):
        sighting_from_message(parse(encode_search()), "10.0.0.1")


def test_our_reply_matches_the_golden_bytes_crlf_with_closing_blank_line() -> None:
    assert encode_reply(LIVING_ROOM) == golden("our_reply_living_room.gdm")


def test_our_search_is_the_http11_form_every_player_accepts() -> None:
    assert encode_search() == b"M-SEARCH * HTTP/1.1\r\n\r\n"
    assert parse(encode_search()).kind == "search"


def test_hello_and_bye_carry_the_reply_header_block() -> None:
    reply_headers = golden("our_reply_living_room.gdm").split(b"\r\n", 1)[1]
    assert encode_hello(LIVING_ROOM) == b"HELLO * HTTP/1.0\r\n" + reply_headers
    assert encode_bye(LIVING_ROOM) == b"BYE * HTTP/1.0\r\n" + reply_headers


def test_our_reply_round_trips_into_the_same_face() -> None:
    sighting = sighting_from_message(parse(encode_reply(LIVING_ROOM)), "192.168.1.2")
    assert sighting.kind == "companion"
    assert sighting.ident == "cb-face-0001"
    assert sighting.name == "Living Room - TV"
    assert sighting.port == 32500
    assert sighting.capabilities == LIVING_ROOM.capabilities
    assert (sighting.platform, sighting.platform_version) == ("Chromecast", "1.56")


def test_python_plexapi_style_parsing_reads_our_reply_although_the_name_had_a_colon() -> None:
    headers = plexapi_style_headers(encode_reply(LIVING_ROOM))
    assert headers["Resource-Identifier"] == "cb-face-0001"
    assert headers["Name"] == "Living Room - TV"
    assert headers["Protocol"] == "plex"
    assert headers["Protocol-Version"] == "1"


def test_advert_values_lose_line_breaks_so_they_cannot_inject_headers() -> None:
    advert = Advert("id-1", "TV\r\nPort: 1", 32500, "p", "v", ("timeline",))
    message = parse(encode_reply(advert))
    assert message.get("Port") == "32500"
    assert message.get("Name") == "TV Port - 1"


def test_advert_with_port_out_of_range_cannot_be_encoded() -> None:
    with pytest.raises(ProtocolError, match=r"port 0 is not in 1\.\.65535"):
        encode_reply(Advert("id-1", "TV", 0, "p", "v", ()))


def test_advert_without_identifier_cannot_be_encoded() -> None:
    with pytest.raises(ProtocolError, match="empty Resource-Identifier"):
        encode_hello(Advert(" \r\n ", "TV", 32500, "p", "v", ()))


@given(st.binary(max_size=MAX_DATAGRAM + 16))
def test_parse_of_arbitrary_bytes_raises_only_protocol_error(data: bytes) -> None:
    try:
        message = parse(data)
    except ProtocolError:
        return
    try:
        sighting_from_message(message, "10.0.0.1")
    except ProtocolError:
        pass


@given(st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")))
def test_parse_of_arbitrary_text_raises_only_protocol_error(data: bytes) -> None:
    try:
        parse(b"HTTP/1.0 200 OK\r\n" + data)
    except ProtocolError:
        pass


_text = st.text(max_size=40)
_ident = st.text(min_size=1, max_size=40).filter(lambda s: sanitise_value(s) != "")
_capability = st.sampled_from(["timeline", "playback", "navigation", "mirror", "playqueues",
                               "playqueues-creation", "provider-playback"])


@given(st.builds(
    Advert, resource_identifier=_ident, name=_text, port=st.integers(1, 65535), product=_text,
    version=_text, capabilities=st.lists(_capability, max_size=5).map(tuple), device_class=_text,
    platform=_text, platform_version=_text,
))
def test_any_advert_round_trips_and_stays_colon_free(advert: Advert) -> None:
    for encode in (encode_reply, encode_hello, encode_bye):
        data = encode(advert)
        for line in data.decode().split("\r\n")[1:]:
            assert line == "" or line.count(":") == 1, line
        sighting = sighting_from_message(parse(data), "10.0.0.1")
        assert sighting.ident == sanitise_value(advert.resource_identifier)
        assert sighting.name == sanitise_value(advert.name)
        assert sighting.port == advert.port
        assert sighting.product == sanitise_value(advert.product)
        assert sighting.version == sanitise_value(advert.version)
        assert sighting.device_class == sanitise_value(advert.device_class)
        assert sighting.platform == sanitise_value(advert.platform)
        assert sighting.capabilities == advert.capabilities
