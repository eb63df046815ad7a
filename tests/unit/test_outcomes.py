"""Judging a fling's outcome from the target's timeline, and which claims failed flings contradict."""

from __future__ import annotations

import asyncio

from companion.outcomes import OutcomeWatch, PlaybackJudge
from companion.proto.timeline import PlayerState, TimelineEntry
from companion.security.claims import FlingFact, relied_on, summarize
from companion.security.profiles import parse_profile

KEY = "/library/metadata/501"


def state(s: str, key: str = KEY, **extra: str) -> PlayerState:
    return PlayerState().with_entry(TimelineEntry(type="video", state=s, key=key, extra=extra))


def test_playing_the_flung_item_is_ok() -> None:
    judge = PlaybackJudge(KEY)
    assert judge.observe(state("buffering")) is None
    outcome = judge.observe(state("playing"))
    assert outcome is not None and (outcome.result, outcome.reason) == ("ok", "the player is playing")


def test_an_error_timeline_fails_at_once_with_the_players_words_bounded() -> None:
    outcome = PlaybackJudge(KEY).observe(state("error", error="TLS handshake failed\nWARNING forged " + "x" * 500))
    assert outcome is not None and outcome.result == "failed"
    assert outcome.reason.startswith("the player reported an error: TLS handshake failed?WARNING forged")
    assert len(outcome.reason) < 260


def test_a_stale_stop_before_the_player_took_the_fling_is_not_a_failure() -> None:
    judge = PlaybackJudge(KEY)
    assert judge.observe(state("stopped")) is None  # the player's old state, pushed at once
    assert judge.observe(state("buffering")) is None
    outcome = judge.observe(state("stopped"))
    assert outcome is not None and outcome.reason == "the player stopped while buffering, before it played"


def test_still_playing_the_previous_item_is_not_success() -> None:
    judge = PlaybackJudge(KEY)
    assert judge.observe(state("playing", key="/library/metadata/7")) is None
    assert judge.expire(30).reason == "the player did not start playing within 30 s (last state: playing)"


def test_buffering_until_the_watch_ends_fails_and_the_verdict_then_stays() -> None:
    judge = PlaybackJudge(KEY)
    judge.observe(state("buffering"))
    assert judge.expire(2.5).reason == "the player was still buffering after 2.5 s"
    assert judge.observe(state("playing")) == judge.outcome, "a verdict is final"


async def test_the_watch_returns_as_soon_as_the_outcome_is_known_or_at_its_bound() -> None:
    watch = OutcomeWatch(KEY)
    asyncio.get_running_loop().call_soon(watch.observe, state("playing"))
    assert (await watch.wait(30)).result == "ok"
    silent = OutcomeWatch(KEY)
    assert (await silent.wait(0.05)).reason == "the player did not start playing within 0.05 s (last state: nothing)"


PROFILE = parse_profile("""\
id: tv
name: TV
match: []
transport: companion
media: {https: true, http: true}
dns: {resolver: lan}
evidence:
  - {claim: "trusts ISRG Root X1", about: [roots.isrg-root-x1, tls.roots], confidence: assumed}
  - {claim: "TLS 1.2 and 1.3", about: [tls.versions], confidence: assumed}
""", "tv.yaml")


def test_failed_direct_secure_flings_contradict_the_claims_they_relied_on() -> None:
    facets = relied_on(anchors=["isrg-root-x1"], via_aia=True, cipher_list=False)
    assert facets == ("media.https", "tls.versions", "tls.roots", "roots.isrg-root-x1", "tls.follows_aia",
                      "dns.resolver")
    facts = [FlingFact("tv", "direct-secure", "failed", facets, None), FlingFact("tv", "relay", "ok", (), 1),
             FlingFact("tv", "direct-secure", "ok", facets, None), FlingFact("other", "relay", "failed", (), None)]
    other, tv = summarize(facts, {"tv": PROFILE})
    assert (other.profile, other.failures, other.is_contradicted) == ("other", 1, False)
    assert (tv.flings, tv.ok, tv.failures, tv.direct_secure_failures, tv.reflings) == (3, 2, 1, 1, 1)
    claims = {c.facet: [e.claim for e in c.claims] for c in tv.contradicted}
    assert claims["roots.isrg-root-x1"] == ["trusts ISRG Root X1"]
    assert claims["tls.versions"] == ["TLS 1.2 and 1.3"]
    assert claims["dns.resolver"] == [] and claims["tls.follows_aia"] == []


async def test_a_newer_fling_supersedes_the_watch_of_an_older_one() -> None:
    older = OutcomeWatch(KEY)
    older.supersede()
    outcome = await older.wait(30)
    assert (outcome.result, outcome.reason) == ("superseded", "a newer fling to this target came first")
    older.observe(state("playing"))
    assert older.judge.outcome == outcome
