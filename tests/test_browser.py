"""The four core workflows in a real browser (Debian's Chromium via Playwright, one `streamlit run` server for the
module), counted in clicks from the Overview against the budgets of issue #14; reloading a URL restores the view;
hostile artifact text creates no image or link. Expected values are recomputed from predictions.parquet."""

import re
import time

import numpy as np
import pandas as pd
import pytest

from tools.live import CHROMIUM, chromium, serve, wait_idle
from pipeline.artifacts.predictions import member_runs, probability_matrix
from pipeline.artifacts.run_names import run_aliases
from pipeline.core.ensemble import combine
from pipeline.core.metrics import confusion_counts

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (`make browser`)")
BUDGET = {"worst errors -> Grad-CAM panel": 2, "two runs' matrices -> one cell's images": 4, "builder -> its errors": 1,
          "stain verdict": 1}
CLICKS: dict[str, int] = {}


@pytest.fixture(scope="module")
def live(dashboard_artifacts):
    with serve(dashboard_artifacts, "fixture") as (url, _), chromium(1400, 1000) as page:
        page.goto(f"{url}/")  # the first render pays the cold imports
        page.wait_for_selector("h1", timeout=120_000)
        yield url, page
    print("clicks from the Overview:", CLICKS)


@pytest.fixture(scope="module")
def preds(dashboard_artifacts):
    return pd.read_parquet(dashboard_artifacts / "fixture" / "predictions.parquet")


class Clicker:
    """Counts the user's clicks of one workflow."""

    def __init__(self, page):
        self.page, self.n = page, 0

    def click(self, locator) -> None:
        locator.scroll_into_view_if_needed()
        locator.click()
        self.n += 1

    def at(self, x: float, y: float) -> None:
        self.page.mouse.click(x, y)
        self.n += 1


def start(page, url: str, path: str = "/") -> Clicker:
    page.goto(f"{url}{path}")
    page.wait_for_selector("h1", timeout=120_000)
    wait_idle(page)
    return Clicker(page)


def aliases(preds):
    return run_aliases(list(pd.unique(preds["run_id"])), member_runs(preds))


def test_worst_errors_of_the_best_ensemble_then_a_grad_cam_panel(live, preds):
    from playwright.sync_api import expect

    url, page = live
    user = start(page, url)
    user.click(page.locator(".st-key-best_ens_errors button").first)
    first_card = page.locator("[class*='st-key-br_card_']").first
    expect(first_card).to_be_visible(timeout=30_000)
    image_id = first_card.locator("code").first.inner_text()
    test = preds[preds["split"] == "test"]
    acc = test.assign(ok=test["pred"] == test["label"]).groupby("run_id")["ok"].mean()
    ensembles = acc[[r for r in acc.index if r.startswith("ensemble:")]]
    run = page.locator(".st-key-br_run input").input_value()
    assert run in {aliases(preds)[r] for r in ensembles[ensembles == ensembles.max()].index}
    rows = test[test["run_id"] == {v: k for k, v in aliases(preds).items()}[run]]
    wrong = rows[rows["pred"] != rows["label"]]
    worst = wrong.assign(c=np.where(wrong["pred"] == 1, wrong["prob_malignant"], 1 - wrong["prob_malignant"])).sort_values(
        ["c", "image_id"], ascending=[False, True])
    assert image_id == worst["image_id"].iloc[0]  # most confident error first
    user.click(first_card.get_by_text("Grad-CAM panel"))
    panel = page.locator(".st-key-cam_panel")
    expect(panel).to_be_visible(timeout=30_000)
    expect(page.locator("[data-testid='stMarkdownContainer'] code").first).to_have_text(image_id, timeout=30_000)
    # the study's 2x5 panel: every model has a map in the fixture (the tiles arrive one by one after the panel shows)
    expect(panel.locator("img")).to_have_count(10, timeout=30_000)
    CLICKS["worst errors -> Grad-CAM panel"] = user.n
    assert user.n <= BUDGET["worst errors -> Grad-CAM panel"]
    page.reload()  # the URL alone restores the view
    expect(page.locator(".st-key-cam_panel")).to_be_visible(timeout=60_000)
    expect(page.locator("[data-testid='stMarkdownContainer'] code").first).to_have_text(image_id, timeout=30_000)


def test_two_runs_confusion_matrices_then_one_cells_images(live, preds):
    from playwright.sync_api import expect

    url, page = live
    user = start(page, url)
    grid = page.locator(".st-key-ov_table [data-testid='stDataFrame']")
    grid.scroll_into_view_if_needed()
    box = grid.bounding_box()
    for row, shown in ((0, "ov_errors"), (3, "ov_compare")):  # the row-selection checkboxes of the first and fourth runs
        user.at(box["x"] + 18, box["y"] + 35 + 35 * row + 17)
        # a click does not change the script state at once: wait for what each selection brings up, then for idle
        expect(page.locator(f".st-key-{shown} button").first).to_be_visible(timeout=30_000)
        wait_idle(page)
    compare = page.locator(".st-key-ov_compare button").first
    expect(compare).to_be_visible(timeout=30_000)
    user.click(compare)
    point = page.locator(".st-key-cm_chart_a_0 .scatterlayer .point").nth(2)  # cells are tn, fp, fn, tp: the FN square
    expect(point).to_be_visible(timeout=30_000)
    wait_idle(page)
    square = point.bounding_box()
    user.at(square["x"] + square["width"] / 2, square["y"] + square["height"] / 2)
    header = page.locator(".st-key-cm_cell h3")
    expect(header).to_contain_text("malignant predicted benign (FN)", timeout=30_000)
    CLICKS["two runs' matrices -> one cell's images"] = user.n
    assert user.n <= BUDGET["two runs' matrices -> one cell's images"]
    by_alias = {v: k for k, v in aliases(preds).items()}
    a = by_alias[page.locator(".st-key-cm_a input").input_value()]
    rows = preds[(preds["run_id"] == a) & (preds["split"] == "test")]
    expected = confusion_counts(rows["label"], rows["pred"])["fn"]
    expect(page.locator(".st-key-cm_page_bar")).to_contain_text(f"of {expected}", timeout=30_000)
    page.reload()
    expect(page.locator(".st-key-cm_cell h3")).to_contain_text("malignant predicted benign (FN)", timeout=60_000)


def test_builder_to_the_built_ensembles_errors_in_one_click(live, preds, dashboard_artifacts):
    from playwright.sync_api import expect

    url, page = live
    members = member_runs(preds)
    probs, meta = probability_matrix(preds, members, "test")
    y = meta["label"].to_numpy()
    acc = lambda subset: (combine(probs[[members.index(m) for m in subset]], "soft").pred == y).mean()
    toggled = next(m for m in members if f"{acc([x for x in members if x != m]):.4f}" != f"{acc(members):.4f}")
    chosen = [x for x in members if x != toggled]
    start(page, url, "/ensemble")
    # A row of the validation-ranked subsets loads into the builder ...
    subsets = pd.read_parquet(dashboard_artifacts / "fixture" / "subsets.parquet")
    best = subsets[subsets["method"] == "soft"].iloc[0]["members"].split("+")
    grid = page.locator(".st-key-ens_subsets [data-testid='stDataFrame']")
    grid.scroll_into_view_if_needed()
    box = grid.bounding_box()
    page.mouse.click(box["x"] + 18, box["y"] + 35 + 17)
    picked = page.locator(".st-key-ens_member_pick [data-tag]")  # the chosen members' chips in the one multiselect
    expect(picked).to_have_count(len(best), timeout=30_000)
    for m in members:
        expect(page.locator(f".st-key-ens_member_pick [data-tag][aria-label='{aliases(preds)[m]}']")).to_have_count(int(m in best))
    # ... then, from a fresh builder (every member ticked), one toggle and one click to the errors
    start(page, url, "/ensemble")
    accuracy = page.locator(".st-key-ensemble_metrics [data-testid='stMetricValue']").first
    expect(accuracy).to_have_text(f"{acc(members):.4f}", timeout=60_000)
    clicked = time.perf_counter()
    remove = page.locator(".st-key-ens_member_pick").get_by_role("button", name=f"Remove {aliases(preds)[toggled]}", exact=True)
    remove.click()  # set-up, not counted
    expect(accuracy).to_have_text(f"{acc(chosen):.4f}", timeout=30_000)
    latency_ms = (time.perf_counter() - clicked) * 1000  # reported, never asserted
    user = Clicker(page)
    user.click(page.locator(".st-key-ens_errors button").first)
    expect(page.locator(".st-key-br_run input")).to_have_value(re.compile("^Built: "), timeout=30_000)
    pred = combine(probs[[members.index(m) for m in chosen]], "soft").pred
    n_wrong = int((pred != y).sum())
    expect(page.locator(".st-key-br_page_bar")).to_contain_text(f"of {n_wrong}", timeout=30_000)
    CLICKS["builder -> its errors"] = user.n
    assert user.n <= BUDGET["builder -> its errors"]
    print(f"member toggle in the browser: {latency_ms:.0f} ms from click to new accuracy text")


def test_builder_panel_switch_sends_the_panel_alone(live):
    """Issue 27, six users at once: picking another diagnostics panel sends that panel, not the controls and the
    headline again (the server's websocket messages, decoded; tools/builder_messages.py measures the counts)."""
    from playwright.sync_api import expect

    from tools.builder_messages import SETTLE_MS, decode_frame

    url, page = live
    frames: list[bytes] = []

    def listen(ws) -> None:
        ws.on("framereceived", lambda data: frames.append(data))  # a Python function (Playwright wraps listeners)

    page.on("websocket", listen)
    try:
        start(page, url, "/ensemble")
        page.wait_for_timeout(SETTLE_MS)
        sent = len(frames)
        page.locator(".st-key-ens_panel button", has_text="ROC").first.click()
        expect(page.locator(".st-key-ens_roc")).to_be_visible(timeout=30_000)
        wait_idle(page)
        page.wait_for_timeout(SETTLE_MS)
        switched = [d for k, d in map(decode_frame, frames[sent:]) if k == "delta"]
        assert "plotly_chart" in switched and not {"metric", "multiselect", "radio"} & set(switched), switched
    finally:
        page.remove_listener("websocket", listen)


def test_stain_verdict_in_one_click(live):
    from playwright.sync_api import expect

    url, page = live
    user = start(page, url)
    user.click(page.locator("[data-testid='stSidebarNavLink']", has_text="Stain comparison"))
    verdict = page.locator(".st-key-ab_verdict")
    expect(verdict).to_contain_text("Verdict for stain normalization", timeout=30_000)
    for aspect in ("accuracy", "ROC AUC", "calibration (Brier score)"):
        expect(verdict).to_contain_text(aspect)
    CLICKS["stain verdict"] = user.n
    assert user.n <= BUDGET["stain verdict"]


def test_hostile_text_creates_no_image_or_link(live, dashboard_artifacts):
    from playwright.sync_api import expect

    from tools.fixtures import HOSTILE_RUN

    url, page = live
    for path in ("/images?exp=hostile&run=v1_b0&errors=0&split=test", "/?exp=hostile"):  # cards with hostile ids; the run notice
        start(page, url, path)
        assert page.locator("img[src*='127.0.0.1:9'], img[src='x'], a[href*='127.0.0.1:9']").count() == 0, path
    notice = page.locator("[data-testid='stAlertContentWarning']", has_text="not ones the pipeline writes")
    expect(notice).to_contain_text(HOSTILE_RUN)  # shown literally, as text


def test_compare_experiments_renders_its_dumbbell(live, dashboard_artifacts):
    """Two experiments side by side in the browser: both leakage headers, the dumbbell chart and the tables."""
    from playwright.sync_api import expect

    url, page = live
    start(page, url, "/experiments?exp=fixture&exps=fixture&exps=hostile")
    heads = page.locator("[data-testid='stMetric']", has_text="Patients in train and test")
    expect(heads).to_have_count(2, timeout=30_000)
    expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=30_000)
    expect(page.locator("[data-testid='stDataFrame']").first).to_be_visible()
    assert page.locator("img[src*='127.0.0.1:9'], a[href*='127.0.0.1:9']").count() == 0  # the hostile twin stays text


def test_compare_experiments_collapses_fold_experiments(live, dashboard_artifacts, tmp_path):
    """The folds of one protocol in the browser: each fold's caption, and the dumbbell's per-fold markers for v1_b0
    at the planted accuracies (read from the figure Plotly drew), next to the one-split experiment."""
    from planted_experiments import FOLD_ACC, build_compare_artifacts
    from playwright.sync_api import expect

    _, page = live
    root = build_compare_artifacts(dashboard_artifacts / "fixture", tmp_path / "artifacts")
    with serve(root, "patient") as (url, _):
        start(page, url, "/experiments?exp=patient&exps=patient&exps=pfold0&exps=pfold1&exps=pfold2")
        expect(page.get_by_text("fold 2 of 3")).to_be_visible(timeout=30_000)
        chart = page.locator(".js-plotly-plot").first
        expect(chart).to_be_visible(timeout=30_000)
        traces = chart.evaluate("el => el.data.map(t => ({name: t.name || '', x: Array.from(t.x || []), y: Array.from(t.y || [])}))")
        folds = [t for t in traces if t["name"].endswith("each fold")]
        assert len(folds) == 1, [t["name"] for t in traces]
        v1_b0 = sorted(x for x, y in zip(folds[0]["x"], folds[0]["y"]) if y == "V1-B0")
        assert v1_b0 == pytest.approx(sorted(FOLD_ACC))


def test_embedding_map_is_webgl_and_a_lasso_lists_the_images(live, dashboard_artifacts):
    """The embedding map draws with WebGL (Scattergl); a lasso around the whole plot selects every point, and the page
    lists that many images. The render time is printed (the 7,909-point figure is in `make bench`'s dashboard row)."""
    from playwright.sync_api import expect

    emb = pd.read_parquet(dashboard_artifacts / "fixture" / "embedding.parquet")
    n = int(((emb.run_id == "v1_b0") & (emb.method == "tsne")).sum())
    url, page = live
    t0 = time.perf_counter()
    start(page, url, "/embedding?exp=fixture&run=v1_b0")
    drag = page.locator(".st-key-em_chart .nsewdrag").first
    drag.wait_for(timeout=60_000)
    print(f"embedding map: {n} points rendered in {time.perf_counter() - t0:.2f} s")
    assert page.locator(".st-key-em_chart canvas").count() >= 1  # Scattergl draws on a WebGL canvas
    box = drag.bounding_box()
    x0, y0, x1, y1 = box["x"] + 2, box["y"] + 2, box["x"] + box["width"] - 2, box["y"] + box["height"] - 2
    page.mouse.move(x0, y0)
    page.mouse.down()
    for x, y in ((x1, y0), (x1, y1), (x0, y1), (x0, y0 + 1)):
        page.mouse.move(x, y, steps=8)
    page.mouse.up()
    wait_idle(page)
    expect(page.get_by_role("heading", name=f"{n} selected images")).to_be_visible(timeout=30_000)
