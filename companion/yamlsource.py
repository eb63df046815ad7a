"""YAML text -> plain values that know their line: the one YAML reader of the config and the profiles.

Only what ``yaml.safe_load`` builds from plain YAML comes through: strings, numbers, booleans,
null, lists, and mappings with string keys. Dates, binary, sets, merge keys (``<<``) and custom
tags are refused, and so are duplicate keys (PyYAML would keep the last one silently). Anchors and
aliases work, but the tree is bounded in nodes and depth, so an alias bomb is refused instead of
filling memory. Each problem carries the line (1-based) and, where there is one, the dotted key
(``tls.roots.add[1]``); callers turn it into their own error type. A leaf: nothing of companion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import yaml

# Config files and profiles are a few kilobytes; anything much larger is a mistake or an attack.
MAX_NODES = 20_000
MAX_DEPTH = 32

_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = frozenset(_TAG + t for t in ("str", "int", "float", "bool", "null"))

ProblemKind = Literal["syntax", "duplicate", "content"]


@dataclass(frozen=True)
class Node:
    """One YAML value with the line it came from (for a mapping's value: the line of its key)."""

    value: object  # str | int | float | bool | None | dict[str, Node] | list[Node]
    line: int


class YamlSourceError(ValueError):
    """What is wrong with a YAML text: the problem, its line and, where known, the dotted key.

    ``kind`` says which: ``syntax`` (not YAML at all), ``duplicate`` (a key given twice; the
    problem then names no more than that), or ``content`` (YAML we do not accept).
    """

    def __init__(self, problem: str, *, line: int | None, key: str | None = None,
                 kind: ProblemKind = "content") -> None:
        super().__init__(problem)
        self.problem = problem
        self.line = line
        self.key = key
        self.kind = kind


def kind_of(value: object) -> str:
    """A plain-words kind of a value, with the value for scalars (``number 5``, ``a list``)."""
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


def read_yaml(text: str, *, scalar_keys: bool = False, max_nodes: int = MAX_NODES,
              max_depth: int = MAX_DEPTH) -> Node | None:
    """The value tree of ``text``, or None when the document is empty; raises YamlSourceError.

    Mapping keys must be strings; with ``scalar_keys`` a number, boolean or null key is taken as
    its ``str()`` (the config names targets, which may be written as bare numbers).
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = (exc.problem or exc.context or "syntax error").splitlines()[0]
        raise YamlSourceError(problem, line=line, kind="syntax") from exc
    except yaml.YAMLError as exc:
        raise YamlSourceError(str(exc), line=1, kind="syntax") from exc
    except RecursionError as exc:
        raise YamlSourceError("nested too deeply", line=1, kind="syntax") from exc
    if root is None:
        return None
    return _Builder(scalar_keys, max_nodes, max_depth).convert(root, "", 0, None)


class _Builder:
    """Turns a composed node tree into :class:`Node` values, refusing anything exotic."""

    def __init__(self, scalar_keys: bool, max_nodes: int, max_depth: int) -> None:
        self.scalar_keys = scalar_keys
        self.max_nodes = max_nodes
        self.max_depth = max_depth
        self.nodes = 0
        self.constructor = yaml.constructor.SafeConstructor()

    def convert(self, node: yaml.Node, key: str, depth: int, line: int | None) -> Node:
        here = node.start_mark.line + 1 if line is None else line
        self.nodes += 1
        if self.nodes > self.max_nodes or depth > self.max_depth:
            raise YamlSourceError("document is too large or too deeply nested (aliases?)", line=here)
        if isinstance(node, yaml.MappingNode):
            if node.tag != _TAG + "map":
                raise YamlSourceError(_unsupported(node.tag), line=here, key=key or None)
            entries: dict[str, Node] = {}
            for key_node, value_node in node.value:
                key_line = key_node.start_mark.line + 1
                name = self.convert(key_node, key, depth + 1, None).value
                if self.scalar_keys and not isinstance(name, dict | list):
                    name = str(name)
                if not isinstance(name, str):
                    # The kind only, not the key: it might sit under a token, which must not be echoed.
                    raise YamlSourceError(f"keys must be strings, got {_kind_word(name)}", line=key_line,
                                          key=key or None)
                dotted = f"{key}.{name}" if key else name
                if name in entries:
                    raise YamlSourceError("duplicate key", line=key_line, key=dotted, kind="duplicate")
                entries[name] = self.convert(value_node, dotted, depth + 1, key_line)
            return Node(entries, here)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _TAG + "seq":
                raise YamlSourceError(_unsupported(node.tag), line=here, key=key or None)
            return Node([self.convert(item, f"{key}[{i}]", depth + 1, None) for i, item in enumerate(node.value)],
                        here)
        if not isinstance(node, yaml.ScalarNode) or node.tag not in _SCALAR_TAGS:
            raise YamlSourceError(_unsupported(node.tag), line=here, key=key or None)
        try:
            value: object = self.constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError, ArithmeticError):
            # The library's message repeats the text, which may be a token: say what, not which.
            raise YamlSourceError(f"not a valid {node.tag.removeprefix(_TAG)}", line=here,
                                  key=key or None) from None
        return Node(value, here)


def _kind_word(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if value is None:
        return "null"
    return kind_of(value)


def _unsupported(tag: str) -> str:
    short = tag.removeprefix(_TAG)
    if short == "timestamp":
        return "dates must be quoted strings"
    if short == "merge":
        return "merge keys (<<) are not supported; write the keys out"
    return f"unsupported YAML type {short!r} (use plain strings, numbers, booleans, lists and mappings)"
