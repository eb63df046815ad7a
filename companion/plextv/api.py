"""The plex.tv HTTP calls (one ``PlexTvApi`` per caller, with its own session and timeouts).

Each method is one call of docs/plextv.md. The base URL comes from ``plextv.url`` so tests point
it at a fake. Tokens travel only in the ``X-Plex-Token`` header, never in a URL, so no error
message, log line or exception built from a URL can carry one. Library errors become
:class:`~companion.errors.PlexTvError` subclasses here.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlencode

import aiohttp
from yarl import URL

from companion.errors import (
    PinExpired,
    PlexTvDenied,
    PlexTvError,
    PlexTvUnauthorized,
    PlexTvUnreachable,
    ProtocolError,
)
from companion.plextv.store import AccountToken
from companion.proto.plextv import (
    Account,
    Device,
    Identity,
    Pin,
    Resource,
    connection_query,
    parse_devices,
    parse_pin,
    parse_resources,
    parse_user,
)

log = logging.getLogger(__name__)

DEFAULT_URL = "https://plex.tv"
REQUEST_TIMEOUT = 10.0
_MAX_BODY = 4 * 1024 * 1024
T = TypeVar("T")


def ssl_context() -> ssl.SSLContext:
    """The system's trust store (OpenSSL's SSL_CERT_FILE / SSL_CERT_DIR are honoured), full verification."""
    return ssl.create_default_context()


def _reveal(token: AccountToken | str) -> str:
    return token.reveal() if isinstance(token, AccountToken) else token


class PlexTvApi:
    """The calls to one plex.tv base URL; owns its HTTP session (shared with nothing else)."""

    def __init__(self, base_url: str = DEFAULT_URL, *, timeout: float = REQUEST_TIMEOUT,
                 ssl_ctx: ssl.SSLContext | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._ssl = ssl_ctx  # the system store is loaded at the first call, not for every bridge that never links
        self._session: aiohttp.ClientSession | None = None

    @property
    def link_page(self) -> str:
        """Where a person enters the code: ``<plextv.url>/link``."""
        return f"{self.base_url}/link"

    async def __aenter__(self) -> PlexTvApi:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session (idempotent)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            # trust_env=False: no proxy or netrc from the environment gets to see a token.
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(ssl=self._ssl or ssl_context(), limit=8), trust_env=False)
        return self._session

    async def _call(self, method: str, path: str, *, identity: Identity, token: AccountToken | str | None = None,
                    accept: str = "application/json", form: dict[str, str] | None = None,
                    query: str = "") -> tuple[int, bytes]:
        url = URL(f"{self.base_url}{path}" + (f"?{query}" if query else ""), encoded=True)
        headers = {**identity.headers(), "Accept": accept}
        if token is not None:
            headers["X-Plex-Token"] = _reveal(token)
        data: bytes | None = None
        if form is not None:
            data = urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        what = f"{method} {path}"
        try:
            async with self._http().request(method, url, headers=headers, data=data,
                                            allow_redirects=False) as resp:
                body = await resp.content.read(_MAX_BODY + 1)
                status = resp.status
        except TimeoutError as exc:
            raise PlexTvUnreachable(f"cannot reach plex.tv at {self.base_url}: no answer within "
                                    f"{self.timeout:g} s ({what})") from exc
        except aiohttp.ClientConnectorCertificateError as exc:
            raise PlexTvUnreachable(f"cannot reach plex.tv at {self.base_url}: its certificate is not trusted "
                                    f"({exc.certificate_error})") from exc
        except aiohttp.ClientError as exc:
            raise PlexTvUnreachable(f"cannot reach plex.tv at {self.base_url}: {type(exc).__name__}: "
                                    f"{_reason(exc)}") from exc
        log.debug("plex.tv %s -> %d", what, status)
        if status == 401:
            raise PlexTvUnauthorized(f"plex.tv answered 401 Unauthorized to {what}")
        if status == 403:
            raise PlexTvDenied(f"plex.tv answered 403 Forbidden to {what}")
        if status >= 400:
            raise PlexTvError(f"plex.tv answered HTTP {status} to {what}")
        return status, body[:_MAX_BODY]

    async def create_pin(self, identity: Identity) -> Pin:
        """``POST /api/v2/pins`` (a 4-character code, ``strong=false``) for the calling identity."""
        _, body = await self._call("POST", "/api/v2/pins", identity=identity, form={"strong": "false"})
        return _parsed(parse_pin, body)

    async def check_pin(self, identity: Identity, pin_id: int) -> Pin:
        """``GET /api/v2/pins/<id>``: ``auth_token`` is set once the code was entered; 404 = expired."""
        try:
            _, body = await self._call("GET", f"/api/v2/pins/{int(pin_id)}", identity=identity)
        except PlexTvError as exc:
            if "HTTP 404" in str(exc):
                raise PinExpired("the link code expired or plex.tv no longer knows it") from exc
            raise
        return _parsed(parse_pin, body)

    async def claim_pin(self, identity: Identity, account: AccountToken, code: str) -> None:
        """``PUT /api/v2/pins/link`` with ``code``: the account claims a PIN (what entering it at plex.tv/link does)."""
        try:
            await self._call("PUT", "/api/v2/pins/link", identity=identity, token=account, form={"code": code})
        except PlexTvError as exc:
            if "HTTP 404" in str(exc):
                raise PinExpired("the code to claim expired or plex.tv no longer knows it") from exc
            raise

    async def user(self, identity: Identity, token: AccountToken) -> Account:
        """``GET /api/v2/user``: who the token belongs to (a 401 means it was revoked)."""
        _, body = await self._call("GET", "/api/v2/user", identity=identity, token=token)
        return _parsed(parse_user, body)

    async def devices(self, identity: Identity, token: AccountToken | str) -> list[Device]:
        """``GET /devices.xml``: the account's devices (id, clientIdentifier, provides, connections)."""
        _, body = await self._call("GET", "/devices.xml", identity=identity, token=token, accept="application/xml")
        return _parsed(parse_devices, body)

    async def put_connection(self, identity: Identity, token: str, device_id: str, uris: list[str]) -> None:
        """``PUT /devices/<id>?Connection[][uri]=...``: publish where the device answers (and its identity headers)."""
        await self._call("PUT", f"/devices/{_path_part(device_id)}", identity=identity, token=token,
                         accept="application/xml", query=connection_query(uris))

    async def delete_device(self, identity: Identity, account: AccountToken, device_id: str) -> bool:
        """``DELETE /devices/<id>.xml`` with the account token; False when plex.tv no longer had it."""
        try:
            await self._call("DELETE", f"/devices/{_path_part(device_id)}.xml", identity=identity, token=account,
                             accept="application/xml")
        except PlexTvError as exc:
            if "HTTP 404" in str(exc):
                return False
            raise
        return True

    async def resources(self, identity: Identity, token: AccountToken) -> list[Resource]:
        """``GET /api/v2/resources``: the list the Plex apps read to show players (and servers)."""
        _, body = await self._call("GET", "/api/v2/resources", identity=identity, token=token,
                                   accept="application/xml", query="includeHttps=1&includeRelay=1")
        return _parsed(parse_resources, body)


def _path_part(value: str) -> str:
    if not value or not all(c.isalnum() or c in "-_" for c in value):
        raise PlexTvError(f"plex.tv gave a device id that is not one: {value[:40]!r}")
    return value


def _reason(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    text = str(getattr(exc, "os_error", None) or exc)
    return text or (str(cause) if cause else "no detail")


def _parsed(parse: Callable[[bytes], T], body: bytes) -> T:
    try:
        return parse(body)
    except ProtocolError as exc:
        raise PlexTvError(str(exc)) from exc
