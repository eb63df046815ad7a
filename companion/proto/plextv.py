"""plex.tv wire shapes, without I/O: identity headers, PINs, the user, the devices and resources lists.

Which source shows each shape is in docs/plextv.md. Every parser takes bytes and returns frozen
dataclasses; a token found in a document is kept only where the caller needs it (a claimed PIN),
and never in a repr.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from urllib.parse import quote

from companion.errors import ProtocolError
from companion.proto.safexml import parse_xml

PLAYER_PROVIDES = "client,player,pubsub-player"
_MAX_DOCUMENT = 4 * 1024 * 1024  # the devices list of a big account is well under this


_HEADER_MAX = 200


def header_value(text: str) -> str:
    """A name fit for an HTTP header: a face name comes from the LAN, where anything may be announced."""
    cleaned = "".join(c if c.isprintable() else " " for c in text).strip()
    return cleaned[:_HEADER_MAX]


@dataclass(frozen=True)
class Identity:
    """Who is calling plex.tv: the X-Plex-* headers every request carries (no token)."""

    client_id: str
    name: str
    product: str
    version: str
    platform: str = "Linux"
    platform_version: str = ""
    device: str = "companion-bridge"
    provides: str = ""

    def headers(self) -> dict[str, str]:
        """The identity headers; ``provides`` only when this identity is a player."""
        out = {
            "X-Plex-Client-Identifier": header_value(self.client_id),
            "X-Plex-Product": header_value(self.product),
            "X-Plex-Version": header_value(self.version),
            "X-Plex-Platform": header_value(self.platform),
            "X-Plex-Platform-Version": header_value(self.platform_version),
            "X-Plex-Device": header_value(self.device),
            "X-Plex-Device-Name": header_value(self.name),
            "X-Plex-Model": "bridge",
        }
        if self.provides:
            out["X-Plex-Provides"] = self.provides
        return out


@dataclass(frozen=True)
class Pin:
    """A link PIN: its id (to poll), the code a person types at plex.tv/link, and once claimed a token."""

    id: int
    code: str
    expires_in: int | None = None
    auth_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Account:
    """The linked account as the bridge shows it: a name, never the token."""

    id: int
    uuid: str
    username: str
    title: str

    @property
    def name(self) -> str:
        """The account's name to show: its title, else its username, else its id."""
        return self.title or self.username or f"account {self.id}"


@dataclass(frozen=True)
class Device:
    """One entry of the account's devices list (the device's own token is not kept)."""

    id: str
    client_identifier: str
    name: str
    product: str
    provides: tuple[str, ...]
    connections: tuple[str, ...]


@dataclass(frozen=True)
class Resource:
    """One entry of the account's resources list: what the Plex apps read to list players."""

    client_identifier: str
    name: str
    provides: tuple[str, ...]
    presence: bool
    connections: tuple[str, ...]


def _json(body: bytes, what: str) -> dict[str, object]:
    if len(body) > _MAX_DOCUMENT:
        raise ProtocolError(f"plex.tv {what}: answer too large ({len(body)} bytes)")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"plex.tv {what}: not JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ProtocolError(f"plex.tv {what}: expected a JSON object")
    return data


def _xml(body: bytes, what: str) -> ET.Element:
    if len(body) > _MAX_DOCUMENT:
        raise ProtocolError(f"plex.tv {what}: answer too large ({len(body)} bytes)")
    return parse_xml(body, f"plex.tv {what}")


def _int(value: object, what: str) -> int:
    try:
        return int(str(value))
    except ValueError as exc:
        raise ProtocolError(f"plex.tv {what}: expected a number, got {str(value)[:40]!r}") from exc


def parse_pin(body: bytes) -> Pin:
    """``POST/GET /api/v2/pins[/<id>]`` answered as JSON: id, code, expiresIn, authToken (null until claimed)."""
    data = _json(body, "PIN")
    code = data.get("code")
    if "id" not in data or not isinstance(code, str) or not code:
        raise ProtocolError("plex.tv PIN: id or code missing")
    token = data.get("authToken")
    expires = data.get("expiresIn")
    return Pin(id=_int(data["id"], "PIN id"), code=code,
               expires_in=_int(expires, "PIN expiresIn") if expires is not None else None,
               auth_token=token if isinstance(token, str) and token else None)


def parse_user(body: bytes) -> Account:
    """``GET /api/v2/user`` answered as JSON: the account's id, uuid, username and title."""
    data = _json(body, "user")
    if "id" not in data:
        raise ProtocolError("plex.tv user: id missing")
    return Account(id=_int(data["id"], "user id"), uuid=str(data.get("uuid") or ""),
                   username=str(data.get("username") or ""), title=str(data.get("title") or ""))


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (value or "").split(",") if p.strip())


def parse_devices(body: bytes) -> list[Device]:
    """``GET /devices.xml``: ``<MediaContainer><Device id clientIdentifier ...><Connection uri/>``."""
    root = _xml(body, "devices")
    devices = []
    for elem in root.iter("Device"):
        ident = elem.get("clientIdentifier")
        if not ident:
            continue
        devices.append(Device(
            id=elem.get("id") or "", client_identifier=ident, name=elem.get("name") or "",
            product=elem.get("product") or "", provides=_split(elem.get("provides")),
            connections=tuple(c.get("uri") or "" for c in elem.iter("Connection") if c.get("uri"))))
    return devices


def parse_resources(body: bytes) -> list[Resource]:
    """``GET /api/v2/resources`` as XML: ``<resources><resource ...><connections><connection uri/>``."""
    root = _xml(body, "resources")
    out = []
    for elem in root.iter("resource"):
        ident = elem.get("clientIdentifier")
        if not ident:
            continue
        out.append(Resource(
            client_identifier=ident, name=elem.get("name") or "", provides=_split(elem.get("provides")),
            presence=elem.get("presence") in ("1", "true"),
            connections=tuple(c.get("uri") or "" for c in elem.iter("connection") if c.get("uri"))))
    return out


def connection_query(uris: tuple[str, ...] | list[str]) -> str:
    """The query of the connection PUT: ``Connection[][uri]=<uri>`` per URI, brackets percent-encoded."""
    return "&".join(f"Connection%5B%5D%5Buri%5D={quote(uri, safe='')}" for uri in uris)
