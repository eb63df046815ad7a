"""The bridge's faces: one face + one target adapter per bridged target, opened when a target
appears (on a free port), announced once the LAN's other faces were heard, closed when it goes.

A mixin of :class:`companion.bridge.Bridge`, which owns every attribute declared here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import aiohttp

from companion import __version__
from companion.config import Config
from companion.connections import ConnectionLimits
from companion.discovery.gdm import GdmResponder
from companion.discovery.mdns import MdnsDiscovery
from companion.election import Claims
from companion.errors import CompanionError, StateError
from companion.faces.app import Face, FaceLimits
from companion.faceslot import FaceSlot
from companion.model import Command, FaceMarks, Target, TargetKind
from companion.proto.companion import FaceIdentity
from companion.proto.gdm import Advert, face_identifier
from companion.proto.timeline import PlayerState
from companion.relay.server import Relay
from companion.state import StateDir
from companion.targets.base import TargetAdapter
from companion.targets.companion_player import CompanionPlayerTarget, TimelineListener

if TYPE_CHECKING:
    from companion.security.decide import Decision

log = logging.getLogger(__name__)

_PORT_TRIES = 50


def local_address_towards(address: str) -> str:
    """The local IP a target reaches us on (a connected UDP socket sends nothing)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((address, 9))
            return str(probe.getsockname()[0])
    except OSError:
        return "127.0.0.1" if family == socket.AF_INET else "::1"


class FaceWiring:
    """Opening, announcing and closing the faces of one bridge (a mixin of Bridge)."""

    config: Config
    state: StateDir
    connections: ConnectionLimits
    faces: dict[str, FaceSlot]
    bridge_id: str
    claims: Claims
    mdns: MdnsDiscovery | None
    relay: Relay | None
    _session: aiohttp.ClientSession | None
    _listener: TimelineListener | None
    _responder: GdmResponder | None
    _refused: set[str]
    _started: bool
    _lan_heard: asyncio.Event
    _face_lock: asyncio.Lock
    _tasks: set[asyncio.Task[None]]

    if TYPE_CHECKING:  # defined by the Bridge and its other mixins
        def _spawn(self, coro: Awaitable[None], name: str) -> None: ...
        def _yield(self, slot: FaceSlot, why: str) -> None: ...
        def _publish(self, slot: FaceSlot) -> None: ...
        async def _unpublish(self, slot: FaceSlot) -> None: ...
        def _deregister(self, slot: FaceSlot, *, handed_over: bool = False) -> None: ...
        def _target_moved(self) -> None: ...
        async def handle_command(self, target_id: str, command: Command) -> Decision | None:
            """Carry one command to a target (companion.bridge_flings)."""

    def _wants_face(self, target: Target) -> bool:
        mode = self.config.faces
        if mode == "none":
            return False
        if mode == "non-companion":
            return target.kind is not TargetKind.COMPANION
        return True

    def _target_added(self, target: Target) -> None:
        if self._started and self._wants_face(target):
            holder = self.claims.beaten_by(target.id)
            if holder is not None:
                log.info("face for %s: leaving it to bridge %s, which holds one at %s:%d and ranks first "
                         "for it", target.name, holder.bridge_id, holder.address, holder.port)
                return
            self._spawn(self._open_face(target), f"face-open:{target.id}")

    def _target_removed(self, target: Target) -> None:
        if target.source != "config":
            self.state.forget_face_port(target.id)  # an expired target leaves faces.json
        slot = self.faces.pop(target.id, None)
        if slot is not None:
            log.info("target %s went away; closing its face", target.name)
            self._deregister(slot)
            self._spawn(self._close_slot(slot, bye=slot.announced), f"face-close:{target.id}")

    def _target_changed(self, target: Target) -> None:
        slot = self.faces.get(target.id)
        if slot is not None:
            slot.target = target
            slot.adapter.target = target  # a player that moved to another address is followed there
            self._target_moved()

    async def _settle_faces(self) -> None:
        """Wait for the faces of targets known at start (configured ones) to be open."""
        pending = [t for t in self._tasks if t.get_name().startswith("face-open:")]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    def _make_adapter(self, target: Target, on_state: Callable[[PlayerState], None],
                      on_available: Callable[[bool], None],
                      on_face: Callable[[FaceMarks], None] | None = None) -> TargetAdapter:
        assert self._session is not None
        if target.kind is TargetKind.COMPANION:
            return CompanionPlayerTarget(
                target, session=self._session, bridge_id=self.bridge_id, bridge_name=self.config.name,
                listener=self._listener, on_state=on_state, on_available=on_available,
                command_timeout=self.config.timeouts.command, on_face=on_face)
        # pychromecast (with protobuf and requests, about 8 MB resident) loads with the first
        # Chromecast target only: a bridge of Companion players never pays for it.
        from companion.targets.chromecast.adapter import ChromecastTarget

        return ChromecastTarget(
            target, zeroconf=self.mdns.zeroconf if self.mdns is not None else None, on_state=on_state,
            on_available=on_available, command_timeout=self.config.timeouts.command)

    async def _open_face(self, target: Target) -> None:
        async with self._face_lock:
            if (target.id in self.faces or not self._started or target.id in self._refused
                    or self.claims.beaten_by(target.id) is not None):
                return
            assert self._session is not None
            face_box: list[Face] = []

            def on_state(state: PlayerState) -> None:
                if face_box:
                    face_box[0].update_state(state)
                slot = self.faces.get(target.id)
                for watch in slot.watches if slot is not None else ():
                    watch.observe(state)

            def on_available(available: bool) -> None:
                if face_box:
                    face_box[0].set_available(available)

            def on_face(marks: FaceMarks) -> None:
                self._refuse_face_target(target, marks)

            try:
                adapter = self._make_adapter(target, on_state, on_available, on_face)
            except CompanionError as exc:
                log.warning("no face for %s: %s", target.name, exc)
                return
            identity = FaceIdentity(
                machine_identifier=face_identifier(target.id),
                name=f"{target.name}{self.config.face_suffix}",
                product="companion-bridge", version=__version__,
                platform=target.product or target.kind.value, platform_version=target.version,
                device_class=target.device_class or "stb", capabilities=adapter.capabilities,
                bridge_id=self.bridge_id, target_id=target.id,
            )
            face, port = await self._bind_face(target, identity)
            face_box.append(face)
            advert = Advert(resource_identifier=identity.machine_identifier, name=identity.name, port=port,
                            product=identity.product, version=identity.version,
                            capabilities=identity.capabilities, device_class=identity.device_class,
                            platform=identity.platform, platform_version=identity.platform_version,
                            marks=FaceMarks(bridge_id=self.bridge_id, target_id=target.id))
            slot = FaceSlot(target=target, adapter=adapter, face=face, advert=advert)
            self.faces[target.id] = slot
            await adapter.start()
            log.info("face %r for %s (%s:%d) listening on port %d", identity.name, target.name,
                     target.address, target.port, port)
            self._spawn(self._announce(slot), f"face-announce:{target.id}")

    async def _announce(self, slot: FaceSlot) -> None:
        """Put a new face on GDM once this bridge has heard the LAN's other faces (first search)
        and, for a configured player, once it has checked that the player is not a face itself."""
        await self._lan_heard.wait()
        if isinstance(slot.adapter, CompanionPlayerTarget):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.timeouts.command):
                    await slot.adapter.identity_checked.wait()
        if self.faces.get(slot.target.id) is not slot:
            return  # yielded or refused meanwhile
        holder = self.claims.beaten_by(slot.target.id)
        if holder is not None:
            self._yield(slot, f"bridge {holder.bridge_id} holds one at {holder.address}:{holder.port} and ranks "
                              "first for it")
            return
        slot.announced = True
        if self._responder is not None:
            await self._responder.hello(slot.advert)
        self._publish(slot)

    def face_uri(self, target_id: str) -> str:
        """Where a target's LAN reaches its face: ``http://<our address towards the target>:<face port>``."""
        slot = self.faces.get(target_id)
        if slot is None:
            return ""
        return f"http://{local_address_towards(slot.target.address)}:{slot.face.port}"

    def _refuse_face_target(self, target: Target, marks: FaceMarks) -> None:
        """A configured target that answers /resources as a bridge's face: never bridged."""
        if target.id in self._refused:
            return
        self._refused.add(target.id)
        whose = "this bridge" if marks.bridge_id == self.bridge_id else f"bridge {marks.bridge_id or '(unknown)'}"
        log.error("configured target %s (%s:%d) is a face of %s, not a player: refused; point targets: at the "
                  "real player instead", target.name, target.address, target.port, whose)
        slot = self.faces.pop(target.id, None)
        if slot is not None:
            self._deregister(slot)  # not a player: off plex.tv too
            self._spawn(self._close_slot(slot, bye=slot.announced), f"face-close:{target.id}")

    async def _bind_face(self, target: Target, identity: FaceIdentity) -> tuple[Face, int]:
        """Start the face on its stored port; if that is taken, move it to the next free one."""
        assert self._session is not None
        taken = {slot.face.port for slot in self.faces.values()}
        port = self.state.assign_face_port(target.id, self.config.http.face_port_base, taken=taken)
        last_error: OSError | None = None
        for _ in range(_PORT_TRIES):
            face = Face(identity, self._handler(target.id), bind=self.config.http.bind, port=port,
                        session=self._session, limits=FaceLimits(
                            push_timeout=self.config.timeouts.push,
                            subscribers_per_source=self.config.limits.subscribers_per_source),
                        allowed_hosts=self.config.http.allowed_hosts,
                        cors_origins=self.config.http.cors_origins,
                        gate=self.connections.gate(f"face {identity.name!r}"))
            try:
                await face.start()
            except OSError as exc:
                last_error = exc
                log.warning("face port %d for %s is in use (%s); trying the next one", port, target.name,
                            exc.strerror)
                taken.add(port)
                port = max(taken | set(self.state.face_ports().values())) + 1
                continue
            self.state.set_face_port(target.id, port)
            return face, port
        raise StateError(f"no free face port for {target.name} near {port}: {last_error}")

    async def _close_slot(self, slot: FaceSlot, *, bye: bool = False, keep_streams: bool = False) -> None:
        if bye and self._responder is not None:
            await self._responder.bye(slot.advert)
        if self.relay is not None and not keep_streams:
            self.relay.revoke_target(slot.target.address)
        await self._unpublish(slot)
        await slot.face.stop()
        await slot.adapter.stop()

    # -- commands -----------------------------------------------------------------------------

    def _handler(self, target_id: str) -> Callable[[Command], Awaitable[None]]:
        async def handle(command: Command) -> None:
            await self.handle_command(target_id, command)

        return handle
