"""The lab's private CA, made fresh for each capture run, and the chain each lab endpoint serves.

Nothing here is trusted by any device: a verifying client must reject every lab chain (that is
what the capture records, with the alert it sends). What the chains vary is what a device's
reaction can tell apart: RSA or ECDSA keys, an intermediate sent or left for the client to fetch
through the leaf's AIA "CA Issuers" URL (RFC 5280 section 4.2.2.1).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from dataclasses import dataclass, field
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

KeyType = Literal["rsa", "ecdsa"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class LabChain:
    """One endpoint's certificates: what it sends, and the intermediate it may withhold."""

    leaf_pem: bytes
    key_pem: bytes = field(repr=False)
    intermediate_pem: bytes
    send_intermediate: bool

    @property
    def served_pem(self) -> bytes:
        """The chain as the endpoint sends it (leaf first)."""
        return self.leaf_pem + (self.intermediate_pem if self.send_intermediate else b"")


def _key(kind: KeyType) -> PrivateKey:
    if kind == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "companion-bridge capture lab"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


class LabPki:
    """A private root per key type, an intermediate under each, and leaves for the given names.

    ``hash`` (32 hex characters, from the RSA root's key) names the lab in plex.direct-shaped host
    names, as a Plex server's hash names it.
    """

    def __init__(self, *, now: dt.datetime | None = None, validity: dt.timedelta = dt.timedelta(days=2)) -> None:
        self.now = now or dt.datetime.now(dt.UTC)
        self.not_before = self.now - dt.timedelta(hours=1)
        self.not_after = self.now + validity
        self._cas: dict[KeyType, tuple[x509.Certificate, PrivateKey, x509.Certificate, PrivateKey]] = {}
        for kind in ("rsa", "ecdsa"):
            root_key = _key(kind)
            root = self._sign(_name(f"Lab Root {kind.upper()}"), root_key.public_key(), root_key,
                              _name(f"Lab Root {kind.upper()}"), ca=True)
            inter_key = _key(kind)
            inter = self._sign(_name(f"Lab Intermediate {kind.upper()}"), inter_key.public_key(), root_key,
                               root.subject, ca=True, issuer_cert=root)
            self._cas[kind] = (root, root_key, inter, inter_key)
        rsa_root = self._cas["rsa"][0]
        spki = rsa_root.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
        self.hash = hashlib.sha256(spki).hexdigest()[:32]

    def root_pem(self, kind: KeyType = "rsa") -> bytes:
        """One lab root (to trust it in a test client, or to show a user what the lab used)."""
        return self._cas[kind][0].public_bytes(serialization.Encoding.PEM)

    @property
    def roots_pem(self) -> bytes:
        """Both lab roots (RSA and ECDSA) in PEM."""
        return self.root_pem("rsa") + self.root_pem("ecdsa")

    def intermediate_der(self, kind: KeyType) -> bytes:
        """The ``kind`` intermediate in DER, as an AIA "CA Issuers" URL serves it."""
        return self._cas[kind][2].public_bytes(serialization.Encoding.DER)

    def chain(self, kind: KeyType, names: tuple[str, ...], *, send_intermediate: bool = True,
              aia_url: str | None = None) -> LabChain:
        """A leaf for ``names`` (DNS names or IP literals) under the ``kind`` intermediate."""
        _root, _root_key, inter, inter_key = self._cas[kind]
        leaf_key = _key(kind)
        sans: list[x509.GeneralName] = []
        for name in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        leaf = self._sign(_name(names[0] if names else "lab"), leaf_key.public_key(), inter_key, inter.subject,
                          ca=False, sans=sans, aia_url=aia_url, issuer_cert=inter)
        return LabChain(leaf_pem=leaf.public_bytes(serialization.Encoding.PEM), key_pem=_pem(leaf_key),
                        intermediate_pem=inter.public_bytes(serialization.Encoding.PEM),
                        send_intermediate=send_intermediate)

    def _sign(self, subject: x509.Name, public_key: object, signer: PrivateKey, issuer: x509.Name, *, ca: bool,
              sans: list[x509.GeneralName] | None = None, aia_url: str | None = None,
              issuer_cert: x509.Certificate | None = None) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                   .public_key(public_key)  # type: ignore[arg-type]
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(self.not_before).not_valid_after(self.not_after)
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key),  # type: ignore[arg-type]
                                  critical=False))
        if issuer_cert is not None:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_cert.public_key()),  # type: ignore[arg-type]
                critical=False)
        if ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
                decipher_only=False), critical=True)
        else:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, key_encipherment=isinstance(signer, rsa.RSAPrivateKey),
                content_commitment=False, data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                                            critical=False)
            builder = builder.add_extension(x509.SubjectAlternativeName(sans or []), critical=False)
            if aia_url:
                builder = builder.add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
                    AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(aia_url))]),
                    critical=False)
        return builder.sign(signer, hashes.SHA256())
