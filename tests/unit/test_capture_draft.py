"""The profile draft a capture writes (companion.lab.draft), the ``measured`` claims it uses, and
the ``lab.port`` setting: pure code, from hand-made observations with real ClientHellos."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from companion.config import parse_config
from companion.errors import ConfigError, ProfileError
from companion.lab.capture import CaptureResult, CaptureTarget, StepResult
from companion.lab.draft import build_draft
from companion.lab.hello import ClientHelloFacts, RecordReader, hello_message, parse_client_hello
from companion.lab.server import ENDPOINTS, Handshake, PlainFetch
from companion.security.profiles import lint, load_profiles, parse_profile

WHEN = datetime(2026, 12, 3, 9, 30, tzinfo=UTC)
NAME = "10-0-0-2.0123456789abcdef0123456789abcdef.plex.direct"
EP = {e.name: e for e in ENDPOINTS}


def hello(max_version: ssl.TLSVersion, ciphers: str, sni: str | None = NAME) -> ClientHelloFacts:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.maximum_version = max_version
    ctx.set_ciphers(ciphers)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    with pytest.raises(ssl.SSLWantReadError):
        ctx.wrap_bio(incoming, outgoing, server_hostname=sni).do_handshake()
    message = hello_message(RecordReader().feed(outgoing.read()))
    assert message is not None
    return parse_client_hello(message)


def shake(endpoint: str, facts: ClientHelloFacts | None, outcome: str, alert: str = "", *, n: int = 1,
          agent: str = "", paths: tuple[str, ...] = ()) -> Handshake:
    return Handshake(id=n, endpoint=endpoint, peer="10.0.0.3", at=WHEN, hello=facts, outcome=outcome, alert=alert,
                     server_reason="NO_SHARED_CIPHER" if outcome == "refused" else "", user_agent=agent,
                     paths=list(paths))


def result(steps: list[StepResult]) -> CaptureResult:
    return CaptureResult(target=CaptureTarget("Bedroom TV", "10.0.0.3", 32500), player={
        "product": "Plex for LG", "version": "4.2", "platform": "webOS"}, started=WHEN, bridge_version="9.9.9",
        lab_hash="0123456789abcdef0123456789abcdef", steps=steps)


def write(tmp_path: Path, text: str, profile_id: str) -> Path:
    path = tmp_path / f"{profile_id}.yaml"
    path.write_text(text)
    return path


def test_a_tls12_device_that_rejects_ecdsa_and_follows_aia_gets_those_claims_measured(tmp_path: Path) -> None:
    tv = hello(ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384")
    steps = [
        StepResult(EP["rsa"], NAME, WHEN, handshakes=[shake("rsa", tv, "alert", "unknown_ca")]),
        StepResult(EP["ecdsa"], NAME, WHEN, handshakes=[shake("ecdsa", tv, "refused")]),
        StepResult(EP["aia"], NAME, WHEN, handshakes=[shake("aia", tv, "alert", "unknown_ca")],
                   fetches=[PlainFetch("aia", "10.0.0.3", WHEN, "GET", "/lab/x/rsa-intermediate.der", "tv")]),
        StepResult(EP["tls12"], NAME, WHEN, handshakes=[shake("tls12", tv, "alert", "unknown_ca")]),
        StepResult(EP["tls13"], NAME, WHEN, handshakes=[shake("tls13", tv, "refused")]),
    ]
    base = load_profiles().get("lg-webos-4")
    text = build_draft(result(steps), base, "lg-webos-4-measured")
    assert lint([write(tmp_path, text, "lg-webos-4-measured")]) == []
    draft = yaml.safe_load(text)
    assert draft["match"] == [{"product": "Plex for LG", "platform": "webOS"}]
    assert draft["tls"]["versions"] == {"min": "1.2", "max": "1.2"}
    assert draft["tls"]["ciphers"] == ["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384"]
    assert (draft["tls"]["ecdsa"], draft["tls"]["follows_aia"], draft["tls"]["sni"]) == (False, True, True)
    # What a private root cannot show stays as the base profile has it.
    assert draft["tls"]["roots"]["store"] == base.roots.store
    assert draft["tls"]["roots"]["remove"] == list(base.roots.remove)
    assert draft["tls"]["rsa_min_bits"] == base.tls.rsa_min_bits and draft["dns"]["resolver"] == base.dns_resolver
    assert draft["media"]["https"] is base.media_https
    claims = [e["claim"] for e in draft["evidence"]]
    assert "a TLS 1.3-only server is refused" in claims
    assert "an ECDSA chain ends the handshake before certificate verification" in claims
    assert "the missing intermediate is fetched from the leaf's AIA CA Issuers URL" in claims
    kept = next(e for e in draft["evidence"] if "cannot show which public roots" in e["claim"])
    assert "tls.roots" in kept["claim"] and kept["confidence"] == base.confidence and "tls.roots" in kept["about"]
    # The base's root claims come along as they are, with their sources.
    base_roots = [e for e in base.evidence if any(f.startswith("roots.") for f in e.about)]
    assert base_roots
    for e in base_roots:
        copied = next(d for d in draft["evidence"] if d["claim"] == e.claim)
        assert (copied["confidence"], copied.get("source"), copied["about"]) == (e.confidence, e.source, list(e.about))
    aia = next(e for e in draft["evidence"] if e["claim"].startswith("the missing intermediate"))
    assert aia["about"] == ["tls.follows_aia"]
    for e in draft["evidence"]:
        if e["confidence"] == "measured":
            assert (e["when"], e["bridge_version"], e["source"]) == (
                "2026-12-03T09:30:00+00:00", "9.9.9", "companion profiles capture")


def test_two_tls_stacks_share_only_their_common_ground_and_a_request_means_no_verification(tmp_path: Path) -> None:
    api = hello(ssl.TLSVersion.TLSv1_3, "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256")
    media = hello(ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-GCM-SHA256:AES128-SHA")
    steps = [StepResult(EP["rsa"], NAME, WHEN, handshakes=[
        shake("rsa", api, "completed", n=1, agent="PlexApp/1.0", paths=("/library/metadata/100",)),
        shake("rsa", media, "completed", n=2, agent="player/2", paths=("/library/parts/100/test.wav",))],
        states=["buffering", "playing"])]
    text = build_draft(result(steps), load_profiles().get("default"), "two-stacks")
    assert lint([write(tmp_path, text, "two-stacks")]) == []
    draft = yaml.safe_load(text)
    assert draft["tls"]["versions"] == {"min": "1.2", "max": "1.2"}
    assert draft["tls"]["ciphers"] == ["ECDHE-ECDSA-AES128-GCM-SHA256"]
    assert draft["media"]["https"] is True
    claims = [e["claim"] for e in draft["evidence"]]
    assert any(c.startswith("PlexApp/1.0 sent requests over the lab's private chains") for c in claims)
    assert any(c.startswith("player/2 sent requests over the lab's private chains") for c in claims)


def test_a_capture_that_saw_nothing_keeps_the_base_and_still_lints(tmp_path: Path) -> None:
    steps = [StepResult(e, "10.0.0.2", WHEN) for e in ENDPOINTS]
    base = load_profiles().get("plex-media-player")
    text = build_draft(result(steps), base, "nothing-seen")
    assert lint([write(tmp_path, text, "nothing-seen")]) == []
    draft = yaml.safe_load(text)
    assert draft["tls"]["versions"] == {"min": base.tls.min_version, "max": base.tls.max_version}
    assert draft["tls"]["follows_aia"] is base.tls.follows_aia
    assert not [e for e in draft["evidence"] if e["confidence"] == "measured"]


MEASURED = """\
id: m
name: M
match: []
transport: companion
media: {https: true, http: true}
dns: {resolver: lan}
evidence:
"""


def test_measured_claims_carry_when_and_bridge_version() -> None:
    profile = parse_profile(MEASURED + '  - {claim: x, source: lab, confidence: measured, when: "2026-12-03T09:30:00'
                            '+00:00", bridge_version: "0.1.0"}\n')
    assert (profile.evidence[0].when, profile.evidence[0].bridge_version) == ("2026-12-03T09:30:00+00:00", "0.1.0")
    assert profile.confidence == "measured"


@pytest.mark.parametrize(("claim", "key", "message"), [
    ('{claim: x, source: lab, confidence: measured, bridge_version: "1"}', "evidence[0].when", "when"),
    ('{claim: x, source: lab, confidence: measured, when: "2026-12-03"}', "evidence[0].bridge_version", "when"),
    ('{claim: x, source: lab, confidence: measured, when: "yesterday", bridge_version: "1"}', "evidence[0].when",
     "ISO 8601"),
    ('{claim: x, confidence: measured, when: "2026-12-03", bridge_version: "1"}', "evidence[0].source",
     "needs a source"),
])
def test_a_measured_claim_without_its_facts_is_an_error_naming_the_key(claim: str, key: str, message: str) -> None:
    with pytest.raises(ProfileError, match=message) as info:
        parse_profile(MEASURED + f"  - {claim}\n")
    assert key in str(info.value) and ":8:" in str(info.value)


def test_lab_port_is_configurable_and_checked() -> None:
    assert parse_config("").lab.port == 32482
    assert parse_config("lab: {port: 0}\n").lab.port == 0
    with pytest.raises(ConfigError, match=r"lab\.port: must be between 0 and 65535"):
        parse_config("lab:\n  port: 70000\n", "c.yaml")
