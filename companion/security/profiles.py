"""Device capability profiles: the data shape (this part), loading, linting and matching.

A profile says what one kind of device can do for a secure fling: TLS versions, ciphers, key
limits, its root store, and whether its DNS goes through the LAN resolver. Format:
SECURITY.md section 4; contributor guide: profiles/README.md.

This module also owns the root stores named by profiles (profiles/roots/*.yaml plus the certifi
bundle as ``mozilla``), strict YAML loading with file:line errors, linting, and matching a
device's discovery fields to its profile. Pure data code: no sockets, no asyncio.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import importlib.resources
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Literal, TypeVar, cast

import certifi
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.utils import CryptographyDeprecationWarning

import companion
from companion.errors import ProfileError, ProfileErrors, did_you_mean

_T = TypeVar("_T")
_F = TypeVar("_F")

Confidence = Literal["documented", "measured", "observed", "inferred", "assumed"]
# Lower is weaker: a profile is as confident as its weakest claim. ``measured``: seen through the
# capture lab (`companion profiles capture`), with the time and the bridge version that saw it.
CONFIDENCE_ORDER: tuple[Confidence, ...] = ("assumed", "inferred", "observed", "measured", "documented")


@dataclass(frozen=True)
class TlsCaps:
    min_version: str = "1.2"  # "1.0" | "1.1" | "1.2" | "1.3"
    max_version: str = "1.3"
    ciphers: tuple[str, ...] | None = None  # OpenSSL names, TLS <= 1.2; None = any
    sni: bool = True
    rsa_min_bits: int = 2048
    ecdsa: bool = True
    requires_sha2: bool = False
    follows_aia: bool = False


@dataclass(frozen=True)
class RootsSpec:
    store: str = "mozilla"
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True)
class Evidence:
    claim: str
    confidence: Confidence
    source: str | None = None
    # The profile keys the claim backs (``tls.roots``, ``dns.resolver``, ``roots.isrg-root-yr``, ...):
    # how a failed fling finds the claims it contradicts.
    about: tuple[str, ...] = ()
    when: str | None = None  # ISO 8601; required for ``measured``
    bridge_version: str | None = None  # the companion-bridge that measured it; required for ``measured``


@dataclass(frozen=True)
class Profile:
    id: str
    name: str
    match: tuple[Mapping[str, str], ...]
    transport: Literal["companion", "chromecast"]
    media_https: bool
    media_http: bool
    tls: TlsCaps
    roots: RootsSpec
    dns_resolver: Literal["lan", "public"]
    evidence: tuple[Evidence, ...] = ()
    notes: str = ""
    path: str = ""  # file it was loaded from

    @property
    def confidence(self) -> Confidence:
        """The weakest confidence among the profile's claims (``assumed`` when it has none)."""
        if not self.evidence:
            return "assumed"
        return min((e.confidence for e in self.evidence), key=CONFIDENCE_ORDER.index)


# ---------------------------------------------------------------------------------------------
# Loading, linting and matching
# ---------------------------------------------------------------------------------------------

log = logging.getLogger(__name__)

TLS_VERSIONS: tuple[str, ...] = ("1.0", "1.1", "1.2", "1.3")
TRANSPORTS: tuple[str, ...] = ("companion", "chromecast")
RESOLVERS: tuple[str, ...] = ("lan", "public")
MATCH_FIELDS: tuple[str, ...] = (
    "source", "kind", "name", "product", "version", "platform", "platform_version", "device_class", "model",
)
DEFAULT_PROFILE_ID = "default"

# Profiles are a few kilobytes; anything much larger is a mistake or an attack (alias bombs).
MAX_FILE_BYTES = 256 * 1024
_MAX_NODES = 20_000
_MAX_DEPTH = 32

_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_CIPHER_RE = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
_FINGERPRINT_RE = re.compile(r"^[0-9a-f]{64}$")

_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_TAG + t for t in ("str", "int", "float", "bool", "null")}

_PROFILE_KEYS = ("id", "name", "match", "transport", "media", "tls", "dns", "evidence", "notes")
_EVIDENCE_KEYS = ("claim", "source", "confidence", "about", "when", "bridge_version")
# What an evidence entry may be ``about`` (besides ``roots.<root name>``).
ABOUT_FACETS: tuple[str, ...] = (
    "match", "transport", "media.https", "media.http", "tls.versions", "tls.ciphers", "tls.sni",
    "tls.rsa_min_bits", "tls.ecdsa", "tls.requires_sha2", "tls.follows_aia", "tls.roots", "dns.resolver",
)
_PROFILE_REQUIRED = ("id", "name", "match", "transport", "media", "dns")
_TLS_KEYS = ("versions", "ciphers", "sni", "rsa_min_bits", "ecdsa", "requires_sha2", "follows_aia", "roots")
_STORE_KEYS = ("name", "description", "source", "extends", "created_before", "trusted_certificates", "remove",
               "unavailable", "cross_signs")
_CROSS_KEYS = ("root", "by", "until", "url", "note")
_CERT_KEYS = ("name", "subject_name", "fingerprint", "file", "note")


@dataclass(frozen=True)
class RootStore:
    """A named set of trusted root certificates, with ``extends`` and ``remove`` already applied."""

    name: str
    certificates: tuple[x509.Certificate, ...]
    path: str


@dataclass(frozen=True)
class CrossSign:
    """A root that is also published signed by an older root (ISRG Root YR by ISRG Root X1).

    We hold the new root's self-signed certificate, which has the same name and key as the
    cross-signed one; so a path up to the new root checks cryptographically, and the last link
    (old root -> new root) is this published fact, valid until ``until``. A device reaches it
    when the server sends the cross-signed certificate, or when it fetches missing issuers
    (AIA "CA Issuers", ``url``).
    """

    root: str
    by: str
    root_certificate: x509.Certificate
    by_certificate: x509.Certificate
    until: datetime
    url: str = ""


def shipped_profiles_dir() -> Path:
    """The ``profiles/`` directory shipped with companion-bridge (beside the ``companion`` package).

    Falls back to a ``companion/profiles_data`` package-data copy should packaging ever install
    one; raises ProfileError when neither exists.
    """
    beside = Path(companion.__file__).resolve().parent.parent / "profiles"
    if beside.is_dir():
        return beside
    packaged = Path(str(importlib.resources.files("companion").joinpath("profiles_data")))
    if packaged.is_dir():
        return packaged
    raise ProfileError("the shipped profiles directory is missing", path=str(beside))


# --- YAML with line numbers ------------------------------------------------------------------

@dataclass(frozen=True)
class _Y:
    """One YAML value with the line it came from (for mapping entries: the key's line)."""

    value: object  # str | int | float | bool | None | dict[str, _Y] | list[_Y]
    line: int


def _kind(value: object) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"boolean {value!r}"
    if isinstance(value, int | float):
        return f"number {value!r}"
    return f"string {value!r}"


class _Composer:
    """Turns a composed YAML node tree into :class:`_Y` values, refusing anything exotic."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.nodes = 0
        self.constructor = yaml.constructor.SafeConstructor()

    def convert(self, node: yaml.Node, depth: int = 0, line: int | None = None) -> _Y:
        here = node.start_mark.line + 1 if line is None else line
        self.nodes += 1
        if self.nodes > _MAX_NODES or depth > _MAX_DEPTH:
            raise ProfileError("document is too large or too deeply nested (aliases?)",
                               path=self.path, line=here)
        if isinstance(node, yaml.MappingNode):
            if node.tag != _TAG + "map":
                raise ProfileError(_unsupported(node.tag), path=self.path, line=here)
            entries: dict[str, _Y] = {}
            for key_node, value_node in node.value:
                key_line = key_node.start_mark.line + 1
                key = self.convert(key_node, depth + 1).value
                if not isinstance(key, str):
                    raise ProfileError(f"keys must be strings, got {_kind(key)}", path=self.path,
                                       line=key_line)
                if key in entries:
                    raise ProfileError("duplicate key", path=self.path, line=key_line, key=key)
                entries[key] = self.convert(value_node, depth + 1, key_line)
            return _Y(entries, here)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _TAG + "seq":
                raise ProfileError(_unsupported(node.tag), path=self.path, line=here)
            return _Y([self.convert(item, depth + 1) for item in node.value], here)
        if not isinstance(node, yaml.ScalarNode) or node.tag not in _SCALAR_TAGS:
            raise ProfileError(_unsupported(node.tag), path=self.path, line=here)
        try:
            value: object = self.constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError, ArithmeticError) as exc:
            raise ProfileError(f"bad value: {exc}", path=self.path, line=here) from None
        return _Y(value, here)


def _unsupported(tag: str) -> str:
    short = tag.removeprefix(_TAG)
    if short == "timestamp":
        return "dates must be quoted strings"
    if short == "merge":
        return "merge keys (<<) are not supported; write the keys out"
    return f"unsupported YAML type {short!r} (use plain strings, numbers, booleans, lists and mappings)"


def _parse_yaml(text: str, path: str) -> _Y:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = (exc.problem or exc.context or "syntax error").splitlines()[0]
        raise ProfileError(f"malformed YAML: {problem}", path=path, line=line) from None
    except yaml.YAMLError as exc:
        raise ProfileError(f"malformed YAML: {exc}", path=path, line=1) from None
    except RecursionError:
        raise ProfileError("malformed YAML: nested too deeply", path=path, line=1) from None
    if node is None:
        raise ProfileError("the file is empty", path=path, line=1)
    return _Composer(path).convert(node)


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ProfileError(f"cannot read: {exc.strerror or exc}", path=str(path)) from None
    if len(data) > MAX_FILE_BYTES:
        raise ProfileError(f"file is larger than {MAX_FILE_BYTES} bytes", path=str(path), line=1)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ProfileError("not UTF-8 text", path=str(path), line=line) from None


class _Reader:
    """Typed accessors that raise ProfileError naming file, line and dotted key.

    A contributor wants every problem of a file in one run, so the parsers go on after a bad
    value: :meth:`attempt` records the error and hands back a fallback, :meth:`mapping` records
    unknown and missing keys instead of stopping, and ``problems`` holds them in file order.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.problems: list[ProfileError] = []

    def fail(self, line: int, key: str | None, message: str) -> ProfileError:
        return ProfileError(message, path=self.path, line=line, key=key)

    def note(self, error: ProfileError) -> None:
        self.problems.append(error)

    def attempt(self, parse: Callable[[], _T], fallback: _F) -> _T | _F:
        """``parse()``, or ``fallback`` with its ProfileError recorded."""
        try:
            return parse()
        except ProfileError as exc:
            self.note(exc)
            return fallback

    def mapping(self, y: _Y, key: str, allowed: Sequence[str], required: Sequence[str] = ()) -> dict[str, _Y]:
        """The entries with an allowed name; unknown and missing keys are recorded, not raised."""
        if not isinstance(y.value, dict):
            raise self.fail(y.line, key or None, f"expected a mapping, got {_kind(y.value)}")
        entries: dict[str, _Y] = {}
        for name, child in y.value.items():
            if name in allowed:
                entries[name] = child
            else:
                self.note(self.fail(child.line, _join(key, name),
                                    f"unknown key{did_you_mean(name, allowed)} (allowed: {', '.join(allowed)})"))
        for name in required:
            if name not in entries and name not in y.value:
                self.note(self.fail(y.line, _join(key, name), "required key is missing"))
        return entries

    def raise_problems(self) -> None:
        """Raise what was recorded: the one error, or a :class:`ProfileErrors` of them all."""
        raise_all(self.problems)

    def items(self, y: _Y, key: str) -> list[_Y]:
        if not isinstance(y.value, list):
            raise self.fail(y.line, key, f"expected a list, got {_kind(y.value)}")
        return list(y.value)

    def string(self, y: _Y, key: str, *, empty: bool = False) -> str:
        if not isinstance(y.value, str):
            raise self.fail(y.line, key, f"expected a string, got {_kind(y.value)}")
        if not empty and not y.value.strip():
            raise self.fail(y.line, key, "must not be empty")
        return y.value

    def boolean(self, y: _Y, key: str) -> bool:
        if not isinstance(y.value, bool):
            raise self.fail(y.line, key, f"expected true or false, got {_kind(y.value)}")
        return y.value

    def integer(self, y: _Y, key: str, lo: int, hi: int) -> int:
        if isinstance(y.value, bool) or not isinstance(y.value, int):
            raise self.fail(y.line, key, f"expected a whole number, got {_kind(y.value)}")
        if not lo <= y.value <= hi:
            raise self.fail(y.line, key, f"must be between {lo} and {hi}, got {y.value}")
        return y.value

    def choice(self, y: _Y, key: str, choices: Sequence[str]) -> str:
        if isinstance(y.value, int | float) and not isinstance(y.value, bool):
            # YAML reads an unquoted 1.2 as a number; the loader wants the text "1.2".
            example = str(y.value) if str(y.value) in choices else choices[-1]
            raise self.fail(y.line, key, f"expected one of {', '.join(choices)} (quote it: \"{example}\"),"
                                         f" got {_kind(y.value)}")
        text = self.string(y, key)
        if text not in choices:
            # A version number one off is not a misspelling: no suggestion for those.
            hint = "" if choices is TLS_VERSIONS else did_you_mean(text, choices)
            raise self.fail(y.line, key, f"expected one of {', '.join(choices)}, got {text!r}{hint}")
        return text

    def names(self, y: _Y, key: str) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        for i, item in enumerate(self.items(y, key)):
            out.append((self.string(item, f"{key}[{i}]"), item.line))
        return out


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def raise_all(errors: Sequence[ProfileError]) -> None:
    """Raise nothing, the one error, or a :class:`ProfileErrors` of several."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ProfileErrors(errors)


def split_errors(error: ProfileError) -> list[ProfileError]:
    """The single problems inside ``error`` (one, or each of a :class:`ProfileErrors`)."""
    return list(error.errors) if isinstance(error, ProfileErrors) else [error]


# --- Profiles --------------------------------------------------------------------------------

@dataclass(frozen=True)
class _RootRefs:
    """Where a profile's root references sit in its file, for errors found after parsing."""

    store_line: int
    add: tuple[tuple[str, int], ...]
    remove: tuple[tuple[str, int], ...]
    id_line: int
    store_given: bool = True
    about: tuple[tuple[str, int, str], ...] = ()  # (root name, line, key) of roots.<name> facets
    profile_id: str = ""
    store: str = "mozilla"


def parse_profile(text: str, path: str = "<string>") -> Profile:
    """Parse and check one profile's text (format only; root names are checked by the loader).

    Raises ProfileError (``file:line: key: message``) for anything wrong, never another error;
    several problems come as one :class:`ProfileErrors` that lists each.
    """
    profile, _, problems = _parse_profile(text, path)
    raise_all(problems)
    assert profile is not None
    return profile


def _parse_profile(text: str, path: str) -> tuple[Profile | None, _RootRefs | None, list[ProfileError]]:
    """The profile (None when anything is wrong), where its root references sit, every problem."""
    r = _Reader(path)
    try:
        top = r.mapping(_parse_yaml(text, path), "", _PROFILE_KEYS, _PROFILE_REQUIRED)
    except ProfileError as exc:
        return None, None, [exc]
    def text_of(key: str) -> str:
        return r.attempt(lambda: r.string(top[key], key), "") if key in top else ""

    profile_id = text_of("id")
    id_line = top["id"].line if "id" in top else 1
    if profile_id and not _ID_RE.match(profile_id):
        r.note(r.fail(id_line, "id", "use lowercase letters, digits and dashes (at most 64)"))
    name = text_of("name")

    clauses: list[Mapping[str, str]] = []
    if "match" in top:
        for i, clause_y in enumerate(r.attempt(lambda: r.items(top["match"], "match"), [])):
            where = f"match[{i}]"
            clause = r.attempt(functools.partial(r.mapping, clause_y, where, MATCH_FIELDS), {})
            clauses.append(MappingProxyType({
                k: r.attempt(functools.partial(r.string, v, f"{where}.{k}", empty=True), "")
                for k, v in clause.items()}))

    transport = r.attempt(lambda: r.choice(top["transport"], "transport", TRANSPORTS), "companion") \
        if "transport" in top else "companion"
    media = r.attempt(lambda: r.mapping(top["media"], "media", ("https", "http"), ("https", "http")),
                      {}) if "media" in top else {}
    media_https = r.attempt(lambda: r.boolean(media["https"], "media.https"), False) if "https" in media else False
    media_http = r.attempt(lambda: r.boolean(media["http"], "media.http"), False) if "http" in media else False
    dns = r.attempt(lambda: r.mapping(top["dns"], "dns", ("resolver",), ("resolver",)), {}) if "dns" in top else {}
    resolver = r.attempt(lambda: r.choice(dns["resolver"], "dns.resolver", RESOLVERS), "lan") \
        if "resolver" in dns else "lan"

    tls, roots, refs = _parse_tls(r, top.get("tls"), id_line)

    evidence: list[Evidence] = []
    about_refs: list[tuple[str, int, str]] = []
    if "evidence" in top:
        for i, ev_y in enumerate(r.attempt(lambda: r.items(top["evidence"], "evidence"), [])):
            parsed = r.attempt(functools.partial(_parse_evidence, r, ev_y, f"evidence[{i}]", about_refs), None)
            if parsed is not None:
                evidence.append(parsed)
    notes = r.attempt(lambda: r.string(top["notes"], "notes", empty=True), "") if "notes" in top else ""
    refs = dataclasses.replace(refs, about=tuple(about_refs), profile_id=profile_id)
    if r.problems:
        return None, refs, sorted(r.problems, key=lambda e: e.line or 0)

    profile = Profile(
        id=profile_id, name=name, match=tuple(clauses),
        transport=cast(Literal["companion", "chromecast"], transport),
        media_https=media_https, media_http=media_http,
        tls=tls, roots=roots, dns_resolver=cast(Literal["lan", "public"], resolver),
        evidence=tuple(evidence), notes=notes.strip(), path=path,
    )
    return profile, refs, []


def _parse_evidence(r: _Reader, ev_y: _Y, where: str, about_refs: list[tuple[str, int, str]]) -> Evidence | None:
    """One evidence entry, or None when it has a problem (each recorded on ``r``)."""
    before = len(r.problems)
    ev = r.mapping(ev_y, where, _EVIDENCE_KEYS, ("claim", "confidence"))
    confidence = r.attempt(lambda: r.choice(ev["confidence"], f"{where}.confidence", CONFIDENCE_ORDER),
                           "assumed") if "confidence" in ev else "assumed"
    source = r.attempt(lambda: r.string(ev["source"], f"{where}.source"), None) if "source" in ev else None
    if source is None and "source" not in ev and confidence != "assumed":
        r.note(r.fail(ev_y.line, f"{where}.source",
                      f"confidence {confidence!r} needs a source; without one say 'assumed'"))
    claim = r.attempt(lambda: r.string(ev["claim"], f"{where}.claim"), "") if "claim" in ev else ""
    about: list[str] = []
    if "about" in ev:
        for j, (facet, line) in enumerate(r.attempt(lambda: r.names(ev["about"], f"{where}.about"), [])):
            key = f"{where}.about[{j}]"
            if facet.startswith("roots."):
                about_refs.append((facet.removeprefix("roots."), line, key))  # checked by the loader
            elif facet not in ABOUT_FACETS:
                r.note(r.fail(line, key, f"unknown profile key {facet!r}{did_you_mean(facet, ABOUT_FACETS)} "
                                         f"(use one of {', '.join(ABOUT_FACETS)}, or roots.<root name>)"))
            about.append(facet)
    when, bridge_version = _measured_fields(r, ev, ev_y, where, confidence)
    if len(r.problems) > before:
        return None
    return Evidence(claim=claim, confidence=cast(Confidence, confidence), source=source, about=tuple(about),
                    when=when, bridge_version=bridge_version)


def _measured_fields(r: _Reader, ev: dict[str, _Y], ev_y: _Y, where: str,
                     confidence: str) -> tuple[str | None, str | None]:
    """``when`` (an ISO 8601 time) and ``bridge_version``; a ``measured`` claim needs both. Each
    problem is recorded on ``r``."""
    when = r.attempt(lambda: r.string(ev["when"], f"{where}.when"), None) if "when" in ev else None
    if when is not None:
        try:
            datetime.fromisoformat(when)
        except ValueError:
            r.note(r.fail(ev["when"].line, f"{where}.when",
                          f"expected an ISO 8601 time such as \"2026-12-03T09:30:00+00:00\", got {when!r}"))
    version = (r.attempt(lambda: r.string(ev["bridge_version"], f"{where}.bridge_version"), None)
               if "bridge_version" in ev else None)
    if confidence == "measured":
        for key in ("when", "bridge_version"):
            if key not in ev:
                r.note(r.fail(ev_y.line, f"{where}.{key}", "a 'measured' claim says when it was measured and "
                                                           "with which bridge version (when, bridge_version)"))
    return when, version


def _parse_tls(r: _Reader, tls_y: _Y | None, id_line: int) -> tuple[TlsCaps, RootsSpec, _RootRefs]:
    if tls_y is None:
        return TlsCaps(), RootsSpec(), _RootRefs(id_line, (), (), id_line)
    tls = r.attempt(lambda: r.mapping(tls_y, "tls", _TLS_KEYS), {})
    defaults = TlsCaps()
    lo, hi = defaults.min_version, defaults.max_version
    if "versions" in tls:
        versions = r.attempt(lambda: r.mapping(tls["versions"], "tls.versions", ("min", "max"), ("min", "max")), {})
        lo_ok = r.attempt(lambda: r.choice(versions["min"], "tls.versions.min", TLS_VERSIONS), None) \
            if "min" in versions else None
        hi_ok = r.attempt(lambda: r.choice(versions["max"], "tls.versions.max", TLS_VERSIONS), None) \
            if "max" in versions else None
        if lo_ok is not None and hi_ok is not None and TLS_VERSIONS.index(lo_ok) > TLS_VERSIONS.index(hi_ok):
            r.note(r.fail(versions["min"].line, "tls.versions", f"min {lo_ok} is above max {hi_ok}"))
        lo, hi = lo_ok or lo, hi_ok or hi
    ciphers: tuple[str, ...] | None = None
    if "ciphers" in tls:
        names = r.attempt(lambda: r.names(tls["ciphers"], "tls.ciphers"), [])
        for i, (cipher, line) in enumerate(names):
            if not _CIPHER_RE.match(cipher):
                r.note(r.fail(line, f"tls.ciphers[{i}]", f"not an OpenSSL cipher name: {cipher!r}"))
        if not names and isinstance(tls["ciphers"].value, list):
            r.note(r.fail(tls["ciphers"].line, "tls.ciphers", "empty list; omit the key to mean any cipher"))
        ciphers = tuple(c for c, _ in names) or None

    def flag(key: str, default: bool) -> bool:
        return r.attempt(lambda: r.boolean(tls[key], f"tls.{key}"), default) if key in tls else default

    caps = TlsCaps(
        min_version=lo, max_version=hi, ciphers=ciphers,
        sni=flag("sni", defaults.sni),
        rsa_min_bits=(r.attempt(lambda: r.integer(tls["rsa_min_bits"], "tls.rsa_min_bits", 512, 16384),
                                defaults.rsa_min_bits) if "rsa_min_bits" in tls else defaults.rsa_min_bits),
        ecdsa=flag("ecdsa", defaults.ecdsa), requires_sha2=flag("requires_sha2", defaults.requires_sha2),
        follows_aia=flag("follows_aia", defaults.follows_aia),
    )
    if "roots" not in tls:
        return caps, RootsSpec(), _RootRefs(tls_y.line, (), (), id_line)
    roots = r.attempt(lambda: r.mapping(tls["roots"], "tls.roots", ("store", "add", "remove"), ("store",)), {})
    store = r.attempt(lambda: r.string(roots["store"], "tls.roots.store"), "") if "store" in roots else ""
    add = tuple(r.attempt(lambda: r.names(roots["add"], "tls.roots.add"), [])) if "add" in roots else ()
    remove = tuple(r.attempt(lambda: r.names(roots["remove"], "tls.roots.remove"), [])) if "remove" in roots else ()
    spec = RootsSpec(store=store or "mozilla", add=tuple(n for n, _ in add), remove=tuple(n for n, _ in remove))
    store_line = roots["store"].line if "store" in roots else tls["roots"].line
    return caps, spec, _RootRefs(store_line, add, remove, id_line, store_given=bool(store), store=spec.store)


# --- Root stores -----------------------------------------------------------------------------

@dataclass(frozen=True)
class _Root:
    name: str
    certificate: x509.Certificate
    fingerprint: str
    origin: str


@dataclass(frozen=True)
class _StoreDef:
    name: str
    path: str
    extends: tuple[str, int] | None
    certifi: bool
    own: tuple[str, ...]
    remove: tuple[tuple[str, int], ...]
    created_before: datetime | None


def _fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def _certifi_roots(origin: str) -> list[_Root]:
    """The certifi bundle's roots, named by their label (``"ISRG Root X1"`` -> ``isrg-root-x1``)."""
    text = Path(certifi.where()).read_text(encoding="utf-8")
    roots: list[_Root] = []
    label = ""
    block: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("# Label:"):
            label = line.removeprefix("# Label:").strip().strip('"')
        elif line.startswith("-----BEGIN CERTIFICATE-----"):
            block = [line]
        elif block is not None:
            block.append(line)
            if line.startswith("-----END CERTIFICATE-----"):
                pem = "\n".join(block).encode("ascii")
                block = None
                # The bundle is third-party data; one root has a non-positive serial, which
                # cryptography only warns about (and may refuse later): keep it while we can.
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", CryptographyDeprecationWarning)
                    try:
                        cert = x509.load_pem_x509_certificate(pem)
                    except ValueError:
                        continue
                fingerprint = _fingerprint(cert)
                roots.append(_Root(_slug(label) or f"sha256-{fingerprint[:16]}", cert, fingerprint, origin))
                label = ""
    return roots


class _StoreLoader:
    """Parses root-store YAML files, loads their PEMs and resolves ``extends``/``remove``."""

    def __init__(self, errors: list[ProfileError]) -> None:
        self.errors = errors
        self.catalogue: dict[str, _Root] = {}
        self.unavailable: dict[str, str] = {}  # name -> store file that lists it
        self.defs: dict[str, _StoreDef] = {}
        self.stores: dict[str, RootStore] = {}
        self.failed: set[str] = set()  # file stems of store files that did not load
        self._certifi_loaded = False
        self._certifi_roots: tuple[_Root, ...] = ()
        self._cross_defs: list[tuple[str, str, datetime, str, str, int, str]] = []
        self.cross_signs: list[CrossSign] = []

    def load(self, files: Sequence[Path]) -> None:
        for file in files:
            try:
                self._load_file(file)
            except ProfileError as exc:
                self.errors.extend(split_errors(exc))
                self.failed.add(file.stem)
        self._resolve_cross_signs()
        for name in list(self.defs):
            if name in self.failed:
                continue
            try:
                self._resolve(name, ())
            except ProfileError as exc:
                self.errors.append(exc)
                self.failed.add(name)

    def _load_file(self, file: Path) -> None:
        path = str(file)
        r = _Reader(path)
        top = r.mapping(_parse_yaml(_read_text(file), path), "", _STORE_KEYS, ("name",))
        if "name" not in top:
            r.raise_problems()
        name = r.string(top["name"], "name")
        if name != file.stem:
            r.note(r.fail(top["name"].line, "name", f"must equal the file name {file.stem!r}"))
        if name in self.defs:
            r.note(r.fail(top["name"].line, "name", f"store already defined in {self.defs[name].path}"))
        if "description" in top:
            r.attempt(lambda: r.string(top["description"], "description", empty=True), "")
        certifi_source = False
        if "source" in top:
            certifi_source = r.attempt(lambda: r.choice(top["source"], "source", ("certifi",)), "") == "certifi"
        extends = None
        if "extends" in top:
            parent = r.attempt(lambda: r.string(top["extends"], "extends"), "")
            extends = (parent, top["extends"].line) if parent else None
        created_before = None
        if "created_before" in top:
            day = r.attempt(lambda: r.string(top["created_before"], "created_before"), "")
            try:
                created_before = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC)
            except ValueError:
                r.note(r.fail(top["created_before"].line, "created_before",
                              f"expected a quoted date like \"2019-01-01\", got {day!r}"))
        own: list[_Root] = []
        if "trusted_certificates" in top:
            for i, item in enumerate(r.attempt(lambda: r.items(top["trusted_certificates"], "trusted_certificates"),
                                               [])):
                root = r.attempt(functools.partial(self._load_root, r, file, item, f"trusted_certificates[{i}]"),
                                 None)
                if root is not None:
                    own.append(root)
        remove = tuple(r.attempt(lambda: r.names(top["remove"], "remove"), [])) if "remove" in top else ()
        unavailable: list[str] = []
        if "unavailable" in top:
            for i, item in enumerate(r.attempt(lambda: r.items(top["unavailable"], "unavailable"), [])):
                gone = r.attempt(functools.partial(self._unavailable_entry, r, item, f"unavailable[{i}]"), "")
                if gone:
                    unavailable.append(gone)
        crosses = []
        if "cross_signs" in top:
            for i, item in enumerate(r.attempt(lambda: r.items(top["cross_signs"], "cross_signs"), [])):
                cross = r.attempt(functools.partial(self._cross_entry, r, item, f"cross_signs[{i}]"), None)
                if cross is not None:
                    crosses.append(cross)
        for root in own:
            known = self.catalogue.get(root.name)
            if known is not None and known.fingerprint != root.fingerprint:
                r.note(ProfileError(f"root {root.name!r} is already defined differently in {known.origin}",
                                    path=path, line=top["trusted_certificates"].line, key="trusted_certificates"))
        r.raise_problems()
        if certifi_source:
            self._load_certifi(path, top["source"].line)
        for root in own:
            self.catalogue.setdefault(root.name, root)
        for gone in unavailable:
            self.unavailable.setdefault(gone, path)
        self._cross_defs += crosses
        self.defs[name] = _StoreDef(name, path, extends, certifi_source, tuple(x.name for x in own), remove,
                                    created_before)

    def _unavailable_entry(self, r: _Reader, item: _Y, where: str) -> str:
        entry = r.mapping(item, where, ("name", "subject_name", "note"), ("name",))
        for k in ("subject_name", "note"):
            if k in entry:
                r.string(entry[k], f"{where}.{k}")
        return r.string(entry["name"], f"{where}.name") if "name" in entry else ""

    def _cross_entry(self, r: _Reader, item: _Y, where: str) -> tuple[str, str, datetime, str, str, int, str] | None:
        entry = r.mapping(item, where, _CROSS_KEYS, ("root", "by", "until"))
        if not all(k in entry for k in ("root", "by", "until")):
            return None  # the missing key is recorded already
        root = r.string(entry["root"], f"{where}.root")
        by = r.string(entry["by"], f"{where}.by")
        day = r.string(entry["until"], f"{where}.until")
        try:
            until = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC)
        except ValueError:
            raise r.fail(entry["until"].line, f"{where}.until",
                         f"expected a quoted date like \"2032-09-02\", got {day!r}") from None
        url = r.string(entry["url"], f"{where}.url") if "url" in entry else ""
        if "note" in entry:
            r.string(entry["note"], f"{where}.note")
        return root, by, until, url, r.path, item.line, where

    def _resolve_cross_signs(self) -> None:
        known = list(self.catalogue)
        for root, by, until, url, path, line, where in self._cross_defs:
            missing = [n for n in (root, by) if n not in self.catalogue]
            if missing:
                self.errors.extend(ProfileError(f"root {n!r} has no certificate here{did_you_mean(n, known)}",
                                                path=path, line=line, key=where) for n in missing)
                continue
            self.cross_signs.append(CrossSign(root, by, self.catalogue[root].certificate,
                                              self.catalogue[by].certificate, until, url))

    def _load_certifi(self, path: str, line: int) -> None:
        if self._certifi_loaded:
            return
        try:
            roots = _certifi_roots(f"certifi {certifi.where()}")
        except (OSError, ValueError) as exc:
            raise ProfileError(f"cannot read the certifi bundle: {exc}", path=path, line=line,
                               key="source") from None
        for root in roots:
            self.catalogue.setdefault(root.name, root)
        self._certifi_roots = tuple(roots)
        self._certifi_loaded = True

    def _load_root(self, r: _Reader, file: Path, item: _Y, where: str) -> _Root | None:
        entry = r.mapping(item, where, _CERT_KEYS, ("name", "fingerprint"))
        if "name" not in entry or "fingerprint" not in entry:
            return None  # the missing key is recorded already
        name = r.string(entry["name"], f"{where}.name")
        if not _ID_RE.match(name):
            raise r.fail(entry["name"].line, f"{where}.name", "use lowercase letters, digits and dashes")
        expected = r.string(entry["fingerprint"], f"{where}.fingerprint").replace(":", "").lower()
        if not _FINGERPRINT_RE.match(expected):
            raise r.fail(entry["fingerprint"].line, f"{where}.fingerprint", "expected 64 hex digits (SHA-256)")
        rel = r.string(entry["file"], f"{where}.file") if "file" in entry else f"pem/{name}.pem"
        file_line = entry["file"].line if "file" in entry else item.line
        pem_path = (file.parent / rel)
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise r.fail(file_line, f"{where}.file", "must be a relative path inside the roots directory")
        try:
            data = pem_path.read_bytes()
        except OSError:
            raise r.fail(file_line, f"{where}.file", f"root file {rel} is missing or unreadable") from None
        try:
            certs = x509.load_pem_x509_certificates(data)
        except ValueError:
            raise r.fail(file_line, f"{where}.file", f"{rel} is not a PEM certificate") from None
        if len(certs) != 1:
            raise r.fail(file_line, f"{where}.file", f"{rel} holds {len(certs)} certificates; want exactly one")
        cert = certs[0]
        actual = _fingerprint(cert)
        if actual != expected:
            raise r.fail(entry["fingerprint"].line, f"{where}.fingerprint",
                         f"does not match {rel} (its SHA-256 is {actual})")
        if "subject_name" in entry:
            subject = r.string(entry["subject_name"], f"{where}.subject_name")
            if subject != cert.subject.rfc4514_string():
                raise r.fail(entry["subject_name"].line, f"{where}.subject_name",
                             f"{rel} has subject {cert.subject.rfc4514_string()!r}")
        if "note" in entry:
            r.string(entry["note"], f"{where}.note")
        return _Root(name, cert, actual, str(pem_path))

    def known(self, name: str) -> bool:
        return name in self.catalogue or name in self.unavailable

    def _resolve(self, name: str, chain: tuple[str, ...]) -> RootStore:
        if name in self.stores:
            return self.stores[name]
        d = self.defs[name]
        certs: dict[str, x509.Certificate] = {}
        if d.extends is not None:
            parent, line = d.extends
            if parent in chain or parent == name:
                raise ProfileError(f"store extends itself ({' -> '.join((*chain, name, parent))})",
                                   path=d.path, line=line, key="extends")
            if parent not in self.defs or parent in self.failed:
                why = "failed to load" if parent in self.failed else "is unknown"
                raise ProfileError(f"root store {parent!r} {why}", path=d.path, line=line, key="extends")
            try:
                base = self._resolve(parent, (*chain, name))
            except ProfileError as exc:
                # The parent's own error is reported once, for the parent's file; this store then
                # fails with a pointer to it.
                if parent not in self.failed:
                    self.errors.append(exc)
                    self.failed.add(parent)
                raise ProfileError(f"root store {parent!r} failed to load", path=d.path, line=line,
                                   key="extends") from None
            certs.update((_fingerprint(c), c) for c in base.certificates)
        if d.certifi:
            for root in self._certifi_roots:
                certs[root.fingerprint] = root.certificate
        if d.created_before is not None:
            # An older device cannot trust a root that did not exist yet when its store was frozen.
            cutoff = d.created_before
            certs = {fp: c for fp, c in certs.items() if c.not_valid_before_utc < cutoff}
        for root_name in d.own:
            root = self.catalogue[root_name]
            certs[root.fingerprint] = root.certificate
        for i, (gone, line) in enumerate(d.remove):
            if not self.known(gone):
                raise ProfileError(f"unknown root {gone!r}", path=d.path, line=line, key=f"remove[{i}]")
            if gone in self.catalogue:
                certs.pop(self.catalogue[gone].fingerprint, None)
        store = RootStore(name=name, certificates=tuple(certs.values()), path=d.path)
        self.stores[name] = store
        return store


# --- The set ---------------------------------------------------------------------------------

class ProfileSet:
    """The loaded profiles (in match order, ``default`` last), the load errors, and the root stores."""

    def __init__(self, profiles: Mapping[str, Profile], errors: Sequence[ProfileError],
                 stores: Mapping[str, RootStore], catalogue: Mapping[str, x509.Certificate],
                 cross_signs: Sequence[CrossSign] = ()) -> None:
        self.cross_signs: tuple[CrossSign, ...] = tuple(cross_signs)
        self._profiles: Mapping[str, Profile] = MappingProxyType(dict(profiles))
        self._errors = tuple(errors)
        self._stores: Mapping[str, RootStore] = MappingProxyType(dict(stores))
        self._catalogue: Mapping[str, x509.Certificate] = MappingProxyType(dict(catalogue))
        self._roots_cache: dict[tuple[str, RootsSpec], tuple[x509.Certificate, ...]] = {}

    @property
    def profiles(self) -> Mapping[str, Profile]:
        return self._profiles

    @property
    def errors(self) -> tuple[ProfileError, ...]:
        return self._errors

    @property
    def stores(self) -> Mapping[str, RootStore]:
        return self._stores

    def get(self, profile_id: str) -> Profile:
        try:
            return self._profiles[profile_id]
        except KeyError:
            known = ", ".join(self._profiles) or "none"
            raise ProfileError(f"unknown profile {profile_id!r} (loaded: {known})") from None

    def match(self, fields: Mapping[str, str], override: str | None = None) -> Profile:
        """The profile for a device: the override when it names a loaded profile, else the first
        profile with a clause whose every key glob-matches the field (case-insensitive)."""
        if override:
            if override in self._profiles:
                return self._profiles[override]
            log.warning("profile override %r is not a loaded profile; matching by fields instead", override)
        for profile in self._profiles.values():
            if any(_clause_matches(clause, fields) for clause in profile.match):
                return profile
        raise ProfileError(f"no profile matches {dict(fields)!r} and no {DEFAULT_PROFILE_ID!r} profile is loaded")

    def store(self, name: str) -> RootStore:
        try:
            return self._stores[name]
        except KeyError:
            raise ProfileError(f"unknown root store {name!r} (loaded: {', '.join(self._stores) or 'none'})") \
                from None

    def root_names(self, subject: str, roots: Sequence[x509.Certificate]) -> tuple[str, ...]:
        """Catalogue names of the roots among ``roots`` whose RFC 4514 subject is ``subject``."""
        return tuple(name for name, cert in self._catalogue.items()
                     if cert in roots and cert.subject.rfc4514_string() == subject)

    def roots_for(self, profile: Profile) -> tuple[x509.Certificate, ...]:
        """The roots this device trusts: its store, plus ``add``, minus ``remove``.

        Computed once per profile (a ProfileSet never changes), and the same tuple is handed out
        each time, so callers may key caches on it.
        """
        key = (profile.id, profile.roots)
        cached = self._roots_cache.get(key)
        if cached is None:
            cached = self._roots_cache[key] = self._compute_roots(profile)
        return cached

    def _compute_roots(self, profile: Profile) -> tuple[x509.Certificate, ...]:
        certs = {_fingerprint(c): c for c in self.store(profile.roots.store).certificates}
        for name in profile.roots.add:
            cert = self._root(name, profile)
            certs.setdefault(_fingerprint(cert), cert)
        for name in profile.roots.remove:
            gone = self._catalogue.get(name)
            if gone is not None:
                certs.pop(_fingerprint(gone), None)
        return tuple(certs.values())

    def _root(self, name: str, profile: Profile) -> x509.Certificate:
        cert = self._catalogue.get(name)
        if cert is None:
            raise ProfileError(f"unknown root {name!r}", path=profile.path or None, key="tls.roots.add")
        return cert


def _clause_matches(clause: Mapping[str, str], fields: Mapping[str, str]) -> bool:
    return all(fnmatch.fnmatchcase(fields.get(key, "").casefold(), pattern.casefold())
               for key, pattern in clause.items())


def _scan_dir(directory: Path, errors: list[ProfileError]) -> tuple[list[Path], list[Path]]:
    if not directory.is_dir():
        errors.append(ProfileError("not a directory", path=str(directory)))
        return [], []
    devices, roots = directory / "devices", directory / "roots"
    if devices.is_dir() or roots.is_dir():
        return sorted(devices.glob("*.yaml")), sorted(roots.glob("*.yaml"))
    return sorted(directory.glob("*.yaml")), []


def _build(device_files: Sequence[Path], store_files: Sequence[Path], errors: list[ProfileError]) -> ProfileSet:
    stores = _StoreLoader(errors)
    stores.load(_unique(store_files))
    loaded: dict[str, Profile] = {}
    for file in _unique(device_files):
        try:
            text = _read_text(file)
        except ProfileError as exc:
            errors.append(exc)
            continue
        profile, refs, problems = _parse_profile(text, str(file))
        if refs is not None:
            problems = [*problems, *_check_refs(refs, file, stores, loaded)]
        if problems:
            # Every problem of the file, in file order, each with its own line.
            errors.extend(sorted(problems, key=lambda e: e.line or 0))
            continue
        assert profile is not None
        loaded[profile.id] = profile
    ordered = {k: v for k, v in loaded.items() if k != DEFAULT_PROFILE_ID}
    if DEFAULT_PROFILE_ID in loaded:
        ordered[DEFAULT_PROFILE_ID] = loaded[DEFAULT_PROFILE_ID]
    catalogue = {name: root.certificate for name, root in stores.catalogue.items()}
    return ProfileSet(ordered, errors, stores.stores, catalogue, stores.cross_signs)


def _check_refs(refs: _RootRefs, file: Path, stores: _StoreLoader,
                loaded: Mapping[str, Profile]) -> list[ProfileError]:
    path = str(file)
    problems: list[ProfileError] = []
    profile_id = refs.profile_id
    if profile_id and profile_id != file.stem:
        problems.append(ProfileError(f"{profile_id!r} must equal the file name {file.stem!r}", path=path,
                                     line=refs.id_line, key="id"))
    if profile_id in loaded:
        problems.append(ProfileError(f"duplicate id {profile_id!r}, already loaded from {loaded[profile_id].path}",
                                     path=path, line=refs.id_line, key="id"))
    if refs.store_given and refs.store not in stores.stores:
        if refs.store in stores.failed:
            why = "failed to load (see its error)"
        else:
            why = "is unknown" + did_you_mean(refs.store, [*stores.stores, *stores.failed])
        problems.append(ProfileError(f"root store {refs.store!r} {why} (stores: {', '.join(stores.stores)})",
                                     path=path, line=refs.store_line, key="tls.roots.store"))
    known = [*stores.catalogue, *stores.unavailable]
    for i, (name, line) in enumerate(refs.add):
        if name not in stores.catalogue:
            why = (f"has no certificate here (listed as unavailable in {stores.unavailable[name]})"
                   if name in stores.unavailable else "is unknown" + did_you_mean(name, known))
            problems.append(ProfileError(f"root {name!r} {why}", path=path, line=line, key=f"tls.roots.add[{i}]"))
    for i, (name, line) in enumerate(refs.remove):
        if not stores.known(name):
            problems.append(ProfileError(f"root {name!r} is unknown{did_you_mean(name, known)}", path=path,
                                         line=line, key=f"tls.roots.remove[{i}]"))
    for name, line, key in refs.about:
        if not stores.known(name):
            problems.append(ProfileError(f"root {name!r} is unknown{did_you_mean(name, known)}", path=path,
                                         line=line, key=key))
    return problems


def _unique(files: Iterable[Path]) -> list[Path]:
    seen: set[Path] = set()
    out: list[Path] = []
    for file in files:
        key = file.resolve()
        if key not in seen:
            seen.add(key)
            out.append(file)
    return out


def load_profiles(dirs: Sequence[Path] | None = None) -> ProfileSet:
    """Load device profiles from ``dirs`` (None: the shipped ``profiles/``), skipping broken ones.

    Each dir holds ``devices/`` and ``roots/`` subdirectories, or plain ``*.yaml`` device files.
    The shipped root stores are always available. Match order: dirs in the order given, files
    by name within each, ``default`` last. Errors are kept in ``ProfileSet.errors``.
    """
    errors: list[ProfileError] = []
    try:
        shipped: Path | None = shipped_profiles_dir()
    except ProfileError as exc:
        errors.append(exc)
        shipped = None
    if dirs is None:
        dirs = [shipped] if shipped is not None else []
    device_files: list[Path] = []
    store_files: list[Path] = sorted((shipped / "roots").glob("*.yaml")) if shipped is not None else []
    for directory in dirs:
        found_devices, found_roots = _scan_dir(Path(directory), errors)
        device_files += found_devices
        store_files += found_roots
    return _build(device_files, store_files, errors)


def load_with_extra(extra_dirs: Sequence[str]) -> ProfileSet:
    """The shipped profiles plus a config's ``profiles_dirs`` (``~`` expanded; theirs match first)."""
    extra = [Path(os.path.expanduser(d)) for d in extra_dirs]
    return load_profiles([*extra, shipped_profiles_dir()])


def lint(paths: Sequence[Path]) -> list[ProfileError]:
    """Check profile and root-store files or directories (none given: the shipped ones).

    A file inside a directory named ``roots`` is a root store; any other file is a device profile.
    """
    errors: list[ProfileError] = []
    if not paths:
        return list(load_profiles().errors)
    try:
        shipped_roots = sorted((shipped_profiles_dir() / "roots").glob("*.yaml"))
    except ProfileError as exc:
        errors.append(exc)
        shipped_roots = []
    device_files: list[Path] = []
    store_files: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found_devices, found_roots = _scan_dir(path, errors)
            device_files += found_devices
            store_files += found_roots
        elif path.is_file():
            (store_files if path.parent.name == "roots" else device_files).append(path)
        else:
            errors.append(ProfileError("no such file or directory", path=str(path)))
    # A store given explicitly replaces the shipped store of the same name (linting an edited copy).
    replaced = {f.stem for f in store_files}
    _build(device_files, [*store_files, *(f for f in shipped_roots if f.stem not in replaced)], errors)
    return errors


def describe(profile: Profile) -> dict[str, object]:
    """A JSON-ready summary of one profile (for ``companion profiles list --json``)."""
    return {
        "id": profile.id,
        "name": profile.name,
        "match": [dict(clause) for clause in profile.match],
        "transport": profile.transport,
        "media": {"https": profile.media_https, "http": profile.media_http},
        "tls": {
            "versions": {"min": profile.tls.min_version, "max": profile.tls.max_version},
            "ciphers": list(profile.tls.ciphers) if profile.tls.ciphers is not None else None,
            "sni": profile.tls.sni,
            "rsa_min_bits": profile.tls.rsa_min_bits,
            "ecdsa": profile.tls.ecdsa,
            "requires_sha2": profile.tls.requires_sha2,
            "follows_aia": profile.tls.follows_aia,
        },
        "roots": {"store": profile.roots.store, "add": list(profile.roots.add),
                  "remove": list(profile.roots.remove)},
        "dns": {"resolver": profile.dns_resolver},
        "confidence": profile.confidence,
        "evidence": len(profile.evidence),
        "notes": profile.notes,
        "path": profile.path,
    }
