"""The face's request guard: the Host allow-list, CORS (preflight, cross-site refusal, headers), error mapping.

Every domain error becomes an HTTP status here and nowhere else, always with a
``<Response code status/>`` body that says what went wrong. No message leaves with a token in it:
token values from the request are masked before the body is written.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from urllib.parse import urlsplit

from aiohttp import hdrs, web
from multidict import istr

from companion.errors import (
    CommandNotSupported,
    CompanionError,
    PolicyRefusal,
    ProtocolError,
    TargetError,
    TargetTimeout,
    TargetUnavailable,
)
from companion.faces.subscribers import FaceBusy
from companion.limits import ThrottledLog
from companion.model import SECRET_PARAMS
from companion.proto.companion import response_xml

log = logging.getLogger(__name__)

FaceHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]

XML_CONTENT_TYPE = "text/xml"
PREFLIGHT_METHODS = "POST, GET, OPTIONS, DELETE, PUT, HEAD"
PREFLIGHT_MAX_AGE = "1209600"  # 14 days, as PMP and plex-mpv-shim answer

# Most specific first: isinstance picks the first match.
_STATUS: tuple[tuple[type[CompanionError], int], ...] = (
    (ProtocolError, 400),
    (PolicyRefusal, 403),
    (CommandNotSupported, 501),
    (TargetTimeout, 504),
    (TargetUnavailable, 502),
    (FaceBusy, 503),
    (TargetError, 502),  # the player answered with an error of its own: a bad gateway for us
)


def status_for(exc: CompanionError) -> int:
    """The HTTP status a domain error is answered with (500 for anything unforeseen)."""
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return status
    return 500


def xml_response(code: int, status: str, *, http_status: int | None = None) -> web.Response:
    """A ``<Response code status/>`` answer; the HTTP status equals ``code`` unless given."""
    return web.Response(status=http_status or code, body=response_xml(code, status),
                        content_type=XML_CONTENT_TYPE, charset="utf-8")


def _secrets(request: web.BaseRequest) -> list[str]:
    values = [v for k, v in request.query.items() if k.lower() in SECRET_PARAMS]
    values += [v for k, v in request.headers.items() if k.lower() in SECRET_PARAMS]
    return [v for v in values if len(v) >= 4]


def scrub(message: str, secrets: Collection[str]) -> str:
    """``message`` with every secret value masked (defence in depth: handlers should not leak)."""
    for secret in secrets:
        message = message.replace(secret, "<redacted>")
    return message


def host_allowed(host: str | None, allowed_hosts: Collection[str]) -> bool:
    """True when a Host header names an IP literal, localhost, or a configured name.

    A request without Host passes: browsers always send one, so its absence cannot be a
    DNS-rebinding page, and old HTTP/1.0 clients still work.
    """
    if not host:
        return True
    name = host.strip()
    if name.startswith("["):
        end = name.find("]")
        if end < 0:
            return False
        rest = name[end + 1:]
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return False
        name = name[1:end]
    elif name.count(":") == 1:
        name, port = name.split(":")
        if not port.isdigit():
            return False
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        return True
    name = name.lower().rstrip(".")
    if name == "localhost":
        return True
    return name in {h.lower().rstrip(".") for h in allowed_hosts}


class _Origins:
    """Which Origin gets which Access-Control-Allow-Origin (``*`` allows every origin)."""

    def __init__(self, cors_origins: Collection[str]) -> None:
        self._origins = frozenset(cors_origins)

    def allow(self, origin: str | None) -> str | None:
        if "*" in self._origins:
            return "*"
        if origin is not None and origin in self._origins:
            return origin
        return None


# Who sends what (issue 12 row 6): python-plexapi sends only X-Plex-* headers (plexapi/config.py
# reset_base_headers, through requests, which adds neither Origin nor Referer); Plex Web runs at
# https://app.plex.tv and a browser adds that Origin to its cross-origin fetches (Fetch standard,
# "origin" header). A page elsewhere can still send "simple" requests (GET, text/plain POST) that
# CORS does not stop, only hides the answer of. Browsers add Origin to every POST, but not to a
# no-cors GET or an <img>; those carry the page's origin as Referer (the default referrer policy,
# strict-origin-when-cross-origin), and Sec-Fetch-Site only goes to https URLs (W3C Fetch
# Metadata), which faces are not. A page that also suppresses its Referer (referrerpolicy=
# no-referrer) sends a GET nothing tells from a controller's: Companion has no secret to check.
_CROSS_SITE = frozenset({"cross-site", "same-site"})
# Header names used on every request, as istr (a case-insensitive lookup that need not fold the
# name); the standard ones are aiohttp's own (aiohttp.hdrs).
_SEC_FETCH_SITE, _CLIENT_ID = istr("Sec-Fetch-Site"), istr("X-Plex-Client-Identifier")


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else url


def cross_site_refusal(request: web.BaseRequest, origins: _Origins) -> str | None:
    """Why a request from a web page of an origin outside ``http.cors_origins`` is refused (None: allowed):
    by its Origin, else its Referer, else its Sec-Fetch-Site."""
    headers = request.headers
    origin = headers.get(hdrs.ORIGIN)
    if origin is not None:
        if origins.allow(origin) is not None:
            return None
        return f"Origin {origin[:100]!r} is not allowed (http.cors_origins)"
    referer = headers.get(hdrs.REFERER)
    if referer is not None:
        if origins.allow(_origin_of(referer)) is not None:
            return None
        return f"a web page of {_origin_of(referer)[:100]!r} (Referer) is not an allowed origin (http.cors_origins)"
    if headers.get(_SEC_FETCH_SITE, "").lower() in _CROSS_SITE:
        return "a request another web site's page made (Sec-Fetch-Site) without an allowed Origin"
    return None


def preflight(request: web.BaseRequest, origins: _Origins) -> web.Response:
    """Answer CORS preflight (OPTIONS) as PMP does: 200, methods, echoed headers, max-age."""
    origin = request.headers.get("Origin")
    if origin is not None and origins.allow(origin) is None:
        return xml_response(403, f"Origin {origin[:100]!r} is not allowed")
    response = web.Response(status=200, text="", content_type="text/plain")
    response.headers["Access-Control-Allow-Methods"] = PREFLIGHT_METHODS
    response.headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
    requested = request.headers.get("Access-Control-Request-Headers")
    if requested:
        response.headers["Access-Control-Allow-Headers"] = requested
    response.force_close()
    return response


def guarded(dispatch: FaceHandler, *, face_id: Callable[[], str], allowed_hosts: Collection[str],
            cors_origins: Collection[str]) -> FaceHandler:
    """``dispatch`` behind the face's checks, as one handler (one call per request, not a middleware chain).

    In order: a Host that is not an address of ours gets 421 (DNS-rebinding defence, SECURITY.md 5);
    OPTIONS gets the CORS preflight answer; a request from a web page of an origin outside
    ``http.cors_origins`` gets 403; every other one goes to ``dispatch``, whose CompanionError (and
    aiohttp's own HTTP errors) become statuses with a Response XML body. Every answer, refusals
    included, carries the face id and the CORS headers.
    """
    origins = _Origins(cors_origins)
    any_origin = origins.allow(None) == "*"  # the default: every answer says "*", whatever the Origin
    allowed = frozenset(allowed_hosts)
    verdicts: dict[str | None, bool] = {}  # a controller sends the same Host on every request
    host_refusals = ThrottledLog(log)
    refusals = ThrottledLog(log)  # a flood of bad requests: one line a minute per status, with counts

    async def guard(request: web.BaseRequest) -> web.StreamResponse:
        response: web.StreamResponse
        host = request.headers.get(hdrs.HOST)
        ok = verdicts.get(host)
        if ok is None:
            ok = host_allowed(host, allowed)
            if len(verdicts) < 256:
                verdicts[host] = ok
        if not ok:
            shown = (host or "")[:100]
            host_refusals.log(421, time.monotonic(), logging.WARNING,
                              "refused %s %s from %s: Host %r is not an address of this player "
                              "(possible DNS rebinding; add it to http allowed hosts if it is yours)",
                              request.method, request.path[:100], request.remote, shown)
            response = xml_response(421, f"Misdirected Request: Host {shown!r} is not an address of this player")
        elif request.method == "OPTIONS":
            response = preflight(request, origins)
        elif (why := cross_site_refusal(request, origins)) is not None:
            log.info("refused %s %s from %s: %s", request.method, request.path, request.remote, why)
            response = xml_response(403, f"Forbidden: {why}")
        else:
            try:
                response = await dispatch(request)
            except CompanionError as exc:
                code = status_for(exc)
                message = scrub(str(exc), _secrets(request)) or type(exc).__name__
                refusals.log(code, time.monotonic(), logging.INFO, "%s %s -> %d: %s", request.method,
                             request.path[:100], code, message)
                response = xml_response(code, message)
            except web.HTTPException as exc:
                if exc.status < 400:
                    raise
                response = xml_response(exc.status, exc.reason)
            except Exception:
                log.exception("%s %s: unexpected error", request.method, request.path)
                response = xml_response(500, "Internal error in the bridge (see its log)")
        headers = response.headers
        headers[_CLIENT_ID] = face_id()
        headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = "X-Plex-Client-Identifier"
        allowed_origin = "*" if any_origin else origins.allow(request.headers.get(hdrs.ORIGIN))
        if allowed_origin is not None:
            headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = allowed_origin
            if allowed_origin != "*":
                headers[hdrs.VARY] = "Origin"
        return response

    return guard
