"""The bridge's faces beyond GDM: their plex.tv devices (the registrar alone holds the account
token) and the Plex servers' Companion proxy (a poll link per server and announced face).

A mixin of :class:`companion.bridge.Bridge`, which owns every attribute declared here.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

import aiohttp

from companion.config import Config
from companion.parts import Parts
from companion.plextv.api import PlexTvApi
from companion.plextv.devices import PlexTvRegistrar, plextv_off
from companion.plextv.link import bridge_identity, face_identity
from companion.plextv.store import PlexTvStore
from companion.proxy import ProxyService, ProxySettings
from companion.registry import Registry
from companion.state import StateDir
from companion.visibility import Channel, Provider

if TYPE_CHECKING:
    from companion.faceslot import FaceSlot


class Publication:
    """plex.tv devices and server proxy links for the faces of one bridge (a mixin of Bridge)."""

    config: Config
    state: StateDir
    registry: Registry
    bridge_id: str
    visibility: dict[Channel, Provider]
    proxy_settings: ProxySettings
    proxy: ProxyService | None
    plextv: PlexTvRegistrar | None
    _session: aiohttp.ClientSession | None
    _server_ssl: ssl.SSLContext | None

    if TYPE_CHECKING:  # defined by the Bridge and its other mixins
        def _own(self, parts: Parts, what: str, attr: str) -> None: ...
        def face_uri(self, target_id: str) -> str:
            """Where a target's LAN reaches its face (companion.bridge_faces)."""

    def _open_proxy(self, parts: Parts) -> None:
        """The servers' Companion proxy, when configured; its links start as faces are announced."""
        if not self.config.proxy.enabled:
            return
        assert self._session is not None
        assert self._server_ssl is not None
        self.proxy = ProxyService(session=self._session, ssl_context=self._server_ssl,
                                  servers=self.registry.servers, settings=self.proxy_settings)
        self._own(parts, "the proxy", "proxy")

    async def _open_plextv(self, parts: Parts) -> None:
        """The plex.tv registrar, when linked; stopped before the faces close, the devices stay
        registered (only a face going away deletes one)."""
        cfg = self.config
        if not cfg.plextv.enabled:
            self.visibility["plextv"] = plextv_off
            return
        self.plextv = PlexTvRegistrar(
            api=PlexTvApi(cfg.plextv.url, timeout=max(cfg.timeouts.command, 10.0)),
            store=PlexTvStore(self.state.path), identity=bridge_identity(cfg, self.bridge_id),
            refresh_interval=cfg.plextv.refresh_interval)
        self._own(parts, "the plex.tv registrar", "plextv")
        await self.plextv.start()
        self.visibility["plextv"] = self.plextv.view

    def _publish(self, slot: FaceSlot) -> None:
        """An announced face: polled for on the servers' proxy and registered on plex.tv."""
        if self.proxy is not None:
            self.proxy.add_face(slot)
        if self.plextv is not None:
            # Registered once this bridge owns the face, like its GDM announcement.
            target_id = slot.target.id
            self.plextv.add_face(slot.advert.resource_identifier,
                                 face_identity(self.config, slot.advert.resource_identifier, slot.advert.name),
                                 lambda: self.face_uri(target_id))

    async def _unpublish(self, slot: FaceSlot) -> None:
        """A face closing: its proxy links stop."""
        if self.proxy is not None:
            await self.proxy.remove_face(slot.target.id)

    def _deregister(self, slot: FaceSlot, *, handed_over: bool = False) -> None:
        """A face gone for good: its plex.tv device is deleted. One handed over to another bridge is
        only forgotten: the bridge taking it over registers the same identity, not ours to delete."""
        if self.plextv is None:
            return
        if handed_over:
            self.plextv.forget_face(slot.advert.resource_identifier)
        else:
            self.plextv.remove_face(slot.advert.resource_identifier)

    def _target_moved(self) -> None:
        """A target changed address: the bridge's address on its LAN may have changed with it."""
        if self.plextv is not None:
            self.plextv.poke()
