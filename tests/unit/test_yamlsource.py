"""The one YAML reader of the config and the profiles: plain values with their lines, and a clear
problem (line, dotted key) for anything else, never a token echoed back."""

from __future__ import annotations

import pytest

from companion.config import parse_config
from companion.errors import ConfigError, ProfileError
from companion.security.profiles import parse_profile
from companion.yamlsource import Node, YamlSourceError, read_yaml


def test_values_come_with_their_lines_and_a_mapping_value_with_its_keys_line() -> None:
    root = read_yaml("name: TV\nports:\n  - 1\n  - 2\ntls:\n  sni: true\n")
    assert isinstance(root, Node) and root.line == 1
    assert isinstance(root.value, dict)
    assert root.value["name"] == Node("TV", 1)
    assert root.value["ports"] == Node([Node(1, 3), Node(2, 4)], 2)
    assert root.value["tls"] == Node({"sni": Node(True, 6)}, 5)


def test_an_empty_document_is_none() -> None:
    assert read_yaml("") is None
    assert read_yaml("# only a comment\n") is None


def test_anchors_and_aliases_are_read() -> None:
    root = read_yaml("a: &x [1, 2]\nb: *x\n")
    assert isinstance(root, Node) and isinstance(root.value, dict)
    # The alias's items are the anchored ones, from line 1; the value itself sits at its key, line 2.
    assert root.value["b"] == Node([Node(1, 1), Node(2, 1)], 2)


@pytest.mark.parametrize(("text", "line", "key", "kind", "words"), [
    ("a:\n  b: 1\n  b: 2\n", 3, "a.b", "duplicate", "duplicate key"),
    ("list:\n  - {x: 1, x: 2}\n", 2, "list[0].x", "duplicate", "duplicate key"),
    ("when: 2026-12-03\n", 1, "when", "content", "dates must be quoted"),
    ("base: &b {x: 1}\nother:\n  <<: *b\n", 3, "other", "content", "merge keys"),
    ("data: !!binary aGVsbG8=\n", 1, "data", "content", "unsupported YAML type 'binary'"),
    ("x: !!python/object:os.system {}\n", 1, "x", "content", "unsupported YAML type"),
    ("a: [1, 2\nb: 3\n", 2, None, "syntax", "expected ',' or ']'"),
])
def test_what_is_refused_names_line_key_and_kind(text: str, line: int, key: str | None, kind: str,
                                                  words: str) -> None:
    with pytest.raises(YamlSourceError) as info:
        read_yaml(text)
    assert (info.value.line, info.value.key, info.value.kind) == (line, key, kind)
    assert words in info.value.problem


def test_keys_are_strings_unless_bare_numbers_are_asked_for() -> None:
    with pytest.raises(YamlSourceError) as info:
        read_yaml("tls:\n  123456789: a\n")
    assert (info.value.line, info.value.key) == (2, "tls")
    assert info.value.problem == "keys must be strings, got a number"  # the kind, never the key
    root = read_yaml("profiles:\n  42: lg-webos-4\n", scalar_keys=True)
    assert root == Node({"profiles": Node({"42": Node("lg-webos-4", 2)}, 1)}, 1)


def test_the_config_takes_a_target_written_as_a_bare_number() -> None:
    config = parse_config("profiles: {42: lg-webos-4}\nsecurity:\n  target_policies: {7: required}\n", "c.yaml")
    assert dict(config.profiles) == {"42": "lg-webos-4"}
    assert dict(config.security.target_policies) == {"7": "required"}


def test_an_alias_bomb_is_refused_before_it_fills_memory() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, n in zip("abcdefgh", "bcdefghi", strict=True))
    with pytest.raises(YamlSourceError, match="too large"):
        read_yaml(bomb)


def test_deep_nesting_is_refused() -> None:
    with pytest.raises(YamlSourceError):
        read_yaml("[" * 5000 + "]" * 5000)


@pytest.mark.parametrize("text", [
    "servers:\n  - {url: 'http://10.0.0.2:32400', token: !!int TOPSECRET}\n",
    "servers:\n  - {url: 'http://10.0.0.2:32400', token: {123456789: a}}\n",
])
def test_a_bad_value_or_key_is_described_not_echoed(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml")
    assert str(info.value).startswith("c.yaml:2: servers[0].token: ")
    assert "TOPSECRET" not in str(info.value)
    assert "123456789" not in str(info.value)


def test_config_and_profiles_read_yaml_alike_each_in_its_own_words() -> None:
    text = "name: a\nname: [\n"
    with pytest.raises(ConfigError) as config_error:
        parse_config(text, "c.yaml")
    with pytest.raises(ProfileError) as profile_error:
        parse_profile(text, "p.yaml")
    assert str(config_error.value).startswith("c.yaml:3: not valid YAML: ")
    assert str(profile_error.value).startswith("p.yaml:3: malformed YAML: ")
    assert str(config_error.value).split("YAML: ")[1] == str(profile_error.value).split("YAML: ")[1]

    twice = "name: a\nname: b\n"
    with pytest.raises(ConfigError, match=r"^c\.yaml:2: name: given twice"):
        parse_config(twice, "c.yaml")
    with pytest.raises(ProfileError, match=r"^p\.yaml:2: name: duplicate key"):
        parse_profile(twice, "p.yaml")
