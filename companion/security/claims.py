"""Which profile claims a direct-secure fling relied on, and which ones failed flings contradict.

Pure. A direct-secure decision rests on the profile's claims about https media, TLS versions (and
ciphers), the root the chain ended at, AIA fetching when the path needed it, and the resolver. When
such a fling then fails on the target, each of those claims is in doubt: ``companion profiles
evidence`` lists them (matched through each evidence entry's ``about``), and the status page marks
the profile.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from companion.security.profiles import Evidence, Profile


def relied_on(*, anchors: Sequence[str], via_aia: bool, cipher_list: bool) -> tuple[str, ...]:
    """The profile keys a direct-secure decision rested on (``about`` facets, see profiles.ABOUT_FACETS).

    ``anchors``: catalogue names of the root the device's path ended at; ``via_aia``: the path
    needed an issuer the device fetches itself (a cross-sign); ``cipher_list``: the TLS <= 1.2
    cipher list of the profile was what made a common suite.
    """
    facets = ["media.https", "tls.versions"]
    if cipher_list:
        facets.append("tls.ciphers")
    facets += ["tls.roots", *(f"roots.{name}" for name in anchors)]
    if via_aia:
        facets.append("tls.follows_aia")
    facets.append("dns.resolver")
    return tuple(facets)


@dataclass(frozen=True)
class FlingFact:
    """What the audit log knows of one fling, for the evidence summary."""

    profile: str
    mode: str
    playback: str  # "" (not watched), "watching", "ok", "failed", "superseded"
    relied_on: tuple[str, ...]
    refling_of: int | None


@dataclass(frozen=True)
class Contradiction:
    """One profile key that failed direct-secure flings relied on, and the claims that back it."""

    facet: str
    failures: int
    claims: tuple[Evidence, ...]  # empty: no claim backs this key, the profile's value is unbacked


@dataclass(frozen=True)
class ProfileEvidence:
    """Outcomes of the flings to one profile's devices."""

    profile: str
    flings: int
    ok: int
    failures: int
    direct_secure_failures: int
    reflings: int
    contradicted: tuple[Contradiction, ...]

    @property
    def is_contradicted(self) -> bool:
        """True when a direct-secure fling failed: the claims that made it secure are in doubt."""
        return self.direct_secure_failures > 0


def summarize(facts: Iterable[FlingFact], profiles: Mapping[str, Profile]) -> list[ProfileEvidence]:
    """Per profile (by id, sorted): counts, and the claims failed direct-secure flings contradict."""
    by_profile: dict[str, list[FlingFact]] = {}
    for fact in facts:
        by_profile.setdefault(fact.profile, []).append(fact)
    out: list[ProfileEvidence] = []
    for profile_id in sorted(by_profile):
        rows = by_profile[profile_id]
        failed_secure = [f for f in rows if f.mode == "direct-secure" and f.playback == "failed"]
        facets: Counter[str] = Counter(facet for f in failed_secure for facet in f.relied_on)
        profile = profiles.get(profile_id)
        contradictions = tuple(
            Contradiction(facet, count, tuple(e for e in (profile.evidence if profile else ()) if facet in e.about))
            for facet, count in facets.items())
        out.append(ProfileEvidence(
            profile=profile_id, flings=len(rows), ok=sum(f.playback == "ok" for f in rows),
            failures=sum(f.playback == "failed" for f in rows), direct_secure_failures=len(failed_secure),
            reflings=sum(f.refling_of is not None for f in rows), contradicted=contradictions))
    return out


def evidence_to_json(summary: Sequence[ProfileEvidence]) -> list[dict[str, object]]:
    """JSON-ready rows for ``companion profiles evidence --json``."""
    return [{
        "profile": s.profile, "flings": s.flings, "ok": s.ok, "failures": s.failures,
        "direct_secure_failures": s.direct_secure_failures, "reflings": s.reflings,
        "contradicted": s.is_contradicted,
        "claims": [{"about": c.facet, "failures": c.failures,
                    "claims": [{"claim": e.claim, "confidence": e.confidence, "source": e.source} for e in c.claims]}
                   for c in s.contradicted],
    } for s in summary]
