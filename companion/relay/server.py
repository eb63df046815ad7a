"""The relay's HTTP side: the aiohttp server a target fetches from, and the forwarding behind it.

A request names its grant by the capability (as the first path segment, or as the token a
Companion player sends back), must come from the grant's target address, and must pass the path
policy (:mod:`companion.relay.paths`) and the grant's scope (:mod:`companion.relay.scope`). It is
then forwarded to the server over TLS pinned to the leaf :mod:`companion.security.upstream`
verified, with the token added upstream only; what comes back is scrubbed and rewritten
(:mod:`companion.relay.scrub`). Direct-play media parts are read by a thread
(:mod:`companion.relay.pump`), everything else through aiohttp.

Media is streamed chunk by chunk with back-pressure (``StreamResponse.write`` waits for the
socket), never buffered whole. Logs name a grant by a short capability prefix, never in full, and
never the token.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
from pathlib import Path
from urllib.parse import unquote

import aiohttp
from aiohttp import web
from cryptography import x509
from multidict import CIMultiDict
from yarl import URL

from companion.connections import ConnectionGate, start_site
from companion.faces.app import IDLE_TIMEOUT, QuietServerLog
from companion.faces.middleware import host_allowed
from companion.limits import ThrottledLog
from companion.model import SECRET_PARAMS
from companion.parts import StartStopContext
from companion.relay.counters import RelayCounters
from companion.relay.grants import Grant, GrantTable, Live, ip_of, unmapped
from companion.relay.paths import PathRule, check_path, filter_query, refused_path_name
from companion.relay.pump import DownstreamGone, PinMismatch, UpstreamError, UpstreamStream
from companion.relay.scope import GrantScope
from companion.relay.scrub import TokenScrubber, body_needles, host_literal, is_text, token_needles
from companion.security.upstream import Pin, UpstreamRefused, UpstreamTrust, read_capped, server_name

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
TEXT_BODY_CAP = 32 * 1024 * 1024  # a play queue of 200 items is well under 1 MiB
REQUEST_BODY_CAP = 64 * 1024  # timeline/scrobble/playQueue PUT bodies are tiny

_REQUEST_HEADERS = frozenset({
    "accept", "accept-language", "range", "if-range", "if-none-match", "if-modified-since",
    "content-type", "user-agent",
})
_RESPONSE_HEADERS = frozenset({
    "content-type", "content-range", "accept-ranges", "last-modified", "etag", "cache-control",
    "expires", "content-disposition", "content-language", "x-plex-protocol",
})
# Direct-play media bodies go through companion.relay.pump (a reader thread) rather than aiohttp.
_PUMPED_PREFIX = "/library/parts/"


class Relay(StartStopContext):
    """The relay's HTTP server, its grants, and its verified connections to Plex servers.

    ``async with Relay(...) as relay:`` starts it and stops it (ending every grant) on the way out.
    """

    def __init__(
        self,
        *,
        bind: str,
        port: int,
        state_dir: Path,
        extra_roots: Sequence[x509.Certificate] = (),
        idle_timeout: float = 6 * 3600.0,
        clock: Callable[[], float] = time.monotonic,
        aia_timeout: float = 5.0,
        aia_hosts: Collection[str] | None = None,
        allowed_hosts: Collection[str] = (),
        upstream_timeout: float = 30.0,
        gate: ConnectionGate | None = None,
    ) -> None:
        """``aia_hosts``: the only hosts AIA issuers may be fetched from; None allows any name but
        no non-global IP literal (a server's certificate must not steer the bridge at the LAN).
        ``allowed_hosts``: names besides IP literals and localhost accepted in the Host header."""
        self._bind = bind
        self._gate = gate
        self._refusals = ThrottledLog(log)  # refused requests: one line a minute per reason, with counts
        self._requested_port = port
        self._clock = clock
        self._allowed_hosts = frozenset(allowed_hosts)
        self._upstream_timeout = upstream_timeout
        self.counters = RelayCounters()
        self._table = GrantTable(idle_timeout=idle_timeout, clock=clock)
        self._trust = UpstreamTrust(state_dir=state_dir, extra_roots=extra_roots, counters=self.counters,
                                    handshake_timeout=upstream_timeout, aia_timeout=aia_timeout,
                                    aia_hosts=aia_hosts, clock=clock)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._port = 0

    # -- lifecycle --

    async def start(self) -> None:
        """Listen and open the upstream session; a second call does nothing."""
        if self._runner is not None:
            return
        self._runner, self._port = await self._listen()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64, enable_cleanup_closed=False),
            auto_decompress=True,
        )
        log.info("relay listening on %s:%d", self._bind, self._port)

    async def _listen(self) -> tuple[web.AppRunner, int]:
        """The relay's app on its gated site, and the port it got: the one place the relay listens."""
        app = web.Application(client_max_size=REQUEST_BODY_CAP)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # No access log: request lines carry capabilities. Streams are cut on shutdown quickly.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0, handle_signals=False,
                               keepalive_timeout=IDLE_TIMEOUT, logger=QuietServerLog(log, {}))
        port = await start_site(runner, self._bind, self._requested_port, gate=self._gate, what="relay")
        return runner, port

    async def stop(self) -> None:
        """End every grant, stop listening and close the upstream session."""
        self._table.forget_all("relay-stopped")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def port(self) -> int:
        """The port the relay listens on (0 before it started)."""
        return self._port

    # -- grants --

    def grant(
        self,
        *,
        target_address: str,
        server_id: str,
        upstream_host: str,
        upstream_address: str,
        upstream_port: int,
        token: str,
        replaces: str | None = None,
        scope: GrantScope | None = None,
    ) -> Grant:
        """A fresh capability for ``target_address`` to play from one server; replaces the pair's
        previous grant (a new fling replaces the old) and ``replaces`` if given. ``scope``: the
        library items the grant covers (every fling passes one; see companion.relay.scope)."""
        return self._table.add(target_address=target_address, server_id=server_id, upstream_host=upstream_host,
                               upstream_address=upstream_address, upstream_port=upstream_port, token=token,
                               replaces=replaces, scope=scope)

    def revoke(self, capability: str) -> None:
        """End one grant (its streams in progress are cut)."""
        self._table.forget(capability, "revoked")

    def revoke_target(self, target_address: str) -> None:
        """Every grant of a target (its face stopped)."""
        self._table.revoke_target(target_address)

    def base_url(self, grant: Grant, bridge_ip: str) -> str:
        """The URL a target fetches ``grant``'s paths under, at the bridge's address ``bridge_ip``."""
        return f"http://{host_literal(bridge_ip)}:{self._port}/{grant.capability}"

    def grants(self) -> list[Grant]:
        """The live grants (for the status page; show ``label``, never ``capability``)."""
        return self._table.grants()

    # -- HTTP --

    def _deny(self, status: int, reason: str, text: str, label: str = "-") -> web.Response:
        self.counters.deny(reason)
        self._refusals.log(reason, self._clock(), logging.INFO, "relay %s: refused (%s): %s", label, reason, text)
        return web.Response(status=status, text=f"{reason}: {text}\n", content_type="text/plain")

    def _refuse_path(self, method: str, plex_path: str, why_not: str, label: str) -> web.Response:
        # Once per path, by name, so a player's unmet need shows up in the log without flooding it;
        # the counters keep how often each was refused.
        self.counters.deny("path-not-allowed")
        name = refused_path_name(method, plex_path)
        if self.counters.refuse_path(name):
            log.warning("relay %s: refused %s: not on the relay's allow-list (docs/relay-allow-list.md); "
                        "further refusals of it are only counted", label, name)
        return web.Response(status=403, text=f"path-not-allowed: {why_not}\n", content_type="text/plain")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.counters.requests += 1
        host = request.headers.get("Host")
        if not host_allowed(host, self._allowed_hosts):
            shown = (host or "")[:100]
            self._refusals.log(421, self._clock(), logging.WARNING,
                               "relay refused a request with Host %r (possible DNS rebinding)", shown)
            return self._deny(421, "host-not-allowed", f"Host {shown!r} is not an address of this bridge")
        _, _, after = request.rel_url.raw_path.partition("/")
        capability, slash, rest = after.partition("/")
        live, why = self._table.find(capability)
        if live is None and why is None:
            # A Companion player is handed a server block (protocol, address, port, token), not a
            # URL, so it cannot carry a path prefix: it gets the capability as its "token" and sends
            # it back as X-Plex-Token on every request, with plain Plex paths.
            presented = _presented_token(request)
            if presented:
                live, why = self._table.find(presented)
                if live is not None or why is not None:
                    capability, slash, rest = presented, "/", after
        if live is None:
            text = {
                "replaced": "this relay URL was replaced by a newer fling to the same device",
                "target-stopped": "the device's face was stopped",
                "expired": "this relay URL expired (unused for too long); fling again",
                "relay-stopped": "the relay was restarted; fling again",
            }.get(why or "", "this relay URL was revoked" if why else "no such relay URL")
            return self._deny(403, why or "unknown-capability", text)
        grant = live.grant
        peer = _peer(request)
        if peer is None or peer != ip_of(grant.target_address, "target address"):
            return self._deny(403, "wrong-peer", "this relay URL belongs to another device", grant.label)
        now = self._clock()
        if self._table.expired(live, now):
            self._table.forget(grant.capability, "expired")
            return self._deny(403, "expired", "this relay URL expired (unused for too long); fling again",
                              grant.label)
        live.last_used = now
        method = request.method.upper()
        plex_path = "/" + rest if slash else "/"
        rule, why_not = check_path(plex_path, method)
        if rule is None:
            return self._refuse_path(method, plex_path, why_not, grant.label)
        if live.scope is not None:
            why_not = live.scope.check(unquote(plex_path), request.rel_url.raw_query_string)
            if why_not:
                return self._deny(403, "outside-grant", why_not, grant.label)
        query, why_not = filter_query(request.rel_url.raw_query_string)
        if why_not:
            return self._deny(403, "source-not-allowed", why_not, grant.label)
        body = await request.read() if method in ("POST", "PUT") else None
        try:
            return await self._forward(request, live, rule, plex_path, query, body)
        except UpstreamRefused as exc:
            self.counters.fail(exc.code)
            return web.Response(status=502, text=f"{exc.code}: {exc}\n", content_type="text/plain")

    async def _forward(self, request: web.Request, live: Live, rule: PathRule, path: str, query: str,
                       body: bytes | None) -> web.StreamResponse:
        grant = live.grant
        path = rule.upstream or path
        url = URL(f"https://{host_literal(grant.upstream_address)}:{grant.upstream_port}{path}"
                  + (f"?{query}" if query else ""), encoded=True)
        headers = CIMultiDict[str]()
        for name, value in request.headers.items():
            lowered = name.lower()
            if lowered in SECRET_PARAMS:
                continue
            if lowered in _REQUEST_HEADERS or lowered.startswith("x-plex-"):
                headers.add(name, value)
        headers["Host"] = f"{host_literal(grant.upstream_host)}:{grant.upstream_port}"
        headers["Accept-Encoding"] = "identity"  # bytes pass unaltered: ranges and lengths stay true
        if rule.needs_token:
            headers["X-Plex-Token"] = grant.token
        if request.method == "GET" and path.startswith(_PUMPED_PREFIX):
            return await self._pump(request, live, url.raw_path_qs, headers)
        resp = await self._upstream_request(grant, request.method, url, headers, body)
        try:
            return await self._respond(request, live, resp)
        finally:
            resp.release()

    async def _pump(self, request: web.Request, live: Live, target: str,
                    headers: CIMultiDict[str]) -> web.StreamResponse:
        """A media part through a reader thread (companion.relay.pump): C speed for the bytes."""
        grant = live.grant
        sni = server_name(grant.upstream_host)
        for attempt in (1, 2):
            pin = await self._pin(grant, force=attempt == 2)
            stream = UpstreamStream(address=grant.upstream_address, port=grant.upstream_port, sni=sni,
                                    fingerprint=pin.fingerprint.fingerprint, method="GET", target=target,
                                    headers=list(headers.items()), timeout=self._upstream_timeout,
                                    name=f"relay-stream-{grant.label}")
            try:
                try:
                    status, upstream_headers = await stream.open()
                except PinMismatch:
                    log.info("relay: %s presented a new certificate; verifying it", grant.upstream_host)
                    continue
                except UpstreamError as exc:
                    raise UpstreamRefused(
                        "upstream-unreachable",
                        f"the relay could not reach the Plex server {grant.upstream_host} at "
                        f"{grant.upstream_address}:{grant.upstream_port}: {exc}",
                    ) from exc
                out_headers = self._response_headers(request, live, upstream_headers)
                length = next((v for k, v in upstream_headers if k.lower() == "content-length"), None)
                encoded = any(k.lower() == "content-encoding" for k, _ in upstream_headers)
                content_type = next((v for k, v in upstream_headers if k.lower() == "content-type"), "")
                needles = body_needles(content_type, grant.token)
                content_length = None if encoded or length is None else int(length)
                if not needles and content_length is not None:
                    return await self._send_direct(request, live, status, out_headers, content_length, stream)
                return await self._stream(request, live, status, out_headers, content_length,
                                          stream.chunks(), False, needles)
            finally:
                await stream.aclose()
        raise UpstreamRefused("upstream-untrusted",
                              f"the Plex server {grant.upstream_host} changed its certificate twice in a row")

    async def _send_direct(self, request: web.Request, live: Live, status: int, headers: CIMultiDict[str],
                           content_length: int, stream: UpstreamStream) -> web.StreamResponse:
        """A media body the relay passes on unchanged: the reader thread also writes it to the target."""
        out = web.StreamResponse(status=status, headers=headers)
        out.content_length = content_length
        await out.prepare(request)
        await out.write(b"")  # the head goes out now, ahead of the body
        transport = request.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if (transport is None or sock is None or transport.get_extra_info("sslcontext") is not None
                or transport.get_write_buffer_size() > 0):
            # Something is still queued in the loop's buffer: keep the order, stream through the loop.
            return await self._stream_prepared(request, live, out, stream.chunks(), ())

        def progress(sent: int, chunks: int) -> None:
            self.counters.bytes_relayed += sent
            self.counters.chunks_relayed += chunks
            live.last_used = self._clock()

        try:
            # The reader thread asks still_live (a dict lookup, read-only) before each chunk.
            await stream.send_to(sock, progress, lambda: self._table.still_live(live))
        except DownstreamGone:
            if not self._table.still_live(live):
                log.info("relay %s: stream cut, the grant ended", live.grant.label)
            _abort(request)  # the target went away, or the grant ended: the connection cannot be reused
            return out
        except UpstreamError as exc:
            log.info("relay %s: upstream stream broke off: %s", live.grant.label, type(exc).__name__)
            self.counters.fail("upstream-broke-off")
            _abort(request)  # a truncated body must not look complete to the target
            return out
        await out.write_eof()
        return out

    async def _pin(self, grant: Grant, *, force: bool) -> Pin:
        """The verified leaf the upstream of ``grant`` must show (AIA fetches through our session)."""
        return await self._trust.pin(grant.upstream_address, grant.upstream_port, grant.upstream_host,
                                     force=force, session=self._session)

    async def _upstream_request(self, grant: Grant, method: str, url: URL, headers: CIMultiDict[str],
                                body: bytes | None) -> aiohttp.ClientResponse:
        session = self._session
        if session is None:
            raise UpstreamRefused("relay-stopped", "the relay is not running")
        sni = server_name(grant.upstream_host)
        timeout = aiohttp.ClientTimeout(total=None, connect=self._upstream_timeout,
                                        sock_read=self._upstream_timeout)
        for attempt in (1, 2):
            pin = await self._pin(grant, force=attempt == 2)
            try:
                return await session.request(
                    method, url, headers=headers, data=body, ssl=pin.fingerprint, server_hostname=sni,
                    allow_redirects=False, timeout=timeout,
                )
            except aiohttp.ServerFingerprintMismatch:
                # The server now shows another leaf (renewed certificate): verify it before any
                # request, and so the token, goes to it.
                log.info("relay: %s presented a new certificate; verifying it", grant.upstream_host)
                continue
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise UpstreamRefused(
                    "upstream-unreachable",
                    f"the relay could not reach the Plex server {grant.upstream_host} at "
                    f"{grant.upstream_address}:{grant.upstream_port}: {type(exc).__name__}",
                ) from exc
        raise UpstreamRefused("upstream-untrusted",
                              f"the Plex server {grant.upstream_host} changed its certificate twice in a row")

    def _response_headers(self, request: web.Request, live: Live,
                          upstream: Iterable[tuple[str, str]]) -> CIMultiDict[str]:
        """The upstream's headers the target may see: listed ones, Location rewritten, no token."""
        base = self.base_url(live.grant, _local_ip(request) or self._bind)
        needles = token_needles(live.grant.token)
        headers = CIMultiDict[str]()
        for name, value in upstream:
            lowered = name.lower()
            if lowered == "location":
                value = live.rewriter.rewrite(value.encode("latin-1", "replace"), base).decode("latin-1")
            elif lowered not in _RESPONSE_HEADERS:
                continue
            if any(n.decode("latin-1") in value for n in needles):
                continue
            headers.add(name, value)
        return headers

    async def _respond(self, request: web.Request, live: Live, resp: aiohttp.ClientResponse) -> web.StreamResponse:
        grant = live.grant
        base = self.base_url(grant, _local_ip(request) or self._bind)
        needles = token_needles(grant.token)
        headers = self._response_headers(request, live, resp.headers.items())
        content_type = resp.headers.get("Content-Type", "")
        head = request.method.upper() == "HEAD"
        if not head and resp.status != 206 and is_text(content_type):
            data = await read_capped(resp, TEXT_BODY_CAP)
            if data is None:
                raise UpstreamRefused("upstream-too-large", "the server's text answer exceeds the relay's cap")
            if live.scope is not None and resp.status == 200:
                live.scope.learn(data)  # the item's parts, streams, children and queue items
            for needle in needles:
                data = data.replace(needle, b"")
            data = live.rewriter.rewrite(data, base)
            headers.pop("Content-Type", None)
            out = web.Response(status=resp.status, body=data, headers=headers)
            if content_type:
                out.headers["Content-Type"] = content_type
            self.counters.bytes_relayed += len(data)
            return out
        length = resp.content_length if "Content-Encoding" not in resp.headers else None
        # iter_any: each chunk as the socket delivered it, without re-joining into fixed sizes.
        return await self._stream(request, live, resp.status, headers, length, resp.content.iter_any(), head,
                                  body_needles(content_type, grant.token))

    async def _stream(self, request: web.Request, live: Live, status: int, headers: CIMultiDict[str],
                      content_length: int | None, chunks: AsyncIterator[bytes], head: bool,
                      needles: Sequence[bytes]) -> web.StreamResponse:
        out = web.StreamResponse(status=status, headers=headers)
        if content_length is not None:
            out.content_length = content_length
        await out.prepare(request)
        if head:
            await out.write_eof()
            return out
        return await self._stream_prepared(request, live, out, chunks, needles)

    async def _stream_prepared(self, request: web.Request, live: Live, out: web.StreamResponse,
                               chunks: AsyncIterator[bytes], needles: Sequence[bytes]) -> web.StreamResponse:
        scrubber = TokenScrubber(needles)
        try:
            async for chunk in chunks:
                if not self._table.still_live(live):
                    log.info("relay %s: stream cut, the grant ended", live.grant.label)
                    _abort(request)
                    return out
                live.last_used = self._clock()
                for data in scrubber.feed(chunk):
                    await out.write(data)  # waits while the target's socket is full (back-pressure)
                    self.counters.bytes_relayed += len(data)
                self.counters.chunks_relayed += 1
            tail = scrubber.finish()
            if tail:
                await out.write(tail)
                self.counters.bytes_relayed += len(tail)
        except ConnectionResetError:
            return out  # the target went away; releasing the upstream response closes that side
        except (aiohttp.ClientError, TimeoutError, UpstreamError) as exc:
            log.info("relay %s: upstream stream broke off: %s", live.grant.label, type(exc).__name__)
            self.counters.fail("upstream-broke-off")
            _abort(request)  # a truncated body must not look complete to the target
            return out
        await out.write_eof()
        return out


def _presented_token(request: web.Request) -> str:
    for name, value in request.query.items():
        if name.lower() == "x-plex-token":
            return value
    return request.headers.get("X-Plex-Token", "")


def _peer(request: web.Request) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    # The TCP peer itself, never a header: a Forwarded/X-Forwarded-For header is the target's word.
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    if not peer:
        return None
    try:
        return unmapped(ipaddress.ip_address(str(peer[0]).split("%", 1)[0]))
    except ValueError:
        return None


def _local_ip(request: web.Request) -> str | None:
    transport = request.transport
    sock = transport.get_extra_info("sockname") if transport is not None else None
    if not sock:
        return None
    return str(unmapped(ipaddress.ip_address(str(sock[0]).split("%", 1)[0])))


def _abort(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.close()


__all__ = ["CHUNK", "Relay"]
