"""FakePlexTv: plex.tv's account and device endpoints over real TLS (a trustme CA) on loopback.

Shapes follow docs/plextv.md (python-plexapi ``myplex.py``, Music Assistant ``plextv.py``,
plexdlnaplayer): PINs (create, poll, claim with ``PUT /api/v2/pins/link``), the user, the devices
list, the connection PUT, device DELETE, and ``/api/v2/resources``. ``/api/v2/*`` answers JSON when
``Accept`` asks for it and XML otherwise (python-plexapi sends no Accept and parses XML).

State: one account; every token plex.tv hands out belongs to it and to one device (the client
identifier that created the PIN), as on plex.tv. ``enter_code(code)`` is a person typing the code
at plex.tv/link. UseCases make it deny, expire, reject tokens or fail.

Usage::

    async with FakePlexTv() as fake:
        fake.url              # https://127.0.0.1:<port>, trust fake.ca_pem
        fake.enter_code(code) # the person at plex.tv/link
"""

from __future__ import annotations

import secrets
import ssl
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl
from xml.sax.saxutils import quoteattr

import trustme
from aiohttp import web

from companion.connections import GatedTCPSite


@dataclass
class FakePin:
    id: int
    code: str
    client_id: str
    headers: dict[str, str]
    created: float
    expires_in: int
    auth_token: str | None = None


@dataclass
class FakeDevice:
    id: int
    client_id: str
    name: str
    product: str
    provides: str
    platform: str
    tokens: set[str] = field(default_factory=set)
    connections: list[str] = field(default_factory=list)
    last_seen: float = 0.0


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass
class PlexTvUseCases:
    pin_expires_in: int = 900  # seconds, as plex.tv's 4-character PINs
    deny_pins: bool = False  # 403 on PIN creation (plex.tv refuses this client)
    reject_tokens: bool = False  # every token gets 401 (revoked)
    claim_gives_no_token: bool = False  # a claimed PIN never shows its token
    fail_connection_put: int = 0  # answer 503 to this many connection PUTs
    status_for_all: int = 0  # answer every request with this status (plex.tv down behind its CDN)


class FakePlexTv:
    ACCOUNT_ID = 4242
    ACCOUNT_UUID = "a1b2c3d4e5f60718"

    def __init__(self, *, username: str = "alice", title: str = "Alice Example", port: int = 0) -> None:
        self.username = username
        self.title = title
        self.ca = trustme.CA()
        self.ca_pem = self.ca.cert_pem.bytes()
        self.use_cases = PlexTvUseCases()
        self.pins: dict[int, FakePin] = {}
        self.devices: dict[int, FakeDevice] = {}
        self.seen: list[Seen] = []
        self.port = port
        self._ids = 1000
        self._runner: web.AppRunner | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    async def __aenter__(self) -> FakePlexTv:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("POST", "/api/v2/pins", self._create_pin)
        app.router.add_route("PUT", "/api/v2/pins/link", self._claim)
        app.router.add_route("GET", "/api/v2/pins/{id}", self._check_pin)
        app.router.add_route("GET", "/api/v2/user", self._user)
        app.router.add_route("GET", "/api/v2/resources", self._resources)
        app.router.add_route("GET", "/devices.xml", self._devices)
        app.router.add_route("PUT", "/devices/{id}", self._put_connection)
        app.router.add_route("DELETE", "/devices/{id}.xml", self._delete)
        app.middlewares.append(self._record)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1", "plex.tv").configure_cert(ctx)
        # The daemon's own site: a TLS handshake that ends after stop() is reset, not served.
        site = GatedTCPSite(self._runner, "127.0.0.1", self.port, gate=None, ssl_context=ctx)
        await site.start()
        self.port = site.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def write_ca(self, path: Any) -> str:
        path.write_bytes(self.ca_pem)
        return str(path)

    # -- what a person does at plex.tv -------------------------------------------------------------

    def enter_code(self, code: str) -> FakePin:
        """The account owner types ``code`` at plex.tv/link."""
        pin = next(p for p in self.pins.values() if p.code == code)
        self._claim_pin(pin)
        return pin

    def issue_account_token(self, client_id: str = "linked-bridge") -> str:
        """A token as a finished ``companion link`` would hold (a PIN of ``client_id``, claimed)."""
        pin = FakePin(self._next_id(), "LINK", client_id, {"X-Plex-Product": "companion-bridge",
                                                           "X-Plex-Device-Name": "test-bridge"}, time.time(), 900)
        self.pins[pin.id] = pin
        self._claim_pin(pin)
        assert pin.auth_token is not None
        return pin.auth_token

    def tokens(self) -> set[str]:
        return {t for d in self.devices.values() for t in d.tokens}

    def device_by_client(self, client_id: str) -> FakeDevice | None:
        return next((d for d in self.devices.values() if d.client_id == client_id), None)

    def players(self) -> list[FakeDevice]:
        return [d for d in self.devices.values() if "player" in d.provides.split(",")]

    # -- internals ----------------------------------------------------------------------------------

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(Seen(request.method, request.path, request.query_string, dict(request.headers), body))
        if self.use_cases.status_for_all:
            return web.Response(status=self.use_cases.status_for_all, text="unavailable")
        return await handler(request)  # type: ignore[no-any-return]

    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

    def _device_for_token(self, request: web.Request) -> FakeDevice | None:
        token = request.headers.get("X-Plex-Token") or request.query.get("X-Plex-Token")
        if not token or self.use_cases.reject_tokens:
            return None
        return next((d for d in self.devices.values() if token in d.tokens), None)

    @staticmethod
    def _wants_json(request: web.Request) -> bool:
        return "application/json" in request.headers.get("Accept", "")

    def _claim_pin(self, pin: FakePin) -> None:
        device = self.device_by_client(pin.client_id)
        h = pin.headers
        if device is None:
            device = FakeDevice(id=self._next_id(), client_id=pin.client_id,
                                name=h.get("X-Plex-Device-Name", ""), product=h.get("X-Plex-Product", ""),
                                provides=h.get("X-Plex-Provides", ""), platform=h.get("X-Plex-Platform", ""))
            self.devices[device.id] = device
        token = f"tok-{secrets.token_hex(10)}"
        device.tokens.add(token)
        device.last_seen = time.time()
        if not self.use_cases.claim_gives_no_token:
            pin.auth_token = token

    def _pin_body(self, request: web.Request, pin: FakePin, status: int = 200) -> web.Response:
        expires_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(pin.created + pin.expires_in))
        data = {"id": pin.id, "code": pin.code, "product": pin.headers.get("X-Plex-Product", ""), "trusted": False,
                "clientIdentifier": pin.client_id, "expiresIn": max(0, int(pin.created + pin.expires_in - time.time())),
                "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(pin.created)), "expiresAt": expires_at,
                "authToken": pin.auth_token}
        if self._wants_json(request):
            return web.json_response(data, status=status)
        attrs = " ".join(f"{k}={quoteattr(str(v if v is not None else ''))}" for k, v in data.items())
        return web.Response(status=status, content_type="application/xml", text=f"<pin {attrs}/>")

    async def _create_pin(self, request: web.Request) -> web.Response:
        client = request.headers.get("X-Plex-Client-Identifier")
        if not client:
            return web.Response(status=400, text="X-Plex-Client-Identifier is missing")
        if self.use_cases.deny_pins:
            return web.Response(status=403, text="forbidden")
        code = "".join(secrets.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(4))
        pin = FakePin(self._next_id(), code, client, dict(request.headers), time.time(), self.use_cases.pin_expires_in)
        self.pins[pin.id] = pin
        return self._pin_body(request, pin, 201)

    def _live_pin(self, pin_id: str) -> FakePin | None:
        pin = self.pins.get(int(pin_id)) if pin_id.isdigit() else None
        if pin is None or time.time() > pin.created + pin.expires_in:
            return None
        return pin

    async def _check_pin(self, request: web.Request) -> web.Response:
        pin = self._live_pin(request.match_info["id"])
        if pin is None or pin.client_id != request.headers.get("X-Plex-Client-Identifier"):
            return web.Response(status=404, text="not found")
        return self._pin_body(request, pin)

    async def _claim(self, request: web.Request) -> web.Response:
        if self._device_for_token(request) is None:
            return web.Response(status=401, text="unauthorized")
        code = dict(parse_qsl((await request.read()).decode())).get("code", "")
        pin = next((p for p in self.pins.values() if p.code == code and self._live_pin(str(p.id))), None)
        if pin is None:
            return web.Response(status=404, text="code not found")
        self._claim_pin(pin)
        return web.Response(status=204)

    async def _user(self, request: web.Request) -> web.Response:
        device = self._device_for_token(request)
        if device is None:
            return web.Response(status=401, text="unauthorized")
        token = request.headers.get("X-Plex-Token", "")
        if self._wants_json(request):
            return web.json_response({"id": self.ACCOUNT_ID, "uuid": self.ACCOUNT_UUID, "username": self.username,
                                      "title": self.title, "email": f"{self.username}@example.invalid",
                                      "authToken": token})
        return web.Response(content_type="application/xml", text=(
            f'<user id="{self.ACCOUNT_ID}" uuid="{self.ACCOUNT_UUID}" username={quoteattr(self.username)} '
            f'title={quoteattr(self.title)} email="{self.username}@example.invalid" authToken={quoteattr(token)} '
            f'scrobbleTypes="1,2" locale="" home="0" guest="0" protected="0" restricted="0">'
            f'<subscription active="0" status="Inactive" plan="free"/>'
            f'<profile autoSelectAudio="1" defaultAudioLanguage="en" defaultSubtitleLanguage="en" '
            f'autoSelectSubtitle="0" defaultSubtitleAccessibility="0" defaultSubtitleForces="0"/>'
            f'<entitlements/><roles/></user>'))

    async def _devices(self, request: web.Request) -> web.Response:
        if self._device_for_token(request) is None:
            return web.Response(status=401, text="unauthorized")
        rows = []
        for d in self.devices.values():
            conns = "".join(f"<Connection uri={quoteattr(u)}/>" for u in d.connections)
            token = next(iter(d.tokens), "")
            rows.append(f'<Device name={quoteattr(d.name)} product={quoteattr(d.product)} '
                        f'provides={quoteattr(d.provides)} clientIdentifier={quoteattr(d.client_id)} id="{d.id}" '
                        f'platform={quoteattr(d.platform)} token={quoteattr(token)} '
                        f'lastSeenAt="{int(d.last_seen)}">{conns}</Device>')
        return web.Response(content_type="application/xml", text=(
            f'<MediaContainer publicAddress="203.0.113.9" size="{len(rows)}">{"".join(rows)}</MediaContainer>'))

    def _find(self, ident: str) -> FakeDevice | None:
        if ident.isdigit() and int(ident) in self.devices:
            return self.devices[int(ident)]
        return self.device_by_client(ident)  # plexdlnaplayer and Roku address a device by client identifier

    async def _put_connection(self, request: web.Request) -> web.Response:
        caller = self._device_for_token(request)
        if caller is None:
            return web.Response(status=401, text="unauthorized")
        device = self._find(request.match_info["id"])
        if device is None:
            return web.Response(status=404, text="no such device")
        if self.use_cases.fail_connection_put > 0:
            self.use_cases.fail_connection_put -= 1
            return web.Response(status=503, text="try later")
        uris = [v for k, v in parse_qsl(request.query_string) if k == "Connection[][uri]"]
        device.connections = uris
        h = request.headers
        device.name = h.get("X-Plex-Device-Name", device.name)
        device.provides = h.get("X-Plex-Provides", device.provides)
        device.product = h.get("X-Plex-Product", device.product)
        device.last_seen = time.time()
        return web.Response(status=200, content_type="application/xml", text="<MediaContainer/>")

    async def _delete(self, request: web.Request) -> web.Response:
        if self._device_for_token(request) is None:
            return web.Response(status=401, text="unauthorized")
        device = self._find(request.match_info["id"])
        if device is None:
            return web.Response(status=404, text="no such device")
        del self.devices[device.id]  # its tokens go with it
        return web.Response(status=200, content_type="application/xml", text="<MediaContainer/>")

    async def _resources(self, request: web.Request) -> web.Response:
        caller = self._device_for_token(request)
        if caller is None:
            return web.Response(status=401, text="unauthorized")
        listed = [d for d in self.devices.values()
                  if {"player", "server"} & set(d.provides.split(",")) and d.connections]
        if self._wants_json(request):
            return web.json_response([self._resource_dict(d) for d in listed])
        rows = []
        for d in listed:
            r = self._resource_dict(d)
            conns = "".join(
                "<connection " + " ".join(f"{k}={quoteattr(str(v))}" for k, v in c.items()) + "/>"
                for c in r.pop("connections"))
            attrs = " ".join(f"{k}={quoteattr(str(v))}" for k, v in r.items())
            rows.append(f"<resource {attrs}><connections>{conns}</connections></resource>")
        return web.Response(content_type="application/xml", text=f'<resources size="{len(rows)}">{"".join(rows)}'
                                                                   f"</resources>")

    @staticmethod
    def _resource_dict(d: FakeDevice) -> dict[str, Any]:
        from urllib.parse import urlsplit

        conns = []
        for uri in d.connections:
            parts = urlsplit(uri)
            conns.append({"protocol": parts.scheme, "address": parts.hostname or "", "port": parts.port or 0,
                          "uri": uri, "local": "1", "relay": "0", "IPv6": "0"})
        return {"name": d.name, "product": d.product, "productVersion": "", "platform": d.platform,
                "platformVersion": "", "device": "", "clientIdentifier": d.client_id,
                "createdAt": "2026-01-01T00:00:00Z",
                "lastSeenAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(d.last_seen)),
                "provides": d.provides, "ownerId": "", "sourceTitle": "", "publicAddress": "203.0.113.9",
                "accessToken": next(iter(d.tokens), ""), "owned": "1", "home": "0", "synced": "0", "relay": "0",
                "presence": "1" if time.time() - d.last_seen < 3600 else "0", "httpsRequired": "0",
                "publicAddressMatches": "1", "dnsRebindingProtection": "0", "natLoopbackSupported": "0",
                "connections": conns}
