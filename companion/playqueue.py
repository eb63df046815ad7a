"""Making a play queue on the server for a Chromecast fling that came without one.

The Plex receiver plays a play queue: its LOAD names one in ``customData.containerKey``
(research/companion-and-gdm.md section 5; pychromecast ``media_to_chromecast_command``), and its
skip controls move within it. A controller that flings a bare item (the admin API, some voice
controllers) gives none, so the bridge creates one the way python-plexapi's ``PlayQueue.create``
does: ``POST /playQueues?type=&uri=server://<machineIdentifier>/com.plexapp.plugins.library<key>``.
The token used is the one the fling itself carries for that server (or the one configured for
it), sent to that server only, in a header.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass
from urllib.parse import urlencode

import aiohttp

from companion.errors import ProtocolError, TargetError
from companion.model import Server
from companion.proto import plexdirect
from companion.proto.safexml import parse_xml

MAX_QUEUE_BYTES = 1024 * 1024
_TYPES = {"music": "audio", "audio": "audio", "photo": "photo"}


@dataclass(frozen=True)
class CreatedQueue:
    """The play queue a server created: the key a Chromecast LOAD names, its id and selected item."""

    container_key: str  # /playQueues/<id>?own=1&window=200 (as pychromecast's LOAD names it)
    play_queue_id: str
    selected_item_id: str


def parse_created_queue(body: bytes) -> CreatedQueue:
    """The queue a ``POST /playQueues`` answered (no DTDs, bounded)."""
    where = "play queue answer"
    if len(body) > MAX_QUEUE_BYTES:
        raise ProtocolError(f"{where}: {len(body)} bytes exceeds the {MAX_QUEUE_BYTES}-byte limit")
    root = parse_xml(body, where)
    queue_id = root.get("playQueueID", "")
    if root.tag != "MediaContainer" or not queue_id.isdigit():
        raise ProtocolError("play queue answer: no playQueueID")
    selected = root.get("playQueueSelectedItemID", "")
    return CreatedQueue(f"/playQueues/{queue_id}?own=1&window=200", queue_id, selected if selected.isdigit() else "")


async def create_play_queue(session: aiohttp.ClientSession, server: Server, *, machine_identifier: str, key: str,
                            media_type: str, token: str, ssl_context: ssl.SSLContext,
                            timeout: float) -> CreatedQueue:
    """Create a one-item play queue for ``key`` on ``server``; TargetError when the server will not."""
    host = f"[{server.address}]" if ":" in server.address else server.address
    query = {"type": _TYPES.get(media_type, "video"), "shuffle": "0", "repeat": "0", "continuous": "0",
             "own": "1", "uri": f"server://{machine_identifier}/com.plexapp.plugins.library{key}"}
    url = f"{server.scheme}://{host}:{server.port}/playQueues?{urlencode(query)}"
    kwargs: dict[str, object] = {}
    if server.scheme == "https":
        kwargs["ssl"] = ssl_context
        if server.host.endswith(".plex.direct"):
            with contextlib.suppress(ProtocolError):
                kwargs["server_hostname"] = plexdirect.build_name(server.address, server.host.split(".")[0])
    where = f"{server.name or server.address} ({server.address}:{server.port})"
    try:
        async with asyncio.timeout(timeout):
            async with session.post(url, headers={"X-Plex-Token": token, "Accept": "application/xml"},
                                    allow_redirects=False, **kwargs) as resp:  # type: ignore[arg-type]
                body = await resp.content.read(MAX_QUEUE_BYTES + 1)
                status = resp.status
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise TargetError(f"could not create a play queue on {where} for the Chromecast: "
                          f"{type(exc).__name__}") from exc
    if status >= 400:
        raise TargetError(f"{where} refused to create a play queue for the Chromecast (HTTP {status})")
    try:
        return parse_created_queue(body)
    except ProtocolError as exc:
        raise TargetError(f"{where} answered the play queue request oddly: {exc}") from exc
