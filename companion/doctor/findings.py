"""The doctor's records and their renderings: Finding, KnownServer, the exit code, text for people and ``--json``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Literal

Status = Literal["PASS", "WARN", "FAIL"]
_RANK: dict[str, int] = {"PASS": 0, "WARN": 1, "FAIL": 2}


@dataclass(frozen=True)
class Finding:
    """One check's verdict: what was checked, how it went, what to do about it, and when."""

    check: str
    status: Status
    detail: str
    fix: str
    checked_at: datetime | None = None  # when this verdict was reached (its age is shown)


@dataclass(frozen=True)
class KnownServer:
    """A server the doctor looks at: where it is and the plex.direct hash it is known by."""

    label: str
    address: str
    port: int
    hash: str | None = None
    key: str = ""  # the bridge's server id, when it comes from a running bridge


def exit_code(findings: Iterable[Finding]) -> int:
    """0 when everything passed, 1 when the worst is a WARN, 2 when anything FAILed."""
    return max((_RANK[f.status] for f in findings), default=0)


def format_findings(findings: Sequence[Finding]) -> str:
    """The report for people: one block per check, the fix under every WARN and FAIL."""
    lines: list[str] = []
    for f in findings:
        lines.append(f"{f.status:<4}  {f.check}: {f.detail}")
        if f.status != "PASS" and f.fix:
            lines.append(f"      fix: {f.fix}")
    counts = {s: sum(1 for f in findings if f.status == s) for s in ("PASS", "WARN", "FAIL")}
    lines.append(f"{counts['PASS']} passed, {counts['WARN']} warning(s), {counts['FAIL']} failed")
    return "\n".join(lines)


def findings_to_json(findings: Iterable[Finding]) -> list[dict[str, str | None]]:
    """The ``--json`` shape (and the admin API's): a list of {check, status, detail, fix, checked_at}."""
    out: list[dict[str, str | None]] = []
    for f in findings:
        row: dict[str, str | None] = {k: v for k, v in asdict(f).items() if k != "checked_at"}
        row["checked_at"] = f.checked_at.astimezone(UTC).isoformat() if f.checked_at is not None else None
        out.append(row)
    return out


def stamped(findings: Iterable[Finding], at: datetime) -> list[Finding]:
    """The findings with ``checked_at`` set where it is not yet."""
    return [f if f.checked_at is not None else replace(f, checked_at=at) for f in findings]


NO_SERVER_FINDING = Finding("chain", "WARN", "no Plex server is known, so no certificate chain was checked",
                            "give --server https://<server ip>:32400, or list it under servers: in the config")


__all__ = ["NO_SERVER_FINDING", "Finding", "KnownServer", "Status", "exit_code", "findings_to_json",
           "format_findings", "stamped"]
