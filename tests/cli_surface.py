"""The command line's surface as plain data: what a user of ``python -m pipeline`` can see and type.

``describe()`` walks a parser and records, for the top level and every sub-command: its help line, description, the
whole ``--help`` text (at a fixed width, runs of white space as one space: the words, not argparse's wrapping), and
per argument its option strings, destination, default, choices, nargs, metavar, required flag, help text and the name
of its type; plus the one-line error (text and exit status) the CLI prints for an unknown flag and for two bad values
of every option with a type or choices. ``tests/test_cli_table.py`` compares it with ``tests/cli_surface.json``,
recorded from the hand-written parser before it became table-driven (``python tests/cli_surface.py`` rewrites the
file: only do that for a deliberate change of the command line).

The stage list of ``run --only/--force`` is written as ``{STAGES}``, so a stage added to the runner's declarations
does not read as a change of the parser.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any

SURFACE_FILE = Path(__file__).with_name("cli_surface.json")
WIDTH = "100"  # argparse wraps --help at $COLUMNS
BAD_VALUES = ("bogus", "-1")


def _stages_token(text: Any) -> Any:
    from pipeline.runner import STAGES

    if isinstance(text, str):
        return text.replace(" ".join(STAGES), "{STAGES}").replace(", ".join(repr(s) for s in STAGES), "{STAGES}")
    if isinstance(text, (list, tuple)) and list(text) == list(STAGES):
        return "{STAGES}"
    return text


def _plain(value: Any) -> Any:
    """A JSON-able stand-in for an argparse attribute (functions by name, tuples as lists)."""
    if callable(value):
        return getattr(value, "__name__", repr(value))
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return _stages_token([_plain(v) for v in value])
    return _stages_token(value)


def _action(action: argparse.Action) -> dict[str, Any]:
    return {
        "option_strings": list(action.option_strings),
        "dest": action.dest,
        "kind": type(action).__name__,
        "default": _plain(action.default),
        "const": _plain(action.const),
        "type": _plain(action.type),
        "choices": _plain(list(action.choices)) if action.choices is not None else None,
        "nargs": action.nargs,
        "metavar": action.metavar,
        "required": action.required,
        "help": _stages_token(action.help),
    }


def _sub_action(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def _errors(name: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The one-line error and exit status of an unknown flag and of bad values of every typed or choice option."""
    from pipeline.cli import main

    def run(argv: list[str]) -> list[Any]:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
        return [code, _stages_token(err.getvalue())]

    out = {"--no-such-flag": run([name, "--no-such-flag"])}
    for action in parser._actions:
        if (action.type is not None or action.choices is not None) and action.option_strings:
            for bad in BAD_VALUES:
                out[f"{action.option_strings[0]} {bad}"] = run([name, action.option_strings[0], bad])
    return out


def describe(build_parser) -> dict[str, Any]:
    """The surface of the parser ``build_parser()`` returns (call with the environment of the CLI's users)."""
    old = {k: os.environ.get(k) for k in ("COLUMNS", "HISTOCOMPARE_PROG")}
    os.environ["COLUMNS"] = WIDTH
    os.environ.pop("HISTOCOMPARE_PROG", None)
    try:
        parser = build_parser()
        sub = _sub_action(parser)
        helps = {a.dest: a.help for a in sub._choices_actions}
        commands = {}
        for name, p in sub.choices.items():
            commands[name] = {
                "help": helps.get(name),
                "description": p.description,
                "prog": p.prog,
                "handler": getattr(p.get_default("func"), "__name__", None),
                "arguments": [_action(a) for a in p._actions],
                "help_text": _stages_token(" ".join(p.format_help().split())),
                "errors": _errors(name, p),
            }
        return {
            "prog": parser.prog,
            "description": parser.description,
            "arguments": [_action(a) for a in parser._actions if not isinstance(a, argparse._SubParsersAction)],
            "command_order": list(sub.choices),
            "help_text": " ".join(parser.format_help().split()),
            "commands": commands,
        }
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


if __name__ == "__main__":
    from pipeline.cli import build_parser

    SURFACE_FILE.write_text(json.dumps(describe(build_parser), indent=1, sort_keys=True) + "\n")
    print(f"wrote {SURFACE_FILE}")
