"""Holding each configured server's companion proxy poll for each face, and carrying what it hands over.

Owns one :class:`ProxyLink` (a task) per (server, face). A link long-polls
``GET /player/proxy/poll`` as the face (its identity and capabilities), runs every command the
server hands over through ``Face.run_command`` (the same handler, decision and audit as a request
to the face), answers each with ``POST /player/proxy/response`` and, once a controller talks to
the face through the server, reports the face's timeline with ``POST /player/proxy/timeline``.
Errors back off exponentially (bounded); ``stop()`` cancels and awaits every task.

Which token: only the token the owner configured for that very server (``servers: [{url,
token}]``), used with that server only, to register the face there and answer its commands; the
way PlexKodiConnect polls with its server token. Never a controller's playMedia token, never the
plex.tv account token; servers without a configured token are not polled (the status page says
so, with the fix). The token rides in a header, never in a URL, and is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import urlencode

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from companion.errors import CompanionError, ProtocolError
from companion.faces.app import Face
from companion.faces.middleware import status_for
from companion.faceslot import FaceSlot
from companion.model import Server, redacted, scrub
from companion.proto import plexdirect
from companion.proto.companion import parse_request, response_xml
from companion.proto.proxy import MAX_POLL_BYTES, ProxyCommand, command_request_values, parse_poll, poll_params
from companion.security.tls import system_verifying_context
from companion.visibility import ChannelView

log = logging.getLogger(__name__)

LinkState = Literal["starting", "polling", "refused", "not-offered", "unreachable", "error"]
_PUSH_FAILURES = 3  # PKC drops a proxy subscriber after three failed timeline posts


@dataclass(frozen=True)
class ProxySettings:
    """Timings of the proxy poll (the server holds a poll about 20 s: PKC)."""

    poll_timeout: float = 60.0
    request_timeout: float = 5.0
    backoff_initial: float = 1.0
    backoff_max: float = 128.0  # PKC's 2**7 s


def server_context(extra_roots: Iterable[x509.Certificate]) -> ssl.SSLContext:
    """Verifying TLS context for the proxy calls: the system roots plus the configured extra ones."""
    ctx = system_verifying_context()
    pem = "".join(cert.public_bytes(Encoding.PEM).decode() for cert in extra_roots)
    if pem:
        ctx.load_verify_locations(cadata=pem)
    return ctx


class ProxyLink:
    """One face registered on one server's companion proxy."""

    def __init__(self, *, server: Server, slot: FaceSlot, session: aiohttp.ClientSession,
                 ssl_context: ssl.SSLContext, settings: ProxySettings,
                 clock: Callable[[], float] = time.time) -> None:
        self.server = server
        self.slot = slot
        self._session = session
        self._ssl = ssl_context
        self._settings = settings
        self._clock = clock
        self.state: LinkState = "starting"
        self.detail = "starting"
        self.last_ok: float | None = None  # wall clock of the last poll the server answered
        self.commands = 0
        self._subscribed = False
        self._push_failures = 0
        self._key = f"proxy:{server.address}:{server.port}"  # the face's timeline audience key
        self._task: asyncio.Task[None] | None = None
        self._pusher: asyncio.Task[None] | None = None
        self._seen: list[str] = []  # recent hand-over ids: the server may repeat one

    @property
    def face(self) -> Face:
        """The face this link polls for."""
        return self.slot.face

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Begin polling (a task; never raises for an absent server)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"proxy-poll:{self.server.address}:{self.server.port}:{self.slot.target.id}")

    async def stop(self) -> None:
        """Cancel the poll and the timeline reports, and wait for both."""
        tasks = [t for t in (self._task, self._pusher) if t is not None]
        self._task = self._pusher = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- HTTP ---------------------------------------------------------------------------------

    def _url(self, path: str, query: dict[str, str]) -> tuple[str, str | None]:
        server = self.server
        host = f"[{server.address}]" if ":" in server.address else server.address
        sni: str | None = None
        if server.scheme == "https" and server.host.endswith(".plex.direct"):
            with contextlib.suppress(ProtocolError):
                sni = plexdirect.build_name(server.address, server.host.split(".")[0])
        return f"{server.scheme}://{host}:{server.port}{path}?{urlencode(query)}", sni

    def _headers(self) -> dict[str, str]:
        identity = self.face.identity
        headers = identity.push_headers()
        headers["X-Plex-Device"] = identity.platform
        assert self.server.token  # links exist only for servers with a configured token
        headers["X-Plex-Token"] = self.server.token
        return headers

    async def _request(self, method: str, path: str, query: dict[str, str], *, timeout: float,
                       body: bytes | None = None) -> tuple[int, bytes]:
        url, sni = self._url(path, query)
        headers = self._headers()
        if body is not None:
            headers["Content-Type"] = "application/xml"
        kwargs: dict[str, object] = {}
        if self.server.scheme == "https":
            kwargs["ssl"] = self._ssl
            if sni:
                kwargs["server_hostname"] = sni
        async with asyncio.timeout(timeout):
            async with self._session.request(method, url, headers=headers, data=body, allow_redirects=False,
                                             **kwargs) as resp:  # type: ignore[arg-type]
                data = await resp.content.read(MAX_POLL_BYTES + 1)
                return resp.status, data

    # -- the poll loop --------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = self._settings.backoff_initial
        where = self._where()
        while True:
            failed = await self._poll_once()
            if failed is None:
                backoff = self._settings.backoff_initial
                continue
            level = logging.WARNING if failed else logging.DEBUG
            log.log(level, "companion proxy of %s for face %r: %s; trying again in %.0f s", where,
                    self.face.identity.name, self.detail, backoff)
            await asyncio.sleep(backoff)  # pacing after an error, not synchronisation
            backoff = min(backoff * 2, self._settings.backoff_max)

    async def _poll_once(self) -> bool | None:
        """One poll; None when it went well, else whether this failure is news (worth a WARNING)."""
        identity = self.face.identity
        before = (self.state, self.detail)
        params = poll_params(device_class=identity.device_class, capabilities=identity.capabilities)
        try:
            status, body = await self._request("GET", "/player/proxy/poll", params,
                                               timeout=self._settings.poll_timeout)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.state, self.detail = "unreachable", f"cannot reach the server: {_describe(exc)}"
            return before != (self.state, self.detail)
        if status in (401, 403):
            self.state, self.detail = "refused", f"the server refused the configured token (HTTP {status})"
            return before != (self.state, self.detail)
        if status in (404, 405):
            self.state, self.detail = "not-offered", f"the server has no companion proxy (HTTP {status})"
            return before != (self.state, self.detail)
        if status >= 400:
            self.state, self.detail = "error", f"the server answered the poll with HTTP {status}"
            return before != (self.state, self.detail)
        try:
            commands = parse_poll(body)  # refuses a body over its limit (we read one byte more)
        except ProtocolError as exc:
            self.state, self.detail = "error", scrub(str(exc))
            return before != (self.state, self.detail)
        if self.state != "polling":
            log.info("face %r is registered on the companion proxy of %s", identity.name, self._where())
        self.state, self.detail = "polling", "registered: the server hands this face's commands over"
        self.last_ok = self._clock()
        for command in commands:
            await self._carry(command)
        return None

    # -- commands -------------------------------------------------------------------------------

    async def _carry(self, handed: ProxyCommand) -> None:
        if handed.command_id and handed.command_id in self._seen:
            await self._answer(handed, 200, "OK")  # a repeat: answered again, not run again
            return
        if handed.command_id:
            self._seen = [*self._seen[-63:], handed.command_id]
        self.commands += 1
        body: bytes | None = None
        code, status = 200, "OK"
        try:
            query, headers = command_request_values(handed)
            command = parse_request("GET", handed.path, query, headers, self.server.address)
            self.face.subscribers.note_command(self._key, command.command_id)
            if command.group == "timeline":
                body = self._timeline_command(command.name)
            else:
                self._subscribe()  # PKC: a controller's first proxied command subscribes it
                await self.face.run_command(command)
        except CompanionError as exc:
            code, status = status_for(exc), scrub(str(exc))[:200] or type(exc).__name__
        log.info("face %r: %s from %r through the companion proxy of %s -> %d%s", self.face.identity.name,
                 handed.path, handed.device_name or handed.client_id, self._where(), code,
                 "" if code == 200 else f" ({status})")
        if log.isEnabledFor(logging.DEBUG):
            log.debug("proxied command parameters: %s", redacted(handed.query))
        await self._answer(handed, code, status, body)
        if code == 200 and handed.path != "/player/timeline/unsubscribe":
            self._kick_pusher()

    def _timeline_command(self, name: str) -> bytes | None:
        if name == "unsubscribe":
            self._subscribed = False
        elif name == "subscribe":
            self._subscribe()
        else:  # poll through the proxy: the answer carries the timeline
            return self.face.subscribers.render_for(self._key)
        return None

    async def _answer(self, handed: ProxyCommand, code: int, status: str, body: bytes | None = None) -> None:
        payload = body if body is not None else response_xml(code, status)
        try:
            answered, _ = await self._request("POST", "/player/proxy/response", {"commandID": handed.command_id},
                                              timeout=self._settings.request_timeout, body=payload)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("could not answer %s through the companion proxy of %s: %s", handed.path, self._where(),
                        _describe(exc))
            return
        if answered >= 400:
            log.warning("the companion proxy of %s refused the answer to %s (HTTP %d)", self._where(),
                        handed.path, answered)

    # -- timelines --------------------------------------------------------------------------------

    def _subscribe(self) -> None:
        if not self._subscribed:
            self._subscribed = True
            self._push_failures = 0

    def _kick_pusher(self) -> None:
        if self._subscribed and (self._pusher is None or self._pusher.done()):
            self._pusher = asyncio.get_running_loop().create_task(
                self._push_loop(), name=f"proxy-timeline:{self.server.address}:{self.slot.target.id}")

    async def _push_loop(self) -> None:
        """Report the timeline now, then on every change (a held poll on the face's own audience)."""
        wait = False
        while self._subscribed:
            body = await self.face.subscribers.poll(self._key, command_id=None, wait=wait)
            wait = True
            if not self._subscribed:
                return
            state = self.face.state.active.state if self.face.state.active is not None else "stopped"
            command_id = self.face.subscribers.command_id(self._key)
            query = {"state": state, "commandID": str(command_id if command_id is not None else 0)}
            try:
                status, _ = await self._request("POST", "/player/proxy/timeline", query, body=body,
                                                timeout=self._settings.request_timeout)
                failed = status >= 400
            except (aiohttp.ClientError, OSError, TimeoutError):
                failed = True
            self._push_failures = self._push_failures + 1 if failed else 0
            if self._push_failures >= _PUSH_FAILURES:
                log.warning("stopped reporting face %r's timeline to the companion proxy of %s after %d "
                            "failures", self.face.identity.name, self._where(), _PUSH_FAILURES)
                self._subscribed = False

    # -- status -----------------------------------------------------------------------------------

    def _where(self) -> str:
        return f"{self.server.name or self.server.address} ({self.server.address}:{self.server.port})"

    def view(self) -> ChannelView:
        """This link as the status page shows it."""
        at = datetime.fromtimestamp(self.last_ok, UTC) if self.last_ok is not None else None
        name = self.server.name or self.server.address
        if self.state == "polling":
            plain = ("; the poll is plain http, so the server's token crosses the LAN in clear (list the server "
                     "by its https URL)") if self.server.scheme == "http" else ""
            return ChannelView("proxy", "visible", f"{self.detail}; {self.commands} command(s) carried{plain}", "",
                               at, name)
        if self.state == "starting":
            return ChannelView("proxy", "pending", "registering on the server's companion proxy", "", at, name)
        fixes = {
            "refused": "put a valid token for this server under servers: in the config (Plex Web, any item, "
                       "Get Info, View XML shows one in the address)",
            "not-offered": "update Plex Media Server; this one does not offer the companion proxy",
            "unreachable": "check that the server runs and that this host reaches it (and, for https, that "
                           "its certificate verifies: security.extra_roots)",
            "error": "see the bridge's log",
        }
        return ChannelView("proxy", "missing", self.detail, fixes[self.state], at, name)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return scrub(str(exc)) or type(exc).__name__


class ProxyService:
    """Every proxy link of one bridge: one per (server with a configured token, face)."""

    def __init__(self, *, session: aiohttp.ClientSession, ssl_context: ssl.SSLContext,
                 servers: Callable[[], list[Server]], settings: ProxySettings = ProxySettings()) -> None:
        self._session = session
        self._ssl = ssl_context
        self._servers = servers
        self.settings = settings
        self._links: dict[tuple[str, int, str], ProxyLink] = {}
        self._slots: dict[str, FaceSlot] = {}

    def links(self) -> list[ProxyLink]:
        """Every link (one per face and server)."""
        return list(self._links.values())

    def add_face(self, slot: FaceSlot) -> None:
        """A face opened: register it on every server's proxy."""
        self._slots[slot.target.id] = slot
        self.reconcile()

    async def remove_face(self, target_id: str) -> None:
        """A face closed: stop its links."""
        self._slots.pop(target_id, None)
        gone = [key for key in self._links if key[2] == target_id]
        await asyncio.gather(*(self._links.pop(key).stop() for key in gone))

    def reconcile(self) -> None:
        """Start the links that are missing (servers with a token x open faces)."""
        for server in self._servers():
            if not server.token:
                continue
            for slot in self._slots.values():
                key = (server.address, server.port, slot.target.id)
                link = self._links.get(key)
                if link is None:
                    link = ProxyLink(server=server, slot=slot, session=self._session, ssl_context=self._ssl,
                                     settings=self.settings)
                    self._links[key] = link
                    link.start()
                else:
                    link.server = server  # a name learnt from GDM, a token changed by a reload

    async def stop(self) -> None:
        """Stop every link and wait for them."""
        links, self._links = list(self._links.values()), {}
        await asyncio.gather(*(link.stop() for link in links))

    def views(self, slot: FaceSlot, now: datetime) -> list[ChannelView]:
        """One view per known server for this face."""
        views: list[ChannelView] = []
        servers = self._servers()
        for server in servers:
            link = self._links.get((server.address, server.port, slot.target.id))
            if link is not None:
                views.append(link.view())
            else:
                views.append(ChannelView(
                    "proxy", "missing", "no token is configured for this server, so the bridge does not register "
                    "the face on its companion proxy", "list the server under servers: with its token "
                    f"(url: {server.base_url})", None, server.name or server.address))
        if not servers:
            views.append(ChannelView("proxy", "missing", "no Plex server is known, so no companion proxy reaches "
                                     "this face", "list your server under servers: with its url and token"))
        return views
