"""check_plex_direct against a synthetic plex.direct DNS server, and through a real dnsmasq."""

from __future__ import annotations

import socket

import pytest

from companion.security.dnscheck import check_plex_direct
from tests.fakes.dns import PlexDirectResolver
from tests.fakes.dnsmasq import HASH, dnsmasq

LAN_NAME = f"192-168-1-10.{HASH}.plex.direct"


async def test_name_resolving_to_the_server_address_is_ok():
    async with PlexDirectResolver("127.0.0.1") as resolver:
        facts = await check_plex_direct(LAN_NAME, "192.168.1.10", resolver=resolver.address)
    assert facts.outcome == "ok"
    assert facts.answers == ("192.168.1.10",)
    assert facts.resolver == f"127.0.0.1:{resolver.address[1]}"


async def test_ipv6_name_is_asked_as_aaaa_and_ok():
    name = f"2001-0db8-0000-0000-0000-0000-0000-0010.{HASH}.plex.direct"
    async with PlexDirectResolver("127.0.0.1") as resolver:
        facts = await check_plex_direct(name, "2001:db8::10", resolver=resolver.address)
        assert resolver.queries == [(name + ".", "AAAA")]
    assert facts.outcome == "ok"


async def test_name_resolving_elsewhere_is_wrong_address_naming_both():
    async with PlexDirectResolver("127.0.0.1", overrides={LAN_NAME: "10.9.9.9"}) as resolver:
        facts = await check_plex_direct(LAN_NAME, "192.168.1.10", resolver=resolver.address)
    assert facts.outcome == "wrong-address"
    assert facts.answers == ("10.9.9.9",)
    assert "10.9.9.9" in facts.detail
    assert "192.168.1.10" in facts.detail


async def test_resolver_on_a_closed_port_is_unreachable():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    facts = await check_plex_direct(LAN_NAME, "192.168.1.10", resolver=("127.0.0.1", port), timeout=0.3)
    assert facts.outcome == "unreachable"
    assert f"127.0.0.1:{port}" in facts.detail


async def test_resolver_that_refuses_the_zone_is_unreachable():
    async with PlexDirectResolver("127.0.0.1") as resolver:
        facts = await check_plex_direct("server.example.com", "192.168.1.10", resolver=resolver.address,
                                        timeout=0.5)
    assert facts.outcome == "unreachable"


async def test_empty_answer_is_stripped_and_names_the_fixes():
    # A name the synthetic server has no address for: the same shape of answer a stripping resolver gives.
    async with PlexDirectResolver("127.0.0.1") as resolver:
        facts = await check_plex_direct(f"nas.{HASH}.plex.direct", "192.168.1.10", resolver=resolver.address)
    assert facts.outcome == "stripped"
    assert "rebind-domain-ok=/plex.direct/" in facts.detail


# --- a real dnsmasq in front of the synthetic plex.direct server -------------------------------

@pytest.fixture
async def upstream():
    async with PlexDirectResolver("127.0.0.11") as resolver:
        yield resolver


async def test_dnsmasq_with_stop_dns_rebind_strips_the_private_name(tmp_path, upstream):
    async with dnsmasq(tmp_path, upstream.address, "--stop-dns-rebind") as (resolver, log):
        facts = await check_plex_direct(LAN_NAME, "192.168.1.10", resolver=resolver)
    assert facts.outcome == "stripped"
    assert "rebind-domain-ok=/plex.direct/" in facts.detail
    assert 'private-domain: "plex.direct"' in facts.detail
    assert "public address under the same name resolves" in facts.detail  # control query confirmed it
    assert (LAN_NAME + ".", "A") in upstream.queries  # dnsmasq did ask upstream, then dropped the answer
    assert "rebind" in log.read_text()


async def test_dnsmasq_with_rebind_domain_ok_for_plex_direct_resolves_it(tmp_path, upstream):
    async with dnsmasq(tmp_path, upstream.address, "--stop-dns-rebind",
                       "--rebind-domain-ok=/plex.direct/") as (resolver, _log):
        facts = await check_plex_direct(LAN_NAME, "192.168.1.10", resolver=resolver)
    assert facts.outcome == "ok"
    assert facts.answers == ("192.168.1.10",)
