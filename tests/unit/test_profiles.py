"""Device profiles: the shipped set loads cleanly, matching picks the right profile, root stores
resolve, and every kind of broken file gives a ``file:line: key: message`` error without taking
the good profiles down with it."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from companion.errors import ProfileError, ProfileErrors
from companion.security import profiles as P
from companion.security.profiles import describe, lint, load_profiles, parse_profile, profileset, shipped_profiles_dir
from companion.security.profiles.parse import _PROFILE_KEYS, _TLS_KEYS
from companion.security.terms import TLS_VERSIONS

DATA = Path(__file__).resolve().parent.parent / "data" / "profiles"
GOOD = DATA / "good"
BROKEN = DATA / "broken"

ISRG_X1 = "96bcec06264976f37460779acf28c5a7cfe8a3c0aae11a8ffcee05c0bddf08c6"
ISRG_X2 = "69729b8e15a86efc177a57afb7171dfc64add28c2fca8cf1507e34453ccb1470"
DIGICERT_GLOBAL_ROOT_CA = "4348a0e9444c78cb265e058d5e8944b4d84f9662bd26db257f8934a443c70161"
GLOBALSIGN_R1 = "ebd41040e4bb3ec742c9e381d31ef2a41a48b6685c96e7cef3c1df6cd4331c99"

SEED_PROFILES = {
    "amazon-fire-tv", "android-mobile", "android-tv", "apple-tv", "chromecast", "ios", "playstation-4",
    "playstation-3", "plex-home-theater", "plex-media-player", "plex-web", "roku", "lg-netcast",
    "samsung-tizen-2016", "tivo-series-6", "sonos", "windows", "xbox-one", "xbox-360",
    "mobile-server", "manual-connection", "default",
}

MINIMAL = """\
id: minimal
name: Minimal
match: []
transport: companion
media: {https: true, http: true}
dns: {resolver: lan}
"""


@pytest.fixture(scope="module")
def shipped() -> P.ProfileSet:
    return load_profiles()


def fingerprints(certs) -> set[str]:
    return {c.fingerprint(hashes.SHA256()).hex() for c in certs}


def fields(**kw: str) -> dict[str, str]:
    base = dict.fromkeys(P.MATCH_FIELDS, "")
    base.update(source="gdm", kind="companion")
    base.update(kw)
    return base


def error_for(errors, file: Path) -> ProfileError:
    found = [e for e in errors if e.path == str(file)]
    assert len(found) == 1, [str(e) for e in errors]
    return found[0]


# --- the shipped set --------------------------------------------------------------------------

def test_every_shipped_profile_loads_without_errors(shipped: P.ProfileSet) -> None:
    assert shipped.errors == ()
    assert set(shipped.profiles) >= SEED_PROFILES
    assert list(shipped.profiles)[-1] == "default"


def test_lint_of_the_shipped_profiles_reports_nothing() -> None:
    assert lint([]) == []
    assert lint([shipped_profiles_dir()]) == []


def test_shipped_profiles_dir_sits_beside_the_companion_package() -> None:
    directory = shipped_profiles_dir()
    assert (directory / "devices" / "default.yaml").is_file()
    assert (directory.parent / "companion" / "__init__.py").is_file()


def test_every_shipped_claim_has_a_source_unless_assumed(shipped: P.ProfileSet) -> None:
    for profile in shipped.profiles.values():
        assert profile.evidence, profile.id
        for ev in profile.evidence:
            assert ev.confidence == "assumed" or ev.source, (profile.id, ev.claim)


def test_never_secure_situations_do_not_play_https_and_match_only_by_override(shipped: P.ProfileSet) -> None:
    for pid in ("mobile-server", "manual-connection", "playstation-3", "xbox-360"):
        assert shipped.get(pid).media_https is False
    for pid in ("mobile-server", "manual-connection"):
        assert shipped.get(pid).match == ()
        assert shipped.match(fields(product="Anything"), override=pid).id == pid


def test_chromecast_profile_uses_public_dns_and_cast_transport(shipped: P.ProfileSet) -> None:
    cast = shipped.match(fields(source="mdns", kind="chromecast", model="Chromecast Ultra"))
    assert cast.id == "chromecast"
    assert cast.transport == "chromecast"
    assert cast.dns_resolver == "public"


# --- matching ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("kw", "expected"), [
    ({"product": "Plex for Roku", "version": "8.2.1"}, "roku"),
    ({"product": "PLEX FOR ROKU"}, "roku"),
    ({"product": "Plex for Android (TV)", "model": "AFTMM"}, "amazon-fire-tv"),
    ({"product": "Plex for Android (TV)", "model": "SHIELD Android TV"}, "android-tv"),
    ({"product": "Plex for Android", "device_class": "phone"}, "android-mobile"),
    ({"product": "Plex for LG", "platform": "webOS", "platform_version": "4.9.0"}, "lg-webos-4"),
    ({"product": "Plex for LG", "platform": "webOS", "platform_version": "5.0.1"}, "lg-webos-5"),
    ({"product": "Plex for LG", "platform": "NetCast 3.0"}, "lg-netcast"),
    ({"product": "Plex Media Player", "platform": "Linux"}, "plex-media-player"),
    # what plex-mpv-shim 1.11 announces over GDM (gdm.py clientDetails, called from mpv_shim.py)
    ({"product": "Plex MPV Shim", "version": "1.0", "device_class": "pc"}, "plex-mpv-shim"),
    ({"product": "Plex for Xbox", "platform": "Xbox One"}, "xbox-one"),
    ({"product": "Plex for Xbox 360"}, "xbox-360"),
    ({"product": "Some Unknown Player"}, "default"),
])
def test_shipped_profiles_match_the_devices_they_describe(shipped: P.ProfileSet, kw, expected) -> None:
    assert shipped.match(fields(**kw)).id == expected


def test_override_naming_a_loaded_profile_wins_over_matching() -> None:
    profiles = load_profiles([GOOD])
    assert profiles.match(fields(product="Alpha Player 2", platform="linux"), override="zulu").id == "zulu"


def test_unknown_override_falls_back_to_matching_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    profiles = load_profiles([GOOD])
    with caplog.at_level(logging.WARNING, logger=profileset.__name__):
        chosen = profiles.match(fields(product="Zulu 1"), override="no-such-profile")
    assert chosen.id == "zulu"
    assert "no-such-profile" in caplog.text


def test_every_key_of_a_clause_must_match_with_globs_case_insensitively() -> None:
    profiles = load_profiles([GOOD])
    # alpha's first clause needs product AND platform; beta's only needs product.
    assert profiles.match(fields(product="alpha player 3.1", platform="LINUX")).id == "alpha"
    assert profiles.match(fields(product="Alpha Player 3.1", platform="windows")).id == "beta"
    # alpha's second clause: any Alpha* Chromecast model.
    assert profiles.match(fields(kind="chromecast", model="alpha mini")).id == "alpha"


def test_match_order_is_file_name_order_with_default_last() -> None:
    profiles = load_profiles([GOOD])
    assert list(profiles.profiles) == ["alpha", "beta", "zulu", "default"]
    assert profiles.match(fields(product="Zulu")).id == "zulu"
    assert profiles.match(fields(product="nothing known")).id == "default"


def test_missing_fields_count_as_empty_strings() -> None:
    profiles = load_profiles([GOOD])
    assert profiles.match({"product": "Alpha Player", "platform": "linux"}).id == "alpha"
    assert profiles.match({}).id == "default"


def test_no_match_and_no_default_is_a_profile_error() -> None:
    profiles = load_profiles([BROKEN])
    with pytest.raises(ProfileError, match="no profile matches"):
        profiles.match(fields(product="Nothing"))


def test_get_of_an_unknown_id_names_it() -> None:
    with pytest.raises(ProfileError, match="'nope'"):
        load_profiles([GOOD]).get("nope")


# --- root stores ------------------------------------------------------------------------------

def test_mozilla_store_is_the_certifi_bundle(shipped: P.ProfileSet) -> None:
    import certifi
    in_bundle = Path(certifi.where()).read_text().count("-----BEGIN CERTIFICATE-----")
    mozilla = shipped.store("mozilla")
    assert len(fingerprints(mozilla.certificates)) == in_bundle
    assert ISRG_X1 in fingerprints(mozilla.certificates)
    assert mozilla.path.endswith("mozilla.yaml")


def test_the_2019_store_has_isrg_x1_and_old_roots_but_nothing_created_later(shipped: P.ProfileSet) -> None:
    old = shipped.store("mozilla-2019")
    prints = fingerprints(old.certificates)
    assert {ISRG_X1, DIGICERT_GLOBAL_ROOT_CA, GLOBALSIGN_R1} <= prints
    assert ISRG_X2 not in prints
    assert all(c.not_valid_before_utc.year < 2019 for c in old.certificates)


def test_lg_netcast_trusts_a_few_rsa_roots_and_no_isrg_root(shipped: P.ProfileSet) -> None:
    netcast = shipped.roots_for(shipped.get("lg-netcast"))
    assert 0 < len(netcast) < 10
    assert not any(isinstance(c.public_key(), ec.EllipticCurvePublicKey) for c in netcast)
    assert not fingerprints(netcast) & {ISRG_X1, ISRG_X2}


def test_webos_4_lacks_isrg_x1_while_webos_5_has_it(shipped: P.ProfileSet) -> None:
    assert ISRG_X1 not in fingerprints(shipped.roots_for(shipped.get("lg-webos-4")))
    assert ISRG_X1 in fingerprints(shipped.roots_for(shipped.get("lg-webos-5")))


def test_roots_for_applies_store_extends_then_profile_add_and_remove() -> None:
    profiles = load_profiles([GOOD])
    store = profiles.store("fixture-store")
    assert GLOBALSIGN_R1 not in fingerprints(store.certificates)  # the store's own remove
    assert ISRG_X1 in fingerprints(store.certificates)            # inherited from mozilla-2019
    alpha = fingerprints(profiles.roots_for(profiles.get("alpha")))
    assert ISRG_X1 not in alpha                                    # the profile's remove
    assert ISRG_X2 in alpha                                        # the profile's add
    assert alpha - {ISRG_X2} == fingerprints(store.certificates) - {ISRG_X1}


def test_unknown_store_name_is_a_profile_error() -> None:
    with pytest.raises(ProfileError, match="'nope'"):
        load_profiles([GOOD]).store("nope")


# --- broken files -----------------------------------------------------------------------------

@pytest.mark.parametrize(("file", "line", "key", "words"), [
    ("devices/unknown-key.yaml", 8, "tls.colour", "unknown key"),
    ("devices/wrong-type.yaml", 6, "media.https", "expected true or false"),
    ("devices/bad-version.yaml", 9, "tls.versions.max", "'1.4'"),
    ("devices/id-mismatch.yaml", 1, "id", "must equal the file name"),
    ("devices/unknown-root.yaml", 11, "tls.roots.add[1]", "made-up-root"),
    ("devices/uses-missing-store.yaml", 7, "tls.roots.store", "failed to load"),
    ("roots/missing-pem.yaml", 5, "trusted_certificates[0].file", "missing"),
    ("roots/not-a-cert.yaml", 3, "trusted_certificates[0].file", "not a PEM certificate"),
    ("roots/wrong-fingerprint.yaml", 4, "trusted_certificates[0].fingerprint", "does not match"),
])
def test_broken_file_gives_an_error_naming_file_line_and_key(file, line, key, words) -> None:
    path = BROKEN / file
    error = error_for(load_profiles([BROKEN]).errors, path)
    assert str(error).startswith(f"{path}:{line}: {key}: ")
    assert words in str(error)
    assert (error.line, error.key) == (line, key)


def test_malformed_yaml_gives_the_line_of_the_problem() -> None:
    path = BROKEN / "devices" / "malformed.yaml"
    error = error_for(load_profiles([BROKEN]).errors, path)
    assert str(error).startswith(f"{path}:5: malformed YAML")


def test_duplicate_id_keeps_the_first_and_reports_the_second() -> None:
    profiles = load_profiles([BROKEN, DATA / "duplicate"])
    second = DATA / "duplicate" / "fine.yaml"
    error = error_for(profiles.errors, second)
    assert str(error).startswith(f"{second}:1: id: duplicate id 'fine'")
    assert profiles.get("fine").path == str(BROKEN / "devices" / "fine.yaml")


def test_a_broken_profile_is_skipped_and_the_good_ones_still_load() -> None:
    profiles = load_profiles([BROKEN])
    assert list(profiles.profiles) == ["fine"]
    assert len(profiles.errors) == 10
    assert profiles.match(fields(product="Fine 1.0")).id == "fine"


def test_lint_accepts_files_and_directories_and_formats_errors_as_file_line_key() -> None:
    errors = lint([BROKEN / "devices" / "wrong-type.yaml", BROKEN / "devices" / "fine.yaml"])
    assert [str(e) for e in errors] == [
        f"{BROKEN / 'devices' / 'wrong-type.yaml'}:6: media.https: expected true or false, got string 'yes please'"
    ]
    messages = [str(e) for e in lint([BROKEN])]
    assert len(messages) == 10
    assert all(re.match(r"^\S+:\d+: ", m) for m in messages)


def test_lint_of_a_missing_path_says_so(tmp_path: Path) -> None:
    [error] = lint([tmp_path / "absent.yaml"])
    assert "no such file" in str(error)


@pytest.mark.parametrize(("text", "line", "key", "words"), [
    (MINIMAL.replace("dns: {resolver: lan}", "dns: {resolver: router}"), 6, "dns.resolver", "lan, public"),
    (MINIMAL.replace("transport: companion", "transport: dlna"), 4, "transport", "companion, chromecast"),
    (MINIMAL + "tls:\n  versions: {min: 1.2, max: \"1.3\"}\n", 8, "tls.versions.min", "quote it"),
    (MINIMAL + "tls:\n  versions: {min: \"1.3\", max: \"1.2\"}\n", 8, "tls.versions", "above max"),
    (MINIMAL + "evidence:\n  - {claim: x, confidence: certain}\n", 8, "evidence[0].confidence", "assumed"),
    (MINIMAL + "evidence:\n  - {claim: x, confidence: documented}\n", 8, "evidence[0].source", "needs a source"),
    (MINIMAL.replace("match: []", "match:\n  - {firmware: \"1.*\"}"), 4, "match[0].firmware", "unknown key"),
    (MINIMAL.replace("name: Minimal\n", ""), 1, "name", "missing"),
    (MINIMAL + "notes: a\nnotes: b\n", 8, "notes", "duplicate key"),
    (MINIMAL + "tls: {rsa_min_bits: true}\n", 7, "tls.rsa_min_bits", "whole number"),
])
def test_bad_values_name_the_key_and_line(text, line, key, words) -> None:
    with pytest.raises(ProfileError) as info:
        parse_profile(text, "x.yaml")
    assert str(info.value).startswith(f"x.yaml:{line}: {key}: ")
    assert words in str(info.value)


def test_alias_bombs_and_python_tags_are_refused() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, n in zip("abcdefgh", "bcdefghi", strict=True))
    with pytest.raises(ProfileError, match="too large"):
        parse_profile(bomb, "bomb.yaml")
    with pytest.raises(ProfileError, match="unsupported"):
        parse_profile("!!python/object/apply:os.system [true]\n", "evil.yaml")


def test_non_utf8_file_is_a_profile_error(tmp_path: Path) -> None:
    (tmp_path / "latin.yaml").write_bytes(b"id: latin\nname: caf\xe9\n")
    [error] = lint([tmp_path / "latin.yaml"])
    assert str(error).startswith(f"{tmp_path / 'latin.yaml'}:2: not UTF-8")


_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=12),
                     st.sampled_from(["1.2", "1.4", "lan", "companion", "mozilla", "isrg-root-x1", "*"]))
_KEYS = st.one_of(st.sampled_from([*_PROFILE_KEYS, *_TLS_KEYS, "https", "http", "resolver", "min", "max",
                                   "store", "add", "remove", "claim", "confidence", "source", "product"]),
                  st.text(max_size=8))
_DOCS = st.recursive(_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(_KEYS, inner, max_size=6)), max_leaves=15)


_NEAR_MISSES = st.builds(lambda key, value: {**yaml.safe_load(MINIMAL), key: value}, _KEYS, _DOCS)


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.text(max_size=200),
                 st.one_of(_DOCS, _NEAR_MISSES).map(lambda d: yaml.safe_dump(d, default_flow_style=False))))
def test_arbitrary_yaml_text_raises_only_profile_errors(text: str) -> None:
    error: ProfileError | None = None
    try:
        parse_profile(text, "fuzz.yaml")
    except ProfileError as exc:
        error = exc
    assert error is None or str(error).startswith("fuzz.yaml")


# --- schema and describe ----------------------------------------------------------------------

def _editor_schema() -> dict:
    return json.loads((shipped_profiles_dir() / "schema.json").read_text())


def _schema_problems(schema: dict, document: object, name: str) -> list[str]:
    """What the editor schema finds wrong with one document, each as ``file: $.path: message``."""
    errors = jsonschema.Draft202012Validator(schema).iter_errors(document)
    return sorted(f"{name}: {error.json_path}: {error.message}" for error in errors)


def test_the_editor_schema_is_a_valid_draft_2020_12_schema() -> None:
    schema = _editor_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def test_every_shipped_and_test_profile_fits_the_editor_schema() -> None:
    schema = _editor_schema()
    files = [*sorted((shipped_profiles_dir() / "devices").glob("*.yaml")), *sorted((GOOD / "devices").glob("*.yaml"))]
    assert len(files) > len(SEED_PROFILES)
    problems = [p for file in files for p in _schema_problems(schema, yaml.safe_load(file.read_text()), str(file))]
    assert problems == []


@pytest.mark.parametrize(("extra", "path", "words"), [
    ('tls:\n  versions: {min: "1.4", max: "1.3"}\n', "$.tls.versions.min", "'1.4' is not one of"),
    ("tls: {colour: blue}\n", "$.tls", "'colour' was unexpected"),
    ("evidence:\n  - {claim: x, confidence: measured, source: lab, when: '2026-12-03T09:30:00+00:00'}\n",
     "$.evidence[0]", "'bridge_version' is a required"),
    ("tls: {rsa_min_bits: 100}\n", "$.tls.rsa_min_bits", "less than the minimum"),
])
def test_a_profile_that_breaks_the_editor_schema_fails_naming_file_and_path(extra: str, path: str,
                                                                            words: str) -> None:
    document = yaml.safe_load(MINIMAL + extra)
    [problem] = _schema_problems(_editor_schema(), document, "bad.yaml")
    assert problem.startswith(f"bad.yaml: {path}: "), problem
    assert words in problem, problem


def test_schema_enums_agree_with_the_loader() -> None:
    schema = _editor_schema()
    props = schema["properties"]
    assert tuple(props["transport"]["enum"]) == P.TRANSPORTS
    assert tuple(props["dns"]["properties"]["resolver"]["enum"]) == P.RESOLVERS
    assert tuple(schema["$defs"]["version"]["enum"]) == TLS_VERSIONS
    assert set(props["evidence"]["items"]["properties"]["confidence"]["enum"]) == set(P.CONFIDENCE_ORDER)
    assert tuple(schema["$defs"]["clause"]["properties"]) == P.MATCH_FIELDS
    assert set(props) == set(_PROFILE_KEYS)
    assert set(props["tls"]["properties"]) == set(_TLS_KEYS)


def test_describe_gives_a_json_ready_summary(shipped: P.ProfileSet) -> None:
    summary = describe(shipped.get("lg-webos-4"))
    assert json.loads(json.dumps(summary)) == summary
    assert summary["tls"]["versions"] == {"min": "1.2", "max": "1.2"}
    assert summary["roots"]["store"] == "mozilla-2019"
    assert summary["dns"] == {"resolver": "lan"}
    assert summary["confidence"] == "inferred"
    assert summary["evidence"] == 4
    assert str(summary["path"]).endswith("lg-webos-4.yaml")
    assert {"id", "name", "match", "transport", "media", "notes"} <= set(summary)


def test_adding_a_root_we_have_no_certificate_for_says_it_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "wants-x3.yaml").write_text(
        MINIMAL.replace("minimal", "wants-x3") + "tls:\n  roots: {store: mozilla, add: [dst-root-ca-x3]}\n")
    [error] = lint([tmp_path])
    assert str(error).startswith(f"{tmp_path / 'wants-x3.yaml'}:8: tls.roots.add[0]: ")
    assert "unavailable" in str(error)


def test_a_profile_can_add_isrg_root_yr_now_that_it_ships(tmp_path: Path) -> None:
    (tmp_path / "wants-yr.yaml").write_text(
        MINIMAL.replace("minimal", "wants-yr") + "tls:\n  roots: {store: mozilla, add: [isrg-root-yr]}\n")
    assert lint([tmp_path]) == []


def test_stores_that_extend_each_other_are_refused(tmp_path: Path) -> None:
    roots = tmp_path / "roots"
    roots.mkdir()
    (roots / "ping.yaml").write_text("name: ping\nextends: pong\n")
    (roots / "pong.yaml").write_text("name: pong\nextends: ping\n")
    messages = sorted(str(e) for e in load_profiles([tmp_path]).errors)
    assert messages == [
        f"{roots / 'ping.yaml'}:2: extends: root store 'pong' failed to load",
        f"{roots / 'pong.yaml'}:2: extends: store extends itself (ping -> pong -> ping)",
    ]


# --- every problem in one run ----------------------------------------------------------------

NEW_CONTRIBUTOR = """\
id: my-tv
name: My TV
match: []
transport: companion
media: {https: true, http: true}
tls:
  versions: {min: 1.2, max: "1.4"}
  follow_aia: true
  roots: {store: mozila}
dns: {resolver: lan}
"""


def test_a_new_contributors_profile_gets_all_four_problems_in_one_run(tmp_path: Path) -> None:
    path = tmp_path / "my-tv.yaml"
    path.write_text(NEW_CONTRIBUTOR)
    messages = [str(e) for e in lint([path])]
    assert messages == [
        f'{path}:7: tls.versions.min: expected one of 1.0, 1.1, 1.2, 1.3 (quote it: "1.2"), got number 1.2',
        f"{path}:7: tls.versions.max: expected one of 1.0, 1.1, 1.2, 1.3, got '1.4'",
        f"{path}:8: tls.follow_aia: unknown key (did you mean follows_aia?) (allowed: versions, ciphers, sni, "
        "rsa_min_bits, ecdsa, requires_sha2, follows_aia, roots)",
        f"{path}:9: tls.roots.store: root store 'mozila' is unknown (did you mean mozilla?) "
        "(stores: isrg, lg-netcast, mozilla, mozilla-2019)",
    ]


def test_parse_profile_raises_every_format_problem_together() -> None:
    text = MINIMAL.replace("transport: companion", "transport: chromcast").replace(
        "dns: {resolver: lan}", "dns: {resolver: lna, extra: 1}") + "colour: red\n"
    with pytest.raises(ProfileErrors) as info:
        parse_profile(text, "x.yaml")
    assert [(e.line, e.key) for e in info.value.errors] == [
        (4, "transport"), (6, "dns.extra"), (6, "dns.resolver"), (7, "colour")]
    assert "did you mean chromecast?" in str(info.value)
    assert "did you mean lan?" in str(info.value)


def test_misspelt_root_names_and_evidence_keys_get_suggestions(tmp_path: Path) -> None:
    path = tmp_path / "my-tv.yaml"
    path.write_text(MINIMAL.replace("minimal", "my-tv") + (
        "tls:\n  roots: {store: mozilla, add: [isrg-root-x3], remove: [isrg-rot-x1]}\n"
        "evidence:\n  - {claim: c, confidence: assumed, about: [tls.root, roots.isrg-root-yx]}\n"))
    messages = [str(e) for e in lint([path])]
    assert [m.split(": ", 2)[1] for m in messages] == [
        "tls.roots.add[0]", "tls.roots.remove[0]", "evidence[0].about[0]", "evidence[0].about[1]"]
    assert "did you mean isrg-root-x1?" in messages[1]
    assert "did you mean tls.roots?" in messages[2]
    assert "did you mean isrg-root-yr?" in messages[3]


def test_a_root_store_reports_every_problem_too(tmp_path: Path) -> None:
    roots = tmp_path / "roots"
    roots.mkdir()
    (roots / "mine.yaml").write_text(
        "name: mine\nextend: mozilla\ncreated_before: soon\n"
        "trusted_certificates:\n  - {name: x, fingerprint: zz}\n")
    messages = [str(e) for e in load_profiles([tmp_path]).errors]
    assert [m.split(": ", 2)[1] for m in messages] == [
        "extend", "created_before", "trusted_certificates[0].fingerprint"]
    assert "did you mean extends?" in messages[0]


def test_cross_signs_and_root_entries_with_missing_or_unknown_parts_are_each_reported(tmp_path: Path) -> None:
    roots = tmp_path / "roots"
    roots.mkdir()
    (roots / "mine.yaml").write_text(
        "name: mine\ntrusted_certificates:\n  - {name: x}\n"
        "cross_signs:\n  - {root: isrg-root-yr, by: isrg-root-x9, until: \"2032-09-02\"}\n"
        "  - {root: isrg-root-ye, by: isrg-root-x2}\n  - {root: isrg-root-ye, by: isrg-root-x2, until: soon}\n")
    messages = [str(e) for e in load_profiles([tmp_path]).errors]
    assert [m.split(": ", 2)[1] for m in messages] == [
        "trusted_certificates[0].fingerprint", "cross_signs[1].until", "cross_signs[2].until"]
    (roots / "mine.yaml").write_text(
        "name: mine\ncross_signs:\n  - {root: isrg-root-yr, by: isrg-root-x9, until: \"2032-09-02\"}\n")
    [error] = load_profiles([tmp_path]).errors
    assert str(error) == (f"{roots / 'mine.yaml'}:3: cross_signs[0]: root 'isrg-root-x9' has no certificate here "
                          "(did you mean isrg-root-x2?)")


def test_an_evidence_entry_with_problems_reports_each_of_them() -> None:
    text = MINIMAL + "evidence:\n  - {claim: 1, confidence: documentd, about: dns}\n  - {confidence: assumed}\n"
    with pytest.raises(ProfileErrors) as info:
        parse_profile(text, "x.yaml")
    assert [e.key for e in info.value.errors] == [
        "evidence[0].confidence", "evidence[0].claim", "evidence[0].about", "evidence[1].claim"]
    assert "did you mean documented?" in str(info.value)
