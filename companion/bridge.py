"""The composition root: builds every part of one bridge, starts it in order and stops it in reverse.

Ownership is visible here: the HTTP client session, the timeline listener, the GDM responder and
scanner, the mDNS discovery (the daemon's one AsyncZeroconf), one face + one target adapter per
bridged target, the audit log, and the background tasks. Two Bridges can run in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import aiohttp
from cryptography import x509

from companion import __version__
from companion.admin.app import AdminServer
from companion.audit import AuditLog
from companion.config import Config
from companion.connections import ConnectionLimits
from companion.discovery.gdm import GdmResponder, GdmScanner
from companion.discovery.mdns import MdnsDiscovery, MdnsSettings
from companion.election import Claims, outranks
from companion.errors import (
    CompanionError,
    ConfigError,
    PolicyRefusal,
    ProtocolError,
    StateError,
    TargetError,
    TargetUnavailable,
    TrustError,
)
from companion.faces.app import Face, FaceLimits
from companion.faceslot import FaceSlot
from companion.flinging import Fling, FlingService, Prepared
from companion.limits import connection_budget, nofile_limit
from companion.metrics import Metrics
from companion.model import (
    Command,
    Controller,
    FaceMarks,
    MediaRequest,
    Server,
    Sighting,
    Target,
    TargetKind,
    stable_id,
)
from companion.outcomes import OutcomeWatch
from companion.playqueue import create_play_queue
from companion.plextv.api import PlexTvApi
from companion.plextv.devices import PlexTvRegistrar, plextv_off
from companion.plextv.link import bridge_identity, face_identity
from companion.plextv.store import PlexTvStore
from companion.proto import plexdirect
from companion.proto.companion import FaceIdentity
from companion.proto.gdm import Advert, face_identifier, is_mark
from companion.proto.timeline import PlayerState
from companion.proxy import ProxyService, ProxySettings, server_context
from companion.registry import Registry, config_server_id
from companion.relay import Relay
from companion.relay_scope import GrantScope
from companion.security.decide import Decision, Reason
from companion.security.probe import ProbeCache, leaf_fingerprint
from companion.security.profiles import ProfileSet, load_with_extra
from companion.state import StateDir
from companion.targets.base import TargetAdapter
from companion.targets.companion_player import CompanionPlayerTarget, TimelineListener
from companion.visibility import Channel, Provider, default_providers

log = logging.getLogger("companion.bridge")

_PORT_TRIES = 50
MOVE_CHECK_INTERVAL = 60.0
MOVE_CHECKS_AT_ONCE = 8
# How long a freshly started bridge listens before announcing any face: the answers to its first
# search (other bridges' faces among them) arrive well within it on a LAN, so it does not announce
# a face that a better-ranked bridge already holds.
_FIRST_LISTEN = 1.0


def local_address_towards(address: str) -> str:
    """The local IP a target reaches us on (a connected UDP socket sends nothing)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((address, 9))
            return str(probe.getsockname()[0])
    except OSError:
        return "127.0.0.1" if family == socket.AF_INET else "::1"


def load_extra_roots(paths: tuple[str, ...]) -> list[x509.Certificate]:
    """The configured extra root certificates (PEM files, several certificates per file allowed)."""
    roots: list[x509.Certificate] = []
    for path in paths:
        try:
            roots += x509.load_pem_x509_certificates(Path(os.path.expanduser(path)).read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load root certificates: {exc}", path=path,
                              key="security.extra_roots") from None
    return roots


def claim_lapse(target_expiry: float, search_interval: float) -> float:
    """How long another bridge's face may stay silent before its claim lapses and this bridge
    takes over. A live face answers every search, so its last answer came at most one search
    interval before it went: lapsing one interval early keeps the takeover within
    ``target_expiry`` of its going, while still leaving room for two missed answers."""
    if target_expiry >= 3 * search_interval:
        return target_expiry - search_interval
    return target_expiry


class Bridge:
    """One companion-bridge daemon instance."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.state = StateDir(config.state_path)
        self.registry = Registry(expiry=config.timeouts.target_expiry,
                                 max_discovered=config.limits.discovered_targets,
                                 per_address=config.limits.targets_per_address,
                                 max_servers=config.limits.discovered_servers)
        self.connections = ConnectionLimits(connection_budget(
            nofile_limit(), per_listener=config.limits.connections_per_listener,
            per_source=config.limits.connections_per_source))
        self.faces: dict[str, FaceSlot] = {}
        self.bridge_id = ""
        # Faces of other bridges on the LAN (their claims on targets); rebuilt with our id at start.
        self.claims = Claims("", lapse=claim_lapse(config.timeouts.target_expiry, config.gdm.search_interval))
        self._claims_changed = asyncio.Event()
        self._refused: set[str] = set()  # configured targets that turned out to be faces
        self._lan_heard = asyncio.Event()  # set once the first search's answers had time to arrive
        self._lan_timer: asyncio.TimerHandle | None = None
        self.metrics = Metrics()
        self.metrics.track_targets(lambda: [(slot.target.kind.value, slot.adapter.available)
                                            for slot in self.faces.values()])
        self.profiles: ProfileSet = ProfileSet({}, (), {}, {})
        self.audit = AuditLog(self.state.path / "audit.sqlite3", retention_days=config.audit_retention_days)
        self.probe = ProbeCache(timeout=config.timeouts.command)
        self.flings: FlingService | None = None
        self._session: aiohttp.ClientSession | None = None
        self._listener: TimelineListener | None = None
        self._responder: GdmResponder | None = None
        self._scanner: GdmScanner | None = None
        self.mdns: MdnsDiscovery | None = None
        self.relay: Relay | None = None
        self.admin: AdminServer | None = None
        self.proxy: ProxyService | None = None
        self._server_ssl: ssl.SSLContext | None = None
        self.proxy_settings = ProxySettings()
        # Where each face is visible, per channel; the owner of a channel may put its own provider here.
        self.visibility: dict[Channel, Provider] = default_providers()
        # The plex.tv registrar alone holds the account token (through its store): nothing on the
        # fling, relay or target path has a reference to it.
        self.plextv: PlexTvRegistrar | None = None
        self.started_at = time.time()
        self._tasks: set[asyncio.Task[None]] = set()
        self._face_lock = asyncio.Lock()
        # (server id, claimed address, port) -> no new move check before (monotonic)
        self._move_checks: dict[tuple[str, str, int], float] = {}
        self._started = False
        self.ready = asyncio.Event()

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every part; raises CompanionError (after undoing what started) on failure."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        cfg = self.config
        self.state.ensure()
        self.bridge_id = self.state.bridge_id()
        if not is_mark(self.bridge_id):
            raise StateError(f"{self.state.path / StateDir.IDENTITY} holds {self.bridge_id[:40]!r}, not an id "
                             "of letters, digits, '.', '_' and '-' (GDM adverts carry it); delete the file to get "
                             "a new one")
        self.claims = Claims(self.bridge_id, lapse=self.claims.lapse)
        configured = {stable_id(t.kind, f"config:{t.name}") for t in cfg.targets}
        dropped = self.state.prune_face_ports(configured, cfg.limits.discovered_targets)
        if dropped:
            log.warning("dropped %d stored face port(s) of discovered targets beyond limits.discovered_targets (%d)",
                        len(dropped), cfg.limits.discovered_targets)
        budget = self.connections.budget
        log.info("accepting at most %d TCP connections in all (half of the file limit %d), %d per listener, "
                 "%d per listener and address", budget.total, budget.nofile, budget.per_listener, budget.per_source)
        if cfg.plextv.enabled:
            self.plextv = PlexTvRegistrar(
                api=PlexTvApi(cfg.plextv.url, timeout=max(cfg.timeouts.command, 10.0)),
                store=PlexTvStore(self.state.path), identity=bridge_identity(cfg, self.bridge_id),
                refresh_interval=cfg.plextv.refresh_interval)
            await self.plextv.start()
            self.visibility["plextv"] = self.plextv.view
        else:
            self.visibility["plextv"] = plextv_off
        self.profiles = await asyncio.to_thread(self._load_profiles_for, cfg)
        await asyncio.to_thread(self.audit.open)
        if cfg.security.relay:
            self.relay = Relay(bind=cfg.http.bind, port=cfg.http.relay_port, state_dir=self.state.path,
                               extra_roots=load_extra_roots(cfg.security.extra_roots),
                               idle_timeout=cfg.security.relay_idle_timeout, allowed_hosts=cfg.http.allowed_hosts,
                               gate=self.connections.gate("relay"))
            await self.relay.start()
        self.flings = FlingService(config=cfg, profiles=self.profiles, registry=self.registry, audit=self.audit,
                                   probe=self.probe, metrics=self.metrics,
                                   relay_available=lambda: self.relay is not None)
        await self.flings.load_contradictions()
        self._add_configured_servers(cfg)
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, connect=cfg.timeouts.command),
            connector=aiohttp.TCPConnector(limit=256, enable_cleanup_closed=True),
        )
        # Verifying TLS for the bridge's own calls to servers (proxy poll, play queues).
        self._server_ssl = server_context(load_extra_roots(cfg.security.extra_roots))
        if cfg.proxy.enabled:
            self.proxy = ProxyService(session=self._session, ssl_context=self._server_ssl,
                                      servers=self.registry.servers, settings=self.proxy_settings)
        self._listener = TimelineListener(bind=cfg.http.bind, gate=self.connections.gate("timeline listener"))
        await self._listener.start()
        self.registry.on_added(self._target_added)
        self.registry.on_removed(self._target_removed)
        self.registry.on_changed(self._target_changed)
        self.registry.on_server_move(self._server_move_claimed)
        self._started = True
        self._add_configured_targets(cfg)
        if cfg.mdns.enabled:
            self.mdns = MdnsDiscovery(MdnsSettings(enabled=True, interfaces=cfg.interfaces), self._sighted,
                                      self._bye)
            await self.mdns.start()
        if cfg.gdm.enabled:
            self._responder = GdmResponder(cfg.gdm, self._adverts, interfaces=cfg.interfaces, limits=cfg.limits)
            await self._responder.start()
            # No is_own filter by Resource-Identifier: another bridge's face for a target has the same
            # one as ours, and it is exactly what the election must hear. Face marks route both.
            self._scanner = GdmScanner(cfg.gdm, self._sighted, self._bye, interfaces=cfg.interfaces)
            await self._scanner.start()
            self._spawn(self._claims_loop(), "face-claims")
            # A timer, not synchronisation: the answers to the first search have no end marker.
            self._lan_timer = asyncio.get_running_loop().call_later(
                min(_FIRST_LISTEN, cfg.gdm.search_interval), self._lan_heard.set)
        else:
            self._lan_heard.set()
        self._spawn(self._expiry_loop(), "registry-expiry")
        await self._settle_faces()
        if cfg.http.admin_port != 0:
            self.admin = AdminServer(self, bind=cfg.http.bind, port=cfg.http.admin_port,
                                     token=self.state.admin_token(), allowed_hosts=cfg.http.allowed_hosts,
                                     gate=self.connections.gate("admin"))
            await self.admin.start()
        self.ready.set()
        log.info("companion-bridge %s started: %d face(s), GDM %s", __version__, len(self.faces),
                 "on" if cfg.gdm.enabled else "off")

    async def stop(self) -> None:
        """Stop in order: GDM BYE, faces closed (long-polls released), adapters, tasks, session."""
        self._started = False
        if self._lan_timer is not None:
            self._lan_timer.cancel()
            self._lan_timer = None
        if self.admin is not None:
            await self.admin.stop()
            self.admin = None
        if self._scanner is not None:
            await self._scanner.stop()
            self._scanner = None
        if self._responder is not None:
            await self._responder.stop()  # sends BYE for every face
            self._responder = None
        if self.plextv is not None:
            await self.plextv.stop()  # the devices stay registered: only a face going away deletes one
            self.plextv = None
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self.proxy is not None:
            await self.proxy.stop()  # before the faces: a proxied command must not outlive its face
            self.proxy = None
        slots, self.faces = list(self.faces.values()), {}
        await asyncio.gather(*(self._close_slot(s) for s in slots))
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
        if self.relay is not None:
            await self.relay.stop()
            self.relay = None
        if self.mdns is not None:
            await self.mdns.stop()  # after the Chromecast adapters: they borrow its zeroconf
            self.mdns = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        self.audit.close()

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    # -- discovery ----------------------------------------------------------------------------

    @staticmethod
    def _load_profiles_for(config: Config) -> ProfileSet:
        """Shipped profiles plus the configured directories; a broken profile is skipped, not fatal."""
        profiles = load_with_extra(config.profiles_dirs)
        for error in profiles.errors:
            log.error("profile skipped: %s", error)
        return profiles

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

    # -- one face per target across bridges (companion.election) -----------------------------

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
        if self.plextv is not None:
            # The bridge taking the face over registers the same identity: that device is not ours to delete.
            self.plextv.forget_face(slot.advert.resource_identifier)
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

    # -- faces --------------------------------------------------------------------------------

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
            if self.plextv is not None:
                self.plextv.remove_face(slot.advert.resource_identifier)
            self._spawn(self._close_slot(slot, bye=slot.announced), f"face-close:{target.id}")

    def _target_changed(self, target: Target) -> None:
        slot = self.faces.get(target.id)
        if slot is not None:
            slot.target = target
            slot.adapter.target = target  # a player that moved to another address is followed there
            if self.plextv is not None:
                self.plextv.poke()  # the bridge's address on the target's LAN may have changed with it

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
        from companion.targets.chromecast import ChromecastTarget

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
        if self.proxy is not None:
            self.proxy.add_face(slot)
        if self.plextv is not None:
            # Registered once this bridge owns the face, like its GDM announcement.
            target_id = slot.target.id
            self.plextv.add_face(slot.advert.resource_identifier,
                                 face_identity(self.config, slot.advert.resource_identifier, slot.advert.name),
                                 lambda: self.face_uri(target_id))

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
            if self.plextv is not None:
                self.plextv.remove_face(slot.advert.resource_identifier)  # not a player: off plex.tv too
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
        if self.proxy is not None:
            await self.proxy.remove_face(slot.target.id)
        await slot.face.stop()
        await slot.adapter.stop()

    # -- commands -----------------------------------------------------------------------------

    def _handler(self, target_id: str) -> Callable[[Command], Awaitable[None]]:
        async def handle(command: Command) -> None:
            await self.handle_command(target_id, command)

        return handle

    async def handle_command(self, target_id: str, command: Command) -> Decision | None:
        """Carry one command to a target; for a fling, returns the decision it went out with."""
        slot = self.faces.get(target_id)
        if slot is None:
            raise TargetUnavailable("this player is no longer bridged")
        slot.commands += 1
        started = time.monotonic()
        outcome = "ok"
        try:
            if command.group in ("playback", "mirror") and command.name in ("playMedia", "details"):
                return await self.fling(slot, command)
            await slot.adapter.send(command)
            return None
        except CompanionError as exc:
            outcome = "error"
            slot.errors += 1
            slot.last_error = str(exc)
            raise
        finally:
            self.metrics.command_seconds.labels(kind=slot.target.kind.value, outcome=outcome).observe(
                time.monotonic() - started)

    async def fling(self, slot: FaceSlot, command: Command) -> Decision:
        """Decide (secure, relay, insecure or refused), rewrite the server block, carry it, flag it."""
        assert self.flings is not None
        prepared = await self.flings.prepare(slot.target, command)  # PolicyRefusal is flagged already
        plain_command_leg = slot.target.kind is TargetKind.COMPANION  # Companion commands are plain HTTP
        request = prepared.request
        watch = OutcomeWatch(request.key)  # before the command: the target may answer at once
        for older in slot.watches:
            older.supersede()
        slot.watches.append(watch)
        try:
            if slot.target.kind is TargetKind.CHROMECAST and command.name == "playMedia":
                from companion.targets.chromecast import play_queue_id  # loaded with the target already

                if not play_queue_id(request.container_key):
                    request = await self._with_play_queue(prepared)
                    prepared = dataclasses.replace(prepared, request=request)
            if prepared.decision.mode == "relay":
                request = self._relay_request(slot.target, prepared)
            await slot.adapter.play_media(request, command)
        except CompanionError as exc:
            slot.watches.remove(watch)
            await self.flings.finish(prepared.fling, f"error: {exc}", command_plain_http=plain_command_leg,
                                     server_address=prepared.server.address, command=command)
            raise
        fling = dataclasses.replace(prepared.fling, playback="watching")
        record_id = await self.flings.finish(fling, "ok", command_plain_http=plain_command_leg,
                                             server_address=prepared.server.address, command=command)
        self._spawn(self._follow_outcome(slot, prepared, command, watch, fling, record_id),
                    f"fling-outcome:{slot.target.id}")
        return prepared.decision

    async def _with_play_queue(self, prepared: Prepared) -> MediaRequest:
        """The request with a play queue made on its server (the Plex receiver plays play queues)."""
        assert self._session is not None
        assert self._server_ssl is not None
        request, server = prepared.request, prepared.server
        token = request.token  # the fling's own token only: a configured token never serves a LAN fling
        if not token:
            raise TargetError("the Chromecast needs a play queue and this fling carries no token for the server "
                              "to make one with")
        queue = await create_play_queue(
            self._session, server, machine_identifier=request.machine_identifier or server.id, key=request.key,
            media_type=request.media_type, token=token, ssl_context=self._server_ssl,
            timeout=self.config.timeouts.command)
        log.info("made play queue %s on %s for a fling that came without one", queue.play_queue_id,
                 server.name or server.address)
        extra = dict(request.extra)
        if queue.selected_item_id:
            extra["playQueueItemID"] = queue.selected_item_id
        return dataclasses.replace(request, container_key=queue.container_key, extra=extra)

    async def _follow_outcome(self, slot: FaceSlot, prepared: Prepared, command: Command, watch: OutcomeWatch,
                              fling: Fling, record_id: int | None) -> None:
        """Record what the target did with a fling; under ``preferred``, a direct-secure fling that
        failed there is re-flung once through the relay, and the failure counts against the profile."""
        assert self.flings is not None
        try:
            outcome = await watch.wait(self.config.timeouts.outcome)
        finally:
            with contextlib.suppress(ValueError):
                slot.watches.remove(watch)
        await self.flings.record_outcome(fling, record_id, outcome)
        if (outcome.result == "failed" and prepared.decision.mode == "direct-secure" and fling.refling_of is None
                and self.flings.policy_for(slot.target) == "preferred" and self.flings.relay_available()
                and self.relay is not None and prepared.profile.media_http and slot.target.id in self.faces):
            await self._refling_via_relay(slot, prepared, command, record_id, outcome.reason)

    async def _refling_via_relay(self, slot: FaceSlot, prepared: Prepared, command: Command,
                                 failed_id: int | None, why: str) -> None:
        """The one automatic retry: the same media through the relay, flagged in audit, log and metrics.

        It is the controller's fling carried on (no owner of its own), so the relay fetches with the
        controller's token, as the original fling's stream would have.
        """
        assert self.flings is not None
        failed = Reason("direct-secure-failed", f"the direct-secure fling failed on the device ({why}); "
                                                "re-flung once through the relay")
        relayed = Reason("relay-last-hop-plaintext",
                         "the bridge fetches the stream over verified https and relays it to the device over "
                         "plain http: the token stays with the bridge, but the media crosses the LAN unencrypted")
        decision = Decision("relay", False, False, (failed, relayed), "http", "", 0)
        fling = dataclasses.replace(prepared.fling, time=datetime.now(UTC), decision=decision, relied_on=(),
                                    refling_of=failed_id, playback="watching")
        retry = dataclasses.replace(prepared, decision=decision, fling=fling)
        plain_command_leg = slot.target.kind is TargetKind.COMPANION
        try:
            request = self._relay_request(slot.target, retry)
        except PolicyRefusal as exc:
            log.warning("cannot re-fling to %s through the relay: %s", slot.target.name, exc)
            return
        log.warning("fling to %s failed direct-secure (%s); re-flinging it once through the relay",
                    slot.target.name, why)
        self.metrics.relay_reflings.inc()
        watch = OutcomeWatch(request.key)
        slot.watches.append(watch)
        try:
            await slot.adapter.play_media(request, command)
        except CompanionError as exc:
            slot.watches.remove(watch)
            await self.flings.finish(dataclasses.replace(fling, playback=""), f"error: {exc}",
                                     command_plain_http=plain_command_leg, server_address=prepared.server.address,
                                     command=command)
            return
        record_id = await self.flings.finish(fling, "ok", command_plain_http=plain_command_leg,
                                             server_address=prepared.server.address, command=command)
        await self._follow_outcome(slot, retry, command, watch, fling, record_id)

    def _relay_request(self, target: Target, prepared: Prepared) -> MediaRequest:
        """Point the target at the relay: the capability travels as its token, the real one stays here.

        The grant fetches with the token the fling itself carried (the controller's, or the
        configured one for the owner's own admin-API fling) and covers only the flung item.
        """
        assert self.relay is not None
        server = prepared.server
        token = prepared.request.token
        if not token:  # flinging.prepare refuses (and records) such a fling before it gets here
            raise PolicyRefusal("the relay needs the token the controller sends with its fling")
        facts = self.probe.peek(server.id)
        server_hash = server.host.split(".")[0] if server.host else (facts.plex_direct_hash if facts else None)
        try:
            upstream_host = plexdirect.build_name(server.address, server_hash) if server_hash else server.address
        except ProtocolError:
            upstream_host = server.address
        grant = self.relay.grant(target_address=target.address, server_id=server.id, upstream_host=upstream_host,
                                 upstream_address=server.address, upstream_port=server.port, token=token,
                                 scope=GrantScope.for_fling(prepared.request.key, prepared.request.container_key))
        bridge_ip = local_address_towards(target.address)
        log.info("fling to %s goes through the relay (%s) at %s:%d", target.name, grant.label, bridge_ip,
                 self.relay.port)
        # Both Companion players and the Plex Cast receiver take a server block; the capability rides
        # as the token, so the relay base works without a path prefix.
        return dataclasses.replace(prepared.request, protocol="http", address=bridge_ip, port=self.relay.port,
                                   token=grant.capability)

    async def fling_api(self, *, target_id: str, server_id: str, key: str, offset_ms: int = 0) -> Decision:
        """A fling asked for by a script through the admin API, with the configured server token."""
        target = self.registry.find_target(target_id)
        if target is None or target.id not in self.faces:
            raise TargetUnavailable(f"no bridged target {target_id!r}")
        server = self.registry.server(server_id) or next(
            (s for s in self.registry.servers() if server_id in (s.base_url, s.name)), None)
        if server is None:
            raise PolicyRefusal(f"{server_id!r} is not a server this bridge knows")
        params = {"key": key, "offset": str(offset_ms), "type": "video", "machineIdentifier": server.id,
                  "protocol": server.scheme, "address": server.address, "port": str(server.port)}
        if server.token:
            params["token"] = server.token
        command = Command(group="playback", name="playMedia", params=params,
                          controller=Controller(client_id="admin-api", name="admin API", address="127.0.0.1"))
        decision = await self.handle_command(target.id, command)
        assert decision is not None
        return decision

    def _add_configured_servers(self, cfg: Config) -> None:
        for server in cfg.servers:
            address, host = server.host, ""
            try:
                named = plexdirect.parse_name(server.host)
                address, host = named.address, f"{named.hash}.plex.direct"
            except ProtocolError:
                pass  # an IP literal (the config allows nothing else)
            # Address, hash, scheme and token from the config only; the registry keeps the identifier
            # the server answered with from this address (never one claimed from elsewhere).
            self.registry.configure_server(Server(
                id=config_server_id(server.url), name=server.host, address=address, port=server.port,
                source="config", host=host, scheme="https" if server.scheme == "https" else "http",
                token=server.token))

    def _add_configured_targets(self, cfg: Config) -> None:
        now = time.monotonic()
        for t in cfg.targets:
            kind: Literal["companion", "chromecast"] = "chromecast" if t.kind == "chromecast" else "companion"
            self.registry.observe(Sighting(source="config", kind=kind, ident=f"config:{t.name}", name=t.name,
                                           address=t.address, port=t.port, profile=t.profile), now)

    async def reload(self, config: Config) -> None:
        """SIGHUP: take a new config's policies, timeouts, servers, targets and profiles without
        dropping any face.

        Listening addresses, ports and limits stay as they are (changing them needs a restart); targets
        removed from the config keep their faces until the next restart.
        """
        profiles = await asyncio.to_thread(self._load_profiles_for, config)
        self.config = dataclasses.replace(config, gdm=self.config.gdm, http=self.config.http,
                                          state_dir=self.config.state_dir, interfaces=self.config.interfaces,
                                          limits=self.config.limits,  # the caps are sized at start
                                          plextv=self.config.plextv)  # so is the plex.tv registrar
        self.profiles = profiles
        self.registry.expiry = self.config.timeouts.target_expiry
        self.claims.lapse = claim_lapse(self.config.timeouts.target_expiry, self.config.gdm.search_interval)
        if self.flings is not None:
            self.flings.config = self.config
            self.flings.profiles = profiles
        self._add_configured_servers(self.config)
        self._add_configured_targets(self.config)
        if self.proxy is not None:
            self.proxy.reconcile()  # servers given a token by this reload start their polls
        log.info("reloaded configuration from %s and %d profile(s)", config.source, len(profiles.profiles))
