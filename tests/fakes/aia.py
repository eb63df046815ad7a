"""A loopback "CA Issuers" HTTP server and a PKI that needs it: the 2026 plex.direct situation.

The chain mirrors Let's Encrypt's move to Root YR: the server sends leaf + intermediate "YR1",
whose root "YR" is not in the verifier's store; the store holds "X1", and a cross-signed "YR
by X1" certificate is published at the URL that YR1's Authority Information Access extension
names (CA Issuers). A client that follows AIA builds leaf -> YR1 -> YR(by X1) -> X1; one that does
not stops at YR1.

Usage::

    async with FakeCaIssuers() as issuers:
        pki = make_aia_pki(issuers.url("yr-by-x1.der"))
        issuers.publish("yr-by-x1.der", pki.cross_der)
        FakePlexServer(chain=pki.chain)     # trust pki.trusted_root, not pki.chain.root
        issuers.fetches["yr-by-x1.der"]     # how often it was fetched
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import secrets
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from tests.fakes.plex_server import PlexChain


class FakeCaIssuers:
    """Serves certificates by name over plain HTTP on 127.0.0.1 and counts every fetch."""

    def __init__(self) -> None:
        self._files: dict[str, bytes] = {}
        self.fetches: Counter[str] = Counter()
        self._runner: web.AppRunner | None = None
        self.port = 0

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def publish(self, name: str, data: bytes) -> None:
        self._files[name] = data

    async def _serve(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.fetches[name] += 1
        if name not in self._files:
            return web.Response(status=404)
        return web.Response(body=self._files[name], content_type="application/pkix-cert")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{name}", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeCaIssuers:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


@dataclass(frozen=True)
class AiaPki:
    chain: PlexChain  # root = YR (untrusted), intermediate = YR1 (with AIA), leaf
    trusted_root: x509.Certificate  # X1: the only root the verifier should hold
    cross_der: bytes  # YR cross-signed by X1: what the CA Issuers URL serves


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Fake ISRG"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(subject: x509.Name, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
        issuer_key: ec.EllipticCurvePrivateKey, *, aia_url: str | None = None) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(issuer).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    )
    if aia_url is not None:
        builder = builder.add_extension(x509.AuthorityInformationAccess([
            x509.AccessDescription(AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(aia_url)),
        ]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_aia_pki(ca_issuers_url: str, *, addresses: tuple[str, ...] = ("127.0.0.1",)) -> AiaPki:
    """X1 (trusted) cross-signs YR (untrusted); YR1 points at the cross-sign through AIA."""
    server_hash = secrets.token_hex(16)
    x1_key, yr_key, yr1_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(4))
    x1_name, yr_name, yr1_name = _name("Fake ISRG Root X1"), _name("Fake ISRG Root YR"), _name("Fake YR1")
    x1 = _ca(x1_name, x1_key, x1_name, x1_key)
    yr = _ca(yr_name, yr_key, yr_name, yr_key)
    cross = _ca(yr_name, yr_key, x1_name, x1_key)
    yr1 = _ca(yr1_name, yr1_key, yr_name, yr_key, aia_url=ca_issuers_url)
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(f"*.{server_hash}.plex.direct")]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"*.{server_hash}.plex.direct")]))
        .issuer_name(yr1_name).public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(yr1_key.public_key()), critical=False)
        .sign(yr1_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    chain = PlexChain(
        hash=server_hash,
        root_pem=yr.public_bytes(pem),
        intermediate_pem=yr1.public_bytes(pem),
        leaf_pem=leaf.public_bytes(pem),
        leaf_key_pem=leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    return AiaPki(chain=chain, trusted_root=x1, cross_der=cross.public_bytes(serialization.Encoding.DER))


def write_gen_y_profiles(root: Path, pki: AiaPki) -> None:
    """A store with the test X1, one with the test YR cross-signed by it, and three devices."""
    (root / "roots" / "pem").mkdir(parents=True)
    (root / "devices").mkdir(parents=True)
    for name, cert in (("test-x1", pki.trusted_root), ("test-yr", pki.chain.root)):
        (root / "roots" / "pem" / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
        extra = ("cross_signs:\n  - {root: test-yr, by: test-x1, until: \"2099-01-01\"}\n"
                 if name == "test-yr" else "")
        (root / "roots" / f"{name}-store.yaml").write_text(
            f"name: {name}-store\ntrusted_certificates:\n  - {{name: {name}, fingerprint: {digest}}}\n{extra}")
    for device, tls in (("tv-x1-only", "follows_aia: false"), ("tv-x1-aia", "follows_aia: true"),
                        ("tv-yr", "follows_aia: false\n  roots: {store: test-x1-store, add: [test-yr]}")):
        roots = "" if "roots:" in tls else "\n  roots: {store: test-x1-store}"
        (root / "devices" / f"{device}.yaml").write_text(
            f"id: {device}\nname: {device}\nmatch: []\ntransport: companion\nmedia: {{https: true, http: true}}\n"
            f"tls:\n  {tls}{roots}\ndns: {{resolver: public}}\n"
            "evidence:\n  - {claim: \"made up for this test\", confidence: assumed, about: [roots.test-yr]}\n")
