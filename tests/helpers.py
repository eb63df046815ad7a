"""Test helpers: bounded waiting on a condition (never a bare sleep), free ports, configs."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from companion.config import parse_config


async def until(predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 2.0, *,
                message: str = "condition", interval: float = 0.01) -> None:
    """Wait until ``predicate()`` is true, polling; fail with ``message`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for: {message}")
        await asyncio.sleep(interval)


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_port_block(n: int) -> int:
    """The first of ``n`` consecutive ports that are free for TCP and UDP on loopback right now.

    The block lies below the kernel's ephemeral range (32768 up), so no port the kernel hands out
    later (``free_port()``, a client's source port) can take one of its ports before the test
    binds it; it also stays clear of GDM's 32412-32414."""
    for _ in range(200):
        base = random.randrange(20000, 32000 - n)
        try:
            socks = []
            for p in range(base, base + n):
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    s = socket.socket(socket.AF_INET, kind)
                    socks.append(s)
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return base
    raise RuntimeError("no free port block")


def bridge_config(tmp_path: Path, extra: str = "", *, timeouts: dict[str, float] | None = None,
                  real_gdm_ports: bool = False) -> Any:
    """A config on loopback test ports, state in ``tmp_path``. GDM uses free ports, never
    32412-32414, unless ``real_gdm_ports`` (for a real player such as plex-mpv-shim, whose GDM
    port is fixed; only inside the suite's private network namespace)."""
    gdm = 32412 if real_gdm_ports else free_port_block(3)
    faces = free_port_block(8)
    t = {"command": 1.0, "target_expiry": 60.0, **(timeouts or {})}
    timeouts_yaml = ", ".join(f"{k}: {v}" for k, v in t.items())
    text = f"""
name: test-bridge
interfaces: [127.0.0.1]
gdm: {{group: 239.0.0.250, player_port: {gdm}, announce_port: {gdm + 1}, server_port: {gdm + 2},
       hello_interval: 30, search_interval: 0.5}}
mdns: {{enabled: false}}
http: {{bind: 127.0.0.1, admin_port: 0, relay_port: 0, face_port_base: {faces}}}
timeouts: {{{timeouts_yaml}}}
state_dir: {tmp_path / "state"}
{extra}
"""
    return parse_config(text, "test-config.yaml")
