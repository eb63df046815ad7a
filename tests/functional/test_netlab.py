"""The test LAN itself: multicast reaches every host, the test process is on the segment, cut works."""

from __future__ import annotations

import asyncio
import textwrap

from tests.netlab import GDM_GROUP, Lan

_RECEIVE = textwrap.dedent("""
    import socket, struct, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("", 41999))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                 struct.pack("4s4s", socket.inet_aton(sys.argv[1]), socket.inet_aton(sys.argv[2])))
    print("ready", flush=True)
    s.settimeout(20)
    data, peer = s.recvfrom(100)
    print(data.decode(), peer[0], flush=True)
""")
_SEND = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    s.sendto(b"hello-lan", (sys.argv[1], 41999))
""")
_CONNECT = textwrap.dedent("""
    import socket, sys
    try:
        with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])) as c:
            print(c.recv(10).decode())
    except OSError as exc:
        print("failed", type(exc).__name__)
""")


async def test_multicast_reaches_every_other_host_and_the_test_process_is_on_the_lan() -> None:
    async with Lan("a", "b", "c", join_self=True) as lan:
        receivers = {}
        for name in ("b", "c"):
            host = lan[name]
            proc = await host.spawn(*host.python("-c", _RECEIVE, GDM_GROUP, host.address))
            assert proc.stdout is not None
            async with asyncio.timeout(20):
                assert (await proc.stdout.readline()).strip() == b"ready"
            receivers[name] = proc
        sender = lan["a"]
        done = sender.run(*sender.python("-c", _SEND, GDM_GROUP))
        assert done.returncode == 0
        for proc in receivers.values():
            assert proc.stdout is not None
            async with asyncio.timeout(20):
                line = (await proc.stdout.readline()).decode().split()
            assert line == ["hello-lan", lan["a"].address]

        async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"hi")
            await writer.drain()
            writer.close()

        assert lan.self_address is not None
        server = await asyncio.start_server(greet, lan.self_address, 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            out = await asyncio.to_thread(lan["b"].run, *lan["b"].python("-c", _CONNECT, lan.self_address,
                                                                         str(port), "10"))
            assert out.stdout.decode().strip() == "hi"
            lan.cut("b")
            out = await asyncio.to_thread(lan["b"].run, *lan["b"].python("-c", _CONNECT, lan.self_address,
                                                                         str(port), "1"))
            assert out.stdout.decode().startswith("failed")
            lan.mend("b")
            out = await asyncio.to_thread(lan["b"].run, *lan["b"].python("-c", _CONNECT, lan.self_address,
                                                                         str(port), "10"))
            assert out.stdout.decode().strip() == "hi"
