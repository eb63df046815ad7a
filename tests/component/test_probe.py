"""probe_server and ProbeCache against a real TLS server (FakePlexServer) on loopback."""

from __future__ import annotations

import datetime as dt
import socket

import aiohttp
import pytest

from companion.errors import TrustError
from companion.security.decide import decide
from companion.security.probe import ProbeCache, probe_server
from companion.security.profiles import Profile, RootsSpec, TlsCaps
from tests.fakes.plex_server import FakePlexServer, make_plex_chain

LOOPBACK = "127.0.0.1"


@pytest.fixture(scope="module")
def rsa_chain():
    return make_plex_chain(key_type="rsa")


@pytest.fixture(scope="module")
def ecdsa_chain():
    return make_plex_chain(key_type="ecdsa")


async def test_probe_returns_the_chain_exactly_as_sent_and_the_plex_direct_hash(rsa_chain):
    async with FakePlexServer(chain=rsa_chain) as server:
        facts = await probe_server(LOOPBACK, server.port, server_name=server.plex_direct_name())
    assert facts.chain_der == rsa_chain.chain_der(with_intermediate=True)
    assert facts.plex_direct_hash == rsa_chain.hash
    assert (facts.leaf_key_type, facts.leaf_key_bits) == ("rsa", 2048)
    assert facts.signature_hashes == ("sha256", "sha256")
    assert facts.not_after == rsa_chain.leaf.not_valid_after_utc
    assert facts.chain[0] == rsa_chain.leaf
    assert "1.3" in facts.tls_versions


async def test_probe_sends_the_server_name_as_sni(rsa_chain):
    async with FakePlexServer(chain=rsa_chain) as server:
        await probe_server(LOOPBACK, server.port, server_name=server.plex_direct_name())
        assert set(server.server_names) == {server.plex_direct_name()}


async def test_probe_without_server_name_sends_no_sni(rsa_chain):
    async with FakePlexServer(chain=rsa_chain) as server:
        await probe_server(LOOPBACK, server.port)
        assert set(server.server_names) == {None}


async def test_server_that_omits_the_intermediate_is_seen_sending_only_its_leaf(rsa_chain):
    async with FakePlexServer(chain=rsa_chain, send_intermediate=False) as server:
        facts = await probe_server(LOOPBACK, server.port)
    assert facts.chain_der == rsa_chain.chain_der(with_intermediate=False)


async def test_server_limited_to_tls12_is_reported_as_accepting_only_tls12(rsa_chain):
    async with FakePlexServer(chain=rsa_chain, tls_min="1.2", tls_max="1.2") as server:
        facts = await probe_server(LOOPBACK, server.port)
    assert facts.tls_versions == {"1.2"}
    assert not facts.tls_versions & facts.tls_versions_untestable


async def test_legacy_server_is_seen_accepting_tls10_through_13(rsa_chain):
    async with FakePlexServer(chain=rsa_chain, tls_min="1.0", tls_max="1.3") as server:
        facts = await probe_server(LOOPBACK, server.port)
    assert facts.tls_versions | facts.tls_versions_untestable == {"1.0", "1.1", "1.2", "1.3"}
    assert {"1.2", "1.3"} <= facts.tls_versions


async def test_restricted_cipher_list_is_enumerated_exactly(rsa_chain):
    ciphers = "ECDHE-RSA-AES128-GCM-SHA256:AES256-SHA"
    async with FakePlexServer(chain=rsa_chain, tls_max="1.2", ciphers=ciphers) as server:
        facts = await probe_server(LOOPBACK, server.port)
    assert facts.ciphers == {"ECDHE-RSA-AES128-GCM-SHA256", "AES256-SHA"}


async def test_ecdsa_server_reports_ec_key_and_only_ecdsa_suites(ecdsa_chain):
    async with FakePlexServer(chain=ecdsa_chain, tls_max="1.2") as server:
        facts = await probe_server(LOOPBACK, server.port)
    assert facts.leaf_key_type == "ec"
    assert facts.ciphers
    assert all("ECDSA" in name for name in facts.ciphers)


async def test_closed_port_raises_trust_error_saying_connection_refused():
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port = sock.getsockname()[1]
    with pytest.raises(TrustError, match=rf"127\.0\.0\.1:{port} refused the connection"):
        await probe_server(LOOPBACK, port, timeout=1.0)


async def test_plain_http_server_raises_trust_error_saying_it_does_not_speak_tls():
    async with FakePlexServer(tls=False) as server:
        with pytest.raises(TrustError, match="does not speak TLS"):
            await probe_server(LOOPBACK, server.port, timeout=1.0)


async def test_probed_facts_give_a_secure_decision_for_a_device_trusting_the_root(rsa_chain):
    async with FakePlexServer(chain=rsa_chain) as server:
        facts = await probe_server(LOOPBACK, server.port, server_name=server.plex_direct_name())
    profile = Profile(id="p", name="P", match=(), transport="companion", media_https=True, media_http=True,
                      tls=TlsCaps(), roots=RootsSpec(), dns_resolver="public")
    decision = decide(profile=profile, roots=[rsa_chain.root], server_address=LOOPBACK,
                      server_port=server.port, facts=facts, dns=None, policy="required",
                      relay_available=False, now=dt.datetime.now(dt.UTC))
    assert decision.mode == "direct-secure"
    assert decision.stream_base == f"https://{rsa_chain.name(LOOPBACK)}:{server.port}"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_cache_answers_from_memory_within_the_recheck_interval(rsa_chain):
    clock = FakeClock()
    cache = ProbeCache(recheck_interval=60, clock=clock)
    async with FakePlexServer(chain=rsa_chain) as server:
        first = await cache.get("srv", LOOPBACK, server.port, None)
        handshakes = server.handshakes
        clock.now += 59
        assert await cache.get("srv", LOOPBACK, server.port, None) is first
        assert server.handshakes == handshakes


async def test_cache_rechecks_with_one_handshake_and_keeps_facts_when_the_certificate_is_unchanged(rsa_chain):
    clock = FakeClock()
    cache = ProbeCache(recheck_interval=60, clock=clock)
    async with FakePlexServer(chain=rsa_chain) as server:
        first = await cache.get("srv", LOOPBACK, server.port, None)
        handshakes = server.handshakes
        clock.now += 61
        assert await cache.get("srv", LOOPBACK, server.port, None) is first
        assert server.handshakes == handshakes + 1


async def test_cache_reprobes_when_the_server_certificate_changed(rsa_chain):
    clock = FakeClock()
    cache = ProbeCache(recheck_interval=60, clock=clock)
    async with FakePlexServer(chain=rsa_chain) as server:
        first = await cache.get("srv", LOOPBACK, server.port, None)
        new_chain = server.rotate_certificate(make_plex_chain(server_hash=rsa_chain.hash, key_type="ecdsa"))
        clock.now += 61
        second = await cache.get("srv", LOOPBACK, server.port, None)
    assert second.fingerprint != first.fingerprint
    assert second.chain_der == new_chain.chain_der()
    assert second.leaf_key_type == "ec"


async def test_invalidate_forces_a_full_probe(rsa_chain):
    cache = ProbeCache(recheck_interval=60, clock=FakeClock())
    async with FakePlexServer(chain=rsa_chain) as server:
        first = await cache.get("srv", LOOPBACK, server.port, None)
        cache.invalidate("srv")
        assert cache.peek("srv") is None
        second = await cache.get("srv", LOOPBACK, server.port, None)
    assert second is not first
    assert second == first


async def test_cache_forgets_a_server_that_went_away(rsa_chain):
    clock = FakeClock()
    cache = ProbeCache(recheck_interval=60, clock=clock)
    server = FakePlexServer(chain=rsa_chain)
    await server.start()
    port = server.port
    await cache.get("srv", LOOPBACK, port, None)
    await server.stop()
    clock.now += 61
    with pytest.raises(TrustError, match="refused the connection"):
        await cache.get("srv", LOOPBACK, port, None)
    assert cache.peek("srv") is None


# --- the fake server's HTTP side, as other tests (relay, end to end) rely on it -----------------

async def _get(server, path, *, method="GET", headers=None, params=None):
    async with aiohttp.ClientSession() as session, session.request(
        method, f"https://{LOOPBACK}:{server.port}{path}", headers=headers, params=params,
        ssl=server.client_context(), server_hostname=server.plex_direct_name(),
    ) as response:
        return response.status, dict(response.headers), await response.read()


async def test_fake_server_verifies_with_its_root_and_requires_the_token(rsa_chain):
    async with FakePlexServer(chain=rsa_chain, token="s3cret") as server:
        status, _, _ = await _get(server, "/library/metadata/501")
        assert status == 401
        status, _, body = await _get(server, "/library/metadata/501", params={"X-Plex-Token": "s3cret"})
        assert status == 200
        assert b'key="/library/parts/501/file"' in body
        status, _, _ = await _get(server, "/identity")
        assert status == 200
    assert [r.token for r in server.requests] == [None, "s3cret", None]


async def test_fake_server_serves_media_ranges_and_head(rsa_chain):
    headers = {"X-Plex-Token": "fake-plex-token"}
    async with FakePlexServer(chain=rsa_chain) as server:
        status, got, body = await _get(server, "/library/parts/501/file", headers={**headers, "Range": "bytes=10-19"})
        assert status == 206
        assert body == server.media[10:20]
        assert got["Content-Range"] == f"bytes 10-19/{len(server.media)}"
        status, got, body = await _get(server, "/library/parts/501/file", method="HEAD", headers=headers)
        assert status == 200
        assert int(got["Content-Length"]) == len(server.media)
        assert body == b""
