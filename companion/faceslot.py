"""One bridged target as the bridge holds it: its adapter, its face, the GDM advert and the counters.

A record with no behaviour, apart from the bridge so that the parts that read a face (the
visibility providers, the proxy poller, the plex.tv registrar, the admin views) do not import
the composition root that imports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from companion.faces.app import Face
from companion.model import Target
from companion.outcomes import OutcomeWatch
from companion.proto.gdm import Advert
from companion.targets.base import TargetAdapter


@dataclass
class FaceSlot:
    """One bridged target: its adapter, its face and the GDM advert that announces the face."""

    target: Target
    adapter: TargetAdapter
    face: Face
    advert: Advert
    commands: int = 0
    errors: int = 0
    last_error: str = ""
    extra: dict[str, object] = field(default_factory=dict)
    watches: list[OutcomeWatch] = field(default_factory=list)  # flings whose outcome is being watched
    announced: bool = False  # in GDM answers and HELLOs (a face is quiet until then)


__all__ = ["FaceSlot"]
