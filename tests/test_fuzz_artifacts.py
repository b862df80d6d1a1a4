"""Issue 22: the promises proven by a fuzzer, not by a list of cases.

Hypothesis plants one mutated artifact (every JSON and parquet file of the planted experiment of tools/fixtures.py:
deep nesting, non-finite and huge numbers, wrong types, missing and extra columns, categorical and null dtypes, NaN and
out-of-range values, duplicated keys, hostile text with Markdown/HTML/RTL/newlines/formulas, a non-UTF-8 sibling folder,
a symlink to a secret file) into a copy of a small experiment built without training, then asserts:

* **CLI stages** (in-process ``pipeline.cli.main``; no TensorFlow): exit 0, or exit 2 with exactly one ``error:`` line;
  never a traceback; no predictions row lost (a valid table keeps every run's rows, an invalid one is left untouched).
* **Dashboard pages** (AppTest through conftest's ``render_page``): no exception, no file opened outside the experiment
  and its data root (an audit hook; the planted secret never), no live link or image in any Markdown element and no
  HTML tag from an artifact in any Plotly spec.

Seeded (``derandomize``) and bounded for ``make test``: HISTOCOMPARE_FUZZ_EXAMPLES (default 40) examples per target;
set it higher for a longer hunt. Counterexamples found while writing it are fixed and kept as rows in
tests/test_bad_input.py and the explicit examples below.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import sys
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipeline.artifacts.io import write_parquet
from pipeline.artifacts.predictions import load_predictions
from pipeline.cli import main
from pipeline.core.errors import PipelineError

EXAMPLES = int(os.environ.get("HISTOCOMPARE_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])

PARQUETS = ["predictions.parquet", "metrics.parquet", "manifest.parquet", "split.parquet", "subsets.parquet", "embedding.parquet",
            "neighbours.parquet", "neighbour_summary.parquet", "runs/v1_b0/history.parquet", "gradcam/gradcam/scores.parquet"]
JSONS = ["dataset.json", "ensembles.json", "runs/v1_b0/run.json", "stain/vahadane/target.json", "stamps/index.json",
         "pipeline_status.json", "pipeline_run.json"]
HOSTILE = ["[x](http://127.0.0.1:9/x)", "![i](http://127.0.0.1:9/i.png)", '<a href="http://127.0.0.1:9/a">a</a>',
           "<img src=x onerror=alert(1)>", "\u202egnp.exe", "two\nlines", "=HYPERLINK(\"http://127.0.0.1:9\")", "", " ", "../../secret"]
NUMBERS = [2, -1, 3, 1e300, -1e300, float("inf"), float("-inf"), float("nan"), 65536, 0.5]

# -- mutations: (kind, target, parameters) drawn by Hypothesis, applied by plant() ---------------------------------
parquet_mutation = st.tuples(st.just("parquet"), st.sampled_from(PARQUETS),
                             st.sampled_from(["drop", "extra", "categorical", "null", "value", "text", "duplicate", "empty"]),
                             st.integers(0, 30), st.sampled_from(NUMBERS), st.sampled_from(HOSTILE))
json_mutation = st.tuples(st.just("json"), st.sampled_from(JSONS),
                          st.sampled_from(["deep", "huge", "nan", "list", "string", "text", "truncated", "bytes"]),
                          st.integers(2, 100_000), st.sampled_from(NUMBERS), st.sampled_from(HOSTILE))
fs_mutation = st.tuples(st.just("fs"), st.sampled_from(PARQUETS + JSONS), st.sampled_from(["symlink", "sibling-bytes", "sibling-deep"]),
                        st.integers(0, 3), st.sampled_from(NUMBERS), st.sampled_from(HOSTILE))
MUTATIONS = st.one_of(parquet_mutation, json_mutation, fs_mutation)


def _mutate_frame(frame: pd.DataFrame, how: str, pick: int, number, text: str) -> pd.DataFrame:
    frame = frame.copy()
    if frame.columns.empty:
        return frame
    col = frame.columns[pick % len(frame.columns)]
    row = pick % max(len(frame), 1)
    if how == "drop":
        return frame.drop(columns=[col])
    if how == "extra":
        return frame.assign(**{"extra": text, "label" if "label" not in frame else "extra2": number})
    if how == "categorical":
        frame[col] = frame[col].astype("category")
    elif how == "null":
        frame[col] = None
    elif how in ("value", "text") and len(frame):
        values = frame[col].astype(object)
        values.iloc[row] = number if how == "value" else text
        try:
            frame[col] = pd.to_numeric(values) if how == "value" else values
        except (ValueError, TypeError):
            frame[col] = values
    elif how == "duplicate" and len(frame):
        frame = pd.concat([frame, frame.iloc[[row]]], ignore_index=True)
    elif how == "empty":
        frame = frame.iloc[:0]
    return frame


def _json_doc(how: str, depth: int, number, text: str, original: object):
    if how == "deep":
        return "[" * depth + "]" * depth
    if how == "huge":
        return json.dumps({"data_root": 1, "key": 1, "status": 1, "version": 1}).replace("1", "1e999", 1)
    if how == "nan":
        return '{"version": NaN, "best_epoch": Infinity, "status": "complete"}'
    if how == "list":
        return "[1, 2, 3]"
    if how == "string":
        return json.dumps(text)
    if how == "text":  # every string value of the original replaced by hostile text
        def swap(obj):
            if isinstance(obj, dict):
                return {k: swap(v) for k, v in obj.items()}
            if isinstance(obj, list):
                return [swap(v) for v in obj]
            return text if isinstance(obj, str) else (number if isinstance(obj, float) and np.isfinite(number) else obj)
        return json.dumps(swap(original), allow_nan=True)
    if how == "truncated":
        return json.dumps(original)[: max(1, depth % 40)]
    return b"\xff\xfe{\x00"


def plant(exp: Path, mutation: tuple, secret: Path) -> None:
    kind, target, how, pick, number, text = mutation
    path = exp / target
    if kind == "parquet":
        if path.exists():
            frame = _mutate_frame(pd.read_parquet(path), how, pick, number, text)
            try:
                write_parquet(frame, path)
            except Exception:  # a column of mixed types pyarrow cannot store: the text of its values (a wrong type)
                mixed = [c for c in frame.columns if frame[c].dtype == object]
                write_parquet(frame.astype({c: str for c in mixed}), path)
    elif kind == "json":
        original = json.loads(path.read_text()) if path.exists() else {"version": 1, "status": "running", "stages": {}}
        doc = _json_doc(how, pick, number, text, original)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(doc if isinstance(doc, bytes) else doc.encode("utf-8"))
    elif how == "symlink":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        path.symlink_to(secret)
    elif how == "sibling-bytes":  # a folder whose name is not UTF-8 next to the experiment
        os.mkdir(os.fsencode(exp.parent) + b"/bad\xff" + str(pick).encode())
    else:  # a sibling experiment whose dataset.json nests 100,000 deep
        sibling = exp.parent / f"sibling{pick}"
        sibling.mkdir()
        shutil.copy(exp / "manifest.parquet", sibling / "manifest.parquet")
        (sibling / "dataset.json").write_text("[" * 100_000 + "]" * 100_000)


def _singles(exp: Path) -> dict[str, int] | None:
    """Rows per single run of the experiment's table when it is valid, else None (then it must stay untouched)."""
    try:
        table = load_predictions(exp)
    except PipelineError:
        return None
    return table[table["kind"] == "single"].groupby("run_id").size().to_dict()


class Sandbox:
    """A fresh copy of the planted experiment per example (Hypothesis reuses the test's fixtures across examples)."""

    def __init__(self, source: Path):
        self.dir = Path(tempfile.mkdtemp(prefix="fuzz-"))
        self.artifacts = self.dir / "artifacts"
        self.exp = self.artifacts / "exp"
        shutil.copytree(source, self.exp, ignore=shutil.ignore_patterns("0123456789"))  # not the stain image cache
        self.secret = self.dir / "secret.png"
        self.secret.write_bytes(b"\x89PNG secret")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        shutil.rmtree(self.dir, ignore_errors=True)


# -- CLI stages ----------------------------------------------------------------------------------------------------
COMMANDS = [("evaluate", "{exp}", "--bootstrap", "3"), ("ensemble", "{exp}", "--no-stacking"), ("split", "{exp}", "--mode", "patient"),
            ("summarize-folds", "{exp}", "--out", "{dir}/folds.parquet"), ("split", "{exp}", "--export", "{dir}/split.csv")]


def run_cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        code = main(argv)
    return code, err.getvalue()


@FUZZ
@given(mutation=MUTATIONS, command=st.sampled_from(COMMANDS))
@example(mutation=("parquet", "predictions.parquet", "value", 7, 2, ""), command=COMMANDS[0])  # label 2 (issue 22)
@example(mutation=("parquet", "predictions.parquet", "null", 8, 2, ""), command=COMMANDS[1])  # NaN probabilities
@example(mutation=("json", "pipeline_run.json", "list", 2, 2, ""), command=COMMANDS[3])  # a foreign run record
@example(mutation=("json", "stamps/index.json", "deep", 5000, 2, ""), command=COMMANDS[2])  # a damaged stamp
@example(mutation=("json", "runs/v1_b0/run.json", "deep", 2, 2, ""), command=COMMANDS[0])  # found: run.json a list
def test_cli_stages_exit_0_or_one_line_and_lose_no_row(mutation, command, dashboard_artifacts):
    with Sandbox(dashboard_artifacts / "fixture") as box:
        plant(box.exp, mutation, box.secret)
        before_rows = _singles(box.exp)
        before_bytes = (box.exp / "predictions.parquet").read_bytes() if (box.exp / "predictions.parquet").is_file() else None
        code, err = run_cli([a.format(exp=box.exp, dir=box.dir) for a in command])
        lines = err.strip().splitlines()
        assert "Traceback" not in err, (mutation, command, err[-2000:])
        assert code in (0, 2), (mutation, command, code, err[-2000:])
        if code == 2:
            assert len(lines) == 1 and lines[0].startswith("error: "), (mutation, command, err)
        if before_rows is not None:
            after = _singles(box.exp)
            assert after is not None and {r: after.get(r) for r in before_rows} == before_rows, (mutation, command)
        elif before_bytes is not None and not (box.exp / "predictions.parquet").is_symlink():
            assert (box.exp / "predictions.parquet").read_bytes() == before_bytes, (mutation, command)


# -- dashboard pages -----------------------------------------------------------------------------------------------
PAGES = ["overview", "confusion", "misclassified", "stain_comparison", "ensemble_builder", "training_curves", "gradcam", "embedding",
         "compare_experiments", "pipeline_status"]
OPENED: list[str] = []
RECORDING = [False]


def _audit(event, args):
    if RECORDING[0] and event == "open" and isinstance(args[0], (str, bytes, Path)) and not os.fsdecode(args[0]).startswith("/proc/"):
        OPENED.append(os.fsdecode(args[0]) if isinstance(args[0], bytes) else str(args[0]))


sys.addaudithook(_audit)
LIVE = re.compile(r"(?<!\\)\]\((?!\s)|(?<!\\)<(img|b|a)\b")
PLOTLY_TAG = re.compile(r"<(a|img|b)\b|\\u003c(a|img|b)\b", re.I)


@FUZZ
@given(mutation=MUTATIONS, page=st.sampled_from(PAGES))
@example(mutation=("json", "pipeline_status.json", "huge", 2, 2, ""), page="overview")  # 1e999 in the sidebar follower
@example(mutation=("fs", "dataset.json", "sibling-deep", 0, 2, ""), page="overview")  # a deep sibling dataset.json
@example(mutation=("fs", "dataset.json", "sibling-bytes", 0, 2, ""), page="confusion")  # a non-UTF-8 sibling name
@example(mutation=("parquet", "runs/v1_b0/history.parquet", "drop", 2, 2, ""), page="training_curves")  # no `loss`
@example(mutation=("fs", "predictions.parquet", "symlink", 0, 2, ""), page="overview")  # found by the fuzzer: a link out
@example(mutation=("fs", "dataset.json", "symlink", 0, 2, ""), page="overview")  # found by the fuzzer: the picker followed it
@example(mutation=("parquet", "gradcam/gradcam/scores.parquet", "drop", 4, 2, ""), page="gradcam")  # found: no prob_target
def test_dashboard_pages_never_raise_open_outside_or_serve_live_links(mutation, page, dashboard_artifacts, loopback):
    from conftest import render_page

    with Sandbox(dashboard_artifacts / "fixture") as box:
        plant(box.exp, mutation, box.secret)
        OPENED.clear()
        RECORDING[0] = True
        try:
            at = render_page(box.artifacts, "exp", page)
        finally:
            RECORDING[0] = False
        data = (dashboard_artifacts.parent / "data").resolve()
        inside = [Path(p).resolve() for p in OPENED if Path(p).is_absolute() and box.dir.resolve() in Path(p).resolve().parents]
        # the picker reads each sibling's dataset.json; the compare page reads sibling experiments on purpose
        mine = box.artifacts.resolve() if page == "compare_experiments" else box.exp.resolve()
        outside = [p for p in inside if mine not in p.parents and p.name != "dataset.json"]
        assert not outside and box.secret.resolve() not in inside, (mutation, page, outside)
        assert all(data in Path(p).resolve().parents for p in OPENED if str(p).endswith(".png") and box.dir.resolve()
                   not in Path(p).resolve().parents and Path(p).is_absolute()), (mutation, page)
        texts = [e.value for e in (*at.markdown, *at.caption, *at.error, *at.warning, *at.info, *at.success, *at.subheader)]
        for text in texts:
            assert not LIVE.search(re.sub(r"`[^`]*`", "", text)), (mutation, page, text)
        for chart in at.get("plotly_chart"):
            assert not PLOTLY_TAG.search(chart.proto.spec), (mutation, page)


def test_the_fuzzer_is_seeded_and_bounded():
    assert FUZZ.derandomize and FUZZ.max_examples == EXAMPLES and FUZZ.database is None
