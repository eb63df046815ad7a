"""The registry: merges sightings (GDM, mDNS, config) into targets and servers by stable id.

It owns no sockets and no clock: callers pass ``now`` (monotonic seconds). Listeners hear about
targets appearing and going away; the bridge turns those into faces.

Anything on the LAN can lie, so discovery may add but never rewrite what the owner configured
(issue 12 rows 2 and 3): a configured server's address, hash, scheme and token come only from
the config (a sighting from its configured address may only teach it its identifier and name),
a sighting that claims a configured server's identifier from another address is logged and
ignored, and a BYE never removes a configured server. A discovered server moves to another
address only when the bridge has seen the same certificate there (``on_server_move``).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from companion.errors import ProtocolError
from companion.limits import ThrottledLog
from companion.model import Server, Sighting, Target, TargetKind, stable_id
from companion.proto import plexdirect

TargetListener = Callable[[Target], None]
MoveListener = Callable[[Server, Sighting], None]

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    target: Target
    last_seen: float
    pinned: bool  # configured targets never expire


class Registry:
    """Targets and servers known to one bridge."""

    def __init__(self, *, expiry: float, max_discovered: int = 32, per_address: int = 4,
                 max_servers: int = 16) -> None:
        self.expiry = expiry
        # Anything on the LAN can announce itself: discovered targets and servers are capped (the
        # configured ones never count); what is over a cap is refused and logged once a minute.
        self.max_discovered = max_discovered
        self.per_address = per_address
        self.max_servers = max_servers
        self.refused = 0
        self._refusals = ThrottledLog(log)
        self._targets: dict[str, _Entry] = {}
        self._servers: dict[str, Server] = {}
        self._server_seen: dict[str, float] = {}
        # Old id -> new id, when GDM reveals the machineIdentifier of a server known by address:
        # what was decided under the old id still belongs to that server.
        self._server_aliases: dict[str, str] = {}
        self._pinned: dict[str, str] = {}  # id a configured server is known by -> its config id
        self._config_alias: dict[str, str] = {}  # config id -> the id it is known by now
        self._moves: list[MoveListener] = []
        self._warned: set[tuple[str, str]] = set()  # (server id, address) already warned about
        self._added: list[TargetListener] = []
        self._removed: list[TargetListener] = []
        self._changed: list[TargetListener] = []

    # -- listeners ----------------------------------------------------------------------------

    def on_added(self, cb: TargetListener) -> None:
        """Call ``cb(target)`` when a target is added."""
        self._added.append(cb)

    def on_removed(self, cb: TargetListener) -> None:
        """Call ``cb(target)`` when a target is removed."""
        self._removed.append(cb)

    def on_changed(self, cb: TargetListener) -> None:
        """Call ``cb(target)`` when a sighting changes a known target."""
        self._changed.append(cb)

    def on_server_move(self, cb: MoveListener) -> None:
        """``cb(server, sighting)``: a discovered server was sighted at another address; the
        listener may call :meth:`move_server` once the certificate there proves the same server."""
        self._moves.append(cb)

    # -- sightings ----------------------------------------------------------------------------

    def observe(self, sighting: Sighting, now: float) -> None:
        """Add or refresh the target or server a discovery sighting names, within the limits."""
        if sighting.kind == "server":
            self._observe_server(sighting, now)
            return
        kind = TargetKind(sighting.kind)
        tid = stable_id(kind.value, sighting.ident)
        target = Target(
            id=tid, kind=kind, name=sighting.name or sighting.ident, address=sighting.address,
            port=sighting.port, source=sighting.source, ident=sighting.ident, product=sighting.product,
            version=sighting.version, platform=sighting.platform,
            platform_version=sighting.platform_version, device_class=sighting.device_class,
            model=sighting.model, capabilities=sighting.capabilities, profile=sighting.profile,
        )
        entry = self._targets.get(tid)
        if entry is None:
            if sighting.source != "config" and not self._room_for(sighting, now):
                return
            self._targets[tid] = _Entry(target, now, pinned=sighting.source == "config")
            for cb in list(self._added):
                cb(target)
            return
        if entry.pinned and sighting.source != "config":
            if (sighting.address, sighting.port) != (entry.target.address, entry.target.port):
                # Its identifier ("config:<name>") is easy to guess; only the config moves it.
                key = (tid, sighting.address)
                if key not in self._warned and len(self._warned) < 1024:
                    self._warned.add(key)
                    log.warning("ignored a %s sighting of the configured player %s from %s:%d: a configured "
                                "player's address comes only from the config", sighting.source,
                                entry.target.name, sighting.address, sighting.port)
                return
            # A configured target keeps its configured name/profile; discovery only refreshes it.
            target = replace(target, name=entry.target.name, source="config", profile=entry.target.profile)
        entry.last_seen = now
        if target != entry.target:
            entry.target = target
            for cb in list(self._changed):
                cb(target)

    def _room_for(self, sighting: Sighting, now: float) -> bool:
        """False (and a line logged at most once a minute) when a new discovered target is over a cap."""
        addresses = [e.target.address for e in self._targets.values() if not e.pinned]
        return self._room(sighting, now, addresses, self.max_discovered, "targets", "limits.discovered_targets")

    def forget(self, sighting: Sighting) -> None:
        """A BYE or an mDNS removal: the peer says it is gone (only from its own address)."""
        if sighting.kind == "server":
            server = self._servers.get(sighting.ident)
            if server is None:
                return
            if server.id in self._pinned:
                self._warn_once(server, sighting, "a BYE never removes a configured server")
            elif server.address == sighting.address:
                self._servers.pop(server.id, None)
            return
        tid = stable_id(sighting.kind, sighting.ident)
        entry = self._targets.get(tid)
        if entry is not None and not entry.pinned and entry.target.address == sighting.address:
            self._remove(tid)

    def expire(self, now: float) -> list[Target]:
        """Drop discovered targets not seen for ``expiry`` seconds; returns what went away."""
        gone = [tid for tid, e in self._targets.items() if not e.pinned and now - e.last_seen > self.expiry]
        return [self._remove(tid) for tid in gone]

    def _remove(self, tid: str) -> Target:
        entry = self._targets.pop(tid)
        for cb in list(self._removed):
            cb(entry.target)
        return entry.target

    # -- servers ------------------------------------------------------------------------------

    def _observe_server(self, sighting: Sighting, now: float) -> None:
        if sighting.ident not in self._servers and not self._room_for_server(sighting, now):
            return
        host = sighting.host if sighting.host.endswith(".plex.direct") else ""
        claimed = self._servers.get(sighting.ident) or self._servers.get(self._config_alias.get(sighting.ident, ""))
        at = (sighting.address, sighting.port)
        if claimed is not None and claimed.id in self._pinned and (claimed.address, claimed.port) != at:
            self._warn_once(claimed, sighting, "a configured server's address comes only from the config")
            return
        configured = next((s for s in self._servers.values()
                           if s.id in self._pinned and (s.address, s.port) == at), None)
        if configured is not None:
            # The configured server answering from its configured address: it may teach its
            # identifier (playMedia names it), name and version; nothing else.
            self._rekey(configured, sighting.ident)
            self._servers[sighting.ident] = replace(configured, id=sighting.ident,
                                                    name=sighting.name or configured.name,
                                                    version=sighting.version or configured.version)
            self._server_seen[sighting.ident] = now
            return
        # A server silent for longer than the expiry is gone: whoever answers now is a new sighting.
        if (claimed is not None and (claimed.address, claimed.port) != at
                and now - self._server_seen.get(claimed.id, now) <= self.expiry):
            for cb in list(self._moves):
                cb(claimed, sighting)  # it moves only once the certificate there is the same
            return
        existing = claimed or self.server_by_address(sighting.address, sighting.port)
        if existing is not None and existing.id != sighting.ident:
            self._servers.pop(existing.id, None)  # the host at this address answers to a new identifier
            self._alias(existing.id, sighting.ident)
        server = Server(
            id=sighting.ident, name=sighting.name, address=sighting.address, port=sighting.port,
            source=sighting.source, host=host or (existing.host if existing else ""),
            # A server that announces a plex.direct Host offers secure connections.
            scheme=existing.scheme if existing is not None else ("https" if host else "http"),
            version=sighting.version,  # a discovered server never holds a token
        )
        self._servers[server.id] = server
        self._server_seen[server.id] = now

    def _room_for_server(self, sighting: Sighting, now: float) -> bool:
        if self.server_by_address(sighting.address, sighting.port) is not None:
            return True  # replaces the entry at that address, adds none
        addresses = [s.address for s in self._servers.values() if s.source != "config"]
        return self._room(sighting, now, addresses, self.max_servers, "servers", "limits.discovered_servers")

    def _room(self, sighting: Sighting, now: float, addresses: list[str], cap: int, what: str, key: str) -> bool:
        """The caps targets and servers share: in total and per announcing address; a refusal is
        logged at most once a minute per kind and reason."""
        if len(addresses) >= cap:
            why = f"{cap} discovered {what} already ({key})"
        elif addresses.count(sighting.address) >= self.per_address:
            why = f"{self.per_address} discovered {what} at that address already (limits.targets_per_address)"
        else:
            return True
        self.refused += 1
        kind = "server" if sighting.kind == "server" else "target"
        self._refusals.log((kind, why), now, logging.WARNING, "ignored the %s %r announced from %s: %s",
                           sighting.kind, sighting.ident[:64], sighting.address, why)
        return False

    def _rekey(self, configured: Server, ident: str) -> None:
        if configured.id == ident:
            return
        config_id = self._pinned.pop(configured.id)
        self._servers.pop(configured.id, None)
        squatter = self._servers.pop(ident, None)
        if squatter is not None and (squatter.address, squatter.port) != (configured.address, configured.port):
            log.warning("server %s announced from %s:%d is the configured server at %s:%d; the sighting "
                        "from %s was dropped", ident, squatter.address, squatter.port, configured.address,
                        configured.port, squatter.address)
        self._pinned[ident] = config_id
        self._config_alias[config_id] = ident
        self._alias(configured.id, ident)

    def _alias(self, old: str, new: str) -> None:
        """Remember that ``old`` now answers as ``new`` (bounded: the oldest renames are forgotten)."""
        if len(self._server_aliases) >= 256:
            self._server_aliases.pop(next(iter(self._server_aliases)))
        self._server_aliases[old] = new

    def _warn_once(self, server: Server, sighting: Sighting, why: str) -> None:
        key = (server.id, sighting.address)
        if key in self._warned:
            return
        if len(self._warned) < 1024:
            self._warned.add(key)
        log.warning("ignored a %s %s for the configured server %s (%s:%d) from %s: %s",
                    sighting.source, "BYE" if why.startswith("a BYE") else "sighting", server.name or server.id,
                    server.address, server.port, sighting.address, why)

    def configure_server(self, server: Server) -> None:
        """Add or refresh a server from the config (``server.id`` is its config id); only the config
        sets its address, hash, scheme and token."""
        current = self._servers.get(self._config_alias.get(server.id, ""))
        if current is None:
            # Discovered already at the configured address: that is the configured server, and it
            # keeps the identifier it answered with.
            current = self.server_by_address(server.address, server.port)
        if current is not None and current.id in self._pinned and self._pinned[current.id] != server.id:
            current = None  # another configured entry with the same address (two URLs for one server)
        ident = current.id if current is not None else server.id
        if current is not None:
            server = replace(server, name=current.name or server.name, version=current.version)
        self._servers[ident] = replace(server, id=ident, source="config")
        self._pinned[ident] = server.id
        self._config_alias[server.id] = ident

    def move_server(self, ident: str, address: str, port: int) -> None:
        """A discovered server proved itself at a new address (same certificate): follow it there."""
        server = self._servers.get(ident)
        if server is None or ident in self._pinned:
            return
        self._servers[ident] = replace(server, address=address, port=port)

    def add_server(self, server: Server) -> None:
        """Add a server (configured, or found by discovery)."""
        self._servers[server.id] = server

    def update_server(self, server: Server) -> None:
        """Replace a server's entry (same id) with ``server``."""
        self._servers[server.id] = server

    def is_configured(self, server: Server) -> bool:
        """True for a server that came from the config (its address and token are the owner's)."""
        return server.id in self._pinned

    # -- queries ------------------------------------------------------------------------------

    def targets(self) -> list[Target]:
        """Every target known now."""
        return [e.target for e in self._targets.values()]

    def target(self, tid: str) -> Target | None:
        """The target with id ``tid``, or None."""
        entry = self._targets.get(tid)
        return entry.target if entry is not None else None

    def find_target(self, name_or_id: str) -> Target | None:
        """By id, peer identifier or (case-insensitive) name."""
        if name_or_id in self._targets:
            return self._targets[name_or_id].target
        for entry in self._targets.values():
            t = entry.target
            if name_or_id in (t.ident,) or t.name.lower() == name_or_id.lower():
                return t
        return None

    def servers(self) -> list[Server]:
        """Every server known now."""
        return list(self._servers.values())

    def server(self, sid: str) -> Server | None:
        """The server with id ``sid``, or None."""
        return self._servers.get(sid)

    def current_server_id(self, sid: str) -> str:
        """The id a server has now, for an id it was once known by."""
        for _ in range(8):  # a chain of renames, bounded
            if sid in self._servers or sid not in self._server_aliases:
                break
            sid = self._server_aliases[sid]
        return sid

    def server_by_address(self, address: str, port: int) -> Server | None:
        """The server at ``address``:``port``, or None."""
        for server in self._servers.values():
            if server.address == address and server.port == port:
                return server
        return None

    def resolve_server(self, machine_identifier: str, address: str, port: int) -> Server | None:
        """The known server a playMedia points at, or None (then the fling is refused: no SSRF).

        Matches the machineIdentifier when given, and requires the address to be the server's
        IP or its own plex.direct name; never resolves arbitrary names.
        """
        candidates = [self._servers[machine_identifier]] if machine_identifier in self._servers else []
        if not candidates:
            candidates = list(self._servers.values())
        ip = _address_ip(address)
        for server in candidates:
            if port != server.port:
                continue
            if ip is not None and ip == server.address:
                return server
            if address.lower() == server.host.lower() and server.host:
                return server
        return None


def _address_ip(address: str) -> str | None:
    """The IP an address names: an IP literal, or a dashed-IP plex.direct name."""
    try:
        return str(ipaddress.ip_address(address.strip("[]")))
    except ValueError:
        pass
    try:
        return plexdirect.parse_name(address).address
    except ProtocolError:
        return None


def config_server_id(url: str) -> str:
    """A stable id for a configured server before its machineIdentifier is known."""
    return "cfg-" + hashlib.sha256(url.encode()).hexdigest()[:16]
