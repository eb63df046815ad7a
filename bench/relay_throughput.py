"""Relay throughput: a media part fetched directly over HTTPS vs through the secure relay.

Method. Three processes, each with its own event loop, all on loopback:

* origin: a FakePlexServer-like aiohttp HTTPS server (test PKI from tests/fakes/plex_server.py,
  ``*.<hash>.plex.direct`` leaf) serving ``/library/parts/1/file`` of SIZE bytes, streamed from a
  1 MiB block with a Content-Length and the token required, as PMS does for direct play;
* relay: a ``companion.relay.Relay`` trusting the origin's test root, with one grant for the
  target 127.0.0.2;
* client (this process): downloads the part (a) directly over HTTPS, verifying the chain, as a
  secure target would, and (b) from 127.0.0.2 through the relay over plain HTTP, as a relayed
  target would; bytes are counted and discarded.

Each way is run REPEAT times, alternating, and the best run of each is reported (MB/s, MB = 10^6
bytes) with the ratio relay/direct; the goal is >= 0.7. Both ways share the same machine, so the
relay's extra process competes for the CPUs with origin and client, as it would on a small home
server running both the bridge and Plex.

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
import sys
import tempfile
import time
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

    from companion.relay import Relay

    with tempfile.TemporaryDirectory() as state:
        relay = Relay(bind="127.0.0.1", port=0, state_dir=Path(state),
                      extra_roots=[x509.load_pem_x509_certificate(root_pem)])
        await relay.start()
        grant = relay.grant(target_address="127.0.0.2", server_id="bench", upstream_host=name,
                            upstream_address="127.0.0.1", upstream_port=origin_port, token=TOKEN)
        conn.send(relay.base_url(grant, "127.0.0.1"))
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        await relay.stop()


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


async def _client(size: int, repeat: int, origin_port: int, root_pem: bytes, name: str,
                  base: str) -> dict[str, float]:
    ctx = ssl.create_default_context(cadata=root_pem.decode())
    direct_url = f"https://127.0.0.1:{origin_port}{PART}"
    best = {"direct": 0.0, "relay": 0.0}
    # Warm-up, untimed: the relay's one-off chain verification and both first handshakes.
    await _download(direct_url, ssl_ctx=ctx, server_hostname=name, local_addr=None, headers={"X-Plex-Token": TOKEN})
    await _download(base + PART, ssl_ctx=None, server_hostname=None, local_addr=("127.0.0.2", 0), headers={})
    for _ in range(repeat):
        got, took = await _download(direct_url, ssl_ctx=ctx, server_hostname=name, local_addr=None,
                                    headers={"X-Plex-Token": TOKEN})
        if got != size:
            raise SystemExit(f"direct: got {got} of {size} bytes")
        best["direct"] = max(best["direct"], got / took / 1e6)
        got, took = await _download(base + PART, ssl_ctx=None, server_hostname=None,
                                    local_addr=("127.0.0.2", 0), headers={})
        if got != size:
            raise SystemExit(f"relay: got {got} of {size} bytes")
        best["relay"] = max(best["relay"], got / took / 1e6)
    return best


def measure(size: int, repeat: int) -> dict[str, float]:
    """Start origin and relay, download REPEAT times each way, stop both: best MB/s per way."""
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
        return asyncio.run(_client(size, repeat, port, root_pem, name, base))
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


def run(options: Options) -> Result:
    """The runner's entry: 1 GiB once each way (8 MiB, best of 5, with --smoke)."""
    size = 8 * 2**20 if options.smoke else int(os.environ.get("RELAY_BENCH_SIZE", 2**30))
    repeat = 5 if options.smoke else 1
    progress(f"relay_throughput: {size / 2**20:.0f} MiB, best of {repeat} each way")
    best = measure(size, repeat)
    ratio = best["relay"] / best["direct"]
    return Result(
        name="relay_throughput",
        figure=f"relay {best['relay']:.1f} MB/s",
        baseline=f"direct {best['direct']:.1f} MB/s",
        ratio=f"{ratio:.2f}",
        goal=">= 0.70 of direct",
        meets=ratio >= 0.7,
        details={"size_bytes": size, "repeat": repeat, "relay_mb_s": best["relay"], "direct_mb_s": best["direct"],
                 "ratio": ratio},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("size", nargs="?", type=int, default=int(os.environ.get("RELAY_BENCH_SIZE", 2**30)))
    parser.add_argument("--smoke", action="store_true", help="8 MiB, for a quick check")
    parser.add_argument("--repeat", type=int, default=None)
    args = parser.parse_args()
    size = 8 * 2**20 if args.smoke else args.size
    repeat = args.repeat or (5 if args.smoke else 1)
    best = measure(size, repeat)
    ratio = best["relay"] / best["direct"]
    print(f"size: {size} bytes ({size / 2**20:.0f} MiB), best of {repeat}")
    print(f"direct HTTPS:  {best['direct']:8.1f} MB/s")
    print(f"through relay: {best['relay']:8.1f} MB/s")
    print(f"ratio relay/direct: {ratio:.2f} (goal >= 0.70) {'OK' if ratio >= 0.7 else 'BELOW GOAL'}")


if __name__ == "__main__":
    main()
