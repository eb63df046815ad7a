"""One face per target across bridges: the rendezvous rank and the claims table (pure, no clock)."""

from __future__ import annotations

import itertools
import uuid

from hypothesis import given
from hypothesis import strategies as st

from companion.bridge import claim_lapse
from companion.election import Claims, outranks, rank
from companion.model import FaceMarks, stable_id

A, B, C = (str(uuid.UUID(int=n)) for n in (1, 2, 3))
TARGETS = [stable_id("companion", f"player-{n}") for n in range(300)]
_id = st.text("abcdef0123456789-", min_size=1, max_size=36)


@given(_id, _id, _id)
def test_of_two_different_bridges_exactly_one_outranks_the_other(a: str, b: str, target: str) -> None:
    if a == b:
        assert not outranks(a, b, target)
    else:
        assert outranks(a, b, target) != outranks(b, a, target)


def test_every_bridge_computes_the_same_holder_from_the_ids_alone() -> None:
    for target in TARGETS:
        holder = max((A, B, C), key=lambda bridge: rank(bridge, target))
        for order in itertools.permutations((A, B, C)):
            assert max(order, key=lambda bridge: rank(bridge, target)) == holder


def test_faces_spread_over_the_bridges_rather_than_all_landing_on_one() -> None:
    held = {bridge: 0 for bridge in (A, B, C)}
    for target in TARGETS:
        held[max((A, B, C), key=lambda bridge: rank(bridge, target))] += 1
    assert all(60 <= count <= 140 for count in held.values()), held


def test_a_third_bridge_does_not_change_the_order_between_two() -> None:
    for target in TARGETS:
        before = outranks(A, B, target)
        claims = Claims(C, lapse=10)
        claims.heard(FaceMarks(A, target), address="10.0.0.1", port=1, name="x", now=0)
        claims.heard(FaceMarks(B, target), address="10.0.0.2", port=1, name="x", now=0)
        best = claims.holder(target)
        assert best is not None
        assert best.bridge_id == (A if before else B)


def test_own_claims_are_never_recorded_from_this_run_or_an_earlier_one() -> None:
    claims = Claims(A, lapse=10)
    assert claims.heard(FaceMarks(A, TARGETS[0]), address="10.0.0.1", port=1, name="x", now=0) is None
    assert len(claims) == 0
    assert claims.beaten_by(TARGETS[0]) is None


def test_marks_without_a_claim_are_not_recorded() -> None:
    claims = Claims(A, lapse=10)
    assert claims.heard(FaceMarks(), address="10.0.0.1", port=1, name="x", now=0) is None
    assert claims.heard(FaceMarks(B, ""), address="10.0.0.1", port=1, name="x", now=0) is None
    assert len(claims) == 0


def test_a_claim_is_new_once_then_refreshed_then_lapses_at_its_deadline() -> None:
    claims = Claims(A, lapse=10)
    marks = FaceMarks(B, TARGETS[0])
    assert claims.heard(marks, address="10.0.0.2", port=32500, name="TV", now=0) is not None
    assert claims.heard(marks, address="10.0.0.2", port=32501, name="TV", now=4) is None
    assert claims.next_lapse() == 14
    assert claims.lapsed(13.9) == []
    gone = claims.lapsed(14)
    assert [(c.bridge_id, c.port) for c in gone] == [(B, 32501)]
    assert claims.next_lapse() is None
    assert claims.heard(marks, address="10.0.0.2", port=32501, name="TV", now=20) is not None


def test_a_bye_withdraws_the_claim() -> None:
    claims = Claims(A, lapse=10)
    claims.heard(FaceMarks(B, TARGETS[0]), address="10.0.0.2", port=1, name="x", now=0)
    withdrawn = claims.withdrawn(FaceMarks(B, TARGETS[0]))
    assert withdrawn is not None
    assert withdrawn.bridge_id == B
    assert claims.withdrawn(FaceMarks(B, TARGETS[0])) is None
    assert claims.holder(TARGETS[0]) is None


def test_only_a_claim_that_outranks_this_bridge_keeps_it_from_holding_a_face() -> None:
    for target in TARGETS[:50]:
        claims = Claims(A, lapse=10)
        claims.heard(FaceMarks(B, target), address="10.0.0.2", port=1, name="x", now=0)
        beaten = claims.beaten_by(target)
        assert (beaten is not None) == outranks(B, A, target)
        assert claims.beaten_by(TARGETS[-1]) is None, "a claim on another target changes nothing"


def test_the_table_is_bounded_and_drops_the_stalest_claim() -> None:
    claims = Claims(A, lapse=100, max_claims=3)
    for n in range(5):
        claims.heard(FaceMarks(f"bridge-{n}", TARGETS[0]), address="10.0.0.2", port=1, name="x", now=n)
    assert len(claims) == 3
    holder_ids = {c.bridge_id for c in claims.lapsed(1000)}
    assert holder_ids == {"bridge-2", "bridge-3", "bridge-4"}


def test_a_silent_holder_lapses_one_search_interval_before_the_target_expiry() -> None:
    # Its last answer came at most one search interval before it went: takeover within the expiry.
    assert claim_lapse(120.0, 10.0) == 110.0
    assert claim_lapse(12.0, 3.0) == 9.0
    # Too few searches per expiry to lapse early without risking a takeover from a live face.
    assert claim_lapse(15.0, 10.0) == 15.0
