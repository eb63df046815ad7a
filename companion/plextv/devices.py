"""The plex.tv device of every face: registered, its LAN connection published and refreshed, deleted when the face goes.

Owns one background task and its own :class:`PlexTvApi` session. Faces never wait for it: the
bridge only tells it that a face came, changed or went, and every plex.tv call it makes is
bounded by a timeout and retried with a capped backoff, so plex.tv being slow or down costs
nothing but the plex.tv listing.

Device token (docs/plextv.md, "Registering a face"): each face is its own plex.tv device, with the
face's Resource-Identifier as client identifier. The registrar creates a PIN *as the face*, claims
it with the account token (``PUT /api/v2/pins/link``, what entering the code at plex.tv/link does,
python-plexapi ``MyPlexAccount.link``), and polls the PIN as the face for the device's own token
(Music Assistant ``plextv.py`` and plexdlnaplayer poll per player the same way, but wait for a
person to type every code). The device token then publishes the connection
(``PUT /devices/<id>?Connection[][uri]=``), as those two sources do. The account token is used
for the claim, the account check and deletion only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from companion.errors import CompanionError, PlexTvError, PlexTvUnauthorized, StateError
from companion.faceslot import FaceSlot
from companion.plextv.api import PlexTvApi
from companion.plextv.store import AccountToken, DeviceRecord, PlexTvStore
from companion.proto.plextv import Account, Identity
from companion.visibility import ChannelView, VisibilitySource

log = logging.getLogger(__name__)

ADDRESS_CHECK = 30.0  # seconds between looks at the bridge's LAN address towards each target
BACKOFF_FIRST = 5.0
BACKOFF_MAX = 600.0
PIN_WAIT = 10.0  # seconds a claimed PIN may take to show its token
DELETE_TRIES = 5

FIX_LINK = "run `companion link` on the bridge host (or give the systemd credential plextv-token)"
FIX_RELINK = "plex.tv no longer accepts the account token: run `companion link` again"


@dataclass
class _Face:
    client_id: str
    identity: Identity
    uri: Callable[[], str]
    published: str = ""
    registered: bool = False
    last_refresh: datetime | None = None
    last_error: str = ""
    failures: int = 0
    next_at: float = 0.0


@dataclass
class _Gone:
    client_id: str
    tries: int = 0
    next_at: float = 0.0


@dataclass(frozen=True)
class FacePlexTv:
    """Where one face stands on plex.tv: what the status page, /api/targets and the doctor show."""

    enabled: bool
    linked: bool
    account: str
    registered: bool
    device_name: str
    connection: str
    last_refresh: datetime | None
    last_error: str
    fix: str


def channel_view(status: FacePlexTv) -> ChannelView:
    """The plex.tv channel of a face, in the shape every channel has (companion/visibility.py)."""
    if not status.linked:
        return ChannelView("plextv", "missing", "not linked to a Plex account, so plex.tv does not list this face "
                           "(the Plex mobile apps, Plexamp and app.plex.tv may not show it)"
                           + (f"; {status.last_error}" if status.last_error else ""), status.fix)
    if status.registered:
        return ChannelView("plextv", "visible", f"a player of the plex.tv account {status.account!r}, named "
                           f"{status.device_name!r}, at {status.connection}", "", status.last_refresh)
    if status.last_error:
        return ChannelView("plextv", "missing", f"not registered on plex.tv: {status.last_error}", status.fix)
    account = f" for the account {status.account!r}" if status.account else ""
    return ChannelView("plextv", "pending", f"being registered on plex.tv{account}", "")


def plextv_off(bridge: VisibilitySource, slot: FaceSlot, now: datetime) -> Sequence[ChannelView]:
    """The plex.tv channel when ``plextv.enabled`` is false."""
    return [ChannelView("plextv", "off", "registering faces on plex.tv is turned off in the config",
                        "set plextv.enabled: true, then run `companion link`")]


class PlexTvRegistrar:
    """Keeps one plex.tv device per face while an account is linked."""

    def __init__(self, *, api: PlexTvApi, store: PlexTvStore, identity: Identity, refresh_interval: float,
                 address_check: float | None = None, pin_wait: float = PIN_WAIT) -> None:
        self.api = api
        self.store = store
        self.identity = identity  # the bridge's own: used for the account's calls
        self.refresh_interval = refresh_interval
        self.address_check = address_check if address_check is not None else ADDRESS_CHECK
        self.pin_wait = pin_wait
        self._faces: dict[str, _Face] = {}
        self._gone: dict[str, _Gone] = {}
        self._forgotten: set[str] = set()
        self._token: AccountToken | None = None
        self.account: Account | None = None
        self.account_error = ""
        self._account_next = 0.0
        self._account_failures = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- what the bridge calls ------------------------------------------------------------------

    async def start(self) -> None:
        """Start the background task (returns at once)."""
        self._task = asyncio.create_task(self._run(), name="plextv-devices")

    async def stop(self) -> None:
        """Stop the task and close the session; devices stay registered (only a face going deletes one)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.api.close()

    def add_face(self, client_id: str, identity: Identity, uri: Callable[[], str]) -> None:
        """A face opened: register it (its connection URI is asked for at each publication)."""
        self._gone.pop(client_id, None)
        self._forgotten.discard(client_id)
        self._faces[client_id] = _Face(client_id, identity, uri)
        self._wake.set()

    def remove_face(self, client_id: str) -> None:
        """A face went away for good: delete its plex.tv device."""
        if self._faces.pop(client_id, None) is not None:
            self._gone[client_id] = _Gone(client_id)
            self._wake.set()

    def forget_face(self, client_id: str) -> None:
        """A face moved to another bridge: stop publishing it and drop its record, deleting nothing."""
        if self._faces.pop(client_id, None) is not None:
            self._forgotten.add(client_id)
            self._wake.set()

    def poke(self) -> None:
        """Something a connection URI depends on may have changed: look again now."""
        self._wake.set()

    @property
    def linked(self) -> bool:
        """Whether an account token is stored."""
        return self._token is not None

    def view(self, bridge: VisibilitySource, slot: FaceSlot, now: datetime) -> Sequence[ChannelView]:
        """This face's plex.tv channel (the bridge's visibility provider for ``plextv``)."""
        return [channel_view(self.status(slot.advert.resource_identifier))]

    def status(self, client_id: str) -> FacePlexTv:
        """This face's plex.tv standing, with the fix when it is not registered."""
        account = self.account.name if self.account else ""
        face = self._faces.get(client_id)
        name = face.identity.name if face else ""
        if self._token is None:
            return FacePlexTv(True, False, "", False, name, "", None, self.account_error, FIX_LINK)
        if self.account is None:
            if not self.account_error:
                return FacePlexTv(True, True, "", False, name, "", None, "", "the linked account is being checked")
            fix = (FIX_RELINK if "401" in self.account_error
                   else "the bridge retries by itself; check that this host reaches plex.tv")
            return FacePlexTv(True, True, "", False, name, "", None, self.account_error, fix)
        if face is None:
            return FacePlexTv(True, True, account, False, "", "", None, "", "")
        if face.registered:
            return FacePlexTv(True, True, account, True, name, face.published, face.last_refresh, face.last_error, "")
        wait = max(0.0, face.next_at - time.monotonic())
        fix = (f"plex.tv refused or failed the registration; the bridge retries in {wait:.0f} s"
               if face.last_error else "registration pending")
        return FacePlexTv(True, True, account, False, name, "", None, face.last_error, fix)

    # -- the task -------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                await self._round()
            except (CompanionError, OSError) as exc:
                log.warning("plex.tv registration round failed: %s", exc)
            except Exception:
                # This loop must outlive any surprise from plex.tv or a library: the faces do not depend on it.
                log.exception("plex.tv registration round failed unexpectedly; retrying later")
            delay = self._next_wake() - time.monotonic()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.05, delay))

    def _next_wake(self) -> float:
        now = time.monotonic()
        times = [now + self.address_check]
        times += [f.next_at for f in self._faces.values()]
        times += [g.next_at for g in self._gone.values() if g.tries < DELETE_TRIES]
        if self._token is not None and self.account is None:
            times.append(self._account_next)
        return min(times)

    def _backoff(self, failures: int) -> float:
        return float(min(BACKOFF_FIRST * 2.0 ** max(0, failures - 1), BACKOFF_MAX, self.refresh_interval))

    async def _round(self) -> None:
        try:
            token = await asyncio.to_thread(self.store.load)
        except StateError as exc:
            token = None
            self.account_error = str(exc)
        if token is None:
            if self._token is not None:
                log.info("plex.tv: the account token is gone (unlinked); faces are no longer published there")
            self._forget_account()
            return
        if not token.same_as(self._token):
            self._forget_account()
            self._token = token
        now = time.monotonic()
        if self.account is None:
            if now < self._account_next:
                return
            try:
                self.account = await self.api.user(self.identity, token)
            except PlexTvError as exc:
                self._account_failures += 1
                self.account_error = str(exc)
                self._account_next = now + (self.refresh_interval if isinstance(exc, PlexTvUnauthorized)
                                            else self._backoff(self._account_failures))
                log.warning("plex.tv: cannot check the linked account: %s", exc)
                return
            self._account_failures = 0
            self.account_error = ""
            log.info("plex.tv: linked to the account %r", self.account.name)
        records = await asyncio.to_thread(self.store.devices)
        await self._delete_gone(token, records)
        if self._forgotten & set(records):
            for client_id in self._forgotten & set(records):
                del records[client_id]
            await asyncio.to_thread(self.store.save_devices, records)
        self._forgotten.clear()
        changed = False
        for face in list(self._faces.values()):
            changed |= await self._refresh(face, token, records)
        if changed:
            await asyncio.to_thread(self.store.save_devices, records)

    def _forget_account(self) -> None:
        self._token = None
        self.account = None
        self._account_next = 0.0
        for face in self._faces.values():
            face.registered, face.published, face.next_at, face.failures = False, "", 0.0, 0

    async def _delete_gone(self, token: AccountToken, records: dict[str, DeviceRecord]) -> None:
        now = time.monotonic()
        for gone in list(self._gone.values()):
            record = records.get(gone.client_id)
            if record is None:
                del self._gone[gone.client_id]
                continue
            if gone.tries >= DELETE_TRIES or now < gone.next_at:
                continue  # kept in the records: `companion unlink` still deletes it
            try:
                await self.api.delete_device(self.identity, token, record.device_id)
            except PlexTvError as exc:
                gone.tries += 1
                gone.next_at = now + self._backoff(gone.tries)
                log.warning("plex.tv: cannot delete the device of %r yet (%d/%d): %s", record.name, gone.tries,
                            DELETE_TRIES, exc)
                continue
            log.info("plex.tv: deleted the device of %r (its face went away)", record.name)
            del records[gone.client_id]
            del self._gone[gone.client_id]
            await asyncio.to_thread(self.store.save_devices, records)  # at once, like a registration

    async def _refresh(self, face: _Face, token: AccountToken, records: dict[str, DeviceRecord]) -> bool:
        now = time.monotonic()
        uri = face.uri()
        if not uri or (now < face.next_at and uri == face.published):
            return False
        changed = False
        try:
            record = records.get(face.client_id)
            if record is None:
                record = await self._register(face, token)
                records[face.client_id] = record
                # Kept at once: a device plex.tv made must be deletable by `companion unlink` even if
                # the bridge stops before the round ends.
                await asyncio.to_thread(self.store.save_devices, records)
            elif record.name != face.identity.name:
                records[face.client_id] = record = replace(record, name=face.identity.name)
                changed = True
            try:
                await self.api.put_connection(face.identity, record.token, record.device_id, [uri])
            except PlexTvError as exc:
                if isinstance(exc, PlexTvUnauthorized) or "HTTP 404" in str(exc):
                    # The device was removed on plex.tv (its token with it): register it anew next time.
                    records.pop(face.client_id, None)
                    changed = True
                raise
        except PlexTvError as exc:
            face.failures += 1
            face.registered = False
            face.last_error = str(exc)
            face.next_at = time.monotonic() + self._backoff(face.failures)
            log.warning("plex.tv: cannot publish %r (attempt %d): %s", face.identity.name, face.failures, exc)
            return changed
        if uri != face.published:
            log.info("plex.tv: %r published at %s", face.identity.name, uri)
        face.published, face.registered, face.last_error, face.failures = uri, True, "", 0
        face.last_refresh = datetime.now(UTC)
        face.next_at = time.monotonic() + self.refresh_interval
        return changed

    async def _register(self, face: _Face, token: AccountToken) -> DeviceRecord:
        """A PIN created as the face, claimed by the account, polled as the face: the device's own token."""
        if not token.same_as(await asyncio.to_thread(self.store.load)):
            # `companion unlink` (or a new link) ran since this round began: make no device it would miss.
            raise PlexTvError("the account was unlinked or changed meanwhile; not registering")
        pin = await self.api.create_pin(face.identity)
        await self.api.claim_pin(self.identity, token, pin.code)
        deadline = time.monotonic() + self.pin_wait
        device_token: str | None = None
        while device_token is None:
            claimed = await self.api.check_pin(face.identity, pin.id)
            device_token = claimed.auth_token
            if device_token is None:
                if time.monotonic() > deadline:
                    raise PlexTvError(f"plex.tv accepted the claim of the code for {face.identity.name!r} but "
                                      f"handed out no device token within {self.pin_wait:g} s")
                await asyncio.sleep(0.5)  # plex.tv's own pace: clients poll a PIN about once a second
        devices = await self.api.devices(face.identity, device_token)
        device = next((d for d in devices if d.client_identifier == face.client_id), None)
        if device is None or not device.id:
            raise PlexTvError(f"after the claim, {face.identity.name!r} is not in the account's devices list")
        log.info("plex.tv: registered %r as device %s", face.identity.name, device.id)
        return DeviceRecord(face.client_id, device.id, face.identity.name, device_token)
