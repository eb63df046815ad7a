"""The server's companion proxy (sans-I/O): poll parameters, the commands a poll hands over, answers.

A player that polls ``GET /player/proxy/poll`` on a Plex Media Server is handed the commands that
controllers sent to the server for it (``X-Plex-Target-Client-Identifier``), as
``<MediaContainer><Command path=".." commandID=".." clientIdentifier=".." queryX=".."/></MediaContainer>``;
it answers each with ``POST /player/proxy/response?commandID=N`` and reports its timeline with
``POST /player/proxy/timeline``. Sources for every call: docs/companion-proxy.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import parse_qsl, urlsplit

from companion.errors import ProtocolError
from companion.model import SECRET_PARAMS
from companion.proto.safexml import parse_xml

MAX_POLL_BYTES = 256 * 1024
MAX_COMMANDS_PER_POLL = 32
_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True)
class ProxyCommand:
    """One command a poll handed over: the Companion path and query, who sent it, its commandID."""

    path: str  # /player/<group>/<name>, without the query
    query: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    command_id: str = ""  # the server's id for this hand-over, echoed in /player/proxy/response
    client_id: str = ""  # the controller's X-Plex-Client-Identifier
    device_name: str = ""

    def __repr__(self) -> str:
        shown = {k: ("<redacted>" if k.lower() in SECRET_PARAMS else v) for k, v in self.query.items()}
        return f"ProxyCommand({self.path!r}, {shown!r}, command_id={self.command_id!r}, client={self.client_id!r})"


def poll_params(*, device_class: str, capabilities: tuple[str, ...]) -> dict[str, str]:
    """The query of one poll: ``timeout=1`` asks the server to hold it until a command comes (PKC)."""
    return {"timeout": "1", "deviceClass": device_class, "protocolVersion": "1",
            "protocolCapabilities": ",".join(capabilities)}


def _unprefixed(name: str) -> str | None:
    # queryOffset -> offset, queryX -> x: the command's own parameters ride as query* attributes.
    if name.startswith("query") and len(name) > 5:
        rest = name[5:]
        return rest[0].lower() + rest[1:]
    return None


def parse_poll(body: bytes) -> list[ProxyCommand]:
    """The commands in one poll answer (an empty body: the poll was held and nothing came).

    Parameters come from the ``path`` attribute's own query string first, then from the
    ``query*`` attributes (which never override it). Refuses DTDs and entities, oversized bodies,
    more than MAX_COMMANDS_PER_POLL commands and commands without a ``/player/`` path.
    """
    where = "proxy poll"
    if not body.strip():
        return []
    if len(body) > MAX_POLL_BYTES:
        raise ProtocolError(f"{where}: {len(body)} bytes exceeds the {MAX_POLL_BYTES}-byte limit")
    root = parse_xml(body, where)
    if root.tag != "MediaContainer":
        raise ProtocolError(f"{where}: root element is <{str(root.tag)[:32]}>, expected <MediaContainer>")
    elements = root.findall("Command")
    if len(elements) > MAX_COMMANDS_PER_POLL:
        raise ProtocolError(f"{where}: {len(elements)} commands in one answer (at most {MAX_COMMANDS_PER_POLL})")
    commands: list[ProxyCommand] = []
    for index, element in enumerate(elements):
        raw = element.get("path", "")
        parts = urlsplit(raw)
        if not parts.path.startswith("/player/") or parts.scheme or parts.netloc:
            raise ProtocolError(f"{where}: Command #{index + 1}: path must be /player/..., got {raw[:64]!r}")
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        for name, value in element.attrib.items():
            plain = _unprefixed(name)
            if plain is not None:
                query.setdefault(plain, value)
        commands.append(ProxyCommand(path=parts.path, query=MappingProxyType(query),
                                     command_id=element.get("commandID", "").strip(),
                                     client_id=element.get("clientIdentifier", "").strip(),
                                     device_name=element.get("deviceName", "")))
    return commands


def command_request_values(command: ProxyCommand) -> tuple[dict[str, str], dict[str, str]]:
    """(query, headers) that make :func:`companion.proto.companion.parse_request` see the command
    as the controller sent it to the server: its parameters, commandID and X-Plex-Client-Identifier."""
    # The hand-over's commandID is the controller's own (PKC echoes it in the response and in the
    # timeline): it stands for the controller's commandID unless the path carries one.
    query = dict(command.query)
    if not any(k.lower() == "commandid" for k in query) and command.command_id:
        query["commandID"] = command.command_id
    headers = {"X-Plex-Client-Identifier": command.client_id}
    if command.device_name:
        headers["X-Plex-Device-Name"] = command.device_name
    return query, headers
