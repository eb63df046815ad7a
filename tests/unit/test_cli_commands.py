"""The command line finds each subcommand's code when it runs, and only then."""

from __future__ import annotations

import argparse

import pytest

from companion.cli import build_parser, command


def _command_names(parser: argparse.ArgumentParser) -> list[str]:
    names: list[str] = []
    for action in parser._actions:  # argparse has no public walk over its subcommands
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                name = sub.get_default("func")
                names += [name] if name is not None else _command_names(sub)
    return names


def test_every_subcommand_the_parser_offers_names_its_command() -> None:
    names = _command_names(build_parser())
    assert len(names) == 11 and "run" in names and "profiles capture" in names
    for name in names:
        assert command(name).__name__ == "cmd_" + name.replace(" ", "_")


def test_a_name_no_subcommand_has_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        command("profiles frobnicate")
