"""A real dnsmasq (Debian's dnsmasq-base) as a home router's resolver, started by a test on loopback.

``dnsmasq(tmp_path, upstream, *extra)`` listens on 127.0.0.10 and a free port, forwards
plex.direct to ``upstream`` (a PlexDirectResolver), and takes extra flags such as
``--stop-dns-rebind`` and ``--rebind-domain-ok=/plex.direct/``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.message

DNSMASQ = "/usr/sbin/dnsmasq"
HASH = "625d406a00ac415b978ddb368c0d1289"


def _free_udp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


async def _until_answers(host: str, port: int, name: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    query = dns.message.make_query(name, "A")
    while True:
        try:
            await dns.asyncquery.udp(query, host, port=port, timeout=0.2)
            return
        except (dns.exception.Timeout, OSError):
            if time.monotonic() > deadline:
                raise AssertionError(f"dnsmasq did not answer on {host}:{port} within {timeout} s") from None


@asynccontextmanager
async def dnsmasq(tmp_path: Path, upstream: tuple[str, int],
                  *extra: str) -> AsyncIterator[tuple[tuple[str, int], Path]]:
    host = "127.0.0.10"
    port = _free_udp_port(host)
    log = tmp_path / "dnsmasq.log"
    args = [
        DNSMASQ, "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--keep-in-foreground",
        "--bind-interfaces", f"--listen-address={host}", f"--port={port}", "--cache-size=0",
        f"--server=/plex.direct/{upstream[0]}#{upstream[1]}", f"--log-facility={log}",
        f"--pid-file={tmp_path / 'dnsmasq.pid'}", *extra,
    ]
    if os.geteuid() == 0:
        args.append("--user=root")
    proc = await asyncio.create_subprocess_exec(*args, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.DEVNULL)
    try:
        await _until_answers(host, port, f"1-1-1-1.{HASH}.plex.direct")
        yield (host, port), log
    finally:
        proc.terminate()
        await proc.wait()
