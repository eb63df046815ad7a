"""What every benchmark shares: the Result row, spawned helper processes, percentiles, progress.

Helper processes are spawned (fresh interpreters, no fork of the runner's state), each with a
duplex pipe; a :class:`Child` is always stopped, joined, and terminated or killed if it does not
end, so a benchmark leaves no process behind whatever happens. A child's side runs
:func:`serve`: it answers ``(command, *args)`` messages with the handlers it was given until
``"stop"`` (or the runner going away).
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

_STARTED = time.monotonic()


class BenchError(RuntimeError):
    """A benchmark could not produce its figure (a helper failed, a count came out wrong)."""


@dataclass
class Result:
    """One row of the table. ``meets`` is None when the row is not judged (smoke mode, not run)."""

    name: str
    figure: str
    baseline: str
    ratio: str
    goal: str
    meets: bool | None
    details: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def verdict(self, smoke: bool) -> str:
        """The table's verdict column."""
        if self.note:
            return self.note
        if smoke:
            return "smoke: not judged"
        return {True: "meets", False: "misses", None: "not judged"}[self.meets]


@dataclass(frozen=True)
class Options:
    """What the runner passes to every benchmark."""

    smoke: bool = False
    memory_load_seconds: float = 600.0


def progress(message: str) -> None:
    """A progress line on stderr (the table goes to stdout)."""
    print(f"[bench {time.monotonic() - _STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sequence."""
    if not values:
        raise BenchError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(p / 100 * len(ordered))))
    return ordered[rank - 1]


def raise_fd_limit() -> None:
    """Thousands of sockets in one process need more than the usual 1024 descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def ms(seconds: float) -> str:
    """Seconds as milliseconds, with three decimals below 10 ms."""
    return f"{seconds * 1e3:.3f} ms" if seconds < 0.01 else f"{seconds * 1e3:.1f} ms"


class Child:
    """A spawned helper process running ``target(conn, *args)``; a context manager that always
    cleans up. ``target`` should call :func:`serve` (or answer the pipe itself)."""

    def __init__(self, target: Callable[..., None], *args: Any, name: str) -> None:
        ctx = mp.get_context("spawn")
        self._here, there = ctx.Pipe()
        self._there = there
        self.name = name
        self._proc = ctx.Process(target=target, args=(there, *args), name=name, daemon=True)
        self._profiler: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Child:
        self._proc.start()
        self._there.close()  # the child holds its own copy; closing ours lets EOF reach us
        self._profiler = profile(self.pid, self.name)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pid(self) -> int:
        """The helper's process id."""
        assert self._proc.pid is not None
        return self._proc.pid

    def recv(self, timeout: float = 60.0) -> Any:
        """The helper's next message (BenchError on timeout, an ended helper or an error reply)."""
        if not self._here.poll(timeout):
            raise BenchError(f"{self.name}: no answer within {timeout:g} s")
        try:
            reply = self._here.recv()
        except EOFError as exc:
            raise BenchError(f"{self.name}: the helper process ended (exit code {self._proc.exitcode})") from exc
        if isinstance(reply, tuple) and reply and reply[0] == "error":
            raise BenchError(f"{self.name}: {reply[1]}")
        return reply

    def call(self, command: str, *args: Any, timeout: float = 60.0) -> Any:
        """Send one command and wait for its answer."""
        self._here.send((command, *args))
        return self.recv(timeout)

    def close(self) -> None:
        """Ask the helper to stop, then join it (terminate, then kill, if it does not end)."""
        try:
            self._here.send(("stop",))
        except (BrokenPipeError, OSError):
            pass
        self._proc.join(timeout=15)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout=5)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        self._here.close()
        end_profile(self._profiler)


def profile(pid: int, name: str) -> subprocess.Popen[bytes] | None:
    """With BENCH_PROFILE=DIR set, sample ``pid`` with py-spy into DIR/NAME.txt (collapsed stacks)."""
    where = os.environ.get("BENCH_PROFILE")
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not where or not Path(spy).exists():
        return None
    Path(where).mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "200", "--nonblocking",
                             "--output", str(Path(where) / f"{name}.txt")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def end_profile(spy: subprocess.Popen[bytes] | None) -> None:
    """py-spy stops by itself when its target exits; bounded wait, then make sure it is gone."""
    if spy is None:
        return
    try:
        spy.wait(timeout=10)
    except subprocess.TimeoutExpired:
        spy.terminate()
        spy.wait()


Handler = Callable[..., Awaitable[Any]]


async def serve(conn: Connection, handlers: dict[str, Handler]) -> None:
    """The child's side of :class:`Child`: answer commands until ``stop`` or EOF."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            message = await loop.run_in_executor(None, conn.recv)
        except (EOFError, OSError):
            return
        command, *args = message
        if command == "stop":
            return
        try:
            reply = await handlers[command](*args)
        except Exception as exc:
            conn.send(("error", f"{command}: {type(exc).__name__}: {exc}"))
        else:
            conn.send(reply)


def in_child(main: Callable[[], Awaitable[None]]) -> None:
    """Run a child's async main with a raised descriptor limit and quiet logging."""
    raise_fd_limit()
    asyncio.run(main())


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for process {pid}")


def rss_parts(pid: int) -> tuple[int, int]:
    """(anonymous, file-backed) resident bytes of a process, from /proc (Linux 4.5 and later).

    The file-backed part (the interpreter's and the extensions' code) depends on what the page
    cache holds, not on the process: two checkouts of one commit on one machine differed by 2 MB
    there and by nothing in the anonymous part.
    """
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    try:
        return int(fields["RssAnon"].split()[0]) * 1024, int(fields["RssFile"].split()[0]) * 1024
    except KeyError as exc:
        raise BenchError(f"no {exc.args[0]} for process {pid}") from exc


def cpu_seconds() -> float:
    """CPU time (user + system) this process used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def in_netns() -> bool:
    """True inside scripts/netns-run's private network namespace."""
    return os.environ.get("COMPANION_IN_NETNS") == "1"
