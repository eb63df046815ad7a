"""The account token stays in its own object: hidden from repr/str/format/pickle, revealed only where a
plex.tv request is built (and where the token file is written), and absent from the config."""

from __future__ import annotations

import ast
import pickle
from dataclasses import fields
from pathlib import Path

import pytest

from companion.config import Config, PlexTvConfig, ServerConfig
from companion.errors import StateError
from companion.plextv.store import AccountToken

ROOT = Path(__file__).resolve().parents[2] / "companion"
SECRET = "tok-0123456789abcdef"


def test_the_token_object_never_shows_its_value() -> None:
    token = AccountToken(SECRET + "\n")
    assert token.reveal() == SECRET
    for shown in (repr(token), str(token), f"{token}", f"{token!r}", repr([token]), repr({"t": token})):
        assert SECRET not in shown
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(token)
    assert token.same_as(AccountToken(SECRET)) and not token.same_as(AccountToken("other")) and not token.same_as(None)
    with pytest.raises(StateError, match="not a token") as info:
        AccountToken("two words")
    assert "two words" not in str(info.value)


def test_only_the_plextv_request_builder_and_the_token_file_writer_reveal_the_token() -> None:
    callers = set()
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "reveal":
                callers.add(str(path.relative_to(ROOT)))
    assert callers == {"plextv/api.py", "plextv/store.py"}


def test_no_config_section_can_hold_the_account_token() -> None:
    assert {f.name for f in fields(PlexTvConfig)} == {"enabled", "url", "refresh_interval"}
    assert "plextv_token" not in {f.name for f in fields(Config)}
    assert {f.name for f in fields(ServerConfig)} == {"url", "token", "line"}  # a server's own token only


def test_a_face_name_from_the_lan_cannot_break_or_extend_the_identity_headers() -> None:
    from companion.proto.plextv import Identity

    headers = Identity("id-1", "TV\r\nX-Plex-Token: stolen" + "x" * 500, "companion-bridge", "1").headers()
    name = headers["X-Plex-Device-Name"]
    assert "\r" not in name and "\n" not in name and len(name) <= 200
    assert set(headers) == {"X-Plex-Client-Identifier", "X-Plex-Product", "X-Plex-Version", "X-Plex-Platform",
                            "X-Plex-Platform-Version", "X-Plex-Device", "X-Plex-Device-Name", "X-Plex-Model"}
