"""The bridge's commands and flings: a controller's command carried to its target; a fling decided,
rewritten (a play queue for the Cast receiver, the relay as the server), carried, and followed to its
outcome, with the one automatic re-fling through the relay.

A mixin of :class:`companion.bridge.Bridge`, which owns every attribute declared here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import ssl
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import aiohttp

from companion.bridge_faces import local_address_towards
from companion.config import Config
from companion.errors import CompanionError, PolicyRefusal, ProtocolError, TargetError, TargetUnavailable
from companion.faceslot import FaceSlot
from companion.flinging import Fling, FlingService, Prepared
from companion.metrics import Metrics
from companion.model import Command, Controller, MediaRequest, Target, TargetKind
from companion.outcomes import OutcomeWatch
from companion.playqueue import create_play_queue
from companion.proto import plexdirect
from companion.registry import Registry
from companion.relay.scope import GrantScope
from companion.relay.server import Relay
from companion.security.decide import Decision, Reason
from companion.security.probe import ProbeCache

log = logging.getLogger(__name__)


class FlingCarrier:
    """Commands and flings of one bridge (a mixin of Bridge)."""

    config: Config
    registry: Registry
    metrics: Metrics
    probe: ProbeCache
    faces: dict[str, FaceSlot]
    flings: FlingService | None
    relay: Relay | None
    _session: aiohttp.ClientSession | None
    _server_ssl: ssl.SSLContext | None
    _tasks: set[asyncio.Task[None]]

    if TYPE_CHECKING:  # defined by the Bridge
        def _spawn(self, coro: Awaitable[None], name: str) -> None: ...

    async def handle_command(self, target_id: str, command: Command) -> Decision | None:
        """Carry one command to a target; for a fling, returns the decision it went out with."""
        slot = self.faces.get(target_id)
        if slot is None:
            raise TargetUnavailable("this player is no longer bridged")
        slot.commands += 1
        started = time.monotonic()
        outcome = "ok"
        try:
            if command.group in ("playback", "mirror") and command.name in ("playMedia", "details"):
                return await self.fling(slot, command)
            await slot.adapter.send(command)
            return None
        except CompanionError as exc:
            outcome = "error"
            slot.errors += 1
            slot.last_error = str(exc)
            raise
        finally:
            self.metrics.command_seconds.labels(kind=slot.target.kind.value, outcome=outcome).observe(
                time.monotonic() - started)

    async def fling(self, slot: FaceSlot, command: Command) -> Decision:
        """Decide (secure, relay, insecure or refused), rewrite the server block, carry it, flag it."""
        assert self.flings is not None
        prepared = await self.flings.prepare(slot.target, command)  # PolicyRefusal is flagged already
        plain_command_leg = slot.target.kind is TargetKind.COMPANION  # Companion commands are plain HTTP
        request = prepared.request
        watch = OutcomeWatch(request.key)  # before the command: the target may answer at once
        for older in slot.watches:
            older.supersede()
        slot.watches.append(watch)
        try:
            if slot.target.kind is TargetKind.CHROMECAST and command.name == "playMedia":
                from companion.targets.chromecast.status import play_queue_id

                if not play_queue_id(request.container_key):
                    request = await self._with_play_queue(prepared)
                    prepared = dataclasses.replace(prepared, request=request)
            if prepared.decision.mode == "relay":
                request = self._relay_request(slot.target, prepared)
            await slot.adapter.play_media(request, command)
        except CompanionError as exc:
            slot.watches.remove(watch)
            await self.flings.finish(prepared.fling, f"error: {exc}", command_plain_http=plain_command_leg,
                                     server_address=prepared.server.address, command=command)
            raise
        fling = dataclasses.replace(prepared.fling, playback="watching")
        record_id = await self.flings.finish(fling, "ok", command_plain_http=plain_command_leg,
                                             server_address=prepared.server.address, command=command)
        self._spawn(self._follow_outcome(slot, prepared, command, watch, fling, record_id),
                    f"fling-outcome:{slot.target.id}")
        return prepared.decision

    async def _with_play_queue(self, prepared: Prepared) -> MediaRequest:
        """The request with a play queue made on its server (the Plex receiver plays play queues)."""
        assert self._session is not None
        assert self._server_ssl is not None
        request, server = prepared.request, prepared.server
        token = request.token  # the fling's own token only: a configured token never serves a LAN fling
        if not token:
            raise TargetError("the Chromecast needs a play queue and this fling carries no token for the server "
                              "to make one with")
        queue = await create_play_queue(
            self._session, server, machine_identifier=request.machine_identifier or server.id, key=request.key,
            media_type=request.media_type, token=token, ssl_context=self._server_ssl,
            timeout=self.config.timeouts.command)
        log.info("made play queue %s on %s for a fling that came without one", queue.play_queue_id,
                 server.name or server.address)
        extra = dict(request.extra)
        if queue.selected_item_id:
            extra["playQueueItemID"] = queue.selected_item_id
        return dataclasses.replace(request, container_key=queue.container_key, extra=extra)

    async def _follow_outcome(self, slot: FaceSlot, prepared: Prepared, command: Command, watch: OutcomeWatch,
                              fling: Fling, record_id: int | None) -> None:
        """Record what the target did with a fling; under ``preferred``, a direct-secure fling that
        failed there is re-flung once through the relay, and the failure counts against the profile."""
        assert self.flings is not None
        try:
            outcome = await watch.wait(self.config.timeouts.outcome)
        finally:
            with contextlib.suppress(ValueError):
                slot.watches.remove(watch)
        await self.flings.record_outcome(fling, record_id, outcome)
        if (outcome.result == "failed" and prepared.decision.mode == "direct-secure" and fling.refling_of is None
                and self.flings.policy_for(slot.target) == "preferred" and self.flings.relay_available()
                and self.relay is not None and prepared.profile.media_http and slot.target.id in self.faces):
            await self._refling_via_relay(slot, prepared, command, record_id, outcome.reason)

    async def _refling_via_relay(self, slot: FaceSlot, prepared: Prepared, command: Command,
                                 failed_id: int | None, why: str) -> None:
        """The one automatic retry: the same media through the relay, flagged in audit, log and metrics.

        It is the controller's fling carried on (no owner of its own), so the relay fetches with the
        controller's token, as the original fling's stream would have.
        """
        assert self.flings is not None
        failed = Reason("direct-secure-failed", f"the direct-secure fling failed on the device ({why}); "
                                                "re-flung once through the relay")
        relayed = Reason("relay-last-hop-plaintext",
                         "the bridge fetches the stream over verified https and relays it to the device over "
                         "plain http: the token stays with the bridge, but the media crosses the LAN unencrypted")
        decision = Decision("relay", False, False, (failed, relayed), "http", "", 0)
        fling = dataclasses.replace(prepared.fling, time=datetime.now(UTC), decision=decision, relied_on=(),
                                    refling_of=failed_id, playback="watching")
        retry = dataclasses.replace(prepared, decision=decision, fling=fling)
        plain_command_leg = slot.target.kind is TargetKind.COMPANION
        try:
            request = self._relay_request(slot.target, retry)
        except PolicyRefusal as exc:
            log.warning("cannot re-fling to %s through the relay: %s", slot.target.name, exc)
            return
        log.warning("fling to %s failed direct-secure (%s); re-flinging it once through the relay",
                    slot.target.name, why)
        self.metrics.relay_reflings.inc()
        watch = OutcomeWatch(request.key)
        slot.watches.append(watch)
        try:
            await slot.adapter.play_media(request, command)
        except CompanionError as exc:
            slot.watches.remove(watch)
            await self.flings.finish(dataclasses.replace(fling, playback=""), f"error: {exc}",
                                     command_plain_http=plain_command_leg, server_address=prepared.server.address,
                                     command=command)
            return
        record_id = await self.flings.finish(fling, "ok", command_plain_http=plain_command_leg,
                                             server_address=prepared.server.address, command=command)
        await self._follow_outcome(slot, retry, command, watch, fling, record_id)

    def _relay_request(self, target: Target, prepared: Prepared) -> MediaRequest:
        """Point the target at the relay: the capability travels as its token, the real one stays here.

        The grant fetches with the token the fling itself carried (the controller's, or the
        configured one for the owner's own admin-API fling) and covers only the flung item.
        """
        assert self.relay is not None
        server = prepared.server
        token = prepared.request.token
        if not token:  # flinging.prepare refuses (and records) such a fling before it gets here
            raise PolicyRefusal("the relay needs the token the controller sends with its fling")
        facts = self.probe.peek(server.id)
        server_hash = server.host.split(".")[0] if server.host else (facts.plex_direct_hash if facts else None)
        try:
            upstream_host = plexdirect.build_name(server.address, server_hash) if server_hash else server.address
        except ProtocolError:
            upstream_host = server.address
        grant = self.relay.grant(target_address=target.address, server_id=server.id, upstream_host=upstream_host,
                                 upstream_address=server.address, upstream_port=server.port, token=token,
                                 scope=GrantScope.for_fling(prepared.request.key, prepared.request.container_key))
        bridge_ip = local_address_towards(target.address)
        log.info("fling to %s goes through the relay (%s) at %s:%d", target.name, grant.label, bridge_ip,
                 self.relay.port)
        # Both Companion players and the Plex Cast receiver take a server block; the capability rides
        # as the token, so the relay base works without a path prefix.
        return dataclasses.replace(prepared.request, protocol="http", address=bridge_ip, port=self.relay.port,
                                   token=grant.capability)

    async def fling_api(self, *, target_id: str, server_id: str, key: str, offset_ms: int = 0) -> Decision:
        """A fling asked for by a script through the admin API, with the configured server token."""
        target = self.registry.find_target(target_id)
        if target is None or target.id not in self.faces:
            raise TargetUnavailable(f"no bridged target {target_id!r}")
        server = self.registry.server(server_id) or next(
            (s for s in self.registry.servers() if server_id in (s.base_url, s.name)), None)
        if server is None:
            raise PolicyRefusal(f"{server_id!r} is not a server this bridge knows")
        params = {"key": key, "offset": str(offset_ms), "type": "video", "machineIdentifier": server.id,
                  "protocol": server.scheme, "address": server.address, "port": str(server.port)}
        if server.token:
            params["token"] = server.token
        command = Command(group="playback", name="playMedia", params=params,
                          controller=Controller(client_id="admin-api", name="admin API", address="127.0.0.1"))
        decision = await self.handle_command(target.id, command)
        assert decision is not None
        return decision
