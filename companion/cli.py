"""The ``companion`` command line: the daemon (``run``) and the one-shot tools for people and scripts.

Every reporting command takes ``--json`` for scripts; the human output is a short table. Exit
codes: 0 success, 1 a check or lint failed, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from companion import __version__
from companion.config import DEFAULT_STATE_DIR, Config, load_config
from companion.errors import CompanionError, ConfigError

log = logging.getLogger("companion")

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
EXIT_CONFIG = 78  # EX_CONFIG: the service unit does not restart on it


def setup_logging(level: str) -> None:
    """Logs go to stderr; under systemd (JOURNAL_STREAM set) without timestamps, the journal adds them."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        fmt = "<%(levelno)s>%(name)s: %(message)s"
        handler.setFormatter(_JournalFormatter(fmt))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log would print every controller request; keep it for debugging only.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class _JournalFormatter(logging.Formatter):
    """Prefix each line with its syslog priority (<3> error ... <7> debug) so journald keeps levels."""

    _PRIO = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}

    def format(self, record: logging.LogRecord) -> str:
        prio = self._PRIO.get(record.levelno, 6)
        return f"<{prio}>{record.name}: {record.getMessage()}" + (
            "\n" + self.formatException(record.exc_info) if record.exc_info else "")


def _config_from_args(args: argparse.Namespace) -> Config:
    path = args.config or os.environ.get("COMPANION_CONFIG") or None  # set but empty = not set
    if path and not args.config and not os.path.exists(path):
        # COMPANION_CONFIG from the service unit names the usual place; no file there = defaults.
        log.info("no config file at %s (COMPANION_CONFIG); running on the embedded defaults", path)
        path = None
    config = load_config(path)
    state_env = os.environ.get("STATE_DIRECTORY")
    if state_env and config.state_dir == DEFAULT_STATE_DIR:
        config = replace(config, state_dir=state_env.split(":")[0])
    return config


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def _table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


# -- run ----------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    config = _config_from_args(args)
    return asyncio.run(_run(config, args))


def status_line(bridge: Any) -> str:
    """One line for systemd's STATUS= and the logs: faces, availability, flings."""
    faces = len(bridge.faces)
    down = sum(1 for slot in bridge.faces.values() if not slot.adapter.available)
    flings = list(bridge.flings.recent) if bridge.flings is not None else []
    insecure = sum(1 for f in flings if not f.decision.secure)
    return (f"{faces} face(s)" + (f", {down} unavailable" if down else "")
            + f"; {len(flings)} fling(s) since start, {insecure} not secure")


async def _run(config: Config, args: argparse.Namespace) -> int:
    from companion.bridge import Bridge
    from companion.connections import quiet_loop_errors
    from companion.sdnotify import Notifier
    from companion.tuning import lean_tls_buffers

    loop = asyncio.get_running_loop()
    quiet_loop_errors(loop)
    lean_tls_buffers()
    stop = asyncio.Event()
    reload_requested = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_requested.set)
    notifier = Notifier()
    bridge = Bridge(config)
    try:
        await bridge.start()
    except CompanionError as exc:
        log.error("cannot start: %s", exc)
        notifier.close()
        return EXIT_CONFIG if isinstance(exc, ConfigError) else EXIT_FAIL
    except OSError as exc:
        log.error("cannot start: %s", exc)
        notifier.close()
        return EXIT_FAIL
    notifier.ready()  # every listener is up
    notifier.status(status_line(bridge))

    async def watchdog() -> None:
        period = notifier.ping_period() or 10.0
        while True:
            notifier.watchdog()  # sent from the event loop: a stuck loop stops the pings
            notifier.status(status_line(bridge))
            await asyncio.sleep(period)

    async def reloader() -> None:
        while True:
            await reload_requested.wait()
            reload_requested.clear()
            notifier.reloading()
            path = getattr(args, "config", None) or os.environ.get("COMPANION_CONFIG")
            try:
                new = _config_from_args(args) if path else config
                await bridge.reload(new)
            except CompanionError as exc:
                log.error("reload failed, keeping the running configuration: %s", exc)
            notifier.ready()

    tasks = [asyncio.create_task(watchdog(), name="sd-watchdog"),
             asyncio.create_task(reloader(), name="sighup-reload")]
    try:
        await stop.wait()
        log.info("stopping")
        notifier.stopping()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await bridge.stop()
        notifier.close()
    return EXIT_OK


# -- scan ---------------------------------------------------------------------------------------


def cmd_scan(args: argparse.Namespace) -> int:
    config = _config_from_args(args)
    return asyncio.run(_scan(config, args.timeout, args.json))


async def _scan(config: Config, timeout: float, as_json: bool) -> int:
    from companion.discovery.gdm import scan
    from companion.discovery.mdns import MdnsDiscovery, MdnsSettings
    from companion.model import Sighting, Target, TargetKind

    if not as_json:
        protocols = " and ".join(p for p, on in (("GDM", config.gdm.enabled), ("mDNS", config.mdns.enabled)) if on)
        print(f"searching for {timeout:g} s ({protocols or 'nothing enabled'}) ...", file=sys.stderr)
    found: dict[tuple[str, str], Sighting] = {}

    def keep(sighting: Sighting) -> None:
        found.setdefault((sighting.kind, sighting.ident), sighting)

    mdns: MdnsDiscovery | None = None
    if config.mdns.enabled:
        mdns = MdnsDiscovery(MdnsSettings(enabled=True, interfaces=config.interfaces), keep, lambda s: None)
        await mdns.start()
    try:
        if config.gdm.enabled:
            for sighting in await scan(config.gdm, timeout, interfaces=config.interfaces):
                keep(sighting)
        else:
            await asyncio.sleep(timeout)  # the listening window for mDNS answers
    finally:
        if mdns is not None:
            await mdns.stop()
    profiles = _profile_set(config)

    def profile_of(s: Sighting) -> str:
        if s.kind == "server" or s.face is not None:
            return ""
        fields = Target(id="", kind=TargetKind(s.kind), name=s.name, address=s.address, port=s.port,
                        source=s.source, ident=s.ident, product=s.product, version=s.version,
                        platform=s.platform, platform_version=s.platform_version, device_class=s.device_class,
                        model=s.model).match_fields
        profile = profiles.match(fields)
        return f"{profile.id} ({profile.confidence})"

    rows = [{
        # Another bridge's face (or ours) is listed as what it is, never as a player.
        "kind": "face" if s.face is not None else s.kind, "name": s.name, "address": s.address, "port": s.port,
        "product": s.product or s.model,
        "version": s.version, "id": s.ident, "source": s.source, "capabilities": list(s.capabilities),
        "profile": profile_of(s), **({"host": s.host} if s.host else {}),
        **({"bridge": s.face.bridge_id} if s.face is not None and s.face.bridge_id else {}),
    } for s in sorted(found.values(), key=lambda s: (s.kind, s.name))]
    if as_json:
        _print_json(rows)
        return EXIT_OK
    if not rows:
        print("nothing answered (is multicast reaching this host? try `companion doctor`)")
        return EXIT_OK
    print(_table([[str(r["kind"]), str(r["name"]), f"{r['address']}:{r['port']}", str(r["product"]),
                   str(r["profile"]), str(r["id"])] for r in rows],
                 ["KIND", "NAME", "ADDRESS", "PRODUCT", "PROFILE", "ID"]))
    return EXIT_OK


# -- profiles -----------------------------------------------------------------------------------


def cmd_profiles_lint(args: argparse.Namespace) -> int:
    from companion.security.profiles import lint

    paths = [Path(p) for p in args.paths]
    errors = lint(paths)
    for error in errors:
        print(error, file=sys.stderr)
    if errors:
        print(f"{len(errors)} error(s)", file=sys.stderr)
        return EXIT_FAIL
    print(f"ok: {', '.join(args.paths) if args.paths else 'shipped profiles'}")
    return EXIT_OK


def _profile_set(config: Config) -> Any:
    from companion.security.profiles import load_with_extra

    profiles = load_with_extra(config.profiles_dirs)
    for error in profiles.errors:
        print(f"profile skipped: {error}", file=sys.stderr)
    return profiles


def cmd_profiles_list(args: argparse.Namespace) -> int:
    from companion.security.profiles import describe
    from companion.security.trust import root_outlook

    profiles = _profile_set(_config_from_args(args))
    outlooks = {p.id: root_outlook(p, profiles.roots_for(p), profiles.cross_signs) for p in profiles.profiles.values()}
    if args.json:
        _print_json([{**describe(p), "cross_signed_roots": [_outlook_json(o) for o in outlooks[p.id]]}
                     for p in profiles.profiles.values()])
        return EXIT_OK
    rows = []
    for p in profiles.profiles.values():
        matches = "; ".join(", ".join(f"{k}={v}" for k, v in clause.items()) for clause in p.match) or "(override)"
        tls = "no https" if not p.media_https else f"TLS {p.tls.min_version}-{p.tls.max_version}"
        gen_y = ", ".join(f"{o.root.removeprefix('isrg-root-').upper()} "
                          f"{'ok' if o.ok else 'needs cross-sign' if o.needs_cross_sign else 'no'}"
                          for o in outlooks[p.id] if p.media_https) or "-"
        rows.append([p.id, p.transport, tls, p.roots.store, p.dns_resolver, p.confidence, gen_y, matches])
    print(_table(rows, ["ID", "TRANSPORT", "TLS", "ROOTS", "DNS", "CONFIDENCE", "2026 ROOTS", "MATCHES"]))
    return EXIT_OK


def cmd_profiles_evidence(args: argparse.Namespace) -> int:
    from companion.audit import AuditLog
    from companion.security.claims import evidence_to_json, summarize

    config = _config_from_args(args)
    profiles = _profile_set(config)
    path = config.state_path / "audit.sqlite3"
    facts = []
    if path.exists():
        with AuditLog(path) as audit:
            facts = audit.outcome_facts()
    summary = summarize(facts, profiles.profiles)
    if args.json:
        _print_json(evidence_to_json(summary))
        return EXIT_OK
    if not summary:
        print(f"no flings recorded in {path}")
        return EXIT_OK
    rows = [[s.profile, str(s.flings), str(s.ok), str(s.failures), str(s.direct_secure_failures), str(s.reflings),
             "YES" if s.is_contradicted else "no"] for s in summary]
    print(_table(rows, ["PROFILE", "FLINGS", "PLAYED", "FAILED", "DIRECT-SECURE FAILED", "RE-FLUNG",
                        "CONTRADICTED"]))
    for s in summary:
        if not s.is_contradicted:
            continue
        print(f"\n{s.profile}: {s.direct_secure_failures} direct-secure fling(s) failed on the device; "
              "the claims that made them secure:")
        for c in s.contradicted:
            if not c.claims:
                print(f"  {c.facet}: no claim backs this key (the profile's value is unbacked)")
            for e in c.claims:
                print(f"  {c.facet}: \"{e.claim}\" [{e.confidence}]" + (f" ({e.source})" if e.source else ""))
    return EXIT_OK


# -- flings -------------------------------------------------------------------------------------


def cmd_flings(args: argparse.Namespace) -> int:
    from companion.audit import AuditLog, format_table, record_to_json

    config = _config_from_args(args)
    path = config.state_path / "audit.sqlite3"
    if not path.exists():
        records = []
    else:
        with AuditLog(path) as audit:
            records = audit.recent(args.limit, insecure_only=args.insecure)
    if args.json:
        _print_json([record_to_json(r) for r in records])
    else:
        print(format_table(records))
    return EXIT_OK


# -- explain ------------------------------------------------------------------------------------


def cmd_explain(args: argparse.Namespace) -> int:
    config = _config_from_args(args)
    return asyncio.run(_explain(config, args))


def _explain_profile(config: Config, profiles: Any, target: str | None, profile_id: str | None) -> Any:
    from companion.model import Target, TargetKind, stable_id

    if profile_id:
        return profiles.get(profile_id)
    assert target is not None
    for t in config.targets:
        if target in (t.name, stable_id(t.kind, f"config:{t.name}")):
            fields = Target(id="", kind=TargetKind(t.kind), name=t.name, address=t.address, port=t.port,
                            source="config", ident="").match_fields
            return profiles.match(fields, override=config.profiles.get(t.name) or t.profile)
    if target in profiles.profiles:
        return profiles.get(target)
    running = _running_target_profile(config, target)
    if running is not None:
        return profiles.get(running)
    raise CompanionError(f"unknown target {target!r}: name a configured target or one the running daemon "
                         "has bridged (see http://localhost:32480/api/targets), or give --profile ID "
                         "(see `companion profiles list`)")


def _running_target_profile(config: Config, target: str) -> str | None:
    """The profile id the running daemon on this host matched for a target it discovered, if any."""
    row = _running_target(config, target)
    profile = row.get("profile") if row else None
    if isinstance(profile, dict) and isinstance(profile.get("id"), str) and profile["id"]:
        return str(profile["id"])
    return None


def _running_target(config: Config, target: str) -> dict[str, Any] | None:
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


async def _explain(config: Config, args: argparse.Namespace) -> int:
    from datetime import UTC, datetime
    from urllib.parse import urlsplit

    from companion.errors import ProtocolError, TrustError
    from companion.flinging import parse_resolver
    from companion.proto import plexdirect
    from companion.security.decide import decide, explain
    from companion.security.dnscheck import check_plex_direct
    from companion.security.probe import probe_server
    from companion.security.trust import root_outlook

    profiles = _profile_set(config)
    profile = _explain_profile(config, profiles, args.target, args.profile)
    url = urlsplit(args.server)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError(f"--server: expected http(s)://host:port, got {args.server!r}")
    host = url.hostname
    port = url.port or 32400
    server_hash: str | None = None
    try:
        parsed = plexdirect.parse_name(host)
        address, server_hash = parsed.address, parsed.hash
    except ProtocolError:
        address = host
    try:
        sni = plexdirect.build_name(address, server_hash) if server_hash else None
    except ProtocolError:
        sni = None
    if not args.json:
        print(f"probing {address}:{port} ...", file=sys.stderr)
    try:
        facts = await probe_server(address, port, server_name=sni, timeout=config.timeouts.command)
    except TrustError as exc:
        facts = None
        if not args.json:
            print(f"  server TLS: {exc}", file=sys.stderr)
    dns = None
    if facts is not None and profile.dns_resolver == "lan" and config.security.dns_check:
        wanted = server_hash or facts.plex_direct_hash
        if wanted:
            with contextlib.suppress(ProtocolError):
                dns = await check_plex_direct(plexdirect.build_name(address, wanted), address,
                                              resolver=parse_resolver(args.resolver or config.security.resolver))
    policy = args.policy or config.security.policy
    now = datetime.now(UTC)
    roots = profiles.roots_for(profile)
    common = {"profile": profile, "roots": roots, "server_address": address, "server_port": port, "facts": facts,
              "dns": dns, "policy": policy, "relay_available": config.security.relay, "now": now,
              "server_hash": server_hash, "cross_signs": profiles.cross_signs}
    checks = explain(**common)
    decision = decide(**common)
    outlook = root_outlook(profile, roots, profiles.cross_signs)
    if args.json:
        _print_json({
            "profile": {"id": profile.id, "name": profile.name, "confidence": profile.confidence},
            "server": {"address": address, "port": port, "hash": facts.plex_direct_hash if facts else None,
                       "tls_versions": sorted(facts.tls_versions) if facts else [],
                       "chain": [c.subject.rfc4514_string() for c in facts.chain] if facts else []},
            "policy": policy,
            "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail,
                        "reasons": [{"code": r.code, "text": r.text} for r in c.reasons]} for c in checks],
            "decision": {"mode": decision.mode, "secure": decision.secure,
                         "token_exposed": decision.token_exposed, "stream_base": decision.stream_base,
                         "reasons": [{"code": r.code, "text": r.text} for r in decision.reasons]},
            "cross_signed_roots": [_outlook_json(o) for o in outlook],
        })
    else:
        print(f"device profile: {profile.id} ({profile.name}); confidence: {profile.confidence}")
        if profile.notes:
            print(f"  notes: {' '.join(profile.notes.split())}")
        if facts is not None:
            print(f"server: {address}:{port}; TLS {', '.join(sorted(facts.tls_versions)) or 'none'}; "
                  f"hash {facts.plex_direct_hash or '-'}")
            for cert in facts.chain:
                print(f"  sent: {cert.subject.rfc4514_string()}  (issuer {cert.issuer.rfc4514_string()})")
        print(f"policy: {policy}")
        for c in checks:
            mark = "PASS" if c.passed else ("FAIL" if c.passed is False else " -- ")
            print(f"  {mark}  {c.name:<16} {c.detail}")
        if outlook:
            print("2026 roots (plex.direct leaves come from YR1 under Root YR; PMS sends leaf + YR1 only):")
            for o in outlook:
                print(f"  {'PASS' if o.ok else 'FAIL'}  {o.root:<16} {o.text} [{o.confidence}]")
        verdict = decision.mode + ("" if decision.secure else
                                   (" (token exposed)" if decision.token_exposed else " (token kept off the LAN)"))
        print(f"verdict: {verdict}")
        if decision.stream_base:
            print(f"stream base for the device: {decision.stream_base}")
        for r in decision.reasons:
            print(f"  - {r.code}: {r.text}")
    return EXIT_OK if decision.secure else EXIT_FAIL


def _outlook_json(o: Any) -> dict[str, object]:
    return {"root": o.root, "cross_signed_by": o.by, "trusts_root": o.trusts_root, "trusts_cross_signer": o.trusts_by,
            "follows_aia": o.follows_aia, "ok": o.ok, "needs_cross_sign": o.needs_cross_sign, "text": o.text,
            "confidence": o.confidence,
            "evidence": [{"claim": e.claim, "confidence": e.confidence, "source": e.source} for e in o.evidence]}


# -- profiles capture ---------------------------------------------------------------------------


def cmd_profiles_capture(args: argparse.Namespace) -> int:
    config = _config_from_args(args)
    return asyncio.run(_capture(config, args))


def _capture_target(config: Config, target: str) -> Any:
    """TARGET as ``IP:PORT``, a configured target, or one the running daemon bridges (its admin API)."""
    import ipaddress

    from companion.lab.capture import CaptureTarget
    from companion.model import stable_id

    host, _, port = target.rpartition(":")
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host.strip("[]"))
        if port.isdigit() and 0 < int(port) < 65536:
            return CaptureTarget(name=target, address=host.strip("[]"), port=int(port))
    for t in config.targets:
        if target in (t.name, stable_id(t.kind, f"config:{t.name}")):
            return CaptureTarget(name=t.name, address=t.address, port=t.port, kind=t.kind,
                                 base_profile=config.profiles.get(t.name) or t.profile or "default")
    row = _running_target(config, target)
    if row is not None:
        profile = row.get("profile")
        base = str(profile.get("id") or "default") if isinstance(profile, dict) else "default"
        return CaptureTarget(name=str(row.get("name", target)), address=str(row.get("address", "")),
                             port=int(row.get("port", 0)), kind=str(row.get("kind", "companion")),
                             base_profile=base)
    raise CompanionError(f"unknown target {target!r}: give IP:PORT of a Companion player, a configured target, "
                         f"or one the running daemon bridges (see http://localhost:{config.http.admin_port}"
                         "/api/targets)")


async def _capture(config: Config, args: argparse.Namespace) -> int:
    import re

    from companion.bridge import local_address_towards
    from companion.lab.capture import Capture
    from companion.lab.draft import build_draft
    from companion.security.profiles import lint

    target = _capture_target(config, args.target)
    profiles = _profile_set(config)
    base = profiles.get(args.base or target.base_profile)
    out = Path(args.out) if args.out else None
    if out is None:
        player_slug = re.sub(r"[^a-z0-9]+", "-", target.name.lower()).strip("-")[:50] or "device"
        out = Path(f"{player_slug}-measured.yaml")
    profile_id = out.stem
    if not re.match(r"^[a-z0-9][a-z0-9-]{0,63}$", profile_id):
        raise CompanionError(f"--out {out}: the file name is the profile id; use lowercase letters, digits and "
                             "dashes, e.g. my-tv.yaml")

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    capture = Capture(target, bridge_address=local_address_towards(target.address), lab_bind=config.http.bind,
                      lab_port=args.port if args.port is not None else config.lab.port,
                      listener_bind=config.http.bind, host=args.host, step_timeout=args.step_timeout,
                      command_timeout=config.timeouts.command, progress=progress)
    result = await capture.run()
    out.write_text(build_draft(result, base, profile_id), encoding="utf-8")
    errors = lint([out])
    if args.json:
        _print_json({**result.to_json(), "draft": str(out), "lint_errors": [str(e) for e in errors]})
    progress(f"captured in {result.seconds:.1f} s; draft written to {out}")
    for error in errors:
        print(error, file=sys.stderr)
    return EXIT_FAIL if errors else EXIT_OK


# -- parser -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="companion", description=(
        "companion-bridge: presents LAN players as Plex Companion players and secures every fling."))
    parser.add_argument("--version", action="version", version=f"companion-bridge {__version__}")
    parser.add_argument("--log-level", default=os.environ.get("COMPANION_LOG_LEVEL", "info"),
                        choices=["debug", "info", "warning", "error"], help="log verbosity (default: info)")
    parser.add_argument("--config", metavar="FILE", help="YAML config file (default: $COMPANION_CONFIG, "
                        "else embedded defaults)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="YAML config file")
    run.set_defaults(func=cmd_run)

    scan = sub.add_parser("scan", help="one-shot discovery of players and servers")
    scan.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="YAML config file")
    scan.add_argument("--timeout", type=float, default=3.0, metavar="S", help="seconds to listen (default 3)")
    scan.add_argument("--json", action="store_true", help="machine-readable output")
    scan.set_defaults(func=cmd_scan)

    profiles = sub.add_parser("profiles", help="device profiles: lint and list")
    psub = profiles.add_subparsers(dest="profiles_command", required=True, metavar="ACTION")
    plint = psub.add_parser("lint", help="validate profile and root-store files; file:line: message per error")
    plint.add_argument("paths", nargs="*", metavar="PATH", help="files or directories (default: shipped)")
    plint.set_defaults(func=cmd_profiles_lint)
    plist = psub.add_parser("list", help="the loaded profiles and what they match")
    plist.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="YAML config file")
    plist.add_argument("--json", action="store_true", help="machine-readable output")
    plist.set_defaults(func=cmd_profiles_list)
    pev = psub.add_parser("evidence", help="per profile: flings, failures on the device, and the claims they "
                          "contradict (from the audit log)")
    pev.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="YAML config file")
    pev.add_argument("--json", action="store_true", help="machine-readable output")
    pev.set_defaults(func=cmd_profiles_evidence)
    pcap = psub.add_parser("capture", help="measure a player's TLS through the lab and write a profile draft")
    pcap.add_argument("target", metavar="TARGET", help="IP:PORT of a Companion player, a configured target, or "
                      "a target the running daemon bridges (name or id)")
    pcap.add_argument("--out", metavar="FILE", help="draft to write (default: <target>-measured.yaml); its "
                      "name is the profile id")
    pcap.add_argument("--base", metavar="PROFILE", help="profile whose unmeasurable claims (roots, key sizes, "
                      "DNS) the draft keeps (default: the target's current profile)")
    pcap.add_argument("--host", default="plex-direct", metavar="MODE", help="what the player is told to connect "
                      "to: plex-direct (<dashed-ip>.<lab-hash>.plex.direct, the default), ip, or a DNS name")
    pcap.add_argument("--port", type=int, metavar="N", help="lab port (default: lab.port, 32482)")
    pcap.add_argument("--step-timeout", type=float, default=30.0, metavar="S",
                      help="seconds each lab endpoint waits for the player (default 30)")
    pcap.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="YAML config file")
    pcap.add_argument("--json", action="store_true", help="also print everything seen, as JSON")
    pcap.set_defaults(func=cmd_profiles_capture)

    flings = sub.add_parser("flings", help="the audit log of flings, newest first")
    flings.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="YAML config file")
    flings.add_argument("--insecure", action="store_true", help="only flings that were not fully secure")
    flings.add_argument("--limit", type=int, default=50, metavar="N", help="at most N records (default 50)")
    flings.add_argument("--json", action="store_true", help="machine-readable output")
    flings.set_defaults(func=cmd_flings)

    explain = sub.add_parser("explain", help="the secure/insecure decision for a target and a server, check by "
                             "check (exit 0 when secure, 1 when not)")
    explain.add_argument("target", nargs="?", metavar="TARGET", help="a configured target's name or id")
    explain.add_argument("--profile", metavar="ID", help="judge this device profile instead of a target")
    explain.add_argument("--server", required=True, metavar="URL", help="https://<ip>:<port> or the plex.direct URL")
    explain.add_argument("--policy", choices=["required", "preferred", "disabled"], help="override the policy")
    explain.add_argument("--resolver", metavar="IP[:PORT]", help="LAN resolver to check plex.direct names with")
    explain.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="YAML config file")
    explain.add_argument("--json", action="store_true", help="machine-readable output")
    explain.set_defaults(func=cmd_explain)

    doctor = sub.add_parser("doctor", help="check multicast, ports, DNS rebinding, server chains and the clock "
                            "(exit 0 all PASS, 1 a WARN, 2 a FAIL)")
    doctor.add_argument("--server", metavar="URL", help="also check this server (https://<ip>:<port>)")
    doctor.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="YAML config file")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.set_defaults(func=_cmd_doctor)

    link = sub.add_parser("link", help="link the bridge to a Plex account (PIN flow at plex.tv/link) so its faces "
                          "are registered on plex.tv (exit 0 linked, 1 expired/denied/refused/unreachable)")
    link.add_argument("--timeout", type=float, default=300.0, metavar="S",
                      help="seconds to wait for the code to be entered (default 300)")
    link.add_argument("--token-file", metavar="PATH", help="write the account token there (mode 0600) instead of "
                      "<state_dir>/plextv-token, e.g. the file a systemd LoadCredential= names")
    link.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="YAML config file")
    link.set_defaults(func=_cmd_plextv("cmd_link"))
    unlink = sub.add_parser("unlink", help="delete every plex.tv device the bridge registered, then the token")
    unlink.add_argument("--token-file", metavar="PATH", help="the token file `companion link --token-file` wrote")
    unlink.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="YAML config file")
    unlink.set_defaults(func=_cmd_plextv("cmd_unlink"))
    return parser


def _cmd_plextv(name: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        from companion.plextv import link

        return int(getattr(link, name)(args))

    return run


def _cmd_doctor(args: argparse.Namespace) -> int:
    from companion.doctor import cmd_doctor

    return cmd_doctor(args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "explain" and not args.target and not args.profile:
        parser.error("explain: give a TARGET or --profile ID")
    setup_logging(args.log_level)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        for line in str(exc).splitlines():  # one line per problem in the file
            print(f"companion: configuration error: {line}", file=sys.stderr)
        return EXIT_CONFIG
    except CompanionError as exc:
        print(f"companion: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130


__all__ = ["asdict", "build_parser", "main"]
