"""Dashboard pages under streamlit's AppTest against a synthetic artifact fixture."""


import pytest
from conftest import PROJECT_ROOT
from streamlit.testing.v1 import AppTest

from pipeline.fixtures import MEMBERS, build

APP = str(PROJECT_ROOT / "dashboard" / "app.py")
PAGES = ["overview", "confusion", "misclassified", "stain_comparison", "ensemble_builder", "training_curves", "gradcam"]


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("dash")
    build(root)
    return root


@pytest.fixture
def app(fixture_root, monkeypatch):
    monkeypatch.setenv("HISTOCOMPARE_ARTIFACTS", str(fixture_root / "artifacts"))
    monkeypatch.setenv("HISTOCOMPARE_EXPERIMENT", "fixture")

    def open_page(name):
        at = AppTest.from_file(APP, default_timeout=60)
        at.run()
        at.switch_page(f"../pages/{name}.py")
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    return open_page


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders(app, page):
    at = app(page)
    assert at.title, page
    assert any("SYNTHETIC" in w.value for w in at.sidebar.warning)


def test_overview_counts_and_leakage(app):
    at = app("overview")
    values = {m.label: m.value for m in at.metric}
    assert values["Images"] == "24" and values["Subtypes"] == "6"
    assert any("patient(s) appear in more than one" in e.value for e in at.error)  # the fixture split is image-level


def _metric(at, label):
    return next(m.value for m in at.metric if m.label == label)


def test_member_toggle_rescoring_matches_pure_functions(app, fixture_root):
    import pandas as pd

    from pipeline.artifacts.predictions import probability_matrix
    from pipeline.core.ensemble import combine

    at = app("ensemble_builder")
    preds = pd.read_parquet(fixture_root / "artifacts" / "fixture" / "predictions.parquet")
    members = list(MEMBERS)
    probs, meta = probability_matrix(preds, members, "test")
    y = meta.label.to_numpy()

    def expected(subset, method="soft"):
        res = combine(probs[[members.index(m) for m in subset]], method)
        return f"{(res.pred == y).mean():.4f}"

    assert _metric(at, "Accuracy") == expected(members)
    at.checkbox(key="member_v1_b0").uncheck().run()
    assert _metric(at, "Accuracy") == expected(["v1_b1", "v2_b0", "v2_b1"])
    at.radio(key="ens_method").set_value("hard").run()
    assert _metric(at, "Accuracy") == expected(["v1_b1", "v2_b0", "v2_b1"], "hard")
    at.checkbox(key="member_v2_b1").uncheck().run()
    at.checkbox(key="member_v1_b1").uncheck().run()
    assert _metric(at, "Accuracy") == expected(["v2_b0"], "hard")


def test_confusion_filters_and_cell_listing(app):
    at = app("confusion")
    before = len(at.get("plotly_chart"))
    at.multiselect(key="cm_mag").set_value([40]).run()
    assert not at.exception
    at.button(key="cell_tp").click().run()
    assert any("malignant predicted malignant" in m.value for m in at.markdown)
    assert before >= 2


def test_misclassified_filters_change_results(app, fixture_root):
    import pandas as pd

    preds = pd.read_parquet(fixture_root / "artifacts" / "fixture" / "predictions.parquet")
    rows = preds[(preds.run_id == "v1_b0") & (preds.split == "test")]
    errors = rows[rows.pred != rows.label]
    at = app("misclassified")
    at.sidebar.selectbox(key="mis_run").set_value("v1_b0").run()
    count = lambda: int(next(m.value for m in at.markdown if "image(s) match" in m.value).split("**")[1])
    assert count() == len(errors)
    at.sidebar.multiselect(key="mis_true").set_value(["benign"]).run()
    assert count() == int((errors.label == 0).sum())
    at.sidebar.toggle(key="mis_errors").set_value(False).run()
    assert count() == int((rows.label == 0).sum())
    at.sidebar.multiselect(key="mis_mag").set_value([40]).run()
    assert count() == int(((rows.label == 0) & (rows.magnification == 40)).sum())


def test_stain_comparison_reports_mcnemar(app):
    at = app("stain_comparison")
    labels = [m.label for m in at.metric]
    assert "McNemar p-value" in labels and "Accuracy v1_b0-vahadane" in labels


def test_missing_artifacts_say_what_to_run(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    import pandas as pd

    pd.DataFrame({"image_id": ["x"], "label": [0], "class_name": ["benign"], "magnification": [40], "subtype_name": ["adenosis"],
                  "patient_id": ["1"], "patient_num": [1], "subtype": ["A"]}).to_parquet(tmp_path / "empty" / "manifest.parquet")
    monkeypatch.setenv("HISTOCOMPARE_ARTIFACTS", str(tmp_path))
    monkeypatch.setenv("HISTOCOMPARE_EXPERIMENT", "empty")
    for page in PAGES:
        at = AppTest.from_file(APP, default_timeout=60)
        at.run()
        at.switch_page(f"../pages/{page}.py")
        at.run()
        assert not at.exception, (page, [e.value for e in at.exception])
        assert any("python -m pipeline" in i.value for i in at.info), page


def test_image_paths_cannot_escape_the_data_root(tmp_path):
    from dashboard.data import safe_image_path

    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "a.png").write_bytes(b"x")
    (tmp_path / "secret.png").write_bytes(b"x")
    assert safe_image_path(tmp_path / "root", "a.png") is not None
    assert safe_image_path(tmp_path / "root", "../secret.png") is None
    assert safe_image_path(tmp_path / "root", str(tmp_path / "secret.png")) is None


def test_dashboard_does_not_import_tensorflow(fixture_root):
    import subprocess
    import sys

    artifacts = str(fixture_root / "artifacts")
    code = (f"import os, sys; os.environ['HISTOCOMPARE_ARTIFACTS'] = {artifacts!r}; os.environ['HISTOCOMPARE_EXPERIMENT'] = 'fixture';"
            "from streamlit.testing.v1 import AppTest;"
            f"at = AppTest.from_file({APP!r}, default_timeout=60); at.run();"
            f"[(at.switch_page(f'../pages/{{p}}.py'), at.run()) for p in {PAGES!r}];"
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr[-1500:]
