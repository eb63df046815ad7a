"""The Cast messages we build (media, receiver and the Plex receiver's own namespace), and the
filter that keeps the token they carry out of pychromecast's debug logs.

Shapes follow pychromecast (``controllers/media.py``, ``controllers/receiver.py``,
``controllers/plex.py``); docs/companion-proxy.md names the sources.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from pychromecast.controllers import BaseController
from pychromecast.controllers.plex import media_to_chromecast_command

from companion.model import MediaRequest

PLEX_APP_ID = "9AC194DC"
DEFAULT_MEDIA_RECEIVER_APP_ID = "CC1AD845"
# The Plex receiver's own messages on its namespace (pychromecast controllers/plex.py: TYPE_NEXT,
# TYPE_PREVIOUS, TYPE_DETAILS); sent without waiting for a reply, as PlexController does.
PLEX_NAMESPACE = "urn:x-cast:plex"
PLEX_NEXT = "NEXT"
PLEX_PREVIOUS = "PREVIOUS"
PLEX_DETAILS = "SHOWDETAILS"


# --- media namespace (urn:x-cast:com.google.cast.media) ----------------------------------------


def media_command(name: str) -> dict[str, Any]:
    """PLAY, PAUSE or STOP for the Companion command ``play``, ``pause`` or ``stop``."""
    return {"type": name.upper()}


def seek(position_s: float) -> dict[str, Any]:
    """SEEK to ``position_s`` seconds, playing on from there."""
    return {"type": "SEEK", "currentTime": position_s, "resumeState": "PLAYBACK_START"}


def plex_load_message(request: MediaRequest, message_type: str = "LOAD") -> dict[str, Any]:
    """The LOAD the Plex receiver app expects, built with pychromecast's own helper (same shape
    as ``PlexController``) and completed with what that helper only fills from a plexapi object:
    the server's machineIdentifier, the token and our container key."""
    offset_s = request.offset_ms / 1000
    content_type = {"music": "audio", "audio": "audio", "photo": "photo"}.get(
        request.media_type.lower(), "video")
    msg = media_to_chromecast_command(
        None, type=message_type, contentId=request.key, contentType=content_type,
        protocol=request.protocol, address=request.address, port=request.port,
        version=request.extra.get("serverVersion", "1.10.1.4602"))
    # The helper's offset is typed as whole seconds; the Plex app takes fractional ones too.
    msg["media"]["currentTime"] = offset_s
    custom = msg["media"]["customData"]
    custom["offset"] = offset_s
    custom["server"]["machineIdentifier"] = request.machine_identifier
    custom["server"]["accessToken"] = request.token
    custom["containerKey"] = request.container_key or request.key
    custom["providerIdentifier"] = request.provider_identifier or "com.plexapp.plugins.library"
    if request.extra.get("playQueueItemID", "").isdigit():
        custom["playQueueItemID"] = int(request.extra["playQueueItemID"])
    return msg


# --- receiver namespace (urn:x-cast:com.google.cast.receiver) ----------------------------------


def set_volume(key: str, value: Any) -> dict[str, Any]:
    """SET_VOLUME of one field: ``level`` (0..1) or ``muted``."""
    return {"type": "SET_VOLUME", "volume": {key: value}}


# --- the Plex receiver's namespace (urn:x-cast:plex) --------------------------------------------


def plex_skip(name: str) -> dict[str, Any]:
    """NEXT for ``skipNext``, PREVIOUS for ``skipPrevious``."""
    return {"type": PLEX_NEXT if name == "skipNext" else PLEX_PREVIOUS}


class PlexChannel(BaseController):
    """The Plex receiver's own namespace (urn:x-cast:plex): NEXT, PREVIOUS, SHOWDETAILS."""

    def __init__(self) -> None:
        super().__init__(PLEX_NAMESPACE, PLEX_APP_ID, app_must_match=True)

    def receive_message(self, _message: Any, _data: dict[str, Any]) -> bool:
        """Handle nothing: its MEDIA_STATUS also arrives on the media namespace, which we follow."""
        return False


# --- token hygiene --------------------------------------------------------------------------

_TOKEN_RE = re.compile(
    r"""((?:accessToken|X-Plex-Token|token)['"]?\s*[:=]\s*['"]?)[^'"&,}\s]+""", re.IGNORECASE)


class _RedactTokens(logging.Filter):
    """Masks Plex tokens in pychromecast's debug lines (it logs every message it sends, and our
    Plex LOAD carries the server token in customData)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _TOKEN_RE.sub(r"\1<redacted>", message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


# pychromecast's own loggers (named after its modules), not ours: the filter must sit on them.
_PYCHROMECAST_LOGGERS = ("pychromecast", "pychromecast.socket_client", "pychromecast.controllers",
                         "pychromecast.controllers.media", "pychromecast.controllers.receiver",
                         "pychromecast.controllers.plex")


def guard_pychromecast_logs() -> None:
    """Put the token filter on every pychromecast logger that can print a message we sent."""
    # Logger filters apply only to records created on that very logger, so each pychromecast
    # logger that can print a payload gets one; idempotent, so many adapters add one each.
    for name in _PYCHROMECAST_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactTokens) for f in logger.filters):
            logger.addFilter(_RedactTokens())
