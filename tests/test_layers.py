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


# -- tooling stays out of the product ---------------------------------------------------------------------------
PRODUCT = ("pipeline", "dashboard", "pages", "histocompare")
TOOLING = {"tools", "tests", "conftest", "planted_experiments", "pngcraft"}
# What a user runs: the two `python -m` entry points, the launcher (`make demo`, `histocompare demo`), the installed
# command, the Streamlit script and the page scripts it loads by path (dashboard/nav.py).
ROOTS = ["pipeline/__main__.py", "pipeline/launch.py", "dashboard/__main__.py", "dashboard/app.py", "histocompare/cli.py",
         "histocompare/__main__.py", *(f"pages/{p.name}" for p in (PROJECT_ROOT / "pages").glob("*.py"))]


def module_file(name: str) -> Path | None:
    """The source file of a dotted module name in this checkout (a module or a package's __init__), else None."""
    base = PROJECT_ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported_files(path: Path) -> set[Path]:
    """Every file of this checkout that ``path`` imports (packages' __init__ included), at any depth of the code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in names:
            parts = name.split(".")
            found.update(f for i in range(1, len(parts) + 1) if (f := module_file(".".join(parts[:i]))))
    return found


def test_the_product_never_imports_tooling_or_tests():
    bad = [f"{p.relative_to(PROJECT_ROOT)}: {n}" for p in files(*PRODUCT) for n in imports_of(p) if n.split(".")[0] in TOOLING]
    assert not bad, bad


def test_tools_import_the_product_not_the_pages():
    """tools/ may use the product; pages are scripts Streamlit runs, never imported; and no tool reaches into tests/
    (what tests and tools share, the synthetic experiments, lives in tools/fixtures.py)."""
    test_modules = {p.stem for p in (PROJECT_ROOT / "tests").glob("*.py")}
    bad = [f"{p.relative_to(PROJECT_ROOT)}: {n}" for p in files("tools") for n in imports_of(p)
           if n.split(".")[0] in {"pages", "tests"} | test_modules]
    assert not bad, bad
    assert any(n.startswith("pipeline") for p in files("tools") for n in imports_of(p))  # the walk sees tools/ at all


def test_every_product_module_is_reached_from_what_a_user_runs():
    """No module under pipeline/, dashboard/ or pages/ is there only for tests, benchmarks or screenshots: each one is
    imported, at some depth, by an entry point (the walk follows imports inside functions too)."""
    seen: set[Path] = set()
    todo = [PROJECT_ROOT / r for r in ROOTS]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo.extend(imported_files(path) - seen)
    unreached = sorted(str(p.relative_to(PROJECT_ROOT)) for p in files("pipeline", "dashboard", "pages") if p not in seen)
    assert not unreached, f"imported only by tests or tooling (move to tools/ or tests/): {unreached}"
    assert PROJECT_ROOT / "pipeline" / "stages" / "train.py" in seen  # the walk reaches deep modules (not vacuous)
