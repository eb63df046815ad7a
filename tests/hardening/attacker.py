"""A hostile host on the LAN, run inside its own network namespace (tests.netlab), as a CLI that
prints one JSON line with what it saw:

    python -m tests.hardening.attacker hello --to 10.1.2.1:40413 --count 100 --sources 10.1.2.2,10.1.2.100
    python -m tests.hardening.attacker search --to 10.1.2.1:40412 --count 1 --window 2
    python -m tests.hardening.attacker hold --to 10.1.2.1:32500 --count 300  # says "ready", holds until stdin ends
    python -m tests.hardening.attacker subscribe --to http://10.1.2.1:32500 --count 100
    python -m tests.hardening.attacker refused --to http://10.1.2.1:32480 --count 500 --kind 401

Only plain sockets and the standard library: what any host on the LAN can do.
"""

from __future__ import annotations

import argparse
import http.client
import json
import select
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def hello(args: argparse.Namespace) -> dict[str, object]:
    """``count`` HELLOs with distinct Resource-Identifiers from each source address."""
    sent = 0
    for source in args.sources.split(","):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((source, 0))
            for i in range(args.count):
                ident = f"{args.prefix}-{source}-{i}"
                datagram = (f"HELLO * HTTP/1.0\r\nContent-Type: plex/media-player\r\nResource-Identifier: {ident}\r\n"
                            f"Name: Evil {i}\r\nPort: 32500\r\nProduct: Plex for Evil\r\nVersion: 1.0\r\n"
                            "Protocol: plex\r\nProtocol-Version: 1\r\nProtocol-Capabilities: timeline,playback\r\n"
                            "Device-Class: stb\r\n\r\n").encode()
                sock.sendto(datagram, _address(args.to))
                sent += 1
    return {"sent": sent}


def search(args: argparse.Namespace) -> dict[str, object]:
    """``count`` M-SEARCHes from one socket, then every reply for ``window`` seconds: count and bytes."""
    payload = b"M-SEARCH * HTTP/1.0\r\n\r\n"
    replies = 0
    size = 0
    idents: Counter[str] = Counter()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((args.source or "0.0.0.0", 0))
        for _ in range(args.count):
            sock.sendto(payload, _address(args.to))
        deadline = time.monotonic() + args.window
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([sock], [], [], left)
            if not ready:
                break
            data, _ = sock.recvfrom(65535)
            replies += 1
            size += len(data)
            for line in data.decode(errors="replace").split("\r\n"):
                if line.lower().startswith("resource-identifier:"):
                    idents[line.split(":", 1)[1].strip()] += 1
    return {"searches": args.count, "request_bytes": len(payload) * args.count, "replies": replies,
            "bytes": size, "idents": len(idents)}


def hold(args: argparse.Namespace) -> dict[str, object]:
    """Open ``count`` idle TCP connections (from each of ``sources``), say "ready", hold them until
    standard input ends (the test closes it, or dies); then report how many the server had reset or
    closed meanwhile."""
    conns: list[socket.socket] = []
    failed = 0
    for source in (args.sources.split(",") if args.sources else [""]):
        for _ in range(args.count):
            try:
                conns.append(socket.create_connection(_address(args.to), timeout=5,
                                                      source_address=(source, 0) if source else None))
            except OSError:
                failed += 1
    print(json.dumps({"ready": len(conns), "failed": failed}), flush=True)
    sys.stdin.buffer.read()  # blocks until the test closes our stdin (EOF), however it ends
    closed = 0
    for conn in conns:
        conn.setblocking(False)
        try:
            closed += conn.recv(1) == b""
        except BlockingIOError:
            pass  # still open and idle
        except OSError:
            closed += 1  # reset
        conn.close()
    return {"opened": len(conns), "closed_by_server": closed}


def _get(url: str, headers: dict[str, str], source: str = "") -> int:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5,
                                      source_address=(source, 0) if source else None)
    try:
        conn.request("GET", f"{parts.path}?{parts.query}", headers=headers)
        resp = conn.getresponse()
        resp.read()
        return int(resp.status)
    except OSError:
        return 0
    finally:
        conn.close()


def subscribe(args: argparse.Namespace) -> dict[str, object]:
    """``count`` timeline subscribes from each of ``sources``, each with its own client id."""
    statuses: Counter[int] = Counter()
    for source in (args.sources.split(",") if args.sources else [""]):
        for i in range(args.count):
            statuses[_get(f"{args.to}/player/timeline/subscribe?protocol=http&port=9&commandID=1",
                          {"X-Plex-Client-Identifier": f"evil-phone-{source}-{i}", "X-Plex-Device-Name": f"Evil {i}"},
                          source)] += 1
    return {"statuses": {str(k): v for k, v in sorted(statuses.items())}}


def refused(args: argparse.Namespace) -> dict[str, object]:
    """``count`` requests each refused: 401 (admin write, no token), 421 (a foreign Host), 400 (a bad
    timeline subscribe), by ``kind``."""
    statuses: Counter[int] = Counter()
    for _ in range(args.count):
        if args.kind == "401":
            request = urllib.request.Request(f"{args.to}/api/fling", data=b"{}", method="POST",
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=5) as resp:
                    statuses[int(resp.status)] += 1
            except urllib.error.HTTPError as exc:
                statuses[int(exc.code)] += 1
            except OSError:
                statuses[0] += 1
        elif args.kind == "421":
            statuses[_get(f"{args.to}/resources", {"Host": "evil.example"})] += 1
        else:
            statuses[_get(f"{args.to}/player/timeline/subscribe?port=notaport",
                          {"X-Plex-Client-Identifier": "evil"})] += 1
    return {"statuses": {str(k): v for k, v in sorted(statuses.items())}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="attacker")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("hello")
    p.add_argument("--to", required=True)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--sources", required=True)
    p.add_argument("--prefix", default="evil")
    p = sub.add_parser("search")
    p.add_argument("--to", required=True)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--window", type=float, default=2.0)
    p.add_argument("--source", default="")
    p = sub.add_parser("hold")
    p.add_argument("--to", required=True)
    p.add_argument("--count", type=int, default=300)
    p.add_argument("--sources", default="")
    p = sub.add_parser("subscribe")
    p.add_argument("--to", required=True)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--sources", default="")
    p = sub.add_parser("refused")
    p.add_argument("--to", required=True)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--kind", choices=["401", "421", "400"], required=True)
    args = parser.parse_args(argv)
    handlers = {"hello": hello, "search": search, "hold": hold, "subscribe": subscribe, "refused": refused}
    print(json.dumps(handlers[args.command](args)), flush=True)


if __name__ == "__main__":
    main()
