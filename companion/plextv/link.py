"""``companion link`` and ``companion unlink``: the PIN flow that links the bridge to a Plex account, and its undoing.

Link: create a PIN as the bridge, show the code and where to enter it, poll until the code is
claimed, expired or the wait ends, check the token (``GET /api/v2/user``), store it (0600).
Unlink: delete every plex.tv device the bridge registered (its records, plus every face identity
it ever had), then the token. Every failure is a PlexTvError with a message that says what to do.
"""

from __future__ import annotations

import asyncio
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from companion import __version__
from companion.config import Config
from companion.errors import (
    CompanionError,
    PinExpired,
    PlexTvDenied,
    PlexTvError,
    PlexTvUnauthorized,
    PlexTvUnreachable,
)
from companion.plextv.api import PlexTvApi
from companion.plextv.store import AccountToken, PlexTvStore
from companion.proto.plextv import Account, Identity, Pin

POLL_INTERVAL = 1.0  # python-plexapi's MyPlexPinLogin polls once a second too
PROGRESS_EVERY = 10.0  # seconds between progress lines when stderr is not a terminal


def bridge_identity(config: Config, bridge_id: str) -> Identity:
    """The bridge's own identity towards plex.tv (a controller-like client; it provides nothing)."""
    return Identity(client_id=bridge_id, name=config.name, product="companion-bridge", version=__version__,
                    platform=platform.system() or "Linux", platform_version=platform.release())


def face_identity(config: Config, client_id: str, name: str) -> Identity:
    """A face's identity towards plex.tv: its Resource-Identifier, its name, and the player services."""
    return Identity(client_id=client_id, name=name, product="companion-bridge", version=__version__,
                    platform=platform.system() or "Linux", platform_version=platform.release(),
                    provides="client,player,pubsub-player")


@dataclass(frozen=True)
class Linked:
    """What linking did: the account linked and where its token was saved."""

    account: Account
    saved_to: Path


class _Progress:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self._last = -PROGRESS_EVERY  # the first line at once, then one every PROGRESS_EVERY

    def show(self, waited: float, left: float) -> None:
        if self.tty:
            self.out.write(f"\rwaiting for the code to be entered: {waited:3.0f} s, {left:3.0f} s left ")
            self.out.flush()
        elif waited - self._last >= PROGRESS_EVERY:
            self._last = waited
            self.out.write(f"waiting for the code to be entered ({waited:.0f} s, {left:.0f} s left)\n")
            self.out.flush()

    def done(self) -> None:
        if self.tty:
            self.out.write("\n")


async def link(api: PlexTvApi, store: PlexTvStore, identity: Identity, *, timeout: float,
               out: TextIO = sys.stderr, poll_interval: float = POLL_INTERVAL) -> Linked:
    """Run the PIN flow; returns the account and where the token went. Raises PlexTvError with the fix."""
    try:
        pin = await api.create_pin(identity)
    except PlexTvError as exc:
        raise _explained(exc, api) from exc
    validity = f" (valid for {pin.expires_in // 60} min)" if pin.expires_in else ""
    out.write(f"Go to {api.link_page} and enter this code: {pin.code}{validity}\n")
    out.flush()
    token = await _wait_for_claim(api, identity, pin, timeout=timeout, out=out, poll_interval=poll_interval)
    account_token = AccountToken(token)
    try:
        account = await api.user(identity, account_token)
    except PlexTvUnauthorized as exc:
        raise PlexTvUnauthorized("plex.tv handed out a token for the code and then rejected it (401): run "
                                 "`companion link` again; if it happens again, sign out of other sessions at "
                                 "https://app.plex.tv and retry") from exc
    except PlexTvError as exc:
        raise _explained(exc, api) from exc
    saved = await asyncio.to_thread(store.save, account_token)
    return Linked(account, saved)


async def _wait_for_claim(api: PlexTvApi, identity: Identity, pin: Pin, *, timeout: float, out: TextIO,
                          poll_interval: float) -> str:
    progress = _Progress(out)
    started = time.monotonic()
    expires = started + pin.expires_in if pin.expires_in else None
    try:
        while True:
            now = time.monotonic()
            if expires is not None and now >= expires:
                raise PinExpired(f"the code {pin.code} expired before it was entered at {api.link_page}: run "
                                 "`companion link` again and enter the new code in time")
            if now - started >= timeout:
                raise PinExpired(f"nobody entered the code {pin.code} at {api.link_page} within {timeout:g} s: "
                                 "run `companion link` again (give more time with --timeout S)")
            try:
                checked = await api.check_pin(identity, pin.id)
            except PinExpired as exc:
                raise PinExpired(f"the code {pin.code} expired before it was entered at {api.link_page}: run "
                                 "`companion link` again and enter the new code in time") from exc
            except PlexTvError as exc:
                raise _explained(exc, api) from exc
            if checked.auth_token:
                return checked.auth_token
            left = timeout - (now - started)
            if expires is not None:
                left = min(left, expires - now)
            progress.show(now - started, left)
            await asyncio.sleep(poll_interval)  # the PIN protocol is polled; plex.tv asks for no faster
    finally:
        progress.done()


def _explained(exc: PlexTvError, api: PlexTvApi) -> PlexTvError:
    if isinstance(exc, PlexTvUnreachable):
        return PlexTvUnreachable(f"{exc}. Check this host's internet access and DNS (or plextv.url in the "
                                 "config), then run `companion link` again")
    if isinstance(exc, PlexTvDenied):
        return PlexTvDenied(f"plex.tv denied the link ({exc}). The account may not allow new devices, or this "
                            f"client was refused; check the account at {api.base_url} and run `companion link` again")
    if isinstance(exc, PlexTvUnauthorized):
        return PlexTvUnauthorized(f"plex.tv refused the link with 401 Unauthorized ({exc}): run "
                                  "`companion link` again")
    return exc


@dataclass(frozen=True)
class Unlinked:
    """What unlinking did: the devices deleted from the account and whether the token was removed."""

    deleted: tuple[str, ...]
    token_removed: bool


async def unlink(api: PlexTvApi, store: PlexTvStore, identity: Identity, face_ids: set[str]) -> Unlinked:
    """Delete every device this bridge registered on the account, then the token and the records."""
    token = await asyncio.to_thread(store.load)
    if token is None:
        raise CompanionError("this bridge is not linked to a Plex account (no token in "
                             f"{store.token_file} nor a systemd credential): nothing to unlink")
    records = await asyncio.to_thread(store.devices)
    ours = set(records) | face_ids
    try:
        devices = await api.devices(identity, token)
    except PlexTvUnauthorized as exc:
        names = ", ".join(sorted(r.name for r in records.values())) or "none recorded"
        raise PlexTvUnauthorized(f"plex.tv no longer accepts the account token (401), so the bridge cannot delete "
                                 f"its devices ({names}); remove them at https://app.plex.tv (Settings, Devices), "
                                 f"then delete {store.token_file}") from exc
    except PlexTvError as exc:
        raise _explained(exc, api) from exc
    deleted: list[str] = []
    failed: list[str] = []
    for device in devices:
        if device.client_identifier not in ours:
            continue
        try:
            await api.delete_device(identity, token, device.id)
        except PlexTvError as exc:
            failed.append(f"{device.name}: {exc}")
            continue
        deleted.append(device.name or device.client_identifier)
        records.pop(device.client_identifier, None)
    if failed:
        await asyncio.to_thread(store.save_devices, records)
        raise PlexTvError("could not delete every device, so the token is kept; run `companion unlink` again: "
                          + "; ".join(failed))
    await asyncio.to_thread(store.save_devices, {})
    removed = await asyncio.to_thread(store.remove)
    return Unlinked(tuple(deleted), removed)
