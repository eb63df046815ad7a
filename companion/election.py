"""Which bridge keeps the face of a target when several bridges on one LAN see it: the claims
heard from other bridges' faces, and the rank that settles every contest.

Pure: no sockets, no clock (callers pass ``now``, monotonic seconds), no event loop.

The rule: of the bridges that see a target, the one with the highest rendezvous rank
``sha256(bridge id NUL target id)`` keeps its face; every other bridge holds none for it and opens
one only when no live claim of a bridge that outranks it is left (its BYE, or its silence). Why
rendezvous hashing rather than "lowest bridge id wins":

- every bridge computes the same answer from the two ids alone, whatever order the bridges
  started in and whatever order the adverts arrived in, so two bridges can never settle on
  different holders, and after any disturbance (restart, partition) the faces go back to the
  same places;
- the faces of many targets spread over the bridges (each holds about 1/n of them) instead of
  all landing on one, so losing a bridge moves only its share;
- the order between two bridges for a target does not change when a third bridge appears.

A bridge that outranks the current holder takes the face over as soon as it sees the target,
and the holder yields at that face's first HELLO or search reply; a bridge that is outranked
never opens a face while the better claim is live, so nothing flaps.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from companion.model import FaceMarks

# Bound on the claims table: a LAN that floods fake faces costs at most this many entries; the
# stalest go first.
MAX_CLAIMS = 1024


def rank(bridge_id: str, target_id: str) -> tuple[bytes, str]:
    """The rendezvous rank of a bridge for a target: higher keeps the face. Ties (the same
    digest) are broken by the bridge id, so the order is total."""
    return hashlib.sha256(f"{bridge_id}\0{target_id}".encode()).digest(), bridge_id


def outranks(bridge_a: str, bridge_b: str, target_id: str) -> bool:
    """True when ``bridge_a`` keeps the face of ``target_id`` rather than ``bridge_b``."""
    return rank(bridge_a, target_id) > rank(bridge_b, target_id)


@dataclass
class Claim:
    """Another bridge's face for a target, as last heard (GDM reply or HELLO)."""

    bridge_id: str
    target_id: str
    address: str
    port: int
    name: str
    heard_at: float


class Claims:
    """The faces other bridges hold, by (bridge id, target id); a claim lapses when it has not
    been heard for ``lapse`` seconds. Claims of ``own_id`` (this bridge, this run or an earlier
    one) are never recorded."""

    def __init__(self, own_id: str, *, lapse: float, max_claims: int = MAX_CLAIMS) -> None:
        self.own_id = own_id
        self.lapse = lapse
        self._max = max_claims
        self._claims: dict[tuple[str, str], Claim] = {}

    def __len__(self) -> int:
        return len(self._claims)

    def heard(self, marks: FaceMarks, *, address: str, port: int, name: str, now: float) -> Claim | None:
        """Record a face advert; returns the claim when it is new (not heard, or lapsed, before)."""
        if not marks.is_claim or marks.bridge_id == self.own_id:
            return None
        key = (marks.bridge_id, marks.target_id)
        known = self._claims.get(key)
        if known is not None:
            known.address, known.port, known.name, known.heard_at = address, port, name, now
            return None
        if len(self._claims) >= self._max:
            stalest = min(self._claims.values(), key=lambda c: c.heard_at)
            del self._claims[(stalest.bridge_id, stalest.target_id)]
        claim = Claim(marks.bridge_id, marks.target_id, address, port, name, now)
        self._claims[key] = claim
        return claim

    def withdrawn(self, marks: FaceMarks) -> Claim | None:
        """A BYE for a face: the claim is gone (returned when there was one)."""
        if not marks.is_claim:
            return None
        return self._claims.pop((marks.bridge_id, marks.target_id), None)

    def lapsed(self, now: float) -> list[Claim]:
        """Remove and return the claims not heard for ``lapse`` seconds."""
        gone = [c for c in self._claims.values() if now - c.heard_at >= self.lapse]
        for claim in gone:
            del self._claims[(claim.bridge_id, claim.target_id)]
        return gone

    def next_lapse(self) -> float | None:
        """When the next claim lapses unless heard again (None: no claims)."""
        if not self._claims:
            return None
        return min(c.heard_at for c in self._claims.values()) + self.lapse

    def holder(self, target_id: str) -> Claim | None:
        """The best-ranked other bridge with a face for ``target_id``, if any."""
        rivals = [c for c in self._claims.values() if c.target_id == target_id]
        return max(rivals, key=lambda c: rank(c.bridge_id, target_id), default=None)

    def beaten_by(self, target_id: str) -> Claim | None:
        """The live claim that outranks this bridge for ``target_id`` (then it holds no face), or None."""
        best = self.holder(target_id)
        if best is not None and outranks(best.bridge_id, self.own_id, target_id):
            return best
        return None
