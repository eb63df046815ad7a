"""The capture's test stream and the few Plex server answers a player needs to reach it (pure).

The stream is a short WAV tone made here (stdlib ``wave``): no media file ships with the bridge,
every player decodes PCM, and a muted null-output player still runs its clock through it. The
answers are the shapes a Plex player asks for around a playMedia (the item's metadata, its play
queue, the transcode decision that says "direct play", the server root with its
machineIdentifier): the Plex Media Server API as PROTOCOL.md describes it.
"""

from __future__ import annotations

import io
import math
import wave
from xml.sax.saxutils import quoteattr

SAMPLE_RATE = 8000
DIRECT_PLAY = "1000"  # generalDecisionCode for "direct play" in /video/:/transcode/universal/decision


def make_tone(seconds: float = 8.0, hz: float = 440.0) -> bytes:
    """A mono 8-bit WAV of a quiet sine tone (``seconds`` long, 8 kB per second)."""
    frames = bytearray(int(128 + 16 * math.sin(2 * math.pi * hz * i / SAMPLE_RATE)) for i in
                       range(int(seconds * SAMPLE_RATE)))
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(1)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(bytes(frames))
    return out.getvalue()


def _doc(body: str) -> str:
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + body


def video_xml(rating_key: str, title: str, size: int, duration_ms: int, extra: str = "") -> str:
    """One ``<Video>`` whose single part is the test stream."""
    return (f'<Video ratingKey="{rating_key}" key="/library/metadata/{rating_key}" type="movie" '
            f'title={quoteattr(title)} duration="{duration_ms}"{extra}>'
            f'<Media id="{rating_key}" duration="{duration_ms}" container="wav" audioCodec="pcm" '
            f'audioChannels="1" bitrate="64">'
            f'<Part id="{rating_key}" key="/library/parts/{rating_key}/test.wav" size="{size}" '
            f'container="wav" duration="{duration_ms}">'
            # plex-mpv-shim tests elements for truth, which for ElementTree means "has children":
            # a Part without a Stream is skipped as absent.
            f'<Stream id="{rating_key}" streamType="2" codec="pcm" channels="1" selected="1"/>'
            "</Part></Media></Video>")


def metadata_xml(machine_id: str, rating_key: str, title: str, size: int, duration_ms: int) -> str:
    """``/library/metadata/<key>``."""
    return _doc(f'<MediaContainer size="1" machineIdentifier="{machine_id}">'
                f"{video_xml(rating_key, title, size, duration_ms)}</MediaContainer>")


def play_queue_xml(machine_id: str, queue_id: str, rating_key: str, title: str, size: int,
                   duration_ms: int) -> str:
    """``/playQueues/<id>``: a queue holding the one test item."""
    item = video_xml(rating_key, title, size, duration_ms, ' playQueueItemID="1"')
    return _doc(f'<MediaContainer size="1" playQueueID="{queue_id}" playQueueSelectedItemID="1" '
                f'playQueueSelectedItemOffset="0" playQueueTotalCount="1" playQueueVersion="1" '
                f'machineIdentifier="{machine_id}">{item}</MediaContainer>')


def decision_xml() -> str:
    """``/video/:/transcode/universal/decision``: direct play."""
    return _doc(f'<MediaContainer size="0" generalDecisionCode="{DIRECT_PLAY}" '
                f'generalDecisionText="Direct play OK."/>')


def root_xml(machine_id: str, version: str) -> str:
    """``/`` and ``/identity``: who this "server" is."""
    return _doc(f'<MediaContainer size="0" friendlyName="companion-bridge capture lab" '
                f'machineIdentifier="{machine_id}" version="{version}" claimed="0"/>')


def empty_xml() -> str:
    """Anything else a player reports or asks (``/:/timeline``, ``/:/progress``, markers)."""
    return _doc('<MediaContainer size="0"/>')
