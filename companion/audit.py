"""The durable audit log of flings: one SQLite row per fling, whatever its mode, kept for a retention period.

Owns the SQLite file in the state directory (schema, pragmas, durability, retention), the
defensive token scrub applied to every stored string, and the two renderings of records: JSON
(`companion flings --json`, the admin API) and the human table (`companion flings`).

Callers must never pass a token (X-Plex-Token, playMedia ``token``) in any field; :func:`scrub`
is a second line of defence, not the first. Every method is blocking; the daemon calls
:meth:`AuditLog.record` through ``asyncio.to_thread``, so one connection is shared across
threads under a lock.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from companion.errors import StateError
from companion.model import scrub
from companion.security.claims import FlingFact

__all__ = ["MODES", "SCHEMA_VERSION", "AuditLog", "FlingRecord", "format_table", "record_to_json", "scrub"]

MODES = frozenset({"direct-secure", "relay", "direct-insecure", "refused"})
SCHEMA_VERSION = 2

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)



@dataclass(frozen=True)
class FlingRecord:
    """One fling as the audit log keeps it: who asked, which target and server, what was decided.

    ``time`` is timezone-aware (stored and returned in UTC). ``reasons`` are the decision's
    (code, text) pairs. ``outcome`` is ``"ok"``, ``"refused"`` or ``"error: <short text>"``.
    ``id`` is None until the record is stored; :meth:`AuditLog.record` ignores it.
    """

    id: int | None
    time: datetime
    controller_id: str
    controller_name: str
    controller_address: str
    target_id: str
    target_name: str
    profile: str
    server_id: str
    server_address: str
    media_key: str
    mode: str
    secure: bool
    token_exposed: bool
    command_plain_http: bool
    reasons: tuple[tuple[str, str], ...]
    outcome: str
    # What the target did with it, from its timeline: "" (not watched: refused, failed to send, or
    # recorded before outcomes existed), "watching", "ok", "failed" (with playback_reason), or
    # "superseded" (a newer fling to the same target came first).
    playback: str = ""
    playback_reason: str = ""
    refling_of: int | None = None  # the failed direct-secure fling this relay fling retried
    relied_on: tuple[str, ...] = ()  # profile keys a direct-secure decision rested on (security/claims.py)


# Text columns in FlingRecord field order; time, flags and reasons are handled apart.
_TEXT_FIELDS = (
    "controller_id", "controller_name", "controller_address", "target_id", "target_name",
    "profile", "server_id", "server_address", "media_key", "mode",
)
_COLUMNS = ("id", "time_us", *_TEXT_FIELDS, "secure", "token_exposed", "command_plain_http",
            "reasons", "outcome", "playback", "playback_reason", "refling_of", "relied_on")
PLAYBACK = frozenset({"", "watching", "ok", "failed", "superseded"})

_SCHEMA_V1 = """
CREATE TABLE flings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time_us INTEGER NOT NULL,
    controller_id TEXT NOT NULL,
    controller_name TEXT NOT NULL,
    controller_address TEXT NOT NULL,
    target_id TEXT NOT NULL,
    target_name TEXT NOT NULL,
    profile TEXT NOT NULL,
    server_id TEXT NOT NULL,
    server_address TEXT NOT NULL,
    media_key TEXT NOT NULL,
    mode TEXT NOT NULL,
    secure INTEGER NOT NULL CHECK (secure IN (0, 1)),
    token_exposed INTEGER NOT NULL CHECK (token_exposed IN (0, 1)),
    command_plain_http INTEGER NOT NULL CHECK (command_plain_http IN (0, 1)),
    reasons TEXT NOT NULL,
    outcome TEXT NOT NULL
);
CREATE INDEX flings_time ON flings (time_us);
"""

# Version 2: fling outcomes. ADD COLUMN keeps every existing record (they read as not watched).
_SCHEMA_V2 = """
ALTER TABLE flings ADD COLUMN playback TEXT NOT NULL DEFAULT '';
ALTER TABLE flings ADD COLUMN playback_reason TEXT NOT NULL DEFAULT '';
ALTER TABLE flings ADD COLUMN refling_of INTEGER;
ALTER TABLE flings ADD COLUMN relied_on TEXT NOT NULL DEFAULT '[]';
CREATE INDEX flings_profile ON flings (profile);
"""

# Schema version -> script that brings the previous version up to it. Version 0 is an empty file.
_MIGRATIONS: dict[int, str] = {1: _SCHEMA_V1, 2: _SCHEMA_V2}


def _to_us(when: datetime) -> int:
    delta = when - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _why(exc: sqlite3.Error) -> str:
    """A reason a person can act on, from SQLite's error code."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith("SQLITE_FULL"):
        return "the disk is full"
    if name.startswith("SQLITE_READONLY"):
        return "the database or its directory is read-only"
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return "another process holds a lock on it"
    if name.startswith("SQLITE_CANTOPEN"):
        return "it cannot be opened (missing directory or no permission)"
    if name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")):
        return "the file is not a valid audit database (move it aside to start a new one)"
    if name.startswith("SQLITE_IOERR"):
        return "an I/O error occurred (disk full, file size limit or failing storage)"
    return str(exc) or type(exc).__name__


class AuditLog:
    """Fling records in one SQLite file (WAL), with retention. Thread-safe; every call blocks."""

    def __init__(self, path: Path, *, retention_days: int = 365, busy_timeout: float = 5.0) -> None:
        if retention_days < 1:
            raise ValueError(f"retention_days must be at least 1, got {retention_days}")
        self.path = Path(path)
        self.retention_days = retention_days
        self._busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def __enter__(self) -> AuditLog:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AuditLog({str(self.path)!r}, retention_days={self.retention_days})"

    def _fail(self, action: str, exc: sqlite3.Error | OSError) -> StateError:
        reason = _why(exc) if isinstance(exc, sqlite3.Error) else (exc.strerror or str(exc))
        name = getattr(exc, "sqlite_errorname", "") or ""
        if name.startswith(("SQLITE_CANTOPEN", "SQLITE_READONLY")) and not os.access(
                self.path.parent, os.W_OK | os.X_OK):
            # WAL needs to create -wal and -shm files beside the database, so a read-only
            # directory fails even when the file itself is writable: say which one to fix.
            reason = (f"the directory {self.path.parent} is not writable by this user "
                      f"(uid {os.geteuid()}); WAL mode creates files beside the database")
        return StateError(f"audit log {self.path}: cannot {action}: {reason}")

    def open(self) -> None:
        """Create or open the database, apply the pragmas and bring the schema up to date."""
        with self._lock:
            if self._conn is not None:
                return
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise self._fail(f"create the directory {self.path.parent}", exc) from exc
            try:
                # isolation_level=None: we issue BEGIN/COMMIT ourselves, so each record() is
                # exactly one transaction and nothing is left open between calls.
                conn = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None,
                                       check_same_thread=False)
            except sqlite3.Error as exc:
                raise self._fail("open", exc) from exc
            try:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StateError(f"audit log {self.path}: cannot switch to WAL mode (got {mode!r});"
                                     " is the state directory on a network file system?")
                # synchronous=FULL: in WAL mode NORMAL already survives a killed process (the
                # commit is in the WAL file in the OS page cache before record() returns), but
                # it may lose the last commits on power loss or a kernel crash, which on a
                # Raspberry Pi that is unplugged is the common way to stop. Flings arrive at
                # human pace, so one fsync of the WAL per record costs nothing that matters and
                # makes "answered" mean "on disk".
                conn.execute("PRAGMA synchronous=FULL")
                self._migrate(conn)
            except sqlite3.Error as exc:
                conn.close()
                raise self._fail("open", exc) from exc
            except BaseException:
                conn.close()
                raise
            self._conn = conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StateError(
                f"audit log {self.path}: written by a newer companion-bridge (schema {version}; "
                f"this version reads up to {SCHEMA_VERSION})")
        for target in range(version + 1, SCHEMA_VERSION + 1):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _MIGRATIONS[target].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {target}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StateError(f"audit log {self.path}: not open")
        return self._conn

    def record(self, rec: FlingRecord) -> int:
        """Store one fling in one transaction and return its id; it is on disk when this returns.

        Every string is passed through :func:`scrub` first. ``rec.id`` is ignored.
        """
        if rec.mode not in MODES:
            raise ValueError(f"unknown fling mode {rec.mode!r}; expected one of {sorted(MODES)}")
        if rec.time.tzinfo is None:
            raise ValueError("FlingRecord.time must be timezone-aware (UTC)")
        if rec.playback not in PLAYBACK:
            raise ValueError(f"unknown playback {rec.playback!r}; expected one of {sorted(PLAYBACK)}")
        reasons = json.dumps([[scrub(code), scrub(text)] for code, text in rec.reasons],
                             ensure_ascii=False)
        values = (
            _to_us(rec.time),
            *(scrub(getattr(rec, name)) for name in _TEXT_FIELDS),
            int(rec.secure), int(rec.token_exposed), int(rec.command_plain_http),
            reasons, scrub(rec.outcome), rec.playback, scrub(rec.playback_reason), rec.refling_of,
            json.dumps([scrub(f) for f in rec.relied_on]),
        )
        placeholders = ", ".join("?" * len(values))
        sql = f"INSERT INTO flings ({', '.join(_COLUMNS[1:])}) VALUES ({placeholders})"  # noqa: S608
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    cursor = conn.execute(sql, values)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise self._fail("record a fling", exc) from exc
        rowid = cursor.lastrowid
        assert rowid is not None
        return rowid

    def recent(self, limit: int = 50, *, insecure_only: bool = False) -> list[FlingRecord]:
        """The newest ``limit`` records, newest first.

        ``insecure_only`` keeps the flings that were not fully secure: the stream was not
        verified TLS (relay, direct-insecure, refused), or a token crossed the LAN in clear.
        """
        where = "WHERE secure = 0 OR token_exposed = 1" if insecure_only else ""
        sql = f"SELECT {', '.join(_COLUMNS)} FROM flings {where} ORDER BY id DESC LIMIT ?"  # noqa: S608
        with self._lock:
            conn = self._connection()
            try:
                rows = conn.execute(sql, (max(0, limit),)).fetchall()
            except sqlite3.Error as exc:
                raise self._fail("read flings", exc) from exc
        return [_row_to_record(row) for row in rows]

    def set_playback(self, record_id: int, playback: str, reason: str = "") -> None:
        """Record what the target did with fling ``record_id`` (``ok``/``failed`` and why)."""
        if playback not in PLAYBACK:
            raise ValueError(f"unknown playback {playback!r}; expected one of {sorted(PLAYBACK)}")
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("UPDATE flings SET playback = ?, playback_reason = ? WHERE id = ?",
                             (playback, scrub(reason), record_id))
            except sqlite3.Error as exc:
                raise self._fail("record a fling outcome", exc) from exc

    def outcome_facts(self, limit: int = 100_000) -> list[FlingFact]:
        """The newest ``limit`` flings as the evidence summary needs them (bounded: memory stays small)."""
        sql = ("SELECT profile, mode, playback, relied_on, refling_of FROM flings "
               "ORDER BY id DESC LIMIT ?")
        with self._lock:
            conn = self._connection()
            try:
                rows = conn.execute(sql, (max(0, limit),)).fetchall()
            except sqlite3.Error as exc:
                raise self._fail("read flings", exc) from exc
        return [FlingFact(profile=p, mode=m, playback=pb, relied_on=tuple(json.loads(r)), refling_of=ref)
                for p, m, pb, r, ref in rows]

    def prune(self, now: datetime) -> int:
        """Delete records older than the retention period before ``now``; return how many."""
        cutoff = _to_us(now - timedelta(days=self.retention_days))
        with self._lock:
            conn = self._connection()
            try:
                cursor = conn.execute("DELETE FROM flings WHERE time_us < ?", (cutoff,))
            except sqlite3.Error as exc:
                raise self._fail("prune old flings", exc) from exc
        return cursor.rowcount

    def close(self) -> None:
        """Close the database (idempotent). The last close folds the WAL back into the file."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error as exc:
                raise self._fail("close", exc) from exc


def _row_to_record(row: Sequence[Any]) -> FlingRecord:
    (rid, time_us, c_id, c_name, c_addr, t_id, t_name, profile, s_id, s_addr, media_key, mode,
     secure, token_exposed, plain, reasons, outcome, playback, playback_reason, refling_of, relied_on) = row
    return FlingRecord(
        id=rid, time=_from_us(time_us), controller_id=c_id, controller_name=c_name,
        controller_address=c_addr, target_id=t_id, target_name=t_name, profile=profile,
        server_id=s_id, server_address=s_addr, media_key=media_key, mode=mode,
        secure=bool(secure), token_exposed=bool(token_exposed), command_plain_http=bool(plain),
        reasons=tuple((str(code), str(text)) for code, text in json.loads(reasons)),
        outcome=outcome, playback=playback, playback_reason=playback_reason, refling_of=refling_of,
        relied_on=tuple(str(f) for f in json.loads(relied_on)),
    )


def record_to_json(rec: FlingRecord) -> dict[str, Any]:
    """A JSON-ready dict of one record (``companion flings --json``, ``GET /api/flings``)."""
    return {
        "id": rec.id,
        "time": rec.time.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "controller": {"id": rec.controller_id, "name": rec.controller_name,
                       "address": rec.controller_address},
        "target": {"id": rec.target_id, "name": rec.target_name, "profile": rec.profile},
        "server": {"id": rec.server_id, "address": rec.server_address},
        "media_key": rec.media_key,
        "mode": rec.mode,
        "secure": rec.secure,
        "token_exposed": rec.token_exposed,
        "command_plain_http": rec.command_plain_http,
        "reasons": [{"code": code, "text": text} for code, text in rec.reasons],
        "outcome": rec.outcome,
        "playback": {"result": rec.playback or None, "reason": rec.playback_reason or None},
        "refling_of": rec.refling_of,
        "relied_on": list(rec.relied_on),
    }


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _cell(text: str, width: int = 32) -> str:
    # Target names come off the network: a control character would let a device rewrite the
    # operator's terminal, so every one is shown as '?'.
    text = _UNPRINTABLE.sub("?", text)
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(records: Iterable[FlingRecord]) -> str:
    """The human table for ``companion flings``: one line per fling, newest first as given."""
    header = ("TIME (UTC)", "TARGET", "MODE", "SECURE", "TOKEN EXPOSED", "OUTCOME", "PLAYBACK", "REASONS")
    rows = [
        (
            rec.time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
            _cell(rec.target_name or rec.target_id),
            rec.mode,
            "yes" if rec.secure else "NO",
            "YES" if rec.token_exposed else "no",
            _cell(rec.outcome, 40),
            _cell(rec.playback + (f": {rec.playback_reason}" if rec.playback_reason else ""), 48) or "-",
            _cell(",".join(code for code, _ in rec.reasons), 60) or "-",
        )
        for rec in records
    ]
    if not rows:
        return "no flings recorded"
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
             for r in (header, *rows)]
    return "\n".join(lines)
