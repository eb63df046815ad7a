"""The read-only view of a running bridge that the admin surface and the doctor take instead of the Bridge.

The Bridge satisfies it as it is (a structural Protocol): the bridge, which builds the admin
server, passes itself, and nothing that reports on the bridge imports the composition root.
Only ``fling_api`` acts: the admin's ``POST /api/fling`` is a fling like a controller's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from companion.visibility import VisibilitySource

if TYPE_CHECKING:
    # Types only: importing this view stays cheap for the doctor's command line.
    from companion.audit import AuditLog
    from companion.discovery.mdns import MdnsDiscovery
    from companion.faceslot import FaceSlot
    from companion.flinging import FlingService
    from companion.metrics import Metrics
    from companion.plextv.devices import PlexTvRegistrar
    from companion.registry import Registry
    from companion.security.decide import Decision
    from companion.security.probe import ProbeCache
    from companion.security.profiles import ProfileSet


class BridgeView(VisibilitySource, Protocol):
    """What the admin page, its API and the doctor read of a running bridge."""

    @property
    def registry(self) -> Registry:
        """The targets and servers the bridge knows."""

    @property
    def faces(self) -> Mapping[str, FaceSlot]:
        """The bridged targets by target id."""

    @property
    def flings(self) -> FlingService | None:
        """The fling service once started (profiles, policies, recent flings)."""

    @property
    def probe(self) -> ProbeCache:
        """The servers' measured TLS."""

    @property
    def profiles(self) -> ProfileSet:
        """The loaded device profiles and root stores."""

    @property
    def plextv(self) -> PlexTvRegistrar | None:
        """The plex.tv registration, when plextv.enabled."""

    @property
    def mdns(self) -> MdnsDiscovery | None:
        """The mDNS discovery while it runs."""

    @property
    def metrics(self) -> Metrics:
        """The Prometheus metrics."""

    @property
    def audit(self) -> AuditLog:
        """The audit log of flings."""

    async def fling_api(self, *, target_id: str, server_id: str, key: str, offset_ms: int = 0) -> Decision:
        """Fling ``key`` from a server to a bridged target, as the admin API asks."""


__all__ = ["BridgeView"]
