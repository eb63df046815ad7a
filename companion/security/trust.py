"""Chain trust: would a device with this root store and these TLS limits accept the server's chain?

Pure (no sockets, no event loop, the clock is a parameter). The path is built by
``cryptography.x509.verification`` against the device's roots with exactly the intermediates the
server sent (plus AIA-fetched ones only for devices that fetch them), then the limits the library
does not check are applied: the leaf's RSA size, SHA-1 anywhere in the path, ECDSA anywhere in the
path (SECURITY.md section 3 step 3; research/secure-connections-and-tls.md section 5.1).

The library reports one error string and cannot tell "root missing" from "intermediate missing"
(both are "candidates exhausted"), so a failure is diagnosed here by walking the sent chain
ourselves: that gives reasons a person can act on, naming the certificate at fault.

``Reason`` lives here (decide.py re-exports it) because decide.py imports this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import DNSName
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from companion.proto.plexdirect import hash_from_dns_names
from companion.security.facts import ServerFacts
from companion.security.profiles import CONFIDENCE_ORDER, CrossSign, Evidence, Profile, TlsCaps

_WEAK_HASHES = frozenset({"sha1", "md5"})


@dataclass(frozen=True)
class Reason:
    """Why a fling is (not) secure: a short stable code and a sentence a person can act on."""

    code: str
    text: str

    def __str__(self) -> str:
        return f"{self.code}: {self.text}"


@dataclass(frozen=True)
class TrustResult:
    """The verdict on one chain for one device: ok, why not, and the path that was built."""

    ok: bool
    reasons: tuple[Reason, ...]
    path: tuple[str, ...]  # RFC 4514 subjects, leaf first, ending at the device's root
    via_cross_sign: str = ""  # the new root reached through a cross-sign the device fetched (AIA)


def display_name(name: x509.Name) -> str:
    """A certificate name as people know it: its CN, else the full RFC 4514 string."""
    try:
        cns = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:
        cns = []
    if cns:
        value = cns[0].value
        return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return name.rfc4514_string() or "(empty name)"


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _as_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except InvalidSignature:
        return False
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # cryptography refuses to check some signatures at all (SHA-1); the names match, so the
        # walk goes on and the weak hash is reported as such instead of as a missing issuer.
        return True
    return True


def _self_issued(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject


def _dns_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return ()
    return tuple(san.get_values_for_type(x509.DNSName))


def name_matches(pattern: str, name: str) -> bool:
    """RFC 6125 matching as TLS clients do it: a ``*`` covers exactly the leftmost label."""
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if pattern == name:
        return True
    if not pattern.startswith("*."):
        return False
    head, _, rest = name.partition(".")
    return bool(head) and rest == pattern[2:]


def _walk(
    leaf: x509.Certificate, intermediates: Sequence[x509.Certificate], roots: Sequence[x509.Certificate]
) -> tuple[list[x509.Certificate], x509.Certificate | None]:
    """Follow issuers from the leaf through what was sent; returns (path so far, root or None)."""
    path = [leaf]
    current = leaf
    for _ in range(len(intermediates) + 1):
        root = next((r for r in roots if _issued_by(current, r)), None)
        if root is not None:
            return path, root
        nxt = next((c for c in intermediates if c not in path and _issued_by(current, c)), None)
        if nxt is None:
            return path, None
        path.append(nxt)
        current = nxt
    return path, None


def _validity_reason(certs: Sequence[x509.Certificate], now: datetime) -> Reason | None:
    for index, cert in enumerate(certs):
        role = "the server's certificate" if index == 0 else f"the certificate {display_name(cert.subject)!r}"
        if now > cert.not_valid_after_utc:
            return Reason(
                "cert-expired",
                f"{role} expired on {_when(cert.not_valid_after_utc)} (checked at {_when(now)}); "
                "renew it on the server (Plex renews its own plex.direct certificate when it can "
                "reach plex.tv), or check the clock",
            )
        if now < cert.not_valid_before_utc:
            return Reason(
                "cert-not-yet-valid",
                f"{role} is valid only from {_when(cert.not_valid_before_utc)} (checked at {_when(now)}); "
                "check the clock of this machine and of the server",
            )
    return None


def _name_reason(leaf: x509.Certificate, name: str) -> Reason | None:
    names = _dns_names(leaf)
    if any(name_matches(pattern, name) for pattern in names):
        return None
    wanted = name.lower().split(".")
    cert_hash = hash_from_dns_names(names)
    if cert_hash is not None and len(wanted) == 4 and wanted[1] != cert_hash:
        return Reason(
            "name-mismatch",
            f"the server's certificate is for *.{cert_hash}.plex.direct but the stream would use {name} "
            "(wrong hash): the server's hash changed or belongs to another server; refresh the "
            "server list",
        )
    shown = ", ".join(names[:4]) or "no DNS names"
    return Reason("name-mismatch", f"the server's certificate names {shown}, not {name}")


def _path_reason(
    leaf: x509.Certificate, intermediates: Sequence[x509.Certificate], roots: Sequence[x509.Certificate],
    tls: TlsCaps,
) -> Reason | None:
    path, root = _walk(leaf, intermediates, roots)
    if root is not None:
        return None
    last = path[-1]
    if _self_issued(last) and len(path) > 1:
        return Reason(
            "root-missing",
            f"this device's root store lacks {display_name(last.subject)!r}, the root the server's "
            "chain ends in",
        )
    needed = display_name(last.issuer)
    same_name = [r for r in roots if r.subject == last.issuer]
    if same_name:
        return Reason(
            "root-missing",
            f"this device's root store has a {needed!r} but not the one that signed "
            f"{display_name(last.subject)!r} (a different key of the same name)",
        )
    if len(path) == 1 and not _self_issued(last):
        fetch = ("and none could be fetched (AIA)" if tls.follows_aia
                 else "and this device does not fetch missing issuers (AIA)")
        return Reason(
            "intermediate-missing",
            f"the server sent its certificate without the intermediate {needed!r} {fetch}; "
            "configure the server to send the full chain",
        )
    return Reason(
        "root-missing",
        f"this device's root store lacks {needed!r}, which the server's chain needs "
        f"(issuer of {display_name(last.subject)!r})",
    )


def _diagnose(
    leaf: x509.Certificate, intermediates: Sequence[x509.Certificate], roots: Sequence[x509.Certificate],
    name: str, now: datetime, tls: TlsCaps, library_message: str,
) -> tuple[Reason, ...]:
    reasons: list[Reason] = []
    path, root = _walk(leaf, intermediates, roots)
    validity = _validity_reason([*path, *([root] if root is not None else [])], now)
    if validity is not None:
        reasons.append(validity)
    named = _name_reason(leaf, name)
    if named is not None:
        reasons.append(named)
    missing = _path_reason(leaf, intermediates, roots, tls)
    if missing is not None:
        reasons.append(missing)
    weak = [c for c in path if _signature_hash_name(c) in _WEAK_HASHES]
    if weak and missing is None:
        reasons.append(Reason(
            "sha1-signature",
            f"{display_name(weak[0].subject)!r} is signed with {_signature_hash_name(weak[0]).upper()}, "
            "which current TLS stacks (and this check) refuse; the server needs a SHA-2 certificate",
        ))
    if not reasons and "RSA key is too weak" in library_message:
        reasons.append(Reason(
            "rsa-key-too-small",
            "a certificate in the server's chain is signed by an RSA key below 2048 bits",
        ))
    if not reasons:
        reasons.append(Reason(
            "chain-invalid", f"the device would reject the server's chain: {library_message}"
        ))
    return tuple(reasons)


def _is_ecdsa(cert: x509.Certificate) -> bool:
    try:
        if isinstance(cert.public_key(), ec.EllipticCurvePublicKey):
            return True
    except (ValueError, UnsupportedAlgorithm):
        pass
    return isinstance(cert.signature_algorithm_parameters, ec.ECDSA)


def _signature_hash_name(cert: x509.Certificate) -> str:
    try:
        algorithm = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        return "unknown"
    return algorithm.name if isinstance(algorithm, hashes.HashAlgorithm) else "none"


def device_limits(path: Sequence[x509.Certificate], tls: TlsCaps) -> tuple[Reason, ...]:
    """The checks the library does not do: leaf RSA size, SHA-1 in the path, ECDSA in the path."""
    reasons: list[Reason] = []
    leaf = path[0]
    try:
        key = leaf.public_key()
    except (ValueError, UnsupportedAlgorithm):
        key = None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < tls.rsa_min_bits:
        reasons.append(Reason(
            "rsa-key-too-small",
            f"the server's RSA key is {key.key_size} bits; this device needs at least {tls.rsa_min_bits}",
        ))
    if tls.requires_sha2:
        # The root's own signature is not checked by TLS clients; everything below it is.
        weak = [c for c in path[:-1] if _signature_hash_name(c) in _WEAK_HASHES]
        if weak:
            reasons.append(Reason(
                "sha1-signature",
                f"{display_name(weak[0].subject)!r} is signed with {_signature_hash_name(weak[0]).upper()}; "
                "this device requires SHA-2 signatures",
            ))
    if not tls.ecdsa:
        ecdsa = [c for c in path if _is_ecdsa(c)]
        if ecdsa:
            which = ", ".join(repr(display_name(c.subject)) for c in ecdsa)
            reasons.append(Reason(
                "ecdsa-not-supported",
                f"the chain uses ECDSA keys or signatures ({which}); this device accepts only RSA",
            ))
    return tuple(reasons)


@dataclass
class _Verified:
    roots: Sequence[x509.Certificate]  # held so that the id() in the key stays this object's
    result: TrustResult
    valid_from: datetime
    valid_to: datetime


class VerifyCache:
    """Remembers chain verdicts per (chain, roots, name, device limits) within the certificates'
    validity window, so the decision for a server whose facts are cached costs microseconds.

    Roots are keyed by identity: ProfileSet.roots_for hands out one tuple per profile.
    """

    def __init__(self, max_entries: int = 512) -> None:
        self._entries: dict[tuple[object, ...], _Verified] = {}
        self._max = max_entries

    def verify(self, facts: ServerFacts, roots: Sequence[x509.Certificate], *, name: str, now: datetime,
               tls: TlsCaps, extra_intermediates: Sequence[x509.Certificate] = (),
               cross_signs: Sequence[CrossSign] = ()) -> TrustResult:
        """:func:`verify_chain`, answered from the cache when the same question was asked before."""
        now = _as_utc(now)
        key = (facts.chain_der, id(roots), name, tls, tuple(id(c) for c in extra_intermediates),
               tuple(cross_signs), any(now > c.until for c in cross_signs))
        entry = self._entries.get(key)
        if entry is not None and entry.roots is roots and entry.valid_from <= now < entry.valid_to:
            return entry.result
        result = verify_chain(facts, roots, name=name, now=now, tls=tls, extra_intermediates=extra_intermediates,
                              cross_signs=cross_signs)
        try:
            chain = facts.chain
        except ValueError:
            return result
        if chain:
            # Time changes the verdict only when a certificate of the chain starts or stops being valid.
            valid_from = max(c.not_valid_before_utc for c in chain)
            valid_to = min(c.not_valid_after_utc for c in chain)
            if len(self._entries) >= self._max:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = _Verified(roots, result, valid_from, valid_to)
        return result


def verify_chain(
    facts: ServerFacts,
    roots: Sequence[x509.Certificate],
    *,
    name: str,
    now: datetime,
    tls: TlsCaps,
    extra_intermediates: Sequence[x509.Certificate] = (),
    cross_signs: Sequence[CrossSign] = (),
) -> TrustResult:
    """Would a device with ``roots`` and limits ``tls`` accept the server's chain for ``name``?

    Uses exactly the intermediates the server sent; ``extra_intermediates`` (AIA-fetched issuers)
    are added only when ``tls.follows_aia``, so callers may always pass them. ``cross_signs``
    (from the root stores) model a new root published signed by an old one: a device that trusts
    only the old root reaches the new one when it fetches missing issuers, and otherwise is told
    that it needs the cross-signed certificate (reason ``cross-sign-missing``).
    """
    now = _as_utc(now)
    try:
        chain = facts.chain
    except ValueError as exc:
        return TrustResult(False, (Reason("chain-invalid", f"the server's certificate cannot be parsed: {exc}"),), ())
    if not chain:
        return TrustResult(False, (Reason("chain-invalid", "the server sent no certificate"),), ())
    leaf = chain[0]
    intermediates = list(chain[1:])
    if tls.follows_aia:
        intermediates += [c for c in extra_intermediates if c not in intermediates]
    if not roots:
        return TrustResult(False, (Reason(
            "root-missing",
            f"this device's root store is empty, so it trusts nothing; the server's chain needs "
            f"{display_name(_walk(leaf, intermediates, ())[0][-1].issuer)!r}",
        ),), ())
    try:
        verifier = (PolicyBuilder().store(Store(list(roots))).time(now.replace(tzinfo=None))
                    .build_server_verifier(DNSName(name)))
        built = verifier.verify(leaf, intermediates)
    except VerificationError as exc:
        crossed = _through_cross_sign(leaf, intermediates, roots, name=name, now=now, tls=tls,
                                      cross_signs=cross_signs)
        if crossed is not None:
            return crossed
        return TrustResult(False, _diagnose(leaf, intermediates, roots, name, now, tls, str(exc)), ())
    except ValueError as exc:
        return TrustResult(False, (Reason("chain-invalid", f"cannot check the chain for {name!r}: {exc}"),), ())
    path = tuple(built)
    reasons = device_limits(path, tls)
    return TrustResult(not reasons, reasons, tuple(c.subject.rfc4514_string() for c in path))


def _through_cross_sign(
    leaf: x509.Certificate, intermediates: Sequence[x509.Certificate], roots: Sequence[x509.Certificate], *,
    name: str, now: datetime, tls: TlsCaps, cross_signs: Sequence[CrossSign],
) -> TrustResult | None:
    """The verdict for a chain that ends at a new root the device knows only through a cross-sign.

    None when no cross-sign applies (the caller diagnoses the failure as usual). The path up to
    the new root is checked for real, with the new root's self-signed certificate (same name and
    key as the cross-signed one) as its anchor; the last link is the store's published fact.
    """
    for cross in cross_signs:
        if cross.by_certificate not in roots or cross.root_certificate in roots:
            continue
        try:
            verifier = (PolicyBuilder().store(Store([cross.root_certificate])).time(now.replace(tzinfo=None))
                        .build_server_verifier(DNSName(name)))
            built = verifier.verify(leaf, list(intermediates))
        except (VerificationError, ValueError):
            continue
        new_root, old_root = display_name(cross.root_certificate.subject), display_name(cross.by_certificate.subject)
        sent = display_name(built[-2].subject) if len(built) > 1 else "the leaf"
        if now > cross.until:
            return TrustResult(False, (Reason(
                "cross-sign-expired",
                f"the chain ends at {new_root!r}, which this device does not trust; the cross-sign of "
                f"{new_root!r} by {old_root!r} it would need ended on {_when(cross.until)}"),), ())
        if not tls.follows_aia:
            return TrustResult(False, (Reason(
                "cross-sign-missing",
                f"the server sends its certificate with {sent!r} only, which chains to {new_root!r}; this device "
                f"trusts {old_root!r} but not {new_root!r}, and does not fetch missing issuers (AIA), so it "
                f"cannot get the {new_root!r} cross-signed by {old_root!r} that it would need. Fix: a server "
                f"chain that includes that cross-sign, or a device firmware that trusts {new_root!r}; until "
                "then the bridge relays such flings"),), ())
        path = (*built, cross.by_certificate)
        reasons = device_limits(path, tls)
        via = f"{new_root} (cross-signed by {old_root}, fetched through AIA)"
        subjects = (*(c.subject.rfc4514_string() for c in built[:-1]), via,
                    cross.by_certificate.subject.rfc4514_string())
        return TrustResult(not reasons, reasons, subjects, via_cross_sign=cross.root)
    return None


@dataclass(frozen=True)
class RootOutlook:
    """Whether one device verifies chains to a new root that is cross-signed by an old one."""

    root: str  # catalogue name of the new root, e.g. isrg-root-yr
    by: str  # the old root that cross-signs it, e.g. isrg-root-x1
    trusts_root: bool
    trusts_by: bool
    follows_aia: bool
    ok: bool
    needs_cross_sign: bool  # the device verifies only when it is handed the cross-signed certificate
    text: str
    evidence: tuple[Evidence, ...]  # the profile's claims about these roots and about AIA

    @property
    def confidence(self) -> str:
        """The weakest confidence among the claims behind this verdict (``assumed`` without one)."""
        return min((e.confidence for e in self.evidence), key=CONFIDENCE_ORDER.index, default="assumed")


def root_outlook(profile: Profile, roots: Sequence[x509.Certificate],
                 cross_signs: Sequence[CrossSign]) -> tuple[RootOutlook, ...]:
    """Per cross-signed root: can this device verify a chain that ends at it, as a server sends it
    today (leaf + intermediate only), and on what evidence? For ``companion explain``."""
    out: list[RootOutlook] = []
    for cross in cross_signs:
        new, old = display_name(cross.root_certificate.subject), display_name(cross.by_certificate.subject)
        trusts_new, trusts_old = cross.root_certificate in roots, cross.by_certificate in roots
        aia = profile.tls.follows_aia
        facets = {f"roots.{cross.root}", f"roots.{cross.by}", "tls.follows_aia"}
        evidence = tuple(e for e in profile.evidence if facets & set(e.about))
        if not profile.media_https:
            ok, needs, text = False, False, "plays no https media, so no root matters"
        elif trusts_new:
            ok, needs, text = True, False, f"trusts {new!r}: verifies chains to it directly"
        elif trusts_old and aia:
            ok, needs, text = True, False, (f"trusts {old!r} but not {new!r}; fetches missing issuers (AIA), so it "
                                            f"gets the {new!r} cross-signed by {old!r} itself")
        elif trusts_old:
            ok, needs, text = False, True, (
                f"trusts {old!r} but not {new!r} and does not fetch missing issuers (AIA): it needs the "
                f"{new!r} cross-signed by {old!r}, which a server sending only leaf + intermediate (PMS "
                f"since 2026) does not send. Fix: none on the LAN; the bridge relays such flings")
        else:
            ok, needs, text = False, False, (f"trusts neither {new!r} nor {old!r}: chains to {new!r} cannot "
                                             "verify; the bridge relays such flings")
        out.append(RootOutlook(cross.root, cross.by, trusts_new, trusts_old, aia, ok, needs, text, evidence))
    return tuple(out)
