"""ClientHello and alert parsing (companion.lab.hello) on real hellos made by OpenSSL in memory."""

from __future__ import annotations

import ssl

import pytest

from companion.errors import ProtocolError
from companion.lab.hello import (
    RecordReader,
    hello_message,
    is_grease,
    looks_like_tls,
    parse_client_hello,
    plaintext_alert,
)


def client_hello(ctx: ssl.SSLContext, server_hostname: str | None) -> bytes:
    """The bytes an OpenSSL client sends first (its ClientHello records), without any socket."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def facts_of(data: bytes):
    message = hello_message(RecordReader().feed(data))
    assert message is not None
    return parse_client_hello(message)


def test_a_tls12_only_client_with_two_ciphers_is_read_as_configured() -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384")
    ctx.set_alpn_protocols(["http/1.1"])
    facts = facts_of(client_hello(ctx, "tv.example"))
    assert facts.versions == ("1.2",)
    assert facts.openssl_ciphers == ("ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384")  # as set
    assert facts.sni == "tv.example"
    assert facts.alpn == ("http/1.1",)
    assert "supported_versions" not in facts.extensions
    assert "TLS_EMPTY_RENEGOTIATION_INFO_SCSV" in facts.cipher_names


def test_a_tls13_client_offers_its_versions_groups_and_signature_algorithms() -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    facts = facts_of(client_hello(ctx, "tv.example"))
    assert facts.versions == ("1.3",)
    assert facts.legacy_version == "1.2"  # TLS 1.3 hides behind 1.2 in the legacy field (RFC 8446 4.1.2)
    assert "x25519" in facts.groups
    assert "rsa_pss_rsae_sha256" in facts.signature_algorithms
    assert {"supported_versions", "key_share", "server_name"} <= set(facts.extensions)


def test_no_sni_is_sent_for_an_ip_literal() -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    assert facts_of(client_hello(ctx, "192.0.2.1")).sni is None


def test_a_hello_split_over_records_and_reads_is_joined() -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    data = client_hello(ctx, "tv.example")
    body = data[5:]
    # Re-frame the one handshake message as three records, delivered one byte at a time.
    thirds = [body[: len(body) // 3], body[len(body) // 3: 2 * len(body) // 3], body[2 * len(body) // 3:]]
    framed = b"".join(b"\x16\x03\x01" + len(p).to_bytes(2, "big") + p for p in thirds)
    reader, records = RecordReader(), []
    for i in range(len(framed)):
        records += reader.feed(framed[i:i + 1])
        if i < len(framed) - 1:
            assert hello_message(records) is None
    assert hello_message(records) == body
    assert facts_of(data).fingerprint == parse_client_hello(body).fingerprint


def test_fingerprint_differs_between_stacks_and_ignores_extension_order() -> None:
    a = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    b = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    b.maximum_version = ssl.TLSVersion.TLSv1_2
    assert facts_of(client_hello(a, "x.example")).fingerprint == facts_of(client_hello(a, "y.example")).fingerprint
    assert facts_of(client_hello(a, "x.example")).fingerprint != facts_of(client_hello(b, "x.example")).fingerprint


@pytest.mark.parametrize("message", [b"", b"\x02\x00\x00\x01\x00", b"\x01\x00\x00\x05\x03\x03\x00\x00\x00"])
def test_what_is_not_a_clienthello_is_a_protocol_error(message: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_client_hello(message)


def test_a_stream_that_does_not_start_with_a_hello_is_refused() -> None:
    with pytest.raises(ProtocolError, match="record type 23"):
        hello_message([(23, b"\x00" * 10)])
    with pytest.raises(ProtocolError, match="larger than"):
        hello_message([(22, b"\x01\xff\xff\xff")])


def test_grease_tls_and_alerts() -> None:
    assert is_grease(0x0A0A) and is_grease(0xFAFA) and not is_grease(0x0A1A) and not is_grease(0x1301)
    assert looks_like_tls(b"\x16\x03\x01") and not looks_like_tls(b"GET / HTTP/1.1")
    assert plaintext_alert(b"\x02\x30") == "unknown_ca"
    assert plaintext_alert(b"\x02\x2a") == "bad_certificate"
    assert plaintext_alert(b"\x17" * 19) is None  # an encrypted TLS 1.3 alert
