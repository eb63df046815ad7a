"""Run every atheris harness for a fixed time and report executions per parser and any crash.

    .venv/bin/python fuzz/run.py --seconds 60            # one minute per parser, one after another
    .venv/bin/python fuzz/run.py --seconds 2 --parallel 5 --json   # what tests/hardening runs

Each harness runs in its own process (libFuzzer exits the process when its time is up) with a
fresh corpus seeded from tests/data and a small dictionary of protocol words. A crash leaves its
input in ``--artifacts`` (default fuzz/artifacts/) and makes the exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "tests" / "data"

HARNESSES = ("gdm", "companion", "timeline", "config", "profile", "clienthello")

# Seed inputs beyond tests/data: each is one corpus file.
_INLINE_SEEDS: dict[str, list[bytes]] = {
    "config": [
        b"name: x\ngdm: {enabled: false, player_port: 40000}\nhttp: {bind: 127.0.0.1, allowed_hosts: [a.lan]}\n",
        b"servers:\n  - {url: 'https://10.0.0.2:32400', token: 'abc'}\ntargets:\n"
        b"  - {name: tv, address: 10.0.0.3, port: 8060, kind: companion, policy: required}\n",
        b"security: {policy: preferred, resolver: '10.0.0.1:53', target_policies: {tv: disabled}}\n"
        b"timeouts: {command: 2.5, target_expiry: 60}\nprofiles: {tv: roku}\naudit_retention_days: 30\n",
    ],
    "companion": [b"\x00" * 64, bytes(range(256))],
    "clienthello": [],  # filled below with real ClientHellos from this machine's OpenSSL
}


def _client_hellos() -> list[bytes]:
    """What OpenSSL clients send first, for a few settings (TLS 1.2 only, 1.3 only, defaults with ALPN)."""
    import ssl

    seeds = []
    for low, high, alpn in ((None, ssl.TLSVersion.TLSv1_2, None), (ssl.TLSVersion.TLSv1_3, None, None),
                            (None, None, ["http/1.1", "h2"])):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if low:
            ctx.minimum_version = low
        if high:
            ctx.maximum_version = high
        if alpn:
            ctx.set_alpn_protocols(alpn)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        try:
            ctx.wrap_bio(incoming, outgoing, server_hostname="10-0-0-2.abc.plex.direct").do_handshake()
        except ssl.SSLWantReadError:
            seeds.append(outgoing.read())
    return seeds


_INLINE_SEEDS["clienthello"] = _client_hellos()

_DICTS: dict[str, list[str]] = {
    "gdm": ["M-SEARCH * HTTP/1.1", "M-SEARCH * HTTP/1.0", "HTTP/1.0 200 OK", "HELLO * HTTP/1.0",
            "BYE * HTTP/1.0", "Content-Type: plex/media-player", "Content-Type: plex/media-server",
            "Resource-Identifier: ", "Name: ", "Port: ", "Product: ", "Version: ", "Protocol: plex",
            "Protocol-Capabilities: ", "Device-Class: ", "\r\n", "\n\n"],
    "timeline": ["<MediaContainer", "</MediaContainer>", "<Timeline", "/>", ' type="video"', ' type="music"',
                 ' state="playing"', ' state="paused"', ' time="', ' duration="', ' volume="', ' mute="1"',
                 ' shuffle="', ' repeat="', ' controllable="', ' token="', ' location="', "<!DOCTYPE",
                 "<!ENTITY", "&amp;", "<?xml version=\"1.0\" encoding=\"UTF-8\"?>"],
    "config": ["name:", "gdm:", "http:", "security:", "timeouts:", "servers:", "targets:", "url:", "token:",
               "policy:", "required", "preferred", "resolver:", "allowed_hosts:", "port:", "address:",
               "profiles:", "state_dir:", "{", "}", "[", "]", "- ", ": ", "!!python/object", "&a", "*a", "<<:"],
    "profile": ["id:", "name:", "match:", "transport:", "companion", "chromecast", "media:", "https:", "tls:",
                "versions:", "min:", "max:", "\"1.2\"", "roots:", "store:", "add:", "remove:", "dns:",
                "resolver:", "lan", "public", "evidence:", "claim:", "confidence:", "rsa_min_bits:", "ecdsa:",
                "&a", "*a", "<<:", "!!binary", "- ", ": "],
}


def _seed_files(name: str) -> list[Path]:
    if name == "gdm":
        return sorted((DATA / "gdm").glob("*.gdm"))
    if name == "timeline":
        return sorted((DATA / "timeline").glob("*.xml"))
    if name == "profile":
        return sorted((DATA / "profiles").rglob("*.yaml"))
    return []


@dataclass
class Result:
    parser: str
    seconds: float
    executions: int
    exec_per_second: int
    coverage: int
    crashed: bool
    detail: str


def _dict_line(word: str) -> str:
    escaped = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else f"\\x{ord(c):02x}" for c in word)
    return f'"{escaped}"'


def run_one(name: str, seconds: int, artifacts: Path, *, ignore_known: bool = False) -> Result:
    """Fuzz one parser for ``seconds`` in a child process; parse libFuzzer's final report."""
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        for i, path in enumerate(_seed_files(name)):
            shutil.copyfile(path, corpus / f"seed-file-{i}")
        for i, data in enumerate(_INLINE_SEEDS.get(name, [])):
            (corpus / f"seed-inline-{i}").write_bytes(data)
        args = [sys.executable, str(HERE / f"fuzz_{name}.py"), str(corpus), f"-max_total_time={seconds}",
                f"-artifact_prefix={artifacts}/{name}-", "-timeout=10", "-rss_limit_mb=2048",
                "-max_len=4096", "-print_final_stats=1"]
        words = _DICTS.get(name)
        if words:
            dict_path = Path(tmp) / f"{name}.dict"
            dict_path.write_text("\n".join(_dict_line(w) for w in words) + "\n")
            args.append(f"-dict={dict_path}")
        env = {**os.environ, "COMPANION_FUZZ_IGNORE_KNOWN": "1" if ignore_known else "0"}
        proc = subprocess.run(args, capture_output=True, text=True, errors="replace",
                              timeout=seconds + 120, check=False, env=env)
    out = proc.stderr + proc.stdout
    done = re.search(r"Done (\d+) runs in (\d+) second", out)
    runs = int(done.group(1)) if done else max((int(n) for n in re.findall(r"^#(\d+)", out, re.M)), default=0)
    took = float(done.group(2)) if done else float(seconds)
    cov = max((int(c) for c in re.findall(r"cov: (\d+)", out)), default=0)
    crashed = proc.returncode != 0
    detail = ""
    if crashed:
        start = out.find("=== Uncaught Python exception")
        detail = (out[start:start + 3000] if start >= 0 else out[-3000:]).strip()
    return Result(name, took, runs, int(runs / took) if took else runs, cov, crashed, detail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=60, help="fuzzing time per parser (default 60)")
    parser.add_argument("--only", action="append", choices=HARNESSES, help="run just this parser (repeatable)")
    parser.add_argument("--parallel", type=int, default=1, help="parsers fuzzed at once (default 1)")
    parser.add_argument("--artifacts", type=Path, default=HERE / "artifacts", help="where crash inputs go")
    parser.add_argument("--json", action="store_true", help="one JSON list of results on stdout")
    parser.add_argument("--ignore-known", action="store_true",
                        help="do not stop on bugs already reported (fuzz/_harness.py KNOWN_BUGS)")
    args = parser.parse_args(argv)
    args.artifacts.mkdir(parents=True, exist_ok=True)
    names = args.only or list(HARNESSES)
    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        results = list(pool.map(
            lambda n: run_one(n, args.seconds, args.artifacts.resolve(), ignore_known=args.ignore_known), names))
    if args.json:
        json.dump([asdict(r) for r in results], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(f"{'parser':<10} {'executions':>11} {'exec/s':>8} {'cov':>5}  result")
        for r in results:
            print(f"{r.parser:<10} {r.executions:>11} {r.exec_per_second:>8} {r.coverage:>5}  "
                  + ("CRASH" if r.crashed else "ok"))
        for r in results:
            if r.crashed:
                print(f"\n--- {r.parser} crashed (input saved under {args.artifacts}):\n{r.detail}")
    return 1 if any(r.crashed for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
