"""mDNS discovery: the daemon's one AsyncZeroconf, browsing Chromecasts and Plex servers.

This module owns the only zeroconf instance of a bridge (DESIGN section 4). It browses
``_googlecast._tcp.local.`` (Chromecasts: TXT ``id`` is the Cast uuid, ``fn`` the friendly name,
``md`` the model) and ``_plexmediasvr._tcp.local.`` (Plex servers), turns each resolved service
into a :class:`~companion.model.Sighting`, and reports removals. The synchronous
:class:`zeroconf.Zeroconf` inside is lent to pychromecast through :attr:`MdnsDiscovery.zeroconf`;
pychromecast must never close it (its ``CastBrowser.stop_discovery`` would), so only
:meth:`MdnsDiscovery.stop` does, last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

# zeroconf is imported where it is used: with mDNS off, the daemon never loads it (3.8 MB of RSS).
if TYPE_CHECKING:
    from zeroconf import ServiceStateChange, Zeroconf
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from companion.model import Sighting

log = logging.getLogger(__name__)

CAST_SERVICE = "_googlecast._tcp.local."
PLEX_SERVER_SERVICE = "_plexmediasvr._tcp.local."
RESOLVE_TIMEOUT_MS = 3000
MAX_TXT_VALUE = 256  # TXT strings are at most 255 bytes on the wire; longer means garbage

SightingCallback = Callable[[Sighting], None]


@dataclass(frozen=True)
class MdnsSettings:
    """Where mDNS runs. ``interfaces`` are IPv4 addresses; empty means every interface."""

    enabled: bool = True
    interfaces: tuple[str, ...] = ()


class MdnsDiscovery:
    """Browses mDNS for Chromecasts and Plex servers and reports what appears and disappears.

    ``on_sighting`` is called (in the event loop) for every resolved service, again when its
    records change; ``on_gone`` with the last sighting of a service that said goodbye or expired.
    """

    def __init__(self, settings: MdnsSettings, on_sighting: SightingCallback,
                 on_gone: SightingCallback) -> None:
        self._settings = settings
        self._on_sighting = on_sighting
        self._on_gone = on_gone
        self._aiozc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._seen: dict[str, Sighting] = {}  # service instance name -> last sighting

    @property
    def zeroconf(self) -> Zeroconf:
        """The synchronous zeroconf instance, to lend to pychromecast (which must not close it)."""
        if self._aiozc is None:
            raise RuntimeError("MdnsDiscovery.zeroconf used before start() or after stop()")
        return self._aiozc.zeroconf

    @property
    def running(self) -> bool:
        """Whether zeroconf is browsing."""
        return self._aiozc is not None

    async def start(self) -> None:
        """Create the zeroconf instance and start browsing (a no-op when mDNS is disabled)."""
        if not self._settings.enabled or self._aiozc is not None:
            return
        from zeroconf import IPVersion
        from zeroconf.asyncio import AsyncServiceBrowser, AsyncZeroconf

        # IPv4 only: python-zeroconf cannot listen on ::1, and every Cast device and Plex
        # server we bridge is reachable over IPv4 on a home LAN.
        if self._settings.interfaces:
            self._aiozc = AsyncZeroconf(interfaces=list(self._settings.interfaces),
                                        ip_version=IPVersion.V4Only)
        else:
            self._aiozc = AsyncZeroconf(ip_version=IPVersion.V4Only)
        self._browser = AsyncServiceBrowser(
            self._aiozc.zeroconf, [CAST_SERVICE, PLEX_SERVER_SERVICE], handlers=[self._on_change])
        log.info("mDNS browsing %s and %s on %s", CAST_SERVICE, PLEX_SERVER_SERVICE,
                 ", ".join(self._settings.interfaces) or "all interfaces")

    async def stop(self) -> None:
        """Stop browsing, cancel pending resolves, and close the zeroconf instance (last)."""
        if self._browser is not None:
            await self._browser.async_cancel()
            self._browser = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._aiozc is not None:
            aiozc, self._aiozc = self._aiozc, None
            await aiozc.async_close()
        self._seen.clear()

    def _on_change(self, *, zeroconf: Zeroconf, service_type: str, name: str,
                   state_change: ServiceStateChange) -> None:
        # Called by zeroconf in the event loop; it must not await, so resolving is a task.
        from zeroconf import ServiceStateChange

        if state_change is ServiceStateChange.Removed:
            gone = self._seen.pop(name, None)
            if gone is not None:
                log.info("mDNS: %s %r (%s) is gone", gone.kind, gone.name, gone.address)
                self._on_gone(gone)
            return
        task = asyncio.get_running_loop().create_task(
            self._resolve(zeroconf, service_type, name), name=f"mdns-resolve:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, zc: Zeroconf, service_type: str, name: str) -> None:
        from zeroconf.asyncio import AsyncServiceInfo

        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(zc, RESOLVE_TIMEOUT_MS):
            log.debug("mDNS: %s did not resolve within %d ms", name, RESOLVE_TIMEOUT_MS)
            return
        sighting = sighting_from_service(service_type, name, info)
        if sighting is None:
            return
        if self._seen.get(name) == sighting:
            return  # a refresh of records we already reported
        self._seen[name] = sighting
        log.info("mDNS: %s %r at %s:%d", sighting.kind, sighting.name, sighting.address,
                 sighting.port)
        self._on_sighting(sighting)


def _txt(info: AsyncServiceInfo, *keys: str) -> str:
    """The first present TXT value among ``keys`` (case-insensitive), decoded; '' if none."""
    props = info.properties or {}
    wanted = {k.lower() for k in keys}
    for raw_key, raw_value in props.items():
        if raw_value is None or len(raw_value) > MAX_TXT_VALUE:
            continue
        try:
            key = raw_key.decode("utf-8").lower()
        except UnicodeDecodeError:
            continue
        if key in wanted:
            return raw_value.decode("utf-8", errors="replace").strip()
    return ""


def _instance_name(service_type: str, name: str) -> str:
    suffix = "." + service_type
    return name[: -len(suffix)] if name.endswith(suffix) else name


def sighting_from_service(service_type: str, name: str, info: AsyncServiceInfo) -> Sighting | None:
    """A Sighting from a resolved mDNS service, or None when it lacks an IPv4 address or a port."""
    from zeroconf import IPVersion

    addresses = info.parsed_addresses(IPVersion.V4Only)
    if not addresses or not info.port:
        log.debug("mDNS: %s resolved without an IPv4 address or port; ignored", name)
        return None
    instance = _instance_name(service_type, name)
    kind: Literal["chromecast", "server"]
    if service_type == CAST_SERVICE:
        kind = "chromecast"
        # The Cast uuid is the stable identity; the instance name embeds it too, which is the
        # fallback for devices that omit TXT ``id``.
        ident = _txt(info, "id") or instance
        display = _txt(info, "fn") or instance
        return Sighting(source="mdns", kind=kind, ident=ident, name=display, address=addresses[0],
                        port=info.port, model=_txt(info, "md"))
    kind = "server"
    # Plex Media Server's TXT keys are not documented; take the ones seen in the wild if present
    # and fall back to the instance name, which the registry merges with GDM by address.
    ident = _txt(info, "machineIdentifier", "resourceIdentifier", "Resource-Identifier", "id") \
        or instance
    return Sighting(source="mdns", kind=kind, ident=ident, name=_txt(info, "name") or instance,
                    address=addresses[0], port=info.port, version=_txt(info, "version"))
