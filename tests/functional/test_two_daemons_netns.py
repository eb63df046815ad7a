"""Two real daemons on one LAN with one real player: exactly one face, and a takeover in time.

Hosts on one Ethernet segment (tests/netlab.py): daemon A, daemon B (each ``python -m companion run
--config ...`` in its own network namespace), plex-mpv-shim (a real Plex Companion player, headless
under mpv's null outputs) in a third, and this test process as the controller, searching GDM over
multicast as a phone does. For 60 s every search must see exactly one face (the one for the shim,
from the daemon that ranks first for it); then that daemon is SIGKILLed (no BYE) and a search must
see exactly one face again, from the other daemon, within ``timeouts.target_expiry``.

Everything stays inside the namespaces the test creates; needs root (the suite runs as root).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from companion.election import outranks
from companion.model import stable_id
from companion.proto.gdm import GdmMessage, face_identifier
from tests.fakes.gdm_peer import FakeGdmPeer
from tests.netlab import GDM_GROUP, Host, Lan

REPO = Path(__file__).resolve().parents[2]
SHIM_UUID = "netns-shim-0001"
SHIM_NAME = "Shim TV"
EXPIRY = 12.0  # timeouts.target_expiry of both daemons
SEARCH = 3.0  # gdm.search_interval: the shim answers at most two datagrams a second (it sleeps 0.5 s
#               after each), so the daemons and the controller together must ask less often than that
WINDOW = 60.0  # how long exactly one face must be seen
LISTEN = 1.5  # how long each controller search collects answers
BRIDGE_IDS = {"b": "6a1c1f0e-0000-4000-8000-00000000000a", "a": "6a1c1f0e-0000-4000-8000-00000000000b"}


@dataclass
class Check:
    """One controller search: when, and the faces that answered (sender, headers)."""

    at: float
    faces: list[tuple[str, dict[str, str]]]
    shim_answered: bool


def _daemon_config(host: Host, state: Path) -> str:
    return f"""
name: bridge-{host.name}
interfaces: [{host.address}]
gdm: {{group: {GDM_GROUP}, search_interval: {SEARCH}, hello_interval: 10}}
mdns: {{enabled: false}}
http: {{admin_port: 0, relay_port: 0, face_port_base: 32500}}
timeouts: {{target_expiry: {EXPIRY}}}
state_dir: {state}
"""


async def _start_shim(host: Host, home: Path) -> asyncio.subprocess.Process:
    """plex-mpv-shim with its own config: fixed name and uuid, HTTP allowed, no GUI, null outputs."""
    conf = home / "plex-mpv-shim"
    conf.mkdir(parents=True)
    (conf / "conf.json").write_text(json.dumps({
        "player_name": SHIM_NAME, "client_uuid": SHIM_UUID, "http_port": "3000", "allow_http": True,
        "enable_gui": False, "fullscreen": False}))
    (conf / "mpv.conf").write_text("vo=null\nao=null\n")
    err = (home / "shim.log").open("wb")
    try:
        # cwd: the shim migrates a settings.dat it finds in its working directory.
        return await host.spawn(*host.python("-c", "from plex_mpv_shim.mpv_shim import main; main()"),
                                env={"XDG_CONFIG_HOME": str(home)}, stdout=err, stderr=err, cwd=home)
    finally:
        err.close()


async def _search(lan: Lan) -> tuple[list[tuple[str, GdmMessage]], float]:
    assert lan.self_address is not None
    async with FakeGdmPeer(bind=(lan.self_address, 0), interface=lan.self_address) as controller:
        at = time.monotonic()
        replies = await controller.search_replies((GDM_GROUP, 32412), timeout=LISTEN)
    return [(got.sender[0], got.message) for got in replies if got.message is not None], at


async def _check(lan: Lan) -> Check:
    replies, at = await _search(lan)
    faces = [(sender, dict(m.headers)) for sender, m in replies
             if m.get("Bridge-Identifier") or m.get("Product") == "companion-bridge"]
    return Check(at, faces, any(m.get("Resource-Identifier") == SHIM_UUID for _, m in replies))


async def _until_check(lan: Lan, pred: Callable[[Check], bool], bound: float, what: str,
                       seen: list[Check]) -> Check:
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        check = await _check(lan)
        seen.append(check)
        if pred(check):
            return check
    pytest.fail(f"{what}: not seen within {bound:g} s; last checks: {[c.faces for c in seen[-3:]]}")


@pytest.mark.netns
@pytest.mark.timeout(300)
async def test_two_daemons_keep_exactly_one_face_for_a_real_player_and_hand_it_over_when_one_dies(tmp_path):
    target_id = stable_id("companion", SHIM_UUID)
    face_id = face_identifier(target_id)
    expected = "a" if outranks(BRIDGE_IDS["a"], BRIDGE_IDS["b"], target_id) else "b"
    other = "b" if expected == "a" else "a"
    async with Lan("bridge-a", "bridge-b", "shim", join_self=True) as lan:
        shim = await _start_shim(lan["shim"], tmp_path / "shim")
        await _until_check(lan, lambda c: c.shim_answered, 20.0, "plex-mpv-shim answers GDM", [])

        daemons: dict[str, asyncio.subprocess.Process] = {}
        logs: dict[str, Path] = {}
        for side in ("a", "b"):
            host = lan[f"bridge-{side}"]
            state = tmp_path / f"state-{side}"
            state.mkdir(mode=0o700)
            (state / "identity").write_text(BRIDGE_IDS[side] + "\n")
            config = tmp_path / f"bridge-{side}.yaml"
            config.write_text(_daemon_config(host, state))
            logs[side] = tmp_path / f"bridge-{side}.log"
            with logs[side].open("wb") as err:
                daemons[side] = await host.spawn(
                    *host.python("-m", "companion", "--log-level", "info", "run", "--config", str(config)),
                    stdout=asyncio.subprocess.DEVNULL, stderr=err, cwd=REPO)

        def log_of(side: str) -> str:
            return logs[side].read_text()

        # Both started at the same moment: let the start-up race settle (bounded), then watch.
        settle: list[Check] = []
        await _until_check(lan, lambda c: len(c.faces) == 1 and all("started" in log_of(s) for s in "ab"),
                           20.0, "one face on the LAN with both daemons started", settle)

        watched: list[Check] = []
        start = time.monotonic()
        while time.monotonic() - start < WINDOW:
            check = await _check(lan)
            watched.append(check)
            assert len(check.faces) == 1, f"{len(check.faces)} faces at +{check.at - start:.1f} s: {check.faces}"
            ((sender, headers),) = check.faces
            assert headers["Resource-Identifier"] == face_id
            assert headers["Bridged-Target"] == target_id
            assert headers["Bridge-Identifier"] == BRIDGE_IDS[expected], "the face is not on the first-ranked bridge"
            assert sender == lan[f"bridge-{expected}"].address
            assert headers["Name"] == f"{SHIM_NAME} (bridge)"
            for side in "ab":
                assert daemons[side].returncode is None, f"daemon {side} exited: {log_of(side)}"
        assert shim.returncode is None
        assert sum(c.shim_answered for c in watched) >= len(watched) // 2, "the real player stopped answering"

        # The holder dies without a word.
        os.killpg(daemons[expected].pid, signal.SIGKILL)
        killed = time.monotonic()
        await daemons[expected].wait()
        during: list[Check] = []
        back = await _until_check(
            lan, lambda c: len(c.faces) == 1 and c.faces[0][0] == lan[f"bridge-{other}"].address,
            EXPIRY + 2 * LISTEN + 5.0, "the other daemon's face after the holder died", during)
        takeover = back.at - killed
        assert all(len(c.faces) <= 1 for c in during), [c.faces for c in during]
        assert takeover <= EXPIRY, f"takeover took {takeover:.1f} s, more than the expiry ({EXPIRY:g} s)"
        assert back.faces[0][1]["Resource-Identifier"] == face_id, "the face kept its identity"
        assert back.faces[0][1]["Bridge-Identifier"] == BRIDGE_IDS[other]

        after: list[Check] = []
        steady_until = time.monotonic() + 2 * SEARCH
        while time.monotonic() < steady_until:
            after.append(await _check(lan))
        assert all(len(c.faces) == 1 for c in after), [c.faces for c in after]

    survivor, dead = log_of(other), log_of(expected)
    assert "(bridge) (bridge)" not in survivor + dead
    assert survivor.count("taking it over") == 1, survivor
    for text in (survivor, dead):
        assert text.count("yielding it") + text.count("leaving it to") <= 1, text
    print(f"\ntwo daemons: {len(watched)} searches in {WINDOW:g} s, faces seen per search "
          f"{sorted({len(c.faces) for c in watched})}, holder bridge-{expected}; "
          f"takeover seen {takeover:.1f} s after SIGKILL (expiry {EXPIRY:g} s), "
          f"faces during takeover {[len(c.faces) for c in during]}; settle searches {len(settle)}")
