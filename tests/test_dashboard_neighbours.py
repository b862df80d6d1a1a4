"""The embedding map page, the image browser's "nearest training images" and the overview's same-patient column, under
AppTest against the synthetic fixture (tools/fixtures.py: planted per-patient features through the stage's pure
functions). Expected values are recomputed from the fixture's files with pandas, never read from the page's code."""

import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import render_page

from dashboard.text import plain
from pipeline.artifacts.catalog import Catalog



@pytest.fixture
def open_page(dashboard_artifacts, monkeypatch, loopback):  # loopback: AppTest has no server (conftest)
    def run(name, artifacts=None, **query):
        return render_page(artifacts or dashboard_artifacts, "fixture", name, monkeypatch, **query)

    return run


def test_embedding_map_lists_a_patients_images(open_page, dashboard_artifacts):
    catalog = Catalog(dashboard_artifacts / "fixture")
    manifest = pd.read_parquet(catalog.manifest)
    emb = pd.read_parquet(catalog.embedding)
    at = open_page("embedding", run="v1_b0", patient="1001")
    chart = at.get("plotly_chart")
    assert len(chart) == 1
    n = int(((emb.run_id == "v1_b0") & (emb.method == "tsne")).sum())
    assert any(c.value.startswith(f"{n} images of {plain('V1-B0')} (t-SNE)") for c in at.caption)  # its display name
    expected = manifest[manifest.patient_id == "1001"]
    assert at.subheader[0].value == f"{len(expected)} selected images"
    thumbs = [c.value for c in at.caption if "patient 1001" in c.value]
    assert len(thumbs) == len(expected)
    assert len(at.get("page_link")) >= 1  # "Open these patients in the image browser"


def test_embedding_map_without_artifacts_says_what_to_run(open_page, dashboard_artifacts, tmp_path):
    root = tmp_path / "artifacts"
    shutil.copytree(dashboard_artifacts / "fixture", root / "fixture")
    Catalog(root / "fixture").embedding.unlink()
    at = open_page("embedding", artifacts=root)
    assert any("python -m pipeline neighbours" in i.value for i in at.info)


def test_image_browser_card_opens_its_nearest_training_images(open_page, dashboard_artifacts):
    rows = pd.read_parquet(Catalog(dashboard_artifacts / "fixture").neighbours)
    at = open_page("misclassified", run="v1_b0")
    buttons = [b for b in at.button if b.key and b.key.startswith("br_nb_")]
    assert buttons, "every card has a 'Nearest training images' button"
    buttons[0].click()
    at.run()
    assert not at.exception
    image = next(m.value for m in at.markdown if "feature space" in m.value).split("`")[1]
    mine = rows[(rows.run_id == "v1_b0") & (rows.image_id == image)].sort_values("rank")
    lines = [m.value for m in at.markdown if "similarity" in m.value]
    assert len(lines) == len(mine) and len(mine) == 3
    for line, r in zip(lines, mine.itertuples()):
        assert line.startswith(f"#{r.rank} ") and f"similarity {r.similarity:.3f}" in line
        assert ("same patient" in line) == (r.neighbour_patient == r.patient_id)


def test_image_browser_without_neighbours_says_what_to_run(open_page, dashboard_artifacts, tmp_path):
    root = tmp_path / "artifacts"
    shutil.copytree(dashboard_artifacts / "fixture", root / "fixture")
    Catalog(root / "fixture").neighbours.unlink()
    at = open_page("misclassified", artifacts=root, run="v1_b0")
    assert any("python -m pipeline neighbours" in c.value for c in at.caption)
    assert not [b for b in at.button if b.key and b.key.startswith("br_nb_")]


def test_overview_shows_the_same_patient_neighbour_rate(open_page, dashboard_artifacts):
    catalog = Catalog(dashboard_artifacts / "fixture")
    summary = pd.read_parquet(catalog.neighbour_summary)
    at = open_page("overview")
    table = at.dataframe[0].value.set_index("run_id")
    expected = summary[summary.split == "test"].set_index("run_id")["same_patient_neighbour_rate"]
    assert np.allclose(table.loc[expected.index, "same_patient_neighbour_rate"], expected)
    assert table.loc[[r for r in table.index if r.startswith("ensemble:")], "same_patient_neighbour_rate"].isna().all()
