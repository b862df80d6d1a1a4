"""Stage 1, ``index``: walk a BreakHis folder tree and write ``manifest.parquet`` + ``rejects.parquet``.

Nothing is dropped silently: every entry under the root (files, broken or looping symlinks, symlinked
folders, sockets and pipes, unreadable folders, names that are not UTF-8) is either a manifest row or a
reject with a reason. An image counts only if :func:`pipeline.core.images.read_rgb` decodes it: the reader
training, stain normalization and the dashboard share. The manifest stores paths relative to the data
root, and ``dataset.json`` records that root, so an experiment folder can be read by the dashboard without
guessing where the images are. ``dataset.json`` also records whether the data carry the generator's
SYNTHETIC marker: the label follows the data, not the preset.

Up to date when the image tree's listing (relative path, size, mtime_ns of every file: no PNG is opened)
and the data root are unchanged; the manifest's ``sha256`` column then carries each image's *content* on to
the later stages, so a copied tree (new mtimes, same bytes) is re-indexed but retrains nothing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterator

import pandas as pd

from pipeline.artifacts.catalog import Catalog
from pipeline.artifacts.entries import ENTRIES
from pipeline.artifacts.io import ensure_dir, read_parquet, write_json, write_parquet
from pipeline.artifacts.stamps import Stamp, up_to_date
from pipeline.core.breakhis import folder_disagreement, parse_file_name
from pipeline.core.errors import PipelineError
from pipeline.core.hashing import file_sha256, listing_digest
from pipeline.core.images import UnreadableImage, read_rgb
from pipeline.progress import progress

SYNTHETIC_MARKER = "SYNTHETIC"  # written by `demo-data` next to BreaKHis_v1/ (see stages/demo_data.py)
MANIFEST_COLUMNS = [
    "image_id", "path", "label", "class_name", "subtype", "subtype_name", "patient_id", "patient_num",
    "magnification", "seq", "year", "width", "height", "sha256",
]
INDEX_VERSION = 3  # bump when the manifest/rejects an unchanged tree yields would change
IGNORED_NAMES = {"README.md", "README.txt", "SHA256SUMS", ".DS_Store", "Thumbs.db", SYNTHETIC_MARKER}


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
    """Return (width, height) of a PNG that decodes with the shared reader, or the reason it does not."""
    try:
        pixels = read_rgb(path)
    except UnreadableImage as exc:
        return exc.reason
    return pixels.shape[1], pixels.shape[0]


def printable(rel: str) -> str:
    """A path as text that UTF-8 (and so parquet) can store: undecodable bytes of a file name become ``\\xNN``."""
    return rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def entry_reject(data_root: Path, path: Path, problem: str | None) -> tuple[str, dict | None]:
    """(relative path, its rejects row or None) for one walked entry: a name that is not UTF-8, or the walk's problem."""
    rel = path.relative_to(data_root).as_posix()
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return rel, {"path": printable(rel), "reason": "path is not valid UTF-8 (rename the file or folder)"}
    return rel, ({"path": rel, "reason": problem} if problem else None)


def walk_entries(breast: Path) -> Iterator[tuple[Path, str | None]]:
    """Every entry under ``breast`` that could hold an image: (path, None) for regular files (or symlinks
    to them), (path, reason) for what cannot be indexed. Folders are descended, symlinked folders are not
    (a link can loop back up the tree), and a folder that cannot be listed is reported, not skipped."""
    unreadable: list[OSError] = []
    for dirpath, dirnames, filenames in os.walk(breast, onerror=unreadable.append):
        folder = Path(dirpath)
        dirnames.sort()
        for name in dirnames:
            if (folder / name).is_symlink():
                yield folder / name, "symbolic link to a folder (not followed)"
        for name in sorted(filenames):
            path = folder / name
            if name in IGNORED_NAMES:
                continue
            if path.is_symlink() and not path.exists():
                yield path, "broken or self-referencing symbolic link"
            elif not path.is_file():
                yield path, "not a regular file (socket, pipe or device)"
            else:
                yield path, None
    for err in unreadable:
        yield Path(err.filename), f"unreadable folder ({err.strerror or type(err).__name__}): its files were not indexed"


def index_dataset(data_root: Path | str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Index every file under the BreakHis root; return (manifest, rejects) frames."""
    data_root = Path(data_root).resolve()
    breast = find_breast_root(data_root)
    rows: list[dict] = []
    rejects: list[dict] = []
    entries = sorted(walk_entries(breast))
    for path, problem in progress(entries, desc="index", unit="file"):
        rel, reject = entry_reject(data_root, path, problem)
        if reject:
            rejects.append(reject)
            continue
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
    # width/height up to MAX_PIXELS (~9459 x 9459, or a 89-million-pixel-wide strip): int32, never int16
    manifest = manifest.astype({"label": "int8", "patient_num": "int32", "magnification": "int16", "seq": "int16",
                                "width": "int32", "height": "int32"})
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


def find_synthetic_marker(data_root: Path, breast: Path) -> Path | None:
    """The generator's SYNTHETIC file, looked for from the breast folder up to the folder above BreaKHis_v1
    (the root may be given at any level) and next to the given root."""
    folders = [breast, *list(breast.parents)[:3], data_root, data_root.parent]
    for folder in dict.fromkeys(folders):
        if (folder / SYNTHETIC_MARKER).is_file():
            return folder / SYNTHETIC_MARKER
    return None


def check_out_dir(out_dir: Path, breast: Path) -> None:
    """The experiment folder must be a folder (or creatable) and must not sit inside the images it indexes."""
    if out_dir.exists() and not out_dir.is_dir():
        raise PipelineError(f"--out {out_dir} is a file, not a folder; give the experiment folder to write (e.g. artifacts/mine)")
    if out_dir.resolve().is_relative_to(breast):
        raise PipelineError(f"--out {out_dir} is inside the dataset {breast}; write the experiment elsewhere (e.g. artifacts/mine)")


def run_index(data_root: Path | str, out_dir: Path | str, synthetic: bool | None = None, force: bool = False,
              verbose: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Index, write manifest/rejects/dataset.json atomically (skipped when up to date); refuse an empty dataset.

    ``synthetic``: True marks the data synthetic even without a marker (a preset that generated them);
    otherwise the generator's SYNTHETIC marker decides, so ``synthetic = false`` cannot relabel demo data as real.
    Validate, then act: an empty or unusable tree raises before anything is written, so the previous
    manifest, rejects and dataset.json stay together (never an old manifest beside new rejects).
    """
    start = time.perf_counter()
    data_root = Path(data_root).resolve()
    out_dir = Path(out_dir)
    breast = find_breast_root(data_root)
    check_out_dir(out_dir, breast)
    catalog = Catalog(out_dir)
    marker = find_synthetic_marker(data_root, breast)
    synthetic = bool(synthetic) or marker is not None
    stamp = Stamp(catalog, "index", {"version": INDEX_VERSION, "data_root": str(data_root), "synthetic": synthetic},
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
    ensure_dir(out_dir, "experiment folder")
    ENTRIES["manifest"].save(catalog, manifest)  # checked against its entry first: a foreign table is never written
    write_parquet(rejects, catalog.rejects)
    write_json({"data_root": str(data_root), "synthetic": synthetic,
                "synthetic_marker": str(marker) if marker else None, "images": len(manifest),
                "rejects": len(rejects), "seconds": round(time.perf_counter() - start, 2)}, catalog.dataset)
    stamp.record([catalog.manifest, catalog.rejects, catalog.dataset])
    if verbose:
        print(summarize(manifest, rejects))
    return manifest, rejects
