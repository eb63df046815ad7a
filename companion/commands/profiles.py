"""``companion profiles lint|list|evidence``: check profile files, list the loaded profiles, weigh their claims."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from companion.commands.common import EXIT_FAIL, EXIT_OK, print_json, profile_set, table
from companion.config import config_from_args


def cmd_profiles_lint(args: argparse.Namespace) -> int:
    """Lint profile and root-store files (default: the shipped ones); 1 when any has an error."""
    from companion.security.profiles import lint

    paths = [Path(p) for p in args.paths]
    errors = lint(paths)
    for error in errors:
        print(error, file=sys.stderr)
    if errors:
        print(f"{len(errors)} error(s)", file=sys.stderr)
        return EXIT_FAIL
    print(f"ok: {', '.join(args.paths) if args.paths else 'shipped profiles'}")
    return EXIT_OK


def cmd_profiles_list(args: argparse.Namespace) -> int:
    """List the loaded profiles: transport, TLS, roots, DNS, confidence, what they match."""
    from companion.security.profiles import describe
    from companion.security.trust import root_outlook

    profiles = profile_set(config_from_args(args))
    outlooks = {p.id: root_outlook(p, profiles.roots_for(p), profiles.cross_signs) for p in profiles.profiles.values()}
    if args.json:
        print_json([{**describe(p), "cross_signed_roots": [outlook_json(o) for o in outlooks[p.id]]}
                     for p in profiles.profiles.values()])
        return EXIT_OK
    rows = []
    for p in profiles.profiles.values():
        matches = "; ".join(", ".join(f"{k}={v}" for k, v in clause.items()) for clause in p.match) or "(override)"
        tls = "no https" if not p.media_https else f"TLS {p.tls.min_version}-{p.tls.max_version}"
        gen_y = ", ".join(f"{o.root.removeprefix('isrg-root-').upper()} "
                          f"{'ok' if o.ok else 'needs cross-sign' if o.needs_cross_sign else 'no'}"
                          for o in outlooks[p.id] if p.media_https) or "-"
        rows.append([p.id, p.transport, tls, p.roots.store, p.dns_resolver, p.confidence, gen_y, matches])
    print(table(rows, ["ID", "TRANSPORT", "TLS", "ROOTS", "DNS", "CONFIDENCE", "2026 ROOTS", "MATCHES"]))
    return EXIT_OK


def cmd_profiles_evidence(args: argparse.Namespace) -> int:
    """Per profile, from the audit log: flings, failures on the device, and the claims they contradict."""
    from companion.audit import AuditLog
    from companion.security.claims import evidence_to_json, summarize

    config = config_from_args(args)
    profiles = profile_set(config)
    path = config.state_path / "audit.sqlite3"
    facts = []
    if path.exists():
        with AuditLog(path) as audit:
            facts = audit.outcome_facts()
    summary = summarize(facts, profiles.profiles)
    if args.json:
        print_json(evidence_to_json(summary))
        return EXIT_OK
    if not summary:
        print(f"no flings recorded in {path}")
        return EXIT_OK
    rows = [[s.profile, str(s.flings), str(s.ok), str(s.failures), str(s.direct_secure_failures), str(s.reflings),
             "YES" if s.is_contradicted else "no"] for s in summary]
    print(table(rows, ["PROFILE", "FLINGS", "PLAYED", "FAILED", "DIRECT-SECURE FAILED", "RE-FLUNG",
                        "CONTRADICTED"]))
    for s in summary:
        if not s.is_contradicted:
            continue
        print(f"\n{s.profile}: {s.direct_secure_failures} direct-secure fling(s) failed on the device; "
              "the claims that made them secure:")
        for c in s.contradicted:
            if not c.claims:
                print(f"  {c.facet}: no claim backs this key (the profile's value is unbacked)")
            for e in c.claims:
                print(f"  {c.facet}: \"{e.claim}\" [{e.confidence}]" + (f" ({e.source})" if e.source else ""))
    return EXIT_OK


def outlook_json(o: Any) -> dict[str, object]:
    """A root outlook (does a profile trust the 2026 roots, cross-signed or not) as JSON."""
    return {"root": o.root, "cross_signed_by": o.by, "trusts_root": o.trusts_root, "trusts_cross_signer": o.trusts_by,
            "follows_aia": o.follows_aia, "ok": o.ok, "needs_cross_sign": o.needs_cross_sign, "text": o.text,
            "confidence": o.confidence,
            "evidence": [{"claim": e.claim, "confidence": e.confidence, "source": e.source} for e in o.evidence]}


__all__ = ["cmd_profiles_evidence", "cmd_profiles_lint", "cmd_profiles_list", "outlook_json"]
