"""`companion doctor` on plex.tv, against FakePlexTv: not linked (WARN with the fix), a rejected token
(FAIL, link again), and linked with every face listed as a player where the Plex apps look (PASS):
the running bridge's plex.tv channel of each face, and plex.tv's own resources list."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from companion.bridge import Bridge
from companion.doctor.visible import check_plextv
from companion.plextv.store import AccountToken, PlexTvStore
from companion.visibility import face_visibility
from tests.fakes.companion_player import FakeCompanionPlayer
from tests.fakes.plextv import FakePlexTv
from tests.helpers import bridge_config, until


@pytest.fixture
async def plextv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakePlexTv]:
    async with FakePlexTv() as fake:
        monkeypatch.setenv("SSL_CERT_FILE", fake.write_ca(tmp_path / "plextv-ca.pem"))
        yield fake


@pytest.fixture
async def player() -> AsyncIterator[FakeCompanionPlayer]:
    fake = FakeCompanionPlayer(name="Den TV")
    await fake.start()
    yield fake
    await fake.stop()


async def test_doctor_says_what_is_missing_on_plextv_and_how_to_fix_it(
        tmp_path: Path, plextv: FakePlexTv, player: FakeCompanionPlayer) -> None:
    config = bridge_config(tmp_path, f"""
plextv: {{url: "{plextv.url}"}}
targets:
  - {{name: Den TV, address: 127.0.0.1, port: {player.port}}}
""")
    (finding,) = await check_plextv(config)
    assert (finding.check, finding.status) == ("plextv", "WARN")
    assert "not plex.tv devices" in finding.detail and "companion link" in finding.fix

    store = PlexTvStore(config.state_path, credentials_dir="")
    store.save(AccountToken("tok-revoked-long-ago"))
    (finding,) = await check_plextv(config)
    assert finding.status == "FAIL" and "401" in finding.detail and "run `companion link` again" in finding.fix

    store.save(AccountToken(plextv.issue_account_token()))
    async with Bridge(config) as bridge:
        await until(lambda: bool(plextv.players()) and bool(plextv.players()[0].connections), timeout=15,
                    message="the face is registered")
        await until(lambda: bridge.plextv is not None and all(
            bridge.plextv.status(s.advert.resource_identifier).registered for s in bridge.faces.values()),
            message="the bridge saw the publication succeed")
        (slot,) = bridge.faces.values()
        (channel,) = [v for v in face_visibility(bridge, slot, datetime.now(UTC)) if v.channel == "plextv"]
        port = slot.face.port
    # The running daemon's view (the `visible` findings of the doctor and the page come from it).
    assert (channel.state, channel.fix) == ("visible", "")
    assert channel.detail == f"a player of the plex.tv account 'Alice Example', named 'Den TV (bridge)', at " \
                             f"http://127.0.0.1:{port}"
    assert channel.checked_at is not None

    alone = await check_plextv(config)  # the CLI's view: what plex.tv itself lists
    assert [(f.check, f.status) for f in alone] == [("plextv", "PASS"), ("plextv (Den TV (bridge))", "PASS")]
    assert alone[1].detail == f"the Plex apps see it as a player at http://127.0.0.1:{port}"

    plextv.players()[0].connections = []  # plex.tv dropped the connection (what the real one might do)
    alone = await check_plextv(config)
    assert alone[1].status == "WARN" and "do not list it" in alone[1].detail and "start the daemon" in alone[1].fix
