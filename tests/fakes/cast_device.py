"""FakeCastDevice: a Chromecast on loopback, speaking enough Cast v2 over TLS for pychromecast.

Frames are a 4-byte big-endian length followed by a ``CastMessage`` protobuf (pychromecast's own
generated module); payloads are JSON. The fake answers the connection, heartbeat, receiver and
media namespaces (and the Plex app's ``urn:x-cast:plex`` commands) the way a device does, echoing
each request's ``requestId``. ``State`` records what arrived (launches, LOAD payloads, volume,
player state); ``UseCases`` make it refuse loads, drop connections, stay silent or change its
media status on its own.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import struct
import uuid
from dataclasses import dataclass, field
from typing import Any

import trustme
from pychromecast.generated.cast_channel_pb2 import CastMessage

NS_CONNECTION = "urn:x-cast:com.google.cast.tp.connection"
NS_HEARTBEAT = "urn:x-cast:com.google.cast.tp.heartbeat"
NS_RECEIVER = "urn:x-cast:com.google.cast.receiver"
NS_MEDIA = "urn:x-cast:com.google.cast.media"
NS_PLEX = "urn:x-cast:plex"
RECEIVER_ID = "receiver-0"
PLEX_APP_ID = "9AC194DC"
DEFAULT_MEDIA_RECEIVER_APP_ID = "CC1AD845"

APP_NAMESPACES = {
    PLEX_APP_ID: [NS_MEDIA, NS_PLEX],
    DEFAULT_MEDIA_RECEIVER_APP_ID: [NS_MEDIA],
}
APP_NAMES = {PLEX_APP_ID: "Plex", DEFAULT_MEDIA_RECEIVER_APP_ID: "Default Media Receiver"}
SUPPORTED_MEDIA_COMMANDS = 1 | 2 | 4 | 8  # pause, seek, stream volume, stream mute
MAX_FRAME = 64 * 1024


@dataclass
class Received:
    namespace: str
    source: str
    destination: str
    payload: dict[str, Any]


@dataclass
class State:
    received: list[Received] = field(default_factory=list)  # every non-heartbeat message
    launches: list[str] = field(default_factory=list)  # app ids, in order
    loads: list[dict[str, Any]] = field(default_factory=list)  # full LOAD payloads
    connections: int = 0  # TLS connections accepted so far
    pings: int = 0
    errors: list[str] = field(default_factory=list)  # TLS errors, oversize frames, crashes
    app_id: str | None = None
    session_id: str | None = None
    transport_id: str | None = None
    volume_level: float = 0.5
    muted: bool = False
    media_session_id: int | None = None
    player_state: str = "IDLE"
    idle_reason: str | None = None
    current_time: float = 0.0
    duration: float | None = None
    content_id: str | None = None
    content_type: str | None = None
    metadata_type: int | None = None

    def commands(self, namespace: str = NS_MEDIA) -> list[str]:
        """The ``type`` of every message received on ``namespace``, in order."""
        return [r.payload.get("type", "") for r in self.received if r.namespace == namespace]

    def last(self, msg_type: str, namespace: str | None = None) -> dict[str, Any] | None:
        for r in reversed(self.received):
            if r.payload.get("type") == msg_type and (namespace is None or r.namespace == namespace):
                return r.payload
        return None


@dataclass
class UseCases:
    load_failed: bool = False  # answer LOAD with LOAD_FAILED
    silent: bool = False  # accept TLS connections, read everything, never answer


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.channels: set[str] = set()  # destination ids the sender CONNECTed to


class FakeCastDevice:
    """A Cast device on 127.0.0.1 (any port); ``start(port=...)`` can bring it back on the same one."""

    def __init__(self, *, name: str = "Living Room TV", model: str = "Chromecast Ultra",
                 cast_id: str | None = None) -> None:
        self.name = name
        self.model = model
        self.cast_id = cast_id or uuid.uuid4().hex
        self.host = "127.0.0.1"
        self.port = 0
        self.state = State()
        self.use_cases = UseCases()
        ca = trustme.CA()
        self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(self._ssl)
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._transports = 0

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, port or self.port,
                                                  ssl=self._ssl, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and cut every connection: the device is gone."""
        if self._server is not None:
            self._server.close()
        await self.drop()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def drop(self) -> None:
        """Cut every open connection abruptly (the device keeps listening)."""
        for conn in list(self._conns):
            conn.writer.transport.abort()
        # Aborting ends each handler's read; cancelling them instead upsets asyncio's stream
        # callback, which logs the cancellation as an error.
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=2.0)

    @property
    def connected(self) -> int:
        return len(self._conns)

    # --- use cases that act on their own -----------------------------------------------------

    async def change_media_status(self, *, player_state: str | None = None,
                                  current_time: float | None = None,
                                  duration: float | None = None,
                                  content_type: str | None = None,
                                  metadata_type: int | None = None) -> None:
        """Change what the device is playing and broadcast MEDIA_STATUS, as a device does when
        someone presses a button on its own remote."""
        st = self.state
        if st.media_session_id is None:
            st.media_session_id = 1
        if player_state is not None:
            st.player_state = player_state
        if current_time is not None:
            st.current_time = current_time
        if duration is not None:
            st.duration = duration
        if content_type is not None:
            st.content_type = content_type
        if metadata_type is not None:
            st.metadata_type = metadata_type
        if st.transport_id is None:
            return
        for conn in list(self._conns):
            if st.transport_id in conn.channels:
                self._send(conn, st.transport_id, "*", NS_MEDIA, self._media_status(0))

    # --- wire --------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        conn = _Conn(reader, writer)
        self._conns.add(conn)
        self.state.connections += 1
        try:
            while True:
                header = await reader.readexactly(4)
                (size,) = struct.unpack(">I", header)
                if size > MAX_FRAME:
                    self.state.errors.append(f"oversize frame: {size} bytes")
                    break
                msg = CastMessage()
                msg.ParseFromString(await reader.readexactly(size))
                self._handle(conn, msg)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the sender hung up, or we cut it
        except ssl.SSLError as err:
            self.state.errors.append(f"TLS error: {err!r}")  # e.g. a corrupted record
        except Exception as err:
            self.state.errors.append(f"fake crashed: {err!r}")
            raise
        finally:
            self._conns.discard(conn)
            self._handlers.discard(task)
            writer.transport.abort()

    def _send(self, conn: _Conn, source: str, destination: str, namespace: str,
              payload: dict[str, Any]) -> None:
        if self.use_cases.silent or conn.writer.transport.is_closing():
            return
        msg = CastMessage(protocol_version=CastMessage.CASTV2_1_0, source_id=source,
                          destination_id=destination, namespace=namespace,
                          payload_type=CastMessage.STRING, payload_utf8=json.dumps(payload))
        body = msg.SerializeToString()
        conn.writer.write(struct.pack(">I", len(body)) + body)

    def _handle(self, conn: _Conn, msg: CastMessage) -> None:
        try:
            data = json.loads(msg.payload_utf8)
        except ValueError:
            return
        if not isinstance(data, dict):
            return
        if msg.namespace == NS_HEARTBEAT:
            if data.get("type") == "PING":
                self.state.pings += 1
                self._send(conn, msg.destination_id, msg.source_id, NS_HEARTBEAT, {"type": "PONG"})
            return
        self.state.received.append(Received(msg.namespace, msg.source_id, msg.destination_id, data))
        if msg.namespace == NS_CONNECTION:
            if data.get("type") == "CONNECT":
                conn.channels.add(msg.destination_id)
            elif data.get("type") == "CLOSE":
                conn.channels.discard(msg.destination_id)
            return

        def reply(namespace: str, payload: dict[str, Any]) -> None:
            payload["requestId"] = data.get("requestId", 0)
            self._send(conn, msg.destination_id, msg.source_id, namespace, payload)

        if msg.namespace == NS_RECEIVER and msg.destination_id == RECEIVER_ID:
            self._receiver(data, reply)
        elif msg.namespace in (NS_MEDIA, NS_PLEX) and msg.destination_id == self.state.transport_id:
            self._media(msg.namespace, data, reply)

    # --- receiver namespace ------------------------------------------------------------------

    def _receiver_status(self) -> dict[str, Any]:
        st = self.state
        status: dict[str, Any] = {
            "volume": {"level": st.volume_level, "muted": st.muted, "controlType": "attenuation",
                       "stepInterval": 0.05},
            "isActiveInput": True,
            "isStandBy": False,
        }
        if st.app_id is not None:
            status["applications"] = [{
                "appId": st.app_id,
                "displayName": APP_NAMES.get(st.app_id, st.app_id),
                "isIdleScreen": False,
                "sessionId": st.session_id,
                "transportId": st.transport_id,
                "statusText": f"Ready to cast on {self.name}",
                "namespaces": [{"name": ns} for ns in APP_NAMESPACES.get(st.app_id, [])],
            }]
        return {"type": "RECEIVER_STATUS", "status": status}

    def _receiver(self, data: dict[str, Any], reply: Any) -> None:
        st = self.state
        kind = data.get("type")
        if kind == "GET_STATUS":
            reply(NS_RECEIVER, self._receiver_status())
        elif kind == "LAUNCH":
            app_id = str(data.get("appId", ""))
            st.launches.append(app_id)
            if app_id not in APP_NAMESPACES:
                reply(NS_RECEIVER, {"type": "LAUNCH_ERROR", "reason": "NOT_FOUND"})
                return
            if st.app_id != app_id:
                st.app_id = app_id
                st.session_id = str(uuid.uuid4())
                self._transports += 1
                st.transport_id = f"web-{self._transports}"
                self._end_media()
            reply(NS_RECEIVER, self._receiver_status())
        elif kind == "STOP":
            st.app_id = st.session_id = st.transport_id = None
            self._end_media()
            reply(NS_RECEIVER, self._receiver_status())
        elif kind == "SET_VOLUME":
            volume = data.get("volume") or {}
            if "level" in volume:
                st.volume_level = float(volume["level"])
            if "muted" in volume:
                st.muted = bool(volume["muted"])
            reply(NS_RECEIVER, self._receiver_status())
        else:
            reply(NS_RECEIVER, {"type": "INVALID_REQUEST", "reason": "INVALID_COMMAND"})

    # --- media namespace ---------------------------------------------------------------------

    def _end_media(self) -> None:
        st = self.state
        st.media_session_id = None
        st.player_state = "IDLE"
        st.current_time = 0.0
        st.duration = None
        st.content_id = st.content_type = None
        st.metadata_type = None

    def _media_status(self, request_id: int) -> dict[str, Any]:
        st = self.state
        statuses: list[dict[str, Any]] = []
        if st.media_session_id is not None:
            media: dict[str, Any] = {"contentId": st.content_id, "contentType": st.content_type,
                                     "streamType": "BUFFERED"}
            if st.duration is not None:
                media["duration"] = st.duration
            if st.metadata_type is not None:
                media["metadata"] = {"metadataType": st.metadata_type}
            status: dict[str, Any] = {
                "mediaSessionId": st.media_session_id, "playbackRate": 1,
                "playerState": st.player_state, "currentTime": st.current_time,
                "supportedMediaCommands": SUPPORTED_MEDIA_COMMANDS,
                "volume": {"level": 1, "muted": False}, "media": media,
            }
            if st.idle_reason is not None:
                status["idleReason"] = st.idle_reason
            statuses.append(status)
        return {"type": "MEDIA_STATUS", "status": statuses, "requestId": request_id}

    def _media(self, namespace: str, data: dict[str, Any], reply: Any) -> None:
        st = self.state
        kind = data.get("type")
        if kind == "GET_STATUS":
            reply(NS_MEDIA, self._media_status(0))
            return
        if kind == "LOAD":
            st.loads.append(data)
            if self.use_cases.load_failed:
                reply(NS_MEDIA, {"type": "LOAD_FAILED", "itemId": 1, "detailedErrorCode": 104})
                return
            media = data.get("media") or {}
            st.media_session_id = (st.media_session_id or 0) + 1
            st.content_id = media.get("contentId")
            st.content_type = media.get("contentType")
            st.duration = media.get("duration")
            st.metadata_type = (media.get("metadata") or {}).get("metadataType")
            st.current_time = float(data.get("currentTime") or media.get("currentTime") or 0)
            st.player_state = "PLAYING" if data.get("autoplay", media.get("autoplay", True)) \
                else "PAUSED"
            st.idle_reason = None
            reply(NS_MEDIA, self._media_status(0))
            return
        # Commands on the media namespace name the session; the Plex app's own namespace does not.
        if namespace == NS_MEDIA and (st.media_session_id is None
                                      or data.get("mediaSessionId") != st.media_session_id):
            reply(NS_MEDIA, {"type": "INVALID_REQUEST", "reason": "INVALID_MEDIA_SESSION_ID"})
            return
        if kind == "PLAY":
            st.player_state = "PLAYING"
        elif kind == "PAUSE":
            st.player_state = "PAUSED"
        elif kind == "SEEK":
            st.current_time = float(data.get("currentTime", st.current_time))
        elif kind in ("NEXT", "PREVIOUS") and namespace == NS_PLEX:
            st.current_time = 0.0  # the Plex app moves within its play queue and reports the new item
        elif kind == "SHOWDETAILS" and namespace == NS_PLEX:
            return  # the Plex app shows the item's page; playback is untouched (recorded in received)
        elif kind == "STOP":
            st.player_state, st.idle_reason = "IDLE", "CANCELLED"
            reply(NS_MEDIA, self._media_status(0))
            self._end_media()
            return
        else:
            reply(NS_MEDIA, {"type": "INVALID_REQUEST", "reason": "INVALID_COMMAND"})
            return
        reply(NS_MEDIA, self._media_status(0))
