"""The status page: server-rendered HTML that works without JavaScript and refreshes itself.

Pure: views in (companion.admin.api), one HTML string out. Every value is escaped, since target
names, server names and certificate subjects come off the network. A green closed lock means a
secure connection is possible for that target and server; an open lock (amber when the token is
kept off the LAN, red when it is exposed) comes with the reasons and their fixes.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from companion.admin.api import LockView, TargetView, fling_flag
from companion.audit import scrub
from companion.flinging import Fling
from companion.visibility import age_text

if TYPE_CHECKING:
    from companion.doctor.findings import Finding

REFRESH_SECONDS = 10

_SHACKLE_CLOSED = "M7 11V7.5a5 5 0 0 1 10 0V11"
_SHACKLE_OPEN = "M7 11V7.5a5 5 0 0 1 9.6-2"

_CSS = """
:root { --ok: #1a7f37; --warn: #9a6700; --bad: #cf222e; --muted: #57606a; --line: #d0d7de; }
body { font: 15px/1.45 system-ui, sans-serif; margin: 1.5rem auto; max-width: 72rem; padding: 0 1rem;
       color: #1f2328; }
h1 { font-size: 1.5rem; margin: 0 0 .25rem; } h2 { font-size: 1.15rem; margin: 1.75rem 0 .5rem; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; vertical-align: top; padding: .35rem .5rem; border-bottom: 1px solid var(--line); }
th { font-weight: 600; color: var(--muted); font-size: .85rem; }
.muted { color: var(--muted); } .small { font-size: .85rem; }
.lock { display: inline-flex; align-items: center; gap: .3rem; font-weight: 600; white-space: nowrap; }
.lock svg { width: 1.3em; height: 1.3em; flex: none; }
.lock.closed { color: var(--ok); } .lock.open { color: var(--bad); } .lock.open.kept { color: var(--warn); }
.lock.unknown { color: var(--muted); }
.lockrow { margin-bottom: .4rem; }
ul.reasons { margin: .2rem 0 0 1.1rem; padding: 0; font-size: .88rem; }
code { font-size: .85em; background: #f6f8fa; padding: 0 .2em; border-radius: 3px; }
.badge { display: inline-block; padding: 0 .45em; border-radius: 1em; font-size: .8rem; font-weight: 600;
         border: 1px solid currentColor; }
.flag-secure, .st-PASS, .up { color: var(--ok); } .flag-relay, .st-WARN, .assumed { color: var(--warn); }
.flag-insecure, .flag-refused, .st-FAIL, .down, .contradicted { color: var(--bad); }
.legend { display: flex; flex-wrap: wrap; gap: 1.5rem; padding: .6rem .8rem; border: 1px solid var(--line);
          border-radius: 6px; background: #f6f8fa; }
.legend > div { max-width: 30rem; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def lock_svg(state: str) -> str:
    """An inline lock icon; ``currentColor`` lets the CSS class colour it."""
    shackle = _SHACKLE_OPEN if state == "open" else _SHACKLE_CLOSED
    mark = ('<text x="12" y="19.5" font-size="8" text-anchor="middle" fill="#fff" font-family="sans-serif">?</text>'
            if state == "unknown" else '<circle cx="12" cy="16" r="1.6" fill="#fff"/>')
    return ('<svg viewBox="0 0 24 24" aria-hidden="true" focusable="false">'
            f'<path d="{shackle}" fill="none" stroke="currentColor" stroke-width="2.2" stroke-linecap="round"/>'
            f'<rect x="4.5" y="11" width="15" height="11" rx="2" fill="currentColor"/>{mark}</svg>')


_LOCK_TEXT = {"closed": "secure connection possible", "open": "not secure", "unknown": "not known yet"}


def _lock(lock: LockView) -> str:
    extra = " kept" if lock.state == "open" and not lock.token_exposed and lock.mode != "direct-insecure" else ""
    label = _LOCK_TEXT[lock.state]
    where = f" with {_e(lock.server_name)}" if lock.server_name else ""
    how = {"fling": "last fling", "probe": "predicted from the server's certificate", "none": ""}[lock.source]
    mode = f' <span class="muted small">({_e(lock.mode)}{", " + how if how else ""})</span>' if lock.mode else ""
    reasons = ""
    if lock.state != "closed" and lock.reasons:
        items = "".join(f'<li><code>{_e(r.code)}</code> <span class="reason-text">{_e(scrub(r.text))}</span></li>'
                        for r in lock.reasons)
        reasons = f'<ul class="reasons">{items}</ul>'
    return (f'<div class="lockrow"><span class="lock {lock.state}{extra}" data-lock="{lock.state}" '
            f'data-server="{_e(lock.server_id)}" role="img" aria-label="{_e(label)}" title="{_e(label)}">'
            f'{lock_svg(lock.state)}<span>{_e(label)}</span></span>{where}{mode}{reasons}</div>')


_CHANNEL_NAMES = {"gdm": "LAN (GDM)", "plextv": "plex.tv", "proxy": "server proxy"}


def _visible(v: TargetView) -> str:
    now = v.at or datetime.now(UTC)
    items = []
    for c in v.visible:
        name = _CHANNEL_NAMES.get(c.channel, c.channel) + (f" {c.where}" if c.where else "")
        css = {"visible": "up", "off": "muted", "pending": "muted"}.get(c.state, "down")
        fix = f'<div class="small"><strong>fix:</strong> {_e(c.fix)}</div>' if c.fix and not c.visible else ""
        seen = f"; last confirmed {age_text(c.checked_at, now)}" if c.checked_at is not None else ""
        items.append(f'<li data-channel="{_e(c.channel)}" data-visible-state="{_e(c.state)}">'
                     f'<span class="{css}">{_e(name)}: {_e(c.state)}</span>'
                     f'<div class="small muted">{_e(scrub(c.detail))}{_e(seen)}</div>{fix}</li>')
    return f'<ul class="reasons visible">{"".join(items)}</ul>'


def _targets(views: Sequence[TargetView]) -> str:
    if not views:
        return '<p class="muted">No players are bridged yet. They appear when GDM or mDNS finds them, or when they ' \
               'are listed under <code>targets:</code> in the config.</p>'
    rows = []
    for v in views:
        avail = '<span class="up">available</span>' if v.available else '<span class="down">unavailable</span>'
        confidence = ('<span class="badge assumed" data-confidence="assumed" title="no evidence for this '
                      'profile yet: its claims are assumed">assumed</span>' if v.assumed
                      else f'<span class="badge" data-confidence="{_e(v.confidence)}">{_e(v.confidence)}</span>')
        if v.contradicted:
            confidence += (f' <span class="badge contradicted" data-contradicted="{v.contradicted}" '
                           'title="direct-secure flings failed on this device: see companion profiles evidence">'
                           f'contradicted by {v.contradicted} failed fling(s)</span>')
        profile = (f'<code>{_e(v.profile_id)}</code><br><span class="small">{_e(v.profile_name)}</span> {confidence}'
                   if v.profile_id else '<span class="muted">no profile matched</span>')
        error = f'<div class="small down">last error: {_e(v.last_error)}</div>' if v.last_error else ""
        rows.append(
            f'<tr data-target="{_e(v.id)}"><td><strong class="target-name">{_e(v.name)}</strong>'
            f'<div class="small muted">face {_e(v.face_name)} on port {v.face_port}; {v.subscribers} '
            f'subscriber(s), {v.long_polls} long-poll(s)</div>{error}</td>'
            f'<td>{_e(v.kind)}</td><td>{_e(v.address)}:{v.port}</td><td>{avail}</td>'
            f'<td>{profile}<div class="small muted">policy {_e(v.policy)}</div></td>'
            f'<td>{"".join(_lock(lock) for lock in v.locks)}</td><td>{_visible(v)}</td></tr>')
    return ('<table id="targets"><thead><tr><th>Player</th><th>Kind</th><th>Address</th><th>State</th>'
            '<th>Profile (confidence)</th><th>Secure connection</th><th>Visible through</th></tr></thead><tbody>'
            + "".join(rows) + "</tbody></table>")


def _plextv_account(health: dict[str, Any]) -> str:
    p = health.get("plextv") or {}
    if p.get("account"):
        return f'<div class="small" id="plextv-account">plex.tv account: <strong>{_e(p["account"])}</strong></div>'
    if p.get("enabled"):
        return ('<div class="small muted" id="plextv-account">plex.tv: no account linked '
                '(<code>companion link</code> lists the faces in the Plex apps that read plex.tv)</div>')
    return ""


def _servers(servers: Sequence[dict[str, Any]]) -> str:
    if not servers:
        return '<p class="muted">No Plex server known yet.</p>'
    rows = []
    for s in servers:
        tls = s["tls"]
        probe = s.get("probe") or {}
        when = (f' <span class="small muted">(checked {_e(probe["checked_at"][:19].replace("T", " "))} UTC)</span>'
                if probe.get("checked_at") else "")
        if tls is None and probe.get("state") == "failed":
            chain = (f'<span class="down" data-probe="failed">no usable TLS: {_e(probe.get("error") or "")}</span>'
                     f'{when}')
        elif tls is None:
            chain = '<span class="muted" data-probe="not-probed">not probed yet (the first fling measures it)</span>'
        else:
            sent = "".join(
                f'<li>{_e(c["subject"])} <span class="muted small">issued by {_e(c["issuer"])}; valid '
                f'{_e(c["not_before"][:10])} to {_e(c["not_after"][:10])}; {_e(c["signature_hash"])}</span></li>'
                for c in tls["chain"])
            versions = ", ".join(tls["tls_versions"]) or "none"
            leaf = tls["leaf"]
            chain = (f'<div class="small" data-probe="measured">hash <code>{_e(tls["hash"] or "none")}</code>; '
                     f'TLS {_e(versions)}; leaf {_e(leaf["key_type"])} {leaf["key_bits"]} bits{when}</div>'
                     f'<ol class="small chain">{sent}</ol>')
        rows.append(f'<tr data-server="{_e(s["id"])}"><td><strong>{_e(s["name"] or s["address"])}</strong>'
                    f'<div class="small muted">{_e(s["source"])}{", " + _e(s["version"]) if s["version"] else ""}'
                    f'</div></td><td>{_e(s["address"])}:{s["port"]}</td><td>{chain}</td></tr>')
    return ('<table id="servers"><thead><tr><th>Server</th><th>Address</th><th>Certificate chain as sent '
            '(leaf first)</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table>")


_FLAG_TEXT = {"secure": "secure", "relay": "relay: token kept, last hop plain http",
              "insecure": "insecure: token exposed", "refused": "refused"}


def _flings(flings: Iterable[Fling], limit: int = 20) -> str:
    rows = []
    for f in list(flings)[:limit]:
        d = f.decision
        flag = fling_flag(d)
        reasons = "".join(f'<li><code>{_e(r.code)}</code> {_e(scrub(r.text))}</li>' for r in d.reasons)
        rows.append(
            f'<tr data-fling-flag="{flag}"><td class="small">{_e(f.time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"))}'
            f' UTC</td><td>{_e(f.target_name)}<div class="small muted">from {_e(f.controller)}</div></td>'
            f'<td><span class="badge flag-{flag}">{_e(_FLAG_TEXT[flag])}</span>'
            f'<div class="small muted">{_e(d.mode)}; {_e(scrub(f.outcome))}{_playback(f)}</div></td>'
            f'<td>{"yes" if d.secure else "<strong class=down>no</strong>"}</td>'
            f'<td>{"<strong class=down>YES</strong>" if d.token_exposed else "no"}</td>'
            f'<td><ul class="reasons">{reasons}</ul></td></tr>')
    if not rows:
        return ('<p class="muted">No flings since the bridge started (the full history: '
                '<code>companion flings</code>).</p>')
    return ('<table id="flings"><thead><tr><th>Time</th><th>Target</th><th>Mode</th><th>Secure</th>'
            '<th>Token exposed</th><th>Reasons</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table>")


def _playback(f: Fling) -> str:
    if f.playback == "failed":
        why = _e(scrub(f.playback_reason))
        return f'; <span class="down" data-playback="failed">failed on the device: {why}</span>'
    return f'; <span data-playback="{_e(f.playback)}">playback {_e(f.playback)}</span>' if f.playback else ""


def _doctor(findings: Sequence[Finding], at: datetime | None, now: datetime) -> str:
    if at is None:
        return '<p class="muted">The checks have not run yet (they run in the background; or run ' \
               '<code>companion doctor</code>).</p>'
    rows = "".join(
        f'<tr data-check-status="{_e(f.status)}"><td><span class="badge st-{_e(f.status)}">{_e(f.status)}</span></td>'
        f'<td>{_e(f.check)}</td><td>{_e(f.detail)}'
        f'{"<div class=small><strong>fix:</strong> " + _e(f.fix) + "</div>" if f.fix and f.status != "PASS" else ""}'
        f'</td><td class="small muted age">{_e(age_text(f.checked_at, now))}</td></tr>' for f in findings)
    return (f'<p class="small muted">last full run {_e(at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"))} UTC; each '
            'check is re-run when what it depends on changes (a player or server found, a server measured), '
            'and shows its own age</p>'
            f'<table id="doctor"><tbody>{rows}</tbody></table>')


def _legend() -> str:
    return ('<div class="legend" id="legend">'
            f'<div><span class="lock closed" data-legend="closed">{lock_svg("closed")}<span>closed lock</span></span>: '
            'a secure connection is possible: the player is handed an https plex.direct address it can verify, '
            'and the token never crosses the LAN in clear.</div>'
            f'<div><span class="lock open" data-legend="open">{lock_svg("open")}<span>open lock</span></span>: not '
            'secure; the reasons under it say why and what fixes it (red: the token crosses the LAN in clear; '
            'amber: the relay keeps the token, but the last hop is plain http).</div>'
            f'<div><span class="lock unknown" data-legend="unknown">{lock_svg("unknown")}<span>grey</span></span>: '
            'not known until the server has been measured.</div></div>')


def render_page(*, name: str, version: str, health: dict[str, Any], targets: Sequence[TargetView],
                servers: Sequence[dict[str, Any]], flings: Iterable[Fling], findings: Sequence[Finding],
                findings_at: datetime | None, now: datetime) -> str:
    """The whole status page."""
    status = health["status"]
    problems = "; ".join(health.get("problems", []))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(name)}: companion-bridge status</title>
<style>{_CSS}</style></head>
<body>
<header><h1>{_e(name)}</h1>
<div class="small muted">companion-bridge {_e(version)}; up {_uptime(health["uptime_seconds"])};
status <strong class="{"up" if status == "ok" else "down"}" id="health">{_e(status)}</strong>{
(" (" + _e(problems) + ")") if problems else ""}; page generated
{_e(now.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"))} UTC, refreshes every {REFRESH_SECONDS} s</div>
{_plextv_account(health)}</header>
<h2>What the locks mean</h2>
{_legend()}
<h2>Players</h2>
{_targets(targets)}
<h2>Plex servers</h2>
{_servers(servers)}
<h2>Latest flings</h2>
{_flings(flings)}
<h2>Checks (companion doctor)</h2>
{_doctor(findings, findings_at, now)}
<p class="small muted">JSON: <a href="/api/targets">targets</a>, <a href="/api/servers">servers</a>,
<a href="/api/flings">flings</a>, <a href="/api/profiles">profiles</a>, <a href="/api/health">health</a>;
<a href="/metrics">metrics</a>.</p>
</body></html>
"""


def _uptime(seconds: float) -> str:
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s"
