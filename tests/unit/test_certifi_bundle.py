"""Reading the certifi bundle (the ``mozilla`` store) and telling roots apart by fingerprint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import certifi
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from companion.security.profiles.roots import sha256_fingerprint
from companion.security.tls import _parse_bundle, certifi_roots

ROOT = Path(__file__).resolve().parents[2]


def _bundle_blocks() -> list[bytes]:
    """The real bundle's entries (comment lines and one PEM block each), as certifi ships them."""
    return Path(certifi.where()).read_bytes().split(b"\n\n")


def _parse(path: Path) -> list[tuple[str, bytes]]:
    return [(label, cert.public_bytes(Encoding.DER)) for label, cert in _parse_bundle(str(path), 0, 0)]


def test_every_certificate_of_the_bundle_is_read_with_its_label() -> None:
    text = Path(certifi.where()).read_text()
    roots = certifi_roots()
    assert len(roots) == text.count("-----BEGIN CERTIFICATE-----")
    assert all(label for label, _ in roots), "every certifi entry has a label"
    labels = [line.removeprefix("# Label:").strip().strip('"') for line in text.splitlines()
              if line.startswith("# Label:")]
    assert [label for label, _ in roots] == labels
    assert "ISRG Root X1" in labels


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_a_label_names_only_the_next_certificate_and_a_broken_block_is_skipped(tmp_path: Path,
                                                                               newline: bytes) -> None:
    first, second, third = _bundle_blocks()[1:4]
    unlabelled = b"\n".join(line for line in third.splitlines() if not line.startswith(b"# Label:"))
    broken = b'# Label: "Broken"\n-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----'
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(b"\n\n".join([first, broken, second, unlabelled]).replace(b"\n", newline) + newline)
    parsed = _parse(bundle)
    expected = [x509.load_pem_x509_certificate(block[block.index(b"-----BEGIN"):])
                for block in (first, second, third)]
    assert [der for _, der in parsed] == [cert.public_bytes(Encoding.DER) for cert in expected]
    labels = [label for label, _ in parsed]
    assert labels[0] and labels[1] and labels[0] != labels[1]
    assert labels[2] == "", "a certificate without its own label line is not named by the one before it"
    assert "Broken" not in labels


def test_a_fingerprint_is_the_sha256_of_the_der_as_cryptography_computes_it() -> None:
    for _label, cert in certifi_roots():
        assert sha256_fingerprint(cert) == cert.fingerprint(hashes.SHA256()).hex()


def test_the_bundle_read_is_the_one_certifi_names_and_finding_it_loads_no_zipfile() -> None:
    code = ("import sys; from companion.security.tls import certifi_bundle; path = certifi_bundle(); "
            "print(path); print('zipfile' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    path, zipfile_loaded = done.stdout.split()
    assert os.path.samefile(path, certifi.where())
    assert zipfile_loaded == "False", "importlib.resources' reader (and zipfile with it) stays unloaded"
