"""The daemon's configuration: YAML -> frozen dataclasses, every key optional, defaults embedded.

Errors name the file, the line and the dotted key (``config.yaml:7: gdm.player_port: ...``) and
are raised before anything starts. The text is read by :mod:`companion.yamlsource` (plain YAML
only, every value with its line), the same reader as the device profiles'.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from companion.errors import ConfigError, ConfigErrors, did_you_mean
from companion.security.terms import POLICIES, Policy
from companion.yamlsource import Node, YamlSourceError, read_yaml

FACES_MODES: tuple[str, ...] = ("all", "non-companion", "none")
TARGET_KINDS: tuple[str, ...] = ("companion", "chromecast")
DEFAULT_STATE_DIR = "~/.local/state/companion-bridge"


@dataclass(frozen=True)
class GdmConfig:
    """Where GDM is spoken (the ``gdm:`` section, as the responder and scanner take it). A ``group``
    that is not multicast (a broadcast or unicast address) is sent to but never joined."""

    enabled: bool = True
    group: str = "239.0.0.250"
    player_port: int = 32412
    announce_port: int = 32413
    server_port: int = 32414
    hello_interval: float = 30.0
    search_interval: float = 10.0


@dataclass(frozen=True)
class MdnsConfig:
    """The ``mdns:`` section: Chromecast discovery over mDNS."""

    enabled: bool = True


@dataclass(frozen=True)
class ProxyConfig:
    """The ``proxy:`` section: the faces on the servers' companion proxy."""

    # Register each face on the companion proxy of every configured server that has a token.
    enabled: bool = True


@dataclass(frozen=True)
class HttpConfig:
    """The ``http:`` section: where the admin page, the faces and the relay listen."""

    bind: str = "0.0.0.0"
    admin_port: int = 32480
    face_port_base: int = 32500
    relay_port: int = 32481
    allowed_hosts: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ("https://app.plex.tv",)


@dataclass(frozen=True)
class SecurityConfig:
    """The ``security:`` section: the policy, the relay, the DNS check and extra roots."""

    policy: Policy = "preferred"
    relay: bool = True
    dns_check: bool = True
    resolver: str | None = None  # "ip" or "ip:port"; None = the system's resolver
    relay_idle_timeout: float = 6 * 3600.0
    # PEM files of roots the bridge itself trusts (on top of the certifi bundle) when it relays.
    extra_roots: tuple[str, ...] = ()
    # Per-target policy overrides: target name or id -> policy.
    target_policies: Mapping[str, Policy] = field(default_factory=dict)


@dataclass(frozen=True)
class TimeoutsConfig:
    """The ``timeouts:`` section, in seconds."""

    command: float = 5.0
    target_expiry: float = 120.0
    push: float = 5.0
    # How long a fling's outcome is watched on the target's timeline: a TV app needs a few seconds
    # to start its player and fetch the first segments, a transcode start can take 10-20 s more;
    # past 30 s of buffering a person has given up.
    outcome: float = 30.0


@dataclass(frozen=True)
class LimitsConfig:
    """Bounds against a crowded or hostile LAN (defaults sized for a home: a handful of players)."""

    discovered_targets: int = 32
    targets_per_address: int = 4
    discovered_servers: int = 16
    gdm_replies_per_search: int = 32
    gdm_search_rate: float = 1.0
    gdm_search_burst: int = 5
    gdm_search_rate_total: float = 20.0
    connections_per_listener: int = 256
    connections_per_source: int = 32
    subscribers_per_source: int = 8


@dataclass(frozen=True)
class LabConfig:
    """The ``lab:`` section: the capture lab of ``companion profiles capture``."""

    # The port `companion profiles capture` listens on for the devices it measures; nothing
    # listens there otherwise (the daemon never opens it). 0: any free port.
    port: int = 32482


@dataclass(frozen=True)
class PlexTvConfig:
    """The ``plextv:`` section: the plex.tv account link and device registration."""

    enabled: bool = True
    url: str = "https://plex.tv"
    refresh_interval: float = 300.0


@dataclass(frozen=True)
class ServerConfig:
    """One entry of ``servers:``: a Plex server named by URL, with its token if given."""

    url: str
    token: str | None = field(default=None, repr=False)
    line: int | None = None

    @property
    def scheme(self) -> str:
        """``http`` or ``https``."""
        return urlsplit(self.url).scheme

    @property
    def host(self) -> str:
        """The host part of the URL: an IP literal or a plex.direct name."""
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        """The URL's port, else the scheme's Plex default (443 for https, 32400 for http)."""
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 32400)


@dataclass(frozen=True)
class TargetConfig:
    """One entry of ``targets:``: a player the owner names, with its profile and policy."""

    name: str
    address: str
    port: int
    kind: str = "companion"
    profile: str | None = None
    policy: Policy | None = None


@dataclass(frozen=True)
class Config:
    """The whole configuration, validated (built by :func:`parse_config` or the defaults)."""

    name: str = "companion-bridge"
    interfaces: tuple[str, ...] = ()
    face_suffix: str = " (bridge)"
    gdm: GdmConfig = field(default_factory=GdmConfig)
    mdns: MdnsConfig = field(default_factory=MdnsConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    timeouts: TimeoutsConfig = field(default_factory=TimeoutsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    lab: LabConfig = field(default_factory=LabConfig)
    plextv: PlexTvConfig = field(default_factory=PlexTvConfig)
    servers: tuple[ServerConfig, ...] = ()
    targets: tuple[TargetConfig, ...] = ()
    faces: str = "all"
    profiles_dirs: tuple[str, ...] = ()
    profiles: Mapping[str, str] = field(default_factory=dict)  # target name or id -> profile id
    state_dir: str = DEFAULT_STATE_DIR
    audit_retention_days: int = 365
    source: str = "<defaults>"

    @property
    def state_path(self) -> Path:
        """``state_dir`` with ``~`` expanded."""
        return Path(os.path.expanduser(self.state_dir))


# ---------------------------------------------------------------------------------------------
# Loading


class _Ctx:
    def __init__(self, path: str) -> None:
        self.path = path

    def error(self, node: Node | None, key: str, message: str) -> ConfigError:
        line = node.line if node is not None else None
        return ConfigError(message, path=self.path, line=line, key=key or None)


def _scalar(ctx: _Ctx, node: Node, key: str) -> Any:
    if isinstance(node.value, dict | list):
        raise ctx.error(node, key, f"expected a single value, got a {_kind(node)}")
    return node.value


def _each(error: ConfigError) -> list[ConfigError]:
    return list(error.errors) if isinstance(error, ConfigErrors) else [error]


def _raise_all(errors: list[ConfigError]) -> None:
    """Every problem of a file in one run: raise the one error, or all of them together."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ConfigErrors(errors)


def _kind(node: Node) -> str:
    if isinstance(node.value, dict):
        return "mapping"
    if isinstance(node.value, list):
        return "list"
    return "value"


def _bool(ctx: _Ctx, node: Node, key: str) -> bool:
    value = _scalar(ctx, node, key)
    if not isinstance(value, bool):
        raise ctx.error(node, key, f"expected true or false, got {value!r}")
    return value


def _int(lo: int, hi: int) -> Callable[[_Ctx, Node, str], int]:
    def parse(ctx: _Ctx, node: Node, key: str) -> int:
        value = _scalar(ctx, node, key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ctx.error(node, key, f"expected a whole number, got {value!r}")
        if not lo <= value <= hi:
            raise ctx.error(node, key, f"must be between {lo} and {hi}, got {value}")
        return value

    return parse


_port = _int(1, 65535)
_port_or_zero = _int(0, 65535)


def _number(lo: float, hi: float) -> Callable[[_Ctx, Node, str], float]:
    def parse(ctx: _Ctx, node: Node, key: str) -> float:
        value = _scalar(ctx, node, key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ctx.error(node, key, f"expected a number of seconds, got {value!r}")
        if not lo <= value <= hi:
            raise ctx.error(node, key, f"must be between {lo:g} and {hi:g}, got {value:g}")
        return float(value)

    return parse


def _rate(lo: float, hi: float) -> Callable[[_Ctx, Node, str], float]:
    def parse(ctx: _Ctx, node: Node, key: str) -> float:
        value = _scalar(ctx, node, key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ctx.error(node, key, f"expected a number per second, got {value!r}")
        if not lo <= value <= hi:
            raise ctx.error(node, key, f"must be between {lo:g} and {hi:g} per second, got {value:g}")
        return float(value)

    return parse


def _str(ctx: _Ctx, node: Node, key: str) -> str:
    value = _scalar(ctx, node, key)
    if not isinstance(value, str):
        raise ctx.error(node, key, f"expected text, got {value!r}")
    return value


def _nonempty_str(ctx: _Ctx, node: Node, key: str) -> str:
    value = _str(ctx, node, key)
    if not value.strip():
        raise ctx.error(node, key, "must not be empty")
    return value


def _optional_str(ctx: _Ctx, node: Node, key: str) -> str | None:
    value = _scalar(ctx, node, key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ctx.error(node, key, f"expected text, got {value!r}")
    return value


def _secret(ctx: _Ctx, node: Node, key: str) -> str | None:
    """A token: validated like text, but its value is never put into an error message."""
    if isinstance(node.value, dict | list):
        raise ctx.error(node, key, f"expected text, got a {_kind(node)}")
    value = _scalar(ctx, node, key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ctx.error(node, key, "expected text (quote it if it is all digits)")
    return value


def _choice(options: tuple[str, ...]) -> Callable[[_Ctx, Node, str], str]:
    def parse(ctx: _Ctx, node: Node, key: str) -> str:
        value = _scalar(ctx, node, key)
        if value not in options:
            hint = did_you_mean(value, options) if isinstance(value, str) else ""
            raise ctx.error(node, key, f"must be one of {', '.join(options)}; got {value!r}{hint}")
        return cast(str, value)

    return parse


def _ip(ctx: _Ctx, node: Node, key: str) -> str:
    value = _str(ctx, node, key)
    try:
        return str(ipaddress.ip_address(value))
    except ValueError as exc:
        raise ctx.error(node, key, f"expected an IP address, got {value!r}") from exc


def _multicast_or_ip(ctx: _Ctx, node: Node, key: str) -> str:
    value = _ip(ctx, node, key)
    if ipaddress.ip_address(value).version != 4:
        raise ctx.error(node, key, f"GDM is IPv4 only; got {value!r}")
    return value


def _resolver(ctx: _Ctx, node: Node, key: str) -> str | None:
    value = _optional_str(ctx, node, key)
    if value is None or value in ("", "system"):
        return None
    host, _, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
    try:
        ipaddress.ip_address(host or value)
        if port and not 1 <= int(port) <= 65535:
            raise ValueError(port)
    except ValueError as exc:
        raise ctx.error(node, key, f"expected 'system', an IP address or IP:port, got {value!r}") from exc
    return value


T = TypeVar("T")


def _list(item: Callable[[_Ctx, Node, str], T]) -> Callable[[_Ctx, Node, str], tuple[T, ...]]:
    def parse(ctx: _Ctx, node: Node, key: str) -> tuple[T, ...]:
        if node.value is None:
            return ()
        if not isinstance(node.value, list):
            raise ctx.error(node, key, f"expected a list, got a {_kind(node)}")
        out: list[T] = []
        errors: list[ConfigError] = []
        for i, child in enumerate(node.value):
            try:
                out.append(item(ctx, child, f"{key}[{i}]"))
            except ConfigError as exc:
                errors += _each(exc)
        _raise_all(errors)
        return tuple(out)

    return parse


def _map_of(value_parser: Callable[[_Ctx, Node, str], T]) -> Callable[[_Ctx, Node, str], dict[str, T]]:
    def parse(ctx: _Ctx, node: Node, key: str) -> dict[str, T]:
        if node.value is None:
            return {}
        if not isinstance(node.value, dict):
            raise ctx.error(node, key, f"expected a mapping, got a {_kind(node)}")
        out: dict[str, T] = {}
        errors: list[ConfigError] = []
        for name, vnode in node.value.items():
            try:
                out[name] = value_parser(ctx, vnode, f"{key}.{name}")
            except ConfigError as exc:
                errors += _each(exc)
        _raise_all(errors)
        return out

    return parse


def _section(cls: type[T], spec: Mapping[str, Callable[[_Ctx, Node, str], Any]],
             required: tuple[str, ...] = ()) -> Callable[[_Ctx, Node, str], T]:
    def parse(ctx: _Ctx, node: Node, key: str) -> T:
        if node.value is None:
            node = Node({}, node.line)
        if not isinstance(node.value, dict):
            raise ctx.error(node, key, f"expected a mapping, got a {_kind(node)}")
        values: dict[str, Any] = {}
        seen: set[str] = set()
        errors: list[ConfigError] = []  # every problem of the section, not just the first
        for name, vnode in node.value.items():
            try:
                dotted = f"{key}.{name}" if key else name
                if name not in spec:
                    known = ", ".join(sorted(spec))
                    raise ctx.error(vnode, dotted, f"unknown key{did_you_mean(name, spec)} (known keys here: {known})")
                seen.add(name)
                values[name] = spec[name](ctx, vnode, dotted)
            except ConfigError as exc:
                errors += _each(exc)
        for name in required:
            if name not in seen:
                errors.append(ctx.error(node, f"{key}.{name}" if key else name, "is required"))
        _raise_all(errors)
        if "line" in {f.name for f in fields(cast(Any, cls))}:
            values["line"] = node.line
        return cls(**values)

    return parse


def _server(ctx: _Ctx, node: Node, key: str) -> ServerConfig:
    server = _section(ServerConfig, {"url": _nonempty_str, "token": _secret}, ("url",))(ctx, node, key)
    try:
        parts = urlsplit(server.url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ctx.error(node, f"{key}.url", f"is not a valid URL: {server.url[:80]!r}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ctx.error(node, f"{key}.url", f"expected http(s)://host:port, got {server.url!r}")
    host = parts.hostname
    try:
        ipaddress.ip_address(host)
    except ValueError as exc:
        # The bridge never resolves names itself (no SSRF through DNS): the server is named by its
        # IP, or by its plex.direct name, which carries the IP.
        if not host.lower().endswith(".plex.direct"):
            raise ctx.error(node, f"{key}.url", f"use the server's IP address or its plex.direct name, "
                                                f"not {host!r}") from exc
    return server


def _plextv_url(ctx: _Ctx, node: Node, key: str) -> str:
    value = _nonempty_str(ctx, node, key)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ctx.error(node, key, f"is not a valid URL: {value[:80]!r}") from exc
    if parts.scheme != "https" or not parts.hostname or parts.username or parts.password or parts.query \
            or parts.fragment:
        # The account token travels to this URL: never in clear, never with extra parts that could hide a host.
        raise ctx.error(node, key, f"expected https://host[:port] (the default is https://plex.tv), got {value!r}")
    return value.rstrip("/")


def _target(ctx: _Ctx, node: Node, key: str) -> TargetConfig:
    return _section(TargetConfig, {
        "name": _nonempty_str, "kind": _choice(TARGET_KINDS), "address": _ip, "port": _port,
        "profile": _optional_str, "policy": _choice(POLICIES),
    }, ("name", "address", "port"))(ctx, node, key)


_SPEC: dict[str, Callable[[_Ctx, Node, str], Any]] = {
    "name": _nonempty_str,
    "interfaces": _list(_ip),
    "face_suffix": _str,
    "gdm": _section(GdmConfig, {
        "enabled": _bool, "group": _multicast_or_ip, "player_port": _port, "announce_port": _port,
        "server_port": _port, "hello_interval": _number(0.1, 3600), "search_interval": _number(0.1, 3600),
    }),
    "mdns": _section(MdnsConfig, {"enabled": _bool}),
    "proxy": _section(ProxyConfig, {"enabled": _bool}),
    "http": _section(HttpConfig, {
        "bind": _ip, "admin_port": _port_or_zero, "face_port_base": _port, "relay_port": _port_or_zero,
        "allowed_hosts": _list(_nonempty_str), "cors_origins": _list(_nonempty_str),
    }),
    "security": _section(SecurityConfig, {
        "policy": _choice(POLICIES), "relay": _bool, "dns_check": _bool, "resolver": _resolver,
        "relay_idle_timeout": _number(1, 7 * 86400), "target_policies": _map_of(_choice(POLICIES)),
        "extra_roots": _list(_nonempty_str),
    }),
    "timeouts": _section(TimeoutsConfig, {
        "command": _number(0.1, 300), "target_expiry": _number(1, 86400), "push": _number(0.1, 60),
        "outcome": _number(0.5, 600),
    }),
    "limits": _section(LimitsConfig, {
        "discovered_targets": _int(0, 4096), "targets_per_address": _int(1, 256),
        "discovered_servers": _int(0, 1024), "gdm_replies_per_search": _int(1, 1024),
        "gdm_search_rate": _rate(0.01, 1000), "gdm_search_burst": _int(1, 1000),
        "gdm_search_rate_total": _rate(0.01, 10000), "connections_per_listener": _int(4, 1_000_000),
        "connections_per_source": _int(1, 1_000_000), "subscribers_per_source": _int(1, 1024),
    }),
    "lab": _section(LabConfig, {"port": _port_or_zero}),
    "plextv": _section(PlexTvConfig, {
        "enabled": _bool, "url": _plextv_url, "refresh_interval": _number(1, 86400),
    }),
    "servers": _list(_server),
    "targets": _list(_target),
    "faces": _choice(FACES_MODES),
    "profiles_dirs": _list(_nonempty_str),
    "profiles": _map_of(_nonempty_str),
    "state_dir": _nonempty_str,
    "audit_retention_days": _int(1, 36500),
}


def parse_config(text: str, path: str = "<config>") -> Config:
    """Parse config text; raises ConfigError naming path, line and key."""
    ctx = _Ctx(path)
    try:
        root = read_yaml(text, scalar_keys=True)
    except YamlSourceError as exc:
        words = {"syntax": f"not valid YAML: {exc.problem}", "duplicate": "given twice"}
        raise ConfigError(words.get(exc.kind, exc.problem), path=path, line=exc.line, key=exc.key) from exc
    if root is None:
        return Config(source=path)
    config = _section(Config, _SPEC)(ctx, root, "")
    return replace(config, source=path)


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """Load the config file, or the embedded defaults when ``path`` is None."""
    if path is None:
        return Config()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError("no such file", path=str(p)) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", path=str(p)) from exc
    return parse_config(text, str(p))


def default_name() -> str:
    """The bridge's name when the config gives none: it names the host."""
    return f"companion-bridge on {socket.gethostname()}"


def config_from_args(args: argparse.Namespace) -> Config:
    """The config a command runs with: ``--config FILE``, else $COMPANION_CONFIG, else the embedded defaults."""
    path = args.config or os.environ.get("COMPANION_CONFIG") or None  # set but empty = not set
    if path and not args.config and not os.path.exists(path):
        # COMPANION_CONFIG from the service unit names the usual place; no file there = defaults.
        logging.getLogger(__name__).info("no config file at %s (COMPANION_CONFIG); running on the embedded "
                                         "defaults", path)
        path = None
    config = load_config(path)
    state_env = os.environ.get("STATE_DIRECTORY")  # systemd's StateDirectory=: the first one is ours
    if state_env and config.state_dir == DEFAULT_STATE_DIR:
        config = replace(config, state_dir=state_env.split(":")[0])
    return config
