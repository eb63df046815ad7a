"""What the admin surfaces show, computed from a running bridge: views for the page, dicts for JSON.

No I/O here: the lock of each target is the last fling's decision for that target and server,
else a prediction from the probe cache (``ProbeCache.peek``) with the same pure ``decide`` the
flings use (DNS not looked up: the prediction says so). Nothing returned carries a token: the
server tokens are never read, and every string that came off the network or out of an error
passes through the audit log's scrub on the way out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from companion import __version__
from companion.audit import scrub
from companion.bridge_view import BridgeView
from companion.errors import CompanionError
from companion.flinging import Fling
from companion.model import Server, Target
from companion.security.decide import Decision, Reason, decide
from companion.security.profiles import describe
from companion.security.trust import display_name
from companion.visibility import ChannelView, channel_json, face_visibility

if TYPE_CHECKING:
    from companion.doctor.findings import Finding
    from companion.security.facts import ServerFacts

LockState = Literal["closed", "open", "unknown"]
LockSource = Literal["fling", "probe", "none"]
FlingFlag = Literal["secure", "relay", "insecure", "refused"]

NO_SERVER = Reason("no-server-known", "no Plex server is known yet: it appears once GDM finds one or it is "
                   "listed under servers: in the config")
NOT_PROBED = Reason("server-not-probed", "this server's TLS has not been measured yet; the first fling (or "
                    "`companion explain`) will decide")


@dataclass(frozen=True)
class LockView:
    """Whether a secure connection is possible between one target and one server, and why (not)."""

    server_id: str
    server_name: str
    state: LockState
    mode: str  # the decided or predicted mode; "" when unknown
    source: LockSource  # "fling": the last fling's decision; "probe": predicted from cached facts
    token_exposed: bool
    reasons: tuple[Reason, ...]


@dataclass(frozen=True)
class TargetView:
    """One bridged target as the page and ``/api/targets`` show it: face, profile, counters, locks, channels."""

    id: str
    name: str
    kind: str
    address: str
    port: int
    available: bool
    face_name: str
    face_port: int
    subscribers: int
    long_polls: int
    profile_id: str
    profile_name: str
    confidence: str
    policy: str
    commands: int
    errors: int
    last_error: str
    locks: tuple[LockView, ...]
    visible: tuple[ChannelView, ...] = ()  # where the face can be seen (GDM, plex.tv, server proxies)
    at: datetime | None = None  # when this view was computed (the ages of the channels count from it)
    contradicted: int = 0  # direct-secure flings to this profile's devices that failed on the device

    @property
    def assumed(self) -> bool:
        """True when the profile is only assumed (nothing measured or reported backs it)."""
        return self.confidence == "assumed"


def fling_flag(decision: Decision) -> FlingFlag:
    """How a fling is flagged: relay is its own kind (token kept, last hop plain)."""
    if decision.mode == "direct-secure" and decision.secure:
        return "secure"
    if decision.mode == "relay":
        return "relay"
    if decision.mode == "refused":
        return "refused"
    return "insecure"


def _lock_from(decision: Decision) -> LockState:
    return "closed" if decision.secure else "open"


def _server_name(server: Server) -> str:
    return server.name or f"{server.address}:{server.port}"


def _predict(bridge: BridgeView, target: Target, server: Server, now: datetime) -> LockView:
    name = _server_name(server)
    probed = bridge.probe.status(server.id, server.address, server.port)
    facts = probed.facts
    flings = bridge.flings
    if (facts is None and probed.error is None) or flings is None:
        return LockView(server.id, name, "unknown", "", "none", False, (NOT_PROBED,))
    try:
        profile = flings.profile_for(target)
        roots = bridge.profiles.roots_for(profile)
    except CompanionError as exc:
        return LockView(server.id, name, "unknown", "", "none", False,
                        (Reason("profile-unavailable", scrub(str(exc))),))
    decision = decide(profile=profile, roots=roots, server_address=server.address, server_port=server.port,
                      facts=facts, dns=None, policy=flings.policy_for(target),
                      relay_available=flings.relay_available(), now=now,
                      server_hash=flings.server_hash(server), cross_signs=bridge.profiles.cross_signs)
    return LockView(server.id, name, _lock_from(decision), decision.mode, "probe", decision.token_exposed,
                    decision.reasons)


def target_views(bridge: BridgeView, now: datetime) -> list[TargetView]:
    """One view per bridged target (face), sorted by name, each with a lock per known server."""
    last: dict[tuple[str, str], Fling] = {}
    if bridge.flings is not None:
        for fling in bridge.flings.recent:  # newest first: the first seen per pair is the latest
            last.setdefault((fling.target_id, bridge.registry.current_server_id(fling.server_id)), fling)
    servers = sorted(bridge.registry.servers(), key=lambda s: (_server_name(s).lower(), s.id))
    views: list[TargetView] = []
    for slot in sorted(bridge.faces.values(), key=lambda s: (s.target.name.lower(), s.target.id)):
        target = slot.target
        locks: list[LockView] = []
        for server in servers:
            latest = last.get((target.id, server.id))
            if latest is not None:
                d = latest.decision
                locks.append(LockView(server.id, _server_name(server), _lock_from(d), d.mode, "fling",
                                      d.token_exposed, d.reasons))
            else:
                locks.append(_predict(bridge, target, server, now))
        if not locks:
            locks.append(LockView("", "", "unknown", "", "none", False, (NO_SERVER,)))
        profile_id, profile_name, confidence, policy = "", "", "unknown", bridge.config.security.policy
        if bridge.flings is not None:
            policy = bridge.flings.policy_for(target)
            try:
                profile = bridge.flings.profile_for(target)
            except CompanionError:
                pass
            else:
                profile_id, profile_name, confidence = profile.id, profile.name, profile.confidence
        face = slot.face
        views.append(TargetView(
            id=target.id, name=target.name, kind=target.kind.value, address=target.address, port=target.port,
            available=slot.adapter.available, face_name=face.identity.name, face_port=face.port,
            subscribers=face.subscriber_count, long_polls=face.long_poll_count, profile_id=profile_id,
            profile_name=profile_name, confidence=confidence, policy=policy, commands=slot.commands,
            errors=slot.errors, last_error=scrub(slot.last_error), locks=tuple(locks),
            visible=face_visibility(bridge, slot, now), at=now,
            contradicted=bridge.flings.contradicted.get(profile_id, 0) if bridge.flings is not None else 0))
    return views


def plextv_account(bridge: BridgeView) -> str:
    """The linked account's name for the page header ("" when not linked)."""
    if bridge.plextv is None or bridge.plextv.account is None:
        return ""
    return bridge.plextv.account.name


# -- JSON ---------------------------------------------------------------------------------------


def _reasons(reasons: Sequence[Reason]) -> list[dict[str, str]]:
    return [{"code": r.code, "text": scrub(r.text)} for r in reasons]


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def lock_json(lock: LockView) -> dict[str, Any]:
    """The JSON shape of one lock (a target and a server: secure or not, and why)."""
    return {"server": {"id": lock.server_id, "name": lock.server_name}, "lock": lock.state,
            "secure": lock.state == "closed", "mode": lock.mode, "source": lock.source,
            "token_exposed": lock.token_exposed, "reasons": _reasons(lock.reasons)}


def target_json(view: TargetView) -> dict[str, Any]:
    """The ``/api/targets`` shape of one target view."""
    return {
        "id": view.id, "name": view.name, "kind": view.kind, "address": view.address, "port": view.port,
        "available": view.available,
        "face": {"name": view.face_name, "port": view.face_port, "subscribers": view.subscribers,
                 "long_polls": view.long_polls},
        "profile": {"id": view.profile_id, "name": view.profile_name, "confidence": view.confidence,
                    "assumed": view.assumed, "contradicted_by_failed_flings": view.contradicted},
        "policy": view.policy,
        "secure_possible": any(lock.state == "closed" for lock in view.locks),
        "locks": [lock_json(lock) for lock in view.locks],
        "commands": view.commands, "errors": view.errors, "last_error": view.last_error,
        "visible": [channel_json(c, view.at or datetime.now(UTC)) for c in view.visible],
    }


def chain_json(facts: ServerFacts) -> dict[str, Any]:
    """The TLS side of a server as measured: the chain as sent, hash, versions, validity."""
    certs = []
    for cert, sig in zip(facts.chain, facts.signature_hashes, strict=False):
        certs.append({"subject": display_name(cert.subject), "issuer": display_name(cert.issuer),
                      "not_before": _iso(cert.not_valid_before_utc), "not_after": _iso(cert.not_valid_after_utc),
                      "signature_hash": sig})
    return {
        "hash": facts.plex_direct_hash,
        "tls_versions": sorted(facts.tls_versions),
        "tls_versions_untestable": sorted(facts.tls_versions_untestable),
        "ciphers": len(facts.ciphers),
        "leaf": {"key_type": facts.leaf_key_type, "key_bits": facts.leaf_key_bits,
                 "not_before": _iso(facts.not_before), "not_after": _iso(facts.not_after),
                 "fingerprint_sha256": facts.fingerprint},
        "chain": certs,
    }


def server_json(bridge: BridgeView, server: Server) -> dict[str, Any]:
    """One known server with its measured TLS and the probe's state (never its token)."""
    probed = bridge.probe.status(server.id, server.address, server.port)
    facts = probed.facts
    at = datetime.fromtimestamp(probed.checked_at, UTC) if probed.checked_at is not None else None
    # Server.token is never read here: it is not part of any view.
    return {"id": server.id, "name": server.name, "address": server.address, "port": server.port,
            "source": server.source, "scheme": server.scheme, "host": server.host, "version": server.version,
            "tls": chain_json(facts) if facts is not None else None,
            "probe": {"state": probed.state, "error": scrub(probed.error) if probed.error else None,
                      "checked_at": _iso(at) if at is not None else None}}


def servers_json(bridge: BridgeView) -> list[dict[str, Any]]:
    """Every known server, by name (``/api/servers``)."""
    return [server_json(bridge, s) for s in sorted(bridge.registry.servers(), key=lambda s: (s.name, s.id))]


def fling_json(fling: Fling) -> dict[str, Any]:
    """A fling from the in-memory recent list (the page's source; the API reads the audit log)."""
    d = fling.decision
    return {"time": _iso(fling.time), "target": {"id": fling.target_id, "name": fling.target_name},
            "controller": fling.controller, "profile": fling.profile, "confidence": fling.confidence,
            "server_id": fling.server_id, "media_key": scrub(fling.media_key), "mode": d.mode,
            "flag": fling_flag(d), "secure": d.secure, "token_exposed": d.token_exposed,
            "reasons": _reasons(d.reasons), "outcome": scrub(fling.outcome),
            "playback": {"result": fling.playback or None, "reason": scrub(fling.playback_reason) or None}}


def profiles_json(bridge: BridgeView) -> list[dict[str, Any]]:
    """Every loaded profile as ``describe`` gives it (``/api/profiles``)."""
    return [describe(p) for p in bridge.profiles.profiles.values()]


def health_json(bridge: BridgeView, *, uptime: float, findings: Sequence[Finding], findings_at: datetime | None,
                ) -> dict[str, Any]:
    """``ok`` unless a target is unavailable, a doctor check FAILed or a profile failed to load."""
    slots = list(bridge.faces.values())
    available = sum(1 for s in slots if s.adapter.available)
    recent = list(bridge.flings.recent) if bridge.flings is not None else []
    counts: Mapping[str, int] = {s: sum(1 for f in findings if f.status == s) for s in ("PASS", "WARN", "FAIL")}
    problems: list[str] = []
    if available < len(slots):
        problems.append(f"{len(slots) - available} target(s) unavailable")
    if counts["FAIL"]:
        problems.append(f"{counts['FAIL']} doctor check(s) failed")
    if bridge.profiles.errors:
        problems.append(f"{len(bridge.profiles.errors)} profile file(s) skipped")
    return {
        "status": "degraded" if problems else "ok",
        "problems": problems,
        "version": __version__,
        "uptime_seconds": round(uptime, 3),
        "targets": len(slots),
        "targets_available": available,
        "servers": len(bridge.registry.servers()),
        "flings_recent": len(recent),
        "insecure_flings_recent": sum(1 for f in recent if not f.decision.secure),
        "doctor": {**counts, "checked_at": _iso(findings_at) if findings_at else None},
        "plextv": {"enabled": bridge.plextv is not None, "linked": bool(bridge.plextv and bridge.plextv.linked),
                   "account": plextv_account(bridge) or None},
    }
