"""What the subcommands share: exit codes, JSON and table output, the profile set, the running daemon's rows."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from companion.config import Config

if TYPE_CHECKING:
    from companion.security.profiles import ProfileSet

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
EXIT_CONFIG = 78  # EX_CONFIG: the service unit does not restart on it


def print_json(data: Any) -> None:
    """Print ``data`` as indented, key-sorted JSON (the ``--json`` output of every command)."""
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    """Rows in left-aligned columns under a header (the output for people)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def profile_set(config: Config) -> ProfileSet:
    """The shipped and configured profiles; each skipped file is named on stderr."""
    from companion.security.profiles import load_with_extra

    profiles = load_with_extra(config.profiles_dirs)
    for error in profiles.errors:
        print(f"profile skipped: {error}", file=sys.stderr)
    return profiles


def running_target(config: Config, target: str) -> dict[str, Any] | None:
    """The running daemon's row (``/api/targets``) for a target it bridges, by id or name, if any."""
    import urllib.error
    import urllib.request

    if not config.http.admin_port:
        return None
    url = f"http://127.0.0.1:{config.http.admin_port}/api/targets"
    try:
        # Loopback only, to our own admin API; no proxy may be involved.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=2.0) as resp:
            rows = json.loads(resp.read(1024 * 1024))
    except (OSError, urllib.error.URLError, ValueError):
        return None
    wanted = target.lower()
    for row in rows if isinstance(rows, list) else []:
        if isinstance(row, dict) and wanted in (str(row.get("id", "")).lower(), str(row.get("name", "")).lower()):
            return row
    return None


__all__ = ["EXIT_CONFIG", "EXIT_FAIL", "EXIT_OK", "EXIT_USAGE", "print_json", "profile_set", "running_target", "table"]
