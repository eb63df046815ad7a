"""What a TLS client says before and after the handshake: its ClientHello and its alerts (pure).

The ClientHello is parsed by tlslite-ng (``tlslite.messages.ClientHello`` and the extension
classes it builds), not by hand: it knows every TLS 1.3 extension and names every code point.
We only split TLS records, which is a five-byte header. Alert names follow RFC 8446 section 6.
"""

from __future__ import annotations

import hashlib
import ssl
import warnings
from dataclasses import dataclass, field
from functools import cache

from companion.errors import ProtocolError

# tlslite's package __init__ imports its asyncore integration, deprecated in Python 3.11; we use
# none of it, so the warning says nothing about this code.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from tlslite.constants import AlertDescription, CipherSuite, ExtensionType, GroupName, SignatureScheme
    from tlslite.errors import TLSError
    from tlslite.extensions import (
        ALPNExtension,
        SignatureAlgorithmsExtension,
        SNIExtension,
        SupportedGroupsExtension,
        SupportedVersionsExtension,
    )
    from tlslite.messages import ClientHello
    from tlslite.utils.codec import DecodeError, Parser

RECORD_HANDSHAKE = 22
RECORD_ALERT = 21
HANDSHAKE_CLIENT_HELLO = 1
# A ClientHello with every extension a browser sends is ~2 kB (post-quantum key shares: ~3 kB);
# anything past this is not a hello we want to buffer.
MAX_HELLO_BYTES = 64 * 1024

_VERSION_NAMES = {(3, 0): "SSL3", (3, 1): "1.0", (3, 2): "1.1", (3, 3): "1.2", (3, 4): "1.3"}


def is_grease(value: int) -> bool:
    """RFC 8701 GREASE values (0x?A?A with both bytes equal) carry no meaning: drop them."""
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


@dataclass(frozen=True)
class ClientHelloFacts:
    """What one ClientHello offered, with names; GREASE values removed."""

    legacy_version: str
    versions: tuple[str, ...]  # from supported_versions, else the legacy version alone
    cipher_suites: tuple[int, ...]
    signature_algorithms: tuple[str, ...]
    groups: tuple[str, ...]
    sni: str | None
    alpn: tuple[str, ...]
    extensions: tuple[str, ...]  # in the order sent
    raw_length: int = 0

    @property
    def cipher_names(self) -> tuple[str, ...]:
        """IANA names of the offered suites (``TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256``)."""
        return tuple(iana_cipher_name(c) for c in self.cipher_suites)

    @property
    def openssl_ciphers(self) -> tuple[str, ...]:
        """OpenSSL names of the offered TLS <= 1.2 suites this machine's OpenSSL knows (profile format)."""
        names = openssl_cipher_names()
        return tuple(names[c] for c in self.cipher_suites if c in names)

    @property
    def fingerprint(self) -> str:
        """A short stable id of the TLS stack: versions, suites, groups, signature algorithms and the
        set of extensions (order left out: some stacks shuffle it on purpose)."""
        text = "|".join([",".join(self.versions), ",".join(map(str, self.cipher_suites)), ",".join(self.groups),
                         ",".join(self.signature_algorithms), ",".join(sorted(self.extensions))])
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict (names, not numbers)."""
        return {"legacy_version": self.legacy_version, "versions": list(self.versions),
                "cipher_suites": list(self.cipher_names), "openssl_ciphers": list(self.openssl_ciphers),
                "signature_algorithms": list(self.signature_algorithms), "groups": list(self.groups),
                "sni": self.sni, "alpn": list(self.alpn), "extensions": list(self.extensions),
                "fingerprint": self.fingerprint}


@dataclass
class RecordReader:
    """Splits a client's byte stream into TLS records (type, payload), keeping what is incomplete."""

    buffer: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Add bytes; return every record now complete."""
        self.buffer += data
        out: list[tuple[int, bytes]] = []
        while len(self.buffer) >= 5:
            length = int.from_bytes(self.buffer[3:5], "big")
            if len(self.buffer) < 5 + length:
                break
            out.append((self.buffer[0], bytes(self.buffer[5:5 + length])))
            del self.buffer[:5 + length]
        return out


def looks_like_tls(first: bytes) -> bool:
    """A TLS connection opens with a handshake record (0x16, major version 3)."""
    return len(first) >= 2 and first[0] == RECORD_HANDSHAKE and first[1] == 3


def hello_message(records: list[tuple[int, bytes]]) -> bytes | None:
    """The complete ClientHello handshake message from the first handshake records, once all arrived.

    Raises ProtocolError when the stream cannot be a ClientHello.
    """
    data = bytearray()
    for kind, payload in records:
        if kind != RECORD_HANDSHAKE:
            raise ProtocolError(f"expected a handshake record, got record type {kind}")
        data += payload
        if len(data) >= 4:
            if data[0] != HANDSHAKE_CLIENT_HELLO:
                raise ProtocolError(f"the first handshake message is type {data[0]}, not a ClientHello")
            length = int.from_bytes(data[1:4], "big")
            if length > MAX_HELLO_BYTES:
                raise ProtocolError(f"ClientHello of {length} bytes is larger than {MAX_HELLO_BYTES}")
            if len(data) >= 4 + length:
                return bytes(data[:4 + length])
    return None


def parse_client_hello(message: bytes) -> ClientHelloFacts:
    """Parse a ClientHello handshake message (type byte included); ProtocolError if malformed."""
    if not message or message[0] != HANDSHAKE_CLIENT_HELLO:
        raise ProtocolError("not a ClientHello message")
    try:
        hello = ClientHello().parse(Parser(bytearray(message[1:])))
    except (DecodeError, TLSError, IndexError, ValueError, SyntaxError, AssertionError) as exc:
        raise ProtocolError(f"malformed ClientHello: {exc}") from exc
    exts = hello.extensions or []
    legacy = _version_name(tuple(hello.client_version))
    versions: tuple[str, ...] = (legacy,)
    sigalgs: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    for ext in exts:
        if isinstance(ext, SupportedVersionsExtension) and ext.versions:
            versions = tuple(_version_name(tuple(v)) for v in ext.versions if not is_grease(v[0] << 8 | v[1]))
        elif isinstance(ext, SignatureAlgorithmsExtension) and ext.sigalgs:
            sigalgs = tuple(_sigalg_name(tuple(s)) for s in ext.sigalgs if not is_grease(s[0] << 8 | s[1]))
        elif isinstance(ext, SupportedGroupsExtension) and ext.groups:
            groups = tuple(_group_name(g) for g in ext.groups if not is_grease(g))
        elif isinstance(ext, SNIExtension) and ext.hostNames:
            sni = bytes(ext.hostNames[0]).decode("ascii", "replace")
        elif isinstance(ext, ALPNExtension) and ext.protocol_names:
            alpn = tuple(bytes(p).decode("ascii", "replace") for p in ext.protocol_names)
    return ClientHelloFacts(
        legacy_version=legacy, versions=versions,
        cipher_suites=tuple(c for c in hello.cipher_suites if not is_grease(c)),
        signature_algorithms=sigalgs, groups=groups, sni=sni, alpn=alpn,
        extensions=tuple(_extension_name(e.extType) for e in exts if not is_grease(e.extType)),
        raw_length=len(message))


def alert_name(description: int) -> str:
    """The RFC name of an alert description (``48`` -> ``unknown_ca``)."""
    return str(AlertDescription.toStr(description))


def plaintext_alert(payload: bytes) -> str | None:
    """The description of an unencrypted alert record's payload (level, description), if it is one."""
    if len(payload) != 2:
        return None  # an encrypted alert (TLS 1.3 after ServerHello) is longer
    return alert_name(payload[1])


# OpenSSL reports an alert it received as the reason ``SSLV3_ALERT_<NAME>`` / ``TLSV1_ALERT_<NAME>``
# / ``TLSV13_ALERT_<NAME>`` (ssl/ssl_err.c); that is how we learn a TLS 1.3 client's encrypted alert.
_RECEIVED_ALERT_PREFIXES = ("SSLV3_ALERT_", "TLSV1_ALERT_", "TLSV13_ALERT_")


def received_alert(exc: ssl.SSLError) -> str | None:
    """The alert the peer sent, when OpenSSL's error says the handshake failed because of one."""
    reason = exc.reason or ""
    for prefix in _RECEIVED_ALERT_PREFIXES:
        if reason.startswith(prefix):
            return reason.removeprefix(prefix).lower()
    return None


def _version_name(version: tuple[int, ...]) -> str:
    return _VERSION_NAMES.get((version[0], version[1]), f"0x{version[0]:02x}{version[1]:02x}")


def _sigalg_name(scheme: tuple[int, ...]) -> str:
    name = SignatureScheme.toRepr(scheme)
    return str(name) if name is not None else f"0x{scheme[0]:02x}{scheme[1]:02x}"


def _group_name(group: int) -> str:
    name = GroupName.toRepr(group)
    return str(name) if name is not None else f"0x{group:04x}"


def _extension_name(ext_type: int) -> str:
    name = ExtensionType.toRepr(ext_type)
    return str(name) if name is not None else f"0x{ext_type:04x}"


def iana_cipher_name(code: int) -> str:
    """The IANA name of a cipher suite code, or its hex value when unknown."""
    name = CipherSuite.ietfNames.get(code)
    return str(name) if name is not None else f"0x{code:04x}"


@cache
def openssl_cipher_names() -> dict[int, str]:
    """Cipher suite code -> OpenSSL name, for every suite this machine's OpenSSL knows."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.set_ciphers("ALL:COMPLEMENTOFALL:@SECLEVEL=0")
    return {int(c["id"]) & 0xFFFF: str(c["name"]) for c in ctx.get_ciphers()}
