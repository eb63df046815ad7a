"""The repository tracks sources only: a build output in git breaks a clone at any other path."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Directories and files that a build, an install, a test or a benchmark run produces.
_BUILT = re.compile(
    r"(^|/)(\.venv|venv|env|__pycache__|\.mypy_cache|\.ruff_cache|\.pytest_cache|\.hypothesis|build|dist"
    r"|node_modules|test-output|[^/]+\.egg-info)/"
    r"|\.py[co]$|(^|/)bench/results/|(^|/)fuzz/artifacts/|\.so$"
)


def test_no_build_output_is_tracked() -> None:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True,
                            timeout=30).stdout.decode().split("\0")
    tracked = [path for path in listed if path]
    assert tracked, "git ls-files listed nothing: the suite must run from a git checkout"
    built = [path for path in tracked if _BUILT.search(path)]
    assert not built, (f"{len(built)} build output(s) are tracked in git; a fresh clone at another path "
                       f"breaks on them (git rm -r --cached, and keep them in .gitignore): {built[:5]}")


def test_pattern_catches_what_it_must() -> None:
    for path in (".venv/bin/mypy", "companion/__pycache__/x.pyc", "bench/results/latest.json",
                 "companion_bridge.egg-info/PKG-INFO", "dist/x.whl"):
        assert _BUILT.search(path), path
    for path in ("companion/bridge.py", "profiles/devices/roku.yaml", "tests/data/gdm/hello.bin"):
        assert not _BUILT.search(path), path


# A module past this holds more than one job (docs/layout.md): split it by job before it grows.
MAX_MODULE_LINES = 600


def test_no_module_of_companion_is_over_the_line_limit() -> None:
    sizes = {path.relative_to(REPO).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
             for path in (REPO / "companion").rglob("*.py")}
    assert len(sizes) > 50, "the companion package was not found"
    over = {path: lines for path, lines in sizes.items() if lines > MAX_MODULE_LINES}
    assert not over, f"over {MAX_MODULE_LINES} lines (split by job, see docs/layout.md): {over}"
