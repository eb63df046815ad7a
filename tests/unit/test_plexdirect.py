"""plex.direct names: building, parsing and reading the hash from a certificate."""

from __future__ import annotations

import ipaddress

import pytest
import trustme
from cryptography import x509

from companion.errors import ProtocolError
from companion.proto.plexdirect import (
    build_name,
    dashed_address,
    hash_from_certificate,
    is_plex_direct,
    parse_name,
)

HASH = "625d406a00ac415b978ddb368c0d1289"


def test_ipv4_address_becomes_dashed_first_label():
    assert build_name("192.168.1.10", HASH) == f"192-168-1-10.{HASH}.plex.direct"


def test_ipv6_address_is_fully_expanded_with_dashes():
    assert build_name("2001:db8::1", HASH) == (
        f"2001-0db8-0000-0000-0000-0000-0000-0001.{HASH}.plex.direct"
    )


def test_uppercase_hash_is_normalised_to_lowercase():
    assert HASH in build_name("10.0.0.1", HASH.upper())


@pytest.mark.parametrize("address", ["192.168.1.10", "10.0.0.215", "2001:db8::1", "fe80::1:2", "::"])
def test_parse_inverts_build(address):
    parsed = parse_name(build_name(address, HASH))
    assert parsed.hash == HASH
    assert parsed.address == str(ipaddress.ip_address(address))
    assert parsed.name == build_name(address, HASH)


def test_parse_accepts_trailing_dot_and_any_case():
    parsed = parse_name(f"10-0-0-1.{HASH.upper()}.PLEX.DIRECT.")
    assert (parsed.address, parsed.hash) == ("10.0.0.1", HASH)


@pytest.mark.parametrize(
    "name",
    [
        f"{HASH}.plex.direct",  # bare hash, no address label
        f"a.192-168-1-10.{HASH}.plex.direct",  # one label too deep
        f"192-168-1-10.{HASH}.plex.example",
        "192-168-1-10.nothex.plex.direct",
        f"192-168-1-300.{HASH}.plex.direct",  # not an address
        f"2001-db8-0-0-0-0-0-1.{HASH}.plex.direct",  # IPv6 not expanded
        "",
    ],
)
def test_malformed_names_are_rejected_with_protocol_error(name):
    with pytest.raises(ProtocolError):
        parse_name(name)
    assert not is_plex_direct(name)


@pytest.mark.parametrize(("address", "hash_"), [("server.local", HASH), ("10.0.0.1", "abc"),
                                                 ("fe80::1%eth0", HASH)])
def test_build_refuses_non_ip_addresses_and_bad_hashes(address, hash_):
    with pytest.raises(ProtocolError, match=r"plex\.direct|hex|address"):
        build_name(address, hash_)


def test_dashed_address_accepts_bracketed_ipv6():
    assert dashed_address("[::1]") == "0000-0000-0000-0000-0000-0000-0000-0001"


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def test_hash_is_read_from_the_certificate_wildcard(ca):
    cert = x509.load_pem_x509_certificate(
        ca.issue_cert("127.0.0.1", f"*.{HASH}.plex.direct").cert_chain_pems[0].bytes()
    )
    assert hash_from_certificate(cert) == HASH


def test_certificate_without_plex_direct_wildcard_has_no_hash(ca):
    cert = x509.load_pem_x509_certificate(
        ca.issue_cert("plex.example.com", f"x.{HASH}.plex.direct").cert_chain_pems[0].bytes()
    )
    assert hash_from_certificate(cert) is None
