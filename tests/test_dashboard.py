"""Dashboard pages under Streamlit's AppTest against the synthetic fixture (tools/fixtures.py): all ten models,
every ensemble the pipeline writes, a stained twin, Grad-CAM maps and a stain cache. Expected numbers are
recomputed here from predictions.parquet with pandas/numpy, never read back from the page's own code."""

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from conftest import PROJECT_ROOT, render_page

from pipeline.artifacts.catalog import ensemble_run_id, parse_run_id
from pipeline.artifacts.predictions import member_runs, probability_matrix
from pipeline.artifacts.run_names import run_aliases
from pipeline.core.ensemble import combine
from tools.fixtures import MEMBERS, PATIENTS

APP = str(PROJECT_ROOT / "dashboard" / "app.py")
PAGES = ["overview", "confusion", "misclassified", "stain_comparison", "ensemble_builder", "training_curves", "gradcam", "embedding"]


def set_address(address):
    from streamlit import config

    config.set_option("server.address", address)


pytestmark = pytest.mark.usefixtures("loopback")  # conftest: AppTest has no server, the app is told it listens on 127.0.0.1


@pytest.fixture
def app(dashboard_artifacts, monkeypatch):
    """open_page(name, **query) renders one page of one experiment, as a URL with that query would."""
    def open_page(name, experiment="fixture", artifacts=None, **query):
        return render_page(artifacts or dashboard_artifacts, experiment, name, monkeypatch, **query)

    return open_page


@pytest.fixture(scope="module")
def preds(dashboard_artifacts):
    return pd.read_parquet(dashboard_artifacts / "fixture" / "predictions.parquet")


def shown(text: str) -> str:
    """What Markdown displays: backslash escapes removed (the pages escape artifact text, see dashboard/text.py)."""
    return re.sub(r"\\(.)", r"\1", text)


def texts(at) -> list[str]:
    return [shown(m.value) for m in at.markdown] + [shown(c.value) for c in at.caption]


def plotly_specs(at) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def accuracy(frame: pd.DataFrame) -> float:
    return float((frame["pred"] == frame["label"]).mean())


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders(app, page):
    at = app(page)
    assert at.title, page
    assert any("SYNTHETIC" in w.value for w in at.sidebar.warning)
    assert not [e.value for e in at.error if "cannot" in e.value or "not shown" in e.value]  # no reported problem


def test_overview_results_first_with_ties_named(app, preds):
    at = app("overview")
    test = preds[preds["split"] == "test"]
    acc = test.groupby("run_id").apply(accuracy)
    singles = acc[[r for r in acc.index if parse_run_id(r).kind == "single"]]  # stain-normalized runs count too
    best = sorted(singles[singles == singles.max()].index)
    assert best == ["v1_b0", "v2_b1"]  # the fixture's planted tie
    values = {m.label: m.value for m in at.metric}
    assert values["Best single model"] == f"{singles.max():.4f}"
    # the declared tie rule: higher ROC AUC wins (sklearn on the predictions, not the metrics file)
    auc = {r: roc_auc_score(test[test.run_id == r]["label"], test[test.run_id == r]["prob_malignant"]) for r in best}
    winner, other = sorted(best, key=lambda r: -auc[r])
    names = {"v1_b0": "V1-B0", "v2_b1": "V2-B1"}
    card = next(t for t in texts(at) if t.startswith(f"**{names[winner]}**"))
    assert f"tied on accuracy with {names[other]}" in card and "ties broken by higher ROC AUC" in card
    positives = (test[test["run_id"] == "v1_b0"]["label"] == 1).mean()
    assert values["Majority baseline"] == f"{max(positives, 1 - positives):.4f}"
    # the study's number, labelled with its protocol, greyed (not a metric) on SYNTHETIC data
    assert "The study" not in values and any(":gray[0.9958]" in t for t in texts(at))
    assert any("image-level split, real BreakHis, ImageNet weights" in t for t in texts(at))
    assert any(c.value.startswith("Not comparable with this experiment: SYNTHETIC data") for c in at.caption)
    # the first chart and the table come before the dataset counts
    assert at.subheader[0].value.startswith("Accuracy and ROC AUC")


def test_overview_states_the_paired_verdict(app, preds):
    """Best ensemble against best single model on the same images: the accuracy delta (numpy), McNemar's exact p
    (scipy's binomial test on the discordant pairs) and a word that agrees with the shown CI."""
    from scipy.stats import binomtest

    from dashboard.text import plain

    at = app("overview")
    box = next(t for t in [b.value for b in (*at.success, *at.info, *at.error)] if "Is the best ensemble better" in t)
    test = preds[preds["split"] == "test"]
    by = {r: g.set_index("image_id").sort_index() for r, g in test.groupby("run_id")}

    def brier(r):  # n/a for hard votes (a vote share is not a probability): ranks last
        hard = parse_run_id(r).kind == "ensemble" and parse_run_id(r).method.startswith("hard")
        return -np.inf if hard else -((by[r]["prob_malignant"] - by[r]["label"]) ** 2).mean()

    def best_of(ids):  # the declared rule: accuracy, then higher ROC AUC, then lower Brier score
        score = {r: (round((by[r]["pred"] == by[r]["label"]).mean(), 12),
                     round(roc_auc_score(by[r]["label"], by[r]["prob_malignant"]), 12), brier(r)) for r in ids}
        return max(ids, key=lambda r: score[r])

    single = best_of([r for r in by if parse_run_id(r).kind == "single"])
    ensemble = best_of([r for r in by if parse_run_id(r).kind == "ensemble"])
    names = run_aliases(list(by), member_runs(preds))
    assert f"{plain(names[ensemble])} against {plain(names[single])} on the same {len(by[single])} test images" in box
    a, b = by[single], by[ensemble]
    delta = (b["pred"] == b["label"]).mean() - (a["pred"] == a["label"]).mean()
    assert f"accuracy Δ {delta:+.4f}" in box
    only_a = int(((a["pred"] == a["label"]) & (b["pred"] != b["label"])).sum())
    only_b = int(((a["pred"] != a["label"]) & (b["pred"] == b["label"])).sum())
    assert f"McNemar p = {binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue:.3g}" in box
    lo, hi = map(float, re.search(r"95% CI ([+-][\d.]+) to ([+-][\d.]+)", box).groups())
    word = "better" if lo > 0 else "worse" if hi < 0 else "no clear difference"
    assert f"**{word}**" in box


def test_overview_counts_patient_folders_like_breakhis(app):
    at = app("overview")
    values = {m.label: m.value for m in at.metric}
    folders = len({(label, subtype, code) for subtype, label, code in PATIENTS})
    codes = len({code for _, _, code in PATIENTS})
    assert values["Images"] == str(len(PATIENTS) * 4 * 2)
    assert values["Patient folders / numeric ids"] == f"{folders} / {codes}" == "9 / 8"
    assert any("more than one of train/val/test" in e.value for e in at.error)  # the fixture split is image-level


def test_overview_table_has_readable_pinned_columns(app):
    at = app("overview", cols=["accuracy", "roc_auc", "brier"])
    table = at.dataframe[0].value
    assert {"run", "accuracy", "roc_auc", "brier"} <= set(table.columns)
    assert "patient_recognition_rate" in table.columns  # the frame keeps every column; column_order shows the chosen
    shown = at.multiselect(key="ov_cols")
    assert shown.value == ["accuracy", "roc_auc", "brier"]
    ranks = table.set_index("run_id")["rank"]
    assert ranks["v1_b0"] == ranks["v2_b1"] and ranks["v1_b0"].endswith("(tie)")


def test_member_toggle_rescoring_matches_pure_functions(app, preds):
    at = app("ensemble_builder")
    members = member_runs(preds)
    test = preds[(preds.split == "test") & preds.run_id.isin(members)]  # by hand: a plain pivot, numpy votes
    wide = test.pivot(index="image_id", columns="run_id", values="prob_malignant").sort_index()
    probs = wide[members].to_numpy(dtype=float).T
    y = test.drop_duplicates("image_id").set_index("image_id").loc[wide.index, "label"].to_numpy()

    def expected(subset, method="soft"):
        sub = probs[[members.index(m) for m in subset]]
        if method == "soft":
            pred = sub.mean(axis=0) >= 0.5
        else:  # majority of votes at 0.5; a tie goes to the mean probability (the fixture's recorded rule)
            votes, n = (sub >= 0.5).sum(axis=0), len(subset)
            pred = np.where(2 * votes == n, sub.mean(axis=0) >= 0.5, 2 * votes > n)
        return f"{(pred == y).mean():.4f}"

    metric = lambda: next(m.value for m in at.metric if m.label == "Accuracy")
    assert metric() == expected(members)
    assert len(at.checkbox) == 0 and len(at.multiselect) == 1  # one widget for the members, not one per member
    at.multiselect(key="ens_member_pick").unselect("v1_b0").run()
    rest = [m for m in members if m != "v1_b0"]
    assert metric() == expected(rest)
    at.radio(key="ens_method").set_value("hard").run()
    assert metric() == expected(rest, "hard")
    assert at.query_params["rule"] == "hard" and set(at.query_params["members"]) == set(rest)
    assert at.session_state["ensemble_last_ms"] > 0
    at.multiselect(key="ens_member_pick").unselect("v2_b1").run()
    at.multiselect(key="ens_member_pick").unselect("v1_b1").run()
    assert metric() == expected([m for m in rest if m not in ("v2_b1", "v1_b1")], "hard")


def test_builder_url_state_and_readable_weights(app, preds):
    chosen = ["v1_b0", "v1_b2", "v2_s"]
    at = app("ensemble_builder", members=chosen, rule="weighted", thr="0.4")
    assert at.multiselect(key="ens_member_pick").value == chosen
    assert at.slider(key="ens_threshold").value == pytest.approx(0.4)
    # Independent of fit_weights: a brute-force grid over the 3-member simplex (step 0.01) of validation log-loss,
    # from a plain pandas pivot of the members' val rows.
    val = preds[(preds.split == "val") & preds.run_id.isin(chosen)].pivot(index="image_id", columns="run_id", values="prob_malignant")
    y = preds[(preds.split == "val")].drop_duplicates("image_id").set_index("image_id").loc[val.index, "label"].to_numpy()
    p = np.clip(val[chosen].to_numpy(dtype=float), 1e-7, 1 - 1e-7)
    grid = np.array([(a, b, 1 - a - b) for a in np.arange(0, 1.001, 0.01) for b in np.arange(0, 1.001 - a, 0.01)])
    mix = np.clip(p @ grid.T, 1e-7, 1 - 1e-7)
    loss = -(y[:, None] * np.log(mix) + (1 - y[:, None]) * np.log(1 - mix)).mean(axis=0)
    best = grid[loss.argmin()]
    caption = next(c.value for c in at.caption if c.value.startswith("Weights fitted"))
    assert "np.float64" not in caption and "{" not in caption
    shown = [float(re.search(re.escape(name) + r" (\d\.\d\d)", caption).group(1)) for name in ["V1\\-B0", "V1\\-B2", "V2\\-S"]]
    assert np.abs(np.array(shown) - best).max() <= 0.03  # the grid's step plus the caption's rounding
    warned = any("of the weight on" in w.value for w in at.warning)
    if abs(max(shown) - 0.9) > 0.005:  # the page warns on the exact weight; the caption rounds it
        assert warned == bool(max(shown) >= 0.9)


def test_builder_stacking_is_read_only_from_the_pipeline_rows(app, preds):
    at = app("ensemble_builder", rule="stacking")
    stack = at.selectbox(key="ens_stack").value
    assert parse_run_id(stack).method == "stacking"
    assert any("read-only" in i.value for i in at.info)
    rows = preds[(preds["run_id"] == stack) & (preds["split"] == "test")]
    assert next(m.value for m in at.metric if m.label == "Accuracy") == f"{accuracy(rows):.4f}"


def test_builder_operating_point_and_agreement_scale(app, preds):
    at = app("ensemble_builder", panel="roc")  # the diagnostics are panels, opened from the URL
    specs = {s["layout"].get("title", {}).get("text"): s for s in plotly_specs(at)}
    roc = specs["ROC"]
    point = next(t for t in roc["data"] if t.get("name", "").startswith("operating point"))
    members = member_runs(preds)
    probs, meta = probability_matrix(preds, members, "test")
    pred, y = combine(probs, "soft").pred, meta["label"].to_numpy()
    assert point["x"][0] == pytest.approx(((pred == 1) & (y == 0)).sum() / (y == 0).sum())
    assert point["y"][0] == pytest.approx(((pred == 1) & (y == 1)).sum() / (y == 1).sum())
    heat = next(s for s in plotly_specs(app("ensemble_builder", panel="members")) if s["data"][0]["type"] == "heatmap")["data"][0]
    votes = probs >= 0.5
    lowest = min((votes[i] == votes[j]).mean() for i in range(len(members)) for j in range(len(members)))
    assert heat["zmin"] == pytest.approx(lowest) and heat["zmin"] > 0.3


def test_confusion_cell_from_url_lists_its_images(app, preds):
    a, b = "v1_b0", ensemble_run_id("soft", ["v1_b0", "v1_b1", "v1_b2", "v1_b3", "v1_b4"])
    at = app("confusion", a=a, b=b, cell="a:fn")
    rows = preds[(preds["run_id"] == a) & (preds["split"] == "test") & (preds["label"] == 1) & (preds["pred"] == 0)]
    assert any(f"of {len(rows)}**" in t for t in texts(at))
    assert "malignant predicted benign (FN) · A: V1-B0" in [shown(s.value) for s in at.subheader]
    assert sum(t.startswith(":") and "`SOB_" in t for t in texts(at)) == min(len(rows), 12)  # card headers


def test_confusion_difference_is_coloured_for_b(app, preds):
    a, b = "v1_b2", "v1_b0"
    at = app("confusion", a=a, b=b)
    diff = next(s for s in plotly_specs(at) if s["layout"]["title"]["text"].startswith("B − A"))["data"][0]
    test = preds[preds["split"] == "test"]

    def count(run, truth, pred):
        part = test[test["run_id"] == run]
        return int(((part["label"] == truth) & (part["pred"] == pred)).sum())

    for (truth, pred), colour, text in zip(zip(diff["y"], diff["x"]), diff["marker"]["color"], diff["text"]):
        change = count(b, truth, pred) - count(a, truth, pred)
        good = change if truth == pred else -change  # more right answers, or fewer wrong ones, is better
        assert colour == ("#1a7f37" if good > 0 else "#cf222e" if good < 0 else "#6e7781"), (truth, pred, change)
        assert text.startswith(f"{change:+d}")


def test_image_browser_filters_chips_and_reset_on_run_change(app, preds):
    rows = preds[(preds["run_id"] == "v1_b2") & (preds["split"] == "test")]
    errors = rows[rows["pred"] != rows["label"]]
    at = app("misclassified", run="v1_b2", true="benign", mag=["40", "100"])
    expected = errors[(errors["label"] == 0) & errors["magnification"].isin([40, 100])]
    assert len(expected) and any(f"of {len(expected)}**" in t for t in texts(at))
    chips = [shown(b.label) for b in at.button if b.key and b.key.startswith("br_chip_")]
    assert "true: benign ✕" in chips and "magnification: 40X ✕" in chips and "errors only ✕" in chips
    at.button(key=next(b.key for b in at.button if shown(b.label) == "magnification: 40X ✕")).click().run()
    assert at.multiselect(key="br_mag").value == [100] and at.query_params["mag"] in ("100", ["100"])
    at.selectbox(key="br_run").set_value("v2_b0").run()  # a new run starts from a clean slate
    assert at.multiselect(key="br_true").value == [] and at.multiselect(key="br_mag").value == []
    assert "true" not in at.query_params and "mag" not in at.query_params
    other = preds[(preds["run_id"] == "v2_b0") & (preds["split"] == "test")]
    n = int((other["pred"] != other["label"]).sum())
    assert any(f"1–{min(12, n)} of {n}**" in t for t in texts(at))


def test_image_browser_vote_strip_shows_only_members(app, preds):
    run = ensemble_run_id("soft", ["v2_b0", "v2_b1", "v2_b2", "v2_b3", "v2_s"])
    at = app("misclassified", run=run)
    strips = [t for t in texts(at) if t.startswith(":") and "badge[**" in t]
    assert strips
    for strip in strips:
        assert strip.count("badge[") == 6  # the ensemble itself, then its five members
        assert "V2 soft" in strip and "V1" not in strip


def test_image_browser_one_notice_for_missing_maps(app):
    at = app("misclassified", run="v1_b0-vahadane")  # the stained twin has no Grad-CAM maps
    notices = [i.value for i in at.info if "cached maps" in i.value]
    assert len(notices) == 1
    assert not any("no gradcam" in t.lower() for t in texts(at))


def test_built_ensemble_from_url_is_computed_with_the_pipeline_rules(app, preds):
    chosen = ("v1_b1", "v2_b0", "v2_s")
    at = app("misclassified", run=ensemble_run_id("hard", chosen) + "@0.6", errors="0")
    members = member_runs(preds)
    probs, meta = probability_matrix(preds, members, "test")
    res = combine(probs[[members.index(m) for m in chosen]], "hard", 0.6)
    assert at.selectbox(key="br_run").value.endswith("@0.6")
    assert any(f"of {len(meta)}**" in t for t in texts(at))
    confidence = np.where(res.pred == 1, res.score, 1 - res.score)
    first = meta.iloc[np.lexsort((meta["image_id"], -confidence))]
    assert first["image_id"].iloc[0] in next(t for t in texts(at) if t.startswith(":") and "`SOB" in t)


def test_stain_verdict_weighs_accuracy_auc_and_calibration(app, preds):
    at = app("stain_comparison")
    box = next(e.value for e in [*at.error, *at.warning, *at.info, *at.success] if "Verdict for stain" in e.value)
    for aspect in ("**accuracy**", "**ROC AUC**", "**calibration (Brier score)**"):
        assert aspect in box
    test = preds[preds["split"] == "test"]
    a, b = test[test["run_id"] == "v1_b0"].set_index("image_id"), test[test["run_id"] == "v1_b0-vahadane"].set_index("image_id")
    disagree = int((a["pred"] != b.loc[a.index, "pred"]).sum())
    assert any(f"**{disagree}** image(s) where A and B disagree" in t for t in texts(at))
    table = at.dataframe[0].value
    zero = table[table["Δ (B − A)"] == "±0"]
    assert "+0.0000" not in table["Δ (B − A)"].tolist() and (zero.empty or (zero["for B"] != "better").all())


def test_every_alias_is_unique_and_never_cut(app, preds):
    """Acceptance: an experiment with all ten models and every ensemble; every picker, chart and table shows full,
    unique aliases (a cut-off name would not be in the alias set)."""
    ids = list(pd.unique(preds["run_id"]))
    aliases = run_aliases(ids, member_runs(preds))
    assert len(ids) == 10 + 1 + 3 * 4 + 2 and len(set(aliases.values())) == len(ids)
    full = set(aliases.values())
    seen = set()
    longest = max(ids, key=lambda r: len(aliases[r]))  # the longest name, in every title that names a run
    at = app("confusion", a=longest, b="v1_b0")
    for box in (at.selectbox(key="cm_a"), at.selectbox(key="cm_b")):
        assert set(box.options) == full
        seen |= set(box.options)
    titles = [s["layout"]["title"]["text"] for s in plotly_specs(at)]
    assert titles[:2] == [f"A: {aliases[longest]}", "B: V1-B0"] and aliases[longest] in titles[2]
    at = app("misclassified")
    assert set(at.selectbox(key="br_run").options) == full
    at = app("overview")
    chart = plotly_specs(at)[0]
    assert set(chart["data"][0]["y"]) == full
    assert set(at.dataframe[0].value["run"]) == full
    at = app("ensemble_builder")
    assert set(at.multiselect(key="ens_member_pick").options) == {aliases[m] for m in MEMBERS}
    at = app("ensemble_builder", rule="stacking")
    assert set(at.selectbox(key="ens_stack").options) == {aliases[r] for r in ids if parse_run_id(r).method == "stacking"}
    at = app("training_curves", runs=list(MEMBERS))
    names = {t["name"].rsplit(" ", 1)[0] for t in plotly_specs(at)[0]["data"] if t["name"].endswith((" train", " val"))}
    assert names == {aliases[m] for m in MEMBERS}
    assert not any("…" in str(v) for v in seen | names)


def test_missing_artifacts_say_what_to_run(tmp_path, app):
    exp = tmp_path / "empty"
    exp.mkdir()
    pd.DataFrame({"image_id": ["x"], "label": [0], "class_name": ["benign"], "magnification": [40], "subtype_name": ["adenosis"],
                  "patient_id": ["1"], "patient_num": [1], "subtype": ["A"], "path": ["x.png"]}).to_parquet(exp / "manifest.parquet")
    for page in PAGES:
        at = app(page, experiment="empty", artifacts=tmp_path)
        assert any("python -m pipeline" in i.value for i in at.info), page
        assert not any("No predictions match" in i.value for i in at.info)


@pytest.fixture(scope="module")
def corrupt_artifacts(dashboard_artifacts, tmp_path_factory):
    """A copy of the fixture with truncated predictions/metrics parquet files and one corrupt PNG."""
    root = tmp_path_factory.mktemp("corrupt")
    exp = shutil.copytree(dashboard_artifacts / "fixture", root / "broken")
    for name in ("predictions.parquet", "metrics.parquet"):
        data = (exp / name).read_bytes()
        (exp / name).write_bytes(data[: len(data) // 2])
    return root


def test_truncated_parquet_names_the_file_and_the_command(app, corrupt_artifacts):
    for page in ("overview", "confusion", "misclassified", "ensemble_builder", "stain_comparison"):
        at = app(page, experiment="broken", artifacts=corrupt_artifacts)
        errors = [e.value for e in at.error]
        assert any("predictions" in e or "metrics" in e for e in errors), page
        message = shown(next(e for e in errors if "cannot be read" in e))
        assert "ArrowInvalid" in message and ".parquet cannot be read" in message and "Fix: `python -m pipeline" in message
    at = app("overview", experiment="broken", artifacts=corrupt_artifacts)
    assert {m.label: m.value for m in at.metric}["Images"] == "72"  # the rest of the page still works


def test_a_corrupt_png_breaks_one_card_not_the_page(app, dashboard_artifacts, tmp_path):
    artifacts = tmp_path / "artifacts"
    shutil.copytree(dashboard_artifacts / "fixture", artifacts / "pngs")
    data = tmp_path / "data"
    shutil.copytree(dashboard_artifacts.parent / "data", data)
    info = json.loads((artifacts / "pngs" / "dataset.json").read_text())
    (artifacts / "pngs" / "dataset.json").write_text(json.dumps({**info, "data_root": str(data)}))
    manifest = pd.read_parquet(artifacts / "pngs" / "manifest.parquet")
    preds = pd.read_parquet(artifacts / "pngs" / "predictions.parquet")
    rows = preds[(preds["run_id"] == "v1_b2") & (preds["split"] == "test")]
    errors = rows[rows["pred"] != rows["label"]]
    confidence = np.where(errors["pred"] == 1, errors["prob_malignant"], 1 - errors["prob_malignant"])
    victim = errors.assign(c=confidence).sort_values(["c", "image_id"], ascending=[False, True])["image_id"].iloc[0]
    (data / manifest.set_index("image_id").loc[victim, "path"]).write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    for page, query in (("misclassified", {"run": "v1_b2"}), ("gradcam", {"img": victim})):
        at = app(page, experiment="pngs", artifacts=artifacts, **query)
        assert any("cannot be decoded" in shown(e.value) and f"{victim}.png" in shown(e.value) for e in at.error), page
    at = app("misclassified", experiment="pngs", artifacts=artifacts, run="v1_b2")
    assert sum("`SOB_" in t for t in texts(at)) == min(12, int((rows["pred"] != rows["label"]).sum()))


def test_16_bit_and_palette_pngs_decode_like_8_bit(tmp_path):
    from PIL import Image

    from dashboard.data import decode_image

    grey = np.arange(0, 256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as img:
        assert img.mode.startswith("I")  # a real 16-bit greyscale PNG
    rgb = np.stack([grey, 255 - grey, grey // 2], axis=-1)
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(tmp_path / "p.png")
    assert np.abs(decode_image(tmp_path / "g16.png").astype(int) - grey[..., None]).max() <= 1
    with Image.open(tmp_path / "p.png") as img:
        expected = np.asarray(img.convert("RGB")).astype(int)
    assert np.abs(decode_image(tmp_path / "p.png").astype(int) - expected).max() == 0


def test_loopback_warning_when_exposed(app):
    at = app("overview")
    assert not any("listens on" in w.value for w in at.warning)
    set_address("0.0.0.0")
    at = app("overview")
    assert any("listens on 0\\.0\\.0\\.0" in w.value for w in at.warning)


def test_dashboard_does_not_import_tensorflow(dashboard_artifacts):
    import subprocess
    import sys

    code = (f"import os, sys; os.environ['HISTOCOMPARE_ARTIFACTS'] = {str(dashboard_artifacts)!r}; "
            "os.environ['HISTOCOMPARE_EXPERIMENT'] = 'fixture';"
            "from streamlit.testing.v1 import AppTest;"
            f"at = AppTest.from_file({APP!r}, default_timeout=90); at.run();"
            f"[(at.switch_page(f'../pages/{{p}}.py'), at.run()) for p in {PAGES!r}];"
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr[-1500:]


def test_grad_cam_panel_shows_each_familys_mean_probability_of_the_true_class(app, preds):
    """The Grad-CAM page's numbers against the predictions by hand: every member has a map of every test image in the
    fixture, so each family's caption is the mean P(true class) over its five members' rows of that image."""
    image_id = sorted(preds.loc[preds.split == "test", "image_id"].unique())[3]
    at = app("gradcam", img=image_id)
    rows = preds[(preds.image_id == image_id) & (preds.kind == "single") & (preds.stain == "none")]
    rows = rows.drop_duplicates("run_id")
    p_true = np.where(rows.label == 1, rows.prob_malignant, 1 - rows.prob_malignant)
    captions = " ".join(c.value for c in at.caption)
    for family in ("v1", "v2"):
        expected = p_true[rows.run_id.str.startswith(family + "_").to_numpy()].mean()
        assert f"{family.upper()} family mean P(true class) = {expected:.3f}" in captions


def test_training_curves_plot_the_runs_history(app):
    """The plotted values are the history.parquet the fixture wrote (loss 0.7, 0.5, 0.4 over three epochs)."""
    import base64

    at = app("training_curves", runs=["v1_b0"])
    spec = plotly_specs(at)[0]
    trace = next(t for t in spec["data"] if t.get("name", "").endswith(" train"))
    ys = trace["y"]
    if isinstance(ys, dict):  # plotly's binary encoding of a float array
        ys = np.frombuffer(base64.b64decode(ys["bdata"]), dtype=ys["dtype"])
    assert list(ys) == pytest.approx([0.7, 0.5, 0.4])


def test_overview_table_shows_no_none_only_numbers_and_n_a(app, dashboard_artifacts):
    """Issue 27: a missing value (a hard vote has no Brier score or ECE) reads "n/a", never "None"; every shown cell is
    the metric to 4 decimals, from metrics.parquet read here."""
    at = app("overview", cols=["accuracy", "brier", "ece"])
    metrics = pd.read_parquet(dashboard_artifacts / "fixture" / "metrics.parquet")
    test = metrics[(metrics["split"] == "test") & (metrics["group_type"] == "all")].set_index("run_id")
    table = at.dataframe[0].value.set_index("run_id")
    hard = [r for r in test.index if r.startswith("ensemble:hard")]
    assert hard and test.loc[hard, "brier"].isna().all()  # the fixture has the missing values this test is about
    for column in ("accuracy", "brier", "ece"):
        shown = table[f"{column} (shown)"]
        expected = {r: "n/a" if pd.isna(v) else f"{v:.4f}" for r, v in test[column].items()}
        assert shown.to_dict() == {r: expected[r] for r in shown.index}
    assert not table.filter(like="(shown)").isin(["None", "nan", ""]).any().any()


def test_pages_leave_the_shared_tables_unchanged(app, dashboard_artifacts):
    """The loaded tables are shared between reruns and sessions (st.cache_resource, issue 26), not copied: after every
    page has run, the cached predictions, manifest and split still equal a fresh read of their files."""
    from dashboard.data import _read_parquet, _stamp

    for page in PAGES:
        app(page)
    app("confusion", a="v1_b0", b="v2_b1")
    app("misclassified", run="v1_b0")
    for name in ("predictions", "manifest", "split", "metrics"):
        path = dashboard_artifacts / "fixture" / f"{name}.parquet"
        shared = _read_parquet(str(path), _stamp(path))
        pd.testing.assert_frame_equal(shared, pd.read_parquet(path))
