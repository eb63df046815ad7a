"""The benchmark runner: runs each benchmark, prints one table, writes bench/results/latest.json.

Usage (inside the private network namespace; GDM benchmarks broadcast):

    scripts/netns-run .venv/bin/python bench/run.py [--smoke] [--only NAME ...] [--memory-load-seconds S]

Every benchmark measures its baseline in the same run, on the same machine, and each row gives
the figure, the baseline, their ratio, the goal and the verdict (``meets`` / ``misses``; in
``--smoke`` mode every size shrinks and nothing is judged). A benchmark that fails gets a row
saying so and the runner exits 1; misses alone exit 0 (they are findings, not crashes).
Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import command_rtt
import decision
import face_rps
import gdm_scan
import memory
import relay_throughput
import timeline_fanout
from common import BenchError, Options, Result, in_netns, progress

BENCHMARKS: dict[str, Callable[[Options], Result]] = {
    "command_rtt": command_rtt.run,
    "face_rps": face_rps.run,
    "gdm_scan": gdm_scan.run,
    "timeline_fanout": timeline_fanout.run,
    "decision": decision.run,
    "relay_throughput": relay_throughput.run,
    "memory": memory.run,
}
RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"
COLUMNS = ("name", "figure", "baseline", "ratio", "goal", "verdict")


def table(results: list[Result], smoke: bool) -> str:
    """The results as an aligned text table."""
    rows = [(r.name, r.figure, r.baseline, r.ratio, r.goal, r.verdict(smoke)) for r in results]
    widths = [max(len(row[i]) for row in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [COLUMNS, *rows]]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks, print the table, write the JSON results; the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="small sizes, quick; nothing is judged")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), metavar="NAME",
                        help=f"run only these ({', '.join(BENCHMARKS)})")
    parser.add_argument("--memory-load-seconds", type=float, default=None, metavar="S",
                        help="how long memory loads the daemon (default 600; 20 with --smoke)")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS})")
    args = parser.parse_args(argv)
    if not in_netns():
        print("bench: run me inside the private network namespace: scripts/netns-run .venv/bin/python "
              "bench/run.py ... (gdm_scan broadcasts and the daemon speaks GDM multicast)", file=sys.stderr)
        return 2
    load = args.memory_load_seconds if args.memory_load_seconds is not None else (20.0 if args.smoke else 600.0)
    options = Options(smoke=args.smoke, memory_load_seconds=load)
    names = args.only or list(BENCHMARKS)
    results: list[Result] = []
    failed = False
    started = time.monotonic()
    for name in names:
        progress(f"{name}: starting")
        t0 = time.monotonic()
        try:
            result = BENCHMARKS[name](options)
        except (BenchError, Exception) as exc:
            failed = True
            traceback.print_exc(file=sys.stderr)
            result = Result(name=name, figure="-", baseline="-", ratio="-", goal="-", meets=None,
                            note=f"FAILED: {type(exc).__name__}: {str(exc)[:80]}")
        if result.note.startswith("FAILED"):
            failed = True
        result.details["seconds"] = round(time.monotonic() - t0, 1)
        progress(f"{name}: done in {result.details['seconds']} s: {result.figure} vs {result.baseline}")
        results.append(result)
    print(table(results, options.smoke))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "smoke": options.smoke,
        "seconds": round(time.monotonic() - started, 1),
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": os.cpu_count()},
        "results": [{"name": r.name, "figure": r.figure, "baseline": r.baseline, "ratio": r.ratio, "goal": r.goal,
                     "verdict": r.verdict(options.smoke), "meets": r.meets, "details": r.details}
                    for r in results],
    }
    args.output.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    progress(f"results written to {args.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
