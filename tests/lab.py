"""Shared scenario helpers: the recognisable token, lab device profiles, a real controller's
server session, and the CLI as a subprocess."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from pathlib import Path

import requests
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from plexapi.server import PlexServer

from tests.fakes.plex_server import FakePlexServer

TOKEN = "ACCOUNT-TOKEN-5f3c9e1d"  # recognisable: searched for in logs and the audit database


def write_test_profiles(root: Path, server: FakePlexServer) -> None:
    """Two devices: one whose store holds the fake server's root, one whose store does not."""
    (root / "devices").mkdir(parents=True)
    (root / "roots" / "pem").mkdir(parents=True)
    cert = x509.load_pem_x509_certificate(server.root_pem)
    (root / "roots" / "pem" / "fake-test-root.pem").write_bytes(server.root_pem)
    fingerprint = hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
    (root / "roots" / "test-lab.yaml").write_text(f"""name: test-lab
description: the test's own root, generated per run
trusted_certificates:
  - name: fake-test-root
    subject_name: "{cert.subject.rfc4514_string()}"
    fingerprint: {fingerprint}
""")
    common = """transport: companion
media: {https: true, http: true}
tls:
  versions: {min: "1.2", max: "1.3"}
  rsa_min_bits: 2048
  ecdsa: true
dns: {resolver: public}
evidence:
  - {claim: "a device made up for this test", confidence: assumed}
"""
    (root / "devices" / "lab-secure-tv.yaml").write_text(
        "id: lab-secure-tv\nname: Lab TV that trusts the test root\nmatch: []\n" + common.replace(
            "  ecdsa: true\n", "  ecdsa: true\n  roots: {store: test-lab}\n"))
    (root / "devices" / "lab-old-tv.yaml").write_text(
        "id: lab-old-tv\nname: Lab TV with an old root store\nmatch: []\n" + common.replace(
            "  ecdsa: true\n", "  ecdsa: true\n  roots: {store: mozilla-2019}\n"))


def plex_server(server: FakePlexServer, tmp_path: Path) -> PlexServer:
    ca = tmp_path / "fake-root.pem"
    ca.write_bytes(server.root_pem)
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE in the environment would override verify
    session.verify = str(ca)
    return PlexServer(f"https://127.0.0.1:{server.port}", TOKEN, session=session, timeout=5)


async def companion(*args: str, timeout: float = 20.0) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "companion", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COMPANION_CONFIG": ""})
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
