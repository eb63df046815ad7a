"""A shortened load run (scripts/load.py): 50 long-polling controllers and 20 commands/s for 6 s
against 5 faces of a daemon subprocess. No errors, bounded latency, no memory growth."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _load_script():  # type: ignore[no-untyped-def]
    scripts = str(ROOT / "scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)  # load.py imports its sibling durability.py
    spec = importlib.util.spec_from_file_location("companion_load_script", ROOT / "scripts" / "load.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


load = _load_script()


async def test_fifty_pollers_and_twenty_commands_a_second_are_served_without_errors(tmp_path: Path) -> None:
    report = await load.run_load(tmp_path, pollers=50, rate=20, seconds=6, faces=5, seed=1)
    assert report.command_errors == 0, report.error_samples
    assert report.poll_errors == 0, report.error_samples
    assert report.command_p99_ms < 500, report
    assert report.poll_answers >= report.commands_sent, "commands woke the long-polls"
    assert report.rss_end_mb < report.rss_after_warmup_mb * 1.25 + 5, report.rss_mb
