"""The loaded profiles as one set: lookup by id, matching a device to its profile, its roots.

Built by :mod:`companion.security.profiles.loader`; never changes once built, so the roots of a
profile are computed once.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from cryptography import x509

from companion.errors import ProfileError
from companion.security.profiles.model import DEFAULT_PROFILE_ID, Profile, RootsSpec
from companion.security.profiles.roots import CrossSign, RootStore, sha256_fingerprint

log = logging.getLogger(__name__)


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
        """The profiles by id, in match order (``default`` last)."""
        return self._profiles

    @property
    def errors(self) -> tuple[ProfileError, ...]:
        """What went wrong while loading, one error per problem (broken files were skipped)."""
        return self._errors

    @property
    def stores(self) -> Mapping[str, RootStore]:
        """The root stores by name."""
        return self._stores

    def get(self, profile_id: str) -> Profile:
        """The profile with this id; raises ProfileError naming the loaded ones when there is none."""
        try:
            return self._profiles[profile_id]
        except KeyError as exc:
            known = ", ".join(self._profiles) or "none"
            raise ProfileError(f"unknown profile {profile_id!r} (loaded: {known})") from exc

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
        """The root store with this name; raises ProfileError naming the loaded ones when there is none."""
        try:
            return self._stores[name]
        except KeyError as exc:
            raise ProfileError(f"unknown root store {name!r} (loaded: {', '.join(self._stores) or 'none'})") \
                from exc

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
        certs = {sha256_fingerprint(c): c for c in self.store(profile.roots.store).certificates}
        for name in profile.roots.add:
            cert = self._root(name, profile)
            certs.setdefault(sha256_fingerprint(cert), cert)
        for name in profile.roots.remove:
            gone = self._catalogue.get(name)
            if gone is not None:
                certs.pop(sha256_fingerprint(gone), None)
        return tuple(certs.values())

    def _root(self, name: str, profile: Profile) -> x509.Certificate:
        cert = self._catalogue.get(name)
        if cert is None:
            raise ProfileError(f"unknown root {name!r}", path=profile.path or None, key="tls.roots.add")
        return cert


def _clause_matches(clause: Mapping[str, str], fields: Mapping[str, str]) -> bool:
    return all(fnmatch.fnmatchcase(fields.get(key, "").casefold(), pattern.casefold())
               for key, pattern in clause.items())

