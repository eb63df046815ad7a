"""Where each face can be seen: one view per channel (LAN GDM, plex.tv, a server's companion proxy).

Pure: every view is computed from the running bridge's live state at the moment it is asked for
(no I/O, no cache), so the status page, ``/api/targets`` and the doctor findings never disagree
with each other. A channel that does not reach the face says why and gives the fix.

Each channel is one provider function; the bridge keeps a mapping channel -> provider
(``Bridge.visibility``), so the code that owns a channel (the plex.tv registration, the proxy
poller) can put its own provider in place of the default one here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from companion.config import Config
from companion.discovery.gdm import GdmResponder
from companion.faceslot import FaceSlot

Channel = Literal["gdm", "plextv", "proxy"]
CHANNELS: tuple[Channel, ...] = ("gdm", "plextv", "proxy")
# visible: a controller looking there finds the face now; missing: it does not, and ``fix`` says
# what would change that; off: the owner turned the channel off; pending: being set up right now.
VisibleState = Literal["visible", "missing", "off", "pending"]


@dataclass(frozen=True)
class ChannelView:
    """Whether one face is visible through one channel (for a proxy: through one server)."""

    channel: Channel
    state: VisibleState
    detail: str
    fix: str = ""
    checked_at: datetime | None = None  # when this was last confirmed by something that happened
    where: str = ""  # the server, for the proxy channel

    @property
    def visible(self) -> bool:
        """True when a controller looking through this channel finds the face now."""
        return self.state == "visible"


class ProxyViews(Protocol):
    """The servers' companion proxy poller, as far as visibility reads it."""

    def views(self, slot: FaceSlot, now: datetime) -> Sequence[ChannelView]:
        """One view per known server of one face."""


class VisibilitySource(Protocol):
    """What the providers read of the running bridge (the Bridge has it; the admin's view too)."""

    @property
    def config(self) -> Config:
        """The configuration the bridge runs with."""

    @property
    def gdm_responder(self) -> GdmResponder | None:
        """The GDM responder while it runs."""

    @property
    def proxy(self) -> ProxyViews | None:
        """The companion proxy poller, when proxy.enabled."""

    @property
    def visibility(self) -> Mapping[Channel, Provider]:
        """The provider of each channel."""


Provider = Callable[[VisibilitySource, FaceSlot, datetime], Sequence[ChannelView]]


def age_text(moment: datetime | None, now: datetime) -> str:
    """How long ago, for people ("12 s ago", "3 min ago"); "never" for None."""
    if moment is None:
        return "never"
    seconds = max(0, int((now - moment).total_seconds()))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    if seconds < 172800:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} d ago"


def _at(wall: float | None) -> datetime | None:
    return datetime.fromtimestamp(wall, UTC) if wall is not None else None


def gdm_view(bridge: VisibilitySource, slot: FaceSlot, now: datetime) -> Sequence[ChannelView]:
    """LAN GDM: the responder answers searches for every face and announces HELLO."""
    cfg = bridge.config.gdm
    if not cfg.enabled:
        return [ChannelView("gdm", "off", "GDM is turned off: apps that search the LAN do not see this face",
                            "set gdm.enabled: true")]
    responder = bridge.gdm_responder
    if responder is None:
        return [ChannelView("gdm", "missing", "the GDM responder is not running",
                            "see the log for why it did not start (UDP port "
                            f"{cfg.player_port} may be taken)")]
    searched = _at(responder.last_search_at)
    hello = _at(responder.last_hello_at)
    where = ", ".join(bridge.config.interfaces) or "all interfaces"
    detail = (f"answering GDM searches on UDP {cfg.player_port} ({where}) as {slot.advert.name!r}, port "
              f"{slot.advert.port}; {responder.searches_answered} search(es) answered, the last "
              f"{age_text(searched, now)}; HELLO sent {age_text(hello, now)}")
    latest = max((m for m in (searched, hello) if m is not None), default=None)
    return [ChannelView("gdm", "visible", detail, "", latest)]


def plextv_not_linked(bridge: VisibilitySource, slot: FaceSlot, now: datetime) -> Sequence[ChannelView]:
    """plex.tv until an account is linked: the apps that list players from plex.tv do not see it."""
    return [ChannelView("plextv", "missing",
                        "not linked to a Plex account, so plex.tv does not list this face (the Plex mobile "
                        "apps, Plexamp and app.plex.tv may not show it)", "run `companion link`")]


def proxy_view(bridge: VisibilitySource, slot: FaceSlot, now: datetime) -> Sequence[ChannelView]:
    """The servers' companion proxy: one view per known server."""
    service = bridge.proxy
    if service is None:
        return [ChannelView("proxy", "off", "polling the servers' companion proxy is turned off",
                            "set proxy.enabled: true")]
    return service.views(slot, now)


def default_providers() -> dict[Channel, Provider]:
    """The providers a bridge starts with (owners of a channel may replace theirs)."""
    return {"gdm": gdm_view, "plextv": plextv_not_linked, "proxy": proxy_view}


def face_visibility(bridge: VisibilitySource, slot: FaceSlot, now: datetime) -> tuple[ChannelView, ...]:
    """Every channel's view of one face, in CHANNELS order."""
    views: list[ChannelView] = []
    for channel in CHANNELS:
        provider = bridge.visibility.get(channel)
        if provider is not None:
            views.extend(provider(bridge, slot, now))
    return tuple(views)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def channel_json(view: ChannelView, now: datetime) -> dict[str, Any]:
    """``/api/targets`` shape of one channel view."""
    return {"channel": view.channel, "state": view.state, "visible": view.visible, "where": view.where,
            "detail": view.detail, "fix": view.fix,
            "last_checked": _iso(view.checked_at) if view.checked_at is not None else None,
            "age_seconds": round((now - view.checked_at).total_seconds(), 1) if view.checked_at else None}


def summary(views: Iterable[ChannelView]) -> str:
    """One line: where the face is visible, e.g. ``gdm, proxy (Office)``."""
    seen = [f"{v.channel} ({v.where})" if v.where else v.channel for v in views if v.visible]
    return ", ".join(seen) or "nowhere"
