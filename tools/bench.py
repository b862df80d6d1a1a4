"""``make bench``: the pipeline against its baselines, measured side by side in one run.

Every figure is a ratio of two measurements taken in the same process on the same data, because these
machines are noisy (absolute numbers vary up to ~1.7x run to run); absolute times are context only.
Writes ``artifacts/bench/report.json`` and ``report.md`` and prints the table.

    python -m tools.bench           # full (<= 15 min on 2 cores)
    python -m tools.bench --quick   # minutes
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HISTOCOMPARE_QUIET", "1")

import numpy as np  # noqa: E402

from pipeline.artifacts.io import write_json  # noqa: E402
from pipeline.artifacts.provenance import library_versions
from pipeline.artifacts.catalog import Catalog  # noqa: E402
from tools.bench_executors import bench_ray_overhead  # noqa: E402
from pipeline.config import PROJECT_ROOT  # noqa: E402

SAMPLE = Path(os.environ.get("BREAKHIS_SAMPLE", PROJECT_ROOT.parent / "shared" / "breakhis-sample"))


def _dataset(work: Path, quick: bool) -> tuple[Path, str]:
    """An indexed, patient-split experiment over the real sample (or demo data when the sample is absent)."""
    from pipeline.artifacts.experiment import load_manifest
    from pipeline.artifacts.io import write_parquet
    from pipeline.core.splits import make_split
    from pipeline.stages.index import run_index

    exp = work / "exp"
    if (SAMPLE / "BreaKHis_v1").is_dir():
        source, label = SAMPLE, f"real BreakHis sample ({SAMPLE})"
    else:
        from pipeline.stages.demo_data import generate_demo_data

        source, label = work / "demo", "SYNTHETIC demo data (sample not found)"
        generate_demo_data(source, seed=0, patients=16, images_per_patient=4 if quick else 8)
    run_index(source, exp, verbose=False)
    write_parquet(make_split(load_manifest(exp), "patient", seed=0), Catalog(exp).split)
    return exp, label


def _timed(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bench_input_pipeline(exp: Path, quick: bool) -> dict:
    """B0 training images/s at 128 px: project pipeline from PNGs (cold, warm cache) vs in-memory tensors."""
    import keras
    import tensorflow as tf

    from pipeline.artifacts.experiment import data_root_of, load_split_frame
    from pipeline.ml.data import cache_file, load_images, make_dataset
    from pipeline.ml.models import build_classifier, compile_classifier

    size, batch = 128, 32
    frame = load_split_frame(exp)
    train = frame[frame.split == "train"].reset_index(drop=True)
    if quick:
        train = train.head(96)
    y = train.label.to_numpy()
    keras.utils.set_random_seed(0)
    model = compile_classifier(build_classifier("efficientnet_b0", size, "none", freeze_batchnorm=False))
    cache = cache_file(exp, data_root_of(exp), train, size)
    cache.unlink(missing_ok=True)

    # Warm-up (graph tracing) on in-memory data so no variant pays for it.
    images = np.asarray(load_images(exp, data_root_of(exp), train, size))
    memory_ds = tf.data.Dataset.from_tensor_slices((images.astype(np.float32), y)).shuffle(len(y), seed=0).batch(batch).cache().prefetch(2)
    model.fit(memory_ds, epochs=1, verbose=0)
    epochs = 1 if quick else 2

    def fit(ds):
        model.fit(ds, epochs=epochs, verbose=0)

    cache.unlink()

    def cold():
        imgs = load_images(exp, data_root_of(exp), train, size)
        fit(make_dataset(np.asarray(imgs), y, batch, shuffle=True))

    t_cold = _timed(cold)
    # Alternate baseline and warm cache, best of two each, so neither side profits from going first.
    t_memory = t_warm = float("inf")
    for _ in range(2):
        t_memory = min(t_memory, _timed(lambda: fit(memory_ds)))
        t_warm = min(t_warm, _timed(lambda: fit(make_dataset(np.asarray(load_images(exp, data_root_of(exp), train, size)), y,
                                                              batch, shuffle=True))))
    n = len(y) * epochs
    return {
        "name": "Input pipeline efficiency (B0 train, 128 px)", "images": int(len(y)), "epochs": epochs,
        "memory_images_per_s": n / t_memory, "cold_images_per_s": n / t_cold, "warm_images_per_s": n / t_warm,
        "ratio_warm": t_memory / t_warm, "ratio_cold": t_memory / t_cold, "target": "warm >= 0.95",
        "baseline": "in-memory tf.data tensors", "ok": t_memory / t_warm >= 0.95,
    }


def bench_prediction(exp: Path, quick: bool, study_sizes: bool = False) -> dict:
    """All models predicting one split: shared decode-once cache vs image_dataset_from_directory per model.

    ``study_sizes``: every model at the study's input size (224-380 px, as the ``paper`` preset predicts), where
    one decoded array is shared only by the models of equal size; otherwise every model at a uniform 128 px.
    """
    import keras

    from pipeline.artifacts.experiment import data_root_of, load_split_frame
    from pipeline.core.model_specs import MODEL_ORDER, get_spec
    from pipeline.ml.data import load_images, make_dataset
    from pipeline.ml.models import build_classifier

    models = MODEL_ORDER[:3] if quick else MODEL_ORDER
    sizes = {name: get_spec(name).size if study_sizes else 128 for name in models}
    frame = load_split_frame(exp)
    part = frame[frame.split != "train"].reset_index(drop=True)
    root = data_root_of(exp)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for _, r in part.iterrows():  # the study's layout: one folder per class
            dst = folder / ("malignant" if r.label else "benign") / Path(r.path).name
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(root / r.path, dst)
        built = {}
        for name in models:
            size = sizes[name]
            keras.utils.set_random_seed(0)
            m = build_classifier(name, size, "none")
            m.predict(np.zeros((16, size, size, 3), np.float32), batch_size=16, verbose=0)  # trace both batch sizes first
            m.predict(np.zeros((64, size, size, 3), np.float32), batch_size=64, verbose=0)
            built[name] = m
        from pipeline.ml.data import cache_file

        for size in set(sizes.values()):
            cache_file(exp, root, part, size).unlink(missing_ok=True)

        def ours():
            for size in sorted(set(sizes.values())):
                imgs = np.asarray(load_images(exp, root, part, size))  # decoded once, shared by the models of this size
                for name, m in built.items():
                    if sizes[name] == size:
                        m.predict(make_dataset(imgs, None, 64), verbose=0)

        def study():
            for name, m in built.items():
                ds = keras.utils.image_dataset_from_directory(folder, image_size=(sizes[name], sizes[name]), batch_size=16,
                                                              shuffle=False, verbose=False)
                m.predict(ds, verbose=0)

        t_study = _timed(study)
        t_ours = _timed(ours)
    n = len(part) * len(models)
    label = f"study sizes {min(sizes.values())}-{max(sizes.values())} px" if study_sizes else "128 px"
    return {"name": f"Prediction ({len(models)} models x {len(part)} images, {label})", "models": len(models),
            "images": int(len(part)), "ours_images_per_s": n / t_ours, "study_images_per_s": n / t_study,
            "ratio": t_study / t_ours, "target": ">= 2x" if not study_sizes else "-",
            "baseline": "image_dataset_from_directory per model, batch 16",
            "ok": t_study / t_ours >= (2 if not study_sizes else 1)}


def bench_ensemble(quick: bool) -> dict:
    """Milliseconds to score one subset (soft and hard) for 10 members x 8,000 and x 1,000,000 images."""
    from pipeline.core.ensemble import combine

    rng = np.random.default_rng(0)
    out = {"name": "Ensemble re-scoring (10 members)", "baseline": "targets: < 10 ms (8k), < 1 s (1M)"}
    for n in (8_000, 1_000_000):
        probs = rng.random((10, n))
        subset = probs[[0, 2, 3, 5, 7, 9]]
        for method in ("soft", "hard"):
            t = _timed(lambda subset=subset, method=method: combine(subset, method), repeat=5 if n < 100_000 else 2)
            out[f"{method}_{n}_ms"] = t * 1000
    out["ok"] = max(out["soft_8000_ms"], out["hard_8000_ms"]) < 10 and max(out["soft_1000000_ms"], out["hard_1000000_ms"]) < 1000
    return out


# Pooled feature widths of the ten backbones (Keras applications: B0-B4 1280/1280/1408/1536/1792, V2 B0-B3 and S).
FEATURE_WIDTHS = {"v1_b0": 1280, "v1_b1": 1280, "v1_b2": 1408, "v1_b3": 1536, "v1_b4": 1792,
                  "v2_b0": 1280, "v2_b1": 1280, "v2_b2": 1408, "v2_b3": 1536, "v2_s": 1280}


def planted_features(n: int, width: int, patients: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """float16 features where each patient's images cluster (a leak to find), and the patient of every image."""
    patient = rng.integers(0, patients, n)
    centres = rng.normal(size=(patients, width)).astype(np.float32)
    return (centres[patient] + 1.5 * rng.normal(size=(n, width)).astype(np.float32)).astype(np.float16), patient


def bench_neighbours(quick: bool) -> dict:
    """The neighbours stage's work at full scale: 7,909 images (70% train), 10 runs, planted features; exact cosine top-5
    (ours: chunked numpy) against scikit-learn's brute-force NearestNeighbors; PCA maps; t-SNE of one run (full only)."""
    import pandas as pd
    from sklearn.neighbors import NearestNeighbors

    from pipeline.core.neighbours import neighbour_table
    from pipeline.core.projection import project_2d

    rng = np.random.default_rng(0)
    n, runs = 7909, list(FEATURE_WIDTHS)[: 2 if quick else 10]
    out = {"name": f"Neighbours ({n:,} images, {len(runs)} runs, planted features)",
           "baseline": "sklearn NearestNeighbors(metric='cosine', brute)", "target": "< 10 s per run (top-5 + PCA)"}
    ours = sk = pca = 0.0
    rates = []
    for run in runs:
        feats, patient = planted_features(n, FEATURE_WIDTHS[run], 82, rng)
        split = rng.choice(["train", "val", "test"], n, p=[0.7, 0.15, 0.15])
        frame = pd.DataFrame({"image_id": [f"img{i}" for i in range(n)], "split": split, "label": patient % 2, "patient_id": patient})
        t = time.perf_counter()
        _, summary = neighbour_table(run, frame, feats, k=5)
        ours += time.perf_counter() - t
        rates.append(float(summary.set_index("split").loc["test", "same_patient_neighbour_rate"]))
        train = split == "train"
        t = time.perf_counter()
        NearestNeighbors(n_neighbors=5, metric="cosine", algorithm="brute").fit(feats[train].astype(np.float32)).kneighbors(
            feats[~train].astype(np.float32))
        sk += time.perf_counter() - t
        t = time.perf_counter()
        project_2d(feats, "pca")
        pca += time.perf_counter() - t
    out.update(neighbours_s=ours, sklearn_s=sk, pca_s=pca, ratio=sk / ours, planted_rate_min=min(rates))
    if not quick:
        out["tsne_one_run_s"] = _timed(lambda: project_2d(feats, "tsne"))
    out["ok"] = (ours + pca) / len(runs) < 10 and min(rates) > 0.9
    return out


def bench_gradcam(exp: Path, quick: bool) -> dict:
    """Maps/s: tf-keras-vis batched (16) vs a per-image loop, B0 at 128 px."""
    import keras

    from pipeline.artifacts.experiment import data_root_of, load_split_frame
    from pipeline.ml.data import load_images
    from pipeline.ml.explain import compute_maps
    from pipeline.ml.models import build_classifier

    size = 128
    frame = load_split_frame(exp)
    part = frame[frame.split == "test"].head(16 if quick else 48).reset_index(drop=True)
    imgs = np.asarray(load_images(exp, data_root_of(exp), part, size))
    classes = part.label.to_numpy()
    keras.utils.set_random_seed(0)
    model = build_classifier("efficientnet_b0", size, "none")
    compute_maps(model, imgs[:16], classes[:16], batch_size=16)  # warm-up (tracing) for both shapes
    compute_maps(model, imgs[:1], classes[:1], batch_size=1)
    t_batched = _timed(lambda: compute_maps(model, imgs, classes, batch_size=16))
    t_loop = _timed(lambda: [compute_maps(model, imgs[i : i + 1], classes[i : i + 1], batch_size=1) for i in range(len(imgs))])
    return {"name": f"Grad-CAM ({len(imgs)} maps, B0 128 px)", "batched_maps_per_s": len(imgs) / t_batched,
            "loop_maps_per_s": len(imgs) / t_loop, "ratio": t_loop / t_batched, "target": ">= 3x",
            "baseline": "per-image loop (batch 1)", "ok": t_loop / t_batched >= 3}


def bench_vahadane(exp: Path, quick: bool) -> dict:
    """Images/s of our Vahadane vs staintools + spams (when installed), and the stain-matrix difference."""
    from PIL import Image

    from pipeline.artifacts.experiment import data_root_of, load_split_frame
    from pipeline.core.stain import fit_target, normalize, vahadane_stain_matrix

    frame = load_split_frame(exp)
    root = data_root_of(exp)
    paths = [root / p for p in frame.sort_values("image_id").path.head(4 if quick else 12)]
    imgs = [np.array(Image.open(p).convert("RGB")) for p in paths]  # writable: staintools edits its input
    target = fit_target(imgs[0], "vahadane")
    t_ours = _timed(lambda: [normalize(i, target) for i in imgs])
    out = {"name": f"Vahadane ({len(imgs)} images 700x460, fit + transform)", "ours_images_per_s": len(imgs) / t_ours}
    try:
        import staintools  # noqa: F401  (optional baseline: `make bench-baselines` installs it into .bench-extra/)

        normalizer = staintools.StainNormalizer(method="vahadane")
        normalizer.fit(imgs[0].copy())
        t_theirs = _timed(lambda: [normalizer.transform(i.copy()) for i in imgs])
        theirs = staintools.VahadaneStainExtractor.get_stain_matrix(imgs[1].copy())
        ours = vahadane_stain_matrix(imgs[1])
        out.update(staintools_images_per_s=len(imgs) / t_theirs, ratio=t_theirs / t_ours,
                   max_stain_matrix_difference=float(np.abs(theirs - ours).max()), baseline="staintools 2.1.2 + spams-bin")
    except ImportError:
        out.update(baseline="staintools + spams-bin not installed (optional: `make bench-baselines`)", ratio=None)
    out["ok"] = out["ours_images_per_s"] > 1.0
    return out


def _dashboard_bench(module: str, args: list[str], what: str) -> tuple[dict, str]:
    """Run ``python -m <module> --artifacts A --experiment E <args>`` in a fresh interpreter and return its last JSON line
    and a label for the artifacts it read: the demo artifacts when ``make demo`` has run, else a synthetic fixture
    built here (and removed after). A fresh interpreter, because this process has TensorFlow's thread pools (they
    slowed AppTest's script thread ~10x here) and the dashboard never imports TensorFlow."""
    import json
    import subprocess
    import sys

    demo = PROJECT_ROOT / "artifacts" / "demo"
    tmp = None
    if Catalog(demo).predictions.exists():
        artifacts, experiment, source = demo.parent, "demo", "demo artifacts"
    else:
        from tools.fixtures import build

        tmp = Path(tempfile.mkdtemp())
        build(tmp)
        artifacts, experiment, source = tmp / "artifacts", "fixture", "test fixture"
    try:
        out = subprocess.run([sys.executable, "-m", module, "--artifacts", str(artifacts), "--experiment", experiment, *args],
                             capture_output=True, text=True, cwd=PROJECT_ROOT, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or not lines:
        raise RuntimeError(f"{what} benchmark failed: {out.stderr[-800:]}")
    return json.loads(lines[-1]), source


def bench_dashboard(quick: bool) -> dict:
    """AppTest time to first render of each page and the ensemble builder's per-interaction latency
    (``python -m tools.dashboard_bench``)."""
    result, source = _dashboard_bench("tools.dashboard_bench", ["--quick"] if quick else [], "dashboard")
    if source == "test fixture":
        source += " (run `make demo` first for demo artifacts)"
    result["name"] = f"Dashboard ({source}, AppTest)"
    return result


def bench_browser(quick: bool) -> dict:
    """Click-to-updated-metric in headless Chromium for 1 and 6 concurrent sessions (``python -m tools.browser_bench``).

    Skipped (reported, not failed) without Debian's chromium. Absolute numbers against the issue's goals; for a ratio,
    run ``python -m tools.browser_bench ... --baseline-root DIR`` with another checkout measured right after.
    """
    from tools.live import CHROMIUM

    if not CHROMIUM.exists():
        return {"name": "Dashboard in a real browser", "skipped": "Debian's chromium is not installed (`make browser`)",
                "target": "p50 < 250 ms alone, p90 < 1 s with 6", "ok": False, "baseline": "-"}
    result, source = _dashboard_bench("tools.browser_bench", ["--clicks", "4" if quick else "10"], "browser")
    result["name"] = f"Dashboard in Chromium ({source}): member click to updated metric"
    return result


def render_markdown(report: dict) -> str:
    lines = [f"# histocompare benchmark ({'quick' if report['quick'] else 'full'})", "",
             f"Machine: {report['machine']['cores']} cores, {report['machine']['platform']}, TensorFlow {report['machine']['tensorflow']}. "
             f"Data: {report['data']}. Reproduce: `{report['command']}`. Absolute numbers vary by machine (up to ~1.7x here run to run); "
             "ratios are measured side by side in one run.", "",
             "| benchmark | ours | baseline | ratio | target | met |", "|---|---|---|---|---|---|"]
    for r in report["results"]:
        if "error" in r:
            lines.append(f"| {r['name']} | error: {r['error']} | | | | |")
            continue
        name = r["name"]
        if "skipped" in r:
            lines.append(f"| {name} | skipped: {r['skipped']} | | | {r.get('target', '-')} | |")
            continue
        if name.startswith("Dashboard in Chromium"):
            ours = ", ".join(f"{n} browser(s): p50 {r[f'p50_ms_{n}']:.0f} ms, p90 {r[f'p90_ms_{n}']:.0f} ms"
                             for n in (1, 6) if f"p50_ms_{n}" in r)
            lines.append(f"| {name} | {ours} | {r['baseline']} | - | {r['target']} | {'yes' if r.get('ok') else 'no'} |")
            continue
        if name.startswith("Input"):
            ours = f"warm {r['warm_images_per_s']:.1f} img/s, cold {r['cold_images_per_s']:.1f} img/s"
            base = f"{r['memory_images_per_s']:.1f} img/s ({r['baseline']})"
            ratio = f"warm {r['ratio_warm']:.2f}, cold {r['ratio_cold']:.2f}"
        elif name.startswith("Prediction"):
            ours, ratio = f"{r['ours_images_per_s']:.1f} img/s", f"{r['ratio']:.2f}x"
            base = f"{r['study_images_per_s']:.1f} img/s ({r['baseline']})"
        elif name.startswith("Ensemble"):
            ours = (f"8k: soft {r['soft_8000_ms']:.2f} ms, hard {r['hard_8000_ms']:.2f} ms; "
                    f"1M: soft {r['soft_1000000_ms']:.0f} ms, hard {r['hard_1000000_ms']:.0f} ms")
            base, ratio = r["baseline"], "-"
        elif name.startswith("Grad-CAM"):
            ours, ratio = f"{r['batched_maps_per_s']:.1f} maps/s", f"{r['ratio']:.2f}x"
            base = f"{r['loop_maps_per_s']:.1f} maps/s ({r['baseline']})"
        elif name.startswith("Neighbours"):
            ours = (f"top-5 {r['neighbours_s']:.1f} s, PCA {r['pca_s']:.1f} s"
                    + (f", t-SNE {r['tsne_one_run_s']:.0f} s per run" if "tsne_one_run_s" in r else "")
                    + f"; planted leak found (rate >= {r['planted_rate_min']:.2f})")
            base, ratio = f"{r['sklearn_s']:.1f} s ({r['baseline']})", f"{r['ratio']:.2f}x"
        elif "ours_text" in r:  # a row that renders itself (tools.bench_executors)
            ours, base, ratio = r["ours_text"], r["baseline_text"], r["ratio_text"]
        elif name.startswith("Vahadane"):
            ours = f"{r['ours_images_per_s']:.2f} img/s"
            base = (f"{r['staintools_images_per_s']:.2f} img/s, max |dW| {r['max_stain_matrix_difference']:.4f}"
                    if r.get("ratio") else r["baseline"])
            ratio = f"{r['ratio']:.2f}x" if r.get("ratio") else "-"
        else:
            firsts = {k.split("first_render_ms_")[1]: v for k, v in r.items() if k.startswith("first_render_ms_")}
            ours = ("first render " + ", ".join(f"{k} {v:.0f}" for k, v in firsts.items())
                    + f" ms; toggle median {r['toggle_median_ms']:.0f} ms (max {r['toggle_max_ms']:.0f})")
            base, ratio = r["baseline"], "-"
        lines.append(f"| {name} | {ours} | {base} | {ratio} | {r.get('target', '-')} | {'yes' if r.get('ok') else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: minutes instead of ~15")
    parser.add_argument("--out", default=str(PROJECT_ROOT / "artifacts" / "bench"))
    parser.add_argument("--only", nargs="*",
                        help="input prediction prediction-study ensemble neighbours gradcam vahadane dashboard browser ray")
    args = parser.parse_args(argv)
    from pipeline.ml.runtime import quiet_tensorflow

    quiet_tensorflow()  # the benchmark's output is its rows, not TensorFlow's start-up lines (as the CLI)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="histocompare-bench-"))
    start = time.perf_counter()
    try:
        exp, data_label = _dataset(work, args.quick)
        benches = {"input": lambda: bench_input_pipeline(exp, args.quick), "prediction": lambda: bench_prediction(exp, args.quick),
                   "prediction-study": lambda: bench_prediction(exp, args.quick, study_sizes=True),
                   "ensemble": lambda: bench_ensemble(args.quick), "neighbours": lambda: bench_neighbours(args.quick),
                   "gradcam": lambda: bench_gradcam(exp, args.quick),
                   "vahadane": lambda: bench_vahadane(exp, args.quick), "dashboard": lambda: bench_dashboard(args.quick),
                   "browser": lambda: bench_browser(args.quick), "ray": lambda: bench_ray_overhead(args.quick)}
        results = []
        for key, fn in benches.items():
            if args.only and key not in args.only:
                continue
            print(f"bench: {key} ...", flush=True)
            t = time.perf_counter()
            try:
                res = fn()
            except Exception as exc:  # a failing benchmark is reported, not hidden, and the others still run
                res = {"name": key, "error": f"{type(exc).__name__}: {exc}"}
            res["seconds"] = round(time.perf_counter() - t, 1)
            results.append(res)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    versions = library_versions()
    report = {"quick": args.quick, "data": data_label, "results": results, "seconds": round(time.perf_counter() - start, 1),
              "command": "make bench" + ("-quick" if args.quick else ""),
              "machine": {"cores": os.cpu_count(), "platform": platform.platform(), "tensorflow": versions.get("tensorflow"),
                          "python": versions["python"]}, "versions": versions, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json(report, out / "report.json")
    markdown = render_markdown(report)
    (out / "report.md").write_text(markdown)
    print(markdown)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
