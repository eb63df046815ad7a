"""The audit log of flings: round trips, filters, durability, token scrubbing, readable failures."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from companion import audit as audit_module
from companion.audit import (
    MODES,
    PLAYBACK,
    SCHEMA_VERSION,
    AuditLog,
    FlingRecord,
    format_table,
    record_to_json,
    scrub,
)
from companion.errors import StateError

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def make_record(**changes: object) -> FlingRecord:
    rec = FlingRecord(
        id=None,
        time=NOW,
        controller_id="phone-1",
        controller_name="Alice's iPhone",
        controller_address="192.168.1.20",
        target_id="companion-0123456789abcdef",
        target_name="Living Room TV",
        profile="lg-webos-4",
        server_id="srv-1",
        server_address="192.168.1.10:32400",
        media_key="/library/metadata/42",
        mode="direct-secure",
        secure=True,
        token_exposed=False,
        command_plain_http=True,
        reasons=(),
        outcome="ok",
    )
    return replace(rec, **changes)


INSECURE = {
    "mode": "direct-insecure",
    "secure": False,
    "token_exposed": True,
    "reasons": (("root-missing", "this device's root store lacks ISRG Root YR"),),
}


@pytest.fixture
def log(tmp_path: Path):
    with AuditLog(tmp_path / "state" / "audit.sqlite3") as audit:
        yield audit


def test_recorded_fling_comes_back_from_recent_with_its_id(log: AuditLog) -> None:
    rec = make_record(**INSECURE)
    rid = log.record(rec)
    assert log.recent() == [replace(rec, id=rid)]


def test_recent_lists_newest_first_up_to_the_limit(log: AuditLog) -> None:
    ids = [log.record(make_record(media_key=f"/library/metadata/{n}")) for n in range(5)]
    got = log.recent(limit=3)
    assert [r.id for r in got] == ids[::-1][:3]
    assert [r.media_key for r in got] == ["/library/metadata/4", "/library/metadata/3", "/library/metadata/2"]


def test_insecure_only_lists_flings_that_were_not_fully_secure(log: AuditLog) -> None:
    log.record(make_record())
    relay = log.record(make_record(mode="relay", secure=False, reasons=(("relay-last-hop-plaintext", "x"),)))
    insecure = log.record(make_record(**INSECURE))
    refused = log.record(make_record(mode="refused", secure=False, outcome="refused"))
    exposed = log.record(make_record(token_exposed=True))
    assert [r.id for r in log.recent(insecure_only=True)] == [exposed, refused, insecure, relay]
    assert len(log.recent()) == 5


def test_records_survive_closing_and_reopening(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    with AuditLog(path) as first:
        rid = first.record(make_record(**INSECURE))
    with AuditLog(path) as second:
        assert second.recent() == [replace(make_record(**INSECURE), id=rid)]
        assert second.record(make_record()) == rid + 1


def test_a_fling_answered_before_sigkill_is_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    child = textwrap.dedent(f"""
        import sys
        from datetime import datetime, UTC
        from pathlib import Path
        from companion.audit import AuditLog, FlingRecord
        log = AuditLog(Path({str(path)!r}))
        log.open()
        rid = log.record(FlingRecord(None, datetime.now(UTC), "c", "n", "a", "t", "Kitchen", "p",
                                     "s", "sa", "/k", "relay", False, False, True, (), "ok"))
        print(rid, flush=True)
        sys.stdin.read()  # wait, connection open, until killed
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        rid = int(proc.stdout.readline())
    finally:
        proc.kill()
        proc.communicate(timeout=5)
    assert proc.returncode == -9
    with AuditLog(path) as log:
        assert [(r.id, r.target_name) for r in log.recent()] == [(rid, "Kitchen")]


def test_database_uses_wal_and_records_its_schema_version(log: AuditLog) -> None:
    log.record(make_record())
    raw = sqlite3.connect(log.path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        raw.close()


def test_database_from_a_newer_version_is_refused_with_a_readable_error(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(StateError, match=rf"written by a newer companion-bridge \(schema {SCHEMA_VERSION + 1}"):
        AuditLog(path).open()


def test_prune_deletes_only_records_past_retention(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "a.sqlite3", retention_days=30) as log:
        log.record(make_record(time=NOW - timedelta(days=31), target_name="old"))
        log.record(make_record(time=NOW - timedelta(days=29), target_name="recent"))
        assert log.prune(NOW) == 1
        assert [r.target_name for r in log.recent()] == ["recent"]
        assert log.prune(NOW) == 0


SECRET = "Zx9SecretTok3nValue"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("media_key", f"/library/metadata/42?X-Plex-Token={SECRET}&offset=0"),
        ("server_address", f"https://10-0-0-1.abc.plex.direct:32400/?token={SECRET}"),
        ("controller_name", f"X-Plex-Token: {SECRET}"),
        ("outcome", f"error: GET /player/playback/playMedia?key=1&token={SECRET} timed out"),
        ("target_name", f"url=http%3A%2F%2Fh%2Fa%3FX-Plex-Token%3D{SECRET}%26b%3D1"),
    ],
)
def test_token_looking_value_in_a_field_is_never_stored(log: AuditLog, field: str, value: str) -> None:
    log.record(make_record(**{field: value}))
    (stored,) = log.recent()
    assert SECRET not in getattr(stored, field)
    assert "<redacted>" in getattr(stored, field)
    log.close()  # folds the WAL into the main file, so one file holds every byte written
    assert SECRET.encode() not in log.path.read_bytes()


def test_token_in_a_reason_text_is_never_stored(log: AuditLog) -> None:
    log.record(make_record(reasons=(("plain-command", f"sent GET ...?X-Plex-Token={SECRET}"),)))
    (stored,) = log.recent()
    assert stored.reasons == (("plain-command", "sent GET ...?X-Plex-Token=<redacted>"),)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/a?X-Plex-Token=abc123&x=1", "/a?X-Plex-Token=<redacted>&x=1"),
        ("accessToken=abc-_9; path=/", "accessToken=<redacted>; path=/"),
        ('token="abc"', 'token="<redacted>"'),
        ('{"X-Plex-Token": "abc"}', '{"X-Plex-Token": "<redacted>"}'),
        ("a%3Ftoken%3Dab%2Bc%26d%3D1", "a%3Ftoken%3D<redacted>%26d%3D1"),
        # a key where a value should be does not hide the value that follows it
        ("token=X-Plex-Token: abc", "token=<redacted> <redacted>"),
        ("X-Plex-Token: X-Plex-Token: abc", "X-Plex-Token: <redacted> <redacted>"),
        # prose about tokens is not mangled
        ("token-exposed: the token crosses the LAN in clear", "token-exposed: the token crosses the LAN in clear"),
        ("tokens=3", "tokens=3"),
    ],
)
def test_scrub_redacts_token_values_and_leaves_prose(text: str, expected: str) -> None:
    assert scrub(text) == expected


def test_scrubbing_a_huge_crafted_field_takes_linear_time() -> None:
    # Names come off the network; a pattern that backtracks quadratically would let one crafted
    # 100 kB name stall the audit thread for minutes.
    crafted = "k" * 100_000 + "token=" * 10_000 + "a-" * 50_000
    started = time.perf_counter()
    scrub(crafted)
    assert time.perf_counter() - started < 1.0


_TEXT_FIELDS = [f.name for f in fields(FlingRecord) if f.type == "str" and f.name not in ("mode", "playback")]

records = st.builds(
    FlingRecord,
    id=st.none(),
    time=st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)),
    mode=st.sampled_from(sorted(MODES)),
    playback=st.sampled_from(sorted(PLAYBACK)),
    secure=st.booleans(),
    token_exposed=st.booleans(),
    command_plain_http=st.booleans(),
    reasons=st.lists(st.tuples(st.text(max_size=20), st.text(max_size=60)), max_size=4).map(tuple),
    **{name: st.text(max_size=40) for name in _TEXT_FIELDS},
)


def test_any_field_values_round_trip_except_for_scrubbing(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "a.sqlite3") as log:

        @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(rec=records)
        def check(rec: FlingRecord) -> None:
            rid = log.record(rec)
            (stored,) = log.recent(limit=1)
            expected = replace(
                rec,
                id=rid,
                reasons=tuple((scrub(c), scrub(t)) for c, t in rec.reasons),
                **{name: scrub(getattr(rec, name)) for name in _TEXT_FIELDS},
            )
            assert stored == expected
            if "token" not in repr(rec).lower():
                assert stored == replace(rec, id=rid)

        check()


def test_a_token_embedded_anywhere_in_random_text_is_never_stored(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "a.sqlite3") as log:

        @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(
            prefix=st.text(max_size=30),
            key=st.sampled_from(["X-Plex-Token=", "token=", "X-Plex-Token%3D", "X-Plex-Token: ", "accessToken="]),
            secret=st.text(alphabet="0123456789abcdef", min_size=16, max_size=24),
            suffix=st.text(max_size=30),
        )
        def check(prefix: str, key: str, secret: str, suffix: str) -> None:
            assume(secret not in prefix and secret not in suffix)
            log.record(make_record(media_key=prefix + key + secret + suffix))
            (stored,) = log.recent(limit=1)
            assert secret not in stored.media_key

        check()


def test_unwritable_state_path_gives_state_error_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state directory should be\n")
    path = blocker / "state" / "audit.sqlite3"
    with pytest.raises(StateError) as info:
        AuditLog(path).open()
    assert str(info.value).startswith(f"audit log {path}: cannot create the directory {blocker / 'state'}")


def test_file_that_is_not_a_database_gives_state_error(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    path.write_bytes(b"this is not sqlite\n" * 100)
    with pytest.raises(StateError, match="is not a valid audit database"):
        AuditLog(path).open()


PROBE = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from companion.audit import AuditLog
    from companion.errors import StateError
    if os.geteuid() == 0:
        # root ignores directory permissions: become nobody, after the imports above (the
        # interpreter may live where nobody cannot read)
        os.setgroups([]); os.setgid(65534); os.setuid(65534)
    try:
        AuditLog(Path(sys.argv[1])).open()
    except StateError as exc:
        print(exc)
    else:
        print("opened")
""")


@pytest.mark.parametrize("existing", [False, True], ids=["new-db", "existing-db"])
def test_read_only_state_directory_gives_state_error_saying_so(existing: bool) -> None:
    # Not tmp_path: pytest's base temp dir is private to its user, and the probe runs as nobody.
    top = Path(tempfile.mkdtemp(prefix="companion-ro-"))
    try:
        top.chmod(0o755)
        state = top / "state"
        state.mkdir()
        path = state / "audit.sqlite3"
        if existing:
            with AuditLog(path) as log:
                log.record(make_record())
            path.chmod(0o644)
        state.chmod(0o555)
        out = subprocess.run([sys.executable, "-c", PROBE, str(path)], cwd=REPO, capture_output=True,
                             text=True, timeout=10, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        assert out.stderr == ""
        assert out.stdout.startswith(f"audit log {path}: cannot open: the directory {state} is not writable")
    finally:
        state.chmod(0o755)
        shutil.rmtree(top)


def test_full_disk_while_recording_gives_state_error_and_the_log_stays_usable(tmp_path: Path) -> None:
    # RLIMIT_FSIZE makes writes past 64 KiB fail the way a full disk does, for root too.
    child = textwrap.dedent("""
        import resource, signal, sys
        from datetime import datetime, UTC
        from pathlib import Path
        from companion.audit import AuditLog, FlingRecord
        from companion.errors import StateError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
        rec = FlingRecord(None, datetime.now(UTC), "c", "n", "a", "t", "tn", "p", "s", "sa",
                          "k" * 20000, "relay", False, False, True, (), "ok")
        with AuditLog(Path(sys.argv[1])) as log:
            try:
                for _ in range(50):
                    log.record(rec)
            except StateError as exc:
                print(exc)
            print(len(log.recent(limit=100)))
    """)
    path = tmp_path / "audit.sqlite3"
    out = subprocess.run([sys.executable, "-c", child, str(path)], cwd=REPO, capture_output=True,
                         text=True, timeout=10, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert out.stderr == ""
    message, count = out.stdout.splitlines()
    assert message.startswith(f"audit log {path}: cannot record a fling: ")
    assert "disk" in message
    assert 0 < int(count) < 50


def test_locked_database_gives_state_error_after_the_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    with AuditLog(path, busy_timeout=0.05) as log:
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN EXCLUSIVE")
            with pytest.raises(StateError, match="another process holds a lock on it"):
                log.record(make_record())
            other.execute("ROLLBACK")
        finally:
            other.close()
        log.record(make_record())
        assert len(log.recent()) == 1


def test_concurrent_records_from_threads_all_land_with_distinct_ids(log: AuditLog) -> None:
    ids: list[int] = []
    ids_lock = threading.Lock()

    def worker(n: int) -> None:
        for i in range(20):
            rid = log.record(make_record(media_key=f"/{n}/{i}"))
            with ids_lock:
                ids.append(rid)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(set(ids)) == 160
    assert {r.media_key for r in log.recent(limit=500)} == {f"/{n}/{i}" for n in range(8) for i in range(20)}


async def test_record_works_from_asyncio_to_thread(log: AuditLog) -> None:
    rid = await asyncio.to_thread(log.record, make_record())
    assert [r.id for r in await asyncio.to_thread(log.recent)] == [rid]


def test_naive_time_and_unknown_mode_are_rejected(log: AuditLog) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        log.record(make_record(time=datetime(2026, 1, 1)))
    with pytest.raises(ValueError, match="unknown fling mode 'secure-ish'"):
        log.record(make_record(mode="secure-ish"))
    assert log.recent() == []


def test_using_a_closed_log_gives_state_error(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.sqlite3")
    with pytest.raises(StateError, match="not open"):
        log.record(make_record())


def test_json_form_carries_every_field_with_utc_time(log: AuditLog) -> None:
    rid = log.record(make_record(**INSECURE))
    (stored,) = log.recent()
    doc = record_to_json(stored)
    assert json.loads(json.dumps(doc)) == doc
    assert doc["id"] == rid
    assert doc["time"] == "2026-03-01T12:00:00.123456Z"
    assert doc["target"] == {"id": "companion-0123456789abcdef", "name": "Living Room TV", "profile": "lg-webos-4"}
    assert doc["mode"] == "direct-insecure"
    assert doc["secure"] is False
    assert doc["token_exposed"] is True
    assert doc["reasons"] == [{"code": "root-missing", "text": "this device's root store lacks ISRG Root YR"}]
    assert doc["outcome"] == "ok"


def test_table_shows_one_line_per_fling_with_flags_and_reason_codes() -> None:
    secure = make_record(id=1)
    insecure = make_record(id=2, target_name="Bedroom\x1b[2JTV", **INSECURE)
    lines = format_table([insecure, secure]).splitlines()
    assert lines[0].split() == ["TIME", "(UTC)", "TARGET", "MODE", "SECURE", "TOKEN", "EXPOSED", "OUTCOME",
                                "PLAYBACK", "REASONS"]
    assert lines[1].split() == ["2026-03-01", "12:00:00", "Bedroom?[2JTV", "direct-insecure", "NO", "YES", "ok",
                                "-", "root-missing"]
    assert lines[2].split() == ["2026-03-01", "12:00:00", "Living", "Room", "TV", "direct-secure", "yes", "no", "ok",
                                "-", "-"]


def test_table_of_no_flings_says_so() -> None:
    assert format_table([]) == "no flings recorded"


# --- fling outcomes (schema 2) -----------------------------------------------------------------

_V1_ROW = ("INSERT INTO flings (time_us, controller_id, controller_name, controller_address, target_id, "
           "target_name, profile, server_id, server_address, media_key, mode, secure, token_exposed, "
           "command_plain_http, reasons, outcome) VALUES (1700000000000000, 'c', 'Phone', '10.0.0.2', 't', "
           "'Old TV', 'roku', 's', '10.0.0.1:32400', '/library/metadata/1', 'relay', 0, 0, 1, '[]', 'ok')")


def test_a_version_1_log_is_migrated_in_place_and_keeps_every_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    raw = sqlite3.connect(path)
    raw.executescript(audit_module._SCHEMA_V1)
    raw.execute(_V1_ROW)
    raw.execute("PRAGMA user_version = 1")
    raw.commit()
    raw.close()
    with AuditLog(path) as log:
        [old] = log.recent()
        new_id = log.record(make_record(playback="watching", relied_on=("tls.roots", "roots.isrg-root-x1")))
        log.set_playback(new_id, "failed", "the player reported an error")
        records = log.recent()
    assert (old.target_name, old.mode, old.outcome, old.playback, old.refling_of, old.relied_on) == (
        "Old TV", "relay", "ok", "", None, ())
    assert (records[0].playback, records[0].playback_reason, records[0].relied_on) == (
        "failed", "the player reported an error", ("tls.roots", "roots.isrg-root-x1"))
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == 2
    raw.close()


def test_a_relay_refling_points_at_the_fling_it_retried_and_shows_in_json_and_the_table(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "a.sqlite3") as log:
        first = log.record(make_record(playback="failed", playback_reason="the player reported an error"))
        log.record(make_record(mode="relay", secure=False, refling_of=first, playback="ok",
                               playback_reason="the player is playing"))
        newest, oldest = log.recent()
        facts = log.outcome_facts()
    assert newest.refling_of == oldest.id == first
    assert record_to_json(newest)["refling_of"] == first
    assert record_to_json(oldest)["playback"] == {"result": "failed", "reason": "the player reported an error"}
    table = format_table([newest, oldest])
    assert "PLAYBACK" in table and "failed: the player reported an error" in table
    assert [(f.mode, f.playback, f.refling_of) for f in facts] == [
        ("relay", "ok", first), ("direct-secure", "failed", None)]


def test_an_unknown_playback_value_is_refused(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "a.sqlite3") as log:
        with pytest.raises(ValueError, match="unknown playback"):
            log.record(make_record(playback="great"))
        rid = log.record(make_record())
        with pytest.raises(ValueError, match="unknown playback"):
            log.set_playback(rid, "meh")
