"""The state directory: face ports kept across restarts, the bridge's own identity, the admin token.

Small JSON/text files written atomically (temp file + rename), so a crash mid-write never leaves a
half file behind. The audit database lives here too (audit.py owns it).
"""

from __future__ import annotations

import json
import os
import secrets
import uuid
from collections.abc import Collection
from pathlib import Path

from companion.errors import StateError


def write_atomic(path: Path, data: str, *, mode: int = 0o600) -> None:
    """Write a small file through a temp file + rename, created with ``mode``."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise StateError(f"cannot write {path}: {exc.strerror or exc}") from exc


class StateDir:
    """One daemon's state directory (``state_dir`` in the config)."""

    FACES = "faces.json"
    IDENTITY = "identity"
    ADMIN_TOKEN = "admin-token"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._ports: dict[str, int] | None = None

    def ensure(self) -> None:
        """Create the state directory (owner-only) if it does not exist."""
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StateError(f"cannot create state directory {self.path}: {exc.strerror or exc}") from exc

    def _read_text(self, name: str) -> str | None:
        try:
            return (self.path / name).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise StateError(f"cannot read {self.path / name}: {exc}") from exc

    # -- face ports ---------------------------------------------------------------------------

    def face_ports(self) -> dict[str, int]:
        """Target id -> face TCP port, as stored. A damaged file is kept aside, not lost."""
        if self._ports is None:
            text = self._read_text(self.FACES)
            ports: dict[str, int] = {}
            if text:
                try:
                    raw = json.loads(text)
                    if not isinstance(raw, dict):
                        raise ValueError("not an object")
                    ports = {str(k): int(v) for k, v in raw.items() if isinstance(v, int) and 0 < v < 65536}
                except ValueError:
                    damaged = self.path / f"{self.FACES}.damaged"
                    os.replace(self.path / self.FACES, damaged)
            self._ports = ports
        return dict(self._ports)

    def assign_face_port(self, target_id: str, base: int, *, taken: set[int] | None = None) -> int:
        """The target's stored port, or the lowest free one from ``base`` (then stored)."""
        ports = self.face_ports()
        if target_id in ports:
            return ports[target_id]
        used = set(ports.values()) | (taken or set())
        port = base
        while port in used:
            port += 1
        if port > 65535:
            raise StateError("no face port left above face_port_base")
        self.set_face_port(target_id, port)
        return port

    def set_face_port(self, target_id: str, port: int) -> None:
        """Remember the port of ``target_id``'s face, so it keeps it across restarts."""
        ports = self.face_ports()
        ports[target_id] = port
        self._store_ports(ports)

    def forget_face_port(self, target_id: str) -> None:
        """A discovered target expired: its port leaves ``faces.json`` (a configured one's never does)."""
        ports = self.face_ports()
        if ports.pop(target_id, None) is not None:
            self._store_ports(ports)

    def prune_face_ports(self, keep: Collection[str], max_others: int) -> list[str]:
        """Keep the ports of ``keep`` (configured targets) and at most ``max_others`` more; returns the
        target ids dropped. The lowest ports are kept: they were handed out first, to the household's
        own players, before any flood of announcements."""
        ports = self.face_ports()
        others = sorted((port, tid) for tid, port in ports.items() if tid not in keep)
        dropped = [tid for _, tid in others[max_others:]]
        if dropped:
            for tid in dropped:
                del ports[tid]
            self._store_ports(ports)
        return dropped

    def _store_ports(self, ports: dict[str, int]) -> None:
        self._ports = ports
        self.ensure()
        write_atomic(self.path / self.FACES, json.dumps(ports, indent=1, sort_keys=True))

    # -- identity and secrets -----------------------------------------------------------------

    def bridge_id(self) -> str:
        """The bridge's own X-Plex-Client-Identifier, stable across restarts."""
        text = self._read_text(self.IDENTITY)
        if text and text.strip():
            return text.strip()
        ident = str(uuid.uuid4())
        self.ensure()
        write_atomic(self.path / self.IDENTITY, ident + "\n")
        return ident

    def admin_token(self) -> str:
        """The token that guards the admin API's writes (created on first use, mode 0600)."""
        text = self._read_text(self.ADMIN_TOKEN)
        if text and text.strip():
            return text.strip()
        token = secrets.token_urlsafe(32)
        self.ensure()
        write_atomic(self.path / self.ADMIN_TOKEN, token + "\n")
        return token
