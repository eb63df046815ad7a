"""The proxy's verifying context reads the system's roots on demand from a hashed directory
(companion.security.tls.system_verifying_context), over real TLS on loopback.

The "system" here is a directory and a bundle this test makes, named to OpenSSL by SSL_CERT_DIR
and SSL_CERT_FILE; the hashed names come from ``openssl rehash``, as update-ca-certificates
makes them.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from companion.proxy import server_context
from tests.fakes.plex_server import FakePlexServer


@pytest.fixture
async def server() -> AsyncIterator[FakePlexServer]:
    async with FakePlexServer(token="system-trust-token") as fake:
        yield fake


def _hashed_dir(path: Path, *roots: bytes) -> Path:
    path.mkdir()
    for i, pem in enumerate(roots):
        (path / f"root-{i}.pem").write_bytes(pem)
    openssl = shutil.which("openssl")
    assert openssl is not None, "openssl is a test dependency (scripts/system-deps)"
    subprocess.run([openssl, "rehash", str(path)], check=True, capture_output=True)
    return path


async def _identity(server: FakePlexServer, ctx: ssl.SSLContext) -> int:
    async with aiohttp.ClientSession() as session, \
            session.get(f"https://127.0.0.1:{server.port}/identity", ssl=ctx) as resp:
        await resp.read()
        return resp.status


def _roots_held(ctx: ssl.SSLContext) -> int:
    return int(ctx.cert_store_stats()["x509_ca"])


async def test_roots_are_read_when_a_chain_needs_them(server, tmp_path, monkeypatch):
    certs = _hashed_dir(tmp_path / "certs", server.root_pem)
    monkeypatch.setenv("SSL_CERT_DIR", str(certs))
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    ctx = server_context([])
    assert _roots_held(ctx) == 0, "nothing is parsed before a server is verified"
    assert await _identity(server, ctx) == 200
    assert _roots_held(ctx) == 1, "the one root the chain needed"


async def test_a_server_whose_root_is_not_in_the_directory_is_refused(server, tmp_path, monkeypatch):
    other = FakePlexServer(token="other")
    certs = _hashed_dir(tmp_path / "certs", other.root_pem)
    monkeypatch.setenv("SSL_CERT_DIR", str(certs))
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await _identity(server, server_context([]))
    # The configured extra roots still count beside the directory.
    assert await _identity(server, server_context([server.chain.root])) == 200


async def test_a_directory_without_hashed_names_means_the_whole_bundle(server, tmp_path, monkeypatch):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "root.pem").write_bytes(server.root_pem)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(server.root_pem)
    monkeypatch.setenv("SSL_CERT_DIR", str(plain))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    ctx = server_context([])
    assert _roots_held(ctx) == 1, "read whole, as ssl.create_default_context() does"
    assert await _identity(server, ctx) == 200


async def test_a_bundle_the_owner_chose_is_read_whole_even_beside_a_hashed_directory(server, tmp_path, monkeypatch):
    other = FakePlexServer(token="other")
    certs = _hashed_dir(tmp_path / "certs", other.root_pem)
    bundle = tmp_path / "corporate.pem"
    bundle.write_bytes(server.root_pem)
    monkeypatch.setenv("SSL_CERT_DIR", str(certs))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    ctx = server_context([])
    assert _roots_held(ctx) == 1
    assert await _identity(server, ctx) == 200
