"""The relay's trust in the Plex servers it fetches from: its own chain check, pinned leaves, AIA issuers.

Before the token goes to a server, the bridge verifies the server's chain itself, for the exact
plex.direct name: against the certifi roots plus configured extra roots, with the intermediates
the server sent plus missing issuers fetched through AIA "CA Issuers" (http only, size-capped,
cached on disk in ``state_dir/aia``), through :func:`companion.security.trust.verify_chain`. The
verified leaf is then pinned (its SHA-256; aiohttp and the relay's reader threads check the pin
after the handshake, before a request byte is written) for ``VERIFY_TTL``, and a new leaf is
verified afresh before the token goes to it. One handshake, :func:`companion.security.tls.handshake`,
serves this and the probe.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import ssl
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import AuthorityInformationAccessOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from companion.errors import TrustError
from companion.security.facts import ServerFacts
from companion.security.profiles import TlsCaps
from companion.security.tls import certifi_roots, handshake, unverified_context
from companion.security.trust import Reason, verify_chain

log = logging.getLogger(__name__)

AIA_SIZE_CAP = 64 * 1024  # one DER certificate is ~1.5 KiB; a PKCS#7 bundle a few
AIA_DEPTH = 3
VERIFY_TTL = 3600.0  # re-verify a pinned upstream at least hourly (expiry, revocation of roots)
_READ_CHUNK = 256 * 1024

# The bridge's own TLS limits for the upstream (it is a modern client: any AIA-fetched issuer may
# complete the path; RSA below 2048 is refused as browsers do).
_BRIDGE_TLS = TlsCaps(min_version="1.2", max_version="1.3", rsa_min_bits=2048, ecdsa=True,
                      requires_sha2=True, follows_aia=True)


class UpstreamRefused(TrustError):
    """The relay will not talk to the upstream: its chain failed verification, or it is unreachable."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


class TrustCounters(Protocol):
    """Where verifications and AIA fetches are counted (the relay's counters)."""

    verifications: int
    aia_fetches: int


@dataclass
class Pin:
    """A verified leaf: the fingerprint connections must show, until it is verified again."""

    fingerprint: aiohttp.Fingerprint
    until: float  # monotonic: re-verify after this


def server_name(host: str) -> str | None:
    """The SNI to send for an upstream host: its name, or None for an IP literal."""
    return None if _is_ip(host) else host


class UpstreamTrust:
    """Verified, pinned leaves of upstream servers, and the AIA issuers fetched to verify them."""

    def __init__(
        self,
        *,
        state_dir: Path,
        extra_roots: Sequence[x509.Certificate],
        counters: TrustCounters,
        handshake_timeout: float,
        aia_timeout: float,
        aia_hosts: Collection[str] | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``aia_hosts``: the only hosts AIA issuers may be fetched from; None allows any name but
        no non-global IP literal (a server's certificate must not steer the bridge at the LAN)."""
        self._state_dir = state_dir
        self._counters = counters
        self._handshake_timeout = handshake_timeout
        self._aia_timeout = aia_timeout
        self._aia_hosts = None if aia_hosts is None else frozenset(h.lower() for h in aia_hosts)
        self._clock = clock
        self._roots = [*(cert for _label, cert in certifi_roots()), *extra_roots]
        self._store = Store(self._roots)
        self._pins: dict[tuple[str, int, str], Pin] = {}
        self._pin_locks: dict[tuple[str, int, str], asyncio.Lock] = {}
        self._issuers: dict[str, x509.Certificate] = {}

    async def pin(self, address: str, port: int, host: str, *, force: bool,
                  session: aiohttp.ClientSession | None) -> Pin:
        """The pin of the server at ``address:port`` verified for ``host``; verifies it when needed.

        ``force`` verifies again (the server showed another leaf). ``session`` fetches missing
        issuers (None: no AIA fetch). Raises UpstreamRefused.
        """
        key = (address, port, host)
        lock = self._pin_locks.setdefault(key, asyncio.Lock())
        async with lock:
            pin = self._pins.get(key)
            if pin is not None and not force and self._clock() < pin.until:
                return pin
            self._pins.pop(key, None)
            chain = await self._sent_chain(address, port, host)
            fingerprint = await self._verify(address, port, host, chain, session)
            pin = Pin(aiohttp.Fingerprint(fingerprint), self._clock() + VERIFY_TTL)
            self._pins[key] = pin
            return pin

    async def _sent_chain(self, address: str, port: int, host: str) -> tuple[bytes, ...]:
        # Verification off: the chain is verified by us, below, for the exact name.
        where = f"{address}:{port}"
        try:
            shake = await handshake(address, port, unverified_context(), server_name(host), self._handshake_timeout)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise UpstreamRefused("upstream-unreachable",
                                  f"the relay could not open TLS to the Plex server at {where}: "
                                  f"{type(exc).__name__}") from exc
        if not shake.chain_der:
            raise UpstreamRefused("upstream-untrusted", f"the Plex server at {where} sent no certificate")
        return shake.chain_der

    async def _verify(self, address: str, port: int, host: str, chain: tuple[bytes, ...],
                      session: aiohttp.ClientSession | None) -> bytes:
        """The SHA-256 of the leaf when the chain verifies for ``host``; else UpstreamRefused."""
        self._counters.verifications += 1
        try:
            facts = ServerFacts.from_chain(address, port, chain, tls_versions=())
        except TrustError as exc:
            raise UpstreamRefused("upstream-untrusted", str(exc)) from exc
        sent = facts.chain
        reasons = self._check(host, facts, ())
        if reasons:
            extra = await self._aia_issuers(sent, session)
            if extra:
                reasons = self._check(host, facts, extra)
        if reasons:
            text = "; ".join(str(r) for r in reasons)
            log.warning("relay: refusing the Plex server %s at %s:%d, its certificate does not verify: %s",
                        host, address, port, text)
            raise UpstreamRefused("upstream-untrusted", f"the relay does not trust the Plex server {host}: {text}")
        return hashlib.sha256(chain[0]).digest()

    def _check(self, name: str, facts: ServerFacts, extra: Sequence[x509.Certificate]) -> tuple[Reason, ...]:
        now = datetime.now(UTC)
        if not _is_ip(name):
            result = verify_chain(facts, self._roots, name=name, now=now, tls=_BRIDGE_TLS,
                                  extra_intermediates=extra)
            return () if result.ok else result.reasons
        # An IP as the name: the shared checker speaks DNS names only; this path gives one reason.
        sent = facts.chain
        try:
            verifier = (PolicyBuilder().store(self._store).time(now.replace(tzinfo=None))
                        .build_server_verifier(x509.IPAddress(ipaddress.ip_address(name))))
            verifier.verify(sent[0], [*sent[1:], *extra])
        except (VerificationError, ValueError) as exc:
            return (Reason("chain-invalid", f"the chain does not verify for {name}: {exc}"),)
        return ()

    # -- AIA --

    async def _aia_issuers(self, sent: Sequence[x509.Certificate],
                           session: aiohttp.ClientSession | None) -> list[x509.Certificate]:
        """Missing issuers above the last sent certificate, following CA Issuers URLs (cached)."""
        found: list[x509.Certificate] = []
        current = sent[-1]
        for _ in range(AIA_DEPTH):
            if current.issuer == current.subject:
                break
            issuer = None
            for url in _ca_issuer_urls(current):
                issuer = await self._issuer(url, current, session)
                if issuer is not None:
                    break
            if issuer is None or issuer in found or issuer in sent:
                break
            found.append(issuer)
            current = issuer
        return found

    def _aia_path(self, url: str) -> Path:
        return self._state_dir / "aia" / (hashlib.sha256(url.encode()).hexdigest() + ".der")

    async def _issuer(self, url: str, child: x509.Certificate,
                      session: aiohttp.ClientSession | None) -> x509.Certificate | None:
        cached = self._issuers.get(url)
        if cached is not None:
            return cached
        path = self._aia_path(url)
        try:
            data: bytes | None = path.read_bytes()
        except OSError:
            data = None
        issuer = _parse_issuer(data, child) if data else None
        if issuer is None:
            issuer = await self._fetch_issuer(url, child, session)
            if issuer is None:
                return None
            self._save_issuer(path, issuer)
        self._issuers[url] = issuer
        return issuer

    def _save_issuer(self, path: Path, issuer: x509.Certificate) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".tmp")
            partial.write_bytes(issuer.public_bytes(serialization.Encoding.DER))
            partial.replace(path)
        except OSError as exc:
            log.warning("relay: cannot cache an AIA issuer in %s: %s", path.parent, exc.strerror or exc)

    def _aia_allowed(self, url: str) -> bool:
        host = (urlsplit(url).hostname or "").lower()
        if not host:
            return False
        if self._aia_hosts is not None:
            return host in self._aia_hosts
        try:
            return ipaddress.ip_address(host).is_global
        except ValueError:
            return True

    async def _fetch_issuer(self, url: str, child: x509.Certificate,
                            session: aiohttp.ClientSession | None) -> x509.Certificate | None:
        if session is None:
            return None
        if not self._aia_allowed(url):
            log.warning("relay: not fetching the AIA issuer %s (host not allowed)", url[:200])
            return None
        self._counters.aia_fetches += 1
        try:
            async with session.get(url, allow_redirects=False,
                                   timeout=aiohttp.ClientTimeout(total=self._aia_timeout)) as resp:
                if resp.status != 200:
                    log.warning("relay: AIA issuer %s answered HTTP %d", url[:200], resp.status)
                    return None
                data = await read_capped(resp, AIA_SIZE_CAP)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("relay: cannot fetch the AIA issuer %s: %s", url[:200], type(exc).__name__)
            return None
        if data is None:
            log.warning("relay: the AIA issuer at %s is larger than %d bytes", url[:200], AIA_SIZE_CAP)
            return None
        issuer = _parse_issuer(data, child)
        if issuer is None:
            log.warning("relay: %s holds no certificate for %s", url[:200], child.issuer.rfc4514_string())
        else:
            log.info("relay: fetched the missing issuer %s from %s", issuer.subject.rfc4514_string(), url[:200])
        return issuer


async def read_capped(resp: aiohttp.ClientResponse, cap: int) -> bytes | None:
    """The whole body of ``resp``, or None once it exceeds ``cap`` bytes."""
    parts: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(_READ_CHUNK):
        size += len(chunk)
        if size > cap:
            return None
        parts.append(chunk)
    return b"".join(parts)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


def _ca_issuer_urls(cert: x509.Certificate) -> list[str]:
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except (x509.ExtensionNotFound, ValueError):
        return []
    urls = []
    for desc in aia:
        if (desc.access_method == AuthorityInformationAccessOID.CA_ISSUERS
                and isinstance(desc.access_location, x509.UniformResourceIdentifier)
                and desc.access_location.value.lower().startswith("http://")):
            urls.append(desc.access_location.value)
    return urls


def _parse_issuer(data: bytes, child: x509.Certificate) -> x509.Certificate | None:
    """DER, PEM or PKCS#7 (``.p7c``): the certificate whose subject is ``child``'s issuer."""
    certs: list[x509.Certificate] = []
    for loader in (lambda d: [x509.load_der_x509_certificate(d)], x509.load_pem_x509_certificates,
                   pkcs7.load_der_pkcs7_certificates, pkcs7.load_pem_pkcs7_certificates):
        try:
            certs = list(loader(data))
        except ValueError:
            continue
        if certs:
            break
    matching = [c for c in certs if c.subject == child.issuer]
    return matching[0] if matching else None


__all__ = ["AIA_SIZE_CAP", "VERIFY_TTL", "Pin", "TrustCounters", "UpstreamRefused", "UpstreamTrust",
           "read_capped", "server_name"]
