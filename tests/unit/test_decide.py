"""The decision table: every failing link, under every policy, gives the mode and reasons users see."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from companion.security.decide import decide, explain
from companion.security.facts import DnsFacts, ServerFacts
from companion.security.profiles import Profile, RootsSpec, TlsCaps
from tests.fakes.plex_server import make_plex_chain

ADDRESS = "192.168.1.10"
PORT = 32400
NOW = dt.datetime.now(dt.UTC)


def profile(*, https=True, http=True, resolver="lan", **tls):
    return Profile(id="test-tv", name="Test TV", match=(), transport="companion", media_https=https,
                   media_http=http, tls=TlsCaps(**tls), roots=RootsSpec(), dns_resolver=resolver)


def dns_facts(outcome, name="x", answers=()):
    return DnsFacts(outcome, name, tuple(answers), "192.168.1.1:53", f"outcome {outcome}")


@pytest.fixture(scope="module")
def pki():
    rsa = make_plex_chain(key_type="rsa")
    return {
        "rsa": rsa,
        "other": make_plex_chain(key_type="rsa", root_name="Some Other Root"),
        "ecdsa": make_plex_chain(key_type="ecdsa"),
        "small": make_plex_chain(key_type="rsa", rsa_bits=1024),
        "no-hash": trustme.CA(key_type=trustme.KeyType.RSA),
    }


def server_facts(chain, *, with_intermediate=True, versions=("1.2", "1.3"),
                 ciphers=("ECDHE-RSA-AES128-GCM-SHA256",)):
    return ServerFacts.from_chain(ADDRESS, PORT, chain.chain_der(with_intermediate=with_intermediate),
                                  tls_versions=versions, ciphers=ciphers)


def ok_dns(chain):
    return dns_facts("ok", chain.name(ADDRESS), [ADDRESS])


# Each scenario: (kwargs for decide, the reason code that breaks the secure fling, or None when secure).
def scenario(pki, name):
    rsa = pki["rsa"]
    base = {"profile": profile(), "roots": [rsa.root], "facts": server_facts(rsa), "dns": ok_dns(rsa),
            "now": NOW}
    if name == "all-good":
        return base, None
    if name == "root-absent":
        return {**base, "roots": [pki["other"].root]}, "root-missing"
    if name == "intermediate-missing":
        return {**base, "facts": server_facts(rsa, with_intermediate=False)}, "intermediate-missing"
    if name == "expired":
        return {**base, "now": rsa.leaf.not_valid_after_utc + dt.timedelta(hours=1)}, "cert-expired"
    if name == "not-yet-valid":
        return {**base, "now": rsa.leaf.not_valid_before_utc - dt.timedelta(hours=1)}, "cert-not-yet-valid"
    if name == "wrong-hash":
        return {**base, "server_hash": "f" * 32}, "name-mismatch"
    if name == "tls-versions-disjoint":
        return {**base, "profile": profile(min_version="1.0", max_version="1.1")}, "tls-version-mismatch"
    if name == "ciphers-disjoint":
        return ({**base, "profile": profile(max_version="1.2", ciphers=("AES128-SHA", "DES-CBC3-SHA")),
                 "facts": server_facts(rsa, versions=("1.2",))}, "cipher-mismatch")
    if name == "rsa-too-small":
        small = pki["small"]
        return ({**base, "roots": [small.root], "facts": server_facts(small), "dns": ok_dns(small)},
                "rsa-key-too-small")
    if name == "ecdsa-unsupported":
        ecd = pki["ecdsa"]
        return ({**base, "profile": profile(ecdsa=False), "roots": [ecd.root], "facts": server_facts(ecd),
                 "dns": ok_dns(ecd)}, "ecdsa-not-supported")
    if name == "device-no-tls":
        return {**base, "profile": profile(https=False)}, "device-no-tls"
    if name == "server-no-tls":
        return {**base, "facts": None, "dns": None}, "server-no-tls"
    if name == "dns-stripped-lan":
        return {**base, "dns": dns_facts("stripped", rsa.name(ADDRESS))}, "dns-stripped"
    if name == "dns-unreachable-lan":
        return {**base, "dns": dns_facts("unreachable", rsa.name(ADDRESS))}, "dns-unreachable"
    if name == "dns-wrong-address-lan":
        return ({**base, "dns": dns_facts("wrong-address", rsa.name(ADDRESS), ["10.9.9.9"])},
                "dns-wrong-address")
    if name == "dns-stripped-public-resolver":
        return {**base, "profile": profile(resolver="public"),
                "dns": dns_facts("stripped", rsa.name(ADDRESS))}, None
    if name == "dns-unreachable-public-resolver":
        return {**base, "profile": profile(resolver="public"),
                "dns": dns_facts("unreachable", rsa.name(ADDRESS))}, None
    raise AssertionError(name)


SCENARIOS = [
    "all-good", "root-absent", "intermediate-missing", "expired", "not-yet-valid", "wrong-hash",
    "tls-versions-disjoint", "ciphers-disjoint", "rsa-too-small", "ecdsa-unsupported", "device-no-tls",
    "server-no-tls", "dns-stripped-lan", "dns-unreachable-lan", "dns-wrong-address-lan",
    "dns-stripped-public-resolver", "dns-unreachable-public-resolver",
]
POLICIES = [("required", False), ("preferred", True), ("preferred", False), ("disabled", True)]


def codes(decision):
    return [r.code for r in decision.reasons]


@pytest.mark.parametrize(("policy", "relay"), POLICIES, ids=[f"{p}-relay={r}" for p, r in POLICIES])
@pytest.mark.parametrize("name", SCENARIOS)
def test_decision_table(pki, name, policy, relay):
    kwargs, broken = scenario(pki, name)
    decision = decide(server_address=ADDRESS, server_port=PORT, policy=policy, relay_available=relay, **kwargs)

    if policy == "disabled":
        assert (decision.mode, decision.secure, decision.token_exposed) == ("direct-insecure", False, True)
        assert codes(decision) == ["policy-disabled", "token-exposed-plaintext"]
        assert decision.stream_base == f"http://{ADDRESS}:{PORT}"
        return

    if broken is None:
        assert decision.mode == "direct-secure"
        assert decision.secure
        assert not decision.token_exposed
        assert decision.reasons == ()
        assert decision.stream_base == f"https://{pki['rsa'].name(ADDRESS)}:{PORT}"
        return

    assert not decision.secure
    assert broken in codes(decision), decision.reasons
    assert all(r.text for r in decision.reasons)
    if policy == "required":
        assert decision.mode == "refused"
        assert codes(decision)[-1] == "policy-required-refused"
        assert not decision.token_exposed
        assert decision.stream_base == ""
    elif relay and kwargs["facts"] is not None:
        assert decision.mode == "relay"
        assert codes(decision)[-1] == "relay-last-hop-plaintext"
        assert not decision.token_exposed
        assert (decision.protocol, decision.address, decision.port) == ("http", "", 0)
    else:
        assert decision.mode == "direct-insecure"
        assert decision.token_exposed
        assert codes(decision)[-1] == "token-exposed-plaintext"
        assert decision.stream_base == f"http://{ADDRESS}:{PORT}"


def test_stripped_dns_reason_names_the_dnsmasq_and_unbound_fixes(pki):
    kwargs, _ = scenario(pki, "dns-stripped-lan")
    decision = decide(server_address=ADDRESS, server_port=PORT, policy="preferred", relay_available=False,
                      **kwargs)
    text = next(r.text for r in decision.reasons if r.code == "dns-stripped")
    assert "rebind-domain-ok=/plex.direct/" in text
    assert 'private-domain: "plex.direct"' in text


def test_server_without_tls_is_not_relayed_because_the_relay_would_fetch_plain_http(pki):
    kwargs, _ = scenario(pki, "server-no-tls")
    decision = decide(server_address=ADDRESS, server_port=PORT, policy="preferred", relay_available=True,
                      **kwargs)
    assert decision.mode == "direct-insecure"


def test_device_that_plays_neither_https_nor_http_is_refused_even_when_preferred(pki):
    kwargs, _ = scenario(pki, "device-no-tls")
    kwargs["profile"] = profile(https=False, http=False)
    decision = decide(server_address=ADDRESS, server_port=PORT, policy="preferred", relay_available=True,
                      **kwargs)
    assert decision.mode == "refused"
    assert codes(decision) == ["device-no-tls", "device-no-http"]


def test_dns_not_checked_does_not_block_a_secure_fling(pki):
    kwargs, _ = scenario(pki, "all-good")
    decision = decide(server_address=ADDRESS, server_port=PORT, policy="required", relay_available=False,
                      **{**kwargs, "dns": None})
    assert decision.mode == "direct-secure"


def test_several_broken_links_are_all_reported_in_check_order(pki):
    kwargs, _ = scenario(pki, "root-absent")
    kwargs = {**kwargs, "profile": profile(min_version="1.0", max_version="1.1"),
              "dns": dns_facts("stripped", pki["rsa"].name(ADDRESS))}
    decision = decide(server_address=ADDRESS, server_port=PORT, policy="required", relay_available=False,
                      **kwargs)
    assert codes(decision) == ["root-missing", "tls-version-mismatch", "dns-stripped", "policy-required-refused"]


def test_ipv6_server_gets_an_expanded_plex_direct_name(pki):
    rsa = pki["rsa"]
    facts = replace(server_facts(rsa), address="2001:db8::10")
    decision = decide(profile=profile(resolver="public"), roots=[rsa.root], server_address="2001:db8::10",
                      server_port=PORT, facts=facts, dns=None, policy="required", relay_available=False, now=NOW)
    assert decision.address == f"2001-0db8-0000-0000-0000-0000-0000-0010.{rsa.hash}.plex.direct"
    insecure = decide(profile=profile(https=False), roots=[rsa.root], server_address="2001:db8::10",
                      server_port=PORT, facts=facts, dns=None, policy="preferred", relay_available=False, now=NOW)
    assert insecure.stream_base == f"http://[2001:db8::10]:{PORT}"


def test_certificate_without_plex_direct_name_is_reported(pki):
    leaf = pki["no-hash"].issue_cert("plex.example.com")
    der = tuple(x509.load_pem_x509_certificate(p.bytes()).public_bytes(Encoding.DER)
                for p in leaf.cert_chain_pems)
    facts = ServerFacts.from_chain(ADDRESS, PORT, der, tls_versions={"1.2"})
    decision = decide(profile=profile(), roots=[], server_address=ADDRESS, server_port=PORT, facts=facts,
                      dns=None, policy="preferred", relay_available=False, now=NOW)
    assert codes(decision) == ["no-plex-direct-hash", "token-exposed-plaintext"]


def test_explain_lists_every_check_in_order_and_agrees_with_decide(pki):
    kwargs, _ = scenario(pki, "ciphers-disjoint")
    checks = explain(server_address=ADDRESS, server_port=PORT, policy="preferred", relay_available=False,
                     **kwargs)
    assert [c.name for c in checks] == ["policy", "device-tls", "server-tls", "plex-direct-hash", "chain",
                                        "tls-version", "cipher", "dns"]
    assert [c.name for c in checks if c.passed is False] == ["cipher"]
    decision = decide(server_address=ADDRESS, server_port=PORT, policy="preferred", relay_available=False,
                      **kwargs)
    failed = [r for c in checks if c.passed is False for r in c.reasons]
    assert list(decision.reasons[:len(failed)]) == failed


def test_explain_marks_checks_that_cannot_apply_as_not_applicable(pki):
    kwargs, _ = scenario(pki, "server-no-tls")
    checks = explain(server_address=ADDRESS, server_port=PORT, policy="required", relay_available=False,
                     **kwargs)
    by_name = {c.name: c for c in checks}
    assert by_name["server-tls"].passed is False
    assert by_name["chain"].passed is None
    assert "not applicable" in by_name["chain"].detail


def test_tls13_in_common_makes_the_cipher_list_irrelevant(pki):
    rsa = pki["rsa"]
    decision = decide(profile=profile(ciphers=("AES128-SHA",)), roots=[rsa.root], server_address=ADDRESS,
                      server_port=PORT, facts=server_facts(rsa), dns=ok_dns(rsa), policy="required",
                      relay_available=False, now=NOW)
    assert decision.mode == "direct-secure"
