"""The 2026 roots: ISRG Root YR and YE ship in the isrg store with the published fingerprints, and
a device that knows only X1 verifies a leaf + YR1 chain only when it fetches the YR-by-X1 cross-sign.

The chain tests use a generated hierarchy that mirrors Let's Encrypt's (tests/fakes/aia.py): a
test "X1", a test "YR" root, a "YR1" intermediate, and "YR" cross-signed by "X1"; never the real keys.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from companion.security.facts import ServerFacts
from companion.security.profiles import CrossSign, TlsCaps, load_profiles, shipped_profiles_dir
from companion.security.trust import root_outlook, verify_chain
from tests.fakes.aia import AiaPki, make_aia_pki, write_gen_y_profiles

# Published by ISRG in its CP/CPS section 1.1 (v6.0 and later) and on letsencrypt.org/certificates.
PUBLISHED_SHA256 = {
    "isrg-root-yr": "E5:7B:7E:6F:15:0C:41:91:02:E8:D5:C0:55:72:9F:F9:67:B9:D1:A8:29:BF:00:CE:C8:9C:A6:04:EB:F4:A8:6F",
    "isrg-root-ye": "E1:4F:FC:AD:5B:00:25:73:10:06:CA:A4:3A:12:1A:22:D8:E9:70:0F:4F:B9:CF:85:2F:02:A7:08:AA:5D:56:66",
}
ADDRESS = "127.0.0.1"
NOW = dt.datetime.now(dt.UTC)


def _pem(name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((shipped_profiles_dir() / "roots" / "pem" / f"{name}.pem").read_bytes())


@pytest.mark.parametrize("name", sorted(PUBLISHED_SHA256))
def test_shipped_generation_y_roots_match_the_published_fingerprints(name: str) -> None:
    cert = _pem(name)
    digest = hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
    assert digest == PUBLISHED_SHA256[name].replace(":", "").lower()
    assert cert.subject == cert.issuer
    assert cert.subject.rfc4514_string() == f"CN=Root {name[-2:].upper()},O=ISRG,C=US"
    key = cert.public_key()
    assert cert.signature_hash_algorithm is not None
    if isinstance(key, rsa.RSAPublicKey):  # the self-signature verifies
        assert key.key_size == 4096
        key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm)
    else:
        assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp384r1"
        key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    assert cert.not_valid_after_utc == dt.datetime(2045, 9, 2, 23, 59, 59, tzinfo=dt.UTC)


def test_the_isrg_store_holds_yr_and_ye_and_their_cross_signs_by_x1_and_x2() -> None:
    shipped = load_profiles()
    assert shipped.errors == ()
    isrg = {hashlib.sha256(c.public_bytes(Encoding.DER)).hexdigest() for c in shipped.store("isrg").certificates}
    assert {v.replace(":", "").lower() for v in PUBLISHED_SHA256.values()} <= isrg
    crosses = {(c.root, c.by, c.until.date().isoformat()) for c in shipped.cross_signs}
    assert crosses == {("isrg-root-yr", "isrg-root-x1", "2032-09-02"), ("isrg-root-ye", "isrg-root-x2", "2032-09-02")}
    # Not yet in any root program's store we model: certifi has neither.
    assert _pem("isrg-root-yr") not in shipped.store("mozilla").certificates


# --- the cross-sign, with a generated hierarchy ----------------------------------------------------

@pytest.fixture(scope="module")
def pki() -> AiaPki:
    return make_aia_pki("http://127.0.0.1:9/yr-by-x1.der", addresses=(ADDRESS,))


def _check(pki: AiaPki, roots: list[x509.Certificate], *, aia: bool, send_cross: bool = False,
           until: dt.datetime = NOW + dt.timedelta(days=365)):
    sent = [*pki.chain.chain_der()]  # leaf + YR1, as PMS sends it
    if send_cross:
        sent.append(pki.cross_der)
    facts = ServerFacts.from_chain(ADDRESS, 32400, tuple(sent), tls_versions={"1.2", "1.3"})
    cross = CrossSign("test-yr", "test-x1", pki.chain.root, pki.trusted_root, until)
    return verify_chain(facts, roots, name=pki.chain.name(ADDRESS), now=NOW, tls=TlsCaps(follows_aia=aia),
                        cross_signs=[cross])


def test_a_device_with_only_x1_that_does_not_fetch_issuers_needs_the_cross_sign(pki: AiaPki) -> None:
    result = _check(pki, [pki.trusted_root], aia=False)
    assert not result.ok
    [reason] = result.reasons
    assert reason.code == "cross-sign-missing"
    assert "'Fake YR1' only" in reason.text
    assert "trusts 'Fake ISRG Root X1' but not 'Fake ISRG Root YR'" in reason.text
    assert "does not fetch missing issuers (AIA)" in reason.text
    assert "Fix:" in reason.text and "relays" in reason.text


def test_a_device_with_only_x1_that_fetches_issuers_verifies_through_the_cross_sign(pki: AiaPki) -> None:
    result = _check(pki, [pki.trusted_root], aia=True)
    assert result.ok, result.reasons
    assert "cross-signed by Fake ISRG Root X1, fetched through AIA" in " <- ".join(result.path)
    assert result.path[-1].startswith("CN=Fake ISRG Root X1")


def test_a_device_that_trusts_yr_verifies_directly(pki: AiaPki) -> None:
    result = _check(pki, [pki.chain.root], aia=False)
    assert result.ok and "cross-signed" not in " ".join(result.path)


def test_a_server_that_sends_the_cross_sign_serves_x1_only_devices_without_aia(pki: AiaPki) -> None:
    assert _check(pki, [pki.trusted_root], aia=False, send_cross=True).ok


def test_a_device_that_trusts_neither_gets_root_missing(pki: AiaPki) -> None:
    other = make_aia_pki("http://127.0.0.1:9/x.der").trusted_root
    result = _check(pki, [other], aia=True)
    assert not result.ok and [r.code for r in result.reasons] == ["root-missing"]


def test_after_the_cross_sign_ends_even_an_aia_device_fails(pki: AiaPki) -> None:
    result = _check(pki, [pki.trusted_root], aia=True, until=NOW - dt.timedelta(days=1))
    assert [r.code for r in result.reasons] == ["cross-sign-expired"]


# --- per profile --------------------------------------------------------------------------------

# What the shipped profiles say about a leaf + YR1 chain (YR) and a leaf + YE1 chain (YE).
EXPECTED = {
    "amazon-fire-tv": ("needs", "needs"), "android-mobile": ("needs", "needs"), "android-tv": ("needs", "needs"),
    "apple-tv": ("needs", "needs"), "chromecast": ("needs", "needs"), "ios": ("needs", "needs"),
    "lg-netcast": ("no", "no"), "lg-webos-4": ("no", "no"), "lg-webos-5": ("needs", "no"),
    "playstation-4": ("needs", "no"), "plex-home-theater": ("needs", "no"), "plex-media-player": ("needs", "needs"),
    "plex-mpv-shim": ("needs", "needs"),
    "plex-web": ("ok", "ok"), "roku": ("needs", "no"), "samsung-tizen-2016": ("no", "no"), "sonos": ("needs", "no"),
    "tivo-series-6": ("needs", "no"), "windows": ("ok", "ok"), "xbox-one": ("needs", "needs"),
    "default": ("needs", "no"),
}


def test_every_shipped_https_profile_says_whether_it_verifies_yr_and_ye_chains_and_on_what_evidence() -> None:
    shipped = load_profiles()
    seen = {}
    for profile in shipped.profiles.values():
        if not profile.media_https:
            continue
        outlook = root_outlook(profile, shipped.roots_for(profile), shipped.cross_signs)
        assert [o.root for o in outlook] == ["isrg-root-yr", "isrg-root-ye"]
        seen[profile.id] = tuple("ok" if o.ok else "needs" if o.needs_cross_sign else "no" for o in outlook)
        for o in outlook:
            assert o.evidence, f"{profile.id}: no claim about {o.root}, {o.by} or AIA"
            assert any(f"roots.{o.root}" in e.about for e in o.evidence) or o.root == "isrg-root-ye", profile.id
    assert seen == EXPECTED


def test_a_profile_store_with_a_cross_sign_is_read_from_yaml(tmp_path: Path, pki: AiaPki) -> None:
    write_gen_y_profiles(tmp_path, pki)
    profiles = load_profiles([tmp_path])
    assert profiles.errors == ()
    [cross] = [c for c in profiles.cross_signs if c.root == "test-yr"]
    assert (cross.by, cross.root_certificate, cross.by_certificate) == ("test-x1", pki.chain.root, pki.trusted_root)
    tv = profiles.get("tv-x1-only")
    [yr] = [o for o in root_outlook(tv, profiles.roots_for(tv), profiles.cross_signs) if o.root == "test-yr"]
    assert yr.needs_cross_sign and not yr.ok and yr.confidence == "assumed"
