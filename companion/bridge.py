"""The composition root: builds every part of one bridge, starts it in order and stops it in reverse.

Ownership is visible here: the HTTP client session, the timeline listener, the GDM responder and
scanner, the mDNS discovery (the daemon's one AsyncZeroconf), one face + one target adapter per
bridged target, the audit log, and the background tasks. Two Bridges can run in one process.
What the bridge does with them lives beside it: its faces (bridge_faces.py), its LAN glue of
discovery and face claims (bridge_lan.py), its faces on plex.tv and the servers' proxy
(bridge_publish.py), and its commands and flings (bridge_flings.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import ssl
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Literal

import aiohttp
from cryptography import x509

from companion import __version__
from companion.admin.app import AdminServer
from companion.audit import AuditLog
from companion.bridge_faces import FaceWiring, local_address_towards
from companion.bridge_flings import FlingCarrier
from companion.bridge_lan import LanGlue, claim_lapse
from companion.bridge_publish import Publication
from companion.config import Config
from companion.connections import ConnectionLimits
from companion.discovery.gdm import GdmResponder, GdmScanner
from companion.discovery.mdns import MdnsDiscovery, MdnsSettings
from companion.election import Claims
from companion.errors import ConfigError, ProtocolError, StateError
from companion.faceslot import FaceSlot
from companion.flinging import FlingService
from companion.limits import connection_budget, nofile_limit
from companion.metrics import Metrics
from companion.model import Server, Sighting, stable_id
from companion.parts import Parts, StartStopContext
from companion.plextv.devices import PlexTvRegistrar
from companion.proto import plexdirect
from companion.proto.gdm import is_mark
from companion.proxy import ProxyService, ProxySettings, server_context
from companion.registry import Registry, config_server_id
from companion.relay.server import Relay
from companion.security.probe import ProbeCache
from companion.security.profiles import ProfileSet, load_with_extra
from companion.state import StateDir
from companion.targets.companion_player import TimelineListener
from companion.visibility import Channel, Provider, default_providers

__all__ = ["Bridge", "FaceSlot", "claim_lapse", "load_extra_roots", "local_address_towards"]

log = logging.getLogger(__name__)

# How long a freshly started bridge listens before announcing any face: the answers to its first
# search (other bridges' faces among them) arrive well within it on a LAN, so it does not announce
# a face that a better-ranked bridge already holds.
_FIRST_LISTEN = 1.0


def load_extra_roots(paths: tuple[str, ...]) -> list[x509.Certificate]:
    """The configured extra root certificates (PEM files, several certificates per file allowed)."""
    roots: list[x509.Certificate] = []
    for path in paths:
        try:
            roots += x509.load_pem_x509_certificates(Path(os.path.expanduser(path)).read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load root certificates: {exc}", path=path,
                              key="security.extra_roots") from exc
    return roots


class Bridge(LanGlue, FaceWiring, Publication, FlingCarrier, StartStopContext):
    """One companion-bridge daemon instance (``async with Bridge(config) as bridge:`` runs one)."""

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
        self._parts: Parts | None = None  # what start() started, for stop()
        self.ready = asyncio.Event()

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every part; raises CompanionError (after undoing what started) on failure."""
        self._parts = Parts(log)
        try:
            await self._start(self._parts)
        except BaseException:
            await self.stop()
            raise

    def _own(self, parts: Parts, what: str, attr: str) -> None:
        """Stop the part held in ``self.<attr>`` at stop, then drop it.

        Registered before the part starts, so a part that fails half-way through its start is
        stopped too (its stop undoes what it did); the attribute is read at stop time.
        """

        async def stop() -> None:
            part = getattr(self, attr)
            if part is not None:
                try:
                    await part.stop()
                finally:
                    setattr(self, attr, None)

        parts.on_stop(what, stop)

    async def _start(self, parts: Parts) -> None:
        # Each part's stop is registered where it starts, so parts.stop() runs them in the reverse
        # order: admin, GDM (BYE for every face), plex.tv, tasks, proxy, faces, listener, relay,
        # mDNS, session, audit log.
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
        self.profiles = await asyncio.to_thread(self._load_profiles_for, cfg)
        await asyncio.to_thread(self.audit.open)
        parts.on_stop("the audit log", self.audit.close)
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, connect=cfg.timeouts.command),
            connector=aiohttp.TCPConnector(limit=256, enable_cleanup_closed=True),
        )
        parts.on_stop("the HTTP client session", self._close_session)
        # mDNS starts further down (once targets can get faces), but stops after the faces: the
        # Chromecast adapters borrow its zeroconf.
        self._own(parts, "mDNS discovery", "mdns")
        if cfg.security.relay:
            self.relay = Relay(bind=cfg.http.bind, port=cfg.http.relay_port, state_dir=self.state.path,
                               extra_roots=load_extra_roots(cfg.security.extra_roots),
                               idle_timeout=cfg.security.relay_idle_timeout, allowed_hosts=cfg.http.allowed_hosts,
                               gate=self.connections.gate("relay"))
            self._own(parts, "the relay", "relay")
            await self.relay.start()
        self.flings = FlingService(config=cfg, profiles=self.profiles, registry=self.registry, audit=self.audit,
                                   probe=self.probe, metrics=self.metrics,
                                   relay_available=lambda: self.relay is not None)
        await self.flings.load_contradictions()
        self._add_configured_servers(cfg)
        # Verifying TLS for the bridge's own calls to servers (proxy poll, play queues).
        self._server_ssl = server_context(load_extra_roots(cfg.security.extra_roots))
        self._listener = TimelineListener(bind=cfg.http.bind, gate=self.connections.gate("timeline listener"))
        self._own(parts, "the timeline listener", "_listener")
        await self._listener.start()
        parts.on_stop("the faces", self._close_faces)
        self._open_proxy(parts)  # stopped before the faces: a proxied command must not outlive its face
        parts.on_stop("the background tasks", self._cancel_tasks)
        await self._open_plextv(parts)
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
            self._own(parts, "the GDM responder", "_responder")  # its stop sends BYE for every face
            await self._responder.start()
            # No is_own filter by Resource-Identifier: another bridge's face for a target has the same
            # one as ours, and it is exactly what the election must hear. Face marks route both.
            self._scanner = GdmScanner(cfg.gdm, self._sighted, self._bye, interfaces=cfg.interfaces)
            self._own(parts, "the GDM scanner", "_scanner")
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
            self._own(parts, "the admin server", "admin")
            await self.admin.start()
        self.ready.set()
        log.info("companion-bridge %s started: %d face(s), GDM %s", __version__, len(self.faces),
                 "on" if cfg.gdm.enabled else "off")

    async def stop(self) -> None:
        """Stop every part in the reverse order of their start, each even when another failed to
        stop (each failure is logged): admin, GDM BYE, faces closed (long-polls released), session."""
        self._started = False
        if self._lan_timer is not None:
            self._lan_timer.cancel()
            self._lan_timer = None
        parts, self._parts = self._parts, None
        if parts is not None:
            await parts.stop()

    async def _cancel_tasks(self) -> None:
        """Cancel the background tasks and wait for them (a failed one was logged when it ended)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    async def _close_faces(self) -> None:
        """Close every face and its adapter; one failing to close does not keep the others open."""
        slots, self.faces = list(self.faces.values()), {}
        results = await asyncio.gather(*(self._close_slot(s) for s in slots), return_exceptions=True)
        for slot, result in zip(slots, results, strict=True):
            if isinstance(result, Exception):
                log.error("closing the face of %s failed: %s", slot.target.name, result, exc_info=result)
            elif isinstance(result, BaseException):
                raise result

    async def _close_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

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
