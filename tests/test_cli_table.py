"""The command line keeps its surface: flags, defaults, help texts and one-line errors of every sub-command.

``tests/cli_surface.json`` was recorded from the hand-written ``build_parser`` before it became table-driven
(issue 24); the table-driven parser must describe to the same data, sub-command by sub-command, so a difference
names the command and the field that moved.
"""

from __future__ import annotations

import json

import pytest
from cli_surface import SURFACE_FILE, describe

RECORDED = json.loads(SURFACE_FILE.read_text())


@pytest.fixture(scope="module")
def current() -> dict:
    from pipeline.cli import build_parser

    return json.loads(json.dumps(describe(build_parser)))  # through JSON: tuples become lists, as in the file


def test_top_level_is_unchanged(current):
    for key in ("prog", "description", "arguments", "command_order", "help_text"):
        assert current[key] == RECORDED[key], key


@pytest.mark.parametrize("name", list(RECORDED["commands"]))
def test_every_sub_command_is_unchanged(current, name):
    was, now = RECORDED["commands"][name], current["commands"].get(name)
    assert now is not None, f"sub-command {name} is gone"
    assert {tuple(a["option_strings"]) for a in now["arguments"]} == {tuple(a["option_strings"]) for a in was["arguments"]}
    assert {a["dest"]: a["default"] for a in now["arguments"]} == {a["dest"]: a["default"] for a in was["arguments"]}
    assert now["help_text"].split(" options: ")[0] == was["help_text"].split(" options: ")[0]  # usage + description
    for field in ("help", "description", "prog", "handler", "arguments", "help_text", "errors"):
        assert now[field] == was[field], f"{name}: {field}"


def test_errors_stay_one_line_exit_2():
    """The recorded surface itself: every bad flag or value is one ``error:`` line and exit status 2."""
    for name, command in RECORDED["commands"].items():
        assert command["errors"], name
        for case, (code, err) in command["errors"].items():
            assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, (name, case, err)


def test_train_shortcut_flags_are_the_train_rows_of_the_table():
    """``train``'s shortcut flags become ``--set train.KEY=VALUE`` (cli.TRAIN_FLAGS): exactly the rows of ``train``
    that set a ``train.`` key, so a flag added to the table cannot be parsed and then silently dropped."""
    from pipeline.cli import COMMANDS, TRAIN_FLAGS

    train = next(c for c in COMMANDS if c.name == "train")
    rows = {a.key.split(".", 1)[1] for a in train.args if a.key and a.key.startswith("train.")}
    assert rows == set(TRAIN_FLAGS)
    assert all(a.flags[0] == "--" + a.key.split(".", 1)[1].replace("_", "-") for a in train.args if a.key and a.key.startswith("train."))
