"""Device capability profiles: the data shape (this part), loading, linting and matching.

A profile says what one kind of device can do for a secure fling: TLS versions, ciphers, key
limits, its root store, and whether its DNS goes through the LAN resolver. Format:
SECURITY.md section 4; contributor guide: profiles/README.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Confidence = Literal["documented", "observed", "inferred", "assumed"]
# Lower is weaker: a profile is as confident as its weakest claim.
CONFIDENCE_ORDER: tuple[Confidence, ...] = ("assumed", "inferred", "observed", "documented")


@dataclass(frozen=True)
class TlsCaps:
    min_version: str = "1.2"  # "1.0" | "1.1" | "1.2" | "1.3"
    max_version: str = "1.3"
    ciphers: tuple[str, ...] | None = None  # OpenSSL names, TLS <= 1.2; None = any
    sni: bool = True
    rsa_min_bits: int = 2048
    ecdsa: bool = True
    requires_sha2: bool = False
    follows_aia: bool = False


@dataclass(frozen=True)
class RootsSpec:
    store: str = "mozilla"
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True)
class Evidence:
    claim: str
    confidence: Confidence
    source: str | None = None


@dataclass(frozen=True)
class Profile:
    id: str
    name: str
    match: tuple[Mapping[str, str], ...]
    transport: Literal["companion", "chromecast"]
    media_https: bool
    media_http: bool
    tls: TlsCaps
    roots: RootsSpec
    dns_resolver: Literal["lan", "public"]
    evidence: tuple[Evidence, ...] = ()
    notes: str = ""
    path: str = ""  # file it was loaded from

    @property
    def confidence(self) -> Confidence:
        """The weakest confidence among the profile's claims (``assumed`` when it has none)."""
        if not self.evidence:
            return "assumed"
        return min((e.confidence for e in self.evidence), key=CONFIDENCE_ORDER.index)
