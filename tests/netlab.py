"""A home LAN for tests: hosts in their own network namespaces on one Ethernet segment.

Each host is a network namespace with one interface (``lan0``) plugged into a Linux bridge that
lives in a "switch" namespace of its own, so unicast, broadcast and multicast (GDM, mDNS) flow
between the hosts as on a real home network, and nothing leaves the machine: the namespaces, the
bridge, the veth pairs and their 10.x addresses exist only for the test and are deleted at the end.

    with Lan("bridge-a", "bridge-b", "player", join_self=True) as lan:
        daemon = await lan["bridge-a"].spawn(*lan["bridge-a"].python("-m", "companion", "run", ...))
        lan["player"].address          # "10.213.7.3"
        lan.self_address               # this test process's own address on the LAN ("10.213.7.1")

``join_self=True`` also plugs the test process's own namespace (the suite's private one, made by
scripts/netns-run) into the segment, so in-process fakes (FakePlexServer, FakeController, python-
plexapi) reach and are reached by the hosts. Multicast from the test process still routes over
``lo`` unless a socket picks ``lan.self_address`` as its multicast interface.

Processes started with :meth:`Host.spawn` are killed when the Lan closes. ``cut``/``mend`` take a
host off the segment and back (a player that drops off Wi-Fi). Needs root (the suite runs as root).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

IFACE = "lan0"
GDM_GROUP = "239.0.0.250"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """One ``ip`` command, bounded; a failure names the command and what ip printed."""
    done = subprocess.run(["ip", *args], capture_output=True, timeout=15, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.decode(errors='replace').strip()}")
    return done


@dataclass
class Host:
    """One machine on the LAN: a namespace, its interface and its address."""

    name: str
    ns: str
    address: str
    lan: Lan
    processes: list[asyncio.subprocess.Process] = field(default_factory=list)
    popens: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def cmd(self, *argv: str) -> list[str]:
        """``argv`` as run inside this host's namespace."""
        return ["ip", "netns", "exec", self.ns, *argv]

    def python(self, *args: str) -> list[str]:
        """This interpreter (the suite's virtualenv) with ``args``, for :meth:`spawn`."""
        return [sys.executable, *args]

    def run(self, *argv: str, check: bool = True, timeout: float = 30.0,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` to completion inside the host (bounded by ``timeout``)."""
        return subprocess.run(self.cmd(*argv), capture_output=True, timeout=timeout, check=check,
                              env=_env(env))

    async def spawn(self, *argv: str, env: dict[str, str] | None = None, stdout: Any = asyncio.subprocess.PIPE,
                    stderr: Any = None, cwd: str | Path | None = None,
                    stdin: Any = asyncio.subprocess.DEVNULL) -> asyncio.subprocess.Process:
        """Start ``argv`` inside the host; it is killed when the Lan closes if still running."""
        proc = await asyncio.create_subprocess_exec(*self.cmd(*argv), env=_env(env), stdout=stdout,
                                                    stderr=stderr, stdin=stdin,
                                                    cwd=cwd, start_new_session=True)
        self.processes.append(proc)
        return proc

    def popen(self, *argv: str, env: dict[str, str] | None = None, **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside the host without asyncio; killed when the Lan closes."""
        proc = subprocess.Popen(self.cmd(*argv), env=_env(env), stdin=subprocess.DEVNULL,
                                start_new_session=True, **kwargs)
        self.popens.append(proc)
        return proc

    def add_address(self, address: str) -> None:
        """A second address on the host's interface (an attacker claiming another host's role)."""
        ip("-n", self.ns, "addr", "add", f"{address}/{self.lan.prefix}", "dev", IFACE)

    def _kill_all(self) -> None:
        for proc in self.processes:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        for popen in self.popens:
            if popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(popen.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    popen.wait(timeout=5)


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    if extra:
        env.update(extra)
    return env


class Lan:
    """Hosts on one segment; a context manager that builds it and tears every part down."""

    def __init__(self, *names: str, join_self: bool = False, prefix: int = 24) -> None:
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"host names must be distinct and at least one: {names}")
        self.names: Sequence[str] = names
        self.join_self = join_self
        self.prefix = prefix
        self.tag = uuid.uuid4().hex[:6]
        # A random /24 in 10/8 per Lan: two Lans in one test process never share addresses.
        self.subnet = f"10.{random.randrange(200, 250)}.{random.randrange(1, 250)}"
        self.switch = f"cbt-sw-{self.tag}"
        self.hosts: dict[str, Host] = {}
        self.self_address: str | None = None
        self._self_iface = f"cbt{self.tag}"
        self._created: list[str] = []

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def __enter__(self) -> Lan:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    async def __aenter__(self) -> Lan:
        return await asyncio.to_thread(self.__enter__)

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        for host in self.hosts.values():  # asyncio processes: reap them on the loop
            host._kill_all()
            for proc in host.processes:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(5):
                        await proc.wait()
        await asyncio.to_thread(self.close)

    def _build(self) -> None:
        ip("netns", "add", self.switch)
        self._created.append(self.switch)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        # Flood multicast to every port as a home switch without IGMP snooping does.
        ip("-n", self.switch, "link", "set", "br0", "type", "bridge", "mcast_snooping", "0")
        ip("-n", self.switch, "link", "set", "br0", "up")
        first = 2 if self.join_self else 1
        if self.join_self:
            self.self_address = f"{self.subnet}.1"
            ip("link", "add", self._self_iface, "type", "veth", "peer", "name", "p-self", "netns", self.switch)
            self._plug("p-self")
            ip("addr", "add", f"{self.self_address}/{self.prefix}", "dev", self._self_iface)
            ip("link", "set", self._self_iface, "up")
        for index, name in enumerate(self.names):
            ns = f"cbt-{index}-{self.tag}"
            ip("netns", "add", ns)
            self._created.append(ns)
            port = f"p{index}"
            ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", IFACE, "netns", ns)
            self._plug(port)
            address = f"{self.subnet}.{first + index}"
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "addr", "add", f"{address}/{self.prefix}", "dev", IFACE)
            ip("-n", ns, "link", "set", IFACE, "up")
            ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", IFACE)
            ip("-n", ns, "route", "add", "255.255.255.255/32", "dev", IFACE)
            self.hosts[name] = Host(name=name, ns=ns, address=address, lan=self)

    def _plug(self, port: str) -> None:
        ip("-n", self.switch, "link", "set", port, "master", "br0")
        ip("-n", self.switch, "link", "set", port, "up")

    def cut(self, name: str) -> None:
        """Take a host off the segment (its cable pulled): it keeps running but hears nothing."""
        ip("-n", self.switch, "link", "set", f"p{self.names.index(name)}", "down")

    def mend(self, name: str) -> None:
        """Plug a cut host back in."""
        ip("-n", self.switch, "link", "set", f"p{self.names.index(name)}", "up")

    def close(self) -> None:
        """Kill what the hosts run, delete the namespaces and the test process's own interface."""
        for host in self.hosts.values():
            host._kill_all()
        if self.join_self:
            ip("link", "del", self._self_iface, check=False)
        for ns in reversed(self._created):
            ip("netns", "del", ns, check=False)
        self._created.clear()
