"""``companion explain``: the secure/insecure decision for a target and a server, check by check."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from typing import Any

from companion.commands.common import EXIT_FAIL, EXIT_OK, print_json, profile_set, running_target
from companion.commands.profiles import outlook_json
from companion.config import Config, config_from_args
from companion.errors import CompanionError, ConfigError


def cmd_explain(args: argparse.Namespace) -> int:
    """Probe the server and judge it for the target's profile; 0 when secure, 1 when not."""
    config = config_from_args(args)
    return asyncio.run(_explain(config, args))


def _explain_profile(config: Config, profiles: Any, target: str | None, profile_id: str | None) -> Any:
    from companion.model import Target, TargetKind, stable_id

    if profile_id:
        return profiles.get(profile_id)
    assert target is not None
    for t in config.targets:
        if target in (t.name, stable_id(t.kind, f"config:{t.name}")):
            fields = Target(id="", kind=TargetKind(t.kind), name=t.name, address=t.address, port=t.port,
                            source="config", ident="").match_fields
            return profiles.match(fields, override=config.profiles.get(t.name) or t.profile)
    if target in profiles.profiles:
        return profiles.get(target)
    running = _running_target_profile(config, target)
    if running is not None:
        return profiles.get(running)
    raise CompanionError(f"unknown target {target!r}: name a configured target or one the running daemon "
                         "has bridged (see http://localhost:32480/api/targets), or give --profile ID "
                         "(see `companion profiles list`)")


def _running_target_profile(config: Config, target: str) -> str | None:
    """The profile id the running daemon on this host matched for a target it discovered, if any."""
    row = running_target(config, target)
    profile = row.get("profile") if row else None
    if isinstance(profile, dict) and isinstance(profile.get("id"), str) and profile["id"]:
        return str(profile["id"])
    return None


async def _explain(config: Config, args: argparse.Namespace) -> int:
    from datetime import UTC, datetime
    from urllib.parse import urlsplit

    from companion.errors import ProtocolError, TrustError
    from companion.flinging import parse_resolver
    from companion.proto import plexdirect
    from companion.security.decide import decide, explain
    from companion.security.dnscheck import check_plex_direct
    from companion.security.probe import probe_server
    from companion.security.trust import root_outlook

    profiles = profile_set(config)
    profile = _explain_profile(config, profiles, args.target, args.profile)
    url = urlsplit(args.server)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError(f"--server: expected http(s)://host:port, got {args.server!r}")
    host = url.hostname
    port = url.port or 32400
    server_hash: str | None = None
    try:
        parsed = plexdirect.parse_name(host)
        address, server_hash = parsed.address, parsed.hash
    except ProtocolError:
        address = host
    try:
        sni = plexdirect.build_name(address, server_hash) if server_hash else None
    except ProtocolError:
        sni = None
    if not args.json:
        print(f"probing {address}:{port} ...", file=sys.stderr)
    try:
        facts = await probe_server(address, port, server_name=sni, timeout=config.timeouts.command)
    except TrustError as exc:
        facts = None
        if not args.json:
            print(f"  server TLS: {exc}", file=sys.stderr)
    dns = None
    if facts is not None and profile.dns_resolver == "lan" and config.security.dns_check:
        wanted = server_hash or facts.plex_direct_hash
        if wanted:
            with contextlib.suppress(ProtocolError):
                dns = await check_plex_direct(plexdirect.build_name(address, wanted), address,
                                              resolver=parse_resolver(args.resolver or config.security.resolver))
    policy = args.policy or config.security.policy
    now = datetime.now(UTC)
    roots = profiles.roots_for(profile)
    common = {"profile": profile, "roots": roots, "server_address": address, "server_port": port, "facts": facts,
              "dns": dns, "policy": policy, "relay_available": config.security.relay, "now": now,
              "server_hash": server_hash, "cross_signs": profiles.cross_signs}
    checks = explain(**common)
    decision = decide(**common)
    outlook = root_outlook(profile, roots, profiles.cross_signs)
    if args.json:
        print_json({
            "profile": {"id": profile.id, "name": profile.name, "confidence": profile.confidence},
            "server": {"address": address, "port": port, "hash": facts.plex_direct_hash if facts else None,
                       "tls_versions": sorted(facts.tls_versions) if facts else [],
                       "chain": [c.subject.rfc4514_string() for c in facts.chain] if facts else []},
            "policy": policy,
            "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail,
                        "reasons": [{"code": r.code, "text": r.text} for r in c.reasons]} for c in checks],
            "decision": {"mode": decision.mode, "secure": decision.secure,
                         "token_exposed": decision.token_exposed, "stream_base": decision.stream_base,
                         "reasons": [{"code": r.code, "text": r.text} for r in decision.reasons]},
            "cross_signed_roots": [outlook_json(o) for o in outlook],
        })
    else:
        print(f"device profile: {profile.id} ({profile.name}); confidence: {profile.confidence}")
        if profile.notes:
            print(f"  notes: {' '.join(profile.notes.split())}")
        if facts is not None:
            print(f"server: {address}:{port}; TLS {', '.join(sorted(facts.tls_versions)) or 'none'}; "
                  f"hash {facts.plex_direct_hash or '-'}")
            for cert in facts.chain:
                print(f"  sent: {cert.subject.rfc4514_string()}  (issuer {cert.issuer.rfc4514_string()})")
        print(f"policy: {policy}")
        for c in checks:
            mark = "PASS" if c.passed else ("FAIL" if c.passed is False else " -- ")
            print(f"  {mark}  {c.name:<16} {c.detail}")
        if outlook:
            print("2026 roots (plex.direct leaves come from YR1 under Root YR; PMS sends leaf + YR1 only):")
            for o in outlook:
                print(f"  {'PASS' if o.ok else 'FAIL'}  {o.root:<16} {o.text} [{o.confidence}]")
        verdict = decision.mode + ("" if decision.secure else
                                   (" (token exposed)" if decision.token_exposed else " (token kept off the LAN)"))
        print(f"verdict: {verdict}")
        if decision.stream_base:
            print(f"stream base for the device: {decision.stream_base}")
        for r in decision.reasons:
            print(f"  - {r.code}: {r.text}")
    return EXIT_OK if decision.secure else EXIT_FAIL


__all__ = ["cmd_explain"]
