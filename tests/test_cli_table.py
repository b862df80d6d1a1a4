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


def test_every_train_shortcut_flag_reaches_the_resolved_config():
    """``train``'s shortcut flags become ``--set train.KEY=VALUE``: each ``train.*`` row of the table, given a value
    different from its default on the command line, is that value in the Config the run resolves (a row parsed and
    then dropped would keep the default). The planted values are listed here, so a new row fails until it has one."""
    from pipeline.cli import COMMANDS, build_parser, resolve_train_args
    from pipeline.config import Config

    planted = {"epochs": ("3", 3), "batch_size": ("5", 5), "image_size": ("64", 64), "weights": ("none", "none"),
               "strategy": ("mirrored", "mirrored"), "warmup_epochs": ("2", 2), "early_stopping_patience": ("4", 4)}
    train = next(c for c in COMMANDS if c.name == "train")
    rows = [a for a in train.args if a.key and a.key.startswith("train.")]
    assert {a.key.split(".", 1)[1] for a in rows} == set(planted)
    defaults = Config().train
    argv = ["train", "somewhere", "--model", "v1_b0"]
    for row in rows:
        name = row.key.split(".", 1)[1]
        assert getattr(defaults, name) != planted[name][1], name  # else a dropped flag would pass unnoticed
        argv += [row.flags[0], planted[name][0]]
    cfg, _, _ = resolve_train_args(build_parser().parse_args(argv))
    assert {name: getattr(cfg.train, name) for name in planted} == {name: value for name, (_, value) in planted.items()}
