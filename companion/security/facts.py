"""What the bridge measured about a server's TLS and a device's DNS: the facts a decision is made on.

A leaf shared by the probe, the DNS check, chain trust and the decision (SECURITY.md section 2):
the dataclasses and what can be derived from a certificate chain without any I/O. It imports
nothing of :mod:`companion.security` (the probe and the DNS check fill these in; ``decide`` and
``trust`` read them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

from companion.errors import TrustError
from companion.proto.plexdirect import hash_from_certificate

DnsOutcome = Literal["ok", "stripped", "unreachable", "wrong-address"]

# One wording of the fix, for the decision, the DNS check and `companion doctor`.
DNS_REBIND_FIX = (
    "Fix: let plex.direct through the router's DNS rebinding protection: dnsmasq "
    "'rebind-domain-ok=/plex.direct/' (command line: --rebind-domain-ok=/plex.direct/), Unbound "
    "'private-domain: \"plex.direct\"' in its server: block; or hand the device a resolver that "
    "does not strip private answers"
)


@dataclass(frozen=True)
class ServerFacts:
    """Everything the trust decision needs to know about one server's TLS, as measured."""

    address: str
    port: int
    chain_der: tuple[bytes, ...]  # exactly as sent, leaf first
    plex_direct_hash: str | None
    tls_versions: frozenset[str]  # "1.0".."1.3" accepted by the server
    tls_versions_untestable: frozenset[str]  # the local OpenSSL cannot offer them
    ciphers: frozenset[str]  # OpenSSL names accepted for TLS <= 1.2
    leaf_key_type: str  # "rsa" | "ec" | "dsa" | "ed25519" | "ed448"
    leaf_key_bits: int
    signature_hashes: tuple[str, ...]  # one per certificate in chain_der, e.g. "sha256"
    not_before: datetime
    not_after: datetime
    fingerprint: str  # sha256 of the leaf DER, lowercase hex

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        """The sent chain as certificates (leaf first)."""
        return tuple(x509.load_der_x509_certificate(der) for der in self.chain_der)

    @property
    def leaf(self) -> x509.Certificate:
        """The server's own certificate (the first one sent)."""
        return x509.load_der_x509_certificate(self.chain_der[0])

    @classmethod
    def from_chain(
        cls,
        address: str,
        port: int,
        chain_der: Iterable[bytes],
        *,
        tls_versions: Iterable[str],
        tls_versions_untestable: Iterable[str] = (),
        ciphers: Iterable[str] = (),
    ) -> ServerFacts:
        """Facts derived from a sent chain plus the measured versions and ciphers.

        Raises TrustError when the chain is empty or a certificate cannot be parsed.
        """
        ders = tuple(chain_der)
        if not ders:
            raise TrustError(f"server {address}:{port} sent no certificate")
        try:
            certs = [x509.load_der_x509_certificate(der) for der in ders]
        except ValueError as exc:
            raise TrustError(f"server {address}:{port} sent a certificate that cannot be parsed: {exc}") from exc
        leaf = certs[0]
        key_type, key_bits = key_facts(leaf)
        return cls(
            address=address,
            port=port,
            chain_der=ders,
            plex_direct_hash=hash_from_certificate(leaf),
            tls_versions=frozenset(tls_versions),
            tls_versions_untestable=frozenset(tls_versions_untestable),
            ciphers=frozenset(ciphers),
            leaf_key_type=key_type,
            leaf_key_bits=key_bits,
            signature_hashes=tuple(signature_hash(cert) for cert in certs),
            not_before=leaf.not_valid_before_utc,
            not_after=leaf.not_valid_after_utc,
            fingerprint=hashlib.sha256(ders[0]).hexdigest(),
        )


def key_facts(cert: x509.Certificate) -> tuple[str, int]:
    """(key type, size in bits) of a certificate's public key."""
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        return "unknown", 0
    if isinstance(key, rsa.RSAPublicKey):
        return "rsa", key.key_size
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "ec", key.key_size
    if isinstance(key, dsa.DSAPublicKey):
        return "dsa", key.key_size
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "ed25519", 256
    if isinstance(key, ed448.Ed448PublicKey):
        return "ed448", 448
    return type(key).__name__.lower(), 0


def signature_hash(cert: x509.Certificate) -> str:
    """The hash a certificate was signed with ("sha256", "sha1", ...; "none" for Ed25519)."""
    try:
        algorithm = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        return "unknown"
    return algorithm.name if algorithm is not None else "none"


@dataclass(frozen=True)
class DnsFacts:
    """What one resolver answered for one plex.direct name."""

    outcome: DnsOutcome
    name: str
    answers: tuple[str, ...]
    resolver: str  # "127.0.0.10:5300", or "system (192.168.1.1:53)"
    detail: str
