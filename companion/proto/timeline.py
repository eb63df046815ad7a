"""Timeline state and XML (sans-I/O): what a player is doing, rendered for controllers.

A face's controllers always get three ``<Timeline>`` children (music, video, photo); only the
active one carries playback attributes. Parsing player XML never expands entities.
"""

from __future__ import annotations

import contextlib
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from copy import deepcopy
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from companion.errors import ProtocolError
from companion.model import SECRET_PARAMS
from companion.proto.companion import xml_document, xml_element, xml_name_ok, xml_safe
from companion.proto.safexml import parse_xml

MEDIA_TYPES: tuple[str, ...] = ("music", "video", "photo")
STATES = frozenset({"playing", "paused", "stopped", "buffering", "error"})

_NO_EXTRA: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True)
class TimelineEntry:
    """One ``<Timeline>`` element. ``time`` and ``duration`` are milliseconds."""

    type: str
    state: str = "stopped"
    time: int = 0
    duration: int = 0
    key: str = ""
    rating_key: str = ""
    container_key: str = ""
    play_queue_id: str = ""
    play_queue_version: str = ""
    play_queue_item_id: str = ""
    machine_identifier: str = ""  # the server's
    protocol: str = ""
    address: str = ""
    port: str = ""
    volume: int | None = None
    mute: bool | None = None
    shuffle: int | None = None
    repeat: int | None = None
    controllable: tuple[str, ...] = ()
    # Other attributes a real player sent (audioStreamID, subtitleStreamID, ...), passed through.
    extra: Mapping[str, str] = field(default_factory=lambda: _NO_EXTRA)
    # The item's metadata element a player put inside its <Timeline> (XML text), given to a
    # controller only when it asks with includeMetadata=1 (Plexamp misbehaves on an unasked <Track>).
    metadata: str = ""


def _stopped_entries() -> Mapping[str, TimelineEntry]:
    return MappingProxyType({t: TimelineEntry(type=t) for t in MEDIA_TYPES})


@dataclass(frozen=True)
class PlayerState:
    """Everything a face's timeline says: one entry per media type, plus the location."""

    entries: Mapping[str, TimelineEntry] = field(default_factory=_stopped_entries)
    location: str = "navigation"
    # The player's textField* container attributes (a text field focused on its screen), kept so
    # a controller can offer its keyboard.
    container_extra: Mapping[str, str] = field(default_factory=lambda: _NO_EXTRA)

    @property
    def active(self) -> TimelineEntry | None:
        """The entry that is not stopped, if any (playing before paused before buffering)."""
        for state in ("playing", "paused", "buffering"):
            for t in MEDIA_TYPES:
                entry = self.entries.get(t)
                if entry is not None and entry.state == state:
                    return entry
        return None

    def with_entry(self, entry: TimelineEntry) -> PlayerState:
        """This state with ``entry`` in place of the entry of its type."""
        entries = dict(self.entries)
        entries[entry.type] = entry
        return replace(self, entries=MappingProxyType(entries))


# ---------------------------------------------------------------------------------------------
# XML: rendering for controllers, parsing what real players send.

# A real player's timeline is a few kB; includeMetadata can add an item element. Anything far
# bigger is not a timeline.
MAX_TIMELINE_BYTES = 256 * 1024

# Attribute names a TimelineEntry field stands for; everything else a player sends goes to extra.
_STR_ATTRS: tuple[tuple[str, str], ...] = (
    ("key", "key"),
    ("ratingKey", "rating_key"),
    ("containerKey", "container_key"),
    ("playQueueID", "play_queue_id"),
    ("playQueueVersion", "play_queue_version"),
    ("playQueueItemID", "play_queue_item_id"),
    ("machineIdentifier", "machine_identifier"),
    ("protocol", "protocol"),
    ("address", "address"),
    ("port", "port"),
)
# Derived on render (itemType = type, seekRange from duration), so never taken from extra.
_KNOWN_ATTRS = frozenset(
    {"type", "itemType", "state", "time", "duration", "seekRange", "volume", "mute", "shuffle",
     "repeat", "controllable"} | {name for name, _ in _STR_ATTRS}
)


def _entry_attrs(entry: TimelineEntry) -> list[tuple[str, str]]:
    attrs = [("type", entry.type), ("itemType", entry.type), ("state", entry.state)]
    if entry.state == "stopped":
        attrs.append(("time", "0"))
        # Stopped entries keep what the player can do (real players send it: PKC, Plex for Android).
        stopped_controllable = [c for c in entry.controllable if c and c != "seekTo"]
        if stopped_controllable:
            attrs.append(("controllable", ",".join(stopped_controllable)))
        return attrs
    duration = max(entry.duration, 0)
    time = max(entry.time, 0)
    if duration > 0:
        # The PMS answers 400 to a timeline whose time exceeds its duration.
        time = min(time, duration)
    attrs.append(("time", str(time)))
    if duration > 0:
        attrs.append(("duration", str(duration)))
        attrs.append(("seekRange", f"0-{duration}"))
    for xml_name, field_name in _STR_ATTRS:
        value = getattr(entry, field_name)
        if value:
            attrs.append((xml_name, str(value)))
    if entry.volume is not None:
        attrs.append(("volume", str(min(max(entry.volume, 0), 100))))
    if entry.mute is not None:
        attrs.append(("mute", "1" if entry.mute else "0"))
    if entry.shuffle is not None:
        attrs.append(("shuffle", str(entry.shuffle)))
    if entry.repeat is not None:
        attrs.append(("repeat", str(entry.repeat)))
    controllable = [c for c in entry.controllable if c]
    if duration <= 0:
        # Without a duration controllers draw a broken seek bar (plex-mpv-shim drops it too).
        controllable = [c for c in controllable if c != "seekTo"]
    if controllable:
        attrs.append(("controllable", ",".join(controllable)))
    for name, value in entry.extra.items():
        if name in _KNOWN_ATTRS or name.lower() in SECRET_PARAMS or not xml_name_ok(name):
            continue
        attrs.append((name, value))
    return attrs


def render(state: PlayerState, *, command_id: int | None, machine_identifier: str,
           disconnected: bool = False, include_metadata: bool = False) -> bytes:
    """The timeline XML a controller gets (push body or poll answer).

    ``command_id`` is that controller's latest commandID; when it has sent none we write ``-1``,
    as Plex for Android does, so parsers that expect an integer always get one. Always three
    ``<Timeline>`` children, music, video, photo, in that order. ``disconnected`` marks a face
    whose target is unreachable (plexdlnaplayer's ``disconnected="1"``).
    """
    return render_document(state, machine_identifier=machine_identifier, disconnected=disconnected,
                           include_metadata=include_metadata).for_command(command_id)


# Every timeline document starts with this, then the commandID's digits (it is the root's first attribute).
_COMMAND_ID_HEAD = b'<MediaContainer commandID="'


@dataclass(frozen=True, slots=True)
class TimelineDocument:
    """One state's timeline XML, rendered once: the copy for each controller differs only in its commandID.

    Controllers number every command, and Plex apps poll with a new number each time, so a face
    writes one state for many numbers: rendering the tree each time costs CPU, and keeping each
    number's bytes costs memory that grows with every poll. The document keeps the bytes before and
    after the number and puts each number between them.
    """

    head: bytes  # up to and including commandID="
    tail: bytes  # from the quote that closes the commandID on

    def for_command(self, command_id: int | None) -> bytes:
        """The document as sent to a controller whose latest commandID is ``command_id`` (None: -1)."""
        number = b"-1" if command_id is None else str(command_id).encode()
        return b"".join((self.head, number, self.tail))


def render_document(state: PlayerState, *, machine_identifier: str, disconnected: bool = False,
                    include_metadata: bool = False) -> TimelineDocument:
    """``state`` as a :class:`TimelineDocument` (see :func:`render` for what it holds)."""
    root = xml_element("MediaContainer", [
        ("commandID", "-1"),
        ("location", state.location),
        ("machineIdentifier", machine_identifier),
        ("size", str(len(MEDIA_TYPES))),
    ])
    if disconnected:
        root.set("disconnected", "1")
    for name, value in state.container_extra.items():
        if name.startswith(TEXT_FIELD_PREFIX) and xml_name_ok(name):
            root.set(name, xml_safe(value))
    for media_type in MEDIA_TYPES:
        entry = state.entries.get(media_type) or TimelineEntry(type=media_type)
        if entry.type != media_type:
            entry = replace(entry, type=media_type)
        element = xml_element("Timeline", _entry_attrs(entry))
        if include_metadata and entry.metadata and entry.state != "stopped":
            with contextlib.suppress(ProtocolError):  # made by _metadata_text; a bad one is left out
                element.append(parse_xml(entry.metadata, "timeline metadata"))
        root.append(element)
    body = xml_document(root)
    start = body.index(_COMMAND_ID_HEAD) + len(_COMMAND_ID_HEAD)
    if not body.startswith(b'-1"', start):  # ElementTree writes attributes in the order they were set
        raise AssertionError(f"the timeline document does not start with its commandID: {body[:start + 8]!r}")
    return TimelineDocument(body[:start], body[start + 2:])


TEXT_FIELD_PREFIX = "textField"
MAX_METADATA_CHARS = 64 * 1024
_METADATA_TAGS = frozenset({"Video", "Track", "Photo", "Directory", "Metadata"})


def _metadata_text(element: ET.Element) -> str:
    """The first metadata child of a <Timeline>, token-like attributes removed, bounded; else ""."""
    for child in element:
        if child.tag not in _METADATA_TAGS:
            continue
        copy = deepcopy(child)
        copy.tail = None  # the text after the element belongs to the <Timeline>, not to it
        for node in copy.iter():
            for name in [n for n in node.attrib if n.lower() in SECRET_PARAMS or "token" in n.lower()]:
                del node.attrib[name]
        text = ET.tostring(copy, encoding="unicode")
        return text if len(text) <= MAX_METADATA_CHARS else ""
    return ""


def _number(where: str, name: str, value: str) -> int:
    """Milliseconds from a player: integers, or decimals some players send; negatives mean unknown."""
    text = value.strip()
    try:
        number = float(text) if text else 0.0
    except ValueError as exc:
        raise ProtocolError(f"{where}: {name}: expected a number, got {text[:32]!r}") from exc
    if number != number or number in (float("inf"), float("-inf")) or abs(number) > 1e15:
        raise ProtocolError(f"{where}: {name}: expected a finite number, got {text[:32]!r}")
    return max(int(number), 0)


def _bounded(where: str, name: str, value: str, low: int, high: int) -> int:
    number = _number(where, name, value)
    if not low <= number <= high:
        raise ProtocolError(f"{where}: {name}: {number} is outside {low}..{high}")
    return number


def _parse_entry(where: str, attrs: Mapping[str, str]) -> TimelineEntry:
    media_type = attrs.get("type", "")
    state = attrs.get("state", "stopped") or "stopped"
    if state not in STATES:
        raise ProtocolError(f"{where}: state: unknown value {state[:32]!r}")
    volume = attrs.get("volume")
    mute = attrs.get("mute")
    shuffle = attrs.get("shuffle")
    repeat = attrs.get("repeat")
    if mute is not None and mute.strip().lower() not in ("0", "1", "true", "false"):
        raise ProtocolError(f"{where}: mute: expected 0 or 1, got {mute[:32]!r}")
    strings = {field_name: attrs.get(xml_name, "") for xml_name, field_name in _STR_ATTRS}
    extra = {
        k: v for k, v in attrs.items() if k not in _KNOWN_ATTRS and k.lower() not in SECRET_PARAMS
    }
    return TimelineEntry(
        type=media_type,
        state=state,
        time=_number(where, "time", attrs.get("time", "")),
        duration=_number(where, "duration", attrs.get("duration", "")),
        volume=_bounded(where, "volume", volume, 0, 100) if volume not in (None, "") else None,
        mute=mute.strip().lower() in ("1", "true") if mute is not None else None,
        shuffle=_bounded(where, "shuffle", shuffle, 0, 1) if shuffle not in (None, "") else None,
        repeat=_bounded(where, "repeat", repeat, 0, 2) if repeat not in (None, "") else None,
        controllable=tuple(c.strip() for c in attrs.get("controllable", "").split(",") if c.strip()),
        extra=MappingProxyType(extra),
        **strings,
    )


def parse_player_timeline(data: bytes) -> PlayerState:
    """A real player's timeline (pushed to ``/:/timeline`` or answered to a poll) as a PlayerState.

    Refuses DOCTYPE and entity declarations (no expansion, no external fetch: :mod:`safexml`),
    input over MAX_TIMELINE_BYTES, and anything not UTF-8. Timelines of unknown media types are
    ignored; missing ones are stopped. Token-like attributes are dropped, never kept in ``extra``.
    """
    where = "player timeline"
    if len(data) > MAX_TIMELINE_BYTES:
        raise ProtocolError(f"{where}: {len(data)} bytes exceeds the {MAX_TIMELINE_BYTES}-byte limit")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"{where}: not UTF-8 (byte {exc.start})") from exc
    if "\x00" in text:
        raise ProtocolError(f"{where}: NUL bytes are not accepted")
    root = parse_xml(text, where)
    if root.tag != "MediaContainer":
        raise ProtocolError(f"{where}: root element is <{str(root.tag)[:32]}>, expected <MediaContainer>")
    entries: dict[str, TimelineEntry] = dict(_stopped_entries())
    for index, element in enumerate(root.findall("Timeline")):
        media_type = element.get("type", "")
        if not media_type:
            raise ProtocolError(f"{where}: Timeline #{index + 1} has no type")
        if media_type not in MEDIA_TYPES:
            continue
        entry = _parse_entry(f"{where}: Timeline[type={media_type}]", element.attrib)
        metadata = _metadata_text(element)
        if metadata:
            entry = replace(entry, metadata=metadata)
        # A duplicate type must not hide the active entry behind a stopped one.
        if entry.state != "stopped" or entries[media_type].state == "stopped":
            entries[media_type] = entry
    location = root.get("location", "") or "navigation"
    text_fields = {k: v for k, v in root.attrib.items() if k.startswith(TEXT_FIELD_PREFIX)}
    return PlayerState(entries=MappingProxyType(entries), location=location,
                       container_extra=MappingProxyType(text_fields) if text_fields else _NO_EXTRA)
