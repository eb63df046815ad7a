"""``companion profiles capture``: fling a target the lab's test stream through each lab endpoint
and record what its TLS stack did, step by step, while following its timeline.

The target is told to play an item from a "server" that is the lab itself: ``protocol=https``,
``address`` = the host name chosen for the run, ``port`` = the lab port. That host is, by default,
``<dashed bridge IP>.<lab hash>.plex.direct`` (the shape of a real fling, so the device sends SNI
and uses its own resolver); when the target never connects to that name the step is retried with
the bridge's IP literal (no SNI then, since TLS clients send none for an address).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiohttp
from aiohttp import web

from companion import __version__
from companion.connections import ConnectionLimits
from companion.errors import CompanionError, ProtocolError, TargetError
from companion.lab import media
from companion.lab.pki import LabPki
from companion.lab.server import ENDPOINTS, Endpoint, Handshake, LabServer, PlainFetch
from companion.limits import connection_budget, nofile_limit
from companion.model import Command, Controller, MediaRequest, Target, TargetKind
from companion.proto import plexdirect
from companion.proto.safexml import parse_xml
from companion.proto.timeline import PlayerState, TimelineEntry
from companion.targets.companion_player import CompanionPlayerTarget, TimelineListener

log = logging.getLogger(__name__)

HostMode = str  # "plex-direct" | "ip" | a DNS name the target resolves to the bridge


@dataclass(frozen=True)
class CaptureTarget:
    """The player to measure: where its Companion endpoint is, and what it calls itself."""

    name: str
    address: str
    port: int
    kind: str = "companion"
    base_profile: str = "default"


@dataclass
class StepResult:
    """One lab endpoint, as the target met it."""

    endpoint: Endpoint
    host: str
    started: datetime
    seconds: float = 0.0
    handshakes: list[Handshake] = field(default_factory=list)
    fetches: list[PlainFetch] = field(default_factory=list)
    states: list[str] = field(default_factory=list)
    fling_error: str = ""

    @property
    def played(self) -> bool:
        """The timeline said playing and the stream was really fetched over a completed handshake (a
        player may report playing before it has fetched anything, or fail after)."""
        return "playing" in self.states and stream_fetched(self.handshakes)

    @property
    def aia_fetched(self) -> bool:
        """Did the device fetch an intermediate through the AIA URL?"""
        return any(f.path.endswith("-intermediate.der") for f in self.fetches)

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict."""
        return {"endpoint": self.endpoint.name, "title": self.endpoint.title, "host": self.host,
                "started": self.started.isoformat(), "seconds": round(self.seconds, 2),
                "handshakes": [h.to_json() for h in self.handshakes],
                "aia_fetches": [{"path": f.path, "user_agent": f.user_agent, "peer": f.peer} for f in self.fetches],
                "timeline": list(self.states), "played": self.played, "fling_error": self.fling_error}


@dataclass
class CaptureResult:
    """Everything one capture run saw."""

    target: CaptureTarget
    player: dict[str, str]
    started: datetime
    bridge_version: str
    lab_hash: str
    steps: list[StepResult] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict."""
        return {"target": {"name": self.target.name, "address": self.target.address, "port": self.target.port},
                "player": dict(self.player), "started": self.started.isoformat(),
                "bridge_version": self.bridge_version, "lab_hash": self.lab_hash,
                "seconds": round(self.seconds, 2), "steps": [s.to_json() for s in self.steps],
                "notes": list(self.notes)}


def stream_fetched(handshakes: list[Handshake]) -> bool:
    """Did a client ask for the test stream over a completed handshake?"""
    return any(h.outcome == "completed" and any(p.startswith("/library/parts/") for p in h.paths)
               for h in handshakes)


def player_facts(body: bytes) -> dict[str, str]:
    """The ``<Player>`` attributes of a Companion ``/resources`` answer (no DTDs, no entities)."""
    try:
        root = parse_xml(body, "player /resources")
    except ProtocolError:
        return {}
    for element in root.iter("Player"):
        return {k: v[:200] for k, v in element.attrib.items()
                if k in ("title", "machineIdentifier", "product", "version", "platform", "platformVersion",
                         "deviceClass", "protocolCapabilities")}
    return {}


def lab_app(machine_id: str, titles: dict[str, str], stream: bytes, duration_ms: int) -> web.Application:
    """The Plex-shaped answers around the test stream (every item plays the same tone)."""
    app = web.Application()

    def xml(text: str) -> web.Response:
        return web.Response(text=text, content_type="text/xml", charset="utf-8")

    async def root(_request: web.Request) -> web.Response:
        return xml(media.root_xml(machine_id, __version__))

    async def metadata(request: web.Request) -> web.Response:
        key = request.match_info["id"]
        if key not in titles:
            return web.Response(status=404)
        return xml(media.metadata_xml(machine_id, key, titles[key], len(stream), duration_ms))

    async def queue(request: web.Request) -> web.Response:
        key = request.match_info["id"]
        if key not in titles:
            return web.Response(status=404)
        return xml(media.play_queue_xml(machine_id, key, key, titles[key], len(stream), duration_ms))

    async def decision(_request: web.Request) -> web.Response:
        return xml(media.decision_xml())

    async def part(request: web.Request) -> web.StreamResponse:
        if request.match_info["id"] not in titles:
            return web.Response(status=404)
        response = web.Response(body=stream, content_type="audio/wav")
        return response

    async def anything(_request: web.Request) -> web.Response:
        return xml(media.empty_xml())

    app.router.add_get("/", root)
    app.router.add_get("/identity", root)
    app.router.add_get("/library/metadata/{id}", metadata)
    app.router.add_get("/playQueues/{id}", queue)
    app.router.add_get("/video/:/transcode/universal/decision", decision)
    app.router.add_get("/library/parts/{id}/{file}", part)
    app.router.add_route("*", "/{tail:.*}", anything)
    return app


class Capture:
    """One capture run against one Companion player (construct, then ``await run()``)."""

    def __init__(self, target: CaptureTarget, *, bridge_address: str, lab_bind: str, lab_port: int = 0,
                 listener_bind: str = "0.0.0.0", host: HostMode = "plex-direct", pki: LabPki | None = None,
                 endpoints: tuple[Endpoint, ...] = ENDPOINTS, step_timeout: float = 30.0, quiet: float = 3.0,
                 command_timeout: float = 5.0, progress: Callable[[str], None] | None = None) -> None:
        if target.kind != "companion":
            raise CompanionError(f"{target.name} is a {target.kind} target; capture drives Companion players "
                                 "(Plex apps that take a playMedia over HTTP)")
        self.target = target
        self.pki = pki or LabPki()
        self.bridge_address = bridge_address
        self.host_mode = host
        self.endpoints = endpoints
        self.step_timeout = step_timeout
        self.quiet = quiet
        self.command_timeout = command_timeout
        self._progress = progress or (lambda _line: None)
        self._lab_bind, self._lab_port, self._listener_bind = lab_bind, lab_port, listener_bind
        self.machine_id = f"companion-lab-{self.pki.hash[:12]}"
        self._titles = {str(100 + i): f"companion-bridge capture: {e.title}" for i, e in enumerate(endpoints)}
        self._states: list[str] = []
        self._item: tuple[str, str] = ("", "")  # (key, ratingKey) of the item the current step flung
        self._wake = asyncio.Event()
        self._last_change = time.monotonic()

    # -- names ---------------------------------------------------------------------------------

    def host_for(self, mode: HostMode) -> str:
        """The host the target is told for a mode: plex.direct-shaped name, IP literal, or the name given."""
        if mode == "ip":
            return self.bridge_address
        if mode == "plex-direct":
            return plexdirect.build_name(self.bridge_address, self.pki.hash)
        return mode

    @property
    def leaf_names(self) -> tuple[str, ...]:
        """The names the lab's leaf certificates are issued for (the host mode's name and the bridge's address)."""
        names = [self.host_for(self.host_mode), self.bridge_address]
        return tuple(dict.fromkeys(names))

    # -- the run -------------------------------------------------------------------------------

    async def run(self) -> CaptureResult:
        """Run every endpoint in turn; raises TargetError when the player cannot be reached at all."""
        started = time.monotonic()
        result = CaptureResult(target=self.target, player={}, started=datetime.now(UTC),
                               bridge_version=__version__, lab_hash=self.pki.hash)
        stream = media.make_tone(8.0)
        app = lab_app(self.machine_id, self._titles, stream, 8000)
        lab = LabServer(self.pki, app, bind=self._lab_bind, port=self._lab_port)
        lab.on_change = self._changed
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=self.command_timeout))
        # Gated, as the daemon's: bounded, and a push accepted just as the capture stops is reset
        # rather than left open (an ungated aiohttp site never closes one made after its shutdown).
        limits = ConnectionLimits(connection_budget(nofile_limit(), per_listener=64, per_source=64))
        listener = TimelineListener(bind=self._listener_bind, gate=limits.gate("capture timeline listener"))
        adapter: CompanionPlayerTarget | None = None
        try:
            try:
                await lab.start()
            except OSError as exc:
                raise CompanionError(f"cannot listen on the lab port {self._lab_port} ({exc.strerror or exc}); "
                                     "is another capture running? (lab.port, or --port 0 for any free port)"
                                     ) from exc
            await listener.start()
            result.player = await self._resources(session)
            if result.player.get("title") and self.target.name == f"{self.target.address}:{self.target.port}":
                self.target = dataclasses.replace(self.target, name=result.player["title"])
                result.target = self.target
            adapter = CompanionPlayerTarget(
                Target(id="capture", kind=TargetKind.COMPANION, name=self.target.name, address=self.target.address,
                       port=self.target.port, source="config", ident="config:capture"),
                session=session, bridge_id=f"companion-capture-{self.pki.hash[:8]}", bridge_name="companion capture",
                listener=listener, on_state=self._on_state, on_available=lambda _up: None,
                command_timeout=self.command_timeout)
            await adapter.start()
            host = self.host_for(self.host_mode)
            self._progress(f"capturing {self.target.name} ({self.target.address}:{self.target.port}) through the "
                           f"lab at {host}:{lab.port}; {len(self.endpoints)} step(s)")
            for index, endpoint in enumerate(self.endpoints):
                step = await self._step(lab, adapter, index, endpoint, host)
                if not step.handshakes and host != self.bridge_address:
                    note = (f"the target never connected to {host} (it could not resolve or reach that name); "
                            f"the capture went on with the bridge's address {self.bridge_address}")
                    self._progress(f"      {note}")
                    result.notes.append(note)
                    host = self.bridge_address
                    step = await self._step(lab, adapter, index, endpoint, host)
                result.steps.append(step)
        finally:
            if adapter is not None:
                await adapter.stop()
            await listener.stop()
            await lab.stop()
            await session.close()
        result.seconds = time.monotonic() - started
        return result

    async def _resources(self, session: aiohttp.ClientSession) -> dict[str, str]:
        host = f"[{self.target.address}]" if ":" in self.target.address else self.target.address
        url = f"http://{host}:{self.target.port}/resources"
        try:
            async with asyncio.timeout(self.command_timeout):
                async with session.get(url, headers={"X-Plex-Client-Identifier": "companion-capture"}) as resp:
                    body = await resp.content.read(64 * 1024)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise TargetError(f"{self.target.name} at {self.target.address}:{self.target.port} does not answer "
                              f"/resources: {type(exc).__name__}") from exc
        return player_facts(body)

    def _changed(self) -> None:
        self._last_change = time.monotonic()
        self._wake.set()

    def _on_state(self, state: PlayerState) -> None:
        entry = state.active or next((e for e in state.entries.values() if e.key or e.rating_key), None)
        name = entry.state if entry is not None else "stopped"
        if entry is not None and _names_another_item(entry, *self._item):
            # An earlier step's item, reported after the next fling (a player may send a state
            # more than once, from a pool of senders, in any order). It says nothing about this
            # step's item: counted, it would end the step before its item started, or call it
            # played on another item's report.
            log.debug("timeline report about %s (%s) ignored in the step for %s",
                      entry.key or entry.rating_key, name, self._item[0])
            return
        if not self._states or self._states[-1] != name:
            self._states.append(name)
            self._changed()

    async def _step(self, lab: LabServer, adapter: CompanionPlayerTarget, index: int, endpoint: Endpoint,
                    host: str) -> StepResult:
        names = tuple(dict.fromkeys([host, *self.leaf_names]))
        lab.serve(endpoint, host, names)
        step = StepResult(endpoint=endpoint, host=host, started=datetime.now(UTC))
        self._progress(f"[{index + 1}/{len(self.endpoints)}] {endpoint.title} ...")
        first_shake = lab.handshakes[-1].id if lab.handshakes else 0
        first_fetch = len(lab.fetches)
        key = str(100 + index)
        self._item = (f"/library/metadata/{key}", key)
        self._states = []
        began = time.monotonic()
        request = MediaRequest(key=f"/library/metadata/{key}", media_type="video",
                               container_key=f"/playQueues/{key}?own=1", machine_identifier=self.machine_id,
                               protocol="https", address=host, port=lab.port,
                               token=f"lab-{secrets.token_hex(8)}")
        command = Command(group="playback", name="playMedia", params={},
                          controller=Controller(client_id="companion-capture", name="companion capture",
                                                address="127.0.0.1"))
        try:
            await adapter.play_media(request, command)
        except CompanionError as exc:
            # Some players fetch the item before they answer the playMedia, and drop the request
            # when that fails: what the lab saw still counts.
            step.fling_error = str(exc)
        if not step.fling_error or any(h.id > first_shake for h in lab.handshakes):
            await self._settle(lab, first_shake, began)
        step.handshakes = [h for h in lab.handshakes if h.id > first_shake]
        step.fetches = list(lab.fetches)[first_fetch:]
        step.states = list(self._states)
        if any(s in ("playing", "paused", "buffering") for s in self._states):
            await self._stop(adapter)
        step.seconds = time.monotonic() - began
        self._progress(f"      {summarize(step)} ({step.seconds:.1f} s)")
        return step

    async def _settle(self, lab: LabServer, first_shake: int, began: float) -> None:
        """Wait until the step has its answer: playing; or every handshake ended and nothing new
        happened for ``quiet`` seconds (the client is not retrying); or the step timeout."""
        self._last_change = time.monotonic()
        while True:
            now = time.monotonic()
            shakes = [h for h in lab.handshakes if h.id > first_shake]
            if "playing" in self._states and stream_fetched(shakes):
                return
            remaining = self.step_timeout - (now - began)
            if remaining <= 0:
                return
            settled = bool(shakes) and all(h.done for h in shakes) and (
                not any(h.outcome == "completed" for h in shakes) or self._states[-1:] == ["stopped"])
            if settled and now - self._last_change >= self.quiet:
                return
            wait = remaining if not settled else min(remaining, self.quiet - (now - self._last_change))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wait, 0.05)):
                    await self._wake.wait()

    async def _stop(self, adapter: CompanionPlayerTarget) -> None:
        stop = Command(group="playback", name="stop", params={},
                       controller=Controller(client_id="companion-capture", name="companion capture",
                                             address="127.0.0.1"))
        with contextlib.suppress(CompanionError):
            await adapter.send(stop)
        # A player may take a while to wind down (end its stream, report stopped, finish the
        # requests it had under way for this item); the next fling, and the next chain, must not
        # land in the middle of that: a request made then would meet the next step's chain. So:
        # stopped, then ``quiet`` seconds without a connection or a report.
        deadline = time.monotonic() + max(self.command_timeout, 15.0)
        while (now := time.monotonic()) < deadline:
            wait = deadline - now
            if self._states[-1:] == ["stopped"]:
                wait = min(wait, self.quiet - (now - self._last_change))
                if wait <= 0:
                    return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()


def _names_another_item(entry: TimelineEntry, key: str, rating_key: str) -> bool:
    """Does a timeline entry name an item other than ``key``/``rating_key``? (One naming none does not.)"""
    if not entry.key and not entry.rating_key:
        return False
    return entry.key != key and entry.rating_key != rating_key


def summarize(step: StepResult) -> str:
    """One line per step: each handshake's client and ending, AIA fetches, and whether it played."""
    parts = [f"the playMedia failed ({step.fling_error})"] if step.fling_error else []
    for shake in step.handshakes:
        who = shake.user_agent or (f"TLS stack {shake.hello.fingerprint}" if shake.hello else "a client")
        if shake.outcome == "completed":
            how = f"completed ({shake.version}, {shake.cipher})"
        elif shake.outcome == "alert":
            how = f"rejected our chain with alert {shake.alert}"
        elif shake.outcome == "refused":
            how = f"no common ground ({shake.server_reason})"
        else:
            how = shake.outcome
        parts.append(f"{who}: {how}")
    if not step.handshakes:
        parts.append("no TLS connection")
    if step.aia_fetched:
        parts.append("fetched the intermediate from the AIA URL")
    if step.states:
        parts.append("timeline " + " > ".join(step.states))
    parts.append("played" if step.played else "did not play")
    return "; ".join(parts)
