"""FakePlexServer: a Plex Media Server stand-in over real HTTPS on loopback, plus its test PKI.

The PKI mirrors plex.direct: a trustme root, an intermediate made with ``create_child_ca()``, and a
leaf for ``*.<hash>.plex.direct`` (plus the loopback IP) built with ``cryptography`` so tests can
pick key type and size (RSA 1024 included) and the validity window. The server sends leaf +
intermediate, or the leaf alone (``send_intermediate=False``), as PMS 2026 does with a missing
issuer.

HTTP side: the endpoints a player touches during a fling, every request recorded (method, path,
query, headers) so tests can check where tokens went and what a real player asked for: the root
``/`` and ``/identity``, ``/media/providers``, ``/library/metadata/<id>``, ``/playQueues/<id>``,
``/library/parts/<id>/file`` with Range and HEAD (``PUT /library/parts/<id>`` selects streams),
``/library/streams/<id>`` (a sidecar subtitle when ``subtitles`` is given), the universal
transcoder's ``decision`` (always "direct play OK"), ``ping`` and ``stop``, and the reports
``/:/timeline``, ``/:/scrobble``, ``/:/unscrobble``, ``/:/progress``. Everything except
``/identity`` (which real PMS answers without a token) needs ``X-Plex-Token`` as a header or query
parameter equal to the configured token, else 401.

``media`` replaces the default patterned bytes with a real file (``wav_bytes()``: a real player
such as plex-mpv-shim must be able to decode and play it); ``duration_ms`` is what the metadata
says it lasts.

Usage::

    async with FakePlexServer(token="t0k") as server:
        url = f"https://127.0.0.1:{server.port}/identity"     # TLS, verify with server.root_pem
        server.plex_direct_name("127.0.0.1")                   # 127-0-0-1.<hash>.plex.direct
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import secrets
import ssl
import tempfile
import warnings
import wave
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from types import MappingProxyType
from typing import Literal
from xml.sax.saxutils import quoteattr

import trustme
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from companion.connections import GatedTCPSite

KeyType = Literal["rsa", "ecdsa"]
_TLS = {
    "1.0": ssl.TLSVersion.TLSv1,
    "1.1": ssl.TLSVersion.TLSv1_1,
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}


# --- test PKI ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlexChain:
    """A plex.direct-shaped chain: root -> intermediate -> leaf ``*.<hash>.plex.direct``."""

    hash: str
    root_pem: bytes
    intermediate_pem: bytes
    leaf_pem: bytes
    leaf_key_pem: bytes = field(repr=False)
    intermediate_key_pem: bytes = field(default=b"", repr=False)

    @property
    def root(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.root_pem)

    @property
    def intermediate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.intermediate_pem)

    @property
    def leaf(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.leaf_pem)

    def chain_der(self, *, with_intermediate: bool = True) -> tuple[bytes, ...]:
        """The DER chain a server would send, leaf first."""
        certs = [self.leaf, self.intermediate] if with_intermediate else [self.leaf]
        return tuple(c.public_bytes(serialization.Encoding.DER) for c in certs)

    def name(self, address: str) -> str:
        ip = ipaddress.ip_address(address)
        dashed = ip.exploded.replace(":", "-") if ip.version == 6 else address.replace(".", "-")
        return f"{dashed}.{self.hash}.plex.direct"


def _trustme_key(key_type: KeyType) -> trustme.KeyType:
    return trustme.KeyType.RSA if key_type == "rsa" else trustme.KeyType.ECDSA


def make_plex_chain(
    *,
    server_hash: str | None = None,
    key_type: KeyType = "rsa",
    ca_key_type: KeyType | None = None,
    rsa_bits: int = 2048,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    addresses: Sequence[str] = ("127.0.0.1",),
    root_name: str = "Fake ISRG Root YR",
) -> PlexChain:
    """Build a fresh root/intermediate/leaf. ``ca_key_type`` defaults to ``key_type``."""
    server_hash = server_hash or secrets.token_hex(16)
    ca_kind = _trustme_key(ca_key_type or key_type)
    root = trustme.CA(key_type=ca_kind, organization_name=root_name)
    inter = root.create_child_ca(key_type=ca_kind)
    inter_cert = x509.load_pem_x509_certificate(inter.cert_pem.bytes())
    inter_key = serialization.load_pem_private_key(inter.private_key_pem.bytes(), password=None)
    if not isinstance(inter_key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise TypeError("unexpected trustme key type")

    leaf_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if key_type == "rsa":
        leaf_key = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    else:
        leaf_key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(f"*.{server_hash}.plex.direct")]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"*.{server_hash}.plex.direct")]))
        .issuer_name(inter_cert.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(days=1))
        .not_valid_after(not_after or now + dt.timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(inter_key.public_key()), critical=False
        )
        .sign(inter_key, hashes.SHA256())
    )
    return PlexChain(
        hash=server_hash,
        root_pem=root.cert_pem.bytes(),
        intermediate_pem=inter.cert_pem.bytes(),
        leaf_pem=leaf.public_bytes(serialization.Encoding.PEM),
        leaf_key_pem=leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        intermediate_key_pem=inter.private_key_pem.bytes(),
    )


# --- the server -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake server saw it."""

    method: str
    path: str
    query: Mapping[str, str] = field(repr=False)  # may hold X-Plex-Token
    headers: Mapping[str, str] = field(repr=False)

    @property
    def token(self) -> str | None:
        return self.headers.get("X-Plex-Token") or self.query.get("X-Plex-Token")


def media_bytes(size: int) -> bytes:
    """The deterministic content of every fake media part (so tests can compare ranges)."""
    pattern = bytes(range(256))
    return (pattern * (size // 256 + 1))[:size]


def wav_bytes(seconds: float, *, rate: int = 8000) -> bytes:
    """A real, decodable WAV file: ``seconds`` of an 8-bit mono tone (small: 8 KB per second)."""
    frames = int(seconds * rate)
    period = bytes(128 + int(40 * ((i % 20) / 10 - 1)) for i in range(20))  # a 400 Hz sawtooth
    out = BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(1)
        wav.setframerate(rate)
        wav.writeframes((period * (frames // len(period) + 1))[:frames])
    return out.getvalue()


class FakePlexServer:
    """A Plex Media Server over HTTPS (or plain HTTP with ``tls=False``) on loopback."""

    def __init__(
        self,
        *,
        token: str = "fake-plex-token",
        chain: PlexChain | None = None,
        key_type: KeyType = "rsa",
        tls: bool = True,
        tls_min: str = "1.2",
        tls_max: str = "1.3",
        ciphers: str | None = None,
        send_intermediate: bool = True,
        host: str = "127.0.0.1",
        machine_identifier: str = "fake-plex-server-0001",
        media_size: int = 256 * 1024,
        items: Mapping[str, str] | None = None,
        media: bytes | None = None,
        media_content_type: str = "video/x-matroska",
        container: str = "mkv",
        duration_ms: int = 600000,
        subtitles: bytes | None = None,
    ) -> None:
        self._token = token
        self._chain = chain if chain is not None or not tls else make_plex_chain(key_type=key_type)
        self._tls = tls
        self._tls_min = tls_min
        self._tls_max = tls_max
        self._ciphers = ciphers
        self._send_intermediate = send_intermediate
        self._host = host
        self.machine_identifier = machine_identifier
        self.media = media if media is not None else media_bytes(media_size)
        self._media_content_type = media_content_type
        self._container = container
        self.duration_ms = duration_ms
        self.subtitles = subtitles
        self.items: dict[str, str] = dict(items or {"501": "Fake Movie"})
        self.requests: list[RecordedRequest] = []
        self.server_names: list[str | None] = []  # SNI of every TLS handshake, in order
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._ctx: ssl.SSLContext | None = None
        self.proxy = CompanionProxy(self)

    # -- lifecycle --

    async def start(self) -> None:
        app = web.Application(middlewares=[self._record_and_authorize])
        app.router.add_get("/", self._root)
        app.router.add_get("/identity", self._identity)
        app.router.add_get("/security/token", self._transient_token)
        app.router.add_get("/library", self._library)
        app.router.add_get("/library/sections", self._library)
        app.router.add_get("/library/metadata/{id}", self._metadata)
        app.router.add_get("/playQueues/{id}", self._play_queue)
        app.router.add_post("/playQueues", self._create_play_queue)
        app.router.add_get("/library/parts/{id}/file", self._part)
        app.router.add_put("/library/parts/{id}", self._select_streams)
        app.router.add_get("/library/streams/{id}", self._stream)
        app.router.add_get("/media/providers", self._providers)
        app.router.add_get("/video/:/transcode/universal/decision", self._decision)
        for name in ("ping", "stop"):
            app.router.add_get(f"/video/:/transcode/universal/{name}", self._empty)
        for report in ("/:/timeline", "/:/scrobble", "/:/unscrobble", "/:/progress"):
            app.router.add_route("*", report, self._empty)
        self.proxy.add_routes(app.router)
        if self._tls:
            self._tmp = tempfile.TemporaryDirectory(prefix="fake-plex-")
            self._ctx = self._server_context()
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        # The daemon's own site: a TLS handshake that ends after stop() is reset, not served.
        site = GatedTCPSite(self._runner, self._host, 0, gate=None, ssl_context=self._ctx)
        await site.start()
        self._port = site.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def __aenter__(self) -> FakePlexServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- facts for tests --

    @property
    def port(self) -> int:
        return self._port

    @property
    def address(self) -> str:
        return self._host

    @property
    def chain(self) -> PlexChain:
        if self._chain is None:
            raise RuntimeError("a plain-HTTP FakePlexServer has no certificate chain")
        return self._chain

    @property
    def hash(self) -> str:
        return self.chain.hash

    @property
    def root_pem(self) -> bytes:
        return self.chain.root_pem

    @property
    def handshakes(self) -> int:
        return len(self.server_names)

    def plex_direct_name(self, address: str | None = None) -> str:
        return self.chain.name(address or self._host)

    def base_url(self, address: str | None = None) -> str:
        if self._tls:
            return f"https://{self.plex_direct_name(address)}:{self._port}"
        host = address or self._host
        return f"http://[{host}]:{self._port}" if ":" in host else f"http://{host}:{self._port}"

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this server's root (for aiohttp sessions in tests)."""
        ctx = ssl.create_default_context(cadata=self.root_pem.decode())
        return ctx

    def rotate_certificate(self, chain: PlexChain | None = None) -> PlexChain:
        """Serve a new chain from the next handshake on (the port stays the same)."""
        self._chain = chain or make_plex_chain(server_hash=self.hash)
        if self._ctx is not None:
            self._load_chain(self._ctx)
        return self._chain

    def requests_to(self, path_prefix: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.startswith(path_prefix)]

    # -- TLS --

    def _server_context(self) -> ssl.SSLContext:
        # TLS 1.0/1.1 bounds warn (DeprecationWarning) and need SECLEVEL=0; an old server is the point.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = _TLS[self._tls_min]
            ctx.maximum_version = _TLS[self._tls_max]
        old = self._tls_min in ("1.0", "1.1")
        if self._ciphers is not None:
            ctx.set_ciphers(self._ciphers + (":@SECLEVEL=0" if old else ""))
        elif old:
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        ctx.sni_callback = self._on_hello
        self._load_chain(ctx)
        return ctx

    def _load_chain(self, ctx: ssl.SSLContext) -> None:
        assert self._tmp is not None
        chain = self.chain
        cert_path = Path(self._tmp.name) / "chain.pem"
        key_path = Path(self._tmp.name) / "key.pem"
        cert_path.write_bytes(chain.leaf_pem + (chain.intermediate_pem if self._send_intermediate else b""))
        key_path.write_bytes(chain.leaf_key_pem)
        ctx.load_cert_chain(cert_path, key_path)

    def _on_hello(self, _sock: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        self.server_names.append(server_name)

    # -- HTTP --

    @web.middleware
    async def _record_and_authorize(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        record = RecordedRequest(
            method=request.method,
            path=request.path,
            query=MappingProxyType(dict(request.query)),
            headers=MappingProxyType(dict(request.headers)),
        )
        self.requests.append(record)
        if request.path != "/identity" and record.token not in (self._token, self.transient_token):
            return web.Response(status=401, text="<html><head><title>Unauthorized</title></head></html>",
                                content_type="text/html")
        return await handler(request)

    def _xml(self, body: str) -> web.Response:
        return web.Response(text='<?xml version="1.0" encoding="UTF-8"?>\n' + body,
                            content_type="text/xml", charset="utf-8")

    def _video(self, rating_key: str, extra: str = "") -> str:
        title = self.items[rating_key]
        size = len(self.media)
        duration, container = self.duration_ms, self._container
        # A selected sidecar subtitle (it has a key): a real player fetches it from /library/streams.
        subtitle = (f'<Stream id="9{rating_key}" streamType="3" codec="srt" format="srt" selected="1" '
                    f'key="/library/streams/9{rating_key}"/>' if self.subtitles is not None else "")
        return (
            f'<Video ratingKey="{rating_key}" key="/library/metadata/{rating_key}" type="movie" '
            f'title={quoteattr(title)} duration="{duration}"{extra}>'
            f'<Media id="{rating_key}" duration="{duration}" container="{container}">'
            f'<Part id="{rating_key}" key="/library/parts/{rating_key}/file" size="{size}" '
            f'container="{container}">{subtitle}</Part>'
            "</Media></Video>"
        )

    @property
    def transient_token(self) -> str:
        """The delegation token ``/security/token`` hands out (what python-plexapi puts in playMedia)."""
        return f"transient-{self._token}"

    async def _root(self, _request: web.Request) -> web.Response:
        # Enough of a real server's root for python-plexapi's PlexServer to load.
        return self._xml(f'<MediaContainer size="0" friendlyName="Fake Server" claimed="1" '
                         f'machineIdentifier="{self.machine_identifier}" version="1.41.0.0000-fake" '
                         'platform="Linux" platformVersion="6.1" myPlex="0" transcoderVideo="1"/>')

    async def _library(self, _request: web.Request) -> web.Response:
        return self._xml('<MediaContainer size="0" title1="Plex Library"/>')

    async def _transient_token(self, _request: web.Request) -> web.Response:
        return self._xml(f'<MediaContainer size="0" token="{self.transient_token}"/>')

    async def _identity(self, _request: web.Request) -> web.Response:
        return self._xml(f'<MediaContainer size="0" claimed="1" machineIdentifier="{self.machine_identifier}" '
                         'version="1.41.0.0000-fake"/>')

    async def _metadata(self, request: web.Request) -> web.Response:
        rating_key = request.match_info["id"]
        if rating_key not in self.items:
            return web.Response(status=404)
        return self._xml(f'<MediaContainer size="1" machineIdentifier="{self.machine_identifier}">'
                         f"{self._video(rating_key)}</MediaContainer>")

    def _queue(self, queue_id: str) -> web.Response:
        keys = sorted(self.items)
        videos = "".join(self._video(k, f' playQueueItemID="{i + 1}"') for i, k in enumerate(keys))
        return self._xml(
            f'<MediaContainer size="{len(keys)}" playQueueID="{queue_id}" playQueueSelectedItemID="1" '
            f'playQueueSelectedItemOffset="0" playQueueTotalCount="{len(keys)}" playQueueVersion="1" '
            f'machineIdentifier="{self.machine_identifier}">{videos}</MediaContainer>'
        )

    async def _play_queue(self, request: web.Request) -> web.Response:
        return self._queue(request.match_info["id"])

    async def _create_play_queue(self, _request: web.Request) -> web.Response:
        return self._queue("1")

    async def _empty(self, _request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _providers(self, _request: web.Request) -> web.Response:
        return self._xml(f'<MediaContainer size="1" machineIdentifier="{self.machine_identifier}">'
                         '<MediaProvider identifier="com.plexapp.plugins.library" title="Library" '
                         'protocols="stream,download"/></MediaContainer>')

    async def _decision(self, request: web.Request) -> web.Response:
        rating_key = request.query.get("path", "").rsplit("/", 1)[-1]
        if rating_key not in self.items:
            return web.Response(status=404)
        return self._xml(
            '<MediaContainer size="1" directPlayDecisionCode="1000" directPlayDecisionText="Direct play OK." '
            'generalDecisionCode="1000" generalDecisionText="Direct play OK." mdeDecisionCode="1000" '
            f'mdeDecisionText="Direct play OK.">{self._video(rating_key)}</MediaContainer>')

    async def _select_streams(self, request: web.Request) -> web.Response:
        if request.match_info["id"] not in self.items:
            return web.Response(status=404)
        return web.Response(status=200)

    async def _stream(self, request: web.Request) -> web.Response:
        stream = request.match_info["id"]
        if self.subtitles is None or stream[1:] not in self.items or not stream.startswith("9"):
            return web.Response(status=404)
        return web.Response(body=self.subtitles, content_type="text/srt")

    async def _part(self, request: web.Request) -> web.Response:
        if request.match_info["id"] not in self.items:
            return web.Response(status=404)
        size = len(self.media)
        header = request.headers.get("Range")
        headers = {"Accept-Ranges": "bytes", "Content-Type": self._media_content_type}
        if not header:
            return web.Response(body=self.media, headers=headers)
        span = _parse_range(header, size)
        if span is None:
            return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
        start, end = span
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        return web.Response(status=206, body=self.media[start:end + 1], headers=headers)


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """One ``bytes=a-b`` / ``a-`` / ``-n`` range as inclusive (start, end); None if unsatisfiable."""
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return None
    first, _, last = spec.strip().partition("-")
    try:
        if not first:
            length = int(last)
            if length <= 0:
                return None
            return max(0, size - length), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size or end < start:
        return None
    return start, min(end, size - 1)


# --- the companion proxy (players that poll the server for their commands) --------------------


@dataclass
class ProxiedPlayer:
    """A player registered by polling ``/player/proxy/poll``: what it said, what it was sent."""

    client_id: str
    headers: Mapping[str, str]
    params: Mapping[str, str]
    polls: int = 0
    queue: list[dict[str, str]] = field(default_factory=list)
    timelines: list[tuple[Mapping[str, str], bytes]] = field(default_factory=list)  # (query, body)
    answers: dict[str, tuple[int, bytes]] = field(default_factory=dict)  # commandID -> (status, body)


class CompanionProxy:
    """The PMS companion proxy: players poll for commands, controllers send commands to the server.

    Shapes, from the sources in docs/companion-proxy.md: a poll (``timeout=1``) is held until a
    command comes or ``hold`` seconds pass, then answered ``<MediaContainer><Command path=...
    commandID=... clientIdentifier=... queryX=.../></MediaContainer>`` (empty body when nothing
    came); the player answers ``POST /player/proxy/response?commandID=N`` and reports timelines with
    ``POST /player/proxy/timeline?commandID=&state=``. A controller's ``/player/...`` request to the
    server with ``X-Plex-Target-Client-Identifier`` of a polling player is queued for it and answered
    with the player's response (``answer_timeout`` bounds the wait). ``/clients`` lists the players
    that poll, so python-plexapi's ``PlexServer.clients()`` finds them.
    """

    def __init__(self, server: FakePlexServer, *, hold: float = 1.0, answer_timeout: float = 5.0) -> None:
        self._server = server
        self.hold = hold
        self.answer_timeout = answer_timeout
        self.players: dict[str, ProxiedPlayer] = {}
        self.offered = True  # False: answer 404, as a server without the proxy would
        self._changed = asyncio.Condition()
        self._next_id = 0

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/player/proxy/poll", self._poll)
        router.add_post("/player/proxy/response", self._response)
        router.add_post("/player/proxy/timeline", self._timeline)
        router.add_get("/clients", self._clients)
        router.add_route("GET", "/player/{group}/{name}", self._controller_command)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait_for(predicate), timeout)
        return predicate()

    async def _poll(self, request: web.Request) -> web.Response:
        if not self.offered:
            return web.Response(status=404)
        client_id = request.headers.get("X-Plex-Client-Identifier", "")
        if not client_id:
            return web.Response(status=400, text="X-Plex-Client-Identifier is required")
        player = self.players.get(client_id)
        if player is None:
            player = self.players[client_id] = ProxiedPlayer(
                client_id=client_id, headers=MappingProxyType(dict(request.headers)),
                params=MappingProxyType(dict(request.query)))
        player.polls += 1
        await self._notify()
        await self._wait(lambda: bool(player.queue), self.hold if request.query.get("timeout") == "1" else 0)
        if not player.queue:
            return web.Response(body=b"", content_type="text/xml")
        command = player.queue.pop(0)
        attrs = "".join(f" {name}={quoteattr(value)}" for name, value in command.items())
        return self._server._xml(f'<MediaContainer size="1"><Command{attrs}/></MediaContainer>')

    async def _response(self, request: web.Request) -> web.Response:
        client_id = request.headers.get("X-Plex-Client-Identifier", "")
        player = self.players.get(client_id)
        if player is None:
            return web.Response(status=404)
        player.answers[request.query.get("commandID", "")] = (200, await request.read())
        await self._notify()
        return web.Response(status=200)

    async def _timeline(self, request: web.Request) -> web.Response:
        player = self.players.get(request.headers.get("X-Plex-Client-Identifier", ""))
        if player is None:
            return web.Response(status=400)
        player.timelines.append((MappingProxyType(dict(request.query)), await request.read()))
        await self._notify()
        return web.Response(status=200)

    async def _clients(self, _request: web.Request) -> web.Response:
        rows = "".join(
            f'<Server name={quoteattr(p.headers.get("X-Plex-Device-Name", ""))} host="127.0.0.1" '
            f'address="127.0.0.1" port="32400" machineIdentifier={quoteattr(p.client_id)} '
            f'version={quoteattr(p.headers.get("X-Plex-Version", ""))} protocol="plex" '
            f'product={quoteattr(p.headers.get("X-Plex-Product", ""))} '
            f'deviceClass={quoteattr(p.params.get("deviceClass", ""))} protocolVersion="1" '
            f'protocolCapabilities={quoteattr(p.params.get("protocolCapabilities", ""))}/>'
            for p in self.players.values())
        return self._server._xml(f'<MediaContainer size="{len(self.players)}">{rows}</MediaContainer>')

    async def _controller_command(self, request: web.Request) -> web.Response:
        target = request.headers.get("X-Plex-Target-Client-Identifier") or request.query.get(
            "X-Plex-Target-Client-Identifier", "")
        player = self.players.get(target)
        if player is None:
            return web.Response(status=404, text="no such player")
        self._next_id += 1
        command_id = request.query.get("commandID") or str(self._next_id)
        command = {"path": request.path, "commandID": command_id,
                   "clientIdentifier": request.headers.get("X-Plex-Client-Identifier", "")}
        for name, value in request.query.items():
            if name.lower().startswith("x-plex-") or name == "commandID":
                continue
            command["query" + name[:1].upper() + name[1:]] = value
        player.queue.append(command)
        await self._notify()
        if not await self._wait(lambda: command_id in player.answers, self.answer_timeout):
            return web.Response(status=408, text="the player did not answer")
        status, body = player.answers.pop(command_id)
        return web.Response(status=status, body=body, content_type="text/xml")
