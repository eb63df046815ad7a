"""The admin HTTP server of one bridge: status page, JSON API, ``POST /api/fling`` and ``/metrics``.

Owns its aiohttp runner and site, and the background task that runs the cheap doctor checks at
most every ``doctor_interval`` seconds (the page shows the latest findings and never waits on the
network). Every route passes the Host allow-list (DNS rebinding defence, SECURITY.md 5); every
state-changing route needs ``Authorization: Bearer <admin token>``. There is no CORS and no access
log, requests are size-bounded, and no token (server, admin, playMedia) is ever rendered.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import socket
import time
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from companion import __version__
from companion.admin import api
from companion.admin.page import render_page
from companion.audit import record_to_json, scrub
from companion.bridge_view import BridgeView
from companion.connections import ConnectionGate, start_site
from companion.doctor.findings import NO_SERVER_FINDING, Finding, findings_to_json, stamped
from companion.doctor.lan import mdns_from_bridge
from companion.doctor.run import run_doctor
from companion.doctor.visible import visibility_findings
from companion.errors import (
    CommandNotSupported,
    CompanionError,
    PolicyRefusal,
    ProtocolError,
    StateError,
    TargetError,
    TargetTimeout,
)
from companion.faces.app import IDLE_TIMEOUT, QuietServerLog
from companion.faces.middleware import host_allowed
from companion.limits import ThrottledLog
from companion.model import Server, Target
from companion.parts import StartStopContext

log = logging.getLogger(__name__)

MAX_BODY = 16 * 1024
MAX_HEADER = 8190
MAX_LIMIT = 1000
DEFAULT_LIMIT = 50
DOCTOR_INTERVAL = 60.0
# How often the doctor task looks whether what its checks depend on changed (a cheap comparison);
# a change re-runs the checks at once instead of at the next interval.
DOCTOR_WATCH = 1.0
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Most specific first: isinstance picks the first match.
_STATUS: tuple[tuple[type[CompanionError], int], ...] = (
    (PolicyRefusal, 403),
    (CommandNotSupported, 501),
    (TargetTimeout, 504),
    (TargetError, 502),
    (StateError, 500),
    (ProtocolError, 400),
    (CompanionError, 400),
)


class ApiError(CompanionError):
    """A request the admin API cannot act on; carries its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(data, ensure_ascii=False, sort_keys=True),
                        content_type="application/json", charset="utf-8")


class AdminServer(StartStopContext):
    """The admin surface of one bridge (default port 32480)."""

    def __init__(self, bridge: BridgeView, *, bind: str, port: int, token: str, allowed_hosts: Collection[str] = (),
                 doctor_interval: float = DOCTOR_INTERVAL, gate: ConnectionGate | None = None) -> None:
        self._bridge = bridge
        self._gate = gate
        self._refusals = ThrottledLog(log)  # refused requests: one line a minute per kind, with counts
        self._bind = bind
        self._port = port
        self._token = token
        self._doctor_interval = doctor_interval
        # The machine's own names are allowed as SECURITY.md 5 asks (people type raspberrypi.local);
        # gethostname() reads the kernel's name, no DNS.
        own = socket.gethostname()
        self._allowed = frozenset({*allowed_hosts, own, f"{own}.local"} if own else set(allowed_hosts))
        self._runner: web.AppRunner | None = None
        self._bound_port: int | None = None
        self._started_at = time.monotonic()
        self._findings: tuple[Finding, ...] = ()
        self._findings_at: datetime | None = None
        self._doctor_lock = asyncio.Lock()
        self._doctor_task: asyncio.Task[None] | None = None
        self._app = web.Application(client_max_size=MAX_BODY,
                                    middlewares=[self._host_middleware(), self._error_middleware()])
        r = self._app.router
        r.add_get("/", self._page)
        r.add_get("/api/targets", self._targets)
        r.add_get("/api/servers", self._servers)
        r.add_get("/api/flings", self._flings)
        r.add_get("/api/profiles", self._profiles)
        r.add_get("/api/health", self._health)
        r.add_get("/api/doctor", self._doctor_get)
        r.add_post("/api/doctor", self._doctor_post)
        r.add_post("/api/fling", self._fling)
        r.add_get("/metrics", self._metrics)

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound TCP port once started (useful with port 0), else the configured one."""
        return self._bound_port if self._bound_port is not None else self._port

    @property
    def findings(self) -> tuple[Finding, ...]:
        """The findings as of now: the last run's, with the ones that derive from the bridge's live
        state (mDNS sightings, servers known, where each face is visible) recomputed, so they can
        never contradict the rest of the page."""
        if self._findings_at is None:
            return ()  # not run yet (the page says so)
        bridge = self._bridge
        now = datetime.now(UTC)
        live_mdns = stamped(mdns_from_bridge(bridge.config, bridge), now)
        servers = bridge.registry.servers()
        out: list[Finding] = []
        for f in self._findings:
            if f.check == "mdns":
                out += live_mdns
                live_mdns = []
            elif f.check == NO_SERVER_FINDING.check and f.detail == NO_SERVER_FINDING.detail and servers:
                out.append(Finding("chain", "WARN", f"{len(servers)} server(s) became known after the last check; "
                                   "their certificate chains are being checked now", "", now))
            else:
                out.append(f)
        out += live_mdns
        faces = [(view.face_name, api.target_json(view)["visible"]) for view in api.target_views(bridge, now)]
        out += stamped(visibility_findings(faces), now)
        return tuple(out)

    def dependencies(self) -> tuple[object, ...]:
        """What the checks depend on, cheaply: targets and servers known, probe outcomes, faces."""
        bridge = self._bridge
        servers = sorted((s.id, s.address, s.port, s.source, s.host) for s in bridge.registry.servers())
        probes = tuple(bridge.probe.status(sid, address, port).checked_at for sid, address, port, _, _ in servers)
        targets = sorted((t.id, t.kind.value, t.source, t.address) for t in bridge.registry.targets())
        return (tuple(servers), probes, tuple(targets), tuple(sorted(s.face.port for s in bridge.faces.values())),
                bridge.mdns is not None)

    async def start(self) -> None:
        """Listen on ``bind:port`` (OSError when the port cannot be bound) and start the doctor task."""
        if self._runner is not None:
            return
        runner = web.AppRunner(self._app, handle_signals=False, access_log=None, keepalive_timeout=IDLE_TIMEOUT,
                               logger=QuietServerLog(log.getChild("http"), {}),
                               shutdown_timeout=2.0, max_line_size=MAX_HEADER, max_field_size=MAX_HEADER)
        self._bound_port = await start_site(runner, self._bind, self._port, gate=self._gate, what="the admin page")
        self._runner = runner
        self._started_at = time.monotonic()
        if self._doctor_interval > 0:
            self._doctor_task = asyncio.get_running_loop().create_task(self._doctor_loop(), name="admin-doctor")
        log.info("admin page on http://%s:%d/", self._bind, self._bound_port)

    async def stop(self) -> None:
        """Cancel the doctor task and close the socket (idempotent)."""
        task, self._doctor_task = self._doctor_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # -- doctor -------------------------------------------------------------------------------

    async def run_doctor(self) -> tuple[Finding, ...]:
        """Run the checks now (one run at a time) and keep the findings for the page."""
        async with self._doctor_lock:
            findings = await run_doctor(self._bridge.config, bridge=self._bridge)
            self._findings = tuple(findings)
            self._findings_at = datetime.now(UTC)
            for f in findings:
                if f.status == "FAIL":
                    log.warning("check %s failed: %s (fix: %s)", f.check, f.detail, f.fix)
        return self.findings

    async def _doctor_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            seen = self.dependencies()
            try:
                await self.run_doctor()
            except CompanionError as exc:
                log.warning("the background checks could not run: %s", exc)
            except Exception:
                log.exception("the background checks failed")
            # Until the interval is up, or sooner when what the checks depend on has changed
            # (a target or server found, a probe measured): a re-run, not a stale verdict.
            deadline = loop.time() + self._doctor_interval
            while loop.time() < deadline:
                await asyncio.sleep(min(DOCTOR_WATCH, max(0.0, deadline - loop.time())))
                if self.dependencies() != seen:
                    log.debug("what the checks depend on changed; checking again")
                    break

    # -- middleware ---------------------------------------------------------------------------

    def _host_middleware(self) -> Middleware:
        @web.middleware
        async def host_check(request: web.Request, handler: Handler) -> web.StreamResponse:
            host = request.headers.get("Host")
            if host_allowed(host, self._allowed):
                return await handler(request)
            shown = (host or "")[:100]
            self._refusals.log(421, time.monotonic(), logging.WARNING,
                               "admin: refused %s %s from %s: Host %r is not an address of this bridge (possible "
                               "DNS rebinding; add it to http.allowed_hosts if it is yours)",
                               request.method, request.path[:100], request.remote, shown)
            return _json({"error": f"Misdirected Request: Host {shown!r} is not an address of this bridge"}, 421)

        return host_check

    def _error_middleware(self) -> Middleware:
        @web.middleware
        async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
            try:
                return await handler(request)
            except ApiError as exc:
                return _json({"error": self._clean(str(exc))}, exc.status)
            except CompanionError as exc:
                status = next(code for kind, code in _STATUS if isinstance(exc, kind))
                message = self._clean(str(exc)) or type(exc).__name__
                self._refusals.log(status, time.monotonic(), logging.INFO, "admin: %s %s -> %d: %s",
                                   request.method, request.path[:100], status, message)
                return _json({"error": message}, status)
            except web.HTTPException as exc:
                if exc.status < 400:
                    raise
                return _json({"error": exc.reason}, exc.status)
            except Exception:
                log.exception("admin: %s %s: unexpected error", request.method, request.path)
                return _json({"error": "internal error in the bridge (see its log)"}, 500)

        return errors

    def _clean(self, message: str) -> str:
        """Defence in depth: no token value leaves in an error message."""
        message = scrub(message)
        secrets = [self._token, *(s.token for s in self._bridge.registry.servers() if s.token),
                   *(s.token for s in self._bridge.config.servers if s.token)]
        for secret in secrets:
            if secret and len(secret) >= 4:
                message = message.replace(secret, "<redacted>")
        return message

    def _authorize(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._token.encode())
        if not ok:
            self._refusals.log(401, time.monotonic(), logging.WARNING,
                               "admin: refused %s %s from %s: %s Authorization header", request.method,
                               request.path[:100], request.remote, "wrong" if header else "no")
            raise ApiError(401, "this action needs the admin token: send 'Authorization: Bearer <token>' "
                                "(the token is in the state directory, file admin-token)")

    # -- routes -------------------------------------------------------------------------------

    async def _page(self, _request: web.Request) -> web.Response:
        now = datetime.now(UTC)
        b = self._bridge
        findings = self.findings
        body = render_page(name=b.config.name, version=__version__, health=self._health_data(findings),
                           targets=api.target_views(b, now), servers=api.servers_json(b),
                           flings=b.flings.recent if b.flings is not None else (), findings=findings,
                           findings_at=self._findings_at, now=now)
        response = web.Response(text=body, content_type="text/html", charset="utf-8")
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
        return response

    async def _targets(self, _request: web.Request) -> web.Response:
        return _json([api.target_json(v) for v in api.target_views(self._bridge, datetime.now(UTC))])

    async def _servers(self, _request: web.Request) -> web.Response:
        return _json(api.servers_json(self._bridge))

    async def _flings(self, request: web.Request) -> web.Response:
        insecure = request.query.get("insecure", "0").lower() in ("1", "true", "yes")
        text = request.query.get("limit", str(DEFAULT_LIMIT))
        if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
            raise ApiError(400, f"limit: expected a whole number from 1 to {MAX_LIMIT}, got {text[:20]!r}")
        records = await asyncio.to_thread(self._bridge.audit.recent, int(text), insecure_only=insecure)
        return _json([record_to_json(r) for r in records])

    async def _profiles(self, _request: web.Request) -> web.Response:
        return _json(api.profiles_json(self._bridge))

    def _health_data(self, findings: tuple[Finding, ...] | None = None) -> dict[str, Any]:
        return api.health_json(self._bridge, uptime=time.monotonic() - self._started_at,
                               findings=self.findings if findings is None else findings,
                               findings_at=self._findings_at)

    async def _health(self, _request: web.Request) -> web.Response:
        return _json(self._health_data())

    async def _doctor_get(self, _request: web.Request) -> web.Response:
        at = self._findings_at.isoformat() if self._findings_at else None
        return _json({"checked_at": at, "findings": findings_to_json(self.findings)})

    async def _doctor_post(self, request: web.Request) -> web.Response:
        self._authorize(request)
        findings = await self.run_doctor()
        return _json({"checked_at": self._findings_at.isoformat() if self._findings_at else None,
                      "findings": findings_to_json(findings)})

    async def _metrics(self, _request: web.Request) -> web.Response:
        metrics = self._bridge.metrics
        faces = [slot.face for slot in self._bridge.faces.values()]
        metrics.long_polls.set(sum(f.long_poll_count for f in faces))
        metrics.subscribers.set(sum(f.subscriber_count for f in faces))
        return web.Response(body=metrics.render(), headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def _fling(self, request: web.Request) -> web.Response:
        self._authorize(request)
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, "the body must be a JSON object: {\"target\": ..., \"server\": ..., \"key\": "
                                "\"/library/metadata/1\", \"offset\": 0}") from exc
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object")
        target = self._find_target(_text(body, "target", required=True))
        server = self._find_server(_text(body, "server", required=False))
        key = _text(body, "key", required=True)
        if not key.startswith("/") or len(key) > 1024:
            raise ApiError(400, "key: expected a library path such as /library/metadata/1 (at most 1024 characters)")
        offset = body.get("offset", 0)
        if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= 86_400_000 * 7:
            raise ApiError(400, "offset: expected whole milliseconds from 0")
        decision = await self._bridge.fling_api(target_id=target.id, server_id=server.id, key=key, offset_ms=offset)
        return _json({"target": {"id": target.id, "name": target.name}, "server": {"id": server.id},
                      "key": scrub(key), "offset": offset, "mode": decision.mode, "secure": decision.secure,
                      "flag": api.fling_flag(decision), "token_exposed": decision.token_exposed,
                      "reasons": [{"code": r.code, "text": scrub(r.text)} for r in decision.reasons]})

    def _find_target(self, name_or_id: str) -> Target:
        target = self._bridge.registry.find_target(name_or_id)
        if target is None or target.id not in self._bridge.faces:
            known = ", ".join(sorted(repr(s.target.name) for s in self._bridge.faces.values())) or "none"
            raise ApiError(404, f"target: no bridged player is called {name_or_id[:100]!r} (known: {known})")
        return target

    def _find_server(self, wanted: str) -> Server:
        servers = self._bridge.registry.servers()
        if not wanted:
            if len(servers) == 1:
                return servers[0]
            raise ApiError(400, f"server: required when the bridge knows {len(servers)} servers")
        for server in servers:
            if wanted in (server.id, server.base_url, server.base_url + "/") or wanted == server.name:
                return server
        from urllib.parse import urlsplit

        parts = urlsplit(wanted)
        with contextlib.suppress(ValueError):
            if parts.hostname is not None:
                found = self._bridge.registry.resolve_server("", parts.hostname, parts.port or 32400)
                if found is not None:
                    return found
        raise ApiError(404, f"server: no known Plex server matches {wanted[:200]!r}; give a server id from "
                            "/api/servers or its URL")


def _text(body: dict[str, Any], key: str, *, required: bool) -> str:
    value = body.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, f"{key}: expected a non-empty string")
    return value.strip()


__all__ = ["AdminServer", "ApiError"]
