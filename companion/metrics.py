"""Prometheus metrics of one bridge, on a registry of its own (two bridges in one process stay apart).

Names are stable (users build dashboards on them). Labels never carry tokens or media keys:
only modes, outcomes, kinds and sources.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class _TargetsCollector(Collector):
    def __init__(self, source: Callable[[], list[tuple[str, bool]]]) -> None:
        self._source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("companion_targets", "Bridged targets by kind and availability",
                                   labels=["kind", "available"])
        counts: dict[tuple[str, str], int] = {}
        for kind, available in self._source():
            key = (kind, "true" if available else "false")
            counts[key] = counts.get(key, 0) + 1
        for (kind, avail), n in sorted(counts.items()):
            family.add_metric([kind, avail], n)
        yield family


class Metrics:
    """The counters, gauges and histograms of one bridge."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.flings = Counter("companion_flings", "Flings by decided mode, secure or not, and outcome",
                              ["mode", "secure", "outcome"], registry=r)
        self.insecure_flings = Counter("companion_insecure_flings",
                                       "Flings that were not fully secure, by mode", ["mode"], registry=r)
        self.command_seconds = Histogram(
            "companion_command_seconds", "Time to carry one command to its target", ["kind", "outcome"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0), registry=r)
        self.fling_outcomes = Counter("companion_fling_outcomes",
                                      "Fling outcomes seen on the targets' timelines, by mode and result",
                                      ["mode", "result"], registry=r)
        self.relay_reflings = Counter("companion_relay_reflings",
                                      "Failed direct-secure flings re-flung once through the relay", registry=r)
        self.sightings = Counter("companion_sightings", "Discovery sightings by protocol and kind",
                                 ["source", "kind"], registry=r)
        self.long_polls = Gauge("companion_long_polls_open", "Timeline long-polls being held", registry=r)
        self.subscribers = Gauge("companion_timeline_subscribers", "Controllers subscribed to faces", registry=r)
        self._targets: _TargetsCollector | None = None

    def track_targets(self, source: Callable[[], list[tuple[str, bool]]]) -> None:
        """Export the targets' availability, read from ``source`` at each scrape."""
        self._targets = _TargetsCollector(source)
        self.registry.register(self._targets)

    def render(self) -> bytes:
        """Every metric in the Prometheus text format."""
        return generate_latest(self.registry)
