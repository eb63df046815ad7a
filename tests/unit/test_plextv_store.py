"""Where the account token lives: the state file (0600, atomic) or a systemd credential, which wins;
device records survive a damaged file by being kept aside."""

from __future__ import annotations

import stat
from pathlib import Path

from companion.plextv.store import AccountToken, DeviceRecord, PlexTvStore


def test_token_file_is_0600_and_written_atomically(tmp_path: Path) -> None:
    store = PlexTvStore(tmp_path / "state", credentials_dir="")
    assert store.load() is None and store.source() == ""
    path = store.save(AccountToken("tok-one"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["plextv-token"], "no temp file left behind"
    assert store.load() is not None and store.load().same_as(AccountToken("tok-one"))  # type: ignore[union-attr]
    assert store.remove() and not store.remove() and store.load() is None


def test_a_systemd_credential_wins_over_the_state_file(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "plextv-token").write_text("tok-from-systemd\n")
    store = PlexTvStore(tmp_path / "state", credentials_dir=str(creds))
    store.save(AccountToken("tok-from-link"))
    token = store.load()
    assert token is not None and token.same_as(AccountToken("tok-from-systemd"))
    assert store.source() == "systemd credential plextv-token"


def test_device_records_round_trip_and_a_damaged_file_is_kept_aside(tmp_path: Path) -> None:
    store = PlexTvStore(tmp_path, credentials_dir="")
    store.save_devices({"face-a": DeviceRecord("face-a", "1234", "TV (bridge)", "tok-dev")})
    assert store.devices() == {"face-a": DeviceRecord("face-a", "1234", "TV (bridge)", "tok-dev")}
    assert "tok-dev" not in repr(store.devices())
    assert stat.S_IMODE(store.devices_file.stat().st_mode) == 0o600
    store.devices_file.write_text("{not json")
    assert store.devices() == {}
    assert (tmp_path / "plextv-devices.json.damaged").read_text() == "{not json"
