"""What a device profile says: the data shape of profiles and the words their files may use.

A profile says what one kind of device can do for a secure fling: TLS versions, ciphers, key
limits, its root store, and whether its DNS goes through the LAN resolver. Format: SECURITY.md
section 4; contributor guide: profiles/README.md. Pure data: no files, no YAML.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Confidence = Literal["documented", "measured", "observed", "inferred", "assumed"]
# Lower is weaker: a profile is as confident as its weakest claim. ``measured``: seen through the
# capture lab (`companion profiles capture`), with the time and the bridge version that saw it.
CONFIDENCE_ORDER: tuple[Confidence, ...] = ("assumed", "inferred", "observed", "measured", "documented")


@dataclass(frozen=True)
class TlsCaps:
    """What a device's TLS client can do: versions, ciphers, SNI and the certificates it accepts."""

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
    """The roots a device trusts: a named store, plus ``add``, minus ``remove`` (root names)."""

    store: str = "mozilla"
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True)
class Evidence:
    """One claim a profile makes, where it comes from and how sure we are of it."""

    claim: str
    confidence: Confidence
    source: str | None = None
    # The profile keys the claim backs (``tls.roots``, ``dns.resolver``, ``roots.isrg-root-yr``, ...):
    # how a failed fling finds the claims it contradicts.
    about: tuple[str, ...] = ()
    when: str | None = None  # ISO 8601; required for ``measured``
    bridge_version: str | None = None  # the companion-bridge that measured it; required for ``measured``


@dataclass(frozen=True)
class Profile:
    """One kind of device: how it is recognised and what it can do for a secure fling."""

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


TRANSPORTS: tuple[str, ...] = ("companion", "chromecast")
RESOLVERS: tuple[str, ...] = ("lan", "public")
MATCH_FIELDS: tuple[str, ...] = (
    "source", "kind", "name", "product", "version", "platform", "platform_version", "device_class", "model",
)
DEFAULT_PROFILE_ID = "default"

# What an evidence entry may be ``about`` (besides ``roots.<root name>``).
ABOUT_FACETS: tuple[str, ...] = (
    "match", "transport", "media.https", "media.http", "tls.versions", "tls.ciphers", "tls.sni",
    "tls.rsa_min_bits", "tls.ecdsa", "tls.requires_sha2", "tls.follows_aia", "tls.roots", "dns.resolver",
)

# A profile id, and the name of a root in a store file.
ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


def describe(profile: Profile) -> dict[str, object]:
    """A JSON-ready summary of one profile (for ``companion profiles list --json``)."""
    return {
        "id": profile.id,
        "name": profile.name,
        "match": [dict(clause) for clause in profile.match],
        "transport": profile.transport,
        "media": {"https": profile.media_https, "http": profile.media_http},
        "tls": {
            "versions": {"min": profile.tls.min_version, "max": profile.tls.max_version},
            "ciphers": list(profile.tls.ciphers) if profile.tls.ciphers is not None else None,
            "sni": profile.tls.sni,
            "rsa_min_bits": profile.tls.rsa_min_bits,
            "ecdsa": profile.tls.ecdsa,
            "requires_sha2": profile.tls.requires_sha2,
            "follows_aia": profile.tls.follows_aia,
        },
        "roots": {"store": profile.roots.store, "add": list(profile.roots.add),
                  "remove": list(profile.roots.remove)},
        "dns": {"resolver": profile.dns_resolver},
        "confidence": profile.confidence,
        "evidence": len(profile.evidence),
        "notes": profile.notes,
        "path": profile.path,
    }
