"""Issue #12, dashboard side: hostile artifacts (tools/fixtures.py build_hostile) must not make a page open a file
outside the experiment and its data root, nor render artifact text as Markdown/HTML, nor crash."""

import json
import re
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import render_page
from streamlit.testing.v1 import AppTest

from tools.fixtures import HOSTILE_IMAGE, HOSTILE_PATIENT, HOSTILE_RUN

PAGES = ["overview", "confusion", "misclassified", "stain_comparison", "ensemble_builder", "training_curves", "gradcam", "embedding"]
OPENED: list[str] = []
RECORDING = [False]


def _audit(event, args):
    """Every file open in this process (builtins.open, io.open, os.open, and what PIL/pyarrow/numpy call)."""
    if RECORDING[0] and event == "open" and isinstance(args[0], (str, bytes, Path)) and not str(args[0]).startswith(("/proc/", "b'/proc/")):
        OPENED.append(str(args[0] if not isinstance(args[0], bytes) else args[0].decode(errors="replace")))


sys.addaudithook(_audit)


pytestmark = pytest.mark.usefixtures("loopback")  # conftest: AppTest has no server, the app is told it listens on 127.0.0.1


def render(page: str, artifacts: Path, experiment: str = "hostile", **query) -> AppTest:
    return render_page(artifacts, experiment, page, **query)  # os.environ: also called from a module-scoped fixture


@pytest.fixture(scope="module")
def hostile_pages(dashboard_artifacts):
    """Every page of the hostile experiment, plus the views that try the hostile paths, with every file open recorded."""
    manifest = pd.read_parquet(dashboard_artifacts / "hostile" / "manifest.parquet")
    climbing, absolute = manifest["image_id"].iloc[0], manifest["image_id"].iloc[1]
    views = [(p, {}) for p in PAGES] + [
        ("misclassified", {"run": "v1_b0", "errors": "0", "split": "test", "patient": "[click](http://127.0.0.1:9/p)"}),
        ("misclassified", {"run": "v1_b0", "errors": "0", "split": "val"}),
        ("gradcam", {"img": climbing}), ("gradcam", {"img": absolute}), ("gradcam", {"img": HOSTILE_IMAGE}),
        ("confusion", {"a": "v1_b0", "b": "v2_b0", "cell": "a:tp"}),
        ("embedding", {"run": "v1_b0", "colour": "patient", "patient": [manifest["patient_id"].iloc[0], HOSTILE_PATIENT]}),
    ]
    OPENED.clear()
    RECORDING[0] = True
    try:
        rendered = [(page, query, render(page, dashboard_artifacts, **query)) for page, query in views]
    finally:
        RECORDING[0] = False
    return rendered, list(OPENED), (climbing, absolute)


def test_no_page_opens_a_file_outside_the_experiment_and_its_data_root(hostile_pages, dashboard_artifacts):
    _, opened, _ = hostile_pages
    root = dashboard_artifacts.parent.resolve()
    allowed = [(root / "artifacts" / "hostile").resolve(), (root / "data").resolve()]
    inside_root = [Path(p).resolve() for p in opened if Path(p).is_absolute() and root in Path(p).resolve().parents]
    # The experiment picker reads each experiment's dataset.json (only that file; its paths are not followed) to list
    # an external validation under its source: a sibling's dataset.json is the one file outside the two roots allowed.
    picker = {p for p in inside_root if p.name == "dataset.json" and p.parent.parent == (root / "artifacts").resolve()}
    outside = [p for p in inside_root if p not in picker and not any(a == p or a in p.parents for a in allowed)]
    assert not outside, outside
    assert any((root / "data") in p.parents and p.suffix == ".png" for p in inside_root)  # images were shown at all
    assert not any("secret" in str(p) or p.name == "outside.png" for p in inside_root)


def test_hostile_paths_and_keys_are_refused_with_a_message(hostile_pages):
    rendered, _, _ = hostile_pages
    stain = next(at for page, query, at in rendered if page == "stain_comparison")
    assert any("invalid stain target key" in e.value for e in stain.error)
    overview = next(at for page, query, at in rendered if page == "overview")
    assert any("not ones the pipeline writes" in w.value for w in overview.warning)
    assert HOSTILE_RUN not in set(overview.dataframe[0].value["run_id"])


def _outside_code_spans(text: str) -> str:
    return re.sub(r"`[^`]*`", "", text)


def test_artifact_text_reaches_markdown_only_escaped(hostile_pages):
    """No Markdown-rendered element carries a live link, image or HTML tag from the artifacts (code spans are literal)."""
    rendered, _, _ = hostile_pages
    live = re.compile(r"(?<!\\)\]\((?!\s)|(?<!\\)<(img|b|a)\b")  # a Markdown link/image, or an HTML tag
    autolink = re.compile(r"(?i)https?://|www\.|\w@\w")  # GFM links these in the displayed text, after escapes
    checked = 0
    for page, query, at in rendered:
        elements = [*at.markdown, *at.caption, *at.error, *at.warning, *at.info, *at.success, *at.subheader]
        labels = [b.label for b in at.button] + [c.label for c in at.checkbox]
        for text in [e.value for e in elements] + labels:
            checked += 1
            outside = _outside_code_spans(text)
            assert not live.search(outside), (page, query, text)
            assert not autolink.search(re.sub(r"\\(.)", r"\1", outside)), (page, query, text)
    assert checked > 100


@pytest.mark.parametrize("data_root", ["relative/data", "missing", "a_file", "slash", "ancestor"])
def test_a_bad_data_root_is_refused(dashboard_artifacts, tmp_path, data_root):
    artifacts = tmp_path / "artifacts"
    shutil.copytree(dashboard_artifacts / "fixture", artifacts / "bad", ignore=shutil.ignore_patterns("gradcam", "stain", "runs"))
    (tmp_path / "a_file").write_text("not a folder")
    value = {"relative/data": "relative/data", "missing": str(tmp_path / "nowhere"), "a_file": str(tmp_path / "a_file"),
             "slash": "/", "ancestor": str(tmp_path)}[data_root]  # issue 22: both would serve any file below them
    info = json.loads((artifacts / "bad" / "dataset.json").read_text())
    (artifacts / "bad" / "dataset.json").write_text(json.dumps({**info, "data_root": value}))
    at = render("misclassified", artifacts, "bad", run="v1_b0")
    assert any("Images are not shown" in e.value and "data\\_root" in e.value for e in at.error)
