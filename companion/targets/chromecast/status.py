"""A Chromecast's media and receiver status, snapshotted and translated into our timeline (pure).

pychromecast mutates its status objects in place on its socket thread, so the adapter keeps
immutable snapshots of them; :func:`player_state_from` maps the latest snapshots (and the
playMedia that started the media) to the :class:`~companion.proto.timeline.PlayerState` a
controller sees. No I/O and no pychromecast import at run time: the types are for annotations.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import TYPE_CHECKING

from companion.model import MediaRequest
from companion.proto.timeline import MEDIA_TYPES, PlayerState, TimelineEntry

if TYPE_CHECKING:
    from pychromecast.controllers.media import MediaStatus
    from pychromecast.controllers.receiver import CastStatus

CONTROLLABLE = ("playPause", "stop", "volume", "seekTo", "stepBack", "stepForward")
# Only with a play queue to move in (the Plex receiver plays one: its LOAD names it in customData).
QUEUE_CONTROLLABLE = ("skipPrevious", "skipNext")
# Cast playerState -> timeline state, for the states in which media is loaded.
PLAYER_STATES = {"PLAYING": "playing", "PAUSED": "paused", "BUFFERING": "buffering"}
_LOCATIONS = {"video": "fullScreenVideo", "music": "fullScreenMusic", "photo": "fullScreenPhoto"}
# pychromecast metadataType: 1 movie, 2 tv show, 3 music track, 4 photo.
_METADATA_TYPES = {1: "video", 2: "video", 3: "music", 4: "photo"}


@dataclass(frozen=True)
class MediaSnapshot:
    """An immutable copy of pychromecast's (mutable) MediaStatus, taken on its socket thread."""

    player_state: str = "UNKNOWN"
    idle_reason: str | None = None
    current_time: float = 0.0
    duration: float | None = None
    content_id: str | None = None
    content_type: str | None = None
    metadata_type: int | None = None
    media_session_id: int | None = None
    playback_rate: float = 1.0
    reported_at: float = 0.0  # monotonic clock when the device reported current_time
    play_queue_item_id: str = ""  # from the status's media customData, when the receiver says

    @classmethod
    def of(cls, status: MediaStatus, now: float) -> MediaSnapshot:
        """Snapshot ``status`` as reported at ``now`` (monotonic seconds)."""
        metadata_type = status.metadata_type
        return cls(
            player_state=str(status.player_state), idle_reason=status.idle_reason,
            current_time=float(status.current_time or 0.0),
            duration=float(status.duration) if status.duration is not None else None,
            content_id=status.content_id, content_type=status.content_type,
            metadata_type=metadata_type if isinstance(metadata_type, int) else None,
            media_session_id=status.media_session_id,
            playback_rate=float(status.playback_rate or 1.0), reported_at=now,
            play_queue_item_id=_queue_item_id(status.media_custom_data))

    def position(self, now: float) -> float:
        """Seconds into the media at ``now``: extrapolated while playing, as reported otherwise."""
        if self.player_state != "PLAYING":
            return self.current_time
        return self.current_time + self.playback_rate * max(0.0, now - self.reported_at)


@dataclass(frozen=True)
class ReceiverSnapshot:
    """An immutable copy of the receiver status: volume, mute and the running app."""

    volume_level: float = 1.0
    muted: bool = False
    app_id: str | None = None

    @classmethod
    def of(cls, status: CastStatus) -> ReceiverSnapshot:
        """Snapshot pychromecast's (mutable) CastStatus."""
        return cls(float(status.volume_level), bool(status.volume_muted), status.app_id)


def _queue_item_id(custom: object) -> str:
    value = custom.get("playQueueItemID") if isinstance(custom, dict) else None
    return str(value) if isinstance(value, int | str) and str(value).isdigit() else ""


def play_queue_id(container_key: str) -> str:
    """``/playQueues/123?own=1`` -> ``123``; "" for anything that is not a play queue."""
    if not container_key.startswith("/playQueues/"):
        return ""
    head = container_key[len("/playQueues/"):].split("?", 1)[0].strip("/")
    return head if head.isdigit() else ""


def media_type_of(content_type: str | None, metadata_type: int | None, fallback: str) -> str:
    """Timeline media type (music/video/photo) from a Cast content type or metadata type."""
    ct = (content_type or "").lower()
    if ct.startswith(("video", "application/x-mpegurl", "application/dash")):
        return "video"
    if ct.startswith(("audio", "music")):
        return "music"
    if ct.startswith(("image", "photo")):
        return "photo"
    if metadata_type in _METADATA_TYPES:
        return _METADATA_TYPES[metadata_type]
    return timeline_type(fallback)


def timeline_type(media_type: str) -> str:
    """The timeline a Plex media type plays on: music for audio and tracks, else video/photo."""
    t = media_type.lower()
    if t in ("audio", "music", "track"):
        return "music"
    return t if t in MEDIA_TYPES else "video"


def player_state_from(media: MediaSnapshot | None, receiver: ReceiverSnapshot | None,
                      request: MediaRequest | None, now: float) -> PlayerState:
    """The timeline a controller sees at ``now`` (monotonic seconds), from the device's last media
    and receiver status and the playMedia that started it (server and play-queue fields)."""
    if media is None:
        return _IDLE
    state = PLAYER_STATES.get(media.player_state)
    if state is None:
        if media.player_state == "IDLE" and media.idle_reason == "ERROR":
            state = "error"
        else:
            return _IDLE
    mtype = media_type_of(media.content_type, media.metadata_type,
                          request.media_type if request else "video")
    duration = round(media.duration * 1000) if media.duration else 0
    time_ms = max(0, round(media.position(now) * 1000))
    if duration:
        time_ms = min(time_ms, duration)
    key = ""
    if media.content_id and media.content_id.startswith("/library/"):
        key = media.content_id
    elif request is not None:
        key = request.key
    rating_key = key.rstrip("/").rsplit("/", 1)[-1] if key.startswith("/library/metadata/") else ""
    queue_id = play_queue_id(request.container_key) if request else ""
    item_id = media.play_queue_item_id or (request.extra.get("playQueueItemID", "") if request else "")
    entry = TimelineEntry(
        type=mtype, state=state, time=time_ms, duration=duration, key=key, rating_key=rating_key,
        container_key=request.container_key if request else "",
        play_queue_id=queue_id, play_queue_item_id=item_id,
        machine_identifier=request.machine_identifier if request else "",
        protocol=request.protocol if request and request.address else "",
        address=request.address if request else "",
        port=str(request.port) if request and request.address else "",
        volume=round(receiver.volume_level * 100) if receiver else None,
        mute=receiver.muted if receiver else None,
        controllable=CONTROLLABLE + (QUEUE_CONTROLLABLE if queue_id else ()),
    )
    location = _LOCATIONS.get(mtype, "navigation") if state != "error" else "navigation"
    return replace(_IDLE, location=location).with_entry(entry)


# Nothing playing: every entry stopped, still saying what the Chromecast can do (as real players'
# stopped entries do), so a controller draws its volume control before the first fling.
_IDLE = PlayerState(entries=MappingProxyType({t: TimelineEntry(type=t, controllable=CONTROLLABLE)
                                              for t in MEDIA_TYPES}))
