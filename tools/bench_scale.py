"""``python tools/bench_scale.py [--sizes 1 10] [--work DIR]``: how each stage's and each dashboard page's cost grows
with the data (issue 26).

For every size factor f it builds a BreakHis-shaped experiment with f times the published counts (subtype x
magnification images, f times the patients; 8 x 8 PNGs, so decoding is not what is measured), splits it as the study
did, then plants what training would leave behind, with no training: predictions of the ten backbones plus a stained
twin of v1_b0, and pooled features of every split at each backbone's real width (each patient a cluster, so the
same-patient rate has a planted answer). Then it times, each in a fresh interpreter (peak memory = that process's
ru_maxrss): ``index``, ``split``, ``ensemble --no-stacking``, ``neighbours --no-tsne``, ``evaluate --bootstrap 200``,
and every dashboard page under AppTest (first render after switching to it, and a rerun of it). The neighbours
process also times the float32 matrix product of the same shapes (query blocks of 1,024 times the training matrix)
right after the stage, so "search / product" compares two numbers from one process. Growth exponents between sizes
are log(cost ratio) / log(size ratio): 1 is linear.

Tooling, not product: the planting lives here, the pipeline is run through its own CLI. Prints a Markdown table and
writes ``scale.json`` into the work folder.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

# Spanhol et al. 2016: images per magnification (40, 100, 200, 400) and patients, per subtype (label 0 benign).
COUNTS = {"A": (0, (114, 113, 111, 106), 4), "F": (0, (253, 260, 264, 237), 10), "PT": (0, (109, 121, 108, 115), 3),
          "TA": (0, (149, 150, 140, 130), 7), "DC": (1, (864, 903, 896, 788), 38), "LC": (1, (156, 170, 163, 137), 5),
          "MC": (1, (205, 222, 196, 169), 9), "PC": (1, (145, 142, 135, 138), 6)}
WIDTHS = {"v1_b0": 1280, "v1_b1": 1280, "v1_b2": 1408, "v1_b3": 1536, "v1_b4": 1792,
          "v2_b0": 1280, "v2_b1": 1280, "v2_b2": 1408, "v2_b3": 1536, "v2_s": 1280}
TWIN = "v1_b0-vahadane"
PAGES = ["overview", "confusion", "misclassified", "stain_comparison", "ensemble_builder", "training_curves", "gradcam",
         "embedding", "compare_experiments", "pipeline_status"]
STAGES = [("index", []), ("split", ["--mode", "paper"]), ("ensemble", ["--no-stacking"]), ("neighbours", ["--no-tsne"]),
          ("evaluate", ["--bootstrap", "200"])]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- planting -----------------------------------------------------------------------------------------------------
def write_tree(data: Path, factor: int) -> int:
    """A BreakHis folder tree with ``factor`` x the published counts; every file the same 8 x 8 PNG."""
    import io

    from PIL import Image

    from pipeline.core.breakhis import ParsedName

    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 180, dtype=np.uint8)).save(buf, format="PNG")
    png = buf.getvalue()
    breast = data / "BreaKHis_v1" / "histology_slides" / "breast"
    code, n = 10000, 0
    for subtype, (label, per_mag, patients) in COUNTS.items():
        codes = [str(code + i) for i in range(patients * factor)]
        code += patients * factor
        for mag, count in zip((40, 100, 200, 400), per_mag):
            for j in range(count * factor):
                p = codes[j % len(codes)]
                name = ParsedName(label=label, subtype=subtype, year="14", patient_id=p, patient_num=int(p),
                                  magnification=mag, seq=j // len(codes) + 1)
                folder = breast / name.relative_dir()
                folder.mkdir(parents=True, exist_ok=True)
                (folder / name.file_name()).write_bytes(png)
                n += 1
    (data / "SYNTHETIC").write_text("scale benchmark\n")
    return n


def plant_runs(exp: Path, feature_runs: int, seed: int = 0) -> None:
    """Per run: predictions of val/test, run.json, a history; for the first ``feature_runs`` runs also features.npz of
    every split (float16, uncompressed). Fewer runs with features keep the neighbours stage (whose product grows with
    the square of the images) within a benchmark's time on two cores; its cost per run is what is compared."""

    from pipeline.artifacts.catalog import Catalog
    from pipeline.artifacts.experiment import load_split_frame
    from pipeline.artifacts.io import write_json, write_parquet
    from pipeline.artifacts.predictions import make_rows

    rng = np.random.default_rng(seed)
    catalog = Catalog(exp)
    frame = load_split_frame(exp, 0)
    y = frame["label"].to_numpy()
    evals = frame["split"].isin(["val", "test"]).to_numpy()
    for i, run in enumerate([*WIDTHS, TWIN]):
        width = WIDTHS.get(run, 1280)
        acc = 0.6 + 0.03 * (i % 10)
        correct = rng.random(len(y)) < acc
        prob = np.where(correct == (y == 1), rng.uniform(0.55, 0.97, len(y)), rng.uniform(0.03, 0.45, len(y)))
        model, family, stain = (run, run[:2], "none") if run != TWIN else ("efficientnet_b0", "v1", "vahadane")
        files = catalog.run(run)
        files.dir.mkdir(parents=True, exist_ok=True)
        write_parquet(make_rows(run, "single", model, family, stain, frame[evals].reset_index(drop=True), prob[evals]),
                      files.predictions)
        plant_history(files.history)
        write_json({"run_id": run, "best_epoch": 2, "best_val_accuracy": 0.75, "status": "complete"}, files.info)
        if i < feature_runs:
            plant_features(files.features, frame, width, rng)


def plant_history(path: Path) -> None:
    """history.parquet with every column train's on_epoch_end writes (the training-curves page reads ``seconds``)."""
    import pandas as pd

    from pipeline.artifacts.io import write_parquet

    write_parquet(pd.DataFrame({"epoch": [1, 2], "loss": [0.6, 0.5], "accuracy": [0.7, 0.8], "val_loss": [0.6, 0.55],
                                "val_accuracy": [0.7, 0.75], "lr_backbone": [1e-4, 1e-4], "lr_head": [1e-3, 1e-3],
                                "seconds": [40.0, 30.0], "images_per_s": [100.0, 133.3],
                                "phase": ["fine-tune", "fine-tune"]}), path)


def plant_features(path: Path, frame, width: int, rng: np.random.Generator) -> None:
    """features.npz of every image of ``frame``: each patient a cluster (so the same-patient rate has an answer)."""
    import pandas as pd

    patients = pd.factorize(frame["patient_id"])[0]
    centres = rng.standard_normal((patients.max() + 1, width), dtype=np.float32)
    feats = centres[patients]
    feats += 1.5 * rng.standard_normal(feats.shape, dtype=np.float32)
    with open(path, "wb") as fh:
        np.savez(fh, image_id=frame["image_id"].to_numpy().astype(str), split=frame["split"].to_numpy().astype(str),
                 features=feats.astype(np.float16))


# -- child processes ----------------------------------------------------------------------------------------------
def child_stage(stage: str, exp: Path, data: Path, extra: list[str]) -> dict:
    """Run one CLI stage in this process; its time, peak memory and, for neighbours, the search and product times."""
    import pipeline.core.neighbours as nb
    from pipeline.cli import main

    searches: list[tuple[tuple[int, int, int], float]] = []
    if stage == "neighbours":
        exact = nb.cosine_neighbours

        def timed(query, reference, k=5, chunk=1024):
            t = time.perf_counter()
            out = exact(query, reference, k, chunk)
            searches.append(((len(query), len(reference), query.shape[1]), time.perf_counter() - t))
            return out
        nb.cosine_neighbours = timed
    args = [stage, str(data), "--out", str(exp)] if stage == "index" else [stage, str(exp), *extra]
    t = time.perf_counter()
    rc = main(args)
    out = {"seconds": time.perf_counter() - t, "peak_mb": peak_rss_mb(), "rc": rc}
    if searches:
        rng = np.random.default_rng(0)
        product = {}
        for shape in sorted({s for s, _ in searches}):
            nq, nr, d = shape
            q = rng.standard_normal((nq, d), dtype=np.float32)
            r = rng.standard_normal((nr, d), dtype=np.float32)
            t = time.perf_counter()
            for start in range(0, nq, 1024):
                q[start : start + 1024] @ r.T
            product[shape] = time.perf_counter() - t
            del q, r
        out["runs"] = len(searches)
        out["search_s_per_run"] = sum(s for _, s in searches) / len(searches)
        out["product_s_per_run"] = sum(product[s] for s, _ in searches) / len(searches)
        out["search_over_product"] = out["search_s_per_run"] / out["product_s_per_run"]
        out["shapes"] = sorted({f"{a}x{b}x{c}" for (a, b, c), _ in searches})
    return out


def child_ivf(exp: Path) -> dict:
    """The approximate index against exact search on the first planted run's features: time of each and recall@5."""
    import pandas as pd

    from pipeline.artifacts.catalog import Catalog
    from pipeline.artifacts.experiment import load_split_frame
    from pipeline.core.neighbours import approximate_neighbours, cosine_neighbours

    frame = load_split_frame(exp, 0)
    with np.load(Catalog(exp).run(next(iter(WIDTHS))).features) as data:
        pos = pd.Index(data["image_id"].astype(str)).get_indexer(frame["image_id"].astype(str))
        feats = data["features"][pos]
    train = frame["split"].to_numpy() == "train"
    t = time.perf_counter()
    exact, _ = cosine_neighbours(feats[~train], feats[train], 5)
    exact_s = time.perf_counter() - t
    t = time.perf_counter()
    approx, _, sampled_recall = approximate_neighbours(feats[~train], feats[train], 5)
    ivf_s = time.perf_counter() - t
    recall = float(np.mean([len(np.intersect1d(a, b)) / 5 for a, b in zip(approx, exact)]))
    return {"exact_s": exact_s, "ivf_s": ivf_s, "recall_at_5": recall, "sampled_recall_at_5": sampled_recall,
            "peak_mb": peak_rss_mb()}


def child_pages(artifacts: Path, experiment: str) -> dict:
    """First render (switching to the page) and a rerun of every page, in ms, under AppTest."""
    os.environ["HISTOCOMPARE_ARTIFACTS"], os.environ["HISTOCOMPARE_EXPERIMENT"] = str(artifacts), experiment
    from streamlit.testing.v1 import AppTest

    app = str(ROOT / "dashboard" / "app.py")
    out = {}
    for page in PAGES:
        at = AppTest.from_file(app, default_timeout=300)
        at.run()
        t = time.perf_counter()
        at.switch_page(f"../pages/{page}.py")
        at.run()
        first = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        at.run()
        rerun = (time.perf_counter() - t) * 1000
        out[page] = {"first_ms": first, "rerun_ms": rerun, "errors": len(at.exception)}
    out["peak_mb"] = peak_rss_mb()
    return out


def _child(args: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        raise SystemExit(f"error: {' '.join(args[:2])} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


# -- driver ------------------------------------------------------------------------------------------------------
def measure(work: Path, factor: int, feature_runs: int, keep_features: bool = False) -> dict:
    base = work / f"x{factor}"
    shutil.rmtree(base, ignore_errors=True)
    data, artifacts = base / "data", base / "artifacts"
    exp = artifacts / f"scale{factor}"
    t = time.perf_counter()
    images = write_tree(data, factor)
    print(f"x{factor}: {images:,} images written in {time.perf_counter() - t:.0f} s", flush=True)
    result = {"factor": factor, "images": images, "stages": {}}
    for stage, extra in STAGES:
        if stage == "ensemble":
            t = time.perf_counter()
            plant_runs(exp, feature_runs)
            print(f"x{factor}: runs planted in {time.perf_counter() - t:.0f} s", flush=True)
        result["stages"][stage] = _child(["stage", stage, str(exp), str(data), *extra])
        print(f"x{factor}: {stage} {result['stages'][stage]['seconds']:.1f} s, "
              f"{result['stages'][stage]['peak_mb']:.0f} MB", flush=True)
        if stage == "neighbours":
            result["ivf"] = _child(["ivf", str(exp)])
            print(f"x{factor}: ivf {json.dumps(result['ivf'])}", flush=True)
    result["pages"] = _child(["pages", str(artifacts), exp.name])
    print(f"x{factor}: pages {json.dumps({p: round(v['first_ms']) for p, v in result['pages'].items() if p in PAGES})}",
          flush=True)
    for run in [*WIDTHS, TWIN]:  # features are most of the disk; keep the rest for a look at the dashboard
        if not keep_features:
            (exp / "runs" / run / "features.npz").unlink(missing_ok=True)
    return result


def exponent(a: float, b: float, fa: int, fb: int) -> float:
    return math.log(max(b, 1e-9) / max(a, 1e-9)) / math.log(fb / fa)


def render(results: list[dict]) -> str:
    sizes = [r["factor"] for r in results]
    head = " | ".join(f"{f}x ({r['images']:,})" for f, r in zip(sizes, results))
    growth = " | ".join(f"growth {a}x->{b}x" for a, b in zip(sizes, sizes[1:]))
    lines = [f"| step | {head} | {growth} |", "|---" * (1 + len(sizes) + len(sizes) - 1) + "|"]
    for stage, _ in STAGES:
        cells = [f"{r['stages'][stage]['seconds']:.1f} s, {r['stages'][stage]['peak_mb'] / 1024:.2f} GB" for r in results]
        ex = [f"{exponent(a['stages'][stage]['seconds'], b['stages'][stage]['seconds'], a['factor'], b['factor']):.2f}"
              for a, b in zip(results, results[1:])]
        lines.append(f"| `{stage}` | {' | '.join(cells)} | {' | '.join(ex)} |")
    cells = [f"search {r['stages']['neighbours']['search_s_per_run']:.1f} s / product "
             f"{r['stages']['neighbours']['product_s_per_run']:.1f} s = {r['stages']['neighbours']['search_over_product']:.2f}x"
             for r in results]
    per_run = [r["stages"]["neighbours"]["search_s_per_run"] for r in results]
    ex = [f"{exponent(per_run[i], per_run[i + 1], results[i]['factor'], results[i + 1]['factor']):.2f}"
          for i in range(len(results) - 1)]
    lines.append(f"| exact search per run vs float32 product | {' | '.join(cells)} | {' | '.join(ex)} |")
    if all("ivf" in r for r in results):
        cells = [f"IVF {r['ivf']['ivf_s']:.1f} s vs exact {r['ivf']['exact_s']:.1f} s, recall@5 {r['ivf']['recall_at_5']:.3f}"
                 for r in results]
        ex = [f"{exponent(a['ivf']['ivf_s'], b['ivf']['ivf_s'], a['factor'], b['factor']):.2f}"
              for a, b in zip(results, results[1:])]
        lines.append(f"| approximate index (FAISS IVF), one run | {' | '.join(cells)} | {' | '.join(ex)} |")
    for page in PAGES:
        for key, what in (("first_ms", "first render"), ("rerun_ms", "rerun")):
            cells = [f"{r['pages'][page][key]:.0f} ms" + (" (exception)" if r["pages"][page]["errors"] else "") for r in results]
            ex = [f"{exponent(a['pages'][page][key], b['pages'][page][key], a['factor'], b['factor']):.2f}"
                  for a, b in zip(results, results[1:])]
            lines.append(f"| page {page}, {what} | {' | '.join(cells)} | {' | '.join(ex)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        kind, *rest = argv[1:]
        if kind == "stage":
            out = child_stage(rest[0], Path(rest[1]), Path(rest[2]), rest[3:])
        elif kind == "ivf":
            out = child_ivf(Path(rest[0]))
        else:
            out = child_pages(Path(rest[0]), rest[1])
        print(json.dumps(out))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10], help="size factors (default: 1 10)")
    parser.add_argument("--work", default=str(ROOT / "artifacts" / "bench-scale"), help="where the experiments are built")
    parser.add_argument("--feature-runs", type=int, default=2, help="runs planted with features (default 2 of 11: "
                        "v1_b0 at 1,280 and v1_b1 at 1,280 wide)")
    parser.add_argument("--pages-only", action="store_true",
                        help="re-time only the pages on the experiments and stage results of the last run in --work "
                             "(re-plants each run's history, so experiments built by an older version render too)")
    parser.add_argument("--ivf-only", action="store_true",
                        help="with --pages-only: also time the IVF index against exact search (re-plants one run's features)")
    parser.add_argument("--keep-features", action="store_true", help="keep the planted features.npz (disk: ~0.4 GB per run at 10x)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.pages_only:
        from pipeline.artifacts.catalog import Catalog

        results = json.loads((work / "scale.json").read_text())
        for r in results:
            artifacts = work / f"x{r['factor']}" / "artifacts"
            exp = artifacts / f"scale{r['factor']}"
            for run in [*WIDTHS, TWIN]:
                plant_history(Catalog(exp).run(run).history)
            if args.ivf_only:
                from pipeline.artifacts.experiment import load_split_frame

                features = Catalog(exp).run(next(iter(WIDTHS))).features
                plant_features(features, load_split_frame(exp, 0), WIDTHS[next(iter(WIDTHS))], np.random.default_rng(0))
                r["ivf"] = _child(["ivf", str(exp)])
                features.unlink()
                print(f"x{r['factor']}: ivf {json.dumps(r['ivf'])}", flush=True)
            r["pages"] = _child(["pages", str(artifacts), f"scale{r['factor']}"])
    else:
        results = [measure(work, f, args.feature_runs, args.keep_features) for f in sorted(args.sizes)]
    table = render(results)
    (work / "scale.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"\nScale benchmark, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
