"""Stage 1, ``index``: walk a BreakHis folder tree and write ``manifest.parquet`` + ``rejects.parquet``.

Nothing is dropped silently: every file under the root is either a manifest row or a reject with a
reason. The manifest stores paths relative to the data root, and ``dataset.json`` records that root,
so an experiment folder can be read by the dashboard without guessing where the images are.

Up to date when the image tree's listing (relative path, size, mtime_ns of every file: no PNG is opened)
and the data root are unchanged; the manifest's ``sha256`` column then carries each image's *content* on to
the later stages, so a copied tree (new mtimes, same bytes) is re-indexed but retrains nothing.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError

from pipeline.artifacts.catalog import Catalog
from pipeline.artifacts.io import read_parquet, write_json, write_parquet
from pipeline.artifacts.stamps import Stamp, up_to_date
from pipeline.core.breakhis import folder_disagreement, parse_file_name
from pipeline.core.errors import PipelineError
from pipeline.core.hashing import file_sha256, listing_digest
from pipeline.progress import progress

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MANIFEST_COLUMNS = [
    "image_id", "path", "label", "class_name", "subtype", "subtype_name", "patient_id", "patient_num",
    "magnification", "seq", "year", "width", "height", "sha256",
]
INDEX_VERSION = 2  # bump when the manifest/rejects an unchanged tree yields would change
IGNORED_NAMES = {"README.md", "README.txt", "SHA256SUMS", ".DS_Store", "Thumbs.db"}


def find_breast_root(data_root: Path) -> Path:
    """Accept ``BreaKHis_v1/``, its parent, or ``histology_slides/breast/`` and return the ``breast`` folder."""
    if not data_root.exists():
        raise PipelineError(f"data root {data_root} does not exist; expected a BreakHis folder (BreaKHis_v1/ or histology_slides/breast/)")
    candidates = [
        data_root,
        data_root / "breast",
        data_root / "histology_slides" / "breast",
        data_root / "BreaKHis_v1" / "histology_slides" / "breast",
    ]
    for cand in candidates:
        if (cand / "benign").is_dir() or (cand / "malignant").is_dir():
            return cand
    raise PipelineError(
        f"{data_root} does not look like BreakHis: expected benign/ and malignant/ folders under "
        "BreaKHis_v1/histology_slides/breast/ (any of those levels may be given)"
    )


def check_png(path: Path) -> tuple[int, int] | str:
    """Return (width, height) of a readable RGB-convertible PNG, or a reason why it is not one."""
    if path.stat().st_size == 0:
        return "zero-byte file"
    with open(path, "rb") as fh:
        if fh.read(8) != PNG_MAGIC:
            return "not a PNG file (bad signature)"
    try:
        with Image.open(path) as img:
            img.load()  # forces a full decode: catches truncated files
            return img.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"corrupt PNG: {exc}"


def index_dataset(data_root: Path | str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Index every file under the BreakHis root; return (manifest, rejects) frames."""
    data_root = Path(data_root).resolve()
    breast = find_breast_root(data_root)
    rows: list[dict] = []
    rejects: list[dict] = []
    files = sorted(p for p in breast.rglob("*") if p.is_file() and p.name not in IGNORED_NAMES)
    for path in progress(files, desc="index", unit="file"):
        rel = path.relative_to(data_root).as_posix()
        parsed = parse_file_name(path.name)
        if parsed is None:
            reason = ("not a PNG file (extension)" if path.suffix.lower() != ".png"
                      else "file name does not follow SOB_<B|M>_<TYPE>-<yy>-<patient>-<mag>-<seq>.png")
            rejects.append({"path": rel, "reason": reason})
            continue
        disagreement = folder_disagreement(parsed, path.relative_to(breast).parts[:-1])
        if disagreement:
            rejects.append({"path": rel, "reason": f"folder/name disagreement: {disagreement}"})
            continue
        size = check_png(path)
        if isinstance(size, str):
            rejects.append({"path": rel, "reason": size})
            continue
        rows.append({
            "image_id": path.stem, "path": rel, "label": parsed.label, "class_name": parsed.class_name,
            "subtype": parsed.subtype, "subtype_name": parsed.subtype_name, "patient_id": parsed.patient_id,
            "patient_num": parsed.patient_num, "magnification": parsed.magnification, "seq": parsed.seq,
            "year": parsed.year, "width": size[0], "height": size[1], "sha256": file_sha256(path, 32),
        })
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    dupes = manifest[manifest["image_id"].duplicated(keep="first")]
    if len(dupes):
        rejects.extend({"path": p, "reason": "duplicate image_id (same file name in two places)"} for p in dupes["path"])
        manifest = manifest.drop(dupes.index)
    manifest = manifest.astype({"label": "int8", "patient_num": "int32", "magnification": "int16", "seq": "int16",
                                "width": "int16", "height": "int16"})
    return manifest.reset_index(drop=True), pd.DataFrame(rejects, columns=["path", "reason"])


def summarize(manifest: pd.DataFrame, rejects: pd.DataFrame) -> str:
    """Human summary: class x magnification table, subtypes, patients, rejects."""
    table = pd.crosstab(manifest["class_name"], manifest["magnification"], margins=True, margins_name="total")
    subtypes = manifest.groupby(["class_name", "subtype"]).size().rename("images").reset_index()
    lines = [
        f"images: {len(manifest)}  ({(manifest.label == 0).sum()} benign / {(manifest.label == 1).sum()} malignant)",
        f"patients: {manifest.patient_id.nunique()} folders, {manifest.patient_num.nunique()} numeric ids",
        f"subtypes: {manifest.subtype.nunique()} of 8",
        "", "class x magnification:", table.to_string(), "", "subtypes:", subtypes.to_string(index=False),
        "", f"rejected files: {len(rejects)}",
    ]
    if len(rejects):
        lines.append(rejects.groupby("reason").size().rename("files").to_string())
    return "\n".join(lines)


def run_index(data_root: Path | str, out_dir: Path | str, synthetic: bool | None = None, force: bool = False,
              verbose: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Index, write manifest/rejects/dataset.json atomically (skipped when up to date); refuse an empty dataset.

    Validate, then act: an empty or unusable tree raises before anything is written, so the previous
    manifest, rejects and dataset.json stay together (never an old manifest beside new rejects).
    """
    start = time.perf_counter()
    data_root = Path(data_root).resolve()
    catalog = Catalog(out_dir)
    breast = find_breast_root(data_root)
    if synthetic is None:
        synthetic = (data_root / "SYNTHETIC").exists() or (data_root.parent / "SYNTHETIC").exists()
    stamp = Stamp(catalog, "index", {"version": INDEX_VERSION, "data_root": str(data_root), "synthetic": bool(synthetic)},
                  extra={"tree": listing_digest(breast)})
    if not force and stamp.is_current():
        manifest = read_parquet(catalog.manifest)
        up_to_date("index", f"{len(manifest)} images")
        return manifest, read_parquet(catalog.rejects)
    manifest, rejects = index_dataset(data_root)
    if manifest.empty:
        reasons = rejects.groupby("reason").size().sort_values(ascending=False).head(3) if len(rejects) else pd.Series(dtype=int)
        why = "; ".join(f"{n} x {r}" for r, n in reasons.items()) or "no files"
        raise PipelineError(
            f"no valid BreakHis images under {data_root} ({len(rejects)} files rejected: {why}); "
            "expected PNGs named SOB_<B|M>_<TYPE>-<yy>-<patient>-<mag>-<seq>.png in their class/subtype/patient/magnification "
            f"folders; nothing in {catalog.root} was changed"
        )
    write_parquet(manifest, catalog.manifest)
    write_parquet(rejects, catalog.rejects)
    write_json({"data_root": str(data_root), "synthetic": bool(synthetic), "images": len(manifest),
                "rejects": len(rejects), "seconds": round(time.perf_counter() - start, 2)}, catalog.dataset)
    stamp.record([catalog.manifest, catalog.rejects, catalog.dataset])
    if verbose:
        print(summarize(manifest, rejects))
    return manifest, rejects
