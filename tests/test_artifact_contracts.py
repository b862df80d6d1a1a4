"""Issue 22: the catalog's typed entries, the JSON rules and the swap-safe open, tested directly."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.artifacts.io import MAX_JSON_DEPTH, opened_inside, parse_json, read_json
from pipeline.artifacts.schemas import InvalidArtifact, check_frame
from pipeline.core.errors import PipelineError


def predictions(n: int = 4, **columns) -> pd.DataFrame:
    base = {"run_id": "v1_b0", "kind": "single", "model": "efficientnet_b0", "family": "v1", "stain": "none",
            "image_id": [f"img{i}" for i in range(n)], "split": "test", "label": [0, 1] * (n // 2),
            "prob_malignant": np.linspace(0, 1, n), "pred": [0, 1] * (n // 2)}
    return pd.DataFrame({**base, **columns})


@pytest.mark.parametrize("change, problem", [
    ({"label": [0, 1, 2, 1]}, "has label 2 "),
    ({"label": [0, 1, -1, 1]}, "has label -1 "),  # -1 only on the external split
    ({"prob_malignant": [0.1, np.nan, 0.3, 0.4]}, "has prob_malignant nan"),
    ({"prob_malignant": [0.1, 1.5, 0.3, 0.4]}, "has prob_malignant 1.5"),
    ({"prob_malignant": [0.1, np.inf, 0.3, 0.4]}, "has prob_malignant inf"),
    ({"image_id": ["a", "a", "b", "c"]}, "duplicate rows for (run_id, split, image_id) = ('v1_b0', 'test', 'a')"),
    ({"kind": "mystery"}, "has kind 'mystery'"),
    ({"run_id": [None, "a", "b", "c"]}, "column run_id has missing values"),
    ({"label": ["0", "1", "0", "1"]}, "column label is"),
])
def test_predictions_entry_refuses_out_of_contract_values(change, problem):
    with pytest.raises(InvalidArtifact) as err:
        check_frame("predictions", predictions(**change), "/x/predictions.parquet", "/x")
    assert problem in str(err.value) and "re-create it with: python -m pipeline train /x" in str(err.value)


def test_unlabelled_external_rows_and_categorical_columns_are_accepted():
    external = predictions(split="external", label=-1)
    assert check_frame("predictions", external, "p").equals(external)
    categorical = predictions().astype({"run_id": "category", "split": "category"})
    checked = check_frame("predictions", categorical, "p")
    assert not isinstance(checked["run_id"].dtype, pd.CategoricalDtype) and checked["run_id"].tolist() == ["v1_b0"] * 4


def test_a_history_without_loss_and_all_nan_accuracy_is_refused():
    history = pd.DataFrame({"epoch": [1, 2], "val_loss": [0.5, 0.4], "val_accuracy": [np.nan, np.nan]})
    with pytest.raises(InvalidArtifact, match="lacks column\\(s\\) loss"):
        check_frame("history", history, "h")


def test_a_diverged_run_does_not_complete():
    from pipeline.artifacts.predictions import make_rows

    frame = pd.DataFrame({"image_id": ["a", "b"], "split": ["val", "test"], "label": [0, 1]})
    with pytest.raises(PipelineError, match="2 of 2 predicted probabilities are not finite .*the run is not complete"):
        make_rows("v1_b0", "single", "efficientnet_b0", "v1", "none", frame, np.array([np.nan, np.nan]))


@pytest.mark.parametrize("text, problem", [("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), "nested deeper"),
                                           ("[" * 100_000 + "]" * 100_000, "nested deeper"),
                                           ('{"a": 1e999}', "not finite"), ('{"a": NaN}', "not a finite number"),
                                           ('{"a": -Infinity}', "not a finite number")])
def test_json_artifacts_hold_finite_numbers_and_bounded_nesting(text, problem, tmp_path):
    with pytest.raises(ValueError, match=problem):
        parse_json(text)
    (tmp_path / "x.json").write_text(text)
    with pytest.raises(PipelineError, match=f"x.json is not a readable JSON file .*{problem}"):
        read_json(tmp_path / "x.json")
    assert parse_json("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH) is not None


def test_a_damaged_stamp_does_not_block_force(demo_experiment, tmp_path):
    import shutil

    from pipeline.cli import main

    exp = tmp_path / "exp"
    shutil.copytree(demo_experiment, exp)
    (exp / "stamps").mkdir(exist_ok=True)
    (exp / "stamps" / "split.json").write_text("[" * 100_000 + "]" * 100_000)
    assert main(["split", str(exp), "--mode", "patient", "--force"]) == 0
    assert json.loads((exp / "stamps" / "split.json").read_text())["stage"] == "split"


def test_an_image_swapped_for_a_link_after_the_check_is_not_followed_out(tmp_path):
    root, outside = tmp_path / "data", tmp_path / "secret.png"
    root.mkdir()
    (root / "a.png").write_bytes(b"inside")
    outside.write_bytes(b"secret")
    with opened_inside(root, root / "a.png") as name:
        os.replace(root / "a.png", root / "moved.png")  # swapped while open: the checked file is still read
        (root / "a.png").symlink_to(outside)
        assert Path(name).read_bytes() == b"inside"
    with pytest.raises(PipelineError, match="outside"):
        with opened_inside(root, root / "a.png"):
            pass
    (root / "b.png").symlink_to(root / "moved.png")  # a link that stays inside the root is fine
    with opened_inside(root, root / "b.png") as name:
        assert Path(name).read_bytes() == b"inside"
