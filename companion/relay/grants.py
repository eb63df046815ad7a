"""The relay's grants: which target may fetch from which server, for how long, and why one ended.

A capability (256 random bits) names one target address and one upstream server. Only that
target's TCP peer address may use it; it lapses after ``idle_timeout`` without use; a new fling to
the same target and server replaces it; a stopped face revokes it. Grants are looked up by the
digest of the capability, and the reasons of recently ended ones are kept (bounded) so a refused
target is told why. Logs name a grant by a short capability prefix, never in full.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from companion.errors import ProtocolError
from companion.relay.scope import GrantScope
from companion.relay.scrub import Rewriter

log = logging.getLogger(__name__)

REVOKED_MEMORY = 512  # how many revoked capabilities keep a specific denial reason
_SHOWN_CAP = 6


@dataclass(frozen=True, repr=False)
class Grant:
    """Permission for one target address to fetch playback paths of one server through the relay."""

    capability: str
    target_address: str
    server_id: str
    upstream_host: str  # the plex.direct name (or IP) the chain is verified for and SNI names
    upstream_address: str  # the IP actually connected to (no DNS)
    upstream_port: int
    token: str = field(repr=False)
    expires_at: float  # monotonic, as of the grant; each use pushes it by idle_timeout
    idle_timeout: float

    @property
    def label(self) -> str:
        """A loggable name: a short capability prefix, never the whole capability."""
        return self.capability[:_SHOWN_CAP] + "..."

    def __repr__(self) -> str:
        return (f"Grant({self.label}, target={self.target_address}, server={self.server_id}, "
                f"upstream={self.upstream_host}@{self.upstream_address}:{self.upstream_port})")


@dataclass
class Live:
    """A grant in use: when it was last used, its URL rewriter and the items it covers."""

    grant: Grant
    last_used: float
    rewriter: Rewriter
    scope: GrantScope | None = None  # None: the whole allow-list (no fling named an item)


class GrantTable:
    """The live grants by capability digest, and why recently ended ones ended."""

    def __init__(self, *, idle_timeout: float, clock: Callable[[], float]) -> None:
        self._idle_timeout = idle_timeout
        self._clock = clock
        self._live: dict[bytes, Live] = {}
        self._ended: OrderedDict[bytes, str] = OrderedDict()

    def add(
        self,
        *,
        target_address: str,
        server_id: str,
        upstream_host: str,
        upstream_address: str,
        upstream_port: int,
        token: str,
        replaces: str | None = None,
        scope: GrantScope | None = None,
    ) -> Grant:
        """A fresh grant; it replaces the pair's previous one and ``replaces`` if given."""
        target = str(ip_of(target_address, "target address"))
        upstream_ip = str(ip_of(upstream_address, "upstream address"))
        if not 0 < upstream_port < 65536:
            raise ProtocolError(f"relay grant: upstream port {upstream_port} is out of range")
        host = upstream_host.strip().rstrip(".").lower()
        if not host or any(c in host for c in "/@?#[] "):
            raise ProtocolError(f"relay grant: upstream host {upstream_host[:80]!r} is not a host name or IP")
        # A short token would also match random bytes in media and corrupt it while scrubbing.
        if len(token) < 8:
            raise ProtocolError("relay grant: the server token is missing or too short (under 8 characters)")
        self._sweep()
        for live in list(self._live.values()):
            old = live.grant
            if old.target_address == target and old.server_id == server_id:
                self.forget(old.capability, "replaced")
        if replaces is not None:
            self.forget(replaces, "replaced")
        now = self._clock()
        grant = Grant(
            capability=secrets.token_urlsafe(32),
            target_address=target,
            server_id=server_id,
            upstream_host=host,
            upstream_address=upstream_ip,
            upstream_port=upstream_port,
            token=token,
            expires_at=now + self._idle_timeout,
            idle_timeout=self._idle_timeout,
        )
        rewriter = Rewriter(grant.upstream_host, grant.upstream_address, grant.upstream_port)
        self._live[_key(grant.capability)] = Live(grant, now, rewriter, scope)
        log.info("relay grant %s: target %s, server %s via %s:%d", grant.label, target, server_id,
                 upstream_ip, upstream_port)
        return grant

    def find(self, capability: str) -> tuple[Live | None, str | None]:
        """The live grant of ``capability``, else None and why it ended (None: never known)."""
        key = _key(capability)
        live = self._live.get(key)
        return live, (None if live is not None else self._ended.get(key))

    def forget(self, capability: str, why: str) -> None:
        """End a grant (if live), remembering why."""
        key = _key(capability)
        live = self._live.pop(key, None)
        if live is None:
            return
        self._ended[key] = why
        while len(self._ended) > REVOKED_MEMORY:
            self._ended.popitem(last=False)
        log.info("relay grant %s ended: %s", live.grant.label, why)

    def forget_all(self, why: str) -> None:
        """End every grant."""
        for live in list(self._live.values()):
            self.forget(live.grant.capability, why)

    def revoke_target(self, target_address: str) -> None:
        """End every grant of a target (its face stopped)."""
        try:
            target = str(ip_of(target_address, "target address"))
        except ProtocolError:
            return
        for live in list(self._live.values()):
            if live.grant.target_address == target:
                self.forget(live.grant.capability, "target-stopped")

    def grants(self) -> list[Grant]:
        """The live grants, after ending the expired ones."""
        self._sweep()
        return [live.grant for live in self._live.values()]

    def expired(self, live: Live, now: float) -> bool:
        """Whether ``live`` went unused for longer than its idle timeout."""
        return now - live.last_used > live.grant.idle_timeout

    def still_live(self, live: Live) -> bool:
        """Whether ``live`` is still the grant of its capability (a dict lookup, safe from a thread)."""
        return self._live.get(_key(live.grant.capability)) is live

    def _sweep(self) -> None:
        now = self._clock()
        for live in list(self._live.values()):
            if self.expired(live, now):
                self.forget(live.grant.capability, "expired")


def ip_of(text: str, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """``text`` as an IP address (IPv4-mapped IPv6 unmapped); ProtocolError naming ``what`` if it is none."""
    try:
        ip = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError as exc:
        raise ProtocolError(f"relay grant: {what} {text[:80]!r} is not an IP address") from exc
    return unmapped(ip)


def unmapped(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The IPv4 address behind an IPv4-mapped IPv6 one; any other address as it is."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # a dual-stack socket shows IPv4 peers as ::ffff:a.b.c.d
    return ip


def _key(capability: str) -> bytes:
    # Look grants up by digest so the lookup's timing says nothing about the capability's bytes.
    return hashlib.sha256(capability.encode("utf-8", "surrogateescape")).digest()


__all__ = ["REVOKED_MEMORY", "Grant", "GrantTable", "Live", "ip_of", "unmapped"]
