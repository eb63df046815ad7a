"""The relay's path policy: which Plex API a player may use through the relay, with which methods.

``ALLOWED`` is the data (each rule carries the evidence for it; docs/relay-allow-list.md is the
same table for people, and a test keeps the two in step); :func:`check_path` applies it,
:func:`filter_query` drops token-like parameters and refuses transcoder sources off the server.
Which *items* a grant reaches is :mod:`companion.relay.scope`'s job. Pure: strings in, verdicts out.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from urllib.parse import unquote

from companion.model import SECRET_PARAMS


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
        """Whether this rule covers ``path`` (percent-decoded), whatever the method."""
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
# Query parameters the transcoders read as a source; only sources on the same server may pass,
# or the relay would let the target make the server fetch arbitrary URLs with the user's token.
_SOURCE_PARAMS = frozenset({"url", "path"})
_LOOPBACK_SOURCE = re.compile(r"https?://(127\.0\.0\.1|localhost|\[::1\])(:\d+)?/", re.IGNORECASE)


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


__all__ = ["ALLOWED", "PathRule", "check_path", "filter_query", "refused_path_name"]
