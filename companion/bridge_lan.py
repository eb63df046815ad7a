"""The bridge's LAN glue: discovery sightings and BYEs into the registry, servers that move, and
the election of one face per target across the bridges of a LAN (companion.election).

A mixin of :class:`companion.bridge.Bridge`, which owns every attribute declared here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from companion.audit import AuditLog
from companion.config import Config
from companion.discovery.gdm import GdmResponder
from companion.election import Claims, outranks
from companion.errors import StateError, TrustError
from companion.metrics import Metrics
from companion.model import FaceMarks, Server, Sighting, Target
from companion.proto.gdm import Advert
from companion.registry import Registry
from companion.security.probe import ProbeCache, leaf_fingerprint

if TYPE_CHECKING:
    from companion.faceslot import FaceSlot

log = logging.getLogger(__name__)

MOVE_CHECK_INTERVAL = 60.0
MOVE_CHECKS_AT_ONCE = 8


def claim_lapse(target_expiry: float, search_interval: float) -> float:
    """How long another bridge's face may stay silent before its claim lapses and this bridge
    takes over. A live face answers every search, so its last answer came at most one search
    interval before it went: lapsing one interval early keeps the takeover within
    ``target_expiry`` of its going, while still leaving room for two missed answers."""
    if target_expiry >= 3 * search_interval:
        return target_expiry - search_interval
    return target_expiry


class LanGlue:
    """Sightings, BYEs, server moves and face claims of one bridge (a mixin of Bridge)."""

    config: Config
    registry: Registry
    metrics: Metrics
    probe: ProbeCache
    audit: AuditLog
    faces: dict[str, FaceSlot]
    bridge_id: str
    claims: Claims
    _claims_changed: asyncio.Event
    _refused: set[str]
    _started: bool
    _responder: GdmResponder | None
    _tasks: set[asyncio.Task[None]]
    _move_checks: dict[tuple[str, str, int], float]

    if TYPE_CHECKING:  # defined by the Bridge and its other mixins
        def _spawn(self, coro: Awaitable[None], name: str) -> None: ...
        def _wants_face(self, target: Target) -> bool: ...
        async def _open_face(self, target: Target) -> None: ...
        def _deregister(self, slot: FaceSlot, *, handed_over: bool = False) -> None: ...
        async def _close_slot(self, slot: FaceSlot, *, bye: bool = False, keep_streams: bool = False) -> None: ...

    def _sighted(self, sighting: Sighting) -> None:
        if sighting.face is not None:
            self._face_heard(sighting, sighting.face)  # a bridge's face is never bridged again
            return
        self.metrics.sightings.labels(source=sighting.source, kind=sighting.kind).inc()
        self.registry.observe(sighting, time.monotonic())

    def _bye(self, sighting: Sighting) -> None:
        if sighting.face is not None:
            claim = self.claims.withdrawn(sighting.face)
            if claim is not None:
                self._claims_changed.set()
                self._reconsider(claim.target_id, f"bridge {claim.bridge_id} said BYE for its face")
            return
        self.registry.forget(sighting)

    def _server_move_claimed(self, server: Server, sighting: Sighting) -> None:
        """A discovered server announced from another address: check its certificate there first."""
        now = time.monotonic()
        # Per claimed address: an impostor's claims never hold back the check of the real new address.
        key = (server.id, sighting.address, sighting.port)
        if now < self._move_checks.get(key, 0.0):
            return  # checked (or being checked) lately; a flood of claims costs one handshake a minute
        if len(self._move_checks) >= 1024:
            self._move_checks = {k: v for k, v in self._move_checks.items() if v > now}
        pending = sum(1 for t in self._tasks if t.get_name().startswith("server-move:"))
        if len(self._move_checks) >= 1024 or pending >= MOVE_CHECKS_AT_ONCE:
            log.debug("not checking server %s at %s now: too many checks", server.id, sighting.address)
            return
        self._move_checks[key] = now + MOVE_CHECK_INTERVAL
        self._spawn(self._verify_move(server, sighting), f"server-move:{server.id}")

    async def _verify_move(self, server: Server, sighting: Sighting) -> None:
        """Follow a server to a new address only when it shows the certificate it showed before."""
        where = f"{sighting.address}:{sighting.port}"
        timeout = self.config.timeouts.command
        try:
            known = self.probe.peek(server.id)
            before = known.fingerprint if known is not None else await leaf_fingerprint(
                server.address, server.port, timeout=timeout)
        except TrustError as exc:
            log.warning("server %s announced itself from %s, but its certificate at %s:%d is not known (%s); "
                        "it stays where it was", server.name or server.id, where, server.address, server.port, exc)
            return
        try:
            after = await leaf_fingerprint(sighting.address, sighting.port, timeout=timeout)
        except TrustError as exc:
            log.warning("ignored server %s announced from %s: no certificate there to prove it is the same "
                        "server (%s)", server.name or server.id, where, exc)
            return
        if after != before:
            log.warning("ignored server %s announced from %s: the certificate there is not the one it has at "
                        "%s:%d", server.name or server.id, where, server.address, server.port)
            return
        log.info("server %s moved from %s:%d to %s (same certificate)", server.name or server.id, server.address,
                 server.port, where)
        self.probe.invalidate(server.id)
        self.registry.move_server(server.id, sighting.address, sighting.port)

    # -- one face per target across bridges ---------------------------------------------------

    def _face_heard(self, sighting: Sighting, marks: FaceMarks) -> None:
        """Another bridge's face: remember its claim; yield ours if it outranks us."""
        new = self.claims.heard(marks, address=sighting.address, port=sighting.port, name=sighting.name,
                                now=time.monotonic())
        if new is not None:
            self._claims_changed.set()  # the lapse timer may need to run sooner
        slot = self.faces.get(marks.target_id) if marks.is_claim and marks.bridge_id != self.bridge_id else None
        if slot is None:
            return
        if outranks(marks.bridge_id, self.bridge_id, marks.target_id):
            self._yield(slot, f"bridge {marks.bridge_id} holds one at {sighting.address}:{sighting.port} "
                              "and ranks first for it")
        elif new is not None and slot.announced and self._responder is not None:
            # A rival that just opened a face (a start-up race): our HELLO makes it back off now
            # rather than at its next search.
            self._spawn(self._responder.hello(slot.advert), f"face-hello:{slot.target.id}")

    def _yield(self, slot: FaceSlot, why: str) -> None:
        if self.faces.get(slot.target.id) is not slot:
            return
        del self.faces[slot.target.id]
        log.info("face for %s: yielding it, %s", slot.target.name, why)
        self._deregister(slot, handed_over=True)
        # A stream already relayed to the target plays on: only the face moves to the other bridge.
        self._spawn(self._close_slot(slot, bye=slot.announced, keep_streams=True), f"face-close:{slot.target.id}")

    def _reconsider(self, target_id: str, why: str) -> None:
        """A claim on ``target_id`` went: take the face over if we see the target and now rank first."""
        target = self.registry.target(target_id)
        if (target is None or target_id in self.faces or target_id in self._refused or not self._started
                or not self._wants_face(target) or self.claims.beaten_by(target_id) is not None):
            return
        log.info("face for %s: taking it over, %s", target.name, why)
        self._spawn(self._open_face(target), f"face-open:{target.id}")

    async def _claims_loop(self) -> None:
        """Lapse the claims of bridges gone silent, each at its own deadline."""
        while True:
            self._claims_changed.clear()
            for claim in self.claims.lapsed(time.monotonic()):
                self._reconsider(claim.target_id, f"bridge {claim.bridge_id} has not been heard for "
                                                  f"{self.claims.lapse:g} s")
            due = self.claims.next_lapse()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None if due is None else max(0.0, due - time.monotonic())):
                    await self._claims_changed.wait()

    async def _expiry_loop(self) -> None:
        period = max(0.5, min(30.0, self.config.timeouts.target_expiry / 4))
        next_prune = 0.0
        while True:
            now = time.monotonic()
            if now >= next_prune:  # audit retention: at start, then daily
                next_prune = now + 86400.0
                try:
                    pruned = await asyncio.to_thread(self.audit.prune, datetime.now(UTC))
                except StateError as exc:
                    log.error("could not prune the audit log: %s", exc)
                else:
                    if pruned:
                        log.info("pruned %d fling record(s) older than %d days", pruned,
                                 self.config.audit_retention_days)
            await asyncio.sleep(period)
            self.registry.expire(time.monotonic())

    @property
    def gdm_responder(self) -> GdmResponder | None:
        """The GDM responder while it runs (the status page reads what it has answered)."""
        return self._responder

    def _adverts(self) -> list[Advert]:
        return [slot.advert for slot in self.faces.values() if slot.announced]
