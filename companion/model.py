"""Value objects shared by every layer: sightings, targets, servers, controllers, commands, flings.

Frozen dataclasses (Controller and Command, built for every request, are NamedTuples), no I/O.
Tokens are held with ``repr=False`` so they never reach a log line through ``repr``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Literal, NamedTuple
from urllib.parse import unquote

SightingSource = Literal["gdm", "mdns", "config"]


class TargetKind(StrEnum):
    """Which kind of device a target is, and so which adapter carries its commands."""

    COMPANION = "companion"
    CHROMECAST = "chromecast"


_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True)
class FaceMarks:
    """What makes an advert a bridge's face rather than a player: the bridge that serves it and
    the target it stands for. Empty fields: a face all the same (never bridged), but no usable
    claim on a target (unmarked, malformed, or not the identity every bridge derives)."""

    bridge_id: str = ""
    target_id: str = ""

    @property
    def is_claim(self) -> bool:
        """True when it says which bridge holds the face of which target."""
        return bool(self.bridge_id and self.target_id)


@dataclass(frozen=True)
class Sighting:
    """One observation of a player or server on the LAN (a GDM reply, an mDNS record, a config entry)."""

    source: SightingSource
    kind: Literal["companion", "chromecast", "server"]
    ident: str  # Resource-Identifier, Cast uuid, or a config-derived id
    name: str
    address: str  # IP literal the peer answered from / announced
    port: int  # Companion TCP port, Cast TLS port, or server port
    product: str = ""
    version: str = ""
    platform: str = ""
    platform_version: str = ""
    device_class: str = ""
    model: str = ""  # Chromecast TXT md / GDM Model
    capabilities: tuple[str, ...] = ()
    host: str = ""  # servers: "<hash>.plex.direct" from GDM Host
    profile: str | None = None  # config override of the profile id
    interface: str = ""  # interface name or address it was seen on
    face: FaceMarks | None = None  # set when the advert is a bridge's face, not a player


def stable_id(kind: str, ident: str) -> str:
    """A target id that survives restarts: the kind plus a short digest of the peer's own id."""
    digest = hashlib.sha256(f"{kind}\0{ident}".encode()).hexdigest()[:16]
    return f"{kind}-{digest}"


@dataclass(frozen=True)
class Target:
    """A player the bridge can carry commands to (a Companion player or a Chromecast)."""

    id: str
    kind: TargetKind
    name: str
    address: str
    port: int
    source: SightingSource
    ident: str  # the peer's own identifier (GDM Resource-Identifier, Cast uuid)
    product: str = ""
    version: str = ""
    platform: str = ""
    platform_version: str = ""
    device_class: str = ""
    model: str = ""
    capabilities: tuple[str, ...] = ()
    profile: str | None = None  # config override

    @property
    def match_fields(self) -> Mapping[str, str]:
        """The fields profile ``match`` clauses look at."""
        return {
            "source": self.source,
            "kind": self.kind.value,
            "name": self.name,
            "product": self.product,
            "version": self.version,
            "platform": self.platform,
            "platform_version": self.platform_version,
            "device_class": self.device_class,
            "model": self.model,
        }


@dataclass(frozen=True)
class Server:
    """A Plex media server: discovered (GDM, mDNS) or configured (with a token)."""

    id: str  # machineIdentifier when known, else a stable id from the address
    name: str
    address: str  # IP literal
    port: int
    source: SightingSource
    host: str = ""  # "<hash>.plex.direct" when the server offers secure connections
    scheme: Literal["http", "https"] = "http"
    token: str | None = field(default=None, repr=False, compare=False)
    version: str = ""

    @property
    def base_url(self) -> str:
        """``scheme://host:port`` of the server (IPv6 in brackets)."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.scheme}://{host}:{self.port}"


class Controller(NamedTuple):
    """The phone or app that sent a Companion request (identified by X-Plex-* values).

    A NamedTuple, as Command is: every request to a face builds both, and a tuple is built in a
    third of a frozen dataclass's time (bench/face_rps.py).
    """

    client_id: str
    name: str = ""
    product: str = ""
    address: str = ""  # TCP peer address


_NOBODY = Controller(client_id="")


class Command(NamedTuple):
    """One Companion request, parsed: ``/player/<group>/<name>`` plus its parameters.

    ``params`` holds the query without X-Plex-* values (those went into ``controller``) and
    without ``commandID``. A playMedia token stays in ``params`` only until the face hands it
    to the decision; it is never logged (see :func:`redacted`).
    """

    group: str  # playback | timeline | mirror | navigation | application
    name: str  # pause, playMedia, subscribe, ...
    params: Mapping[str, str] = _EMPTY
    controller: Controller = _NOBODY
    command_id: int | None = None
    target_client_id: str | None = None

    @property
    def path(self) -> str:
        """The Companion path of the command, ``/player/<group>/<name>``."""
        return f"/player/{self.group}/{self.name}"

    def __repr__(self) -> str:
        return (f"Command(group={self.group!r}, name={self.name!r}, params={redacted(self.params)!r}, "
                f"controller={self.controller!r}, command_id={self.command_id!r}, "
                f"target_client_id={self.target_client_id!r})")


SECRET_PARAMS = frozenset({"token", "x-plex-token", "querytoken"})
REDACTED = "<redacted>"

# Where a token value starts: after `...token=` in a query string, a form or a log line, also
# percent-encoded (`...token%3D`, as a stream URL nested in another URL's query carries it), so
# X-Plex-Token, token, querytoken and accessToken are all caught; or after an `X-Plex-Token:`
# header (also JSON-quoted). Only that header name takes ':' because a bare "token:" is ordinary
# prose ("exposes the token: the command leg is plain HTTP"). The model's secret parameter names
# are included by name, whatever they end with. No leading [\w-]* before "token": the value is
# all we replace, and such a prefix makes the search quadratic on long words.
_SECRET_KEYS = "|".join(re.escape(name) for name in sorted(SECRET_PARAMS))
_TOKEN_KEY = re.compile(
    rf"""(?i)(?:(?:token|{_SECRET_KEYS})\s*(?:=|%3D)|x-plex-token["']?\s*:)\s*["']?""")
# The value runs to the next separator; percent escapes belong to it except %26, an encoded '&'
# that starts the next parameter.
_TOKEN_VALUE = re.compile(r"""(?i)(?:%(?!26)[0-9a-f]{2}|[^\s&;,"'<>%])+""")


def scrub(text: str) -> str:
    """``text`` with every token-looking parameter value replaced by ``<redacted>``.

    Also replaces lone surrogates (from ``surrogateescape``-decoded bytes), which SQLite cannot
    store as UTF-8. Linear in the length of ``text``.
    """
    # Keys are found first and values measured from each, rather than one key=value pattern:
    # in "token=X-Plex-Token: v" such a pattern would take the second key as the first value
    # and never see v.
    out: list[str] = []
    pos = 0  # end of the text already copied or redacted
    for key in _TOKEN_KEY.finditer(text):
        if key.end() < pos:
            continue  # a key inside a redacted value: its value ends where that one did
        value = _TOKEN_VALUE.match(text, key.end())
        if value is None:
            continue
        if value.start() >= pos:
            out += [text[pos:value.start()], REDACTED]
        pos = value.end()
    if out:
        out.append(text[pos:])
        text = "".join(out)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


# One ``name=value`` pair whose name ends in "token" (X-Plex-Token, token, accessToken...), with the
# separator before it: '?', '&', ';' or their percent-encoded forms (a URL nested in a parameter).
_TOKEN_PAIR = re.compile(
    r"""(?i)(?P<sep>[?&;]|%3F|%26|%3B)?(?:%(?!26|3F|3B)[0-9a-f]{2}|[A-Za-z0-9_.\-])*token\s*(?:=|%3D)(?:%(?!26|3B)[0-9a-f]{2}|[^\s&;,"'<>%#])*""")


def strip_tokens(value: str) -> str:
    """``value`` without any token-named pair nested in it (``/playQueues/1?own=1&X-Plex-Token=t``
    becomes ``/playQueues/1?own=1``), for values that go to a target.

    Unlike :func:`scrub` (for logs) the pair is removed, not masked: a target must receive neither
    the token nor a placeholder it would send on. Whatever the pair pattern cannot take apart
    (an odd encoding of the name) is masked by :func:`scrub` as a last resort.
    """
    out = _strip_pairs(value)
    # A pair encoded twice (``X-Plex-Token%253D...``) shows itself one decoding later; a target
    # that decodes once more would find it, so such a value is taken in its decoded form.
    for _ in range(3):
        decoded = unquote(out)
        if decoded == out or _TOKEN_KEY.search(decoded) is None:
            break
        out = _strip_pairs(decoded)
    return out


def _strip_pairs(value: str) -> str:
    if _TOKEN_KEY.search(value) is None:
        return value

    def cut(match: re.Match[str]) -> str:
        sep = match.group("sep") or ""
        # "/x?token=t&a=1": the '?' must survive for "a=1"; it takes the place of the next '&'.
        return sep if sep.lower() in ("?", "%3f") else ""

    out = _TOKEN_PAIR.sub(cut, value)
    out = re.sub(r"(?i)(\?|%3F)(?:&|%26)", r"\1", out)
    out = re.sub(r"(?i)(?:\?|%3F|&|%26)$", "", out)
    if _TOKEN_KEY.search(out) is not None:
        out = scrub(out)
    return out


def clean_params(params: Mapping[str, str]) -> dict[str, str]:
    """Command parameters as they may go to a target: no token parameter, no token nested in a value."""
    return {k: strip_tokens(v) for k, v in params.items() if k.lower() not in SECRET_PARAMS}


def redacted(params: Mapping[str, str]) -> dict[str, str]:
    """A copy of request parameters that is safe to log: token parameters masked, and tokens
    nested in other values (``containerKey=/playQueues/1?X-Plex-Token=...``) scrubbed."""
    return {k: (REDACTED if k.lower() in SECRET_PARAMS else scrub(v)) for k, v in params.items()}


@dataclass(frozen=True)
class MediaRequest:
    """What a playMedia asks for: which item on which server, with which token."""

    key: str
    offset_ms: int = 0
    media_type: str = "video"
    container_key: str = ""
    machine_identifier: str = ""
    protocol: str = "http"
    address: str = ""
    port: int = 32400
    token: str | None = field(default=None, repr=False, compare=False)
    provider_identifier: str = ""
    extra: Mapping[str, str] = field(default_factory=lambda: _EMPTY)

    def to_params(self) -> dict[str, str]:
        """The Companion query parameters that carry this request to a real player."""
        out: dict[str, str] = dict(self.extra)
        out.update({
            "key": self.key,
            "offset": str(self.offset_ms),
            "type": self.media_type,
            "machineIdentifier": self.machine_identifier,
            "protocol": self.protocol,
            "address": self.address,
            "port": str(self.port),
        })
        if self.container_key:
            out["containerKey"] = self.container_key
        if self.provider_identifier:
            out["providerIdentifier"] = self.provider_identifier
        if self.token:
            out["token"] = self.token
        return out
