"""Stage ``train``: fit one backbone on one experiment, keep the best-val-accuracy checkpoint, predict.

The lifecycle of a run (every write atomic; ``state.json`` is the commit record of an unfinished run,
``run.json`` of a finished one):

(In the code: :func:`plan_run` is step 1, :func:`completed_info` step 2, :func:`_prepare` step 3, :func:`_fit` steps
4-6 up to the commit, :func:`_finish` step 7; :func:`train_run` strings them together.)

1. **Plan**: resolve the run's settings and hash those that change its result (``workers``,
   ``checkpoint_seconds`` and ``predict_batch_size`` do not) with the content fingerprint of its data (image
   ids, content hashes, labels, split), the sha256 of a weights file (cached by size and mtime) and, for a
   stained run, the stain target's key.
2. **Skip** when ``run.json`` is complete with that hash and ``model.keras`` and the run's own
   ``predictions.parquet`` are there: one line, "up to date", nothing written.
3. **Validate, then act**: the weights, the (stain-normalized) images, their decoded cache and the model itself
   (built, or loaded from the resume point) are all ready before the run folder is touched, so a command that
   cannot start leaves the earlier run, its model and its predictions as they were.
4. **Train**. After every epoch: ``model.keras`` when validation accuracy improves, ``history.parquet``, then
   ``state.json``. After the first epoch and then at most every ``checkpoint_seconds``, a resume point:
   ``resume-eNNNN.keras`` (weights + Adam state) and ``best-eNNNN.keras``, a hard link to the best model as of
   that epoch; ``state.json`` names the current one.
5. **Resume** after any interruption (Ctrl-C, SIGKILL at any point): training continues after the resume point,
   and history, best epoch and ``model.keras`` are put back to that point, so the three always agree (the epochs
   after it are trained again). When every epoch was done (``fit_complete``), only prediction is redone.
   (Shuffling/augmentation restart from the seed, so a resumed run is not bit-identical to an uninterrupted one.)
6. **Retrain** of a finished run (new hash or ``--force``): steps 4-5 happen in ``runs/<run_id>.retrain/``; the
   finished run stays in place, rows included, until the new ``run.json`` commits, then the folders swap by rename.
7. **Finish**: predict val/test with the best model; write ``features.npz`` (pooled features of train, val and test),
   the run's ``predictions.parquet`` and ``run.json``; remove ``state.json`` and the resume points; merge the
   experiment's ``predictions.parquet``.
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.artifacts.catalog import Catalog, RunFiles, single_run_id
from pipeline.artifacts.entries import Inputs
from pipeline.artifacts.experiment import data_fingerprint
from pipeline.artifacts.io import atomic_link, atomic_path, read_json, write_json, write_parquet
from pipeline.artifacts.predictions import make_rows, merge_predictions
from pipeline.artifacts.provenance import library_versions
from pipeline.artifacts.stamps import cached_digest, content_digest
from pipeline.config import TrainConfig
from pipeline.core.errors import PipelineError
from pipeline.core.hashing import stable_hash
from pipeline.core.model_specs import ModelSpec, get_spec
from pipeline.devices import place
from pipeline.ml.data import load_images, make_dataset
from pipeline.ml.distribute import is_chief, is_multiworker, make_strategy, prepare_multiworker_fit, replicas
from pipeline.ml.models import (FEATURE_LAYER, augmentation_layers, build_classifier, check_weights_available, compile_classifier,
                                 keras_file_problem, load_classifier)
from pipeline.ml.precision import MIXED_POLICY, dtype_policy, inner_optimizer, resolve_mixed_precision

STATE_VERSION = 2  # state.json written by an older lifecycle is not resumed from (the run starts afresh)


def run_id_for(model: str, stain: str = "none") -> str:
    return single_run_id(get_spec(model).short, stain)


def input_size(model: str, image_size: int, cfg: TrainConfig) -> int:
    """A run's input size: its own override, else the preset's, else the study's size for the model."""
    return image_size or cfg.image_size or get_spec(model).size


def check_classes(frame: pd.DataFrame) -> None:
    """Every split needs both classes; a run on an empty class would silently learn nothing."""
    for split in ("train", "val", "test"):
        part = frame[frame["split"] == split]
        for label, name in ((0, "benign"), (1, "malignant")):
            if not (part["label"] == label).any():
                raise PipelineError(f"the {split} split has no {name} images ({len(part)} images in {split}); re-split with more patients")


@dataclass
class RunPlan:
    """One run, resolved: what it trains on, with which settings, and the hash of everything that changes its result."""

    exp_dir: Path
    spec: ModelSpec
    frame: pd.DataFrame
    run_id: str
    files: RunFiles
    stain: str
    size: int
    total_epochs: int
    seed: int
    resolved: dict
    fingerprint: str
    config_hash: str
    inputs: Inputs  # the experiment's loaded inputs the plan was made from (data root, stain target) for the run to use
    stain_target: dict | None = None


def plan_run(exp_dir: Path | str, model: str, cfg: TrainConfig, stain: str = "none", image_size: int = 0, epochs: int = 0,
             seed: int = 0, fold: int = 0, inputs: Inputs | None = None) -> RunPlan:
    """Resolve a run without TensorFlow (the runner uses it to skip finished runs before starting any worker).

    ``inputs``: the experiment's loaded inputs (the runner's, shared by every run it plans); a fresh one by default."""
    exp_dir = Path(exp_dir)
    inputs = inputs or Inputs(exp_dir)
    spec = get_spec(model)
    frame = inputs.split_frame(fold)
    check_classes(frame)
    run_id = run_id_for(spec.name, stain)
    size = input_size(spec.name, image_size, cfg)
    total_epochs = epochs or cfg.epochs
    resolved = {"model": spec.name, "stain": stain, "image_size": size, "epochs": total_epochs, "seed": seed,
                "fold": fold, "train": cfg.result_settings()}
    if cfg.weights not in ("imagenet", "none"):  # a file's bytes, not its path: replacing it in place retrains
        resolved["weights_sha256"] = cached_digest(cfg.weights, Catalog(exp_dir).weights_digests, write=False)
    target = None
    if stain != "none":  # the normalized images depend on the chosen target: part of the run's identity
        target = inputs.require_stain_target(stain)
        resolved["stain_key"] = target["key"]
    fingerprint = data_fingerprint(frame)
    config_hash = stable_hash({"resolved": resolved, "data": fingerprint})
    return RunPlan(exp_dir, spec, frame, run_id, Catalog(exp_dir).run(run_id), stain, size, total_epochs, seed, resolved,
                   fingerprint, config_hash, inputs, target)


def completed_info(plan: RunPlan) -> dict | None:
    """``run.json`` of a finished run with the same hash whose model and predictions are there; else None."""
    files = plan.files
    if not (files.info.exists() and files.model.exists() and files.predictions.exists()):
        return None
    try:
        info = read_json(files.info)
    except PipelineError:  # damaged run.json: not complete, the run is redone
        return None
    ok = isinstance(info, dict) and info.get("status") == "complete" and info.get("config_hash") == plan.config_hash
    return info if ok else None


def best_epoch_of(history: list[dict]) -> tuple[int | None, float | None]:
    """(epoch, val_accuracy) of the first epoch with the highest validation accuracy: the callback's own rule
    (warm-up epochs, if any, are not candidates: the kept model is a fine-tuned one)."""
    best_epoch, best = None, None
    for row in history:
        if row.get("phase") == "warmup":
            continue
        if best is None or row["val_accuracy"] > best:
            best_epoch, best = int(row["epoch"]), row["val_accuracy"]
    return best_epoch, best


def predict_with_features(model, images: np.ndarray, batch_size: int,
                          *more: np.ndarray) -> tuple[np.ndarray, np.ndarray] | list[tuple[np.ndarray, np.ndarray]]:
    """P(malignant) and pooled backbone features in one pass (features feed the stacking ensemble).

    With ``more`` arrays, every array goes through the same two-output model, so its predict graph is traced
    once per run (tracing an EfficientNet costs seconds on a CPU; a second model would trace it again), and a
    list of (probs, features) comes back, one per array. An array may be given as ``(images, rows)``: those rows of
    a (memory-mapped) cache, read batch by batch when they exceed memory (see ``make_dataset``)."""
    import keras

    both = keras.Model(model.input, [model.output, model.get_layer(FEATURE_LAYER).output])
    both.run_eagerly = bool(getattr(model, "run_eagerly", False))
    results = []
    for array in (images, *more):
        array, rows = array if isinstance(array, tuple) else (array, None)
        probs, feats = both.predict(make_dataset(array, None, batch_size, rows=rows), verbose=0)
        results.append((probs[:, 1].astype(np.float32), feats.astype(np.float16)))
    return results if more else results[0]


def _epoch_callbacks(files: RunFiles, state: dict, n_train: int, batch_size: int, total_epochs: int,
                     checkpoint_seconds: float = 60.0, chief: bool = True, multiworker: bool = False, run_id: str = ""):
    """``chief``: this process writes the run. ``multiworker``: saving a model is a collective operation under
    MultiWorkerMirroredStrategy, so every worker saves at the same epochs (others to a throwaway file outside
    the experiment) and the resume checkpoint is written every epoch instead of by wall-clock time."""
    import tempfile

    import keras

    from pipeline.ml.tensorboard import EpochScalars
    from pipeline.progress import batch_event, report

    run_id = run_id or files.dir.name

    def save(model, target):
        if chief:
            with atomic_path(target, ".keras") as tmp:
                model.save(tmp)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                model.save(Path(tmp) / target.name)

    class EpochCheckpoint(keras.callbacks.Callback):
        """Per-epoch commit: best model, history, resume point, then state.json (see the module docstring).
        Also reports batch progress with an ETA to the runner's one display (``pipeline.progress``)."""

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = self.last_report = time.perf_counter()
            self.epoch, self.seen = epoch + 1, 0

        def on_train_batch_end(self, batch, logs=None):
            self.seen = min(self.seen + batch_size, n_train)
            now = time.perf_counter()
            if chief and (now - self.last_report >= 0.5 or self.seen == n_train):  # one report per run: the chief's
                self.last_report = now
                logs = logs or {}
                report(batch_event(run_id, self.epoch, total_epochs, self.seen, n_train, now - self.t0,
                                   [h["seconds"] for h in state["history"]], logs.get("loss"), logs.get("accuracy")))

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            done = epoch + 1
            seconds = time.perf_counter() - self.t0
            optimizer = inner_optimizer(self.model.optimizer)  # under mixed_float16: inside the LossScaleOptimizer
            lr = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
            row = {"epoch": done, "loss": logs.get("loss"), "accuracy": logs.get("accuracy"),
                   "val_loss": logs.get("val_loss"), "val_accuracy": logs.get("val_accuracy"),
                   "lr_backbone": lr, "lr_head": lr * optimizer.head_multiplier,
                   "seconds": seconds, "images_per_s": n_train / seconds, "phase": "fine-tune"}
            state["history"].append(row)
            if state["best_val_accuracy"] is None or row["val_accuracy"] > state["best_val_accuracy"]:
                state["best_val_accuracy"], state["best_epoch"] = row["val_accuracy"], done
                self.best_weights = self.model.get_weights()  # predict from memory: no reload, no re-trace
                save(self.model, files.model)
            state["epochs_done"] = done
            stale: list[Path] = []
            if done >= total_epochs:
                state["fit_complete"] = True
            elif multiworker or time.time() - state.get("checkpoint_time", 0.0) >= checkpoint_seconds:
                # The resume point: weights + Adam state (~3x the weights), so written at most every N seconds, and
                # the best model as of now (a hard link), so a resume can put model.keras back to this point.
                save(self.model, files.resume(done))
                if chief:
                    atomic_link(files.model, files.resume_best(done))
                    if state["checkpoint_epoch"]:
                        stale = [files.resume(state["checkpoint_epoch"]), files.resume_best(state["checkpoint_epoch"])]
                state["checkpoint_epoch"], state["checkpoint_time"] = done, time.time()
            if not chief:  # a multi-worker non-chief trains the same steps but writes nothing into the experiment
                return
            write_parquet(pd.DataFrame(state["history"]), files.history)
            write_json(state, files.state)  # the commit: a resume trusts only what state.json names
            for path in stale:
                path.unlink(missing_ok=True)
            print(f"  {run_id} epoch {done}: loss {row['loss']:.4f} acc {row['accuracy']:.3f} | val_loss {row['val_loss']:.4f} "
                  f"val_acc {row['val_accuracy']:.3f} | {seconds:.1f}s {row['images_per_s']:.1f} img/s", flush=True)

    return [EpochCheckpoint()] + ([EpochScalars(files.tensorboard)] if chief else [])  # only the chief writes the run


def _resume_state(files: RunFiles, config_hash: str) -> dict | None:
    """The state to continue from, cut back to its resume point; None when the run must start afresh."""
    if not files.state.exists():
        return None
    try:
        state = read_json(files.state)
    except PipelineError:  # damaged state.json: start afresh rather than fail until --force
        return None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION or state.get("config_hash") != config_hash:
        return None
    if state.get("fit_complete") and state.get("best_epoch") and files.model.exists():
        return state  # every epoch done: model.keras is the best of the whole history, only prediction is left
    point = int(state.get("checkpoint_epoch") or 0)
    if point < 1 or not files.resume(point).exists() or not files.resume_best(point).exists():
        return None
    if not resume_point_is_whole(files, point, state.get("run_id", files.dir.name)):
        return None
    kept = [h for h in state.get("history", []) if h["epoch"] <= point]
    if [h["epoch"] for h in kept] != list(range(1, point + 1)):
        return None
    best_epoch, best = best_epoch_of(kept)  # only epochs that are kept count
    state.update(history=kept, epochs_done=point, best_epoch=best_epoch, best_val_accuracy=best, fit_complete=False)
    return state


def _restore_resume_point(files: RunFiles, state: dict) -> None:
    """Put model.keras and history.parquet back to the resume point and drop files no state names."""
    point = state["checkpoint_epoch"]
    if not state.get("fit_complete"):
        atomic_link(files.resume_best(point), files.model)
        write_parquet(pd.DataFrame(state["history"]), files.history)
        write_json(state, files.state)
    keep = {files.resume(point), files.resume_best(point)} if point else set()
    for path in files.resume_files():
        if path not in keep:
            path.unlink(missing_ok=True)
    for path in files.dir.glob(".*"):  # temp files of writes cut short by a SIGKILL (never renamed into place)
        if path.is_file():
            path.unlink(missing_ok=True)


def _reset_run_folder(files: RunFiles) -> None:
    """Start afresh: only called once everything the new run needs has been checked."""
    if files.dir.exists():
        shutil.rmtree(files.dir)
    files.dir.mkdir(parents=True)


def staging_files(files: RunFiles) -> RunFiles:
    """Where a *retrain* of a finished run trains (``runs/<run_id>.retrain/``, not a run id: merges ignore it), so
    the finished run, its model and its rows stay exactly as they were until the new ``run.json`` commits."""
    return RunFiles(files.dir.with_name(files.dir.name + ".retrain"))


def _is_finished(files: RunFiles) -> bool:
    try:
        return files.info.exists() and read_json(files.info).get("status") == "complete"
    except (PipelineError, AttributeError):
        return False


def _commit_staged(files: RunFiles, staging: RunFiles) -> None:
    """Swap a committed retrain into place: old folder aside, staged folder in, old folder removed.

    Each step is a rename; :func:`_recover_swap` finishes the swap when a process dies between the two."""
    old = files.dir.with_name(files.dir.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if files.dir.exists():
        os.replace(files.dir, old)
    os.replace(staging.dir, files.dir)
    shutil.rmtree(old, ignore_errors=True)


def _recover_swap(files: RunFiles) -> None:
    """After a kill between the swap's two renames: put whichever folder holds a committed run in place."""
    staging, old = staging_files(files), files.dir.with_name(files.dir.name + ".old")
    if not files.dir.exists():
        if _is_finished(staging):
            os.replace(staging.dir, files.dir)
        elif old.exists():
            os.replace(old, files.dir)
    if old.exists() and files.dir.exists():
        shutil.rmtree(old, ignore_errors=True)


def _remove_leftovers(files: RunFiles) -> None:
    """A finished run keeps no resume state (state.json, resume points)."""
    files.state.unlink(missing_ok=True)
    for path in files.resume_files():
        path.unlink(missing_ok=True)


def _under_run_dtype_policy(train):
    """Run ``train`` under the run's dtype policy (``mixed_precision``) and restore the global policy after."""

    @functools.wraps(train)
    def wrapper(exp_dir, model, cfg, *args, **kwargs):
        with dtype_policy(resolve_mixed_precision(cfg.mixed_precision)):
            return train(exp_dir, model, cfg, *args, **kwargs)

    return wrapper


@dataclass
class Prepared:
    """A run ready to fit: everything validated and loaded before the run folder is touched (lifecycle step 3)."""

    files: RunFiles  # where this attempt writes: the run folder, or its staging folder for a retrain
    retrain: bool
    strategy: object
    chief: bool
    images: np.ndarray
    state: dict | None  # the resume state, None for a fresh start
    train_idx: np.ndarray
    val_idx: np.ndarray
    ds_train: object
    ds_val: object
    class_weight: dict | None
    augment_in_data: bool
    timings: dict


@dataclass
class Fitted:
    """What fitting left: the state (history, best epoch), the model in memory (None when nothing was left to fit)
    and the best epoch's weights when this process saw that epoch."""

    state: dict
    net: object
    best_weights: list | None


@_under_run_dtype_policy
def train_run(exp_dir: Path | str, model: str, cfg: TrainConfig, stain: str = "none", image_size: int = 0,
              epochs: int = 0, seed: int = 0, fold: int = 0, force: bool = False, callbacks: list | None = None,
              inputs: Inputs | None = None) -> dict:
    """Train (or resume, or skip) one run and write its artifacts and predictions. Returns run.json.

    Plan (:func:`plan_run`), skip when finished, prepare (:func:`_prepare`: validate and load; the run folder is not
    touched, though the decode cache and weight digests may be written), fit (:func:`_fit`), finish (:func:`_finish`:
    predict, write, commit). ``inputs``: the experiment's loaded inputs."""
    plan = plan_run(exp_dir, model, cfg, stain, image_size, epochs, seed, fold, inputs)
    _recover_swap(plan.files)
    if not force:
        info = completed_info(plan)
        if info is not None:
            _remove_leftovers(plan.files)
            if staging_files(plan.files).dir.exists():  # a retrain to a hash that is no longer wanted
                shutil.rmtree(staging_files(plan.files).dir)
            merge_predictions(plan.exp_dir)
            print(f"{plan.run_id}: up to date (config {plan.config_hash})", flush=True)
            return info
    prepared = _prepare(plan, cfg, force)
    fitted = _fit(plan, prepared, cfg, callbacks)
    if not prepared.chief:  # the chief predicts every image and writes the run; this worker is done
        resolver = prepared.strategy.cluster_resolver
        print(f"{plan.run_id}: worker {resolver.task_type} {resolver.task_id} finished training; the chief writes the run",
              flush=True)
        return {"run_id": plan.run_id, "status": "worker", "config_hash": plan.config_hash}
    return _finish(plan, prepared, fitted, cfg)


def _prepare(plan: RunPlan, cfg: TrainConfig, force: bool) -> Prepared:
    """Validate: weights, the distribution strategy, the decoded images, the resume state and the datasets, all
    before anything of the run changes. A retrain of a finished run trains into a staging folder; the finished run is
    replaced only when the new run.json commits (an interrupted retrain leaves it exactly as it was)."""
    retrain = _is_finished(plan.files)
    files = staging_files(plan.files) if retrain else plan.files
    check_weights_available([plan.spec], cfg.weights)
    if cfg.weights not in ("imagenet", "none"):  # validated: now remember its digest, so the next plan need not re-hash
        cached_digest(cfg.weights, Catalog(plan.exp_dir).weights_digests)
    # First TensorFlow work of the run: MultiWorkerMirroredStrategy must exist before any other op.
    strategy = make_strategy(cfg.strategy)
    chief = is_chief(strategy)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    images = load_images(plan.exp_dir, plan.inputs.data_root(), plan.frame, plan.size, cfg.resize, plan.stain,
                         write_cache=chief, stain_target=plan.stain_target)
    timings["load_images_s"] = time.perf_counter() - t0
    state = None if force else _resume_state(files, plan.config_hash)
    split = plan.frame["split"].to_numpy()
    train_idx, val_idx = np.flatnonzero(split == "train"), np.flatnonzero(split == "val")
    labels = plan.frame["label"].to_numpy()
    y_train = labels[train_idx]
    # XLA cannot compile the augmentation layers (Keras would silently train without XLA): with jit_compile they
    # run in the input pipeline instead of inside the model.
    augment_in_data = cfg.augment and cfg.jit_compile
    ds_train = make_dataset(images, y_train, cfg.batch_size, shuffle=True, seed=plan.seed, rows=train_idx,
                            augment=augmentation_layers(plan.seed) if augment_in_data else None)
    ds_val = make_dataset(images, labels[val_idx], cfg.predict_batch_size, rows=val_idx)
    class_weight = None
    if cfg.class_weights:
        counts = np.bincount(y_train, minlength=2)
        class_weight = {c: len(y_train) / (2.0 * counts[c]) for c in (0, 1)}
    return Prepared(files, retrain, strategy, chief, images, state, train_idx, val_idx, ds_train, ds_val, class_weight,
                    augment_in_data, timings)


def _build(plan: RunPlan, cfg: TrainConfig, augment_in_data: bool, weights: str):
    """The run's classifier as the recipe builds it (``weights``: the run's, or "none" for a local copy)."""
    return build_classifier(plan.spec.name, plan.size, weights, cfg.dropout, cfg.augment and not augment_in_data,
                            cfg.freeze_batchnorm, plan.seed, cfg.bn_momentum, cfg.unfreeze)


def _fit(plan: RunPlan, prep: Prepared, cfg: TrainConfig, callbacks: list | None) -> Fitted:
    """Build (or load the resume point), then act: reset or restore the run folder and fit the remaining epochs."""
    import keras

    keras.utils.set_random_seed(plan.seed)
    files, state = prep.files, prep.state
    t0 = time.perf_counter()
    all_callbacks: list = []
    with prep.strategy.scope():
        net = None
        if state is None:
            try:
                net = _build(plan, cfg, prep.augment_in_data, cfg.weights)
            except (ValueError, OSError) as exc:
                if cfg.weights in ("imagenet", "none"):
                    raise
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise PipelineError(f"cannot load weights {cfg.weights} into {plan.spec.name}: {first}") from None
        elif not state.get("fit_complete"):
            net = load_classifier(files.resume(state["checkpoint_epoch"]))
        # -- act: from here on the run folder changes ------------------------------------------------------
        if state is None:
            if prep.chief:
                _reset_run_folder(files)
            state = {"version": STATE_VERSION, "config_hash": plan.config_hash, "epochs_done": 0, "checkpoint_epoch": 0,
                     "checkpoint_time": 0.0, "best_val_accuracy": None, "best_epoch": None, "history": [],
                     "fit_complete": False}
            if cfg.warmup_epochs:
                state["history"] = _warmup(net, prep.ds_train, prep.ds_val, cfg, len(prep.train_idx))
            compile_classifier(net, cfg.lr_backbone, cfg.lr_head, cfg.jit_compile)
        else:
            if prep.chief:
                _restore_resume_point(files, state)
            how = ("predicting" if state.get("fit_complete")
                   else f"resuming after epoch {state['epochs_done']} of {plan.total_epochs}")
            print(f"{plan.run_id}: {how} (last resume point)", flush=True)
        if net is not None:
            multiworker = is_multiworker(prep.strategy)
            net.run_eagerly = cfg.run_eagerly
            all_callbacks = _epoch_callbacks(files, state, len(prep.train_idx), cfg.batch_size, plan.total_epochs,
                                             cfg.checkpoint_seconds, prep.chief, multiworker, plan.run_id) + list(callbacks or [])
            if cfg.early_stopping_patience:
                all_callbacks.append(keras.callbacks.EarlyStopping("val_accuracy", patience=cfg.early_stopping_patience, mode="max"))
            if multiworker:
                prepare_multiworker_fit(net)
            net.fit(prep.ds_train, validation_data=prep.ds_val, epochs=plan.total_epochs, initial_epoch=state["epochs_done"],
                    verbose=0, callbacks=all_callbacks, class_weight=prep.class_weight, shuffle=False)
            if not state.get("fit_complete"):  # early stopping ended it before the last epoch
                state["fit_complete"] = True
                if prep.chief:
                    write_json(state, files.state)
    prep.timings["train_s"] = time.perf_counter() - t0
    best_weights = getattr(all_callbacks[0], "best_weights", None) if net is not None else None
    return Fitted(state, net, best_weights)


def _best_model(plan: RunPlan, prep: Prepared, fitted: Fitted, cfg: TrainConfig):
    """The best epoch's model: from memory when this process saw it, else the checkpoint on disk."""
    if fitted.best_weights is not None and is_multiworker(prep.strategy):
        # A model built under MultiWorkerMirroredStrategy predicts only this worker's shard: predict with a
        # local copy instead, so the chief scores every val/test image.
        best = _build(plan, cfg, prep.augment_in_data, "none")
        best.set_weights(fitted.best_weights)
        return best
    if fitted.best_weights is not None:
        fitted.net.set_weights(fitted.best_weights)
        return fitted.net
    best = load_classifier(prep.files.model)  # resumed after the best epoch, or nothing left to fit
    best.run_eagerly = cfg.run_eagerly
    return best


def _finish(plan: RunPlan, prep: Prepared, fitted: Fitted, cfg: TrainConfig) -> dict:
    """Predict val/test with the best model; write features, the run's predictions and run.json (the commit); swap a
    staged retrain into place; remove the resume state; merge the experiment's predictions."""
    import keras

    files, state, timings, frame, run_id = prep.files, fitted.state, prep.timings, plan.frame, plan.run_id
    t0 = time.perf_counter()
    best = _best_model(plan, prep, fitted, cfg)
    eval_mask = frame["split"].isin(["val", "test"]).to_numpy()
    eval_frame = frame[eval_mask].reset_index(drop=True)
    train_idx = prep.train_idx
    # Training images' features too: the neighbours stage searches them for each val/test image's nearest ones.
    (probs, feats), (_, train_feats) = predict_with_features(
        best, (prep.images, np.flatnonzero(eval_mask)), cfg.predict_batch_size, (prep.images, train_idx))
    timings["predict_s"] = time.perf_counter() - t0  # val/test scores and every image's features
    with atomic_path(files.features, ".npz") as tmp:
        with open(tmp, "wb") as fh:
            ids = np.concatenate([frame["image_id"].to_numpy()[train_idx], eval_frame["image_id"].to_numpy()]).astype(str)
            np.savez_compressed(fh, image_id=ids,
                                split=np.concatenate([np.full(len(train_idx), "train"), eval_frame["split"].to_numpy()]).astype(str),
                                features=np.concatenate([train_feats, feats]))
    rows = make_rows(run_id, "single", plan.spec.name, plan.spec.family, plan.stain, eval_frame, probs)
    write_parquet(rows, files.predictions)

    accuracy = rows.assign(ok=rows["pred"] == rows["label"]).groupby("split")["ok"].mean().to_dict()
    history = pd.DataFrame(state["history"])
    if state["best_epoch"] not in set(history["epoch"]):  # the lifecycle guarantees it; never write a run that disagrees
        raise PipelineError(f"{run_id}: best epoch {state['best_epoch']} is not in the history; re-run with --force")
    rates = history.loc[history["phase"].ne("warmup"), "images_per_s"] if "phase" in history else history["images_per_s"]
    net = fitted.net
    info = {
        "run_id": run_id, "status": "complete", "config_hash": plan.config_hash, "resolved_config": plan.resolved,
        "data_fingerprint": plan.fingerprint, "versions": library_versions(), "best_epoch": state["best_epoch"],
        "best_val_accuracy": state["best_val_accuracy"], "epochs_done": state["epochs_done"],
        "val_accuracy": accuracy.get("val"), "test_accuracy": accuracy.get("test"),
        "train_images": int(len(train_idx)), "timings_s": {k: round(v, 2) for k, v in timings.items()},
        # the first epoch includes graph tracing: the rate is the mean of the others when there are any
        "train_images_per_s": round(float(rates.iloc[1:].mean() if len(rates) > 1 else rates.mean()), 2),
        # predict_s covers the val/test scores and the training images' features (one pass each, one model)
        "predict_images_per_s": round((len(eval_frame) + len(train_idx)) / max(timings["predict_s"], 1e-9), 2),
        "model_file": "model.keras", "model_sha256": content_digest(files.model), "family": plan.spec.family,
        "model": plan.spec.name, "stain": plan.stain, "image_size": plan.size,
        "mixed_precision": keras.mixed_precision.global_policy().name == MIXED_POLICY, "replicas": replicas(prep.strategy),
        "strategy": cfg.strategy, "xla": bool(net.jit_compile) if net is not None else bool(cfg.jit_compile),
        # where it trained: the host and the device its worker was given ("GPU 1"; "CPU" without one)
        **{k: v for k, v in place().items() if k in ("node", "device")},
    }
    write_json(info, files.info)  # the commit of a finished run
    if prep.retrain:
        _commit_staged(plan.files, files)
        files = plan.files
    _remove_leftovers(files)
    merge_predictions(plan.exp_dir)
    print(f"{run_id}: val acc {info['val_accuracy']:.3f}, test acc {info['test_accuracy']:.3f}, best epoch {info['best_epoch']}, "
          f"train {timings['train_s']:.0f}s ({info['train_images_per_s']} img/s)", flush=True)
    return info


def resume_point_is_whole(files: RunFiles, point: int, run_id: str) -> bool:
    """False (with a one-line notice) when the resume checkpoint of epoch ``point`` is truncated or corrupt: the
    run then starts again instead of failing on every re-run until ``--force``."""
    for path in (files.resume(point), files.resume_best(point)):
        problem = keras_file_problem(path)
        if problem:
            print(f"{run_id}: the resume checkpoint {path} is unusable ({problem}); starting the run again from epoch 1",
                  flush=True)
            return False
    return True


def _warmup(net, ds_train, ds_val, cfg: TrainConfig, n_train: int) -> list[dict]:
    """Optional head-only epochs before fine-tuning (off in the study's recipe). Returns their history rows, with
    ``phase = "warmup"`` and epochs numbered ``1 - warmup_epochs ... 0``, so that fine-tuning keeps epochs 1..N
    (best epoch, resume points, TensorBoard) and a plot by epoch shows the warm-up to their left."""
    import keras

    trainable = {l.name: l.trainable for l in net.layers}
    for layer in net.layers:
        layer.trainable = layer.name.startswith("head_")
    net.compile(optimizer=keras.optimizers.Adam(cfg.lr_head), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    starts: list[float] = []
    seconds: list[float] = []
    timer = keras.callbacks.LambdaCallback(on_epoch_begin=lambda e, logs: starts.append(time.perf_counter()),
                                           on_epoch_end=lambda e, logs: seconds.append(time.perf_counter() - starts[-1]))
    fitted = net.fit(ds_train, validation_data=ds_val, epochs=cfg.warmup_epochs, verbose=0, callbacks=[timer]).history
    for layer in net.layers:
        layer.trainable = trainable[layer.name]
    return [{"epoch": i + 1 - cfg.warmup_epochs, "loss": fitted["loss"][i], "accuracy": fitted["accuracy"][i],
             "val_loss": fitted["val_loss"][i], "val_accuracy": fitted["val_accuracy"][i], "lr_backbone": 0.0,
             "lr_head": cfg.lr_head, "seconds": seconds[i], "images_per_s": n_train / seconds[i], "phase": "warmup"}
            for i in range(cfg.warmup_epochs)]
