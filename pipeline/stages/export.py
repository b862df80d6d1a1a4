"""Stage ``export``: one fitted ensemble of an experiment as a single Keras model (``histocompare export``).

The ensemble's members (each at its own input size), its combination rule with the exact fitted weights,
threshold and, for stacking, the saved meta-model become one ``.keras`` file that takes a batch of images and
returns P(malignant): the layers live in ``pipeline.ml.export``. Nothing is refitted; what export cannot
reproduce (a member trained on padded images) is a one-line error before anything is written.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.artifacts.catalog import Catalog
from pipeline.artifacts.io import atomic_path, read_json, read_json_object
from pipeline.core.errors import PipelineError
from pipeline.stages.predict import trained_runs


def run_export(source: Path | str, run_id: str, out: Path | str) -> Path:
    """Write ``out`` (.keras): the ensemble ``run_id`` of ``source`` as one model (see ``pipeline.ml.export``)."""
    from pipeline.artifacts.catalog import parse_run_id

    source, out = Path(source), Path(out)
    ref = parse_run_id(run_id)
    if ref.kind != "ensemble":
        raise PipelineError(f"{run_id!r} is a single run: its runs/{run_id}/model.keras is already one model; export takes an ensemble")
    if out.suffix != ".keras":
        raise PipelineError(f"--out {out} must end in .keras")
    catalog = Catalog(source)
    if not catalog.ensembles.exists():
        raise PipelineError(f"{source} has no ensembles.json; run `python -m pipeline ensemble {source}` first")
    record = read_json(catalog.ensembles)
    members = list(ref.members)
    method = ref.method.removesuffix("-best")
    group = next((g for g, names in (record.get("groups") or {}).items() if list(names) == members), None)
    if ref.method.endswith("-best"):
        best = record.get(f"best_{method}_subset") or {}
        if list(best.get("members", [])) != members:
            raise PipelineError(f"{run_id} is not the validation-best {method} subset recorded in {catalog.ensembles}")
    elif group is None:
        raise PipelineError(f"{run_id} is not an ensemble of {source} (groups: {sorted(record.get('groups') or {})}); "
                            f"see its ensembles.json")
    if method == "stacking" and not catalog.stacking_model(group).is_file():
        raise PipelineError(f"{source} has no saved stacking meta-model for {group}; re-run `python -m pipeline ensemble {source}`")
    runs = trained_runs(source)
    lacking = [m for m in members if m not in runs]
    if lacking:
        raise PipelineError(f"member run(s) {lacking} of {run_id} have no trained model in {source}")
    infos = {m: read_json_object(catalog.run(m).info) for m in members}
    padded = [m for m, info in infos.items() if ((info.get("resolved_config") or {}).get("train") or {}).get("resize") == "pad"]
    if padded:
        raise PipelineError(f"member(s) {padded} were trained on padded images (resize = pad), which export does not reproduce")
    from pipeline.ml.runtime import quiet_tensorflow

    quiet_tensorflow()
    import keras

    from pipeline.ml.export import build_ensemble_model
    from pipeline.ml.models import FEATURE_LAYER, load_classifier

    loaded = {m: (load_classifier(catalog.run(m).model), int(infos[m]["image_size"])) for m in members}
    cfg = record.get("config") or {}
    weights = [record["weights"][group][m] for m in members] if method == "weighted" else None
    meta = keras.models.load_model(catalog.stacking_model(group), safe_mode=True) if method == "stacking" else None
    model = build_ensemble_model(loaded, method, weights, float(cfg.get("threshold", 0.5)), meta, FEATURE_LAYER)
    with atomic_path(out, ".keras") as tmp:
        model.save(tmp)
    print(f"wrote {out}: {run_id} ({len(members)} members, sizes {sorted({s for _, s in loaded.values()})}); load with "
          f"`import pipeline.ml.export` then keras.models.load_model(path, safe_mode=True)")
    return out
