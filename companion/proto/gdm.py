"""GDM ("G'Day Mate") datagrams <-> messages: parsing, encoding and turning adverts into sightings.

Pure codec: bytes and dataclasses in and out, no sockets, no event loop, no clock. The asyncio shell
that owns the sockets is :mod:`companion.discovery.gdm`.

Wire facts (PROTOCOL.md, research/companion-and-gdm.md section 1): text datagrams made of a start
line (``M-SEARCH * HTTP/1.x``, ``HTTP/1.x 200 OK``, ``HELLO * HTTP/1.0`` or ``BYE * HTTP/1.0``)
and ``Key: value`` lines, CRLF or bare LF, with or without a closing blank line.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from companion.errors import ProtocolError
from companion.model import FaceMarks, Sighting

MAX_DATAGRAM = 4096

MessageKind = Literal["search", "reply", "hello", "bye"]

PLAYER_CONTENT_TYPE = "plex/media-player"
SERVER_CONTENT_TYPE = "plex/media-server"

# PMP accepts any "M-SEARCH *"; the hippojay family looks for "M-SEARCH * HTTP/1." and Roku wants the
# exact 1.1 line. Accepting every HTTP/1.x form covers all of them.
_START_LINES: tuple[tuple[re.Pattern[str], MessageKind], ...] = (
    (re.compile(r"M-SEARCH \* HTTP/1\.\d"), "search"),
    (re.compile(r"HTTP/1\.\d 200 OK", re.IGNORECASE), "reply"),
    (re.compile(r"HELLO \* HTTP/1\.\d"), "hello"),
    (re.compile(r"BYE \* HTTP/1\.\d"), "bye"),
)
_ALLOWED_CONTROLS = frozenset("\r\n\t")

# A face's advert says whose face it is and for which target, so that every bridge can tell a face
# from a player (and never bridge one) and see which bridge holds which target. Values are ids made
# of letters, digits, '.', '_' and '-' only: no ':' (python-plexapi splits header lines on every
# colon) and nothing sanitise_value would rewrite, so a bridge recognises its own id on the wire.
BRIDGE_HEADER = "Bridge-Identifier"
TARGET_HEADER = "Bridged-Target"
FACE_PRODUCT = "companion-bridge"
_MARK_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
# The face ids live in a namespace of their own: uuid5(_FACE_NAMESPACE, target id). Every bridge
# derives the same id for the same target, so a phone that remembered a face finds the same
# identity when another bridge takes the face over.
_FACE_NAMESPACE = uuid.UUID("6b0f9a4e-5d1c-4c59-9a55-0c6d1f3d2b71")
_PORT_RE = re.compile(r"[0-9]{1,5}")
_SHOWN_START_LINE = 60


@dataclass(frozen=True)
class GdmMessage:
    """One parsed GDM datagram. ``headers`` keeps the sender's spelling; :meth:`get` ignores case."""

    kind: MessageKind
    start_line: str
    headers: Mapping[str, str] = field(hash=False)

    def get(self, name: str, default: str = "") -> str:
        """The value of header ``name`` (case-insensitive), or ``default`` when absent."""
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return default


def parse(data: bytes) -> GdmMessage:
    """Parse one GDM datagram; raise :class:`ProtocolError` saying why when it is not one."""
    if len(data) > MAX_DATAGRAM:
        raise ProtocolError(f"GDM datagram of {len(data)} bytes exceeds the {MAX_DATAGRAM}-byte limit")
    if not data.strip():
        raise ProtocolError("empty GDM datagram")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"GDM datagram is not UTF-8 text (bad byte at offset {exc.start})") from exc
    for offset, char in enumerate(text):
        if char not in _ALLOWED_CONTROLS and unicodedata.category(char) == "Cc":
            raise ProtocolError(f"GDM datagram holds control character {ord(char):#04x} at offset {offset}")
    text = text.replace("\r\n", "\n")
    if "\r" in text:
        raise ProtocolError("GDM datagram holds a bare CR outside a CRLF line ending")
    lines = text.split("\n")
    start_line = lines[0].strip()
    kind = _classify(start_line)
    headers: dict[str, str] = {}
    seen: set[str] = set()
    for number, raw in enumerate(lines[1:], start=2):
        line = raw.strip()
        if not line:
            continue  # blank lines: the closing one, or extra padding some senders add
        name, colon, value = line.partition(":")  # first colon only: values may hold more
        name = name.strip()
        if not colon:
            raise ProtocolError(f"GDM header line {number} has no colon: {_shorten(line)!r}")
        if not name or any(ch.isspace() for ch in name):
            raise ProtocolError(f"GDM header line {number} has no valid header name: {_shorten(line)!r}")
        if name.lower() in seen:
            continue  # first occurrence wins, so a later line cannot override an identity header
        seen.add(name.lower())
        headers[name] = value.strip()
    return GdmMessage(kind=kind, start_line=start_line, headers=MappingProxyType(headers))


def _classify(start_line: str) -> MessageKind:
    for pattern, kind in _START_LINES:
        if pattern.fullmatch(start_line):
            return kind
    raise ProtocolError(f"unknown GDM start line {_shorten(start_line)!r}")


def _shorten(text: str) -> str:
    return text if len(text) <= _SHOWN_START_LINE else text[:_SHOWN_START_LINE] + "..."


@dataclass(frozen=True)
class Advert:
    """What one face announces over GDM: the header block of its reply, HELLO and BYE."""

    resource_identifier: str
    name: str
    port: int
    product: str
    version: str
    capabilities: tuple[str, ...]
    device_class: str = "stb"
    content_type: str = PLAYER_CONTENT_TYPE
    platform: str = ""
    platform_version: str = ""
    marks: FaceMarks | None = None  # every face of a bridge carries them


def is_mark(value: str) -> bool:
    """True for a value a face mark can carry unchanged (letters, digits, '.', '_', '-')."""
    return _MARK_RE.fullmatch(value) is not None


def face_identifier(target_id: str) -> str:
    """The face's Resource-Identifier: derived from the target id alone, never the target's own."""
    return str(uuid.uuid5(_FACE_NAMESPACE, target_id))


def face_marks(msg: GdmMessage) -> FaceMarks | None:
    """The face marks of an advert, or None when it is a real player or server.

    An advert with either mark, or announcing our product (a bridge too old to mark its faces),
    is a face. Its marks make a claim only when both are well-formed ids and the
    Resource-Identifier is the one derived from the target id.
    """
    bridge = msg.get(BRIDGE_HEADER).strip()
    target = msg.get(TARGET_HEADER).strip()
    if not bridge and not target and msg.get("Product").strip().lower() != FACE_PRODUCT:
        return None
    if not (is_mark(bridge) and is_mark(target)
            and msg.get("Resource-Identifier").strip() == face_identifier(target)):
        return FaceMarks()
    return FaceMarks(bridge_id=bridge, target_id=target)


_COLON_RE = re.compile(r"\s*:\s*")
_SPACE_RE = re.compile(r"\s+")


def sanitise_value(value: str) -> str:
    """A header value safe for every GDM parser we know of.

    python-plexapi splits each line on every colon and unpacks two parts, so one colon in any
    value aborts its whole scan (Home Assistant included). Line breaks and other control
    characters would end or corrupt the header line. ``"Living Room: TV"`` -> ``"Living Room - TV"``.
    """
    cleaned = "".join(" " if unicodedata.category(ch) in ("Cc", "Zl", "Zp") else ch for ch in value)
    cleaned = _COLON_RE.sub(" - ", cleaned)
    return _SPACE_RE.sub(" ", cleaned).strip()


def _capability_list(capabilities: tuple[str, ...]) -> str:
    cleaned = (sanitise_value(cap).replace(",", "").replace(" ", "") for cap in capabilities)
    return ",".join(cap for cap in cleaned if cap)


def _header_block(advert: Advert) -> list[tuple[str, str]]:
    ident = sanitise_value(advert.resource_identifier)
    if not ident:
        raise ProtocolError(f"cannot advertise {advert.name!r}: empty Resource-Identifier")
    if not 1 <= advert.port <= 65535:
        raise ProtocolError(f"cannot advertise {advert.name!r}: port {advert.port} is not in 1..65535")
    headers = [
        ("Content-Type", sanitise_value(advert.content_type)),
        ("Resource-Identifier", ident),
        ("Name", sanitise_value(advert.name)),
        ("Port", str(advert.port)),
        ("Product", sanitise_value(advert.product)),
        ("Version", sanitise_value(advert.version)),
        ("Protocol", "plex"),
        ("Protocol-Version", "1"),
        ("Protocol-Capabilities", _capability_list(advert.capabilities)),
        ("Device-Class", sanitise_value(advert.device_class)),
    ]
    # Not in every player's block; sent only when known so the block stays minimal otherwise.
    if platform := sanitise_value(advert.platform):
        headers.append(("Platform", platform))
    if platform_version := sanitise_value(advert.platform_version):
        headers.append(("Platform-Version", platform_version))
    if advert.marks is not None:
        for name, value in ((BRIDGE_HEADER, advert.marks.bridge_id), (TARGET_HEADER, advert.marks.target_id)):
            if not is_mark(value):
                raise ProtocolError(f"cannot advertise {advert.name!r}: {name} {_shorten(value)!r} is not an id "
                                    "of letters, digits, '.', '_' and '-'")
            headers.append((name, value))
    return headers


def _encode(start_line: str, headers: list[tuple[str, str]]) -> bytes:
    # CRLF and a closing blank line, as PMP and Roku send; every parser we know accepts it.
    lines = [start_line, *(f"{name}: {value}" for name, value in headers), "", ""]
    data = "\r\n".join(lines).encode("utf-8")
    if len(data) > MAX_DATAGRAM:
        raise ProtocolError(f"GDM datagram of {len(data)} bytes exceeds the {MAX_DATAGRAM}-byte limit")
    return data


def encode_search() -> bytes:
    """An M-SEARCH for players or servers.

    HTTP/1.1 because the Roku player compares the whole line to the 1.1 form, while PMP and the
    hippojay family accept either.
    """
    return b"M-SEARCH * HTTP/1.1\r\n\r\n"


def encode_reply(advert: Advert) -> bytes:
    """The unicast answer to an M-SEARCH for one face."""
    return _encode("HTTP/1.0 200 OK", _header_block(advert))


def encode_hello(advert: Advert) -> bytes:
    """The multicast announcement of a face (at start, periodically, when a face is added)."""
    return _encode("HELLO * HTTP/1.0", _header_block(advert))


def encode_bye(advert: Advert) -> bytes:
    """The multicast farewell of a face (when it goes away, and at stop)."""
    return _encode("BYE * HTTP/1.0", _header_block(advert))


def sighting_from_message(msg: GdmMessage, address: str, *, interface: str = "") -> Sighting:
    """A player or server sighting from a reply, HELLO or BYE received from ``address``."""
    if msg.kind == "search":
        raise ProtocolError(f"GDM M-SEARCH from {address} is not an advertisement")
    content_type = msg.get("Content-Type").strip().lower()
    kind: Literal["companion", "server"]
    if content_type.startswith(PLAYER_CONTENT_TYPE):
        kind = "companion"
    elif content_type.startswith(SERVER_CONTENT_TYPE):
        kind = "server"
    else:
        raise ProtocolError(f"GDM {msg.kind} from {address} has unknown Content-Type {content_type!r}")
    ident = msg.get("Resource-Identifier").strip()
    if not ident:
        raise ProtocolError(f"GDM {msg.kind} from {address} has no Resource-Identifier")
    port_text = msg.get("Port").strip()
    if not _PORT_RE.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
        raise ProtocolError(f"GDM {msg.kind} from {address} has a bad Port {_shorten(port_text)!r}")
    capabilities = tuple(cap.strip() for cap in msg.get("Protocol-Capabilities").split(",") if cap.strip())
    return Sighting(
        source="gdm",
        kind=kind,
        ident=ident,
        name=msg.get("Name"),
        address=address,
        port=int(port_text),
        product=msg.get("Product"),
        version=msg.get("Version"),
        platform=msg.get("Platform"),
        platform_version=msg.get("Platform-Version"),
        device_class=msg.get("Device-Class"),
        model=msg.get("Model"),
        capabilities=capabilities,
        host=msg.get("Host") if kind == "server" else "",
        interface=interface,
        face=face_marks(msg) if kind == "companion" else None,
    )
