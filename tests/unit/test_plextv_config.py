"""plextv.* config: the real defaults, and a clear file:line: key: error for each bad value."""

from __future__ import annotations

import pytest

from companion.config import Config, parse_config
from companion.errors import ConfigError


def test_defaults_are_the_real_plextv() -> None:
    assert (Config().plextv.enabled, Config().plextv.url, Config().plextv.refresh_interval) == (
        True, "https://plex.tv", 300.0)
    config = parse_config("plextv: {enabled: false, url: 'https://127.0.0.1:8443/', refresh_interval: 30}\n")
    assert (config.plextv.enabled, config.plextv.url, config.plextv.refresh_interval) == (
        False, "https://127.0.0.1:8443", 30.0)


@pytest.mark.parametrize(("text", "message"), [
    ("plextv: {url: 'http://plex.tv'}", "c.yaml:1: plextv.url: expected https://host[:port]"),
    ("plextv: {url: 'https://user:pw@plex.tv'}", "plextv.url: expected https://host[:port]"),
    ("plextv: {url: 'https://plex.tv:99999'}", "plextv.url: is not a valid URL"),
    ("plextv: {url: 'https://plex.tv/?x=1'}", "plextv.url: expected https://host[:port]"),
    ("plextv: {refresh_interval: 0}", "plextv.refresh_interval: must be between 1 and 86400, got 0"),
    ("plextv: {enabled: maybe}", "plextv.enabled: expected true or false"),
    ("plextv: {token: abc}", "plextv.token: unknown key"),
])
def test_bad_values_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text + "\n", "c.yaml")
    assert message in str(info.value)
