"""Companion HTTP requests and responses (sans-I/O): request values -> Command, plus the XML bodies.

Works on plain values (method, path, query, headers, peer) so every quirk of real controllers is
pinned by unit tests without a socket. Nothing here echoes a token: error messages name the
parameter and, for non-secret parameters only, a shortened copy of the offending value.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from urllib.parse import unquote

from multidict import CIMultiDict, CIMultiDictProxy, istr

from companion.errors import ProtocolError
from companion.model import SECRET_PARAMS, Command, Controller, MediaRequest, scrub, strip_tokens

# Known command names per group. Navigation and application are accepted here; whether the
# target supports them is the handler's business (it raises CommandNotSupported).
COMMANDS: Mapping[str, frozenset[str]] = MappingProxyType({
    "playback": frozenset({
        "playMedia", "play", "pause", "stop", "seekTo", "skipNext", "skipPrevious", "skipTo",
        "stepForward", "stepBack", "setParameters", "setStreams", "refreshPlayQueue",
        "createPlayQueue",
        # plex-mpv-shim routes these to stepForward/stepBack; controllers do send them.
        "bigStepForward", "bigStepBack",
    }),
    "timeline": frozenset({"subscribe", "unsubscribe", "poll"}),
    "mirror": frozenset({"details"}),
    "navigation": frozenset({
        "moveUp", "moveDown", "moveLeft", "moveRight", "select", "back", "home", "music",
        "contextMenu", "toggleOSD", "pageUp", "pageDown", "nextLetter", "previousLetter",
    }),
    "application": frozenset({"setText", "sendString", "sendVirtualKey", "sendKey"}),
})

# Legacy alias (plex-mpv-shim): /player/application/playMedia means /player/playback/playMedia.
_ALIASES: Mapping[tuple[str, str], tuple[str, str]] = MappingProxyType({
    ("application", "playMedia"): ("playback", "playMedia"),
})

_METHODS = frozenset({"GET", "POST", "PUT", "HEAD"})
# Every (group, name) known_command accepts, aliases included: one set lookup per request.
_KNOWN = frozenset({(group, name) for group, names in COMMANDS.items() for name in names} | set(_ALIASES))
_MAX_ECHO = 48
_INT_RE = re.compile(r"[+-]?[0-9]{1,18}")
# Host names and IP literals only: no '/', '@', '?', '#', spaces, so an address can never turn
# ``protocol://address:port`` into a different URL.
_ADDRESS_RE = re.compile(r"\[?[A-Za-z0-9._:%-]{1,253}\]?")
_MEDIA_TYPES = {"music": "music", "audio": "music", "video": "video", "photo": "photo"}

# (parameter, low, high): numeric parameters checked wherever they appear.
_NUMERIC: Mapping[str, tuple[int, int]] = MappingProxyType({
    "offset": (0, 10**12),
    "queryOffset": (0, 10**12),
    "volume": (0, 100),
    "port": (1, 65535),
    "queryPort": (1, 65535),
    "shuffle": (0, 1),
    "repeat": (0, 2),
    "wait": (0, 1),
})
# The X-Plex-* headers a Command is built from: (name, the key parse_request files it under).
_CI_TYPES = (CIMultiDictProxy, CIMultiDict)
_new_tuple = tuple.__new__
# istr keys: a case-insensitive lookup that need not fold the name first.
_PLEX_HEADERS = tuple((istr(name), name.lower()) for name in (
    "X-Plex-Client-Identifier", "X-Plex-Device-Name", "X-Plex-Product", "X-Plex-Target-Client-Identifier"))


def _echo(name: str, value: str) -> str:
    """A value safe to put in an error message: never a secret, never unbounded."""
    if name.lower() in SECRET_PARAMS or name.lower().startswith("x-plex-token"):
        return "<redacted>"
    if len(value) > _MAX_ECHO:
        value = value[:_MAX_ECHO] + "..."
    return repr(value)


def parse_int(where: str, name: str, value: str, low: int, high: int) -> int:
    """``value`` as an integer within ``low..high``, or a ProtocolError naming ``where`` and ``name``."""
    if _small_uint(value):  # the common case, without the regex
        number = int(value)
        if low <= number <= high:
            return number
    text = value.strip()
    if not _INT_RE.fullmatch(text):
        raise ProtocolError(f"{where}: {name}: expected an integer {low}..{high}, got {_echo(name, value)}")
    number = int(text)
    if not low <= number <= high:
        raise ProtocolError(f"{where}: {name}: {number} is outside {low}..{high}")
    return number


def known_command(group: str, name: str) -> bool:
    """True when ``/player/<group>/<name>`` is a Companion command this module can parse."""
    return (group, name) in _KNOWN


def split_player_path(path: str) -> tuple[str, str] | None:
    """``/player/<group>/<name>`` -> (group, name) after aliasing, or None for any other shape."""
    parts = path.strip("/").split("/")
    if len(parts) != 3 or parts[0] != "player":
        return None
    pair = (parts[1], parts[2])
    return _ALIASES.get(pair, pair)


# The path of every known command (aliases included), as controllers write it, -> its (group, name).
_PATHS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {f"/player/{group}/{name}": _ALIASES.get((group, name), (group, name)) for group, name in _KNOWN})


def known_player_path(path: str) -> tuple[str, str] | None:
    """The (group, name) of a known command's path after aliasing, None for any other path.

    What :func:`split_player_path` and :func:`known_command` say together, in one lookup for the
    usual spelling; other spellings (a trailing or doubled slash) take the long way.
    """
    found = _PATHS.get(path)
    if found is not None:
        return found
    split = split_player_path(path)
    return split if split is not None and split in _KNOWN else None


def parse_request(method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str],
                  peer: str, *, split: tuple[str, str] | None = None) -> Command:
    """One Companion request as a Command.

    X-Plex-* values come from headers or the query (headers win); their names are matched
    case-insensitively in both. ``commandID`` becomes ``command_id``; everything else in the query
    stays in ``params`` (a playMedia ``token`` included: see :func:`media_request`). ``split``: the
    path's (group, name) when the caller has already split it and checked it is known.
    """
    if method not in _METHODS and method.upper() not in _METHODS:
        raise ProtocolError(f"{method} {path}: method {method!r} is not allowed")
    if split is None:
        split = split_player_path(path)
        if split is None or split not in _KNOWN:
            raise ProtocolError(f"{method} {path}: unknown Companion command")
    group, name = split

    plex: dict[str, str] = {}
    params: dict[str, str] = {}
    command_id: int | None = None
    seen_id = False
    for key, value in query.items():
        if key in params:
            continue  # a repeated parameter counts by its first value (a MultiDict may be passed)
        lower = key.lower()
        if lower == "commandid":
            if not seen_id:
                seen_id = True
                # Plain digits (every controller's) are read here; parse_int judges the rest.
                if _small_uint(value):
                    command_id = int(value)
                elif value.strip() != "":
                    command_id = parse_int(f"{method} {path}", "commandID", value, -1, 2**53)
        elif lower.startswith("x-plex-"):
            plex.setdefault(lower, value)
        else:
            params[key] = value
            bounds = _NUMERIC.get(key)
            if bounds is not None and value != "" and not (_small_uint(value) and bounds[0] <= int(value) <= bounds[1]):
                parse_int(f"{method} {path}", key, value, *bounds)
    # Four names looked up case-insensitively (aiohttp's headers already are a CIMultiDict), not
    # every header lower-cased; a repeated header counts by its first value.
    by_name = headers if type(headers) in _CI_TYPES else CIMultiDict(headers)
    for header, lower in _PLEX_HEADERS:
        found = by_name.get(header)
        if found is not None:
            plex[lower] = found

    get = plex.get
    # tuple.__new__ builds the two NamedTuples as their generated __new__ does, without its Python
    # frame: every request to a face comes through here (bench/face_rps.py).
    controller = _new_tuple(Controller, (get("x-plex-client-identifier", "").strip(), get("x-plex-device-name", ""),
                                         get("x-plex-product", ""), peer))
    target = get("x-plex-target-client-identifier", "").strip() or None
    return _new_tuple(Command, (group, name, MappingProxyType(params), controller, command_id, target))


def _small_uint(value: str) -> bool:
    """Plain ASCII digits, at most 15 of them (below 2**53): int() takes them as they are."""
    return value.isdigit() and value.isascii() and len(value) <= 15


# playMedia parameter -> Alexa's variant (PKC's ALEXA_TO_COMPANION map).
_MEDIA_PARAMS: Mapping[str, str] = MappingProxyType({
    "key": "queryKey",
    "offset": "queryOffset",
    "type": "queryType",
    "containerKey": "queryContainerKey",
    "machineIdentifier": "queryMachineIdentifier",
    "protocol": "queryProtocol",
    "address": "queryAddress",
    "port": "queryPort",
    "token": "queryToken",
    "providerIdentifier": "queryProviderIdentifier",
})
_CONSUMED = frozenset(_MEDIA_PARAMS) | frozenset(_MEDIA_PARAMS.values())


_DECODE_LAYERS = 4


def server_path(where: str, name: str, value: str) -> str:
    """``value`` (a playMedia ``key`` or ``containerKey``) checked to be a path on the server, with
    any token nested in it removed; ProtocolError says what is wrong.

    A player joins the key to the server base it was given, and URL joining turns ``//host/x``,
    ``http://host/x`` or ``/../..`` into another host or path (issue 12 row 7). The decoded forms
    are checked too: a player or proxy that decodes ``%2F%2Fhost`` once more gets ``//host``.
    """
    layer = value
    for depth in range(_DECODE_LAYERS):
        problem = _path_problem(layer, raw=depth == 0)
        if problem:
            raise ProtocolError(f"{where}: {name}: expected a path on the server such as /library/metadata/1, "
                                f"{problem}: {_echo(name, scrub(value))}")
        decoded = unquote(layer)
        if decoded == layer:
            break
        layer = decoded
    else:
        raise ProtocolError(f"{where}: {name}: encoded more than {_DECODE_LAYERS - 1} times: "
                            f"{_echo(name, scrub(value))}")
    return strip_tokens(value)


def _path_problem(text: str, *, raw: bool) -> str:
    path = text.split("?", 1)[0].split("#", 1)[0]
    # The query of a decoded layer may hold spaces (a search title); the path never does.
    if any(c.isspace() or ord(c) < 0x20 or c == "\x7f" for c in (text if raw else path)):
        return "got spaces or control characters"
    if not text.startswith("/"):
        return "got something that does not start with '/' (a scheme or a relative path)"
    if path.startswith("//"):
        return "got a network path ('//host') that names another host"
    if "\\" in path:
        return "got a backslash, which some URL parsers take for '/'"
    if any(segment in (".", "..") for segment in path.split("/")):
        return "got a '.' or '..' segment that escapes the path"
    return ""


def media_request(command: Command) -> MediaRequest:
    """What a playMedia (or mirror/details) asks for; ProtocolError names any bad parameter.

    Plain names win over Alexa's ``query*`` names. Parameters we do not interpret are kept in
    ``extra`` so they can be passed on to a real player; token-like ones never are.
    """
    where = command.path
    params = command.params

    def get(name: str) -> str:
        value = params.get(name)
        if value is None or value == "":
            value = params.get(_MEDIA_PARAMS[name], "")
        return value.strip()

    key = get("key")
    if not key:
        raise ProtocolError(f"{where}: key is required")
    key = server_path(where, "key", key)
    container_key = get("containerKey")
    if container_key:
        container_key = server_path(where, "containerKey", container_key)
    offset_text = get("offset")
    offset = parse_int(where, "offset", offset_text, 0, 10**12) if offset_text else 0
    type_text = get("type") or "video"
    media_type = _MEDIA_TYPES.get(type_text.lower())
    if media_type is None:
        raise ProtocolError(f"{where}: type: expected music, video or photo, got {_echo('type', type_text)}")
    protocol = (get("protocol") or "http").lower()
    if protocol not in ("http", "https"):
        raise ProtocolError(f"{where}: protocol: expected http or https, got {_echo('protocol', protocol)}")
    address = get("address")
    if address and not _ADDRESS_RE.fullmatch(address):
        raise ProtocolError(f"{where}: address: not a host name or IP address: {_echo('address', address)}")
    port_text = get("port")
    port = parse_int(where, "port", port_text, 1, 65535) if port_text else 32400
    token = get("token") or None
    extra = {
        k: strip_tokens(v) for k, v in params.items()
        if k not in _CONSUMED and k.lower() not in SECRET_PARAMS and not k.lower().startswith("x-plex-")
    }
    return MediaRequest(
        key=key,
        offset_ms=offset,
        media_type=media_type,
        container_key=container_key,
        machine_identifier=get("machineIdentifier"),
        protocol=protocol,
        address=address.strip("[]") if address.startswith("[") else address,
        port=port,
        token=token,
        provider_identifier=get("providerIdentifier"),
        extra=MappingProxyType(extra),
    )


# XML 1.0 forbids most control characters even when escaped; replace them rather than emit a
# document the controller cannot parse.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_XML_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'


def xml_safe(value: str) -> str:
    """``value`` with characters XML 1.0 cannot carry replaced by U+FFFD."""
    return _XML_INVALID.sub("\ufffd", value)


def xml_name_ok(name: str) -> bool:
    """True for attribute names we are willing to emit (plain ASCII XML names)."""
    return _XML_NAME.fullmatch(name) is not None


def xml_element(tag: str, attrs: Iterable[tuple[str, str]]) -> ET.Element:
    """An element whose attribute values are XML-safe (order kept as given)."""
    element = ET.Element(tag)
    for name, value in attrs:
        element.set(name, xml_safe(value))
    return element


def xml_document(root: ET.Element) -> bytes:
    """The XML declaration plus ``root``, UTF-8 encoded, ending in a newline."""
    return XML_DECLARATION + ET.tostring(root, encoding="unicode", short_empty_elements=True).encode() + b"\n"


def response_xml(code: int, status: str) -> bytes:
    """``<Response code=".." status=".."/>``: the body of every command answer, success or error."""
    return xml_document(xml_element("Response", [("code", str(code)), ("status", status)]))


@dataclass(frozen=True)
class FaceIdentity:
    """What a face says about itself in /resources, GDM and push headers."""

    machine_identifier: str
    name: str
    product: str
    version: str
    platform: str
    platform_version: str
    device_class: str
    capabilities: tuple[str, ...]
    # The face marks (as in its GDM advert): which bridge serves it, which target it stands for.
    bridge_id: str = ""
    target_id: str = ""

    def push_headers(self) -> dict[str, str]:
        """The X-Plex-* headers a player sends with its own requests (timeline pushes)."""
        return {
            "X-Plex-Client-Identifier": self.machine_identifier,
            "X-Plex-Device-Name": self.name,
            "X-Plex-Product": self.product,
            "X-Plex-Version": self.version,
            "X-Plex-Platform": self.platform,
            "X-Plex-Platform-Version": self.platform_version,
            "X-Plex-Provides": "player",
        }


def resources_xml(identity: FaceIdentity) -> bytes:
    """``GET /resources``: one ``<Player>`` inside a ``<MediaContainer>``."""
    root = ET.Element("MediaContainer")
    root.set("size", "1")
    root.append(xml_element("Player", [
        ("title", identity.name),
        ("machineIdentifier", identity.machine_identifier),
        ("product", identity.product),
        ("version", identity.version),
        ("platform", identity.platform),
        ("platformVersion", identity.platform_version),
        ("protocol", "plex"),
        ("protocolVersion", "1"),
        ("protocolCapabilities", ",".join(identity.capabilities)),
        ("deviceClass", identity.device_class),
        *((("bridgeIdentifier", identity.bridge_id), ("bridgedTarget", identity.target_id))
          if identity.bridge_id else ()),
    ]))
    return xml_document(root)
