"""Stage 2, ``split``: the study's image-level split and a leak-free patient-level split.

``paper`` reproduces the published protocol: per (class x magnification) stratum, shuffle, take
``floor(n * p)`` images for validation and for test, the rest for training. Images of one patient
land on both sides, which is why its accuracy is optimistic; the leakage report makes that visible.

``patient`` keeps every patient (``patient_id`` folder, or the stricter numeric ``patient_num``) on
exactly one side, stratified by class and, as far as the counts allow, by subtype. ``folds > 1``
draws independent repeats (the original BreakHis protocol repeats a patient split five times).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from pipeline.core.errors import PipelineError

SPLITS = ("train", "val", "test")


def parse_ratios(text: str | list[float] | tuple[float, ...]) -> tuple[float, float, float]:
    """Parse ``0.7,0.15,0.15`` (or a list) into validated (train, val, test) ratios."""
    problem = f"ratios must be three positive numbers summing to 1 (train,val,test), got {text!r}"
    try:
        values = [float(x) for x in (text.split(",") if isinstance(text, str) else text)]
    except (TypeError, ValueError):
        raise PipelineError(problem) from None
    if len(values) != 3 or not all(v > 0 for v in values) or not math.isclose(sum(values), 1.0, abs_tol=1e-6):
        raise PipelineError(problem)
    return values[0], values[1], values[2]


def paper_split(manifest: pd.DataFrame, ratios=(0.7, 0.15, 0.15), seed: int = 0) -> pd.DataFrame:
    """Image-level split stratified by class x magnification, floor per stratum (the study's rule)."""
    rng = np.random.default_rng(seed)
    parts = []
    for _, stratum in manifest.sort_values("image_id").groupby(["label", "magnification"], sort=True):
        ids = stratum["image_id"].to_numpy()[rng.permutation(len(stratum))]
        n_val, n_test = math.floor(len(ids) * ratios[1]), math.floor(len(ids) * ratios[2])
        labels = ["val"] * n_val + ["test"] * n_test + ["train"] * (len(ids) - n_val - n_test)
        parts.append(pd.DataFrame({"image_id": ids, "split": labels}))
    return pd.concat(parts, ignore_index=True)


def _assign_groups(groups: pd.DataFrame, ratios, rng: np.random.Generator, class_name: str) -> dict:
    """Greedy assignment of patient groups to splits, filling the split with the largest image deficit.

    Groups are visited roughly largest first (sizes randomly jittered, so repeats differ) so that big
    patients cannot push a split far past its target at the end; subtype deficits break near-ties so
    subtypes spread out.
    """
    if len(groups) < 3:
        raise PipelineError(
            f"cannot make a patient split: class '{class_name}' has {len(groups)} patient group(s) "
            f"with {int(groups['images'].sum())} images; train, val and test each need at least one patient per class"
        )
    jitter = rng.uniform(0.25, 1.75, len(groups))  # mostly large-first, but repeats (folds) really differ
    groups = groups.assign(_order=groups["images"].to_numpy() * jitter).sort_values("_order", ascending=False)
    total = groups["images"].sum()
    subtype_totals = groups.groupby("subtype")["images"].sum()
    filled = {s: 0.0 for s in SPLITS}
    sub_filled = {(s, st): 0.0 for s in SPLITS for st in subtype_totals.index}
    assignment: dict = {}
    def score(split: str, subtype: str) -> float:
        target = ratios[SPLITS.index(split)]
        class_deficit = target - filled[split] / total
        sub_deficit = target - sub_filled[(split, subtype)] / subtype_totals[subtype]
        return class_deficit + 0.25 * sub_deficit

    for _, g in groups.iterrows():
        best = max(SPLITS, key=lambda split: score(split, g["subtype"]))
        assignment[g["group"]] = best
        filled[best] += g["images"]
        sub_filled[(best, g["subtype"])] += g["images"]
    for split in ("val", "test"):  # every side needs each class; move the smallest train group if not
        if split not in assignment.values():
            train_groups = [k for k, v in assignment.items() if v == "train"]
            smallest = min(train_groups, key=lambda k: int(groups.loc[groups["group"] == k, "images"].iloc[0]))
            assignment[smallest] = split
    if "train" not in assignment.values():
        raise PipelineError(f"cannot make a patient split: class '{class_name}' would have no training patient")
    return assignment


def patient_split(manifest: pd.DataFrame, ratios=(0.7, 0.15, 0.15), seed: int = 0,
                  group_by: str = "patient_num") -> pd.DataFrame:
    """Leak-free split: every patient group on exactly one side, stratified by class (and subtype)."""
    if group_by not in ("patient_id", "patient_num"):
        raise PipelineError(f"--group-by must be patient_id or patient_num, got {group_by!r}")
    rng = np.random.default_rng(seed)
    grouped = (manifest.groupby(group_by)
               .agg(images=("image_id", "size"), label=("label", "max"), subtype=("subtype", "first"))
               .reset_index().rename(columns={group_by: "group"}).sort_values("group"))
    mixed = manifest.groupby(group_by)["label"].nunique()
    if (mixed > 1).any():
        raise PipelineError(f"patient group(s) {list(mixed[mixed > 1].index)} hold both classes; cannot stratify by class")
    assignment: dict = {}
    for label, class_groups in grouped.groupby("label", sort=True):
        assignment.update(_assign_groups(class_groups, ratios, rng, "benign" if label == 0 else "malignant"))
    return pd.DataFrame({"image_id": manifest["image_id"].to_numpy(),
                         "split": manifest[group_by].map(assignment).to_numpy()})


def make_split(manifest: pd.DataFrame, mode: str, ratios=(0.7, 0.15, 0.15), seed: int = 0,
               group_by: str = "patient_num", folds: int = 1) -> pd.DataFrame:
    """Split rows ``image_id, split, fold`` for ``folds`` independent repeats (fold k uses seed + k)."""
    if mode not in ("paper", "patient"):
        raise PipelineError(f"--mode must be 'paper' or 'patient', got {mode!r}")
    if folds < 1:
        raise PipelineError(f"--folds must be >= 1, got {folds}")
    for label, name in ((0, "benign"), (1, "malignant")):
        if not (manifest["label"] == label).any():
            raise PipelineError(f"cannot split: class '{name}' has no images")
    frames = []
    for fold in range(folds):
        if mode == "paper":
            frame = paper_split(manifest, ratios, seed + fold)
        else:
            frame = patient_split(manifest, ratios, seed + fold, group_by)
        frame["fold"] = fold
        check_sides(manifest, frame, mode, fold)
        frames.append(frame)
    out = pd.concat(frames, ignore_index=True)
    out["fold"] = out["fold"].astype("int16")
    return out


def check_sides(manifest: pd.DataFrame, split: pd.DataFrame, mode: str = "paper", fold: int = 0) -> None:
    """Every side of a split needs images of both classes; refuse (before anything is written) one that has not.

    The paper rule floors ``n * ratio`` per class x magnification stratum, so a small dataset can leave val or
    test empty, and a model evaluated on nothing would report nothing with exit status 0.
    """
    labels = split.merge(manifest[["image_id", "label"]], on="image_id", how="left")
    for side in SPLITS:
        part = labels[labels["split"] == side]
        for label, name in ((0, "benign"), (1, "malignant")):
            if not (part["label"] == label).any():
                counts = ", ".join(f"{s} {int((labels['split'] == s).sum())}" for s in SPLITS)
                raise PipelineError(
                    f"the {mode} split (fold {fold}) leaves {side} without {name} images ({counts} images): "
                    f"too few {'images per class x magnification' if mode == 'paper' else 'patients per class'}; "
                    "use more data or larger val/test --ratios")


def leakage_report(manifest: pd.DataFrame, split: pd.DataFrame) -> pd.DataFrame:
    """Per fold: images per split and patients shared across splits (by folder id and numeric id)."""
    rows = []
    for fold, part in split.groupby("fold"):
        merged = part.merge(manifest[["image_id", "patient_id", "patient_num", "label"]], on="image_id")
        row = {"fold": int(fold)}
        for s in SPLITS:
            row[f"{s}_images"] = int((merged["split"] == s).sum())
        for key in ("patient_id", "patient_num"):
            sides = merged.groupby(key)["split"].nunique()
            row[f"shared_{key}"] = int((sides > 1).sum())
        rows.append(row)
    return pd.DataFrame(rows)


def split_for_fold(split: pd.DataFrame, fold: int = 0) -> pd.DataFrame:
    """The ``image_id, split`` rows of one fold, with a clear error for a fold that does not exist."""
    part = split[split["fold"] == fold]
    if part.empty:
        raise PipelineError(f"fold {fold} not in split.parquet (folds: {sorted(split['fold'].unique().tolist())})")
    return part[["image_id", "split"]].reset_index(drop=True)


EXPORT_COLUMNS = ["image_id", "patient_id", "patient_num", "split", "fold"]


def export_table(manifest: pd.DataFrame, split: pd.DataFrame) -> pd.DataFrame:
    """The split as a publishable table: one row per (image, fold) with its patient, sorted for stable diffs."""
    table = split.merge(manifest[["image_id", "patient_id", "patient_num"]], on="image_id", how="left")
    return table[EXPORT_COLUMNS].sort_values(["fold", "image_id"]).reset_index(drop=True)


def _names(values, shown: int = 5) -> str:
    values = [str(v) for v in values]
    return ", ".join(values[:shown]) + (f" and {len(values) - shown} more" if len(values) > shown else "")


MAX_FOLD = 999  # folds are stored as int16; no protocol has more than a handful


def import_split(manifest: pd.DataFrame, table: pd.DataFrame, source: str = "the file", allow_leakage: bool = False) -> pd.DataFrame:
    """Check a published split (``image_id``, ``split``, optional ``fold``) against the manifest; return split rows.

    Refused, each with one line naming the offenders: a missing column, a split value other than train/val/test,
    an image the manifest does not have, an image listed twice in one fold, a manifest image a fold leaves out
    (every run trains on a split that covers the manifest), and a patient (numeric id) on two sides of a fold,
    unless ``allow_leakage`` (to reproduce an image-level split such as the study's on purpose).
    """
    missing = [c for c in ("image_id", "split") if c not in table]
    if missing:
        raise PipelineError(f"{source} lacks column(s) {missing} (needs image_id, split and optionally fold)")
    table = table.copy()
    table["image_id"] = table["image_id"].astype(str).str.strip()
    table["split"] = table["split"].astype(str).str.strip().str.lower()
    if "fold" not in table:
        table["fold"] = 0
    if table.empty:
        raise PipelineError(f"{source} has no rows (a split must place every image of the manifest)")
    folds = pd.to_numeric(table["fold"], errors="coerce").astype("float64")
    wrong = folds.isna() | ~np.isfinite(folds) | (folds < 0) | (folds > MAX_FOLD) | (folds != folds.round())
    if wrong.any():  # 65536 would wrap to fold 0 in the int16 column
        bad_folds = table.loc[wrong, "fold"].astype(str).unique()
        raise PipelineError(f"{source} has fold value(s) that are not whole numbers from 0 to {MAX_FOLD}: {_names(bad_folds)}")
    table["fold"] = folds.astype("int16")
    bad = sorted(set(table["split"]) - set(SPLITS))
    if bad:
        raise PipelineError(f"{source} has split value(s) {bad} (expected train, val, test)")
    unknown = sorted(set(table["image_id"]) - set(manifest["image_id"].astype(str)))
    if unknown:
        raise PipelineError(f"{source} names {len(unknown)} image(s) the manifest does not have: {_names(unknown)}")
    dup = table[table.duplicated(["fold", "image_id"], keep=False)]
    if len(dup):
        raise PipelineError(f"{source} lists {dup['image_id'].nunique()} image(s) more than once in one fold: "
                            f"{_names(sorted(dup['image_id'].unique()))}")
    if sorted(table["fold"].unique()) != list(range(table["fold"].nunique())):
        raise PipelineError(f"{source} has folds {sorted(table['fold'].unique().tolist())}; folds must be numbered 0, 1, 2, ...")
    table = table[["image_id", "split", "fold"]]  # a published file's own patient columns are not trusted: the manifest's are
    merged = table.merge(manifest[["image_id", "patient_num"]].astype({"image_id": str}), on="image_id")
    for fold, part in merged.groupby("fold"):
        left_out = sorted(set(manifest["image_id"].astype(str)) - set(part["image_id"]))
        if left_out:
            raise PipelineError(f"{source} leaves {len(left_out)} manifest image(s) out of fold {fold}: {_names(left_out)} "
                                "(a split must place every image)")
        if not allow_leakage:
            sides = part.groupby("patient_num")["split"].nunique()
            shared = sorted(sides[sides > 1].index.tolist())
            if shared:
                raise PipelineError(f"{source} puts {len(shared)} patient(s) on more than one side of fold {fold}: "
                                    f"{_names(shared)} (an image-level split; pass --allow-leakage to import it on purpose)")
        check_sides(manifest, part[["image_id", "split"]], "imported", int(fold))
    return table[["image_id", "split", "fold"]].sort_values(["fold", "image_id"]).reset_index(drop=True)


def inner_holdout(labels: np.ndarray, patients: np.ndarray | None, fraction: float = 0.2,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """Split validation images into (inner train, inner hold-out) for a model fitted on validation (stacking).

    Why by patient: the hold-out picks the meta-model's epoch and drives its learning-rate schedule; with one
    patient's images on both inner sides it rewards memorising that patient (stain, scanner), the very leak a
    patient split exists to expose. So each class's patients are shuffled (``seed``) and whole patients move to
    the hold-out until it holds about ``fraction`` of that class's images (at least one patient, never all).

    Returns ``(train_index, holdout_index, how)`` with ``how`` ``"patient"``, or ``"image"`` when a patient split
    is impossible (no patient ids, or fewer than 2 validation patients of a class): then a stratified image split,
    which the caller records so the leak is visible rather than silent.
    """
    labels = np.asarray(labels).astype(int)
    n = len(labels)
    if patients is not None:
        frame = pd.DataFrame({"patient": np.asarray(patients), "label": labels, "i": np.arange(n)})
        per_patient = frame.groupby("patient", sort=True)["label"].agg(lambda s: int(round(s.mean())))
        counts = frame.groupby("patient", sort=True).size()
        if frame["patient"].nunique() < n and per_patient.value_counts().reindex([0, 1], fill_value=0).min() >= 2:
            rng = np.random.default_rng(seed)
            held: list = []
            for cls in (0, 1):
                pats = per_patient.index[per_patient.to_numpy() == cls].to_numpy()
                pats = pats[rng.permutation(len(pats))]
                target, taken = fraction * counts.loc[pats].sum(), 0
                for p in pats[:-1]:  # never the class's last patient: the inner train needs both classes
                    held.append(p)
                    taken += counts.loc[p]
                    if taken >= target:
                        break
            hold = frame["patient"].isin(held).to_numpy()
            return np.flatnonzero(~hold), np.flatnonzero(hold), "patient"
    from sklearn.model_selection import train_test_split

    train, hold = train_test_split(np.arange(n), test_size=fraction, stratify=labels, random_state=seed)
    return np.sort(train), np.sort(hold), "image"
