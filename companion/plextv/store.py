"""Where the plex.tv secrets live: the account token and the per-face device records.

The account token is the most powerful secret the bridge holds. It lives in its own object
(:class:`AccountToken`, whose repr and str hide it and which cannot be pickled) and in one file:
``<state_dir>/plextv-token`` (mode 0600, written atomically), or a systemd credential
(``LoadCredential=plextv-token:...``, read from ``$CREDENTIALS_DIRECTORY``), which wins when present.
Nothing in Config, Server or the fling path ever holds it. The device records (plex.tv device id
and device token per face identifier) sit in ``<state_dir>/plextv-devices.json``, also 0600.
"""

from __future__ import annotations

import hmac
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from companion.errors import StateError
from companion.state import write_atomic

TOKEN_FILE = "plextv-token"
DEVICES_FILE = "plextv-devices.json"
CREDENTIAL_NAME = "plextv-token"
_MAX_TOKEN = 512


def _valid_token(value: str) -> bool:
    return 0 < len(value) <= _MAX_TOKEN and value.isascii() and value.isprintable() and " " not in value


def give_to_directory_owner(path: Path) -> None:
    """Run as root (``sudo companion link``) into the service's state directory, hand the file to the
    directory's owner: the daemon's DynamicUser could not read a root-owned 0600 file."""
    if os.geteuid() != 0:
        return
    try:
        owner = path.parent.stat()
        if owner.st_uid != 0:
            os.chown(path, owner.st_uid, owner.st_gid)
    except OSError as exc:
        raise StateError(f"cannot give {path} to the owner of its directory: {exc.strerror or exc}") from exc


class AccountToken:
    """The account token: shown to nothing; ``reveal()`` is called only to build a plex.tv request."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        value = value.strip()
        if not _valid_token(value):
            raise StateError("the stored plex.tv token is not a token (empty, too long or not printable); "
                             "run `companion link` again")
        self._value = value

    def reveal(self) -> str:
        """The token itself, for the X-Plex-Token header of a plex.tv request only."""
        return self._value

    def same_as(self, other: AccountToken | None) -> bool:
        """Whether ``other`` holds the same token (constant time)."""
        return other is not None and hmac.compare_digest(self._value, other._value)

    def __repr__(self) -> str:
        return "AccountToken(<hidden>)"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("the account token cannot be pickled")


@dataclass(frozen=True)
class DeviceRecord:
    """What the bridge keeps for a face it registered: the plex.tv device id and the device's token."""

    client_id: str
    device_id: str
    name: str
    token: str = field(repr=False)


class PlexTvStore:
    """The account token and the device records of one bridge (state directory or systemd credential)."""

    def __init__(self, state_dir: Path, *, token_file: Path | None = None,
                 credentials_dir: str | None = None) -> None:
        self.state_dir = state_dir
        self.token_file = token_file or state_dir / TOKEN_FILE
        creds = credentials_dir if credentials_dir is not None else os.environ.get("CREDENTIALS_DIRECTORY", "")
        self.credential = Path(creds) / CREDENTIAL_NAME if creds else None

    @property
    def devices_file(self) -> Path:
        """The file that lists the devices registered on plex.tv."""
        return self.state_dir / DEVICES_FILE

    def _credential_present(self) -> bool:
        return self.credential is not None and self.credential.is_file()

    def source(self) -> str:
        """Where the token comes from: the systemd credential, the token file, or nowhere yet."""
        if self._credential_present():
            return f"systemd credential {CREDENTIAL_NAME}"
        if self.token_file.is_file():
            return str(self.token_file)
        return ""

    def load(self) -> AccountToken | None:
        """The account token, or None when the bridge is not linked."""
        path = self.credential if self._credential_present() else self.token_file
        assert path is not None
        try:
            text = path.read_text(encoding="ascii")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise StateError(f"cannot read the plex.tv token file {path}: "
                             f"{getattr(exc, 'strerror', None) or type(exc).__name__}") from exc
        if not text.strip():
            return None
        return AccountToken(text)

    def save(self, token: AccountToken) -> Path:
        """Write the token file (mode 0600, atomically); returns where it went."""
        self.token_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(self.token_file, token.reveal() + "\n", mode=0o600)
        give_to_directory_owner(self.token_file)
        return self.token_file

    def remove(self) -> bool:
        """Delete the token file; False when there was none. A systemd credential is not ours to delete."""
        try:
            self.token_file.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StateError(f"cannot remove {self.token_file}: {exc.strerror or exc}") from exc
        return True

    def devices(self) -> dict[str, DeviceRecord]:
        """Face identifier -> the device the bridge registered for it (a damaged file is moved aside)."""
        try:
            raw = json.loads(self.devices_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except ValueError:
            # Kept aside, not lost: its device tokens are secrets the owner may want to revoke.
            os.replace(self.devices_file, self.devices_file.with_name(DEVICES_FILE + ".damaged"))
            return {}
        except OSError as exc:
            raise StateError(f"cannot read {self.devices_file}: {exc.strerror or exc}") from exc
        out: dict[str, DeviceRecord] = {}
        if isinstance(raw, dict):
            for ident, row in raw.items():
                if isinstance(row, dict) and all(isinstance(row.get(k), str) for k in ("device_id", "name", "token")):
                    out[str(ident)] = DeviceRecord(str(ident), row["device_id"], row["name"], row["token"])
        return out

    def save_devices(self, records: dict[str, DeviceRecord]) -> None:
        """Write the device records (mode 0600, atomically)."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = {k: {"device_id": r.device_id, "name": r.name, "token": r.token} for k, r in sorted(records.items())}
        write_atomic(self.devices_file, json.dumps(data, indent=1), mode=0o600)
        give_to_directory_owner(self.devices_file)
