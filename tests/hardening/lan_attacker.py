"""The hostile host of the LAN tests: a CLI run inside its own network namespace (tests/netlab.py).

It has nothing but what any host on a home LAN has: unauthenticated GDM datagrams from an address
it chooses among its own, plain HTTP requests, and listening sockets. Each command prints JSON lines.

    python -m tests.hardening.lan_attacker gdm "HELLO * HTTP/1.0" --to 239.0.0.250:32413 \
        --source 10.213.7.3 --header Content-Type=plex/media-server --header Resource-Identifier=x
    python -m tests.hardening.lan_attacker http POST http://10.213.7.1:32500/player/playback/pause \
        --header "Origin=http://evil.example" --data hi
    python -m tests.hardening.lan_attacker listen --bind 10.213.7.3:40001   # a "player" that records
    python -m tests.hardening.lan_attacker page --bind 10.213.7.3:8080 --html page.html   # a web page
    python -m tests.hardening.lan_attacker sniff --iface lan0 --out frames.bin   # every frame it sees
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def _pairs(items: list[str]) -> list[tuple[str, str]]:
    return [(k, v) for k, _, v in (item.partition("=") for item in items)]


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def gdm(args: argparse.Namespace) -> None:
    lines = [args.start_line, *(f"{k}: {v}" for k, v in _pairs(args.header)), "", ""]
    payload = "\r\n".join(lines).encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        if args.source:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(args.source))
            sock.bind((args.source, 0))
        for _ in range(args.repeat):
            sock.sendto(payload, _address(args.to))
    print(json.dumps({"sent": len(payload), "times": args.repeat}), flush=True)


def http(args: argparse.Namespace) -> None:
    data = args.data.encode() if args.data is not None else None
    request = urllib.request.Request(args.url, data=data, method=args.method)
    for name, value in _pairs(args.header):
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as resp:
            status, body, headers = resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        status, body, headers = exc.code, exc.read(), dict(exc.headers)
    except OSError as exc:
        status, body, headers = 0, str(exc).encode(), {}
    print(json.dumps({"status": status, "body": body.decode("utf-8", "replace"), "headers": headers}),
          flush=True)


class _Recorder(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        print(json.dumps({"peer": self.client_address[0], "method": self.command, "path": self.path}),
              flush=True)
        body = b'<?xml version="1.0" encoding="UTF-8"?>\n<Response code="200" status="OK"/>'
        self.send_response(200)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, format: str, *args: object) -> None:
        return


def page(args: argparse.Namespace) -> None:
    html = Path(args.html).read_bytes()

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(html)))
            self.end_headers()
            self.wfile.write(html)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(_address(args.bind), Page)
    print(json.dumps({"listening": list(server.server_address)}), flush=True)
    server.serve_forever()


def listen(args: argparse.Namespace) -> None:
    server = ThreadingHTTPServer(_address(args.bind), _Recorder)
    print(json.dumps({"listening": list(server.server_address)}), flush=True)
    server.serve_forever()


_ETH_P_ALL = 0x0003
_PACKET_ADD_MEMBERSHIP = 1
_PACKET_MR_PROMISC = 1
_SOL_PACKET = 263


def sniff(args: argparse.Namespace) -> None:
    """Every frame the interface sees (promiscuous: also what the switch floods to it), both ways,
    appended to ``--out`` as a 4-byte big-endian length and the frame."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
    sock.bind((args.iface, 0))
    member = struct.pack("iHH8s", socket.if_nametoindex(args.iface), _PACKET_MR_PROMISC, 0, b"")
    sock.setsockopt(_SOL_PACKET, _PACKET_ADD_MEMBERSHIP, member)
    with open(args.out, "ab", buffering=0) as out:
        print(json.dumps({"sniffing": args.iface}), flush=True)
        while True:
            frame = sock.recv(262144)
            out.write(struct.pack("!I", len(frame)) + frame)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.hardening.lan_attacker")
    commands = parser.add_subparsers(dest="command", required=True)
    g = commands.add_parser("gdm", help="send one GDM datagram")
    g.add_argument("start_line")
    g.add_argument("--to", required=True, help="HOST:PORT (a multicast group or a unicast address)")
    g.add_argument("--source", default="", help="one of this host's addresses to send from")
    g.add_argument("--header", action="append", default=[], metavar="KEY=VALUE")
    g.add_argument("--repeat", type=int, default=1)
    h = commands.add_parser("http", help="one HTTP request; prints status, body and headers")
    h.add_argument("method")
    h.add_argument("url")
    h.add_argument("--header", action="append", default=[], metavar="KEY=VALUE")
    h.add_argument("--data", default=None)
    h.add_argument("--timeout", type=float, default=10.0)
    listener = commands.add_parser("listen", help="an HTTP server that prints every request line")
    listener.add_argument("--bind", required=True)
    web = commands.add_parser("page", help="serve one HTML page at every path")
    web.add_argument("--bind", required=True)
    web.add_argument("--html", required=True)
    sniffer = commands.add_parser("sniff", help="record every frame of an interface to a file")
    sniffer.add_argument("--iface", required=True)
    sniffer.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    {"gdm": gdm, "http": http, "listen": listen, "page": page, "sniff": sniff}[args.command](args)


if __name__ == "__main__":
    main(sys.argv[1:])
