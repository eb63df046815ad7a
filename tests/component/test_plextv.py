"""plex.tv against FakePlexTv over TLS: the link flow and each of its failures, the per-face devices
(registered by a PIN claimed with the account token, connection published, refreshed on an address
change, deleted when the face goes, retried when plex.tv fails), and unlink."""

from __future__ import annotations

import asyncio
import io
import os
import ssl
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from companion.config import Config
from companion.errors import PinExpired, PlexTvDenied, PlexTvUnauthorized, PlexTvUnreachable
from companion.plextv.api import PlexTvApi
from companion.plextv.devices import PlexTvRegistrar
from companion.plextv.link import bridge_identity, face_identity, link, unlink
from companion.plextv.store import AccountToken, PlexTvStore
from tests.fakes.plextv import FakePlexTv
from tests.helpers import free_port, until

BRIDGE = bridge_identity(Config(name="test-bridge"), "bridge-0001")


@pytest.fixture
async def plextv() -> AsyncIterator[FakePlexTv]:
    async with FakePlexTv() as fake:
        yield fake


def api_for(fake: FakePlexTv, *, trusted: bool = True) -> PlexTvApi:
    ctx = ssl.create_default_context(cadata=fake.ca_pem.decode()) if trusted else ssl.create_default_context()
    return PlexTvApi(fake.url, timeout=10.0, ssl_ctx=ctx)


async def enter_code_when_shown(fake: FakePlexTv, out: io.StringIO) -> str:
    await until(lambda: "enter this code: " in out.getvalue(), timeout=5, message="the code is shown")
    code = out.getvalue().split("enter this code: ")[1][:4]
    fake.enter_code(code)
    return code


async def linked(fake: FakePlexTv, store: PlexTvStore) -> AccountToken:
    out = io.StringIO()
    async with api_for(fake) as api:
        entering = asyncio.ensure_future(enter_code_when_shown(fake, out))
        await link(api, store, BRIDGE, timeout=10, out=out, poll_interval=0.05)
        await entering
    token = store.load()
    assert token is not None
    return token


async def test_link_shows_the_code_and_where_to_enter_it_then_stores_the_token_0600(
        plextv: FakePlexTv, tmp_path: Path) -> None:
    store = PlexTvStore(tmp_path / "state", credentials_dir="")
    out = io.StringIO()
    async with api_for(plextv) as api:
        entering = asyncio.ensure_future(enter_code_when_shown(plextv, out))
        result = await link(api, store, BRIDGE, timeout=10, out=out, poll_interval=0.05)
        code = await entering
    assert f"Go to {plextv.url}/link and enter this code: {code}" in out.getvalue()
    assert result.account.name == "Alice Example"
    assert result.saved_to == tmp_path / "state" / "plextv-token"
    assert stat.S_IMODE(result.saved_to.stat().st_mode) == 0o600
    token = result.saved_to.read_text().strip()
    assert token in plextv.tokens(), "the stored token is the one plex.tv handed out for the code"
    assert token not in out.getvalue(), "the token is never shown"
    assert repr(store.load()) == "AccountToken(<hidden>)"
    (pin,) = plextv.pins.values()
    assert pin.client_id == "bridge-0001" and pin.headers["X-Plex-Product"] == "companion-bridge"


async def test_link_failures_each_say_what_happened_and_what_to_do(plextv: FakePlexTv, tmp_path: Path) -> None:
    store = PlexTvStore(tmp_path / "state", credentials_dir="")
    async with api_for(plextv) as api:
        plextv.use_cases.pin_expires_in = 1
        with pytest.raises(PinExpired, match=r"expired before it was entered at .*/link: run `companion link` again"):
            await link(api, store, BRIDGE, timeout=30, out=io.StringIO(), poll_interval=0.05)
        plextv.use_cases.pin_expires_in = 900
        with pytest.raises(PinExpired, match=r"nobody entered the code .* within 0.3 s"):
            await link(api, store, BRIDGE, timeout=0.3, out=io.StringIO(), poll_interval=0.05)
        plextv.use_cases.deny_pins = True
        with pytest.raises(PlexTvDenied, match=r"plex.tv denied the link \(plex.tv answered 403"):
            await link(api, store, BRIDGE, timeout=5, out=io.StringIO(), poll_interval=0.05)
        plextv.use_cases.deny_pins = False
        out = io.StringIO()
        entering = asyncio.ensure_future(enter_code_when_shown(plextv, out))
        plextv.use_cases.reject_tokens = True  # the token for the code is refused at once
        with pytest.raises(PlexTvUnauthorized, match=r"handed out a token for the code and then rejected it \(401\)"):
            await link(api, store, BRIDGE, timeout=5, out=out, poll_interval=0.05)
        await entering
    closed = free_port()
    async with PlexTvApi(f"https://127.0.0.1:{closed}", timeout=2) as down:
        with pytest.raises(PlexTvUnreachable, match=rf"cannot reach plex.tv at https://127.0.0.1:{closed}: .*"
                                                     r"Check this host's internet access"):
            await link(down, store, BRIDGE, timeout=5, out=io.StringIO())
    async with api_for(plextv, trusted=False) as untrusted:
        with pytest.raises(PlexTvUnreachable, match="certificate is not trusted"):
            await link(untrusted, store, BRIDGE, timeout=5, out=io.StringIO())
    assert store.load() is None, "no failure leaves a token behind"
    assert not (tmp_path / "state" / "plextv-token").exists()


def registrar(fake: FakePlexTv, store: PlexTvStore, **kw: float) -> PlexTvRegistrar:
    return PlexTvRegistrar(api=api_for(fake), store=store, identity=BRIDGE,
                           refresh_interval=kw.get("refresh", 300.0), address_check=kw.get("check", 0.1))


async def test_each_face_becomes_a_player_device_with_its_lan_connection_and_goes_when_the_face_goes(
        plextv: FakePlexTv, tmp_path: Path) -> None:
    store = PlexTvStore(tmp_path / "state", credentials_dir="")
    account = await linked(plextv, store)
    addresses = {"face-a": "http://10.0.0.2:32500", "face-b": "http://10.0.0.2:32501"}
    reg = registrar(plextv, store)
    await reg.start()
    try:
        for ident, name in (("face-a", "Living Room TV (bridge)"), ("face-b", "Kitchen (bridge)")):
            reg.add_face(ident, face_identity(Config(), ident, name), lambda i=ident: addresses[i])
        await until(lambda: len([d for d in plextv.players() if d.connections]) == 2, timeout=10,
                    message="both faces registered with a connection")
        a = plextv.device_by_client("face-a")
        assert a is not None
        assert (a.name, a.provides, a.connections) == ("Living Room TV (bridge)", "client,player,pubsub-player",
                                                        ["http://10.0.0.2:32500"])
        await until(lambda: reg.status("face-a").registered, message="the registrar saw its publication succeed")
        assert reg.status("face-a").account == "Alice Example"
        device_tokens = store.devices()["face-a"].token
        assert device_tokens in a.tokens and not account.same_as(AccountToken(device_tokens)), \
            "each face has its own device token"
        claims = [s for s in plextv.seen if s.path == "/api/v2/pins/link"]
        assert len(claims) == 2 and all(s.headers["X-Plex-Client-Identifier"] == "bridge-0001" for s in claims)
        puts = [s for s in plextv.seen if s.method == "PUT" and s.path.startswith("/devices/")]
        assert all(s.headers["X-Plex-Token"] != account.reveal() for s in puts), \
            "connections are published with the device token, not the account token"

        addresses["face-a"] = "http://10.0.1.7:32500"  # the bridge got another address on that LAN
        await until(lambda: a.connections == ["http://10.0.1.7:32500"], timeout=5, message="new address published")

        reg.remove_face("face-b")
        await until(lambda: plextv.device_by_client("face-b") is None, timeout=5, message="face-b's device deleted")
        await until(lambda: "face-b" not in store.devices(), timeout=5, message="and its record dropped")
        assert stat.S_IMODE(store.devices_file.stat().st_mode) == 0o600
    finally:
        await reg.stop()


async def test_plextv_failures_are_retried_with_backoff_and_shown_with_the_fix(
        plextv: FakePlexTv, tmp_path: Path) -> None:
    store = PlexTvStore(tmp_path / "state", credentials_dir="")
    await linked(plextv, store)
    plextv.use_cases.fail_connection_put = 1
    reg = registrar(plextv, store)
    await reg.start()
    try:
        reg.add_face("face-a", face_identity(Config(), "face-a", "TV (bridge)"), lambda: "http://10.0.0.2:32500")
        await until(lambda: reg.status("face-a").last_error != "", timeout=5, message="the failure is recorded")
        status = reg.status("face-a")
        assert not status.registered and "HTTP 503" in status.last_error and "retries in" in status.fix
        await until(lambda: reg.status("face-a").registered, timeout=15, message="registered after the backoff")
    finally:
        await reg.stop()


async def test_plextv_down_never_blocks_and_an_unlinked_bridge_says_how_to_link(tmp_path: Path) -> None:
    store = PlexTvStore(tmp_path / "state", credentials_dir="")
    reg = PlexTvRegistrar(api=PlexTvApi(f"https://127.0.0.1:{free_port()}", timeout=1), store=store,
                          identity=BRIDGE, refresh_interval=300, address_check=0.1)
    await reg.start()
    try:
        reg.add_face("face-a", face_identity(Config(), "face-a", "TV (bridge)"), lambda: "http://10.0.0.2:1")
        await until(lambda: reg.status("face-a").fix.startswith("run `companion link`"), message="unlinked")
        store.save(AccountToken("tok-not-known-anywhere"))
        await until(lambda: "cannot reach plex.tv" in reg.status("face-a").last_error, timeout=5,
                    message="plex.tv unreachable is shown")
    finally:
        await asyncio.wait_for(reg.stop(), 5)


async def test_unlink_deletes_every_device_the_bridge_registered_then_the_token(
        plextv: FakePlexTv, tmp_path: Path) -> None:
    store = PlexTvStore(tmp_path / "state", credentials_dir="")
    await linked(plextv, store)
    reg = registrar(plextv, store)
    await reg.start()
    try:
        for i in range(3):
            reg.add_face(f"face-{i}", face_identity(Config(), f"face-{i}", f"TV {i} (bridge)"),
                         lambda i=i: f"http://10.0.0.2:{32500 + i}")
        await until(lambda: len(store.devices()) == 3, timeout=10, message="three devices registered")
    finally:
        await reg.stop()
    other = plextv.device_by_client("bridge-0001")
    assert other is not None  # the bridge's own link device; a foreign player must survive too
    async with api_for(plextv) as api:
        result = await unlink(api, store, BRIDGE, {"face-9-never-registered"})
    assert sorted(result.deleted) == ["TV 0 (bridge)", "TV 1 (bridge)", "TV 2 (bridge)"]
    assert plextv.players() == []
    assert store.load() is None and result.token_removed
    assert store.devices() == {}


async def test_each_device_is_refreshed_every_refresh_interval(plextv: FakePlexTv, tmp_path: Path) -> None:
    store = PlexTvStore(tmp_path / "state", credentials_dir="")
    await linked(plextv, store)
    reg = registrar(plextv, store, refresh=0.3, check=60)
    await reg.start()
    try:
        reg.add_face("face-a", face_identity(Config(), "face-a", "TV (bridge)"), lambda: "http://10.0.0.2:32500")

        def puts() -> int:
            return sum(1 for s in plextv.seen if s.method == "PUT" and s.path.startswith("/devices/"))

        await until(lambda: puts() >= 3, timeout=5, message="three publications, one per refresh interval")
        face_pins = [p for p in plextv.pins.values() if p.client_id == "face-a"]
        assert len(face_pins) == 1, "registered once, then only refreshed"
    finally:
        await reg.stop()


def test_files_written_as_root_into_the_services_state_directory_go_to_its_owner(tmp_path: Path) -> None:
    # `sudo STATE_DIRECTORY=/var/lib/companion-bridge companion link`: the directory belongs to the
    # service's DynamicUser, which could not read a root-owned 0600 token file.
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 61234, 61234)
    store = PlexTvStore(state, credentials_dir="")
    path = store.save(AccountToken("tok-for-the-service"))
    store.save_devices({})
    for written in (path, store.devices_file):
        info = written.stat()
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (61234, 61234, 0o600)
    own = PlexTvStore(tmp_path / "root-owned", credentials_dir="").save(AccountToken("tok"))
    assert own.stat().st_uid == os.geteuid()


async def test_a_face_moved_to_another_bridge_is_forgotten_not_deleted(plextv: FakePlexTv, tmp_path: Path) -> None:
    # Two bridges give a target the same face identity; the one taking it over registers that identity.
    store = PlexTvStore(tmp_path / "state", credentials_dir="")
    await linked(plextv, store)
    reg = registrar(plextv, store)
    await reg.start()
    try:
        reg.add_face("face-a", face_identity(Config(), "face-a", "TV (bridge)"), lambda: "http://10.0.0.2:32500")
        await until(lambda: reg.status("face-a").registered, timeout=10, message="registered")
        reg.forget_face("face-a")
        await until(lambda: store.devices() == {}, timeout=5, message="its record dropped")
    finally:
        await reg.stop()
    assert plextv.device_by_client("face-a") is not None, "the device stays for the bridge that took the face"
    assert not any(s.method == "DELETE" for s in plextv.seen)
