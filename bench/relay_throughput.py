"""Relay throughput: the secure relay against nginx doing the same job, and a direct HTTPS download.

Method. Each server is a process of its own, all on loopback:

* origin: a FakePlexServer-like aiohttp HTTPS server (test PKI from tests/fakes/plex_server.py,
  ``*.<hash>.plex.direct`` leaf) serving ``/library/parts/1/file`` of SIZE bytes, streamed from a
  1 MiB block with a Content-Length and the token required, as PMS does for direct play;
* relay: a ``companion.relay.server.Relay`` trusting the origin's test root, with one grant for the
  target 127.0.0.2;
* nginx (the baseline a user would pick instead: Debian ``nginx-light``, one worker): the same job,
  https upstream verified against the same root for the same plex.direct name, the token added
  upstream, plain http downstream, buffered in memory only with 256 KiB buffers like the relay's reads (no temp files);
* client (this process): downloads the part (a) directly over HTTPS, verifying the chain, as a
  secure target would, (b) from 127.0.0.2 through the relay and (c) through nginx, over plain
  HTTP, as a relayed target would; bytes are counted and discarded.

Each way is run REPEAT times, alternating, and the best run of each is reported (MB/s, MB = 10^6
bytes). The judged ratio is relay/nginx (goal >= 0.8): on 2 cores a proxy with three busy
processes cannot match a two-process direct download, so the direct figure is context. The CPU
seconds each proxy process spent per GiB moved (from /proc, user + system, summed over the timed
runs) are reported too. Everything shares the machine, so the proxies compete for the CPUs with
origin and client, as they would on a small home server running both the bridge and Plex.

Also the ``relay_throughput`` row of bench/run.py (``run``). Standalone usage:
python bench/relay_throughput.py [SIZE_BYTES] [--smoke] [--repeat N]
(SIZE also from RELAY_BENCH_SIZE; default 1 GiB; --smoke = 8 MiB, 5 repeats). One untimed
warm-up download each way comes first (the relay verifies the chain once, on first use).
Run it inside the netns wrapper: scripts/netns-run .venv/bin/python bench/relay_throughput.py --smoke
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from common import Options, Result, end_profile, profile, progress  # noqa: E402

TOKEN = "bench-token-0123456789"
PART = "/library/parts/1/file"
BLOCK = 1024 * 1024


def _origin(conn: Connection, size: int) -> None:
    asyncio.run(_origin_main(conn, size))


async def _origin_main(conn: Connection, size: int) -> None:
    from aiohttp import web

    from tests.fakes.plex_server import make_plex_chain

    chain = make_plex_chain()
    block = bytes(range(256)) * (BLOCK // 256)

    async def part(request: web.Request) -> web.StreamResponse:
        if request.headers.get("X-Plex-Token") != TOKEN:
            return web.Response(status=401)
        resp = web.StreamResponse(headers={"Content-Type": "video/x-matroska", "Accept-Ranges": "bytes"})
        resp.content_length = size
        await resp.prepare(request)
        left = size
        while left > 0:
            piece = block if left >= BLOCK else block[:left]
            await resp.write(piece)
            left -= len(piece)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get(PART, part)
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = Path(tmp) / "chain.pem", Path(tmp) / "key.pem"
        cert.write_bytes(chain.leaf_pem + chain.intermediate_pem)
        key.write_bytes(chain.leaf_key_pem)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx).start()
    conn.send((int(runner.addresses[0][1]), chain.root_pem, chain.name("127.0.0.1")))
    await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # wait for "stop"
    await runner.cleanup()


def _relay(conn: Connection, origin_port: int, root_pem: bytes, name: str) -> None:
    asyncio.run(_relay_main(conn, origin_port, root_pem, name))


async def _relay_main(conn: Connection, origin_port: int, root_pem: bytes, name: str) -> None:
    from cryptography import x509

    from companion.relay.server import Relay

    with tempfile.TemporaryDirectory() as state:
        async with Relay(bind="127.0.0.1", port=0, state_dir=Path(state),
                         extra_roots=[x509.load_pem_x509_certificate(root_pem)]) as relay:
            grant = relay.grant(target_address="127.0.0.2", server_id="bench", upstream_host=name,
                                upstream_address="127.0.0.1", upstream_port=origin_port, token=TOKEN)
            conn.send(relay.base_url(grant, "127.0.0.1"))
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)


async def _download(url: str, *, ssl_ctx: ssl.SSLContext | None, server_hostname: str | None,
                    local_addr: tuple[str, int] | None, headers: dict[str, str]) -> tuple[int, float]:
    import aiohttp

    connector = aiohttp.TCPConnector(local_addr=local_addr) if local_addr else aiohttp.TCPConnector()
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        started = time.perf_counter()
        got = 0
        kwargs: dict[str, object] = {"headers": headers}
        if ssl_ctx is not None:
            kwargs.update(ssl=ssl_ctx, server_hostname=server_hostname)
        async with session.get(url, **kwargs) as resp:  # type: ignore[arg-type]
            if resp.status != 200:
                raise SystemExit(f"{url}: HTTP {resp.status}: {(await resp.text())[:200]}")
            async for chunk in resp.content.iter_chunked(BLOCK):
                got += len(chunk)
        return got, time.perf_counter() - started


_NGINX_CONF = """
worker_processes 1;
daemon off;
master_process on;
user root root;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass https://127.0.0.1:{origin_port};
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {tmp}/root.pem;
            proxy_ssl_name {name};
            proxy_ssl_server_name on;
            proxy_ssl_protocols TLSv1.2 TLSv1.3;
            proxy_set_header Host {name};
            proxy_set_header X-Plex-Token {token};
            proxy_http_version 1.1;
            proxy_buffering on;  # in memory only (temp files off), buffers as large as the relay's reads
            proxy_buffers 16 256k;
            proxy_buffer_size 256k;
            proxy_busy_buffers_size 512k;
            proxy_max_temp_file_size 0;
        }}
    }}
}}
"""


def _nginx_binary() -> str:
    for candidate in ("/usr/sbin/nginx", "/usr/bin/nginx"):
        if os.path.exists(candidate):
            return candidate
    raise SystemExit("relay_throughput: nginx is not installed (Debian nginx-light; make test installs it)")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _nginx(origin_port: int, root_pem: bytes, name: str) -> Iterator[tuple[str, int]]:
    """nginx relaying the origin as the bridge's relay does; yields (base URL, worker pid)."""
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "root.pem").write_bytes(root_pem)
        port = _free_port()
        conf = Path(tmp, "nginx.conf")
        conf.write_text(_NGINX_CONF.format(tmp=tmp, port=port, origin_port=origin_port, name=name, token=TOKEN))
        proc = subprocess.Popen([_nginx_binary(), "-p", tmp, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        try:
            worker = _wait_worker(proc, port, Path(tmp))
            yield f"http://127.0.0.1:{port}", worker
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_worker(proc: subprocess.Popen[bytes], port: int, tmp: Path) -> int:
    """Bounded wait until nginx listens; its one worker's pid (the process that does the work)."""
    import socket

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise SystemExit(f"nginx exited ({proc.returncode}): {err.strip()[:500]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                pass
        except OSError:
            time.sleep(0.05)
            continue
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        if children:
            return int(children[0])
    raise SystemExit("nginx did not start listening within 15 s: " + (tmp / "error.log").read_text()[-500:])


def _cpu_of(pid: int) -> float:
    """User + system CPU seconds a process used so far (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _client(size: int, repeat: int, origin_port: int, root_pem: bytes, name: str,
                  base: str, relay_pid: int, nginx_base: str, nginx_pid: int) -> dict[str, float]:
    ctx = ssl.create_default_context(cadata=root_pem.decode())
    direct_url = f"https://127.0.0.1:{origin_port}{PART}"
    best = {"direct": 0.0, "relay": 0.0, "nginx": 0.0}
    cpu = {"relay": 0.0, "nginx": 0.0}
    ways = {
        "direct": (direct_url, ctx, name, None, {"X-Plex-Token": TOKEN}, None),
        "relay": (base + PART, None, None, ("127.0.0.2", 0), {}, relay_pid),
        "nginx": (nginx_base + PART, None, None, None, {}, nginx_pid),
    }
    # Warm-up, untimed: the relay's one-off chain verification and every first handshake.
    for url, ssl_ctx, host, local, headers, _ in ways.values():
        await _download(url, ssl_ctx=ssl_ctx, server_hostname=host, local_addr=local, headers=headers)
    for _ in range(repeat):
        for way, (url, ssl_ctx, host, local, headers, pid) in ways.items():
            before = _cpu_of(pid) if pid else 0.0
            got, took = await _download(url, ssl_ctx=ssl_ctx, server_hostname=host, local_addr=local,
                                        headers=headers)
            if got != size:
                raise SystemExit(f"{way}: got {got} of {size} bytes")
            if pid:
                cpu[way] += _cpu_of(pid) - before
            best[way] = max(best[way], got / took / 1e6)
    moved_gib = size * repeat / 2**30
    best["relay_cpu_s_per_gib"] = cpu["relay"] / moved_gib
    best["nginx_cpu_s_per_gib"] = cpu["nginx"] / moved_gib
    return best


def measure(size: int, repeat: int) -> dict[str, float]:
    """Start origin, relay and nginx, download REPEAT times each way, stop all: best MB/s per way."""
    spawn = mp.get_context("spawn")
    origin_end, origin_here = spawn.Pipe()
    relay_end, relay_here = spawn.Pipe()
    origin = spawn.Process(target=_origin, args=(origin_end, size), name="bench-origin")
    origin.start()
    assert origin.pid is not None
    spies = [profile(origin.pid, "relay-origin")]
    relay: mp.process.BaseProcess | None = None
    try:
        port, root_pem, name = origin_here.recv()
        relay = spawn.Process(target=_relay, args=(relay_end, port, root_pem, name), name="bench-relay")
        relay.start()
        assert relay.pid is not None
        spies.append(profile(relay.pid, "relay-relay"))
        base = relay_here.recv()
        with _nginx(port, root_pem, name) as (nginx_base, nginx_pid):
            return asyncio.run(_client(size, repeat, port, root_pem, name, base, relay.pid, nginx_base, nginx_pid))
    finally:
        for conn, proc in ((relay_here, relay), (origin_here, origin)):
            if proc is not None:
                with contextlib.suppress(BrokenPipeError, OSError):
                    conn.send("stop")
                proc.join(timeout=10)
                if proc.is_alive():
                    proc.terminate()
                    proc.join()
        for spy in spies:
            end_profile(spy)


GOAL = 0.8


def run(options: Options) -> Result:
    """The runner's entry: 1 GiB once each way (8 MiB, best of 5, with --smoke)."""
    size = 8 * 2**20 if options.smoke else int(os.environ.get("RELAY_BENCH_SIZE", 2**30))
    repeat = 5 if options.smoke else 2
    progress(f"relay_throughput: {size / 2**20:.0f} MiB, best of {repeat} each way (relay, nginx, direct)")
    best = measure(size, repeat)
    ratio = best["relay"] / best["nginx"]
    return Result(
        name="relay_throughput",
        figure=f"relay {best['relay']:.1f} MB/s, {best['relay_cpu_s_per_gib']:.2f} CPU s/GiB",
        baseline=f"nginx {best['nginx']:.1f} MB/s, {best['nginx_cpu_s_per_gib']:.2f} CPU s/GiB",
        ratio=f"{ratio:.2f} (direct {best['direct']:.0f} MB/s)",
        goal=f">= {GOAL:.2f} of nginx",
        meets=ratio >= GOAL,
        details={"size_bytes": size, "repeat": repeat, "relay_mb_s": best["relay"], "nginx_mb_s": best["nginx"],
                 "direct_mb_s": best["direct"], "ratio": ratio,
                 "relay_cpu_s_per_gib": best["relay_cpu_s_per_gib"],
                 "nginx_cpu_s_per_gib": best["nginx_cpu_s_per_gib"]},
    )


def main() -> None:
    """Run the relay benchmark alone from the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("size", nargs="?", type=int, default=int(os.environ.get("RELAY_BENCH_SIZE", 2**30)))
    parser.add_argument("--smoke", action="store_true", help="8 MiB, for a quick check")
    parser.add_argument("--repeat", type=int, default=None)
    args = parser.parse_args()
    size = 8 * 2**20 if args.smoke else args.size
    repeat = args.repeat or (5 if args.smoke else 2)
    best = measure(size, repeat)
    ratio = best["relay"] / best["nginx"]
    print(f"size: {size} bytes ({size / 2**20:.0f} MiB), best of {repeat}")
    print(f"direct HTTPS:  {best['direct']:8.1f} MB/s")
    print(f"through nginx: {best['nginx']:8.1f} MB/s  {best['nginx_cpu_s_per_gib']:.2f} CPU s/GiB")
    print(f"through relay: {best['relay']:8.1f} MB/s  {best['relay_cpu_s_per_gib']:.2f} CPU s/GiB")
    print(f"ratio relay/nginx: {ratio:.2f} (goal >= {GOAL:.2f}) {'OK' if ratio >= GOAL else 'BELOW GOAL'}")


if __name__ == "__main__":
    main()
