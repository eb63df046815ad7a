"""The bridge's own TLS client pieces: the certifi roots, the one handshake, the sent chain.

Shared by the probe (which measures what a server sends and accepts), the relay's upstream trust
(which verifies and pins a server before the token goes to it) and the root stores of the
profiles (``source: certifi``). A leaf: it imports nothing of :mod:`companion`.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import ssl
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import certifi
from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning

_DER = 2  # _ssl.ENCODING_DER


def certifi_bundle() -> str:
    """The path of certifi's CA bundle: the file beside its module, else ``certifi.where()``.

    ``where()`` asks importlib.resources, whose file reader imports zipfile to find a file in a
    directory: 0.3 MB resident for the daemon's lifetime. An installed certifi keeps its bundle
    beside its module; a zipped one, or one repackaged without that file, is asked.
    """
    beside = os.path.join(os.path.dirname(certifi.__file__), "cacert.pem")
    return beside if os.path.isfile(beside) else certifi.where()


def certifi_roots() -> tuple[tuple[str, x509.Certificate], ...]:
    """The certifi bundle's roots with their labels (``"ISRG Root X1"``), in bundle order.

    Parsed once per version of the bundle file and shared: the profiles' root stores and the
    relay's upstream trust read the same roots at start-up, and an upgraded certifi (another size
    or modification time) is read afresh on the next reload. Raises OSError when the bundle cannot
    be read.
    """
    path = certifi_bundle()
    stat = os.stat(path)
    return _parse_bundle(path, stat.st_mtime_ns, stat.st_size)


# A label line, or a whole PEM block: the bundle is read with one pass of this over its bytes, not
# line by line (thousands of short-lived line strings would leave the parsed roots scattered over
# half-empty memory pages: 0.6 MB more resident for the daemon's lifetime, measured in-process).
_BUNDLE_ITEM = re.compile(rb"^# Label:([^\n]*)$|^(-----BEGIN CERTIFICATE-----.*?^-----END CERTIFICATE-----)",
                          re.MULTILINE | re.DOTALL)


@functools.lru_cache(maxsize=2)
def _parse_bundle(path: str, _mtime_ns: int, _size: int) -> tuple[tuple[str, x509.Certificate], ...]:
    # Certificates are immutable, so one parsed tuple serves every caller. A label names the next
    # certificate only; a block that does not parse is skipped.
    roots: list[tuple[str, x509.Certificate]] = []
    label = ""
    # The bundle is third-party data; one root has a non-positive serial, which cryptography only
    # warns about (and may refuse later): keep it while we can.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        for item in _BUNDLE_ITEM.finditer(Path(path).read_bytes()):
            text, pem = item.groups()
            if pem is None:
                label = text.decode("utf-8", "replace").strip().strip('"')
                continue
            try:
                roots.append((label, x509.load_pem_x509_certificate(pem)))
            except ValueError:
                pass
            label = ""
    return tuple(roots)


_HASHED_NAME = re.compile(r"[0-9a-f]{8}\.[0-9]+")


def _hashed_directory(path: str | None) -> bool:
    """True when ``path`` is a directory of roots named by subject hash (``5ad8a5d6.0``), as
    ``update-ca-certificates``, ``c_rehash`` and ``openssl rehash`` leave it."""
    if path is None:
        return False
    try:
        with os.scandir(path) as entries:
            return any(_HASHED_NAME.fullmatch(entry.name) for entry in entries)
    except OSError:
        return False


def system_verifying_context() -> ssl.SSLContext:
    """A verifying TLS client context (``ssl.create_default_context()``'s settings) trusting the
    system's roots, read from the system's hashed directory when it has one.

    ``create_default_context()`` parses the whole CA bundle (about 140 roots, 0.8 MB resident) into
    each context. From a hashed directory (``/etc/ssl/certs`` on Debian and Ubuntu, for example)
    OpenSSL reads a root only when a chain it verifies needs it, so a context that talks to a few
    servers holds their few roots. The trust is the same: that directory and the bundle are made
    from the same certificates. The whole bundle is read, as by ``create_default_context()``, where
    there is no such directory, and when ``SSL_CERT_FILE`` names a bundle other than the system's.
    """
    paths = ssl.get_default_verify_paths()
    chosen = os.environ.get(paths.openssl_cafile_env)
    if (chosen is not None and os.path.realpath(chosen) != os.path.realpath(paths.openssl_cafile)) \
            or not _hashed_directory(paths.capath):
        return ssl.create_default_context()
    return ssl.create_default_context(capath=paths.capath)


def unverified_context() -> ssl.SSLContext:
    """A TLS 1.2+ client context that verifies nothing: its user checks the chain or the pin itself."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def chain_der(obj: ssl.SSLObject) -> tuple[bytes, ...]:
    """The certificates the server sent, leaf first, as DER.

    Python 3.13 has ``SSLObject.get_unverified_chain()`` (DER bytes). On 3.10-3.12 the same call
    exists on the private ``_sslobj`` and returns ``_ssl.Certificate`` objects. When neither is
    there, only the leaf can be had (``getpeercert``); the verdict then treats every chain as
    leaf-only, i.e. "intermediate missing" for servers that do send one.
    """
    getter: Any = getattr(obj, "get_unverified_chain", None)
    if getter is None:
        getter = getattr(getattr(obj, "_sslobj", None), "get_unverified_chain", None)
    if getter is not None:
        sent = getter() or []
        ders = tuple(c if isinstance(c, bytes) else c.public_bytes(_DER) for c in sent)
        if ders:
            return ders
    leaf = obj.getpeercert(binary_form=True)
    return (leaf,) if leaf else ()


@dataclass(frozen=True)
class Handshake:
    """What one completed handshake showed: the version, the cipher and the chain as sent."""

    version: str
    cipher: str
    chain_der: tuple[bytes, ...]


async def handshake(
    address: str, port: int, ctx: ssl.SSLContext, server_name: str | None, timeout: float
) -> Handshake:
    """One TLS handshake, then the connection is closed; raises OSError, TimeoutError or ssl.SSLError."""
    async with asyncio.timeout(timeout):
        _reader, writer = await asyncio.open_connection(
            address, port, ssl=ctx, server_hostname=server_name or "", ssl_handshake_timeout=timeout
        )
    try:
        obj = writer.get_extra_info("ssl_object")
        if not isinstance(obj, ssl.SSLObject):
            raise ssl.SSLError("no TLS session after the handshake")
        cipher = obj.cipher()
        return Handshake(
            version=obj.version() or "", cipher=cipher[0] if cipher else "", chain_der=chain_der(obj)
        )
    finally:
        writer.close()
        try:
            async with asyncio.timeout(timeout):
                await writer.wait_closed()
        except (OSError, ssl.SSLError, TimeoutError):
            pass  # the server may drop the connection first; the facts are already in hand


__all__ = ["Handshake", "certifi_bundle", "certifi_roots", "chain_der", "handshake", "unverified_context"]
