"""``companion flings``: the audit log of flings, newest first."""

from __future__ import annotations

import argparse

from companion.commands.common import EXIT_OK, print_json
from companion.config import config_from_args


def cmd_flings(args: argparse.Namespace) -> int:
    """Print the last ``--limit`` flings (``--insecure``: only those not fully secure)."""
    from companion.audit import AuditLog, format_table, record_to_json

    config = config_from_args(args)
    path = config.state_path / "audit.sqlite3"
    if not path.exists():
        records = []
    else:
        with AuditLog(path) as audit:
            records = audit.recent(args.limit, insecure_only=args.insecure)
    if args.json:
        print_json([record_to_json(r) for r in records])
    else:
        print(format_table(records))
    return EXIT_OK


__all__ = ["cmd_flings"]
