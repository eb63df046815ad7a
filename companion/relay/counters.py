"""The relay's counters: plain numbers the admin side reads and the relay only increments."""

from __future__ import annotations

from dataclasses import dataclass, field

REFUSED_PATHS_CAP = 512  # distinct refused paths remembered (and logged once each)


@dataclass
class RelayCounters:
    """Plain counters for /metrics; the admin side reads them, the relay only increments."""

    requests: int = 0
    bytes_relayed: int = 0
    chunks_relayed: int = 0
    denials: dict[str, int] = field(default_factory=dict)
    upstream_failures: dict[str, int] = field(default_factory=dict)
    verifications: int = 0
    aia_fetches: int = 0
    refused_paths: dict[str, int] = field(default_factory=dict)  # "GET /path" -> refusals

    def deny(self, reason: str) -> None:
        """Count a refused request by its reason."""
        self.denials[reason] = self.denials.get(reason, 0) + 1

    def fail(self, reason: str) -> None:
        """Count an upstream failure by its reason."""
        self.upstream_failures[reason] = self.upstream_failures.get(reason, 0) + 1

    def refuse_path(self, name: str) -> bool:
        """Count a refused path; True the first time it is seen (log it then, and only then)."""
        if name not in self.refused_paths and len(self.refused_paths) >= REFUSED_PATHS_CAP:
            name = "(other paths)"  # bounded: a scanner must not grow this without end
        first = name not in self.refused_paths
        self.refused_paths[name] = self.refused_paths.get(name, 0) + 1
        return first and name != "(other paths)"


__all__ = ["REFUSED_PATHS_CAP", "RelayCounters"]
