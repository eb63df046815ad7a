"""Parsing one device profile's text into a :class:`Profile`, with every problem of the file.

Format only: the root stores and roots a profile names are checked by the loader
(:mod:`companion.security.profiles.loader`), which knows the stores.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Literal, cast

from companion.errors import ProfileError, did_you_mean
from companion.security.profiles.model import (
    ABOUT_FACETS,
    CONFIDENCE_ORDER,
    ID_RE,
    MATCH_FIELDS,
    RESOLVERS,
    TRANSPORTS,
    Confidence,
    Evidence,
    Profile,
    RootsSpec,
    TlsCaps,
)
from companion.security.profiles.reading import Reader, parse_yaml, raise_all
from companion.security.terms import TLS_VERSIONS
from companion.yamlsource import Node

_CIPHER_RE = re.compile(r"^[A-Za-z0-9_-]{1,80}$")

_PROFILE_KEYS = ("id", "name", "match", "transport", "media", "tls", "dns", "evidence", "notes")
_EVIDENCE_KEYS = ("claim", "source", "confidence", "about", "when", "bridge_version")
_PROFILE_REQUIRED = ("id", "name", "match", "transport", "media", "dns")
_TLS_KEYS = ("versions", "ciphers", "sni", "rsa_min_bits", "ecdsa", "requires_sha2", "follows_aia", "roots")


@dataclass(frozen=True)
class RootRefs:
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
    profile, _, problems = parse_profile_with_refs(text, path)
    raise_all(problems)
    assert profile is not None
    return profile


def parse_profile_with_refs(text: str, path: str) -> tuple[Profile | None, RootRefs | None, list[ProfileError]]:
    """The profile (None when anything is wrong), where its root references sit, every problem."""
    r = Reader(path)
    try:
        top = r.mapping(parse_yaml(text, path), "", _PROFILE_KEYS, _PROFILE_REQUIRED)
    except ProfileError as exc:
        return None, None, [exc]
    def text_of(key: str) -> str:
        return r.attempt(lambda: r.string(top[key], key), "") if key in top else ""

    profile_id = text_of("id")
    id_line = top["id"].line if "id" in top else 1
    if profile_id and not ID_RE.match(profile_id):
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


def _parse_evidence(r: Reader, ev_y: Node, where: str, about_refs: list[tuple[str, int, str]]) -> Evidence | None:
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


def _measured_fields(r: Reader, ev: dict[str, Node], ev_y: Node, where: str,
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


def _parse_tls(r: Reader, tls_y: Node | None, id_line: int) -> tuple[TlsCaps, RootsSpec, RootRefs]:
    if tls_y is None:
        return TlsCaps(), RootsSpec(), RootRefs(id_line, (), (), id_line)
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
        return caps, RootsSpec(), RootRefs(tls_y.line, (), (), id_line)
    roots = r.attempt(lambda: r.mapping(tls["roots"], "tls.roots", ("store", "add", "remove"), ("store",)), {})
    store = r.attempt(lambda: r.string(roots["store"], "tls.roots.store"), "") if "store" in roots else ""
    add = tuple(r.attempt(lambda: r.names(roots["add"], "tls.roots.add"), [])) if "add" in roots else ()
    remove = tuple(r.attempt(lambda: r.names(roots["remove"], "tls.roots.remove"), [])) if "remove" in roots else ()
    spec = RootsSpec(store=store or "mozilla", add=tuple(n for n, _ in add), remove=tuple(n for n, _ in remove))
    store_line = roots["store"].line if "store" in roots else tls["roots"].line
    return caps, spec, RootRefs(store_line, add, remove, id_line, store_given=bool(store), store=spec.store)

