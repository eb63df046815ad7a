"""What a fling may carry to a target: server-relative keys only (issue 12 row 7), no nested token
(row 8), and only sources plausible for the interface a GDM sighting arrived on (row 9)."""

from __future__ import annotations

import ipaddress
from types import MappingProxyType

import pytest

from companion.discovery.gdm import arrival_networks, implausible_source
from companion.errors import ProtocolError
from companion.model import Command, clean_params, strip_tokens
from companion.proto.companion import media_request, server_path

SECRET = "NESTED-TOKEN-4c1d9e77"


@pytest.mark.parametrize("value", [
    f"/playQueues/1?own=1&X-Plex-Token={SECRET}&window=100",
    f"/library/metadata/1?X-Plex-Token%3D{SECRET}",
    f"/library/metadata/1?X-Plex-Token%253D{SECRET}",
    f"/library/metadata/1?a=1%26X%2DPlex%2DToken%3D{SECRET}",
    f"/x?token={SECRET}", f"/x?accessToken={SECRET};b=2",
])
def test_a_token_nested_in_a_value_is_removed_not_masked(value: str) -> None:
    out = strip_tokens(value)
    assert SECRET not in out
    assert "redacted" not in out
    assert out.startswith("/")


def test_values_without_a_token_pass_unchanged() -> None:
    for value in ("/library/metadata/1", "/playQueues/1?own=1&window=100", "/library/sections/1/all?title=A%20B"):
        assert strip_tokens(value) == value
    assert strip_tokens(f"/playQueues/1?X-Plex-Token={SECRET}&window=100") == "/playQueues/1?window=100"


def test_clean_params_drops_token_parameters_and_nested_tokens() -> None:
    params = {"key": f"/a?X-Plex-Token={SECRET}", "X-Plex-Token": SECRET, "token": SECRET, "offset": "5"}
    assert clean_params(params) == {"key": "/a", "offset": "5"}


@pytest.mark.parametrize("key", [
    "//169.254.169.254/latest/meta-data", "http://10.0.0.5:32400/library/metadata/1", "https:x",
    "/%2F%2Fevil.example/x", "/%252F%252Fevil.example/x", "/library/../../etc/passwd",
    "/library/%2e%2e/%2e%2e/x", "/a\\..\\b", "/\\\\evil.example/x", "library/metadata/1", "/a b",
])
def test_keys_that_leave_the_server_are_refused_with_a_clear_error(key: str) -> None:
    for name in ("key", "containerKey"):
        params = {"key": "/library/metadata/1", name: key}
        with pytest.raises(ProtocolError, match=rf"{name}: expected a path on the server"):
            media_request(Command("playback", "playMedia", MappingProxyType(params)))


def test_server_paths_pass_and_lose_nested_tokens() -> None:
    params = {"key": f"/library/metadata/501?X-Plex-Token={SECRET}",
              "containerKey": f"/playQueues/7?own=1&window=200&X-Plex-Token%3D{SECRET}",
              "shuffle": "0", "extraThing": f"/x?token={SECRET}"}
    request = media_request(Command("playback", "playMedia", MappingProxyType(params)))
    assert request.key == "/library/metadata/501"
    assert request.container_key == "/playQueues/7?own=1&window=200"
    assert SECRET not in str(request.to_params())
    assert server_path("w", "key", "/library/sections/1/all?title=The%20Movie") == \
        "/library/sections/1/all?title=The%20Movie"


def test_an_error_about_a_key_never_echoes_a_nested_token() -> None:
    with pytest.raises(ProtocolError) as caught:
        server_path("w", "key", f"//evil.example/x?X-Plex-Token={SECRET}")
    assert SECRET not in str(caught.value)


LOCAL = [(1, ipaddress.IPv4Interface("127.0.0.1/8")), (2, ipaddress.IPv4Interface("10.0.0.1/24")),
         (3, ipaddress.IPv4Interface("192.168.77.1/24"))]


def verdict(sender: str, ifindex: int | None, interface: str = "") -> str:
    return implausible_source(sender, *arrival_networks(LOCAL, ifindex, interface))


def test_a_gdm_source_must_be_on_the_network_of_the_interface_it_arrived_on() -> None:
    assert verdict("10.0.0.5", 2) == ""
    assert verdict("10.0.0.1", 2) == ""  # a player on the bridge host itself
    assert verdict("127.0.0.1", 1) == ""
    assert "not on the network of interface #2" in verdict("192.168.77.20", 2)  # another LAN's address
    assert verdict("127.0.0.1", 2) != ""  # a spoofed loopback source
    assert verdict("10.0.0.5", 9) != "", "an interface without IPv4 networks has no plausible source"
    for bad in ("10.0.0.255", "239.0.0.250", "0.0.0.0", "255.255.255.255", "::1"):
        assert verdict(bad, 2) != "", bad


def test_without_the_kernels_word_the_listening_interface_or_any_link_decides() -> None:
    assert verdict("10.0.0.5", None, "10.0.0.1") == ""
    assert "not on the network of interface 10.0.0.1" in verdict("192.168.77.20", None, "10.0.0.1")
    assert verdict("192.168.77.20", None, "") == ""  # some interface's link
    assert verdict("8.8.8.8", None, "") != ""  # off every link
    assert verdict("10.0.0.5", None, "10.9.9.9") == ""  # an interface address that went away
