"""The capture lab endpoint against TLS clients whose behaviour we set: Python ssl clients (versions,
cipher lists, trust, an AIA fetcher of our own), ``openssl s_client`` and curl. What the lab records
must be what each client was set to do. And a capture against a Companion player whose timeline
reports about one item arrive after the next item was flung."""

from __future__ import annotations

import asyncio
import collections.abc
import contextlib
import gc
import socket
import ssl
import subprocess
import urllib.parse
import warnings
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtensionOID

from companion.lab.capture import Capture, CaptureTarget, lab_app
from companion.lab.media import make_tone
from companion.lab.pki import LabPki
from companion.lab.server import ENDPOINTS, Handshake, LabServer
from companion.proto import plexdirect
from tests.helpers import until

LOOPBACK = "127.0.0.1"
EP = {e.name: e for e in ENDPOINTS}


@dataclass
class Lab:
    server: LabServer
    pki: LabPki
    name: str

    def serve(self, endpoint: str) -> None:
        self.server.serve(EP[endpoint], self.name, (self.name, LOOPBACK))

    async def run(self, client: Callable[[], str]) -> list[Handshake]:
        """Run one client (a blocking callable, in a thread); return the handshakes it made, all ended."""
        first = self.server.handshakes[-1].id if self.server.handshakes else 0
        self.verdict = await asyncio.to_thread(client)
        await until(lambda: all(h.done for h in self.server.handshakes if h.id > first), 10,
                    message="every handshake of the client ended")
        return [h for h in self.server.handshakes if h.id > first]


@pytest.fixture
async def lab() -> AsyncIterator[Lab]:
    pki = LabPki()
    app = lab_app("lab-test", {"100": "tone"}, make_tone(0.5), 500)
    async with LabServer(pki, app, bind=LOOPBACK, port=0) as server:
        yield Lab(server, pki, plexdirect.build_name(LOOPBACK, pki.hash))


# --- clients ---------------------------------------------------------------------------------


def python_client(port: int, name: str, *, min_version: ssl.TLSVersion | None = None,
                  max_version: ssl.TLSVersion | None = None, ciphers: str | None = None,
                  trust: bytes | None = None, alpn: list[str] | None = None, agent: str = "py-test") -> str:
    """A blocking Python ssl client (what urllib does); returns 'ok' or the error's reason."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if min_version:
        ctx.minimum_version = min_version
    if max_version:
        ctx.maximum_version = max_version
    if ciphers:
        ctx.set_ciphers(ciphers)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if trust:
        ctx.load_verify_locations(cadata=trust.decode())
    try:
        with socket.create_connection((LOOPBACK, port), timeout=10) as sock, \
                ctx.wrap_socket(sock, server_hostname=name) as tls:
            tls.sendall(f"GET /identity HTTP/1.1\r\nHost: {name}\r\nUser-Agent: {agent}\r\n"
                        "Connection: close\r\n\r\n".encode())
            reply = b""
            while chunk := tls.recv(65536):
                reply += chunk
            return "ok" if reply.startswith(b"HTTP/1.1 200") else "bad reply"
    except ssl.SSLError as exc:
        return exc.reason or str(exc)


def aia_following_client(port: int, name: str, trust: bytes) -> str:
    """A Python client that, when the chain cannot be verified, fetches the missing issuer from the
    leaf's AIA "CA Issuers" URL and tries again with it (what Windows and Android do)."""
    first = python_client(port, name, trust=trust, agent="py-aia")
    if first != "CERTIFICATE_VERIFY_FAILED":
        return first
    look = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    look.check_hostname = False
    look.verify_mode = ssl.CERT_NONE
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock, \
            look.wrap_socket(sock, server_hostname=name) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    leaf = x509.load_der_x509_certificate(der)
    aia = leaf.extensions.get_extension_for_oid(ExtensionOID.AUTHORITY_INFORMATION_ACCESS).value
    url = next(d.access_location.value for d in aia if d.access_method == AuthorityInformationAccessOID.CA_ISSUERS)
    parts = urllib.parse.urlsplit(url)
    # The name resolves to the lab (as the device's resolver would answer for plex.direct).
    with socket.create_connection((LOOPBACK, parts.port or 80), timeout=10) as sock:
        sock.sendall(f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUser-Agent: py-aia\r\n"
                     "Connection: close\r\n\r\n".encode())
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    issuer = x509.load_der_x509_certificate(reply.split(b"\r\n\r\n", 1)[1])
    return python_client(port, name, trust=trust + issuer.public_bytes(serialization.Encoding.PEM), agent="py-aia")


def run(cmd: list[str]) -> str:
    done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=False)
    return f"exit {done.returncode}"


def only(shakes: list[Handshake]) -> Handshake:
    assert len(shakes) == 1, [s.to_json() for s in shakes]
    assert shakes[0].hello is not None, shakes[0].hello_error
    return shakes[0]


# --- Python ssl ------------------------------------------------------------------------------


async def test_python_tls12_client_with_two_ciphers_is_recorded_as_set_and_rejects_the_chain(lab: Lab) -> None:
    lab.serve("rsa")
    shake = only(await lab.run(lambda: python_client(
        lab.server.port, lab.name, max_version=ssl.TLSVersion.TLSv1_2,
        ciphers="ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384", alpn=["http/1.1"])))
    assert lab.verdict == "CERTIFICATE_VERIFY_FAILED"
    assert shake.hello.versions == ("1.2",)
    assert shake.hello.openssl_ciphers == ("ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384")
    assert (shake.hello.sni, shake.hello.alpn) == (lab.name, ("http/1.1",))
    assert (shake.outcome, shake.alert) == ("alert", "unknown_ca")


async def test_python_tls12_client_meets_a_tls13_only_endpoint_and_is_refused(lab: Lab) -> None:
    lab.serve("tls13")
    shake = only(await lab.run(lambda: python_client(lab.server.port, lab.name,
                                                     max_version=ssl.TLSVersion.TLSv1_2)))
    assert shake.outcome == "refused", shake.to_json()
    assert shake.server_reason == "UNSUPPORTED_PROTOCOL"


async def test_python_tls13_client_that_trusts_the_lab_completes_and_its_request_is_seen(lab: Lab) -> None:
    trust = lab.pki.roots_pem
    for endpoint, version in (("rsa", "TLSv1.3"), ("ecdsa", "TLSv1.3"), ("tls13", "TLSv1.3")):
        lab.serve(endpoint)
        shake = only(await lab.run(lambda: python_client(lab.server.port, lab.name, trust=trust,
                                                         min_version=ssl.TLSVersion.TLSv1_3, agent="py13")))
        assert lab.verdict == "ok"
        assert shake.hello.versions == ("1.3",)
        assert (shake.outcome, shake.version, shake.user_agent, shake.paths) == (
            "completed", version, "py13", ["/identity"]), endpoint
    lab.serve("tls12")
    shake = only(await lab.run(lambda: python_client(lab.server.port, lab.name, trust=trust,
                                                     min_version=ssl.TLSVersion.TLSv1_3)))
    assert shake.outcome == "refused"


async def test_a_client_that_follows_aia_is_recorded_fetching_the_intermediate(lab: Lab) -> None:
    lab.serve("aia")
    shakes = await lab.run(lambda: aia_following_client(lab.server.port, lab.name, lab.pki.root_pem("rsa")))
    assert lab.verdict == "ok"
    assert [s.outcome for s in shakes] == ["alert", "completed", "completed"]
    assert shakes[0].alert == "unknown_ca"
    assert [(f.path, f.user_agent) for f in lab.server.fetches] == [(lab.server.aia_path("rsa"), "py-aia")]
    assert shakes[-1].paths == ["/identity"]


async def test_a_client_that_does_not_follow_aia_is_recorded_without_a_fetch(lab: Lab) -> None:
    lab.serve("aia")
    shake = only(await lab.run(lambda: python_client(lab.server.port, lab.name, trust=lab.pki.root_pem("rsa"))))
    assert (shake.outcome, shake.alert) == ("alert", "unknown_ca")
    assert not lab.server.fetches


# --- openssl s_client and curl ---------------------------------------------------------------


async def test_openssl_s_client_is_recorded_as_configured(lab: Lab) -> None:
    lab.serve("rsa")
    shake = only(await lab.run(lambda: run([
        "openssl", "s_client", "-connect", f"{LOOPBACK}:{lab.server.port}", "-servername", lab.name, "-tls1_2",
        "-cipher", "ECDHE-RSA-AES256-GCM-SHA384", "-alpn", "http/1.1", "-verify_return_error"])))
    assert lab.verdict != "exit 0"
    assert shake.hello.versions == ("1.2",)
    assert shake.hello.openssl_ciphers == ("ECDHE-RSA-AES256-GCM-SHA384",)
    assert (shake.hello.sni, shake.hello.alpn) == (lab.name, ("http/1.1",))
    assert (shake.outcome, shake.alert) == ("alert", "unknown_ca")


async def test_openssl_s_client_without_sni_and_ecdsa_only_suites(lab: Lab) -> None:
    lab.serve("ecdsa")
    shake = only(await lab.run(lambda: run([
        "openssl", "s_client", "-connect", f"{LOOPBACK}:{lab.server.port}", "-noservername", "-tls1_2",
        "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256", "-verify_return_error"])))
    assert shake.hello.sni is None
    assert shake.hello.openssl_ciphers == ("ECDHE-ECDSA-AES128-GCM-SHA256",)
    assert (shake.outcome, shake.alert) == ("alert", "unknown_ca")  # it got as far as our ECDSA chain


async def test_curl_tls13_with_one_suite_rejects_the_chain_with_an_encrypted_alert(lab: Lab) -> None:
    lab.serve("rsa")
    url = f"https://{lab.name}:{lab.server.port}/identity"
    resolve = f"{lab.name}:{lab.server.port}:{LOOPBACK}"
    shake = only(await lab.run(lambda: run([
        "curl", "-sS", "-o", "/dev/null", "--http1.1", "--tlsv1.3", "--tls13-ciphers", "TLS_AES_128_GCM_SHA256",
        "--resolve", resolve, url])))
    assert lab.verdict == "exit 60"  # curl: peer certificate cannot be authenticated
    assert shake.hello.versions == ("1.3",)
    assert [c for c in shake.hello.cipher_names if c.startswith("TLS_AES") or "CHACHA" in c] == \
        ["TLS_AES_128_GCM_SHA256"]
    assert shake.hello.alpn == ("http/1.1",)
    # TLS 1.3: the alert is encrypted; OpenSSL decrypts it and names it.
    assert (shake.outcome, shake.alert) == ("alert", "unknown_ca")


async def test_curl_that_trusts_the_lab_completes_and_does_not_follow_aia(lab: Lab, tmp_path) -> None:
    ca = tmp_path / "lab-root.pem"
    ca.write_bytes(lab.pki.root_pem("rsa"))
    resolve = f"{lab.name}:{lab.server.port}:{LOOPBACK}"
    url = f"https://{lab.name}:{lab.server.port}/identity"
    lab.serve("tls12")
    shake = only(await lab.run(lambda: run(["curl", "-sS", "-o", "/dev/null", "--cacert", str(ca), "--resolve",
                                            resolve, url])))
    assert lab.verdict == "exit 0"
    assert (shake.outcome, shake.version, shake.paths) == ("completed", "TLSv1.2", ["/identity"])
    assert shake.user_agent.startswith("curl/")
    lab.serve("aia")
    shake = only(await lab.run(lambda: run(["curl", "-sS", "-o", "/dev/null", "--cacert", str(ca), "--resolve",
                                            resolve, url])))
    assert (shake.outcome, shake.alert) == ("alert", "unknown_ca")
    assert not lab.server.fetches


# --- the endpoint itself ---------------------------------------------------------------------


async def test_garbage_and_silence_are_ended_without_harm(lab: Lab) -> None:
    lab.serve("rsa")
    reader, writer = await asyncio.open_connection(LOOPBACK, lab.server.port)
    writer.write(b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00")  # a handshake record that is no ClientHello
    await writer.drain()
    await until(lambda: bool(lab.server.handshakes) and lab.server.handshakes[-1].done, 10,
                message="the bogus handshake ended")
    shake = lab.server.handshakes[-1]
    assert shake.hello is None and "not a ClientHello" in shake.hello_error
    assert shake.outcome in ("refused", "closed")
    assert len(await reader.read()) < 100  # at most our alert, then the lab closes its side
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    # Plain HTTP that is not an AIA path gets an answer from the app, and is recorded.
    reader, writer = await asyncio.open_connection(LOOPBACK, lab.server.port)
    writer.write(b"GET /nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await reader.read()).startswith(b"HTTP/1.1 200")
    writer.close()
    assert [f.path for f in lab.server.fetches] == ["/nothing"]


async def test_stopping_the_lab_mid_relay_closes_every_connection(tmp_path: Path) -> None:
    pki = LabPki()
    server = LabServer(pki, lab_app("lab-test", {"100": "tone"}, make_tone(0.5), 500), bind=LOOPBACK, port=0)
    await server.start()
    server.serve(EP["rsa"], "lab.test", ("lab.test", LOOPBACK))
    ctx = ssl.create_default_context(cadata=pki.roots_pem.decode())
    reader, writer = await asyncio.open_connection(LOOPBACK, server.port, ssl=ctx, server_hostname="lab.test")
    writer.write(b"GET /identity HTTP/1.1\r\nHost: lab.test\r\n\r\n")  # keep-alive: the relay stays open
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        await server.stop()
        assert (await reader.read()).endswith(b"/>")  # the rest of the answer, then the lab hung up
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], [str(w.message) for w in caught]


# --- a capture against a player whose reports arrive late ------------------------------------


class LatePlayer:
    """A Companion player (the real HTTP protocol) that trusts the lab and plays its stream, that
    takes its time to switch items, and whose reports about the item it stopped arrive again after
    the next playMedia, in another order (plex-mpv-shim sends each timeline from a pool of threads:
    a "playing" made before the stop, and its second "stopped", land after the next fling)."""

    def __init__(self, trust: bytes, switch_time: float, report_after: float) -> None:
        self.trust, self.switch_time, self.report_after = trust, switch_time, report_after
        self.server = ""
        self.reported: dict[str, str] = {}  # item key -> the chain its stop report met
        self.subscriber = ""
        self.item = ""  # the key being played, or the last one stopped
        self.state = "stopped"
        self.stopped: list[str] = []
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen on a free loopback port."""
        app = web.Application()
        app.router.add_get("/resources", self._resources)
        app.router.add_get("/player/{group}/{name}", self._command)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, LOOPBACK, 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        ctx = ssl.create_default_context(cadata=self.trust.decode())
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, force_close=True))

    async def stop(self) -> None:
        """End what it has under way, then stop listening."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def _spawn(self, coro: collections.abc.Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _push(self, state: str, key: str) -> None:
        assert self._session is not None
        if not self.subscriber:
            return
        named = f' key="{key}" ratingKey="{key.rsplit("/", 1)[-1]}"' if key else ""
        body = f'<MediaContainer location="navigation"><Timeline type="video" state="{state}"{named}/></MediaContainer>'
        with contextlib.suppress(aiohttp.ClientError):  # the capture may be gone by the last report
            async with self._session.post(self.subscriber, data=body.encode(),
                                          headers={"X-Plex-Client-Identifier": "late-player"}) as resp:
                await resp.read()

    async def _resources(self, _request: web.Request) -> web.Response:
        return web.Response(text='<MediaContainer><Player title="Late TV" machineIdentifier="late-player" '
                                 'product="Late Player" protocolCapabilities="timeline,playback"/></MediaContainer>',
                            content_type="text/xml")

    async def _command(self, request: web.Request) -> web.Response:
        name, q = request.match_info["name"], request.query
        if name == "subscribe":
            self.subscriber = f"http://{request.remote}:{q['port']}/:/timeline"
            self._spawn(self._push(self.state, self.item))
        elif name == "unsubscribe":
            self.subscriber = ""
        elif name == "stop" and self.state != "stopped":
            self.state = "stopped"
            self.stopped.append(self.item)
            self._spawn(self._push("stopped", self.item))
            self._spawn(self._report_to_server(self.item))
        elif name == "playMedia":
            self.server = f"https://{q['address']}:{q['port']}"
            self._spawn(self._play(self.server, q["key"], q["token"]))
        return web.Response(text='<Response code="200" status="OK"/>', content_type="text/xml")

    async def _report_to_server(self, key: str) -> None:
        """Tell the item's server it stopped, a moment after stopping (as plex-mpv-shim does), and
        note which chain that server presented: RSA or ECDSA."""
        await asyncio.sleep(self.report_after)  # the player's own pace, not a wait for the test
        host, port = urllib.parse.urlsplit(self.server).hostname or "", urllib.parse.urlsplit(self.server).port
        ctx = ssl.create_default_context(cadata=self.trust.decode())
        try:
            reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=host)
        except OSError:
            return  # the capture is over and its lab gone
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.write(f"GET /:/timeline?state=stopped HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        with contextlib.suppress(OSError, ssl.SSLError):
            await reader.read()
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
        key_type = x509.load_der_x509_certificate(der).public_key()
        self.reported[key] = "rsa" if isinstance(key_type, rsa.RSAPublicKey) else "ecdsa"

    async def _play(self, base: str, key: str, token: str) -> None:
        assert self._session is not None
        before, self.item = self.item, key
        if before:  # the late reports about the item stopped before this fling
            await self._push("playing", before)
            await self._push("stopped", before)
        async with self._session.get(f"{base}{key}", headers={"X-Plex-Token": token}) as resp:
            part = (await resp.text()).split('<Part ', 1)[1].split('key="', 1)[1].split('"', 1)[0]
        if before:
            # Switching items takes it a while (its previous stream winding down): the behaviour
            # under test, a slow player, not a wait for the test.
            await asyncio.sleep(self.switch_time)
        async with self._session.get(f"{base}{part}", headers={"X-Plex-Token": token}) as resp:
            await resp.read()
        self.state = "playing"
        await self._push("playing", key)


async def test_late_reports_of_the_previous_item_are_not_the_steps_and_a_stopping_player_meets_its_chain() -> None:
    pki = LabPki()
    player = LatePlayer(pki.roots_pem, switch_time=3.0, report_after=0.2)
    await player.start()
    try:
        lines: list[str] = []
        capture = Capture(CaptureTarget(f"{LOOPBACK}:{player.port}", LOOPBACK, player.port),
                          bridge_address=LOOPBACK, lab_bind=LOOPBACK, listener_bind=LOOPBACK, pki=pki, host="ip",
                          endpoints=ENDPOINTS[:2], step_timeout=30, quiet=1.0, progress=lines.append)
        result = await capture.run()
    finally:
        await player.stop()
    first, second = result.steps
    assert first.played and first.states[-1:] == ["playing"], "\n".join(lines)
    # Before the fix the first item's late "playing" and "stopped" were this step's timeline, and
    # the step ended "not played" one quiet second after the player fetched the item, while it was
    # still switching (the lab then served the next chain to a player still at work on this one).
    assert second.played and second.states == ["playing"], "\n".join(lines)
    assert "timeline playing; played" in lines[-1]
    assert player.stopped == ["/library/metadata/100", "/library/metadata/101"]  # each stopped once it played
    # The first item's stop report, made while the player wound down, met that step's (RSA) chain:
    # the capture waited for the player to go quiet before it served the next one.
    assert player.reported.get("/library/metadata/100") == "rsa", player.reported
