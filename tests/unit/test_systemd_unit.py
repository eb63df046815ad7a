"""The shipped systemd unit: systemd accepts it, its exposure stays low, and its sandbox fits the daemon."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "companion-bridge.service"
SYSTEMD_ANALYZE = "/usr/bin/systemd-analyze"
SHIPPED_EXEC_START = "ExecStart=/usr/local/bin/companion run"


def service_settings() -> dict[str, list[str]]:
    """The [Service] section as key -> values (systemd allows a key more than once)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


@pytest.fixture
def verifiable_unit(tmp_path: Path) -> Path:
    """A copy of the unit whose ExecStart points at a stub: verify checks the binary exists,
    and /usr/local/bin/companion is not installed on a development machine."""
    stub = tmp_path / "companion"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    text = UNIT.read_text()
    assert text.count(SHIPPED_EXEC_START + "\n") == 1
    copy = tmp_path / "companion-bridge.service"
    copy.write_text(text.replace(SHIPPED_EXEC_START, f"ExecStart={stub} run"))
    return copy


def test_systemd_analyze_verify_finds_nothing_to_complain_about(verifiable_unit: Path) -> None:
    result = subprocess.run([SYSTEMD_ANALYZE, "verify", str(verifiable_unit)], capture_output=True,
                            text=True, timeout=30)
    about_us = [line for line in (result.stdout + result.stderr).splitlines()
                if "companion" in line or str(verifiable_unit.parent) in line]
    assert about_us == []
    assert result.returncode == 0, result.stdout + result.stderr


def test_security_exposure_is_at_most_2(verifiable_unit: Path) -> None:
    result = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=true", str(verifiable_unit)],
                            capture_output=True, text=True, timeout=30)
    match = re.search(r"Overall exposure level for companion-bridge\.service: (\d+\.\d+)", result.stdout)
    assert match is not None, result.stdout + result.stderr
    exposure = float(match.group(1))
    assert exposure <= 2.0, f"exposure {exposure} > 2.0:\n{result.stdout}"


def test_unit_carries_the_contract_the_daemon_relies_on() -> None:
    s = service_settings()
    assert s["Type"] == ["notify"]
    assert s["NotifyAccess"] == ["main"]
    assert s["WatchdogSec"] == ["30"]
    assert s["ExecStart"] == ["/usr/local/bin/companion run"]
    assert s["Environment"] == ["COMPANION_CONFIG=/etc/companion-bridge/config.yaml"]
    assert s["ConfigurationDirectory"] == ["companion-bridge"]
    assert s["StateDirectory"] == ["companion-bridge"]
    assert s["DynamicUser"] == ["yes"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["RestartPreventExitStatus"] == ["78"]
    assert set(s["RestrictAddressFamilies"][0].split()) == {"AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"}
    assert s["CapabilityBoundingSet"] == [""]
    assert s["MemoryDenyWriteExecute"] == ["yes"]
    # The connection budget is half of the file limit: set it, well above the 1024 default.
    assert s["LimitNOFILE"] == ["4096"]


# The kernel's own write-xor-execute switch (Linux >= 6.3) refuses what MemoryDenyWriteExecute=
# refuses: writable+executable mappings and making a mapping executable later. Each child turns
# it on before importing the daemon's native-code dependencies, then exercises them.
MDWE_PRELUDE = """
import ctypes, mmap, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    sys.exit("kernel lacks PR_SET_MDWE (needs Linux >= 6.3): " + os.strerror(ctypes.get_errno()))
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("PR_SET_MDWE did not refuse a W+X mapping")
except PermissionError:
    pass
"""

CRYPTO_CHILD = MDWE_PRELUDE + textwrap.dedent("""
    import asyncio, datetime, ssl
    import trustme
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    NAME = "192-168-1-10.0123456789abcdef0123456789abcdef.plex.direct"
    ca = trustme.CA()
    leaf = ca.issue_cert(NAME)
    issuer = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).verify_directly_issued_by(issuer)
    key = ec.generate_private_key(ec.SECP256R1())
    rsa.generate_private_key(public_exponent=65537, key_size=1024)
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "mdwe")])
    now = datetime.datetime.now(datetime.timezone.utc)
    (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
     .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
     .sign(key, hashes.SHA256()))

    async def main():
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        leaf.configure_cert(server_ctx)
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)

        async def answer(reader, writer):
            writer.write(await reader.readline())
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx,
                                                       server_hostname=NAME)
        writer.write(b"ping\\n")
        assert await reader.readline() == b"ping\\n"
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
    asyncio.run(main())
    print("ran under MDWE")
""")

NETWORK_CHILD = MDWE_PRELUDE + textwrap.dedent("""
    import asyncio
    import aiohttp, aiohttp.web, dns.resolver, ifaddr, prometheus_client, pychromecast, yaml
    import zeroconf, zeroconf.asyncio

    assert ifaddr.get_adapters()
    yaml.safe_load("a: [1, 2]")
    prometheus_client.generate_latest(prometheus_client.CollectorRegistry())

    async def main():
        app = aiohttp.web.Application()
        app.router.add_get("/", lambda request: aiohttp.web.Response(text="ok"))
        runner = aiohttp.web.AppRunner(app)
        await runner.setup()
        site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{port}/") as response:
                    assert await response.text() == "ok"
        finally:
            await runner.cleanup()
    asyncio.run(main())
    print("ran under MDWE")
""")


@pytest.mark.parametrize("child", [CRYPTO_CHILD, NETWORK_CHILD], ids=["cryptography-and-tls", "network-stack"])
def test_daemon_libraries_run_without_writable_executable_memory(child: str) -> None:
    result = subprocess.run([sys.executable, "-c", child], cwd=REPO, capture_output=True, text=True,
                            timeout=30, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ran under MDWE"
