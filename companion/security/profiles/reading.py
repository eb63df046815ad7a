"""Reading profile and root-store files: size and encoding checks, and typed access to their YAML.

The YAML itself is read by :mod:`companion.yamlsource` (the config's reader too); this module
turns its problems into :class:`ProfileError` naming file, line and dotted key, and gives the
parsers typed accessors that record every problem of a file instead of stopping at the first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from companion.errors import ProfileError, ProfileErrors, did_you_mean
from companion.security.terms import TLS_VERSIONS
from companion.yamlsource import Node, YamlSourceError, kind_of, read_yaml

_T = TypeVar("_T")
_F = TypeVar("_F")

# Profiles are a few kilobytes; anything much larger is a mistake or an attack (alias bombs).
MAX_FILE_BYTES = 256 * 1024


def parse_yaml(text: str, path: str) -> Node:
    """The value tree of one file's text; raises ProfileError naming the file and line."""
    try:
        root = read_yaml(text)
    except YamlSourceError as exc:
        problem = f"malformed YAML: {exc.problem}" if exc.kind == "syntax" else exc.problem
        raise ProfileError(problem, path=path, line=exc.line, key=exc.key) from exc
    if root is None:
        raise ProfileError("the file is empty", path=path, line=1)
    return root


def read_text(path: Path) -> str:
    """A profile or store file's text; raises ProfileError when unreadable, too large or not UTF-8."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ProfileError(f"cannot read: {exc.strerror or exc}", path=str(path)) from exc
    if len(data) > MAX_FILE_BYTES:
        raise ProfileError(f"file is larger than {MAX_FILE_BYTES} bytes", path=str(path), line=1)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ProfileError("not UTF-8 text", path=str(path), line=line) from exc


class Reader:
    """Typed accessors that raise ProfileError naming file, line and dotted key.

    A contributor wants every problem of a file in one run, so the parsers go on after a bad
    value: :meth:`attempt` records the error and hands back a fallback, :meth:`mapping` records
    unknown and missing keys instead of stopping, and ``problems`` holds them in file order.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.problems: list[ProfileError] = []

    def fail(self, line: int, key: str | None, message: str) -> ProfileError:
        """An error at ``line`` and ``key`` of this file (to raise or to :meth:`note`)."""
        return ProfileError(message, path=self.path, line=line, key=key)

    def note(self, error: ProfileError) -> None:
        """Record a problem and go on."""
        self.problems.append(error)

    def attempt(self, parse: Callable[[], _T], fallback: _F) -> _T | _F:
        """``parse()``, or ``fallback`` with its ProfileError recorded."""
        try:
            return parse()
        except ProfileError as exc:
            self.note(exc)
            return fallback

    def mapping(self, y: Node, key: str, allowed: Sequence[str], required: Sequence[str] = ()) -> dict[str, Node]:
        """The entries with an allowed name; unknown and missing keys are recorded, not raised."""
        if not isinstance(y.value, dict):
            raise self.fail(y.line, key or None, f"expected a mapping, got {kind_of(y.value)}")
        entries: dict[str, Node] = {}
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

    def items(self, y: Node, key: str) -> list[Node]:
        """The entries of a list."""
        if not isinstance(y.value, list):
            raise self.fail(y.line, key, f"expected a list, got {kind_of(y.value)}")
        return list(y.value)

    def string(self, y: Node, key: str, *, empty: bool = False) -> str:
        """A string, not blank unless ``empty``."""
        if not isinstance(y.value, str):
            raise self.fail(y.line, key, f"expected a string, got {kind_of(y.value)}")
        if not empty and not y.value.strip():
            raise self.fail(y.line, key, "must not be empty")
        return y.value

    def boolean(self, y: Node, key: str) -> bool:
        """``true`` or ``false``."""
        if not isinstance(y.value, bool):
            raise self.fail(y.line, key, f"expected true or false, got {kind_of(y.value)}")
        return y.value

    def integer(self, y: Node, key: str, lo: int, hi: int) -> int:
        """A whole number from ``lo`` to ``hi``."""
        if isinstance(y.value, bool) or not isinstance(y.value, int):
            raise self.fail(y.line, key, f"expected a whole number, got {kind_of(y.value)}")
        if not lo <= y.value <= hi:
            raise self.fail(y.line, key, f"must be between {lo} and {hi}, got {y.value}")
        return y.value

    def choice(self, y: Node, key: str, choices: Sequence[str]) -> str:
        """One of ``choices``, written as a string."""
        if isinstance(y.value, int | float) and not isinstance(y.value, bool):
            # YAML reads an unquoted 1.2 as a number; the loader wants the text "1.2".
            example = str(y.value) if str(y.value) in choices else choices[-1]
            raise self.fail(y.line, key, f"expected one of {', '.join(choices)} (quote it: \"{example}\"),"
                                         f" got {kind_of(y.value)}")
        text = self.string(y, key)
        if text not in choices:
            # A version number one off is not a misspelling: no suggestion for those.
            hint = "" if choices is TLS_VERSIONS else did_you_mean(text, choices)
            raise self.fail(y.line, key, f"expected one of {', '.join(choices)}, got {text!r}{hint}")
        return text

    def names(self, y: Node, key: str) -> list[tuple[str, int]]:
        """A list of strings, each with its line."""
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

