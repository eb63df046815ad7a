"""plex.direct names: build and parse ``<dashed-ip>.<hash>.plex.direct``, and read the hash from a cert.

Pure: strings and certificates in, strings out; no sockets, no event loop, no clock.

Wire facts (SECURITY.md section 1, research/secure-connections-and-tls.md section 1): Plex's DNS
answers ``<dashed-ip>.<hash>.plex.direct`` with the address written in its first label. IPv4 dots
become dashes; IPv6 is fully expanded to eight groups of four hex digits and every ``:`` becomes
``-``. The hash is 32 hex characters, one per server, and the server's certificate carries the
wildcard ``*.<hash>.plex.direct``.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass

from cryptography import x509

from companion.errors import ProtocolError

SUFFIX = "plex.direct"
_HASH_RE = re.compile(r"[0-9a-f]{32}")
_IPV4_LABEL_RE = re.compile(r"[0-9]{1,3}(?:-[0-9]{1,3}){3}")
_IPV6_LABEL_RE = re.compile(r"[0-9a-f]{4}(?:-[0-9a-f]{4}){7}")
_SHOWN = 80


@dataclass(frozen=True)
class PlexDirectName:
    """A parsed plex.direct host name: the address it encodes and the server's hash."""

    address: str  # canonical IP literal (IPv6 compressed, as ipaddress prints it)
    hash: str  # 32 lowercase hex characters

    @property
    def name(self) -> str:
        """The full plex.direct name (``<dashed-ip>.<hash>.plex.direct``)."""
        return build_name(self.address, self.hash)


def _shown(text: str) -> str:
    return repr(text if len(text) <= _SHOWN else text[:_SHOWN] + "...")


def normalize_hash(value: str) -> str:
    """The hash in lowercase, or ProtocolError when it is not 32 hex characters."""
    lowered = value.strip().lower()
    if not _HASH_RE.fullmatch(lowered):
        raise ProtocolError(f"plex.direct hash {_shown(value)} is not 32 hex characters")
    return lowered


@functools.lru_cache(maxsize=1024)  # pure, and asked for on every fling decision
def dashed_address(address: str) -> str:
    """The first label of a plex.direct name for an IP literal (IPv6 fully expanded)."""
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError as exc:
        raise ProtocolError(f"{_shown(address)} is not an IP address; plex.direct names need one") from exc
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            raise ProtocolError(f"{_shown(address)} has a zone index; plex.direct cannot name it")
        return ip.exploded.replace(":", "-")
    return str(ip).replace(".", "-")


def build_name(address: str, server_hash: str) -> str:
    """``<dashed-ip>.<hash>.plex.direct`` for a server address and its certificate hash."""
    return f"{dashed_address(address)}.{normalize_hash(server_hash)}.{SUFFIX}"


def parse_name(name: str) -> PlexDirectName:
    """Split a plex.direct host name into its address and hash; ProtocolError when it is not one."""
    host = name.strip().lower().rstrip(".")
    labels = host.split(".")
    if len(labels) != 4 or ".".join(labels[2:]) != SUFFIX:
        raise ProtocolError(f"{_shown(name)} is not of the form <dashed-ip>.<hash>.plex.direct")
    first, server_hash = labels[0], labels[1]
    if not _HASH_RE.fullmatch(server_hash):
        raise ProtocolError(f"{_shown(name)}: the second label is not a 32-hex-character hash")
    if _IPV4_LABEL_RE.fullmatch(first):
        text = first.replace("-", ".")
    elif _IPV6_LABEL_RE.fullmatch(first):
        text = first.replace("-", ":")
    else:
        raise ProtocolError(f"{_shown(name)}: the first label is not a dashed IPv4 or expanded IPv6 address")
    try:
        ip = ipaddress.ip_address(text)
    except ValueError as exc:
        raise ProtocolError(f"{_shown(name)}: the first label is not a valid address") from exc
    return PlexDirectName(address=str(ip), hash=server_hash)


def is_plex_direct(name: str) -> bool:
    """True when ``name`` is a well-formed ``<dashed-ip>.<hash>.plex.direct`` host name."""
    try:
        parse_name(name)
    except ProtocolError:
        return False
    return True


def hash_from_dns_names(names: list[str] | tuple[str, ...]) -> str | None:
    """The hash of the first ``*.<hash>.plex.direct`` among certificate DNS names, if any."""
    for raw in names:
        labels = raw.strip().lower().rstrip(".").split(".")
        if (len(labels) == 4 and labels[0] == "*" and ".".join(labels[2:]) == SUFFIX
                and _HASH_RE.fullmatch(labels[1])):
            return labels[1]
    return None


def hash_from_certificate(cert: x509.Certificate) -> str | None:
    """The plex.direct hash from a certificate's SAN wildcard, or None when it has none."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    except ValueError:  # a malformed extension: treat as "no plex.direct name", not a crash
        return None
    return hash_from_dns_names(tuple(san.get_values_for_type(x509.DNSName)))
