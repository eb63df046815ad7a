"""Root stores: the named sets of root certificates that device profiles trust.

A store is a file in profiles/roots/ (its own certificates as PEM files beside it, ``extends``
another store, ``remove`` some roots, ``created_before`` a date); the certifi bundle is the
``mozilla`` store. Stores also record roots we have no certificate for (``unavailable``) and
published cross-signs. Loading keeps going after a bad file, so every problem is reported.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from companion.errors import ProfileError, did_you_mean
from companion.security.profiles.model import ID_RE
from companion.security.profiles.reading import Reader, parse_yaml, read_text, split_errors
from companion.security.tls import certifi_bundle, certifi_roots
from companion.yamlsource import Node

_FINGERPRINT_RE = re.compile(r"^[0-9a-f]{64}$")
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


def sha256_fingerprint(cert: x509.Certificate) -> str:
    """A certificate's SHA-256 fingerprint, lowercase hex: how roots are told apart.

    The digest of its DER encoding, as ``cert.fingerprint(SHA256())`` is, but through hashlib:
    cryptography's own digest, first used here at start-up, keeps 0.46 MB resident (measured).
    """
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def _certifi_roots(origin: str) -> list[_Root]:
    """The certifi bundle's roots, named by their label (``"ISRG Root X1"`` -> ``isrg-root-x1``)."""
    roots: list[_Root] = []
    for label, cert in certifi_roots():
        fingerprint = sha256_fingerprint(cert)
        roots.append(_Root(_slug(label) or f"sha256-{fingerprint[:16]}", cert, fingerprint, origin))
    return roots


class StoreLoader:
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
        """Load store files and resolve them; each problem goes to ``errors`` and its store is skipped."""
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
        r = Reader(path)
        top = r.mapping(parse_yaml(read_text(file), path), "", _STORE_KEYS, ("name",))
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

    def _unavailable_entry(self, r: Reader, item: Node, where: str) -> str:
        entry = r.mapping(item, where, ("name", "subject_name", "note"), ("name",))
        for k in ("subject_name", "note"):
            if k in entry:
                r.string(entry[k], f"{where}.{k}")
        return r.string(entry["name"], f"{where}.name") if "name" in entry else ""

    def _cross_entry(self, r: Reader, item: Node, where: str) -> tuple[str, str, datetime, str, str, int, str] | None:
        entry = r.mapping(item, where, _CROSS_KEYS, ("root", "by", "until"))
        if not all(k in entry for k in ("root", "by", "until")):
            return None  # the missing key is recorded already
        root = r.string(entry["root"], f"{where}.root")
        by = r.string(entry["by"], f"{where}.by")
        day = r.string(entry["until"], f"{where}.until")
        try:
            until = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC)
        except ValueError as exc:
            raise r.fail(entry["until"].line, f"{where}.until",
                         f"expected a quoted date like \"2032-09-02\", got {day!r}") from exc
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
            roots = _certifi_roots(f"certifi {certifi_bundle()}")
        except (OSError, ValueError) as exc:
            raise ProfileError(f"cannot read the certifi bundle: {exc}", path=path, line=line,
                               key="source") from exc
        for root in roots:
            self.catalogue.setdefault(root.name, root)
        self._certifi_roots = tuple(roots)
        self._certifi_loaded = True

    def _load_root(self, r: Reader, file: Path, item: Node, where: str) -> _Root | None:
        entry = r.mapping(item, where, _CERT_KEYS, ("name", "fingerprint"))
        if "name" not in entry or "fingerprint" not in entry:
            return None  # the missing key is recorded already
        name = r.string(entry["name"], f"{where}.name")
        if not ID_RE.match(name):
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
        except OSError as exc:
            raise r.fail(file_line, f"{where}.file", f"root file {rel} is missing or unreadable") from exc
        try:
            certs = x509.load_pem_x509_certificates(data)
        except ValueError as exc:
            raise r.fail(file_line, f"{where}.file", f"{rel} is not a PEM certificate") from exc
        if len(certs) != 1:
            raise r.fail(file_line, f"{where}.file", f"{rel} holds {len(certs)} certificates; want exactly one")
        cert = certs[0]
        actual = sha256_fingerprint(cert)
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
        """Is ``name`` a root we have, or one listed as unavailable?"""
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
                                   key="extends") from exc
            certs.update((sha256_fingerprint(c), c) for c in base.certificates)
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

