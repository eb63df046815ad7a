"""The relay's allow-list: every rule, every method, the refusals, the log-once counter, the docs.

The table below is the allow-list as a user would state it (a path a player sends, and exactly the
methods it may use there); the tests check that ``check_path`` agrees, that every rule of
``ALLOWED`` is exercised by some row, and that docs/relay-allow-list.md lists every rule.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from companion.relay.counters import REFUSED_PATHS_CAP, RelayCounters
from companion.relay.paths import ALLOWED, check_path, refused_path_name

METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
READ = {"GET", "HEAD"}
DOCS = Path(__file__).resolve().parents[2] / "docs" / "relay-allow-list.md"

ALLOWED_PATHS: dict[str, set[str]] = {
    "/": READ,
    "/identity": READ,
    "/media/providers": READ,
    "/library/metadata/501": READ,
    "/library/metadata/501/children": READ,
    "/library/metadata/501/thumb/1700000000": READ,
    "/library/parts/501/file": READ,
    "/library/parts/501/1700000000/file.mkv": READ,
    "/library/parts/501": READ | {"PUT"},  # stream selection is a PUT on the part itself
    "/library/streams/9501": READ,
    "/library/streams/9501.srt": READ,
    "/playQueues/12": READ | {"PUT"},
    "/playQueues/12/shuffle": READ | {"PUT"},
    "/photo/:/transcode": READ,
    "/:/timeline": {"GET", "POST"},
    "/:/scrobble": {"GET", "PUT"},
    "/:/unscrobble": {"GET", "PUT"},
    "/:/progress": {"GET"},
}
for _media in ("video", "music", "audio"):
    _base = f"/{_media}/:/transcode/universal/"
    ALLOWED_PATHS.update({
        _base + "decision": READ,
        _base + "start": READ,
        _base + "start.m3u8": READ,
        _base + "start.mpd": READ,
        _base + "session/abc123/base/index.m3u8": READ,
        _base + "session/abc123/base/00001.ts": READ,
        _base + "session/abc123/0/header": READ,
        _base + "dash/abc123/0/initial.mp4": READ,
        _base + "subtitles": READ,
        _base + "ping": READ,
        _base + "stop": READ,
    })

REFUSED_PATHS = [
    "/library/sections", "/library/sections/1/all", "/library/metadata/", "/library/parts/",
    "/library/onDeck", "/playQueues", "/:/prefs", "/:/rate", "/accounts", "/security/token",
    "/myplex/account", "/system", "/butler", "/status/sessions", "/transcode/sessions/abc",
    "/video/:/transcode/session/abc/def/progress", "/video/:/transcode/universal/fallback",
    "/video/:/transcode/universal/startx", "/video/:/transcode/universal/start.m3u8x123456",
    "/subtitles/:/transcode/universal/start.m3u8", "/identity/extra", "/:/timeline/extra",
    "/media/providers/metadata", "/clients", "/servers", "/hubs/search", "/search",
]


@pytest.mark.parametrize(("path", "allowed"), sorted(ALLOWED_PATHS.items()))
def test_each_playback_path_allows_exactly_its_methods(path: str, allowed: set[str]) -> None:
    for method in METHODS:
        rule, why = check_path(path, method)
        if method in allowed:
            assert rule is not None, f"{method} {path} refused: {why}"
            assert method in rule.methods and rule.matches(path)
        else:
            assert rule is None, f"{method} {path} allowed by {rule}"
            assert f"{method} is not allowed" in why, why


@pytest.mark.parametrize("path", REFUSED_PATHS)
def test_everything_else_is_refused_with_every_method(path: str) -> None:
    for method in METHODS:
        rule, why = check_path(path, method)
        assert rule is None, f"{method} {path} allowed by {rule}"
        assert why


def test_every_rule_is_exercised_by_the_table_and_has_a_source() -> None:
    for rule in ALLOWED:
        used = [(p, m) for p, methods in ALLOWED_PATHS.items() for m in methods
                if check_path(p, m)[0] is rule]
        assert used, f"no row of the table reaches {rule}"
        assert rule.source, f"{rule.path} has no source"


def test_the_server_root_is_answered_from_identity_without_the_token() -> None:
    root, _ = check_path("/", "GET")
    identity, _ = check_path("/identity", "GET")
    assert root is not None and identity is not None
    assert (root.upstream, root.needs_token) == ("/identity", False)
    assert identity.needs_token is False
    others = [r for r in ALLOWED if r not in (root, identity)]
    assert all(r.needs_token and not r.upstream for r in others)


@pytest.mark.parametrize("path", [
    "/library/metadata/..%2F..%2Fsecurity/token", "/library/parts/%2e%2e/%2e%2e/accounts",
    "/playQueues/1%2F..%2F..%2Faccounts", "/library/metadata/501/%00",
])
def test_dot_and_encoded_slash_segments_are_refused_before_any_rule(path: str) -> None:
    rule, why = check_path(path, "GET")
    assert rule is None and "dot or encoded-slash" in why


def test_refused_paths_are_named_with_numbers_folded_and_no_query() -> None:
    assert refused_path_name("GET", "/library/sections/12/all") == "GET /library/sections/{n}/all"
    assert refused_path_name("DELETE", "/playQueues/7/items/99") == "DELETE /playQueues/{n}/items/{n}"
    assert refused_path_name("GET", "/library/metadata/12.jpg") == "GET /library/metadata/{n}.jpg"
    assert refused_path_name("GET", "/a%0Ab") == "GET /a?b", "no control characters reach the log"
    assert len(refused_path_name("GET", "/x" * 500)) <= 4 + 120


def test_each_refused_path_is_reported_once_and_counted_every_time() -> None:
    counters = RelayCounters()
    firsts = [counters.refuse_path(name) for name in ("GET /a", "GET /a", "GET /b", "GET /a")]
    assert firsts == [True, False, True, False]
    assert counters.refused_paths == {"GET /a": 3, "GET /b": 1}


def test_the_refused_path_memory_is_bounded() -> None:
    counters = RelayCounters()
    for i in range(REFUSED_PATHS_CAP + 50):
        counters.refuse_path(f"GET /p{i}")
    assert len(counters.refused_paths) == REFUSED_PATHS_CAP + 1
    assert counters.refused_paths["(other paths)"] == 50
    assert counters.refuse_path("GET /another") is False, "past the cap nothing new is logged"


def test_the_docs_list_every_rule_with_its_methods() -> None:
    text = DOCS.read_text()
    rows: dict[str, set[str]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        first = re.match(r"`(/[^`]*)`", cells[0]) if len(cells) == 4 else None
        if first:
            rows[first.group(1).removesuffix("...")] = {m.strip() for m in cells[1].split(",")}
    for rule in ALLOWED:
        media = re.match(r"/(video|music|audio)(/:/transcode/universal/.*)", rule.path)
        if media:
            documented = "/{video,music,audio}" + media.group(2)
        elif rule.shape:
            documented = rule.path.rstrip("/") + "/<number>"
        else:
            documented = rule.path
        assert documented in rows, f"docs/relay-allow-list.md has no row for {documented}"
        assert rows[documented] == set(rule.methods), \
            f"{documented}: the docs say {rows[documented]}, the code allows {set(rule.methods)}"
