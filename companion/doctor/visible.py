"""The doctor's checks of where each face can be seen: the running daemon's channels and plex.tv's own list."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from companion.config import Config
from companion.doctor.findings import Finding
from companion.doctor.servers import HTTP_TIMEOUT
from companion.errors import CompanionError

# -- where each face is visible -----------------------------------------------------------------


def visibility_findings(faces: Iterable[tuple[str, Sequence[dict[str, object]]]]) -> list[Finding]:
    """One finding per face from its ``visible`` views (as /api/targets gives them): PASS when every
    channel reaches it, WARN naming each channel that does not, with its fix."""
    findings: list[Finding] = []
    for name, views in faces:
        seen = [f"{v.get('channel')}" + (f" ({v.get('where')})" if v.get("where") else "")
                for v in views if v.get("visible")]
        missing = [v for v in views if not v.get("visible") and v.get("state") != "off"]
        check = f"visible ({name})"
        where = ", ".join(seen) or "nowhere"
        if not missing:
            findings.append(Finding(check, "PASS", f"visible through {where}", ""))
            continue
        gaps = "; ".join(f"{v.get('channel')}" + (f" ({v.get('where')})" if v.get("where") else "")
                         + f": {v.get('detail')}" for v in missing)
        fixes = "; ".join(dict.fromkeys(str(v.get("fix")) for v in missing if v.get("fix")))
        findings.append(Finding(check, "WARN" if seen else "FAIL", f"visible through {where}; not through {gaps}",
                                fixes))
    return findings


def visibility_from_daemon(config: Config, *, timeout: float = 2.0) -> list[Finding]:
    """Where each face is visible, asked of the daemon running on this host (its admin API on loopback)."""
    import urllib.error
    import urllib.request

    if not config.http.admin_port:
        return [Finding("visible", "WARN", "the admin port is off (http.admin_port: 0), so where each face is "
                        "visible cannot be asked of the running daemon", "set http.admin_port")]
    url = f"http://127.0.0.1:{config.http.admin_port}/api/targets"
    try:
        # Loopback only, to our own admin API; no proxy may be involved.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=timeout) as resp:
            rows = json.loads(resp.read(4 * 1024 * 1024))
    except (OSError, urllib.error.URLError, ValueError):
        return [Finding("visible", "WARN", f"no daemon answered on {url}: where each face is visible is known "
                        "only to the running daemon", "start it (`systemctl start companion-bridge`)")]
    faces = [(str(r.get("face", {}).get("name") or r.get("name")), [v for v in r.get("visible", [])
                                                                     if isinstance(v, dict)])
             for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []
    return visibility_findings(faces) or [Finding("visible", "WARN", "the daemon has no faces yet",
                                                  "see `companion scan` for the players it can find")]




# -- plex.tv ------------------------------------------------------------------------------------


async def check_plextv(config: Config) -> list[Finding]:
    """What plex.tv itself lists: is the account linked, and is every face a player with its LAN connection?

    The doctor asks plex.tv with the account token (plex.tv calls only): the account, then the
    resources list the Plex apps read, looking for every face this bridge ever had. (The running
    daemon's own view of each face's plex.tv channel is in the ``visible`` findings.)
    """
    from companion.errors import PlexTvError, PlexTvUnauthorized
    from companion.plextv.api import PlexTvApi
    from companion.plextv.devices import FIX_LINK, FIX_RELINK
    from companion.plextv.link import bridge_identity
    from companion.plextv.store import PlexTvStore
    from companion.state import StateDir

    if not config.plextv.enabled:
        return []
    not_linked = Finding("plextv", "WARN", "no Plex account is linked: the faces are not plex.tv devices, so Plex "
                         "apps that list only plex.tv players (Plexamp, recent mobile apps) do not show them",
                         FIX_LINK)
    store = PlexTvStore(config.state_path)
    try:
        token = store.load()
    except CompanionError as exc:
        return [Finding("plextv", "FAIL", str(exc), FIX_RELINK)]
    if token is None:
        return [not_linked]
    state = StateDir(config.state_path)
    identity = bridge_identity(config, state.bridge_id())
    records = store.devices()
    from companion.proto.gdm import face_identifier

    wanted = {face_identifier(t): "" for t in state.face_ports()} | {k: r.name for k, r in records.items()}
    async with PlexTvApi(config.plextv.url, timeout=HTTP_TIMEOUT * 2) as api:
        try:
            account = await api.user(identity, token)
            resources = await api.resources(identity, token)
        except PlexTvUnauthorized as exc:
            return [Finding("plextv", "FAIL", f"plex.tv rejects the account token: {exc}", FIX_RELINK)]
        except PlexTvError as exc:
            return [Finding("plextv", "WARN", f"cannot ask plex.tv: {exc}",
                            f"check that this host reaches {config.plextv.url}")]
    findings = [Finding("plextv", "PASS", f"linked to the Plex account {account.name!r}", "")]
    listed = {r.client_identifier: r for r in resources}
    for ident, name in sorted(wanted.items(), key=lambda kv: kv[1] or kv[0]):
        resource = listed.get(ident)
        label = f"plextv ({name or (resource.name if resource else ident)})"
        if resource is not None and "player" in resource.provides and resource.connections:
            findings.append(Finding(label, "PASS", f"the Plex apps see it as a player at "
                                    f"{', '.join(resource.connections)}", ""))
        else:
            why = "not in the account's resources" if resource is None else "listed, but not as a player with a " \
                                                                            "connection"
            findings.append(Finding(label, "WARN", f"{why}: the Plex apps that read plex.tv do not list it",
                                    "start the daemon (it registers every face); if it runs, its log says what "
                                    "plex.tv answered (lines starting with companion.plextv)"))
    return findings


__all__ = ["check_plextv", "visibility_findings", "visibility_from_daemon"]
