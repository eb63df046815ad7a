"""Loading and linting profile directories: files in, a :class:`ProfileSet` and every problem out.

A directory holds ``devices/`` and ``roots/`` (or plain device files); the shipped ``profiles/``
sits beside the ``companion`` package. References between files (a profile's store and roots,
ids against file names, duplicate ids) are checked here, where all files are known.
"""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import companion
from companion.errors import ProfileError, did_you_mean
from companion.security.profiles.model import DEFAULT_PROFILE_ID, Profile
from companion.security.profiles.parse import RootRefs, parse_profile_with_refs
from companion.security.profiles.profileset import ProfileSet
from companion.security.profiles.reading import read_text
from companion.security.profiles.roots import StoreLoader


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


def _scan_dir(directory: Path, errors: list[ProfileError]) -> tuple[list[Path], list[Path]]:
    if not directory.is_dir():
        errors.append(ProfileError("not a directory", path=str(directory)))
        return [], []
    devices, roots = directory / "devices", directory / "roots"
    if devices.is_dir() or roots.is_dir():
        return sorted(devices.glob("*.yaml")), sorted(roots.glob("*.yaml"))
    return sorted(directory.glob("*.yaml")), []


def _build(device_files: Sequence[Path], store_files: Sequence[Path], errors: list[ProfileError]) -> ProfileSet:
    stores = StoreLoader(errors)
    stores.load(_unique(store_files))
    loaded: dict[str, Profile] = {}
    for file in _unique(device_files):
        try:
            text = read_text(file)
        except ProfileError as exc:
            errors.append(exc)
            continue
        profile, refs, problems = parse_profile_with_refs(text, str(file))
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


def _check_refs(refs: RootRefs, file: Path, stores: StoreLoader,
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

