"""The atheris harnesses run briefly in CI (each parser, in parallel), plus regression tests for what
fuzzing found. Longer runs: ``.venv/bin/python fuzz/run.py --seconds 60``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from companion.config import parse_config
from companion.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_every_parser_survives_two_seconds_of_coverage_guided_fuzzing(tmp_path: Path) -> None:
    # --ignore-known: bugs already pinned below must not hide new ones behind the first crash.
    proc = subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / "run.py"), "--seconds", "2", "--parallel", "5", "--json",
         "--ignore-known", "--artifacts", str(tmp_path / "artifacts")],
        capture_output=True, text=True, timeout=60, check=False)
    results = json.loads(proc.stdout)
    assert {r["parser"] for r in results} == {"gdm", "companion", "timeline", "config", "profile", "clienthello"}
    crashes = {r["parser"]: r["detail"] for r in results if r["crashed"]}
    assert crashes == {}, "\n\n".join(f"{k}:\n{v}" for k, v in crashes.items())
    assert all(r["executions"] > 100 for r in results), results
    assert proc.returncode == 0


@pytest.mark.parametrize("url", ["https://10.0.0.2]3240", "http://[oops", "http://[a.lan]:32400", "https://[::1"])
def test_a_server_url_with_a_broken_ipv6_host_is_a_config_error(url: str) -> None:
    # Found by fuzz/fuzz_config.py: urlsplit raises ValueError for an unbalanced or non-IP
    # bracketed host, and config._server called it outside any try.
    with pytest.raises(ConfigError, match=r"servers\[0\]\.url"):
        parse_config(f"servers:\n  - {{url: '{url}'}}\n", "config.yaml")
