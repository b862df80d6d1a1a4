"""The stages' declarations (pipeline/stages/declarations.py) are the runner's stage order and --force closure, name
real catalog entries, agree with every stage's up-to-date stamp, and the cheap stages write what they declare."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from conftest import PROJECT_ROOT
from pipeline.artifacts.catalog import Catalog, RunFiles
from pipeline.stages.declarations import (DECLARATIONS, RUNNER_ENTRIES, StageDeclaration, declared_inputs, depends_on,
                                          stage_order)

MODULES = {"data": "demo_data"}  # stage -> its module under pipeline/stages/, when the names differ


def test_the_runner_takes_its_order_and_closure_from_the_declarations():
    from pipeline.runner import DEPENDS_ON, STAGES, with_dependents

    assert STAGES == ("data", "index", "split", "stain", "train", "ensemble", "neighbours", "evaluate", "gradcam")
    assert DEPENDS_ON == depends_on(DECLARATIONS)
    # read off the declarations by hand: stain is read by train; train's outputs by ensemble, neighbours, gradcam;
    # evaluate reads the merged predictions (runs' and ensembles') and the neighbour summary
    assert with_dependents(["stain"]) == {"stain", "train", "ensemble", "neighbours", "evaluate", "gradcam"}
    assert with_dependents(["ensemble"]) == {"ensemble", "evaluate"}
    assert with_dependents(["gradcam"]) == {"gradcam"}


def test_the_order_does_not_depend_on_the_declaration_order():
    order = stage_order(tuple(reversed(DECLARATIONS)))
    deps = depends_on(DECLARATIONS)
    assert sorted(order) == sorted(d.name for d in DECLARATIONS)
    assert all(order.index(up) < order.index(stage) for stage, ups in deps.items() for up in ups)


def test_a_cycle_or_two_writers_of_one_entry_is_refused():
    a, b = StageDeclaration("a", reads=("y",), writes=("x",)), StageDeclaration("b", reads=("x",), writes=("y",))
    with pytest.raises(ValueError, match="cycle"):
        stage_order((a, b))
    with pytest.raises(ValueError, match="written by both"):
        depends_on((a, dataclasses.replace(b, writes=("x",))))


def test_every_declared_entry_is_a_catalog_entry():
    names = {e for d in DECLARATIONS for e in (*d.reads, *d.writes)}
    unknown = [e for e in names if e != "data_root" and e not in RUNNER_ENTRIES
               and not (hasattr(RunFiles, e[4:]) if e.startswith("run.") else hasattr(Catalog, e))]
    assert not unknown


class _Names:
    """A stand-in catalog whose entries are their own names (to read off which entries a helper returns)."""

    def __getattr__(self, name: str):
        if name in ("stain_target", "stain_images", "stain_index", "stain_run", "stamp", "run"):
            return lambda *a: None  # keyed entries are methods of the catalog: left to the stage
        return Path(name)


NAMES = _Names()


def test_stamp_inputs_derived_from_the_declarations_are_the_former_hand_written_lists():
    """The stamps' keys are unchanged (an existing experiment stays up to date): the derived inputs are exactly the
    lists the stages wrote by hand before (read off the previous code)."""
    catalog = Catalog("exp")
    assert set(declared_inputs("split", catalog)) == {catalog.manifest}
    assert set(declared_inputs("stain", catalog)) == {catalog.manifest, catalog.split}
    assert set(declared_inputs("neighbours", catalog)) == {catalog.manifest, catalog.split}
    assert set(declared_inputs("evaluate", catalog)) == {catalog.predictions, catalog.manifest, catalog.neighbour_summary}


def _stamp_entries(module: str) -> set[str]:
    """Catalog entries named in the ``inputs=`` of every ``Stamp(...)`` of a stage module (following a variable to its
    assignment in the module): ``catalog.manifest`` -> manifest, ``catalog.run(r).features`` -> run.features."""
    tree = ast.parse((PROJECT_ROOT / "pipeline" / "stages" / f"{module}.py").read_text())
    assigned = {t.id: node.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
                for t in node.targets if isinstance(t, ast.Name)}

    def entries(expr: ast.AST, seen: frozenset = frozenset()) -> set[str]:
        out = set()
        for node in ast.walk(expr):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "declared_inputs":
                stage = node.args[0].value  # the stamp takes a stage's declared reads: resolve them as the helper does
                out |= {p.name for p in declared_inputs(stage, NAMES)}
            elif isinstance(node, ast.Attribute):
                if isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Attribute) and node.value.func.attr == "run":
                    out.add(f"run.{node.attr}")
                elif isinstance(node.value, ast.Name) and node.value.id in ("catalog", "dst") and node.attr != "run":
                    out.add(node.attr)
            elif isinstance(node, ast.Name) and node.id in assigned and node.id not in seen:
                out |= entries(assigned[node.id], seen | {node.id})
        return out

    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Stamp":
            found |= {e for kw in node.keywords if kw.arg == "inputs" for e in entries(kw.value)}
    return found


@pytest.mark.parametrize("decl", DECLARATIONS, ids=lambda d: d.name)
def test_every_stamp_input_is_a_declared_read(decl):
    """A stage's up-to-date check hashes only what it declares it reads (or its own per-run outputs)."""
    found = _stamp_entries(MODULES.get(decl.name, decl.name))
    assert found <= set(decl.reads) | set(decl.writes), found - set(decl.reads) - set(decl.writes)
    if decl.name in ("split", "stain", "ensemble", "neighbours", "evaluate"):
        assert found & set(decl.reads)  # the walk sees these stamps' inputs (not vacuous)


def test_the_cheap_stages_write_what_they_declare(tmp_path):
    from pipeline.config import config_from_dict
    from pipeline.runner import run_pipeline

    cfg = config_from_dict({"experiment": {"name": "decl", "data_root": str(tmp_path / "data"), "out_dir": str(tmp_path / "exp"),
                                           "synthetic": True, "demo_patients": 8, "demo_images_per_patient": 2}})
    run_pipeline(cfg, only=["data", "index", "split"])
    catalog = Catalog(cfg.out_dir)
    for decl in DECLARATIONS[:3]:
        for entry in decl.writes:
            path = cfg.data_root if entry == "data_root" else getattr(catalog, entry)
            assert path.exists(), f"{decl.name} declares {entry} but did not write {path}"
