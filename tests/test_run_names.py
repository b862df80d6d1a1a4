"""Run aliases and colours (pipeline/artifacts/run_names.py) and the paired bootstrap behind the A/B verdict."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pipeline.artifacts.catalog import ensemble_run_id
from pipeline.artifacts.run_names import run_alias, run_aliases, run_colour, run_description, run_sort_key
from pipeline.core.metrics import paired_bootstrap_deltas
from pipeline.core.model_specs import MODEL_SPECS

ALL = [s.short for s in MODEL_SPECS.values()]
V1, V2 = ALL[:5], ALL[5:]


def every_pipeline_run() -> list[str]:
    runs = ALL + ["v1_b0-vahadane", "v1_b0-macenko"]
    for group in (V1, V2, ALL):
        runs += [ensemble_run_id(m, group) for m in ("soft", "hard", "weighted", "stacking")]
    runs += [ensemble_run_id("soft-best", ["v1_b1", "v1_b3", "v2_b0", "v2_b1", "v2_s", "v1_b4"]),
             ensemble_run_id("hard-best", ["v1_b1", "v2_b1", "v2_s"])]
    return runs


def test_aliases_read_as_the_study_names_them():
    expected = {"v1_b0": "V1-B0", "v2_s": "V2-S", "v1_b0-vahadane": "V1-B0 Vahadane",
                ensemble_run_id("soft", V2): "V2 soft", ensemble_run_id("stacking", ALL): "All-10 stacking",
                ensemble_run_id("stacking", V1): "V1 stacking",
                ensemble_run_id("soft-best", ["v1_b1", "v1_b3", "v2_b0", "v2_b1", "v2_s", "v1_b4"]): "Best-6 soft",
                ensemble_run_id("hard", ["v1_b0", "v2_b1"]): "V1 B0 + V2 B1 hard"}
    assert {r: run_alias(r, ALL) for r in expected} == expected


def test_every_alias_is_unique_and_short():
    runs = every_pipeline_run()
    aliases = run_aliases(runs, ALL)
    assert len(set(aliases.values())) == len(runs)
    assert max(len(a) for a in aliases.values()) <= 24  # fits a picker and a chart title without cutting


def test_clashing_aliases_get_their_members():
    # Only four members in this experiment: the two-member V1 group and a custom pair read alike without context.
    a, b = ensemble_run_id("soft", ["v1_b0", "v1_b1"]), ensemble_run_id("soft", ["v1_b0", "v1_b2"])
    aliases = run_aliases([a, b], universe=["v1_b0", "v1_b1", "v2_b0"])
    assert aliases[a] == "V1 soft" and aliases[b] == "V1 B0·B2 soft"


def test_description_names_every_member():
    text = run_description(ensemble_run_id("stacking", ALL))
    assert all(run_alias(m) in text for m in ALL) and "stacking" in text


def test_colours_are_fixed_per_run_and_distinct_for_models():
    runs = every_pipeline_run()
    assert [run_colour(r, ALL) for r in runs] == [run_colour(r, ALL) for r in reversed(runs)][::-1]
    assert len({run_colour(r) for r in ALL}) == 10
    assert run_colour("v1_b0-vahadane") != run_colour("v1_b0")


def test_sort_order_singles_then_family_ensembles():
    runs = every_pipeline_run()
    ordered = sorted(runs, key=run_sort_key)
    assert ordered[:5] == ["v1_b0", "v1_b0-macenko", "v1_b0-vahadane", "v1_b1", "v1_b2"]
    assert ordered[12] == ensemble_run_id("soft", V1)


def test_paired_deltas_match_a_per_resample_sklearn_loop():
    rng = np.random.default_rng(3)
    n, groups = 120, np.repeat(np.arange(30), 4)
    y = rng.integers(0, 2, n)
    prob_a, prob_b = rng.random(n), np.clip(y * 0.6 + rng.random(n) * 0.5, 0, 1)
    pred_a, pred_b = (prob_a >= 0.5).astype(int), (prob_b >= 0.5).astype(int)
    out = paired_bootstrap_deltas(y, prob_a, pred_a, prob_b, pred_b, groups, n_boot=100, seed=5)
    acc, auc, brier = [], [], []
    # The resamples written out here from the documented rule (not by _patient_resamples): every patient has 4 images,
    # so one draw of 30 patients with replacement (numpy's generator, seed 5) is exactly n images.
    draws = np.random.default_rng(5)
    resamples = [np.concatenate([np.flatnonzero(groups == g) for g in draws.integers(0, 30, size=30)]) for _ in range(100)]
    for idx in resamples:
        yy = y[idx]
        acc.append((pred_b[idx] == yy).mean() - (pred_a[idx] == yy).mean())
        auc.append(roc_auc_score(yy, prob_b[idx]) - roc_auc_score(yy, prob_a[idx]))
        brier.append(((prob_b[idx] - yy) ** 2).mean() - ((prob_a[idx] - yy) ** 2).mean())
    for name, values in (("accuracy", acc), ("roc_auc", auc), ("brier", brier)):
        assert out[name] == pytest.approx((np.quantile(values, 0.025), np.quantile(values, 0.975)), abs=1e-9)
    assert out["accuracy"][0] > 0  # B is far better here: the CI excludes zero


def test_identical_runs_have_a_zero_delta():
    y = np.array([0, 1] * 20)
    p = np.linspace(0, 1, 40)
    out = paired_bootstrap_deltas(y, p, p >= 0.5, p, p >= 0.5, np.arange(40) // 2, n_boot=50)
    assert out["accuracy"] == (0.0, 0.0) and out["roc_auc"] == (0.0, 0.0)
