"""The lab TLS endpoint: one port that records every client's ClientHello, how its handshake ended
(completed, or which alert it sent about our chain), and every plain-HTTP fetch of an AIA URL.

TLS runs through ``ssl.SSLObject`` over memory BIOs, so every byte the client sends passes through
here first: the ClientHello before OpenSSL sees it, a TLS 1.2 alert record in the clear, and a TLS
1.3 alert (encrypted after the ServerHello) as the error OpenSSL raises once it has decrypted it.
A connection whose first byte is not a TLS handshake record is plain HTTP: the AIA "CA Issuers"
fetches. After a completed handshake the plaintext is relayed to an aiohttp application on a
private Unix socket (the test stream and its Plex-shaped answers, the issuer certificates).
The endpoint serves one configuration at a time (:class:`Endpoint`); the capture switches it
between steps.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import re
import shutil
import ssl
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web

from companion.connections import start_site
from companion.errors import ProtocolError
from companion.lab.hello import (
    RECORD_ALERT,
    ClientHelloFacts,
    RecordReader,
    hello_message,
    looks_like_tls,
    parse_client_hello,
    plaintext_alert,
    received_alert,
)
from companion.lab.pki import KeyType, LabPki
from companion.parts import StartStopContext

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024
_TLS = {"1.0": ssl.TLSVersion.TLSv1, "1.1": ssl.TLSVersion.TLSv1_1, "1.2": ssl.TLSVersion.TLSv1_2,
        "1.3": ssl.TLSVersion.TLSv1_3}
_REQUEST_LINE = re.compile(rb"(?m)^(GET|HEAD|POST|PUT|DELETE|OPTIONS) (\S{1,2048}) HTTP/1\.[01]\r?$")
_USER_AGENT = re.compile(rb"(?mi)^user-agent:[ \t]*([^\r\n]{1,200})")
_MAX_PATHS = 50


@dataclass(frozen=True)
class Endpoint:
    """One lab configuration: the chain's key type, whether the intermediate is sent, TLS versions."""

    name: str
    title: str
    key: KeyType = "rsa"
    send_intermediate: bool = True
    tls_min: str = "1.0"
    tls_max: str = "1.3"


# The series ``companion profiles capture`` runs, in order. The wide ones accept TLS 1.0 (at
# OpenSSL security level 0) so an old client still gets as far as judging our certificate.
ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("rsa", "RSA leaf + intermediate"),
    Endpoint("ecdsa", "ECDSA leaf + intermediate", key="ecdsa"),
    Endpoint("aia", "intermediate missing, AIA CA Issuers URL", send_intermediate=False),
    Endpoint("tls12", "TLS 1.2 only", tls_min="1.2", tls_max="1.2"),
    Endpoint("tls13", "TLS 1.3 only", tls_min="1.3", tls_max="1.3"),
)


@dataclass
class Handshake:
    """One TLS connection to the lab, as it went."""

    id: int
    endpoint: str
    peer: str
    at: datetime
    hello: ClientHelloFacts | None = None
    hello_error: str = ""
    # pending | completed | alert (the client sent one) | refused (we ended it: no common version
    # or cipher) | closed (the client hung up without an alert) | timeout
    outcome: str = "pending"
    alert: str = ""
    server_reason: str = ""
    version: str = ""
    cipher: str = ""
    user_agent: str = ""
    paths: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        """Whether the handshake has an outcome."""
        return self.outcome != "pending"

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict."""
        return {"id": self.id, "endpoint": self.endpoint, "peer": self.peer, "at": self.at.isoformat(),
                "hello": self.hello.to_json() if self.hello else None, "hello_error": self.hello_error,
                "outcome": self.outcome, "alert": self.alert, "server_reason": self.server_reason,
                "version": self.version, "cipher": self.cipher, "user_agent": self.user_agent,
                "paths": list(self.paths)}


@dataclass(frozen=True)
class PlainFetch:
    """A plain-HTTP request to the lab port (an AIA issuer fetch, or anything else)."""

    endpoint: str
    peer: str
    at: datetime
    method: str
    path: str
    user_agent: str


def _request_facts(data: bytes) -> tuple[list[tuple[str, str]], str]:
    """Request lines (method, path without query) and a User-Agent seen in a chunk of HTTP bytes."""
    lines = [(m.group(1).decode(), m.group(2).decode("ascii", "replace").split("?", 1)[0])
             for m in _REQUEST_LINE.finditer(data)]
    agent = _USER_AGENT.search(data)
    return lines, agent.group(1).decode("ascii", "replace").strip() if agent else ""


class LabServer(StartStopContext):
    """The lab endpoint on ``bind``:``port``, serving ``app`` to clients that complete a handshake."""

    def __init__(self, pki: LabPki, app: web.Application, *, bind: str, port: int,
                 handshake_timeout: float = 15.0, idle_timeout: float = 60.0, max_connections: int = 64,
                 max_records: int = 2000) -> None:
        self.pki = pki
        self._app = app
        self._bind = bind
        self._port = port
        self._handshake_timeout = handshake_timeout
        self._idle_timeout = idle_timeout
        self._max_connections = max_connections
        self.handshakes: collections.deque[Handshake] = collections.deque(maxlen=max_records)
        self.fetches: collections.deque[PlainFetch] = collections.deque(maxlen=max_records)
        self.on_change: Callable[[], None] | None = None
        self._ids = itertools.count(1)
        self._endpoint = ENDPOINTS[0]
        self._host = ""
        self._names: tuple[str, ...] = ()
        self._contexts: dict[tuple[str, str], ssl.SSLContext] = {}
        self._server: asyncio.Server | None = None
        self._runner: web.AppRunner | None = None
        self._tmp: Path | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._stopping = False
        for kind in ("rsa", "ecdsa"):
            app.router.add_get(self.aia_path(kind), self._issuer(kind))

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen; raises OSError when the port is taken."""
        self._tmp = Path(tempfile.mkdtemp(prefix="companion-lab-"))
        runner = web.AppRunner(self._app, access_log=None)
        await start_site(runner, path=str(self._tmp / "app.sock"), what="the lab's app")
        self._runner = runner
        try:
            self._server = await asyncio.start_server(self._accept, self._bind, self._port,
                                                      reuse_address=True)
        except OSError:
            await self.stop()
            raise
        self._port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close the port, end every connection, remove the private socket."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        # A connection accepted just before close() has its handler task queued but not started
        # (so not in _connections yet): let those run; they see _stopping and close at once.
        for _ in range(5):
            await asyncio.sleep(0)
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    @property
    def port(self) -> int:
        """The port the lab listens on."""
        return self._port

    @property
    def endpoint(self) -> Endpoint:
        """The endpoint served now."""
        return self._endpoint

    @property
    def host(self) -> str:
        """The host name or address clients were told."""
        return self._host

    def serve(self, endpoint: Endpoint, host: str, names: tuple[str, ...]) -> None:
        """From the next connection on, serve ``endpoint`` to clients that were told ``host``.

        ``names`` (DNS names or IP literals) go into the leaf; ``host`` is also the AIA URL's host.
        """
        self._endpoint, self._host, self._names = endpoint, host, names
        key = (endpoint.name, host)
        if key not in self._contexts:
            self._contexts[key] = self._context(endpoint)

    def aia_path(self, kind: KeyType) -> str:
        """The path that serves the ``kind`` intermediate (the AIA URL's path)."""
        return f"/lab/{self.pki.hash}/{kind}-intermediate.der"

    def aia_url(self, kind: KeyType) -> str:
        """The AIA "CA Issuers" URL of the ``kind`` intermediate."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}{self.aia_path(kind)}"

    def _context(self, endpoint: Endpoint) -> ssl.SSLContext:
        assert self._tmp is not None, "start() the lab first"
        chain = self.pki.chain(endpoint.key, self._names, send_intermediate=endpoint.send_intermediate,
                               aia_url=self.aia_url(endpoint.key))
        with warnings.catch_warnings():
            # TLS 1.0/1.1 bounds are deprecated in Python's ssl; accepting an old client is the point.
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = _TLS[endpoint.tls_min]
            ctx.maximum_version = _TLS[endpoint.tls_max]
        if endpoint.tls_min in ("1.0", "1.1"):
            ctx.set_ciphers("ALL:@SECLEVEL=0")
        ctx.set_alpn_protocols(["http/1.1"])
        cert, key = self._tmp / f"{endpoint.name}-chain.pem", self._tmp / f"{endpoint.name}-key.pem"
        cert.write_bytes(chain.served_pem)
        key.touch(mode=0o600)
        key.write_bytes(chain.key_pem)
        ctx.load_cert_chain(cert, key)
        key.unlink()
        return ctx

    def _issuer(self, kind: KeyType) -> Callable[[web.Request], asyncio.Future[web.Response]]:
        async def handle(_request: web.Request) -> web.Response:
            return web.Response(body=self.pki.intermediate_der(kind), content_type="application/pkix-cert")

        return handle  # type: ignore[return-value]

    # -- connections --------------------------------------------------------------------------

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._stopping or len(self._connections) >= self._max_connections:
            writer.close()
            return
        self._connections.add(task)
        peer_info = writer.get_extra_info("peername")
        peer = str(peer_info[0]) if peer_info else "?"
        try:
            async with asyncio.timeout(self._handshake_timeout):
                first = await reader.read(_CHUNK)
            if first:
                if looks_like_tls(first):
                    await self._tls(first, reader, writer, peer)
                else:
                    await self._plain(first, reader, writer, peer)
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
            log.debug("lab connection from %s ended: %s", peer, exc)
        except asyncio.CancelledError:
            # stop() ends connections this way. The task is the top of its connection, and
            # asyncio's start_server callback (3.11) calls task.exception(), which raises for a
            # cancelled task and gets logged as an error: so end it normally.
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _tls(self, first: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   peer: str) -> None:
        endpoint = self._endpoint
        ctx = self._contexts[(endpoint.name, self._host)]
        shake = Handshake(id=next(self._ids), endpoint=endpoint.name, peer=peer, at=datetime.now(UTC))
        self.handshakes.append(shake)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(incoming, outgoing, server_side=True)
        records = RecordReader()
        hello_records: list[tuple[int, bytes]] = []

        def absorb(data: bytes) -> None:
            incoming.write(data)
            for kind, payload in records.feed(data):
                if shake.hello is None and not shake.hello_error:
                    hello_records.append((kind, payload))
                    try:
                        message = hello_message(hello_records)
                        if message is not None:
                            shake.hello = parse_client_hello(message)
                    except ProtocolError as exc:
                        shake.hello_error = str(exc)
                elif kind == RECORD_ALERT and not shake.alert:
                    shake.alert = plaintext_alert(payload) or ""

        absorb(first)
        try:
            async with asyncio.timeout(self._handshake_timeout):
                while True:
                    try:
                        tls.do_handshake()
                        break
                    except ssl.SSLWantReadError:
                        await _flush(outgoing, writer)
                        data = await reader.read(_CHUNK)
                        if not data:
                            shake.outcome = "alert" if shake.alert else "closed"
                            return
                        absorb(data)
        except ssl.SSLError as exc:
            with contextlib.suppress(OSError):
                await _flush(outgoing, writer)  # our own alert, when we are the one refusing
            alert = received_alert(exc)
            if alert:
                shake.outcome, shake.alert = "alert", alert
            else:
                shake.outcome, shake.server_reason = "refused", exc.reason or str(exc)
            return
        except TimeoutError:
            shake.outcome = "timeout"
            return
        finally:
            self._changed()
        shake.outcome, shake.version = "completed", tls.version() or ""
        cipher = tls.cipher()
        shake.cipher = cipher[0] if cipher else ""
        self._changed()
        await _flush(outgoing, writer)
        await self._relay_tls(tls, incoming, outgoing, reader, writer, shake)

    async def _relay_tls(self, tls: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO,
                         reader: asyncio.StreamReader, writer: asyncio.StreamWriter, shake: Handshake) -> None:
        assert self._tmp is not None
        app_reader, app_writer = await asyncio.open_unix_connection(str(self._tmp / "app.sock"))

        async def upstream() -> None:
            while True:
                # Drain first: the request may have come in the same read as the client's Finished.
                while True:
                    try:
                        plain = tls.read(_CHUNK)
                    except ssl.SSLWantReadError:
                        break
                    if not plain:
                        return
                    self._note(shake, plain)
                    app_writer.write(plain)
                await _flush(outgoing, writer)  # post-handshake messages (key updates)
                await app_writer.drain()
                async with asyncio.timeout(self._idle_timeout):
                    data = await reader.read(_CHUNK)
                if not data:
                    return
                incoming.write(data)

        async def downstream() -> None:
            while True:
                data = await app_reader.read(_CHUNK)
                if not data:
                    return
                tls.write(data)
                await _flush(outgoing, writer)

        try:
            await _first_of(upstream(), downstream())
        finally:  # also when the lab stops (cancelled) in the middle of a relay
            app_writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await app_writer.wait_closed()

    def _note(self, shake: Handshake, plain: bytes) -> None:
        lines, agent = _request_facts(plain)
        if agent and not shake.user_agent:
            shake.user_agent = agent
        for _method, path in lines:
            if len(shake.paths) < _MAX_PATHS:
                shake.paths.append(path)
        if lines:
            self._changed()

    async def _plain(self, first: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     peer: str) -> None:
        assert self._tmp is not None
        lines, agent = _request_facts(first)
        for method, path in lines:
            self.fetches.append(PlainFetch(endpoint=self._endpoint.name, peer=peer, at=datetime.now(UTC),
                                           method=method, path=path, user_agent=agent))
        if not lines:
            return  # neither TLS nor HTTP
        self._changed()
        app_reader, app_writer = await asyncio.open_unix_connection(str(self._tmp / "app.sock"))
        app_writer.write(first)

        async def upstream() -> None:
            while True:
                async with asyncio.timeout(self._idle_timeout):
                    data = await reader.read(_CHUNK)
                if not data:
                    return
                app_writer.write(data)
                await app_writer.drain()

        async def downstream() -> None:
            while True:
                data = await app_reader.read(_CHUNK)
                if not data:
                    return
                writer.write(data)
                await writer.drain()

        try:
            await _first_of(upstream(), downstream())
        finally:  # also when the lab stops (cancelled) in the middle of a relay
            app_writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await app_writer.wait_closed()


async def _flush(outgoing: ssl.MemoryBIO, writer: asyncio.StreamWriter) -> None:
    data = outgoing.read()
    if data:
        writer.write(data)
        await writer.drain()


async def _first_of(*coros: collections.abc.Coroutine[object, object, None]) -> None:
    """Run the two directions of a relay; when one ends (or fails), end the other."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, Exception) and not isinstance(result, TimeoutError | OSError | ssl.SSLError):
            log.debug("lab relay ended: %r", result)
