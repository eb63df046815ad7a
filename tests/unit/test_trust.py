"""Chain trust per device: path building with the sent intermediates, and the reasons people read."""

from __future__ import annotations

import datetime as dt
import functools
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from companion.security.facts import ServerFacts
from companion.security.profiles import TlsCaps
from companion.security.trust import verify_chain
from tests.fakes.plex_server import make_plex_chain

ADDRESS = "192.168.1.10"
NOW = dt.datetime.now(dt.UTC)


@pytest.fixture(scope="module")
def rsa_chain():
    return make_plex_chain(key_type="rsa")


@pytest.fixture(scope="module")
def other_chain():
    return make_plex_chain(key_type="rsa", root_name="Some Other Root")


@pytest.fixture(scope="module")
def ecdsa_chain():
    return make_plex_chain(key_type="ecdsa")


@pytest.fixture(scope="module")
def rsa_leaf_under_ecdsa_ca():
    return make_plex_chain(key_type="rsa", ca_key_type="ecdsa")


@pytest.fixture(scope="module")
def small_rsa_chain():
    return make_plex_chain(key_type="rsa", rsa_bits=1024)


def facts(chain, *, with_intermediate=True):
    return ServerFacts.from_chain(ADDRESS, 32400, chain.chain_der(with_intermediate=with_intermediate),
                                  tls_versions={"1.2", "1.3"})


def check(chain, roots, *, tls=None, with_intermediate=True, now=NOW, name=None, extra=()):
    return verify_chain(facts(chain, with_intermediate=with_intermediate), roots,
                        name=name or chain.name(ADDRESS), now=now, tls=tls or TlsCaps(), extra_intermediates=extra)


def codes(result):
    return [r.code for r in result.reasons]


def test_full_chain_to_a_root_in_the_store_is_trusted_and_path_ends_at_the_root(rsa_chain):
    result = check(rsa_chain, [rsa_chain.root])
    assert result.ok
    assert result.reasons == ()
    assert len(result.path) == 3
    assert result.path[-1] == rsa_chain.root.subject.rfc4514_string()


def test_root_missing_names_the_root_the_chain_needs(rsa_chain, other_chain):
    result = check(rsa_chain, [other_chain.root])
    assert not result.ok
    assert codes(result) == ["root-missing"]
    assert "Fake ISRG Root YR" in result.reasons[0].text


def test_empty_root_store_is_root_missing(rsa_chain):
    result = check(rsa_chain, [])
    assert codes(result) == ["root-missing"]
    assert "empty" in result.reasons[0].text


def test_leaf_without_intermediate_is_intermediate_missing_for_a_device_without_aia(rsa_chain):
    result = check(rsa_chain, [rsa_chain.root], with_intermediate=False)
    assert codes(result) == ["intermediate-missing"]
    assert "AIA" in result.reasons[0].text
    assert "trustme" in result.reasons[0].text  # names the missing intermediate


def test_fetched_intermediate_helps_only_devices_that_follow_aia(rsa_chain):
    extra = [rsa_chain.intermediate]
    assert check(rsa_chain, [rsa_chain.root], with_intermediate=False, extra=extra,
                 tls=TlsCaps(follows_aia=True)).ok
    assert codes(check(rsa_chain, [rsa_chain.root], with_intermediate=False, extra=extra,
                       tls=TlsCaps(follows_aia=False))) == ["intermediate-missing"]


def test_expired_certificate_reason_carries_the_expiry_date(rsa_chain):
    later = rsa_chain.leaf.not_valid_after_utc + dt.timedelta(days=1)
    result = check(rsa_chain, [rsa_chain.root], now=later)
    assert codes(result) == ["cert-expired"]
    assert rsa_chain.leaf.not_valid_after_utc.strftime("%Y-%m-%d") in result.reasons[0].text


def test_not_yet_valid_certificate_reason_carries_the_start_date(rsa_chain):
    earlier = rsa_chain.leaf.not_valid_before_utc - dt.timedelta(days=1)
    result = check(rsa_chain, [rsa_chain.root], now=earlier)
    assert codes(result) == ["cert-not-yet-valid"]
    assert rsa_chain.leaf.not_valid_before_utc.strftime("%Y-%m-%d") in result.reasons[0].text


def test_name_with_another_hash_is_a_name_mismatch_saying_wrong_hash(rsa_chain):
    wrong = f"192-168-1-10.{'0' * 32}.plex.direct"
    result = check(rsa_chain, [rsa_chain.root], name=wrong)
    assert codes(result) == ["name-mismatch"]
    assert "wrong hash" in result.reasons[0].text
    assert rsa_chain.hash in result.reasons[0].text


def test_rsa_leaf_below_the_device_minimum_is_refused(small_rsa_chain):
    result = check(small_rsa_chain, [small_rsa_chain.root], tls=TlsCaps(rsa_min_bits=2048))
    assert codes(result) == ["rsa-key-too-small"]
    assert "1024" in result.reasons[0].text


def test_rsa_1024_leaf_passes_for_a_device_that_accepts_it(small_rsa_chain):
    assert check(small_rsa_chain, [small_rsa_chain.root], tls=TlsCaps(rsa_min_bits=1024)).ok


def test_ecdsa_chain_is_refused_for_a_device_without_ecdsa(ecdsa_chain):
    result = check(ecdsa_chain, [ecdsa_chain.root], tls=TlsCaps(ecdsa=False))
    assert codes(result) == ["ecdsa-not-supported"]
    assert check(ecdsa_chain, [ecdsa_chain.root], tls=TlsCaps(ecdsa=True)).ok


def test_rsa_leaf_signed_by_an_ecdsa_ca_is_still_ecdsa_in_the_path(rsa_leaf_under_ecdsa_ca):
    chain = rsa_leaf_under_ecdsa_ca
    result = check(chain, [chain.root], tls=TlsCaps(ecdsa=False))
    assert codes(result) == ["ecdsa-not-supported"]


def test_sha2_requirement_passes_for_a_sha256_chain(rsa_chain):
    assert check(rsa_chain, [rsa_chain.root], tls=TlsCaps(requires_sha2=True)).ok


def test_sha1_signed_leaf_is_reported_as_sha1_not_as_a_missing_issuer(tmp_path, rsa_chain):
    # cryptography will not sign with SHA-1, so the openssl command line makes this one certificate.
    inter_key = tmp_path / "inter.key"
    inter_key.write_bytes(rsa_chain.intermediate_key_pem)
    (tmp_path / "inter.pem").write_bytes(rsa_chain.intermediate_pem)
    (tmp_path / "ext.cnf").write_text(
        f"subjectAltName=DNS:*.{rsa_chain.hash}.plex.direct\nextendedKeyUsage=serverAuth\n"
        "basicConstraints=critical,CA:FALSE\nauthorityKeyIdentifier=keyid\n"
    )
    run = functools.partial(subprocess.run, cwd=tmp_path, check=True, capture_output=True)
    run(["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "leaf.key", "-subj",
         "/CN=sha1-leaf", "-out", "leaf.csr"])
    run(["openssl", "x509", "-req", "-in", "leaf.csr", "-CA", "inter.pem", "-CAkey", "inter.key",
         "-CAcreateserial", "-sha1", "-days", "30", "-extfile", "ext.cnf", "-out", "leaf.pem"])
    leaf = x509.load_pem_x509_certificate((tmp_path / "leaf.pem").read_bytes())
    der = (leaf.public_bytes(Encoding.DER), rsa_chain.intermediate.public_bytes(Encoding.DER))
    sent = ServerFacts.from_chain(ADDRESS, 32400, der, tls_versions={"1.2"})
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)  # openssl starts validity at its own now
    result = verify_chain(sent, [rsa_chain.root], name=rsa_chain.name(ADDRESS), now=later,
                          tls=TlsCaps(requires_sha2=True))
    assert [r.code for r in result.reasons] == ["sha1-signature"]
    assert "sha1-leaf" in result.reasons[0].text


def test_verify_cache_reuses_a_verdict_while_the_chain_is_valid_and_not_after(rsa_chain):
    from companion.security.trust import VerifyCache

    cache = VerifyCache()
    roots = (rsa_chain.root,)
    server = facts(rsa_chain)
    name = rsa_chain.name(ADDRESS)
    first = cache.verify(server, roots, name=name, now=NOW, tls=TlsCaps())
    again = cache.verify(server, roots, name=name, now=NOW + dt.timedelta(days=1), tls=TlsCaps())
    assert first.ok
    assert again is first, "a chain already judged for these roots is not verified again"
    expired = cache.verify(server, roots, name=name, now=rsa_chain.leaf.not_valid_after_utc + dt.timedelta(days=1),
                           tls=TlsCaps())
    assert not expired.ok
    assert "cert-expired" in codes(expired), "outside the validity window the chain is judged afresh"
    other_roots = (make_plex_chain().root,)
    assert not cache.verify(server, other_roots, name=name, now=NOW, tls=TlsCaps()).ok, "other roots, other verdict"
    assert not cache.verify(server, roots, name=name, now=NOW, tls=TlsCaps(rsa_min_bits=4096)).ok
