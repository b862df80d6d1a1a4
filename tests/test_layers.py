"""The package's layers point one way: core <- artifacts <- ml <- stages <- cli/runner; the dashboard reads
only core and artifacts. Checked on the source (every import statement, top-level or inside a function)."""

import ast
from pathlib import Path

import pytest

from conftest import PROJECT_ROOT

HEAVY = {"tensorflow", "keras", "tf_keras_vis"}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def files(*folders: str) -> list[Path]:
    return sorted(p for f in folders for p in (PROJECT_ROOT / f).rglob("*.py"))


# layer -> pipeline sub-packages it may import
ALLOWED = {
    "pipeline/core": {"pipeline.core"},
    "pipeline/artifacts": {"pipeline.core", "pipeline.artifacts"},
    "pipeline/ml": {"pipeline.core", "pipeline.artifacts", "pipeline.ml", "pipeline.config", "pipeline.progress"},
    "dashboard": {"pipeline.core", "pipeline.artifacts", "dashboard"},
    "pages": {"pipeline.core", "pipeline.artifacts", "dashboard"},
}


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_point_inwards(layer):
    bad = []
    for path in files(layer):
        for name in imports_of(path):
            top = name.split(".")[0]
            if top in HEAVY and layer in ("pipeline/core", "pipeline/artifacts", "dashboard", "pages"):
                bad.append(f"{path.relative_to(PROJECT_ROOT)} imports {name}")
            if top in ("pipeline", "dashboard") and not any(name == a or name.startswith(a + ".") for a in ALLOWED[layer]):
                bad.append(f"{path.relative_to(PROJECT_ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


def test_no_streamlit_or_test_code_in_the_pipeline():
    bad = [f"{p.relative_to(PROJECT_ROOT)}: {n}" for p in files("pipeline") for n in imports_of(p)
           if n.split(".")[0] in ("streamlit", "conftest", "tests", "dashboard")]
    assert not bad, bad


def test_stages_do_not_import_the_cli_or_runner():
    bad = [f"{p.relative_to(PROJECT_ROOT)}: {n}" for p in files("pipeline/stages") for n in imports_of(p)
           if n in ("pipeline.cli", "pipeline.runner")]
    assert not bad, bad


def test_artifact_paths_are_built_only_by_the_catalog():
    """No module outside the catalog joins an artifact's file name onto a folder by hand."""
    names = ["manifest.parquet", "split.parquet", "predictions.parquet", "metrics.parquet", "subsets.parquet", "run.json",
             "history.parquet", "model.keras", "state.json", "features.npz", "target.json", "dataset.json",
             "ensemble_predictions.parquet", "index.parquet", "stain_run.json", "rejects.parquet", "ensembles.json",
             "neighbours.parquet", "neighbour_summary.parquet", "embedding.parquet"]
    bad = []
    for path in files("pipeline", "dashboard", "pages"):
        if path.name == "catalog.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
                right = node.right
                if isinstance(right, ast.Constant) and right.value in names:
                    bad.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno} builds .../{right.value}")
    assert not bad, "\n".join(bad)
