"""What one relay grant may reach of the library: the flung item and what belongs to it, nothing else.

The relay's path allow-list (``companion.relay.paths.ALLOWED``) says which *kinds* of Plex paths a player may
use; a :class:`GrantScope` says which *items* (issue 12, Build 1): the item the fling named (its
``key``) and its children, its images, its media parts and streams, the transcode sessions started
for it, and the play queue the fling named (its ``containerKey``) with the items in that queue.
Part, stream, child and queue-item ids are learnt from the metadata and play-queue answers the
relay itself forwards for this grant, so the scope grows only along what the server says belongs
to the flung item. Related hubs (other items the server suggests) are not learnt.

Pure: bytes and strings in, verdicts out; every set is bounded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, unquote, urlsplit

from companion.errors import ProtocolError
from companion.proto.safexml import parse_xml

MAX_IDS = 4096  # per kind; a 200-item play queue of episodes with subtitles stays far below
_ID = r"([^/?#]+)"
_METADATA = re.compile(rf"/library/metadata/{_ID}(/.*)?")
_PARTS = re.compile(rf"/library/parts/{_ID}(?:/.*)?")
_STREAMS = re.compile(rf"/library/streams/{_ID}(?:/.*)?")
_QUEUES = re.compile(rf"/playQueues/{_ID}(?:/.*)?")
_SESSION = re.compile(rf"/(?:video|music)/:/transcode/universal/session/{_ID}(?:/.*)?")
_TRANSCODE = re.compile(r"/(?:video|music|photo)/:/transcode(?:/.*)?")
_REPORTS = frozenset({"/:/timeline", "/:/scrobble", "/:/unscrobble", "/:/progress"})
# Image sub-paths of an item (``/library/metadata/<id>/thumb/<ts>``): an episode shows its show's
# poster, so images of ids named in image attributes pass without the rest of those items.
_IMAGE_KINDS = frozenset({"thumb", "art", "banner", "theme", "clearLogo", "composite", "poster"})
_IMAGE_ATTRS = frozenset({
    "thumb", "art", "banner", "theme", "composite", "parentThumb", "parentArt", "parentTheme",
    "grandparentThumb", "grandparentArt", "grandparentTheme", "grandparentBanner",
})
_SOURCE_PARAMS = ("path", "url")
_SESSION_PARAMS = ("session", "X-Plex-Session-Identifier")
_ITEM_PARAMS = ("ratingKey", "key")
# Suggestions of other items inside an answer: learning from them would widen the grant.
_NOT_LEARNT = frozenset({"Hub", "Related"})
_PLAYLIST_SESSION = re.compile(rb"(?:^|[/\s\"'])session/([A-Za-z0-9_.-]{1,128})/", re.MULTILINE)
_LOOPBACK_SOURCE = re.compile(r"https?://(?:127\.0\.0\.1|localhost|\[::1\])(?::\d+)?(?=/)", re.IGNORECASE)


class _Ids:
    """A bounded set of ids; what does not fit is dropped (the grant then covers less, never more)."""

    def __init__(self, initial: Iterable[str] = ()) -> None:
        self._ids: set[str] = set()
        for ident in initial:
            self.add(ident)

    def add(self, ident: str) -> None:
        if ident and len(self._ids) < MAX_IDS:
            self._ids.add(ident)

    def __contains__(self, ident: object) -> bool:
        return ident in self._ids

    def __len__(self) -> int:
        return len(self._ids)


class GrantScope:
    """The items one relay grant covers, growing from the answers the relay forwards for it."""

    def __init__(self, *, metadata: Iterable[str] = (), queues: Iterable[str] = ()) -> None:
        self.metadata = _Ids(metadata)
        self.queues = _Ids(queues)
        self.images = _Ids()
        self.parts = _Ids()
        self.streams = _Ids()
        self.sessions = _Ids()

    @classmethod
    def for_fling(cls, key: str, container_key: str = "") -> GrantScope:
        """The scope of a fling of ``key`` (and its play queue ``container_key``)."""
        metadata = [m.group(1) for m in [_METADATA.fullmatch(_path_of(key))] if m]
        queues = [m.group(1) for m in [_QUEUES.fullmatch(_path_of(container_key))] if m]
        # A fling whose key is itself a queue (``/playQueues/7``) names that queue.
        queues += [m.group(1) for m in [_QUEUES.fullmatch(_path_of(key))] if m]
        return cls(metadata=metadata, queues=queues)

    # -- checking -------------------------------------------------------------------------------

    def check(self, path: str, raw_query: str) -> str:
        """"" when ``path`` (percent-decoded) with ``raw_query`` stays inside the grant, else why not.

        Paths that name no library item (``/identity``) are left to the relay's allow-list.
        """
        query = parse_qsl(raw_query, keep_blank_values=True)
        item = self._item_problem(path)
        if item is not None:
            return item
        if path in _REPORTS:
            for name, value in query:
                if name in _ITEM_PARAMS and value and not self._item_allowed(value):
                    return f"{path} reports on {name}={value[:60]!r}, which this fling did not name"
            return ""
        session = _SESSION.fullmatch(path)
        if session:
            if session.group(1) in self.sessions:
                return ""
            return "this transcode session was not started for the flung item"
        if _TRANSCODE.fullmatch(path):
            return self._transcode_problem(path, query)
        return ""

    def _item_problem(self, path: str) -> str | None:
        """None when ``path`` is no item path; "" when it is one inside the grant; else why not."""
        match = _METADATA.fullmatch(path)
        if match:
            ident, rest = match.group(1), (match.group(2) or "").lstrip("/")
            if ident in self.metadata:
                return ""
            if ident in self.images and rest.split("/", 1)[0] in _IMAGE_KINDS:
                return ""
            return f"/library/metadata/{ident[:40]} is not the flung item, one of its children or its images"
        for pattern, ids, what in ((_PARTS, self.parts, "media part"), (_STREAMS, self.streams, "stream"),
                                   (_QUEUES, self.queues, "play queue")):
            match = pattern.fullmatch(path)
            if match:
                if match.group(1) in ids:
                    return ""
                return f"{what} {match.group(1)[:40]} does not belong to the flung item"
        return None

    def _item_allowed(self, value: str) -> bool:
        if value.startswith("/"):
            return self._item_problem(_path_of(value)) in (None, "")
        return value in self.metadata

    def _transcode_problem(self, path: str, query: list[tuple[str, str]]) -> str:
        sources = [value for name, value in query if name.lower() in _SOURCE_PARAMS]
        sessions = [value for name, value in query if name in _SESSION_PARAMS and value]
        for source in sources:
            local = _LOOPBACK_SOURCE.sub("", unquote(source), count=1)
            if not local.startswith("/") or self._item_problem(_path_of(local)) != "":
                return f"{path} may only transcode the flung item, not {source[:80]!r}"
        if sources:
            for session in sessions:
                self.sessions.add(session)  # started for an item in scope: its later requests pass
            return ""
        if sessions and all(session in self.sessions for session in sessions):
            return ""  # ping, stop, a segment request by session
        return f"{path} names neither the flung item nor a transcode session started for it"

    # -- learning -------------------------------------------------------------------------------

    def learn(self, body: bytes) -> None:
        """Take in the ids an answer forwarded under this grant names (XML, JSON, HLS playlists)."""
        # A transcode start answers with playlists (HLS, DASH) naming its segments under
        # ``session/<id>/``; that id may differ from the one the player asked with.
        for match in _PLAYLIST_SESSION.finditer(body):
            self.sessions.add(match.group(1).decode("ascii"))
        head = body.lstrip()[:1]
        if head == b"<":
            self._learn_xml(body)
        elif head in (b"{", b"["):
            try:
                self._learn_json(json.loads(body))
            except (ValueError, RecursionError):
                return

    def _learn_xml(self, body: bytes) -> None:
        # Plex never sends a DTD: one (in any encoding) teaches nothing, so no entity from the
        # LAN's bytes can name an item. Nothing is refused here: the answer is still forwarded.
        try:
            root = parse_xml(body, "a relayed answer")
        except ProtocolError:
            return
        stack = [root]
        while stack:
            element = stack.pop()
            if element.tag in _NOT_LEARNT:
                continue
            self._take(element.tag, element.attrib)
            stack.extend(element)

    def _learn_json(self, data: object, tag: str = "") -> None:
        stack: list[tuple[str, object]] = [(tag, data)]
        while stack:
            tag, node = stack.pop()
            if isinstance(node, list):
                stack.extend((tag, item) for item in node)
            elif isinstance(node, dict):
                self._take(tag, {k: str(v) for k, v in node.items() if isinstance(v, (str, int))})
                stack.extend((k, v) for k, v in node.items() if isinstance(v, (dict, list)) and k not in _NOT_LEARNT)

    def _take(self, tag: str, attrs: dict[str, str]) -> None:
        if tag == "Part":
            self.parts.add(attrs.get("id", ""))
        elif tag == "Stream":
            self.streams.add(attrs.get("id", ""))
        elif tag != "Media" and "ratingKey" in attrs:
            self.metadata.add(attrs["ratingKey"])
        if "playQueueID" in attrs:
            self.queues.add(attrs["playQueueID"])
        for name, value in attrs.items():
            if name in _IMAGE_ATTRS:
                match = _METADATA.fullmatch(_path_of(value))
                if match:
                    self.images.add(match.group(1))
            elif name == "key":
                match = _PARTS.fullmatch(_path_of(value))
                if match:
                    self.parts.add(match.group(1))


def _path_of(text: str) -> str:
    """The path of a server-relative URL (no query), percent-decoded."""
    return unquote(urlsplit(text).path) if text else ""


__all__ = ["MAX_IDS", "GrantScope"]
