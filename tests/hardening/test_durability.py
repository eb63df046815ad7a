"""Durability of the audit log: SIGKILL at a random moment loses no answered fling, and a full disk
(ENOSPC on a real tmpfs in a private mount namespace) costs audit records, not flings or the daemon.
Both run ``python -m companion run`` as a subprocess (scripts/durability.py)."""

from __future__ import annotations

import asyncio
import errno
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import aiohttp

ROOT = Path(__file__).resolve().parents[2]


def _durability() -> ModuleType:
    spec = importlib.util.spec_from_file_location("companion_durability_script", ROOT / "scripts" / "durability.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


durability = _durability()


async def test_sigkill_at_a_random_moment_loses_no_answered_fling(tmp_path: Path) -> None:
    report = await durability.run_durability(tmp_path, 200)
    assert report.integrity == "ok", "the audit database opens cleanly after SIGKILL"
    assert report.answered == 200
    assert report.answered_but_missing == 0, report
    assert report.recorded_without_answer <= report.in_flight_at_kill, report


def _media_keys(pid: int, db_path: Path) -> set[str]:
    """The audit's media keys, read inside the daemon's mount namespace (SQLite resolves the
    /proc/<pid>/root magic link to this namespace's path, which has no tmpfs on it)."""
    code = ("import sqlite3, sys; db = sqlite3.connect(sys.argv[1]); "
            "print('\\n'.join(r[0] for r in db.execute('SELECT media_key FROM flings')))")
    out = subprocess.run(["nsenter", "-t", str(pid), "-m", sys.executable, "-c", code, str(db_path)],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    return set(out.split())


def _fill(directory: Path) -> Path:
    """Write a filler file until the file system says ENOSPC; return it."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:  # a full file system, really
                raise
    return filler


async def test_a_full_disk_costs_audit_records_not_flings_and_recovery_is_automatic(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    face_port = durability.free_port()
    config = tmp_path / "config.yaml"
    config.write_text(durability.daemon_config(state, face_port, durability.free_port()))
    # A 1 MiB tmpfs over the state directory, visible only to the daemon (its own mount namespace);
    # this process reaches it through /proc/<pid>/root.
    wrapper = ["unshare", "-m", "--propagation", "private", "sh", "-c",
               f'mount -t tmpfs -o size=1m tmpfs "{state}" && exec "$@"', "sh"]
    daemon = durability.Daemon(config, face_port, tmp_path / "daemon.log", wrapper=wrapper)
    await daemon.start()
    try:
        inside = Path(f"/proc/{daemon.pid}/root") / str(state).lstrip("/")
        db = state / "audit.sqlite3"
        async with aiohttp.ClientSession() as http:
            assert await durability.fling(http, face_port, 1) == 403
            assert _media_keys(daemon.pid, db) == {"/library/metadata/1"}
            filler = await asyncio.to_thread(_fill, inside)
            for n in range(2, 12):  # every fling is still answered, promptly
                status = await asyncio.wait_for(durability.fling(http, face_port, n), 5)
                assert status == 403
            log = (tmp_path / "daemon.log").read_text()
            assert "could not record the fling" in log and "disk is full" in log, log[-2000:]
            filler.unlink()  # the fault ends
            assert await durability.fling(http, face_port, 100) == 403
            assert "/library/metadata/100" in _media_keys(daemon.pid, db), "recording resumed by itself"
            async with http.get(f"http://127.0.0.1:{face_port}/resources") as resp:
                assert resp.status == 200
    finally:
        assert daemon.stop() == 0, "the daemon stops cleanly after the fault"
    assert os.path.isdir(state)

