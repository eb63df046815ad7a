"""The hostile LAN of the hardening tests: the bridge, a Plex server and the owner's TV in the test
process, plugged into a netlab segment, and an attacker host in its own network namespace.

The attacker has what any host on a home LAN has: GDM datagrams from an address of its own choosing,
plain HTTP, listening sockets (tests/hardening/lan_attacker.py, run inside its namespace), and a
browser (Chromium started inside its namespace). It also records every frame its interface sees
(promiscuous), so a test can say what reached the attacker's host at all.

``account="linked"``: a plex.tv account is linked (a FakePlexTv on loopback, its account token in the
state dir, as ``companion link`` leaves it) and the owner's TV is registered on plex.tv before the
test body runs. On a clean exit the lab checks that the configured server token and every plex.tv
token (the account's, any device's) never reached the attacker's host, and no plex.tv token reached
the TV or the Plex server.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import struct
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp

from companion.bridge import Bridge
from companion.config import Config
from companion.plextv.store import AccountToken, PlexTvStore
from companion.registry import config_server_id
from tests.fakes.companion_player import FakeCompanionPlayer
from tests.fakes.plex_server import FakePlexServer
from tests.fakes.plextv import FakePlexTv
from tests.hardening.conftest import TOKEN
from tests.helpers import bridge_config, free_port, until
from tests.lab import write_test_profiles
from tests.netlab import GDM_GROUP, Host, Lan

PRIVATE = "777"  # an item of the owner's library that nobody flung
MOVIE = "501"
TV = "Living Room TV"
ACCOUNTS = ("unlinked", "linked")  # the attacker tests run in both


@dataclass
class Lab:
    lan: Lan
    bridge: Bridge
    config: Config
    server: FakePlexServer
    player: FakeCompanionPlayer
    attacker: Host
    me: str  # the test process's (and the bridge's) address on the LAN
    capture: Path  # every frame the attacker's interface saw (see frames())
    plextv: FakePlexTv | None = None  # when an account is linked

    @property
    def server_id(self) -> str:
        return config_server_id(f"https://{self.me}:{self.server.port}")

    def face_port(self, name: str) -> int:
        return next(s.face.port for s in self.bridge.faces.values() if s.target.name == name)

    def face_url(self, name: str, path: str, params: Mapping[str, str] | None = None) -> str:
        query = f"?{urlencode(params)}" if params else ""
        return f"http://{self.me}:{self.face_port(name)}{path}{query}"

    def fling_params(self, key: str = f"/library/metadata/{MOVIE}", **extra: str) -> dict[str, str]:
        return {"key": key, "offset": "0", "type": "video", "protocol": "https", "address": self.me,
                "port": str(self.server.port), "machineIdentifier": self.server.machine_identifier,
                "commandID": "1", **extra}

    async def attack(self, *args: str) -> list[dict[str, Any]]:
        """Run the attacker CLI once inside the attacker's namespace; its JSON lines."""
        done = await asyncio.to_thread(self.attacker.run, *self.attacker.python(
            "-m", "tests.hardening.lan_attacker", *args), check=False)
        assert done.returncode == 0, done.stderr.decode()
        return [json.loads(line) for line in done.stdout.decode().splitlines() if line.strip()]

    async def attack_http(self, method: str, url: str, headers: Mapping[str, str] | None = None,
                          data: str | None = None) -> dict[str, Any]:
        args = ["http", method, url, *(f"--header={k}={v}" for k, v in (headers or {}).items())]
        if data is not None:
            args.append(f"--data={data}")
        (answer,) = await self.attack(*args)
        return answer

    async def gdm(self, start_line: str, headers: Mapping[str, str], *, source: str = "",
                  to: str = "") -> None:
        to = to or f"{GDM_GROUP}:{self.config.gdm.announce_port}"
        await self.attack("gdm", start_line, f"--to={to}", f"--source={source or self.attacker.address}",
                          *(f"--header={k}={v}" for k, v in headers.items()))

    async def owner_fling(self, target: str, key: str) -> tuple[int, dict[str, Any]]:
        """The owner's own fling: POST /api/fling with the admin token, from the bridge host."""
        assert self.bridge.admin is not None
        token = self.bridge.state.admin_token()
        async with aiohttp.ClientSession() as http, http.post(
                f"http://{self.me}:{self.config.http.admin_port}/api/fling",
                json={"target": target, "server": self.server_id, "key": key},
                headers={"Authorization": f"Bearer {token}"}) as resp:
            return resp.status, await resp.json()

    def plextv_tokens(self) -> set[str]:
        """Every token plex.tv handed out (the account's and any device's); none when unlinked."""
        return self.plextv.tokens() if self.plextv is not None else set()

    async def attacker_received(self) -> list[bytes]:
        """Everything the attacker's host has seen so far: each TCP/UDP flow's payload in sequence
        order (so a token split across segments is found whole), and every frame as it came."""
        marker = os.urandom(8).hex().encode()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((self.me, 0))
            sock.sendto(marker, (self.attacker.address, 9))  # the discard port: nothing answers
        await until(lambda: marker in self.capture.read_bytes(), timeout=10,
                    message="the attacker's capture caught up (its marker datagram)")
        frames = self.frames()
        return [*_flows(frames), *frames]

    def frames(self) -> list[bytes]:
        """The frames the attacker's capture holds now (the Ethernet header on)."""
        return list(_frames(self.capture.read_bytes()))

    async def assert_secrets_stayed_home(self) -> None:
        """Neither the configured server token nor (linked) any plex.tv token reached the attacker's
        host; no plex.tv token reached the owner's TV or the Plex server either."""
        account = self.plextv_tokens()
        assert (self.plextv is None) == (not account), "linked: the account token is among plex.tv's tokens"
        received = await self.attacker_received()
        assert received, "the capture saw the LAN"
        leaked = {t for t in {TOKEN} | account for blob in received if t.encode() in blob}
        which = "the server token" if TOKEN in leaked else "a plex.tv token"
        assert not leaked, f"reached the attacker's host: {which}"
        tv = repr([self.player.state.commands, self.player.fetched])
        assert not [t for t in account if t in tv], "a plex.tv token reached the TV"
        assert not [t for t in account if t in repr(self.server.requests)], "a plex.tv token reached the server"


def _frames(data: bytes) -> Iterator[bytes]:
    offset = 0
    while offset + 4 <= len(data):
        (size,) = struct.unpack_from("!I", data, offset)
        yield data[offset + 4:offset + 4 + size]
        offset += 4 + size


def _flows(frames: list[bytes]) -> list[bytes]:
    """The payload of each IPv4/IPv6 TCP or UDP flow: TCP by sequence number (retransmits once)."""
    flows: dict[tuple[bytes, ...], dict[int, bytes]] = {}
    for frame in frames:
        ethertype, packet = struct.unpack_from("!H", frame, 12)[0], frame[14:]
        if ethertype == 0x0800 and len(packet) >= 20:
            header, proto, ends = (packet[0] & 0x0F) * 4, packet[9], (packet[12:16], packet[16:20])
            packet = packet[:struct.unpack_from("!H", packet, 2)[0]]
        elif ethertype == 0x86DD and len(packet) >= 40:
            header, proto, ends = 40, packet[6], (packet[8:24], packet[24:40])
        else:
            continue
        segment = packet[header:]
        if proto == 6 and len(segment) >= 20:
            seq, payload = struct.unpack_from("!I", segment, 4)[0], segment[(segment[12] >> 4) * 4:]
        elif proto == 17 and len(segment) >= 8:
            seq, payload = len(flows.get((*ends, segment[:4]), {})), segment[8:]
        else:
            continue
        if payload:
            flows.setdefault((*ends, segment[:4]), {})[seq] = payload
    return [b"".join(parts[seq] for seq in sorted(parts)) for parts in flows.values()]


def lan_config(tmp_path: Path, me: str, server: FakePlexServer, player: FakeCompanionPlayer, extra: str,
               *, every_interface: bool = False, cors_origins: tuple[str, ...] = ()) -> Config:
    write_test_profiles(tmp_path / "profiles", server)
    root_pem = tmp_path / "lab-root.pem"
    root_pem.write_bytes(server.root_pem)
    config = bridge_config(tmp_path, f"""
servers:
  - {{url: "https://{me}:{server.port}", token: "{TOKEN}"}}
targets:
  - {{name: {TV}, address: {me}, port: {player.port}, profile: lab-old-tv}}
profiles_dirs: [{tmp_path / "profiles"}]
security: {{policy: preferred, relay: true, dns_check: false, extra_roots: ["{root_pem}"]}}
{extra}
""")
    # On the LAN segment: faces, relay, admin and GDM on the test process's LAN address.
    return dataclasses.replace(config, interfaces=() if every_interface else (me,), http=dataclasses.replace(
        config.http, bind=me, admin_port=free_port(host=me), cors_origins=cors_origins or config.http.cors_origins))


@contextlib.asynccontextmanager
async def linked_account(tmp_path: Path, account: str) -> AsyncIterator[tuple[FakePlexTv | None, str]]:
    """``account`` "linked": a FakePlexTv, trusted through SSL_CERT_FILE (the daemon trusts the system
    store), and the config line that points the bridge at it; "unlinked": nothing."""
    assert account in ACCOUNTS, account
    if account == "unlinked":
        yield None, ""
        return
    before = os.environ.get("SSL_CERT_FILE")
    async with FakePlexTv() as plextv:
        os.environ["SSL_CERT_FILE"] = plextv.write_ca(tmp_path / "plextv-ca.pem")
        try:
            yield plextv, f'plextv: {{url: "{plextv.url}"}}'
        finally:
            if before is None:
                os.environ.pop("SSL_CERT_FILE", None)
            else:
                os.environ["SSL_CERT_FILE"] = before


async def start_sniffer(attacker: Host, out: Path) -> None:
    proc = await attacker.spawn(*attacker.python("-m", "tests.hardening.lan_attacker", "sniff", "--iface=lan0",
                                                 f"--out={out}"))
    assert proc.stdout is not None
    async with asyncio.timeout(20):
        assert b"sniffing" in await proc.stdout.readline()


@contextlib.asynccontextmanager
async def lan_lab(tmp_path: Path, extra: str = "", *, every_interface: bool = False,
                  cors_origins: tuple[str, ...] = (), account: str = "unlinked") -> AsyncIterator[Lab]:
    async with Lan("attacker", join_self=True) as lan, linked_account(tmp_path, account) as (plextv, plextv_yaml):
        me = lan.self_address
        assert me is not None
        capture = tmp_path / "attacker-frames.bin"
        await start_sniffer(lan["attacker"], capture)
        server = FakePlexServer(token=TOKEN, host=me, items={MOVIE: "Fake Movie", PRIVATE: "The Owner's Private Video"})
        player = FakeCompanionPlayer(name=TV, product="Lab TV", host=me)
        player.use_cases.fetch_media = True  # plays what it is flung, as a real TV does
        await server.start()
        await player.start()
        # "{attacker}" in an allowed origin: the attacker host's address (a page the owner trusts there).
        origins = tuple(o.replace("{attacker}", lan["attacker"].address) for o in cors_origins)
        config = lan_config(tmp_path, me, server, player, f"{extra}\n{plextv_yaml}", every_interface=every_interface,
                            cors_origins=origins)
        if plextv is not None:
            PlexTvStore(config.state_path).save(AccountToken(plextv.issue_account_token()))  # `companion link`
        try:
            async with Bridge(config) as bridge:
                await until(lambda: any(s.target.name == TV for s in bridge.faces.values()), timeout=10,
                            message="the owner's TV has its face")
                if plextv is not None:
                    tv = next(s.advert.resource_identifier for s in bridge.faces.values() if s.target.name == TV)
                    await until(lambda: bool((d := plextv.device_by_client(tv)) and d.connections), timeout=15,
                                message="the owner's TV registered on plex.tv with the account token")
                lab = Lab(lan, bridge, config, server, player, lan["attacker"], me, capture, plextv)
                yield lab
        finally:
            await player.stop()
            await server.stop()
        await lab.assert_secrets_stayed_home()


async def arrived(lab: Lab, ident: str) -> None:
    """Announce a harmless player from the attacker's own address and wait until the bridge has it:
    the datagrams the attacker sent before have been handled by then (one sender, one link, in order)."""
    await lab.gdm("HELLO * HTTP/1.0", {"Content-Type": "plex/media-player", "Resource-Identifier": ident,
                                       "Name": ident, "Port": "40009", "Protocol-Capabilities": "timeline"})
    await until(lambda: lab.bridge.registry.find_target(ident) is not None, timeout=10,
                message=f"the attacker's later datagram ({ident}) was handled")


def private_requests(server: FakePlexServer) -> list[str]:
    return [r.path for r in server.requests if PRIVATE in r.path or PRIVATE in str(r.query)]


async def spawn_listener(lab: Lab, port: int) -> asyncio.subprocess.Process:
    """The attacker's fake "player": records every request the bridge sends it."""
    proc = await lab.attacker.spawn(*lab.attacker.python(
        "-m", "tests.hardening.lan_attacker", "listen", f"--bind={lab.attacker.address}:{port}"))
    assert proc.stdout is not None
    async with asyncio.timeout(20):
        assert b"listening" in await proc.stdout.readline()
    return proc


async def lines_so_far(proc: asyncio.subprocess.Process, *, wait: float) -> list[dict[str, Any]]:
    """What a spawned attacker process printed within ``wait`` seconds (a collection window)."""
    assert proc.stdout is not None
    out: list[dict[str, Any]] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(wait):
            while line := await proc.stdout.readline():
                out.append(json.loads(line))
    return out
