"""Config loading: defaults embedded, every error names file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from companion.config import Config, load_config, parse_config
from companion.errors import ConfigError, ConfigErrors


def test_no_config_means_embedded_defaults() -> None:
    config = load_config(None)
    assert config == Config()
    assert config.gdm.group == "239.0.0.250"
    assert config.gdm.player_port == 32412
    assert config.http.admin_port == 32480
    assert config.http.face_port_base == 32500
    assert config.security.policy == "preferred"
    assert config.faces == "all"


def test_empty_file_is_defaults(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("# nothing set\n")
    assert load_config(p).gdm == Config().gdm


def test_every_documented_key_is_accepted() -> None:
    text = """
name: Den bridge
interfaces: [192.168.1.5]
face_suffix: " via bridge"
gdm: {enabled: true, group: 239.0.0.250, player_port: 40412, announce_port: 40413, server_port: 40414,
      hello_interval: 15, search_interval: 5}
mdns: {enabled: false}
http: {bind: 0.0.0.0, admin_port: 8080, face_port_base: 33000, relay_port: 33001,
       allowed_hosts: [bridge.lan], cors_origins: ["https://app.plex.tv"]}
security: {policy: required, relay: false, dns_check: true, resolver: "192.168.1.1:53",
           target_policies: {Kitchen: disabled}}
timeouts: {command: 3, target_expiry: 300, push: 2}
servers:
  - {url: "https://192.168.1.10:32400", token: s3cret}
targets:
  - {name: Bedroom TV, kind: companion, address: 192.168.1.20, port: 32500, profile: roku, policy: preferred}
faces: non-companion
profiles_dirs: [/etc/companion/profiles]
profiles: {Bedroom TV: roku}
state_dir: /var/lib/companion
audit_retention_days: 30
"""
    c = parse_config(text, "full.yaml")
    assert c.name == "Den bridge"
    assert c.gdm.player_port == 40412
    assert c.security.policy == "required"
    assert c.security.target_policies == {"Kitchen": "disabled"}
    assert c.servers[0].url == "https://192.168.1.10:32400"
    assert c.servers[0].port == 32400
    assert c.targets[0].profile == "roku"
    assert c.faces == "non-companion"


def test_server_token_never_in_repr() -> None:
    c = parse_config("servers: [{url: 'http://10.0.0.2:32400', token: TOPSECRET}]")
    assert "TOPSECRET" not in repr(c)
    assert c.servers[0].token == "TOPSECRET"


@pytest.mark.parametrize(("text", "expected"), [
    ("gdm:\n  player_port: soon\n", "c.yaml:2: gdm.player_port: expected a whole number"),
    ("colour: blue\n", "c.yaml:1: colour: unknown key"),
    ("gdm:\n  hello_interval: -1\n", "c.yaml:2: gdm.hello_interval: must be between"),
    ("http:\n  admin_port: 70000\n", "c.yaml:2: http.admin_port: must be between 0 and 65535"),
    ("security:\n  policy: maybe\n", "c.yaml:2: security.policy: must be one of required, preferred, disabled"),
    ("targets:\n  - name: TV\n    port: 1\n", "c.yaml:2: targets[0].address: is required"),
    ("targets:\n  - {name: TV, address: tv.lan, port: 1}\n", "c.yaml:2: targets[0].address: expected an IP address"),
    ("servers:\n  - url: ftp://x\n", "c.yaml:2: servers[0].url: expected http(s)://host:port"),
    ("servers:\n  - url: http://nas.lan:32400\n", "c.yaml:2: servers[0].url: use the server's IP address"),
    ("gdm: [1, 2]\n", "c.yaml:1: gdm: expected a mapping, got a list"),
    ("gdm:\n  nope: 1\n", "c.yaml:2: gdm.nope: unknown key"),
    ("faces: some\n", "c.yaml:1: faces: must be one of all, non-companion, none"),
    ("mdns:\n  enabled: 'yes please'\n", "c.yaml:2: mdns.enabled: expected true or false"),
    ("gdm: {group: 'ff02::1'}\n", "c.yaml:1: gdm.group: GDM is IPv4 only"),
    ("name: [\n", "c.yaml:2: not valid YAML"),
    ("name: a\nname: b\n", "c.yaml:2: name: given twice"),
])
def test_bad_config_names_file_line_and_key(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml")
    assert str(info.value).startswith(expected), str(info.value)


@pytest.mark.parametrize("token", ["[TOPSECRET]", "123456789", "{a: TOPSECRET}"])
def test_bad_token_value_is_not_echoed(token: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(f"servers:\n  - {{url: 'http://10.0.0.2:32400', token: {token}}}\n", "c.yaml")
    assert "servers[0].token: expected text" in str(info.value)
    assert "TOPSECRET" not in str(info.value)
    assert "123456789" not in str(info.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.yaml")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_text_gives_config_or_config_error(text: str) -> None:
    try:
        parse_config(text, "fuzz.yaml")
    except ConfigError:
        pass


def test_the_example_config_parses_and_documents_every_key() -> None:
    import dataclasses
    import re

    from companion.config import (
        _SPEC,
        GdmConfig,
        HttpConfig,
        LimitsConfig,
        MdnsConfig,
        SecurityConfig,
        TimeoutsConfig,
    )

    path = Path(__file__).resolve().parents[2] / "systemd" / "config.example.yaml"
    text = path.read_text()
    config = parse_config(text, str(path))
    assert config.security.policy == "preferred"
    assert config.http.admin_port == 32480
    documented = set(re.findall(r"^#?\s*([a-z_]+):", text, flags=re.MULTILINE))
    for key in _SPEC:
        assert key in documented, f"{key} is not in config.example.yaml"
    for section in (GdmConfig, MdnsConfig, HttpConfig, SecurityConfig, TimeoutsConfig, LimitsConfig):
        for f in dataclasses.fields(section):
            assert f.name in documented, f"{section.__name__}.{f.name} is not in config.example.yaml"


def test_every_problem_in_the_file_is_reported_in_one_run_with_did_you_mean() -> None:
    text = ("gdm:\n  helo_interval: 5\n  player_port: 70000\nsecurity:\n  policy: prefered\n  relay: maybe\n"
            "servers:\n  - {url: 'https://192.168.1.10:32400', tokn: x}\n  - {url: ftp://x}\n")
    with pytest.raises(ConfigErrors) as info:
        parse_config(text, "c.yaml")
    assert str(info.value).splitlines() == [
        "c.yaml:2: gdm.helo_interval: unknown key (did you mean hello_interval?) (known keys here: announce_port, "
        "enabled, group, hello_interval, player_port, search_interval, server_port)",
        "c.yaml:3: gdm.player_port: must be between 1 and 65535, got 70000",
        "c.yaml:5: security.policy: must be one of required, preferred, disabled; got 'prefered' "
        "(did you mean preferred?)",
        "c.yaml:6: security.relay: expected true or false, got 'maybe'",
        "c.yaml:8: servers[0].tokn: unknown key (did you mean token?) (known keys here: token, url)",
        "c.yaml:9: servers[1].url: expected http(s)://host:port, got 'ftp://x'",
    ]
    assert [e.line for e in info.value.errors] == [2, 3, 5, 6, 8, 9]
    assert (info.value.line, info.value.key) == (2, "gdm.helo_interval")


def test_the_cli_prints_each_config_problem_on_its_own_line(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from companion.cli import main
    bad = tmp_path / "c.yaml"
    bad.write_text("gdm:\n  helo_interval: 5\nfaces: sum\n")
    assert main(["run", "--config", str(bad)]) == 78
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"companion: configuration error: {bad}:2: gdm.helo_interval: unknown key (did you mean hello_interval?) "
        "(known keys here: announce_port, enabled, group, hello_interval, player_port, search_interval, server_port)",
        f"companion: configuration error: {bad}:3: faces: must be one of all, non-companion, none; got 'sum'",
    ]
