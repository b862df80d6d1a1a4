"""Counts and budgets the README quotes are the ones the tests use (issue 23: they had drifted, 73 vs 80 bad inputs
and a click budget of 3 in the test vs 2 in the README). Read from the README text, compared with the tests' own tables."""

from __future__ import annotations

import re

from conftest import PROJECT_ROOT

README = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")


def test_the_bad_input_count_is_the_tables_length():
    from test_bad_input import ROWS

    quoted = re.search(r"`tests/test_bad_input.py` runs (\d+) such", README)
    assert quoted, "the README no longer quotes the bad-input count"
    assert int(quoted.group(1)) == len(ROWS)


def test_the_click_table_is_the_browser_tests_budget():
    from test_browser import BUDGET

    table = README.split("| workflow | clicks |", 1)[1].split("\n\n", 1)[0]
    clicks = [int(line.rsplit("|", 2)[-2]) for line in table.splitlines()[2:] if line.startswith("|")]
    assert clicks == list(BUDGET.values())  # same workflows, same order, same numbers
