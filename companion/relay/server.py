"""The secure relay: the bridge fetches from the Plex server over verified TLS and serves one target.

For a target that cannot verify the server's plex.direct chain (SECURITY.md section 3, mode
``relay``) the bridge hands it ``http://<bridge-ip>:<relay-port>/<capability>`` as its stream base.
This module owns that HTTP surface and everything behind it:

* **Grants.** A capability (256 random bits) names one target address and one upstream server.
  Only that target's TCP peer address may use it; it lapses after ``idle_timeout`` without use;
  a new fling to the same target and server replaces it; a stopped face revokes it.
* **Path allow-list.** Only the Plex API a player needs for playback passes (``ALLOWED``); the
  rest of the server (library browsing, accounts, preferences, tokens) stays out of reach.
* **The token** (``X-Plex-Token``) is added upstream only. Whatever token-like value the target
  sends is dropped, and every byte going back is scrubbed of the token (text bodies lose it,
  media keeps its length with a same-length filler), so the target never holds it: the last hop
  is plaintext on the LAN, which is exactly why the token must not travel on it.
* **Upstream TLS** is verified by the bridge itself for the exact plex.direct name: against the
  certifi roots plus configured extra roots, with the intermediates the server sent plus missing
  issuers fetched through AIA "CA Issuers" (http only, size-capped, cached on disk in
  ``state_dir/aia``), through :func:`companion.security.trust.verify_chain`. The verified leaf is
  then pinned (aiohttp checks the pin after the handshake, before a request byte is written), and
  a new leaf is verified afresh before the token goes to it.
* **Rewriting.** Absolute URLs to the upstream server in XML/JSON/HLS/DASH bodies are pointed at
  the relay; relative URLs already resolve against the relay path.

Media is streamed chunk by chunk with back-pressure (``StreamResponse.write`` waits for the
socket), never buffered whole. Logs name a grant by a short capability prefix, never in full, and
never the token.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import ipaddress
import logging
import re
import secrets
import ssl
import time
import warnings
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import aiohttp
import certifi
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import AuthorityInformationAccessOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from multidict import CIMultiDict
from yarl import URL

from companion.connections import ConnectionGate, GatedTCPSite
from companion.errors import ProtocolError, StateError, TrustError
from companion.faces.app import IDLE_TIMEOUT, QuietServerLog
from companion.faces.middleware import host_allowed
from companion.limits import ThrottledLog
from companion.model import SECRET_PARAMS
from companion.relay.pump import DownstreamGone, PinMismatch, UpstreamError, UpstreamStream
from companion.relay.scope import GrantScope
from companion.security.facts import ServerFacts
from companion.security.probe import _chain_der as sent_chain_der
from companion.security.profiles import TlsCaps
from companion.security.trust import Reason, verify_chain

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
TEXT_BODY_CAP = 32 * 1024 * 1024  # a play queue of 200 items is well under 1 MiB
REQUEST_BODY_CAP = 64 * 1024  # timeline/scrobble/playQueue PUT bodies are tiny
AIA_SIZE_CAP = 64 * 1024  # one DER certificate is ~1.5 KiB; a PKCS#7 bundle a few
AIA_DEPTH = 3
VERIFY_TTL = 3600.0  # re-verify a pinned upstream at least hourly (expiry, revocation of roots)
REVOKED_MEMORY = 512  # how many revoked capabilities keep a specific denial reason
_SHOWN_CAP = 6

# The bridge's own TLS limits for the upstream (it is a modern client: any AIA-fetched issuer may
# complete the path; RSA below 2048 is refused as browsers do).
_BRIDGE_TLS = TlsCaps(min_version="1.2", max_version="1.3", rsa_min_bits=2048, ecdsa=True,
                      requires_sha2=True, follows_aia=True)

# Text responses are read whole, scrubbed and rewritten; everything else streams.
_TEXT_TYPES = frozenset({
    "application/xml", "application/json", "application/javascript", "application/vnd.apple.mpegurl",
    "application/x-mpegurl", "audio/mpegurl", "audio/x-mpegurl", "application/dash+xml",
})
_REQUEST_HEADERS = frozenset({
    "accept", "accept-language", "range", "if-range", "if-none-match", "if-modified-since",
    "content-type", "user-agent",
})
_RESPONSE_HEADERS = frozenset({
    "content-type", "content-range", "accept-ranges", "last-modified", "etag", "cache-control",
    "expires", "content-disposition", "content-language", "x-plex-protocol",
})


@dataclass(frozen=True)
class PathRule:
    """One allowed Plex API area: a path (exact, or a prefix that must have something after it),
    the methods it may be used with, and where the need for it was seen."""

    path: str
    methods: frozenset[str]
    prefix: bool = True
    needs_token: bool = True
    shape: str = ""  # a regular expression the whole path must match (then it decides, under ``path``)
    upstream: str = ""  # the path asked for upstream instead of the requested one
    source: str = ""  # the evidence (docs/relay-allow-list.md lists every rule with it)

    def matches(self, path: str) -> bool:
        if self.shape:
            return path.startswith(self.path) and _shape(self.shape).fullmatch(path) is not None
        if self.prefix:
            return path.startswith(self.path) and len(path) > len(self.path)
        return path == self.path


_shape = functools.cache(re.compile)
_READ = frozenset({"GET", "HEAD"})
_SHIM = "plex-mpv-shim 1.11"
_PMS_API = "PMS API (developer.plex.tv/pms)"
_CAST = "Plex Cast receiver, from the LOAD it gets (pychromecast controllers/plex.py)"
_PHT = "Plex Home Theater PlexMediaServerClient.cpp"
_UNICORN = "UnicornTranscoder routes/routes.js (a reimplementation of the PMS transcoder)"


def _transcoder(media: str) -> tuple[PathRule, ...]:
    """The universal transcoder of one media kind: decide, start, segments, subtitles, ping, stop."""
    base = f"/{media}/:/transcode/universal/"
    return (
        PathRule(base + "decision", _READ, prefix=False,
                 source=f"{_SHIM} media.py get_decision (recorded); {_PMS_API}"),
        # start (progressive), start.m3u8, start.mpd, start.mkv...: the stream or its playlist
        PathRule(base + "start", _READ, shape=re.escape(base) + r"start(\.[A-Za-z0-9]{1,8})?",
                 source=f"{_SHIM} media.py get_playback_url; {_PMS_API}; {_UNICORN}; {_CAST}"),
        PathRule(base + "session/", _READ, source=f"HLS and DASH playlists and segments: {_UNICORN}"),
        PathRule(base + "dash/", _READ, source=f"DASH segments of older servers: {_UNICORN}"),
        PathRule(base + "subtitles", _READ, prefix=False, source=f"{_PMS_API}; {_UNICORN}"),
        PathRule(base + "ping", _READ, prefix=False, source=f"{_PHT} SendTranscoderPing"),
        PathRule(base + "stop", _READ, prefix=False,
                 source=f"{_SHIM} media.py terminate_transcode; {_PHT} StopTranscodeSession"),
    )


# What a player needs to play one fling from one server, and nothing else: what plex-mpv-shim
# requests (recorded through this relay by tests/functional/test_real_player.py), what a Plex Cast
# receiver is handed (research/companion-and-gdm.md section 5), and what Plex clients are documented
# to fetch. docs/relay-allow-list.md is the table with the sources. Not here: /library/sections
# (browsing the whole library), POST /playQueues (creating queues is the controller's job),
# /:/prefs, /accounts, /security/token, /myplex, /system, /butler, /status/sessions,
# /transcode/sessions (another user's sessions), /:/rate, DELETE and PUT on metadata.
ALLOWED: tuple[PathRule, ...] = (
    # The server root. plex-mpv-shim GETs it for the machineIdentifier in every timeline it sends
    # (media.py get_machine_identifier; recorded: GET / after each playMedia), and a 403 here made
    # its playMedia fail (issue 11). With the owner's token PMS lists account facts there
    # (myPlexUsername, subscription, features) that a player has no use for, and without a token
    # PMS answers 401. So the relay answers it from /identity, fetched WITHOUT the token (least
    # privilege): machineIdentifier, version and claimed are what players read from the root.
    PathRule("/", _READ, prefix=False, needs_token=False, upstream="/identity",
             source=f"{_SHIM} media.py get_machine_identifier (recorded); {_PHT} GetItemURL; {_PMS_API}"),
    # PMS answers /identity without a token and players use it to check they reached the right
    # server; it is forwarded WITHOUT the token (least privilege), so it reveals nothing new.
    PathRule("/identity", _READ, prefix=False, needs_token=False,
             source=f"{_PMS_API}; research/companion-and-gdm.md section 2.7"),
    # The server's providers and their features (library, transcoder, timeline keys).
    PathRule("/media/providers", _READ, prefix=False, source=f"{_PMS_API}: GET /media/providers"),
    # The item, its children (allLeaves for a TV show without a queue), art and thumbs.
    PathRule("/library/metadata/", _READ,
             source=f"{_SHIM} media.py Media (recorded); {_PMS_API}; {_CAST} (contentId)"),
    # Direct play: the media file, with Range.
    PathRule("/library/parts/", _READ, source=f"{_SHIM} via libmpv (recorded, Range); {_PMS_API}"),
    # Choosing the audio or subtitle stream of the part being played.
    PathRule("/library/parts/", frozenset({"PUT"}), shape=r"/library/parts/[0-9]+",
             source=f"{_SHIM} media.py set_streams; {_PHT} SelectStream; {_PMS_API}"),
    # Sidecar subtitles of the item being played.
    PathRule("/library/streams/", _READ,
             source=f"{_SHIM} media.py get_external_sub via libmpv (recorded); {_PMS_API}"),
    # The flung play queue: read, page, refresh, shuffle (not create: that is POST /playQueues).
    PathRule("/playQueues/", frozenset({"GET", "HEAD", "PUT"}),
             source=f"{_SHIM} media.py upd_play_queue (recorded); {_PMS_API}; {_CAST} (containerKey)"),
    *_transcoder("video"),
    *_transcoder("music"),
    *_transcoder("audio"),
    # Posters and art, scaled by the server (the url/path source is checked by filter_query).
    PathRule("/photo/:/transcode", _READ, prefix=False, source=f"{_PMS_API}; {_CAST} (artwork)"),
    # Reports: now playing and resume position (GET with a query, or POST), watched state.
    PathRule("/:/timeline", frozenset({"GET", "POST"}), prefix=False,
             source=f"{_SHIM} timeline.py (recorded, GET); {_PHT} SendServerTimeline (GET); {_PMS_API} (POST)"),
    PathRule("/:/scrobble", frozenset({"GET", "PUT"}), prefix=False,
             source=f"{_SHIM} media.py set_played (GET); {_PHT} SetItemWatchStatus (GET); {_PMS_API} (PUT)"),
    PathRule("/:/unscrobble", frozenset({"GET", "PUT"}), prefix=False,
             source=f"{_SHIM} media.py set_played (GET); {_PHT} SetItemWatchStatus (GET); {_PMS_API} (PUT)"),
    PathRule("/:/progress", frozenset({"GET"}), prefix=False,
             source=f"{_SHIM} media.py update_position; python-plexapi base.py updateProgress"),
)
REFUSED_PATHS_CAP = 512  # distinct refused paths remembered (and logged once each)
# Direct-play media bodies go through companion.relay.pump (a reader thread) rather than aiohttp.
_PUMPED_PREFIX = "/library/parts/"
# Query parameters the transcoders read as a source; only sources on the same server may pass,
# or the relay would let the target make the server fetch arbitrary URLs with the user's token.
_SOURCE_PARAMS = frozenset({"url", "path"})
_LOOPBACK_SOURCE = re.compile(r"https?://(127\.0\.0\.1|localhost|\[::1\])(:\d+)?/", re.IGNORECASE)


# --- grants -------------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class Grant:
    """Permission for one target address to fetch playback paths of one server through the relay."""

    capability: str
    target_address: str
    server_id: str
    upstream_host: str  # the plex.direct name (or IP) the chain is verified for and SNI names
    upstream_address: str  # the IP actually connected to (no DNS)
    upstream_port: int
    token: str = field(repr=False)
    expires_at: float  # monotonic, as of the grant; each use pushes it by idle_timeout
    idle_timeout: float

    @property
    def label(self) -> str:
        """A loggable name: a short capability prefix, never the whole capability."""
        return self.capability[:_SHOWN_CAP] + "..."

    def __repr__(self) -> str:
        return (f"Grant({self.label}, target={self.target_address}, server={self.server_id}, "
                f"upstream={self.upstream_host}@{self.upstream_address}:{self.upstream_port})")


@dataclass
class RelayCounters:
    """Plain counters for /metrics; the admin side reads them, the relay only increments."""

    requests: int = 0
    bytes_relayed: int = 0
    chunks_relayed: int = 0
    denials: dict[str, int] = field(default_factory=dict)
    upstream_failures: dict[str, int] = field(default_factory=dict)
    verifications: int = 0
    aia_fetches: int = 0
    refused_paths: dict[str, int] = field(default_factory=dict)  # "GET /path" -> refusals

    def deny(self, reason: str) -> None:
        self.denials[reason] = self.denials.get(reason, 0) + 1

    def fail(self, reason: str) -> None:
        self.upstream_failures[reason] = self.upstream_failures.get(reason, 0) + 1

    def refuse_path(self, name: str) -> bool:
        """Count a refused path; True the first time it is seen (log it then, and only then)."""
        if name not in self.refused_paths and len(self.refused_paths) >= REFUSED_PATHS_CAP:
            name = "(other paths)"  # bounded: a scanner must not grow this without end
        first = name not in self.refused_paths
        self.refused_paths[name] = self.refused_paths.get(name, 0) + 1
        return first and name != "(other paths)"


@dataclass
class _Live:
    grant: Grant
    last_used: float
    rewriter: _Rewriter
    scope: GrantScope | None = None  # None: the whole allow-list (no fling named an item)


class UpstreamRefused(TrustError):
    """The relay will not talk to the upstream: its chain failed verification, or it is unreachable."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


def _key(capability: str) -> bytes:
    # Look grants up by digest so the lookup's timing says nothing about the capability's bytes.
    return hashlib.sha256(capability.encode("utf-8", "surrogateescape")).digest()


def _ip(text: str, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        ip = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        raise ProtocolError(f"relay grant: {what} {text[:80]!r} is not an IP address") from None
    return _unmapped(ip)


def _unmapped(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # a dual-stack socket shows IPv4 peers as ::ffff:a.b.c.d
    return ip


def _host_literal(address: str) -> str:
    return f"[{address}]" if ":" in address else address


# --- pure helpers: token scrubbing, URL rewriting, path checks -----------------------------------


class TokenScrubber:
    """Replaces secrets in a byte stream with same-length filler, across chunk boundaries.

    Same length so that Content-Length and byte ranges of media stay true. The last
    ``longest - 1`` bytes are held back until the next chunk shows whether a secret straddles.
    The common case (no secret near) costs one search and one copy per chunk.
    """

    def __init__(self, needles: Collection[bytes]) -> None:
        self._needles = tuple(sorted({n for n in needles if n}, key=len, reverse=True))
        self._hold = max((len(n) for n in self._needles), default=1) - 1
        self._carry = b""

    def _replace(self, data: bytes) -> bytes:
        for needle in self._needles:
            if needle in data:
                data = data.replace(needle, b"x" * len(needle))
        return data

    def _found(self, data: bytes) -> bool:
        return any(needle in data for needle in self._needles)

    def feed(self, chunk: bytes) -> list[bytes | bytearray]:
        """What may be sent now, in order (possibly nothing)."""
        hold = self._hold
        if hold == 0:
            return [self._replace(chunk)]
        # A secret straddling the held bytes and this chunk ends within the chunk's first
        # ``hold`` bytes, so this small window and the chunk itself cover every occurrence.
        if len(chunk) > hold and not self._found(chunk) and not self._found(self._carry + chunk[:hold]):
            # One buffer, one copy: a separate send of the few held bytes would cost a syscall and
            # a tiny TCP segment per chunk, more than copying the chunk once.
            out = bytearray(self._carry)
            out += memoryview(chunk)[:-hold]
            self._carry = chunk[-hold:]
            return [out]
        data = self._replace(self._carry + chunk)
        self._carry = data[-hold:]
        return [data[:-hold]] if len(data) > hold else []

    def finish(self) -> bytes:
        rest, self._carry = self._carry, b""
        return rest


def token_needles(token: str) -> tuple[bytes, ...]:
    """The token as it may appear in a body: raw, percent-encoded, JSON-escaped."""
    forms = {token, quote(token, safe=""), token.replace("/", "\\/")}
    return tuple(f.encode() for f in forms)


class _Rewriter:
    """Points absolute URLs of one upstream server at the relay, in bytes (XML, JSON, playlists)."""

    def __init__(self, grant: Grant) -> None:
        hosts = {grant.upstream_host.lower(), grant.upstream_address.lower(),
                 _host_literal(grant.upstream_address).lower()}
        names = b"|".join(re.escape(h.encode()) for h in sorted(hosts, key=len, reverse=True))
        # JSON may escape slashes (https:\/\/host); both spellings point at the same server.
        self._pattern = re.compile(
            rb"https?:(//|\\/\\/)(?:" + names + rb"):" + str(grant.upstream_port).encode() + rb"(?![0-9])",
            re.IGNORECASE,
        )

    def rewrite(self, body: bytes, base: str) -> bytes:
        plain = base.encode()
        escaped = base.replace("/", "\\/").encode()
        return self._pattern.sub(lambda m: escaped if m.group(1) != b"//" else plain, body)


def check_path(raw_path: str, method: str) -> tuple[PathRule | None, str]:
    """The rule allowing ``method`` on ``raw_path`` (the Plex path, still percent-encoded), or why not."""
    segments = raw_path.split("/")
    for segment in segments[1:]:
        decoded = unquote(segment)
        if decoded in (".", "..") or "/" in decoded or "\\" in decoded or "\x00" in decoded:
            return None, f"the path {raw_path[:120]!r} has a dot or encoded-slash segment"
    path = unquote(raw_path)
    matching = [rule for rule in ALLOWED if rule.matches(path)]
    for rule in matching:
        if method in rule.methods:
            return rule, ""
    if matching:
        return None, f"{method} is not allowed on {matching[0].path} through the relay"
    return None, (f"{path[:120]!r} is not a playback path; the relay only passes "
                  + ", ".join(sorted({r.path + ("..." if r.prefix else "") for r in ALLOWED})))


def refused_path_name(method: str, raw_path: str) -> str:
    """How a refused request is named in the log and the counters: numbers become ``{n}``, so one
    missing rule shows up once, not once per item id (the path carries no query, so no token)."""
    path = unquote(raw_path)[:120]
    path = re.sub(r"(?<=/)[0-9]+(?=/|$|\.)", "{n}", path)
    return f"{method} " + "".join(c if c.isprintable() else "?" for c in path)


def filter_query(raw_query: str) -> tuple[str, str]:
    """The query without token-like parameters (kept percent-encoded as sent), or ('', why-not)."""
    kept: list[str] = []
    for pair in raw_query.split("&") if raw_query else ():
        name, _, value = pair.partition("=")
        lowered = unquote(name.replace("+", " ")).lower()
        if lowered in SECRET_PARAMS:
            continue
        if lowered in _SOURCE_PARAMS:
            source = unquote(value.replace("+", " "))
            on_server = (source.startswith("/") and not source.startswith("//")) or _LOOPBACK_SOURCE.match(source)
            if not on_server:
                return "", f"the {name!r} parameter must name a path on this server, not {source[:80]!r}"
        kept.append(pair)
    return "&".join(kept), ""


def _is_text(content_type: str) -> bool:
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind.startswith("text/") or kind in _TEXT_TYPES or kind.endswith(("+xml", "+json"))


def body_needles(content_type: str, token: str) -> tuple[bytes, ...]:
    """What a streamed body is scrubbed of: nothing for media, the token's forms for anything else.

    Video, audio and image bodies are the bytes of a library file or of the transcoder's output:
    the server never writes the token into them, so searching every byte of a film for it only
    costs CPU (a third of the relay's time per GiB in ``bench/relay_throughput.py``). The
    playlists among those types (``audio/mpegurl``, ...) are text and are read whole and scrubbed
    elsewhere; any other type that streams (``application/octet-stream``, subtitles) is scrubbed.
    """
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind.startswith(("video/", "audio/", "image/")) and not _is_text(kind):
        return ()
    return token_needles(token)


def _ca_issuer_urls(cert: x509.Certificate) -> list[str]:
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except (x509.ExtensionNotFound, ValueError):
        return []
    urls = []
    for desc in aia:
        if (desc.access_method == AuthorityInformationAccessOID.CA_ISSUERS
                and isinstance(desc.access_location, x509.UniformResourceIdentifier)
                and desc.access_location.value.lower().startswith("http://")):
            urls.append(desc.access_location.value)
    return urls


def _parse_issuer(data: bytes, child: x509.Certificate) -> x509.Certificate | None:
    """DER, PEM or PKCS#7 (``.p7c``): the certificate whose subject is ``child``'s issuer."""
    certs: list[x509.Certificate] = []
    for loader in (lambda d: [x509.load_der_x509_certificate(d)], x509.load_pem_x509_certificates,
                   pkcs7.load_der_pkcs7_certificates, pkcs7.load_pem_pkcs7_certificates):
        try:
            certs = list(loader(data))
        except ValueError:
            continue
        if certs:
            break
    matching = [c for c in certs if c.subject == child.issuer]
    return matching[0] if matching else None


# --- the relay ----------------------------------------------------------------------------------


@dataclass
class _Pin:
    fingerprint: aiohttp.Fingerprint
    until: float  # monotonic: re-verify after this


class Relay:
    """The relay's HTTP server, its grants, and its verified connections to Plex servers."""

    def __init__(
        self,
        *,
        bind: str,
        port: int,
        state_dir: Path,
        extra_roots: Sequence[x509.Certificate] = (),
        idle_timeout: float = 6 * 3600.0,
        clock: Callable[[], float] = time.monotonic,
        aia_timeout: float = 5.0,
        aia_hosts: Collection[str] | None = None,
        allowed_hosts: Collection[str] = (),
        upstream_timeout: float = 30.0,
        gate: ConnectionGate | None = None,
    ) -> None:
        """``aia_hosts``: the only hosts AIA issuers may be fetched from; None allows any name but
        no non-global IP literal (a server's certificate must not steer the bridge at the LAN).
        ``allowed_hosts``: names besides IP literals and localhost accepted in the Host header."""
        self._bind = bind
        self._gate = gate
        self._refusals = ThrottledLog(log)  # refused requests: one line a minute per reason, with counts
        self._requested_port = port
        self._state_dir = state_dir
        self._idle_timeout = idle_timeout
        self._clock = clock
        self._aia_timeout = aia_timeout
        self._aia_hosts = None if aia_hosts is None else frozenset(h.lower() for h in aia_hosts)
        self._allowed_hosts = frozenset(allowed_hosts)
        self._upstream_timeout = upstream_timeout
        self._roots = [*_certifi_roots(), *extra_roots]
        self._store = Store(self._roots)
        self._grants: dict[bytes, _Live] = {}
        self._revoked: OrderedDict[bytes, str] = OrderedDict()
        self._pins: dict[tuple[str, int, str], _Pin] = {}
        self._pin_locks: dict[tuple[str, int, str], asyncio.Lock] = {}
        self._issuers: dict[str, x509.Certificate] = {}
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._port = 0
        self.counters = RelayCounters()

    # -- lifecycle --

    async def start(self) -> None:
        if self._runner is not None:
            return
        app = web.Application(client_max_size=REQUEST_BODY_CAP)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # No access log: request lines carry capabilities. Streams are cut on shutdown quickly.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0, handle_signals=False,
                               keepalive_timeout=IDLE_TIMEOUT,
                               logger=QuietServerLog(logging.getLogger("companion.relay.http"), {}))
        await runner.setup()
        site = GatedTCPSite(runner, self._bind, self._requested_port, gate=self._gate)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise StateError(f"relay cannot listen on {self._bind}:{self._requested_port}: "
                             f"{exc.strerror or exc}") from None
        self._runner = runner
        self._port = int(runner.addresses[0][1]) if runner.addresses else self._requested_port
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64, enable_cleanup_closed=False),
            auto_decompress=True,
        )
        log.info("relay listening on %s:%d", self._bind, self._port)

    async def stop(self) -> None:
        for live in list(self._grants.values()):
            self._forget(live.grant.capability, "relay-stopped")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def port(self) -> int:
        return self._port

    # -- grants --

    def grant(
        self,
        *,
        target_address: str,
        server_id: str,
        upstream_host: str,
        upstream_address: str,
        upstream_port: int,
        token: str,
        replaces: str | None = None,
        scope: GrantScope | None = None,
    ) -> Grant:
        """A fresh capability for ``target_address`` to play from one server; replaces the pair's
        previous grant (a new fling replaces the old) and ``replaces`` if given. ``scope``: the
        library items the grant covers (every fling passes one; see companion.relay.scope)."""
        target = str(_ip(target_address, "target address"))
        upstream_ip = str(_ip(upstream_address, "upstream address"))
        if not 0 < upstream_port < 65536:
            raise ProtocolError(f"relay grant: upstream port {upstream_port} is out of range")
        host = upstream_host.strip().rstrip(".").lower()
        if not host or any(c in host for c in "/@?#[] "):
            raise ProtocolError(f"relay grant: upstream host {upstream_host[:80]!r} is not a host name or IP")
        # A short token would also match random bytes in media and corrupt it while scrubbing.
        if len(token) < 8:
            raise ProtocolError("relay grant: the server token is missing or too short (under 8 characters)")
        self._sweep()
        for live in list(self._grants.values()):
            old = live.grant
            if old.target_address == target and old.server_id == server_id:
                self._forget(old.capability, "replaced")
        if replaces is not None:
            self._forget(replaces, "replaced")
        now = self._clock()
        grant = Grant(
            capability=secrets.token_urlsafe(32),
            target_address=target,
            server_id=server_id,
            upstream_host=host,
            upstream_address=upstream_ip,
            upstream_port=upstream_port,
            token=token,
            expires_at=now + self._idle_timeout,
            idle_timeout=self._idle_timeout,
        )
        self._grants[_key(grant.capability)] = _Live(grant, now, _Rewriter(grant), scope)
        log.info("relay grant %s: target %s, server %s via %s:%d", grant.label, target, server_id,
                 upstream_ip, upstream_port)
        return grant

    def revoke(self, capability: str) -> None:
        self._forget(capability, "revoked")

    def revoke_target(self, target_address: str) -> None:
        """Every grant of a target (its face stopped)."""
        try:
            target = str(_ip(target_address, "target address"))
        except ProtocolError:
            return
        for live in list(self._grants.values()):
            if live.grant.target_address == target:
                self._forget(live.grant.capability, "target-stopped")

    def base_url(self, grant: Grant, bridge_ip: str) -> str:
        return f"http://{_host_literal(bridge_ip)}:{self._port}/{grant.capability}"

    def grants(self) -> list[Grant]:
        """The live grants (for the status page; show ``label``, never ``capability``)."""
        self._sweep()
        return [live.grant for live in self._grants.values()]

    def _forget(self, capability: str, why: str) -> None:
        key = _key(capability)
        live = self._grants.pop(key, None)
        if live is None:
            return
        self._revoked[key] = why
        while len(self._revoked) > REVOKED_MEMORY:
            self._revoked.popitem(last=False)
        log.info("relay grant %s ended: %s", live.grant.label, why)

    def _expired(self, live: _Live, now: float) -> bool:
        return now - live.last_used > live.grant.idle_timeout

    def _sweep(self) -> None:
        now = self._clock()
        for live in list(self._grants.values()):
            if self._expired(live, now):
                self._forget(live.grant.capability, "expired")

    def _still_live(self, live: _Live) -> bool:
        return self._grants.get(_key(live.grant.capability)) is live

    # -- HTTP --

    def _deny(self, status: int, reason: str, text: str, label: str = "-") -> web.Response:
        self.counters.deny(reason)
        self._refusals.log(reason, self._clock(), logging.INFO, "relay %s: refused (%s): %s", label, reason, text)
        return web.Response(status=status, text=f"{reason}: {text}\n", content_type="text/plain")

    def _refuse_path(self, method: str, plex_path: str, why_not: str, label: str) -> web.Response:
        # Once per path, by name, so a player's unmet need shows up in the log without flooding it;
        # the counters keep how often each was refused.
        self.counters.deny("path-not-allowed")
        name = refused_path_name(method, plex_path)
        if self.counters.refuse_path(name):
            log.warning("relay %s: refused %s: not on the relay's allow-list (docs/relay-allow-list.md); "
                        "further refusals of it are only counted", label, name)
        return web.Response(status=403, text=f"path-not-allowed: {why_not}\n", content_type="text/plain")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.counters.requests += 1
        host = request.headers.get("Host")
        if not host_allowed(host, self._allowed_hosts):
            shown = (host or "")[:100]
            self._refusals.log(421, self._clock(), logging.WARNING,
                               "relay refused a request with Host %r (possible DNS rebinding)", shown)
            return self._deny(421, "host-not-allowed", f"Host {shown!r} is not an address of this bridge")
        _, _, after = request.rel_url.raw_path.partition("/")
        capability, slash, rest = after.partition("/")
        key = _key(capability)
        live = self._grants.get(key)
        if live is None and key not in self._revoked:
            # A Companion player is handed a server block (protocol, address, port, token), not a
            # URL, so it cannot carry a path prefix: it gets the capability as its "token" and sends
            # it back as X-Plex-Token on every request, with plain Plex paths.
            presented = _presented_token(request)
            if presented:
                key = _key(presented)
                live = self._grants.get(key)
                if live is not None or key in self._revoked:
                    capability, slash, rest = presented, "/", after
        if live is None:
            why = self._revoked.get(key)
            text = {
                "replaced": "this relay URL was replaced by a newer fling to the same device",
                "target-stopped": "the device's face was stopped",
                "expired": "this relay URL expired (unused for too long); fling again",
                "relay-stopped": "the relay was restarted; fling again",
            }.get(why or "", "this relay URL was revoked" if why else "no such relay URL")
            return self._deny(403, why or "unknown-capability", text)
        grant = live.grant
        peer = _peer(request)
        if peer is None or peer != _ip(grant.target_address, "target address"):
            return self._deny(403, "wrong-peer", "this relay URL belongs to another device", grant.label)
        now = self._clock()
        if self._expired(live, now):
            self._forget(grant.capability, "expired")
            return self._deny(403, "expired", "this relay URL expired (unused for too long); fling again",
                              grant.label)
        live.last_used = now
        method = request.method.upper()
        plex_path = "/" + rest if slash else "/"
        rule, why_not = check_path(plex_path, method)
        if rule is None:
            return self._refuse_path(method, plex_path, why_not, grant.label)
        if live.scope is not None:
            why_not = live.scope.check(unquote(plex_path), request.rel_url.raw_query_string)
            if why_not:
                return self._deny(403, "outside-grant", why_not, grant.label)
        query, why_not = filter_query(request.rel_url.raw_query_string)
        if why_not:
            return self._deny(403, "source-not-allowed", why_not, grant.label)
        body = await request.read() if method in ("POST", "PUT") else None
        try:
            return await self._forward(request, live, rule, plex_path, query, body)
        except UpstreamRefused as exc:
            self.counters.fail(exc.code)
            return web.Response(status=502, text=f"{exc.code}: {exc}\n", content_type="text/plain")

    async def _forward(self, request: web.Request, live: _Live, rule: PathRule, path: str, query: str,
                       body: bytes | None) -> web.StreamResponse:
        grant = live.grant
        path = rule.upstream or path
        url = URL(f"https://{_host_literal(grant.upstream_address)}:{grant.upstream_port}{path}"
                  + (f"?{query}" if query else ""), encoded=True)
        headers = CIMultiDict[str]()
        for name, value in request.headers.items():
            lowered = name.lower()
            if lowered in SECRET_PARAMS:
                continue
            if lowered in _REQUEST_HEADERS or lowered.startswith("x-plex-"):
                headers.add(name, value)
        headers["Host"] = f"{_host_literal(grant.upstream_host)}:{grant.upstream_port}"
        headers["Accept-Encoding"] = "identity"  # bytes pass unaltered: ranges and lengths stay true
        if rule.needs_token:
            headers["X-Plex-Token"] = grant.token
        if request.method == "GET" and path.startswith(_PUMPED_PREFIX):
            return await self._pump(request, live, url.raw_path_qs, headers)
        resp = await self._upstream_request(grant, request.method, url, headers, body)
        try:
            return await self._respond(request, live, resp)
        finally:
            resp.release()

    async def _pump(self, request: web.Request, live: _Live, target: str,
                    headers: CIMultiDict[str]) -> web.StreamResponse:
        """A media part through a reader thread (companion.relay.pump): C speed for the bytes."""
        grant = live.grant
        sni = None if _is_ip(grant.upstream_host) else grant.upstream_host
        for attempt in (1, 2):
            pin = await self._pin(grant, force=attempt == 2)
            stream = UpstreamStream(address=grant.upstream_address, port=grant.upstream_port, sni=sni,
                                    fingerprint=pin.fingerprint.fingerprint, method="GET", target=target,
                                    headers=list(headers.items()), timeout=self._upstream_timeout,
                                    name=f"relay-stream-{grant.label}")
            try:
                try:
                    status, upstream_headers = await stream.open()
                except PinMismatch:
                    log.info("relay: %s presented a new certificate; verifying it", grant.upstream_host)
                    continue
                except UpstreamError as exc:
                    raise UpstreamRefused(
                        "upstream-unreachable",
                        f"the relay could not reach the Plex server {grant.upstream_host} at "
                        f"{grant.upstream_address}:{grant.upstream_port}: {exc}",
                    ) from exc
                out_headers = self._response_headers(request, live, upstream_headers)
                length = next((v for k, v in upstream_headers if k.lower() == "content-length"), None)
                encoded = any(k.lower() == "content-encoding" for k, _ in upstream_headers)
                content_type = next((v for k, v in upstream_headers if k.lower() == "content-type"), "")
                needles = body_needles(content_type, grant.token)
                content_length = None if encoded or length is None else int(length)
                if not needles and content_length is not None:
                    return await self._send_direct(request, live, status, out_headers, content_length, stream)
                return await self._stream(request, live, status, out_headers, content_length,
                                          stream.chunks(), False, needles)
            finally:
                await stream.aclose()
        raise UpstreamRefused("upstream-untrusted",
                              f"the Plex server {grant.upstream_host} changed its certificate twice in a row")

    async def _send_direct(self, request: web.Request, live: _Live, status: int, headers: CIMultiDict[str],
                           content_length: int, stream: UpstreamStream) -> web.StreamResponse:
        """A media body the relay passes on unchanged: the reader thread also writes it to the target."""
        out = web.StreamResponse(status=status, headers=headers)
        out.content_length = content_length
        await out.prepare(request)
        await out.write(b"")  # the head goes out now, ahead of the body
        transport = request.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if (transport is None or sock is None or transport.get_extra_info("sslcontext") is not None
                or transport.get_write_buffer_size() > 0):
            # Something is still queued in the loop's buffer: keep the order, stream through the loop.
            return await self._stream_prepared(request, live, out, stream.chunks(), ())

        def progress(sent: int, chunks: int) -> None:
            self.counters.bytes_relayed += sent
            self.counters.chunks_relayed += chunks
            live.last_used = self._clock()

        try:
            # The reader thread asks _still_live (a dict lookup, read-only) before each chunk.
            await stream.send_to(sock, progress, lambda: self._still_live(live))
        except DownstreamGone:
            if not self._still_live(live):
                log.info("relay %s: stream cut, the grant ended", live.grant.label)
            _abort(request)  # the target went away, or the grant ended: the connection cannot be reused
            return out
        except UpstreamError as exc:
            log.info("relay %s: upstream stream broke off: %s", live.grant.label, type(exc).__name__)
            self.counters.fail("upstream-broke-off")
            _abort(request)  # a truncated body must not look complete to the target
            return out
        await out.write_eof()
        return out

    async def _upstream_request(self, grant: Grant, method: str, url: URL, headers: CIMultiDict[str],
                                body: bytes | None) -> aiohttp.ClientResponse:
        session = self._session
        if session is None:
            raise UpstreamRefused("relay-stopped", "the relay is not running")
        sni = None if _is_ip(grant.upstream_host) else grant.upstream_host
        timeout = aiohttp.ClientTimeout(total=None, connect=self._upstream_timeout,
                                        sock_read=self._upstream_timeout)
        for attempt in (1, 2):
            pin = await self._pin(grant, force=attempt == 2)
            try:
                return await session.request(
                    method, url, headers=headers, data=body, ssl=pin.fingerprint, server_hostname=sni,
                    allow_redirects=False, timeout=timeout,
                )
            except aiohttp.ServerFingerprintMismatch:
                # The server now shows another leaf (renewed certificate): verify it before any
                # request, and so the token, goes to it.
                log.info("relay: %s presented a new certificate; verifying it", grant.upstream_host)
                continue
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise UpstreamRefused(
                    "upstream-unreachable",
                    f"the relay could not reach the Plex server {grant.upstream_host} at "
                    f"{grant.upstream_address}:{grant.upstream_port}: {type(exc).__name__}",
                ) from None
        raise UpstreamRefused("upstream-untrusted",
                              f"the Plex server {grant.upstream_host} changed its certificate twice in a row")

    def _response_headers(self, request: web.Request, live: _Live,
                          upstream: Iterable[tuple[str, str]]) -> CIMultiDict[str]:
        """The upstream's headers the target may see: listed ones, Location rewritten, no token."""
        base = self.base_url(live.grant, _local_ip(request) or self._bind)
        needles = token_needles(live.grant.token)
        headers = CIMultiDict[str]()
        for name, value in upstream:
            lowered = name.lower()
            if lowered == "location":
                value = live.rewriter.rewrite(value.encode("latin-1", "replace"), base).decode("latin-1")
            elif lowered not in _RESPONSE_HEADERS:
                continue
            if any(n.decode("latin-1") in value for n in needles):
                continue
            headers.add(name, value)
        return headers

    async def _respond(self, request: web.Request, live: _Live, resp: aiohttp.ClientResponse) -> web.StreamResponse:
        grant = live.grant
        base = self.base_url(grant, _local_ip(request) or self._bind)
        needles = token_needles(grant.token)
        headers = self._response_headers(request, live, resp.headers.items())
        content_type = resp.headers.get("Content-Type", "")
        head = request.method.upper() == "HEAD"
        if not head and resp.status != 206 and _is_text(content_type):
            data = await _read_capped(resp, TEXT_BODY_CAP)
            if data is None:
                raise UpstreamRefused("upstream-too-large", "the server's text answer exceeds the relay's cap")
            if live.scope is not None and resp.status == 200:
                live.scope.learn(data)  # the item's parts, streams, children and queue items
            for needle in needles:
                data = data.replace(needle, b"")
            data = live.rewriter.rewrite(data, base)
            headers.pop("Content-Type", None)
            out = web.Response(status=resp.status, body=data, headers=headers)
            if content_type:
                out.headers["Content-Type"] = content_type
            self.counters.bytes_relayed += len(data)
            return out
        length = resp.content_length if "Content-Encoding" not in resp.headers else None
        # iter_any: each chunk as the socket delivered it, without re-joining into fixed sizes.
        return await self._stream(request, live, resp.status, headers, length, resp.content.iter_any(), head,
                                  body_needles(content_type, grant.token))

    async def _stream(self, request: web.Request, live: _Live, status: int, headers: CIMultiDict[str],
                      content_length: int | None, chunks: AsyncIterator[bytes], head: bool,
                      needles: Sequence[bytes]) -> web.StreamResponse:
        out = web.StreamResponse(status=status, headers=headers)
        if content_length is not None:
            out.content_length = content_length
        await out.prepare(request)
        if head:
            await out.write_eof()
            return out
        return await self._stream_prepared(request, live, out, chunks, needles)

    async def _stream_prepared(self, request: web.Request, live: _Live, out: web.StreamResponse,
                               chunks: AsyncIterator[bytes], needles: Sequence[bytes]) -> web.StreamResponse:
        scrubber = TokenScrubber(needles)
        try:
            async for chunk in chunks:
                if not self._still_live(live):
                    log.info("relay %s: stream cut, the grant ended", live.grant.label)
                    _abort(request)
                    return out
                live.last_used = self._clock()
                for data in scrubber.feed(chunk):
                    await out.write(data)  # waits while the target's socket is full (back-pressure)
                    self.counters.bytes_relayed += len(data)
                self.counters.chunks_relayed += 1
            tail = scrubber.finish()
            if tail:
                await out.write(tail)
                self.counters.bytes_relayed += len(tail)
        except ConnectionResetError:
            return out  # the target went away; releasing the upstream response closes that side
        except (aiohttp.ClientError, TimeoutError, UpstreamError) as exc:
            log.info("relay %s: upstream stream broke off: %s", live.grant.label, type(exc).__name__)
            self.counters.fail("upstream-broke-off")
            _abort(request)  # a truncated body must not look complete to the target
            return out
        await out.write_eof()
        return out

    # -- upstream verification --

    async def _pin(self, grant: Grant, *, force: bool) -> _Pin:
        key = (grant.upstream_address, grant.upstream_port, grant.upstream_host)
        lock = self._pin_locks.setdefault(key, asyncio.Lock())
        async with lock:
            pin = self._pins.get(key)
            if pin is not None and not force and self._clock() < pin.until:
                return pin
            self._pins.pop(key, None)
            chain = await self._sent_chain(grant)
            fingerprint = await self._verify(grant, chain)
            pin = _Pin(aiohttp.Fingerprint(fingerprint), self._clock() + VERIFY_TTL)
            self._pins[key] = pin
            return pin

    async def _sent_chain(self, grant: Grant) -> tuple[bytes, ...]:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the chain is verified below, by us, for the exact name
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        sni = None if _is_ip(grant.upstream_host) else grant.upstream_host
        where = f"{grant.upstream_address}:{grant.upstream_port}"
        try:
            async with asyncio.timeout(self._upstream_timeout):
                _reader, writer = await asyncio.open_connection(
                    grant.upstream_address, grant.upstream_port, ssl=ctx, server_hostname=sni or "",
                )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise UpstreamRefused("upstream-unreachable",
                                  f"the relay could not open TLS to the Plex server at {where}: "
                                  f"{type(exc).__name__}") from None
        try:
            obj = writer.get_extra_info("ssl_object")
            chain = sent_chain_der(obj) if isinstance(obj, ssl.SSLObject) else ()
        finally:
            writer.close()
            try:
                async with asyncio.timeout(self._upstream_timeout):
                    await writer.wait_closed()
            except (OSError, TimeoutError, ssl.SSLError):
                pass  # the chain is already in hand
        if not chain:
            raise UpstreamRefused("upstream-untrusted", f"the Plex server at {where} sent no certificate")
        return chain

    async def _verify(self, grant: Grant, chain: tuple[bytes, ...]) -> bytes:
        """The SHA-256 of the leaf when the chain verifies for ``upstream_host``; else UpstreamRefused."""
        self.counters.verifications += 1
        try:
            facts = ServerFacts.from_chain(grant.upstream_address, grant.upstream_port, chain, tls_versions=())
        except TrustError as exc:
            raise UpstreamRefused("upstream-untrusted", str(exc)) from None
        sent = facts.chain
        reasons = self._check(grant.upstream_host, facts, ())
        if reasons:
            extra = await self._aia_issuers(sent)
            if extra:
                reasons = self._check(grant.upstream_host, facts, extra)
        if reasons:
            text = "; ".join(str(r) for r in reasons)
            log.warning("relay: refusing the Plex server %s at %s:%d, its certificate does not verify: %s",
                        grant.upstream_host, grant.upstream_address, grant.upstream_port, text)
            raise UpstreamRefused("upstream-untrusted",
                                  f"the relay does not trust the Plex server {grant.upstream_host}: {text}")
        return hashlib.sha256(chain[0]).digest()

    def _check(self, name: str, facts: ServerFacts, extra: Sequence[x509.Certificate]) -> tuple[Reason, ...]:
        now = datetime.now(UTC)
        if not _is_ip(name):
            result = verify_chain(facts, self._roots, name=name, now=now, tls=_BRIDGE_TLS,
                                  extra_intermediates=extra)
            return () if result.ok else result.reasons
        # An IP as the name: the shared checker speaks DNS names only; this path gives one reason.
        sent = facts.chain
        try:
            verifier = (PolicyBuilder().store(self._store).time(now.replace(tzinfo=None))
                        .build_server_verifier(x509.IPAddress(ipaddress.ip_address(name))))
            verifier.verify(sent[0], [*sent[1:], *extra])
        except (VerificationError, ValueError) as exc:
            return (Reason("chain-invalid", f"the chain does not verify for {name}: {exc}"),)
        return ()

    async def _aia_issuers(self, sent: Sequence[x509.Certificate]) -> list[x509.Certificate]:
        """Missing issuers above the last sent certificate, following CA Issuers URLs (cached)."""
        found: list[x509.Certificate] = []
        current = sent[-1]
        for _ in range(AIA_DEPTH):
            if current.issuer == current.subject:
                break
            issuer = None
            for url in _ca_issuer_urls(current):
                issuer = await self._issuer(url, current)
                if issuer is not None:
                    break
            if issuer is None or issuer in found or issuer in sent:
                break
            found.append(issuer)
            current = issuer
        return found

    def _aia_path(self, url: str) -> Path:
        return self._state_dir / "aia" / (hashlib.sha256(url.encode()).hexdigest() + ".der")

    async def _issuer(self, url: str, child: x509.Certificate) -> x509.Certificate | None:
        cached = self._issuers.get(url)
        if cached is not None:
            return cached
        path = self._aia_path(url)
        try:
            data: bytes | None = path.read_bytes()
        except OSError:
            data = None
        issuer = _parse_issuer(data, child) if data else None
        if issuer is None:
            issuer = await self._fetch_issuer(url, child)
            if issuer is None:
                return None
            self._save_issuer(path, issuer)
        self._issuers[url] = issuer
        return issuer

    def _save_issuer(self, path: Path, issuer: x509.Certificate) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".tmp")
            partial.write_bytes(issuer.public_bytes(serialization.Encoding.DER))
            partial.replace(path)
        except OSError as exc:
            log.warning("relay: cannot cache an AIA issuer in %s: %s", path.parent, exc.strerror or exc)

    def _aia_allowed(self, url: str) -> bool:
        host = (urlsplit(url).hostname or "").lower()
        if not host:
            return False
        if self._aia_hosts is not None:
            return host in self._aia_hosts
        try:
            return ipaddress.ip_address(host).is_global
        except ValueError:
            return True

    async def _fetch_issuer(self, url: str, child: x509.Certificate) -> x509.Certificate | None:
        session = self._session
        if session is None:
            return None
        if not self._aia_allowed(url):
            log.warning("relay: not fetching the AIA issuer %s (host not allowed)", url[:200])
            return None
        self.counters.aia_fetches += 1
        try:
            async with session.get(url, allow_redirects=False,
                                   timeout=aiohttp.ClientTimeout(total=self._aia_timeout)) as resp:
                if resp.status != 200:
                    log.warning("relay: AIA issuer %s answered HTTP %d", url[:200], resp.status)
                    return None
                data = await _read_capped(resp, AIA_SIZE_CAP)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("relay: cannot fetch the AIA issuer %s: %s", url[:200], type(exc).__name__)
            return None
        if data is None:
            log.warning("relay: the AIA issuer at %s is larger than %d bytes", url[:200], AIA_SIZE_CAP)
            return None
        issuer = _parse_issuer(data, child)
        if issuer is None:
            log.warning("relay: %s holds no certificate for %s", url[:200], child.issuer.rfc4514_string())
        else:
            log.info("relay: fetched the missing issuer %s from %s", issuer.subject.rfc4514_string(), url[:200])
        return issuer


# --- small I/O helpers --------------------------------------------------------------------------


def _certifi_roots() -> list[x509.Certificate]:
    # The bundle is third-party data; one root has a non-positive serial, which cryptography
    # only warns about for now. It is still a root people trust, so keep it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        return list(x509.load_pem_x509_certificates(Path(certifi.where()).read_bytes()))


def _presented_token(request: web.Request) -> str:
    for name, value in request.query.items():
        if name.lower() == "x-plex-token":
            return value
    return request.headers.get("X-Plex-Token", "")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


def _peer(request: web.Request) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    # The TCP peer itself, never a header: a Forwarded/X-Forwarded-For header is the target's word.
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    if not peer:
        return None
    try:
        return _unmapped(ipaddress.ip_address(str(peer[0]).split("%", 1)[0]))
    except ValueError:
        return None


def _local_ip(request: web.Request) -> str | None:
    transport = request.transport
    sock = transport.get_extra_info("sockname") if transport is not None else None
    if not sock:
        return None
    return str(_unmapped(ipaddress.ip_address(str(sock[0]).split("%", 1)[0])))


def _abort(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.close()


async def _read_capped(resp: aiohttp.ClientResponse, cap: int) -> bytes | None:
    parts: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(CHUNK):
        size += len(chunk)
        if size > cap:
            return None
        parts.append(chunk)
    return b"".join(parts)


__all__ = [
    "ALLOWED", "Grant", "PathRule", "Relay", "RelayCounters", "TokenScrubber", "UpstreamRefused",
    "check_path", "filter_query", "refused_path_name", "token_needles",
]
