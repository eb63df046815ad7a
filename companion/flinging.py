"""Every fling, end to end: gather the facts, decide, rewrite the server block, flag, or refuse.

The decision itself is pure (security/decide.py); this module is the thin shell around it that
owns the I/O: the server probe cache, DNS lookups (cached briefly), the audit log write (in a
worker thread), the WARNING log line and the metrics. It never logs or stores a token.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, cast

from companion import outcomes
from companion.audit import AuditLog, FlingRecord
from companion.config import Config
from companion.errors import CompanionError, PolicyRefusal, ProtocolError, StateError, TrustError
from companion.metrics import Metrics
from companion.model import Command, MediaRequest, Server, Target, scrub
from companion.proto import plexdirect
from companion.proto.companion import media_request
from companion.registry import Registry
from companion.security.claims import relied_on, summarize
from companion.security.decide import Decision, Reason, decide
from companion.security.dnscheck import check_plex_direct
from companion.security.facts import DnsFacts, ServerFacts
from companion.security.probe import ProbeCache
from companion.security.profiles import Profile, ProfileSet
from companion.security.terms import Policy
from companion.security.trust import VerifyCache

log = logging.getLogger(__name__)

DNS_CACHE_SECONDS = 60.0
DNS_FAILURE_CACHE_SECONDS = 5.0  # a resolver that was down is asked again soon
RECENT = 200


@dataclass(frozen=True)
class Fling:
    """One fling as the status page and the admin API show it (no token)."""

    time: datetime
    target_id: str
    target_name: str
    controller: str
    profile: str
    confidence: str
    server_id: str
    media_key: str
    decision: Decision
    outcome: str = "pending"
    relied_on: tuple[str, ...] = ()  # profile keys a direct-secure decision rested on
    playback: str = ""  # what the target's timeline showed: "watching", "ok", "failed"
    playback_reason: str = ""
    refling_of: int | None = None


@dataclass(frozen=True)
class Prepared:
    """A fling that may go ahead: the rewritten request and the decision behind it."""

    request: MediaRequest
    decision: Decision
    fling: Fling
    server: Server
    profile: Profile


def parse_resolver(text: str | None) -> tuple[str, int] | None:
    """``"ip"`` or ``"ip:port"`` (as validated by the config) -> (ip, port); None = the system's."""
    if not text:
        return None
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port)
    return text, 53


class FlingService:
    """Decides and flags every fling of one bridge."""

    def __init__(self, *, config: Config, profiles: ProfileSet, registry: Registry, audit: AuditLog | None,
                 probe: ProbeCache, metrics: Metrics, relay_available: Callable[[], bool] = lambda: False,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.config = config
        self.profiles = profiles
        self.registry = registry
        self.audit = audit
        self.probe = probe
        self.metrics = metrics
        self._relay_available = relay_available
        self._clock = clock
        self._dns: dict[tuple[str, str], tuple[float, DnsFacts]] = {}
        self.verify_cache = VerifyCache()
        self.recent: collections.deque[Fling] = collections.deque(maxlen=RECENT)
        # profile id -> failed direct-secure flings (bounded by the number of loaded profiles)
        self.contradicted: dict[str, int] = {}

    def relay_available(self) -> bool:
        """True when a fling that cannot be secure may go through the bridge's relay."""
        return self.config.security.relay and self._relay_available()

    # -- inputs -------------------------------------------------------------------------------

    def profile_for(self, target: Target) -> Profile:
        """The device profile for ``target``: a configured override first, else the best match."""
        override = (self.config.profiles.get(target.id) or self.config.profiles.get(target.name)
                    or target.profile)
        return self.profiles.match(target.match_fields, override=override)

    def policy_for(self, target: Target) -> Policy:
        """The security policy for ``target``: its own from the config (by id or name), else the global one."""
        per_target = self.config.security.target_policies
        for key in (target.id, target.name):
            if key in per_target:
                return per_target[key]
        for configured in self.config.targets:
            if configured.name == target.name and configured.policy is not None:
                return configured.policy
        return self.config.security.policy

    def server_hash(self, server: Server, request_address: str = "") -> str | None:
        """The plex.direct hash of ``server``, from its name or the address the request used; None if neither."""
        if server.host.endswith(".plex.direct"):
            return server.host.split(".")[0]
        try:
            return plexdirect.parse_name(request_address).hash
        except ProtocolError:
            return None

    async def server_facts(self, server: Server, server_hash: str | None) -> ServerFacts | None:
        """The server's TLS facts, or None when it offers no TLS we can reach."""
        name = None
        if server_hash is not None:
            try:
                name = plexdirect.build_name(server.address, server_hash)
            except ProtocolError:
                name = None
        try:
            return await self.probe.get(server.id, server.address, server.port, name)
        except TrustError as exc:
            log.info("server %s offers no usable TLS: %s", server.name or server.address, exc)
            return None

    async def dns_facts(self, profile: Profile, server: Server, facts: ServerFacts | None,
                        server_hash: str | None) -> DnsFacts | None:
        """What the target's LAN resolver answers for the server's plex.direct name, when the profile needs it."""
        if not self.config.security.dns_check or profile.dns_resolver != "lan" or facts is None:
            return None
        wanted = server_hash or facts.plex_direct_hash
        if wanted is None:
            return None
        try:
            name = plexdirect.build_name(server.address, wanted)
        except ProtocolError:
            return None
        resolver = self.config.security.resolver or "system"
        key = (resolver, name)
        now = time.monotonic()
        cached = self._dns.get(key)
        if cached is not None:
            ttl = DNS_CACHE_SECONDS if cached[1].outcome in ("ok", "stripped") else DNS_FAILURE_CACHE_SECONDS
            if now - cached[0] < ttl:
                return cached[1]
        result = await check_plex_direct(name, server.address, resolver=parse_resolver(self.config.security.resolver))
        self._dns[key] = (now, result)
        return result

    # -- the fling ----------------------------------------------------------------------------

    async def prepare(self, target: Target, command: Command) -> Prepared:
        """Decide one playMedia (or mirror/details): the rewritten request, or PolicyRefusal."""
        profile = self.profile_for(target)
        now = self._clock()
        try:
            request = media_request(command)
        except ProtocolError as exc:
            # A forged key (another host, a path escape) is an attack worth a record, not only a 400.
            reason = Reason("bad-request", str(exc))
            refused = Decision("refused", False, False, (reason,), "", "", 0)
            shown = MediaRequest(key=scrub(command.params.get("key", ""))[:200])
            await self.finish(self._fling(now, target, command, profile, "", shown, refused), "refused",
                              command_plain_http=False, server_address="", command=command)
            raise
        server = self.registry.resolve_server(request.machine_identifier, request.address, request.port)
        if server is None:
            reason = Reason("unknown-server",
                            f"playMedia points at {request.address}:{request.port}, which is not a Plex server "
                            "this bridge knows (discovered by GDM/mDNS or listed under servers: in the config); "
                            "the bridge only sends players to known servers")
            decision = Decision("refused", False, False, (reason,), "", "", 0)
            fling = self._fling(now, target, command, profile, "", request, decision)
            await self.finish(fling, "refused", command_plain_http=False, server_address=request.address,
                              command=command)
            raise PolicyRefusal(reason.text)

        server_hash = self.server_hash(server, request.address)
        facts = await self.server_facts(server, server_hash)
        dns = await self.dns_facts(profile, server, facts, server_hash)
        policy = self.policy_for(target)
        decision = decide(profile=profile, roots=self.profiles.roots_for(profile), server_address=server.address,
                          server_port=server.port, facts=facts, dns=dns, policy=policy,
                          relay_available=self.relay_available(), now=now,
                          server_hash=server_hash, verify_cache=self.verify_cache,
                          cross_signs=self.profiles.cross_signs)
        if decision.mode == "relay" and not request.token:
            # Token confinement (README "What a fling may use"): the relay fetches with the token the
            # controller sent; the configured server token never serves a fling from the LAN.
            no_token = Reason(
                "relay-needs-token",
                "the relay fetches the stream with the token the controller sends with its fling, and this "
                "fling carried none; the server token in the bridge's config serves only the owner's own "
                "flings (POST /api/fling)")
            decision = dataclasses.replace(decision, mode="refused", protocol="", address="", port=0,
                                           reasons=(*decision.reasons, no_token))
        fling = self._fling(now, target, command, profile, server.id, request, decision)
        if decision.mode == "direct-secure" and facts is not None:
            fling = dataclasses.replace(fling, relied_on=self._relied_on(profile, facts, decision, now))
        if decision.mode == "refused":
            await self.finish(fling, "refused", command_plain_http=False, server_address=server.address,
                              command=command)
            raise PolicyRefusal(_refusal_text(target, decision))
        rewritten = dataclasses.replace(
            request, protocol=decision.protocol, address=decision.address, port=decision.port,
            machine_identifier=request.machine_identifier or server.id)
        return Prepared(rewritten, decision, fling, server, profile)

    def _relied_on(self, profile: Profile, facts: ServerFacts, decision: Decision, now: datetime) -> tuple[str, ...]:
        """The claims this direct-secure decision rests on (the verdict is cached: microseconds)."""
        roots = self.profiles.roots_for(profile)
        result = self.verify_cache.verify(facts, roots, name=decision.address, now=now, tls=profile.tls,
                                          cross_signs=self.profiles.cross_signs)
        anchors = self.profiles.root_names(result.path[-1], roots) if result.path else ()
        return relied_on(anchors=anchors, via_aia=bool(result.via_cross_sign),
                         cipher_list=profile.tls.ciphers is not None)

    def _fling(self, now: datetime, target: Target, command: Command, profile: Profile, server_id: str,
               request: MediaRequest, decision: Decision) -> Fling:
        controller = command.controller.name or command.controller.client_id or command.controller.address
        return Fling(time=now, target_id=target.id, target_name=target.name, controller=controller,
                     profile=profile.id, confidence=profile.confidence, server_id=server_id,
                     media_key=request.key, decision=decision)

    async def finish(self, fling: Fling, outcome: str, *, command_plain_http: bool, server_address: str,
                     command: Command | None = None) -> int | None:
        """Flag the fling: audit record, WARNING when not fully secure, metrics, recent list.

        Returns the audit record's id (None without an audit log or when it could not be written).
        """
        fling = dataclasses.replace(fling, outcome=outcome)
        self.recent.appendleft(fling)
        d = fling.decision
        self.metrics.flings.labels(mode=d.mode, secure=str(d.secure).lower(),
                                   outcome=outcome.split(":")[0]).inc()
        if not d.secure:
            self.metrics.insecure_flings.labels(mode=d.mode).inc()
            log.warning("fling to %s is %s (%s): %s", fling.target_name, d.mode,
                        "token exposed" if d.token_exposed else "token kept off the LAN",
                        "; ".join(f"{r.code}: {r.text}" for r in d.reasons) or "no reason recorded")
        if self.audit is None:
            return None
        controller = command.controller if command is not None else None
        record = FlingRecord(
            id=None, time=fling.time, controller_id=controller.client_id if controller else "",
            controller_name=fling.controller, controller_address=controller.address if controller else "",
            target_id=fling.target_id, target_name=fling.target_name, profile=fling.profile,
            server_id=fling.server_id, server_address=server_address, media_key=fling.media_key, mode=d.mode,
            secure=d.secure, token_exposed=d.token_exposed, command_plain_http=command_plain_http,
            reasons=tuple((r.code, r.text) for r in d.reasons), outcome=outcome, playback=fling.playback,
            refling_of=fling.refling_of, relied_on=fling.relied_on)
        try:
            return await asyncio.to_thread(self.audit.record, record)
        except StateError as exc:
            # The fling itself went ahead; losing its record is serious but must not stop playback.
            log.error("could not record the fling to %s in the audit log: %s", fling.target_name, exc)
            return None

    async def record_outcome(self, fling: Fling, record_id: int | None, outcome: outcomes.Outcome) -> None:
        """What the target did with the fling: audit, metric, recent list; a failure is a WARNING."""
        d = fling.decision
        self.metrics.fling_outcomes.labels(mode=d.mode, result=outcome.result).inc()
        for i, shown in enumerate(self.recent):
            if shown is fling or (shown.time == fling.time and shown.target_id == fling.target_id
                                  and shown.decision == d):
                self.recent[i] = dataclasses.replace(shown, playback=outcome.result, playback_reason=outcome.reason)
                break
        if outcome.result == "failed":
            log.warning("fling to %s (%s) failed on the target: %s", fling.target_name, d.mode, outcome.reason)
            if d.mode == "direct-secure":
                self.contradicted[fling.profile] = self.contradicted.get(fling.profile, 0) + 1
        else:
            log.info("fling to %s (%s): %s", fling.target_name, d.mode, outcome.reason)
        if self.audit is None or record_id is None:
            return
        try:
            await asyncio.to_thread(self.audit.set_playback, record_id, outcome.result, outcome.reason)
        except StateError as exc:
            log.error("could not record the outcome of the fling to %s: %s", fling.target_name, exc)

    async def load_contradictions(self) -> None:
        """Count, per profile, the failed direct-secure flings already in the audit log (at start)."""
        if self.audit is None:
            return
        try:
            facts = await asyncio.to_thread(self.audit.outcome_facts)
        except StateError as exc:
            log.error("could not read fling outcomes from the audit log: %s", exc)
            return
        for summary in summarize(facts, self.profiles.profiles):
            if summary.is_contradicted:
                self.contradicted[summary.profile] = summary.direct_secure_failures


def _refusal_text(target: Target, decision: Decision) -> str:
    reasons = "; ".join(r.text for r in decision.reasons)
    return f"refused to fling to {target.name}: {reasons}"


Outcome = Literal["ok", "refused"]


def outcome_of(exc: CompanionError | None) -> str:
    """The audit log's outcome for a fling that raised ``exc`` (None: it went through)."""
    return "ok" if exc is None else f"error: {type(exc).__name__}"


__all__ = ["Fling", "FlingService", "Prepared", "cast", "outcome_of", "parse_resolver"]
