"""``companion link`` and ``companion unlink``: the plex.tv PIN flow and its undoing, from the command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from companion.config import Config, config_from_args

if TYPE_CHECKING:
    from companion.plextv.link import Linked, Unlinked
    from companion.plextv.store import PlexTvStore


def _store_and_ids(args: argparse.Namespace) -> tuple[Config, PlexTvStore, str, set[str]]:
    from companion.plextv.store import PlexTvStore, give_to_directory_owner
    from companion.proto.gdm import face_identifier
    from companion.state import StateDir

    config = config_from_args(args)
    state = StateDir(config.state_path)
    token_file = Path(args.token_file) if getattr(args, "token_file", None) else None
    store = PlexTvStore(config.state_path, token_file=token_file)
    face_ids = {face_identifier(target_id) for target_id in state.face_ports()}
    bridge_id = state.bridge_id()  # created here if the daemon never ran: the daemon must be able to read it
    give_to_directory_owner(state.path / StateDir.IDENTITY)
    return config, store, bridge_id, face_ids


def cmd_link(args: argparse.Namespace) -> int:
    """``companion link [--timeout S] [--token-file PATH]``: 0 linked, 1 expired/denied/401/unreachable."""
    from companion.plextv.api import PlexTvApi
    from companion.plextv.link import bridge_identity, link

    config, store, bridge_id, _ids = _store_and_ids(args)
    if not config.plextv.enabled:
        print("note: plextv.enabled is false in the config; the daemon registers no faces until it is true",
              file=sys.stderr)

    async def run() -> Linked:
        async with PlexTvApi(config.plextv.url) as api:
            return await link(api, store, bridge_identity(config, bridge_id), timeout=args.timeout)

    result = asyncio.run(run())
    print(f"linked to the Plex account {result.account.name!r}; token saved in {result.saved_to} (mode 0600)")
    if store.credential is not None and store.credential.is_file():
        print(f"note: the systemd credential {store.credential} takes precedence over that file", file=sys.stderr)
    print("the running daemon registers its faces on plex.tv within a minute (no restart needed)")
    return 0


def cmd_unlink(args: argparse.Namespace) -> int:
    """``companion unlink``: delete the bridge's plex.tv devices, then the token."""
    from companion.plextv.api import PlexTvApi
    from companion.plextv.link import bridge_identity, unlink

    config, store, bridge_id, face_ids = _store_and_ids(args)

    async def run() -> Unlinked:
        async with PlexTvApi(config.plextv.url) as api:
            return await unlink(api, store, bridge_identity(config, bridge_id), face_ids)

    result = asyncio.run(run())
    for name in result.deleted:
        print(f"deleted the plex.tv device {name!r}")
    print(f"{len(result.deleted)} device(s) deleted; "
          + (f"token removed from {store.token_file}" if result.token_removed else "no token file to remove"))
    if store.credential is not None and store.credential.is_file():
        print(f"the token also comes from the systemd credential {store.credential}: remove LoadCredential= "
              "from the unit (and the file it names), or the daemon stays linked", file=sys.stderr)
    return 0


__all__ = ["cmd_link", "cmd_unlink"]
