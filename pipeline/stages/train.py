"""Stage ``train``: fit one backbone on one experiment, keep the best-val-accuracy checkpoint, predict.

Resumable by construction: after every epoch the stage atomically writes ``last.keras`` (weights and
Adam state), ``history.parquet`` and ``state.json``; a re-run with the same resolved config continues
at the next epoch, and a completed run with the same config hash is skipped. (Resumed runs continue
from the same weights and optimizer state, but the shuffling/augmentation RNG restarts from the seed,
so they are not bit-identical to an uninterrupted run.)
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.artifacts.catalog import Catalog, RunFiles, single_run_id
from pipeline.artifacts.experiment import data_fingerprint, data_root_of, load_split_frame, read_stain_target
from pipeline.artifacts.io import atomic_path, read_json, write_json, write_parquet
from pipeline.artifacts.predictions import load_predictions, make_rows, replace_rows
from pipeline.artifacts.provenance import library_versions
from pipeline.config import TrainConfig
from pipeline.core.errors import PipelineError
from pipeline.core.hashing import stable_hash
from pipeline.core.model_specs import get_spec
from pipeline.ml.data import load_images, make_dataset
from pipeline.ml.distribute import is_chief, is_multiworker, make_strategy, prepare_multiworker_fit, replicas
from pipeline.ml.models import (FEATURE_LAYER, augmentation_layers, build_classifier, check_weights_available, compile_classifier,
                                 load_classifier)
from pipeline.ml.precision import MIXED_POLICY, dtype_policy, inner_optimizer, resolve_mixed_precision


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


def predict_with_features(model, images: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """P(malignant) and pooled backbone features in one pass (features feed the stacking ensemble)."""
    import keras

    both = keras.Model(model.input, [model.output, model.get_layer(FEATURE_LAYER).output])
    probs, feats = both.predict(make_dataset(images, None, batch_size), verbose=0)
    return probs[:, 1].astype(np.float32), feats.astype(np.float16)


def _epoch_callbacks(files: RunFiles, state: dict, n_train: int, batch_size: int, total_epochs: int,
                     checkpoint_seconds: float = 60.0, chief: bool = True, multiworker: bool = False):
    """``chief``: this process writes the run. ``multiworker``: saving a model is a collective operation under
    MultiWorkerMirroredStrategy, so every worker saves at the same epochs (others to a throwaway file outside
    the experiment) and the resume checkpoint is written every epoch instead of by wall-clock time."""
    import os
    import sys
    import tempfile

    import keras
    from tqdm.auto import tqdm

    quiet = os.environ.get("HISTOCOMPARE_QUIET") == "1" or not chief

    def save(model, target):
        if chief:
            with atomic_path(target, ".keras") as tmp:
                model.save(tmp)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                model.save(Path(tmp) / target.name)

    class EpochCheckpoint(keras.callbacks.Callback):
        """Atomic per-epoch checkpointing: best model, last model + optimizer, history, resume state."""

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()
            self.bar = tqdm(total=n_train, desc=f"{files.dir.name} epoch {epoch + 1}/{total_epochs}", unit="img",
                            dynamic_ncols=True, disable=quiet, file=sys.stderr)

        def on_train_batch_end(self, batch, logs=None):
            self.bar.update(min(batch_size, n_train - self.bar.n))
            if logs:
                self.bar.set_postfix(loss=f"{logs.get('loss', 0):.3f}", acc=f"{logs.get('accuracy', 0):.3f}", refresh=False)

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            self.bar.close()
            seconds = time.perf_counter() - self.t0
            optimizer = inner_optimizer(self.model.optimizer)  # under mixed_float16: inside the LossScaleOptimizer
            lr = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
            row = {"epoch": epoch + 1, "loss": logs.get("loss"), "accuracy": logs.get("accuracy"),
                   "val_loss": logs.get("val_loss"), "val_accuracy": logs.get("val_accuracy"),
                   "lr_backbone": lr, "lr_head": lr * optimizer.head_multiplier,
                   "seconds": seconds, "images_per_s": n_train / seconds, "phase": state.get("phase", "finetune")}
            state["history"].append(row)
            if state["best_val_accuracy"] is None or row["val_accuracy"] > state["best_val_accuracy"]:
                state["best_val_accuracy"], state["best_epoch"] = row["val_accuracy"], epoch + 1
                self.best_weights = self.model.get_weights()  # predict from memory: no reload, no re-trace
                save(self.model, files.model)
            state["epochs_done"] = epoch + 1
            if epoch + 1 < total_epochs and (multiworker or time.time() - state.get("checkpoint_time", 0.0) >= checkpoint_seconds):
                # The resume point: weights + Adam state (~3x the weights), so written at most every N seconds.
                save(self.model, files.last)
                state["checkpoint_epoch"], state["checkpoint_time"] = epoch + 1, time.time()
            if not chief:  # a multi-worker non-chief trains the same steps but writes nothing into the experiment
                return
            write_parquet(pd.DataFrame(state["history"]), files.history)
            write_json(state, files.state)
            print(f"  epoch {epoch + 1}: loss {row['loss']:.4f} acc {row['accuracy']:.3f} | val_loss {row['val_loss']:.4f} "
                  f"val_acc {row['val_accuracy']:.3f} | {seconds:.1f}s {row['images_per_s']:.1f} img/s", flush=True)

    return [EpochCheckpoint()]


def _under_run_dtype_policy(train):
    """Run ``train`` under the run's dtype policy (``mixed_precision``) and restore the global policy after."""

    @functools.wraps(train)
    def wrapper(exp_dir, model, cfg, *args, **kwargs):
        with dtype_policy(resolve_mixed_precision(cfg.mixed_precision)):
            return train(exp_dir, model, cfg, *args, **kwargs)

    return wrapper


@_under_run_dtype_policy
def train_run(exp_dir: Path | str, model: str, cfg: TrainConfig, stain: str = "none", image_size: int = 0,
              epochs: int = 0, seed: int = 0, fold: int = 0, force: bool = False, callbacks: list | None = None) -> dict:
    """Train (or resume, or skip) one run and write its artifacts and predictions. Returns run.json."""
    import keras

    exp_dir = Path(exp_dir)
    spec = get_spec(model)
    frame = load_split_frame(exp_dir, fold)
    check_classes(frame)
    run_id = run_id_for(spec.name, stain)
    files = Catalog(exp_dir).run(run_id)
    run_dir = files.dir
    size = input_size(spec.name, image_size, cfg)
    total_epochs = epochs or cfg.epochs
    resolved = {"model": spec.name, "stain": stain, "image_size": size, "epochs": total_epochs, "seed": seed,
                "fold": fold, "train": dataclasses.asdict(cfg)}
    if stain != "none":  # the normalized images depend on the chosen target: part of the run's identity
        target = read_stain_target(exp_dir, stain)
        if target is None:
            raise PipelineError(f"run `python -m pipeline stain {exp_dir} --method {stain}` before training a {stain} run")
        resolved["stain_key"] = target["key"]
    fingerprint = data_fingerprint(frame)
    config_hash = stable_hash({"resolved": resolved, "data": fingerprint})

    info_path = files.info
    if not force and info_path.exists():
        info = read_json(info_path)
        has_rows = (load_predictions(exp_dir)["run_id"] == run_id).any()
        if info.get("status") == "complete" and info.get("config_hash") == config_hash and has_rows:
            print(f"{run_id}: up to date (config {config_hash}), skipped")
            return info

    check_weights_available([spec], cfg.weights)  # before anything of the old run is deleted
    # First TensorFlow work of the run: MultiWorkerMirroredStrategy must exist before any other op.
    strategy = make_strategy(cfg.strategy)
    chief = is_chief(strategy)
    state_path = files.state
    state = read_json(state_path) if state_path.exists() else None
    resumable = (state is not None and state.get("config_hash") == config_hash and state.get("checkpoint_epoch")
                 and files.last.exists())
    if force or not resumable:
        if chief and run_dir.exists():
            shutil.rmtree(run_dir)
        if chief:
            run_dir.mkdir(parents=True)
        state = {"config_hash": config_hash, "epochs_done": 0, "checkpoint_epoch": 0, "best_val_accuracy": None,
                 "best_epoch": None, "history": []}
    else:  # continue from the last resume checkpoint; epochs after it are trained again
        state["epochs_done"] = state["checkpoint_epoch"]
        state["history"] = [h for h in state["history"] if h["epoch"] <= state["checkpoint_epoch"]]

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    images = load_images(exp_dir, data_root_of(exp_dir), frame, size, cfg.resize, stain, write_cache=chief)
    timings["load_images_s"] = time.perf_counter() - t0
    train_idx = np.flatnonzero(frame["split"].to_numpy() == "train")
    val_idx = np.flatnonzero(frame["split"].to_numpy() == "val")
    labels = frame["label"].to_numpy()
    x_train, y_train = np.asarray(images[train_idx]), labels[train_idx]
    # XLA cannot compile the augmentation layers (Keras would silently train without XLA): with jit_compile they
    # run in the input pipeline instead of inside the model.
    augment_in_data = cfg.augment and cfg.jit_compile
    ds_train = make_dataset(x_train, y_train, cfg.batch_size, shuffle=True, seed=seed,
                            augment=augmentation_layers(seed) if augment_in_data else None)
    ds_val = make_dataset(np.asarray(images[val_idx]), labels[val_idx], cfg.predict_batch_size)

    keras.utils.set_random_seed(seed)
    class_weight = None
    if cfg.class_weights:
        counts = np.bincount(y_train, minlength=2)
        class_weight = {c: len(y_train) / (2.0 * counts[c]) for c in (0, 1)}

    t0 = time.perf_counter()
    with strategy.scope():
        if state["epochs_done"] > 0:
            print(f"{run_id}: resuming after epoch {state['epochs_done']} of {total_epochs} (last resume checkpoint)")
            net = load_classifier(files.last)
        else:
            net = build_classifier(spec.name, size, cfg.weights, cfg.dropout, cfg.augment and not augment_in_data,
                                   cfg.freeze_batchnorm, seed, cfg.bn_momentum, cfg.unfreeze)
            if cfg.warmup_epochs:
                _warmup(net, ds_train, ds_val, cfg)
            compile_classifier(net, cfg.lr_backbone, cfg.lr_head, cfg.jit_compile)
        all_callbacks = _epoch_callbacks(files, state, len(x_train), cfg.batch_size, total_epochs,
                                         cfg.checkpoint_seconds, chief, is_multiworker(strategy)) + list(callbacks or [])
        if cfg.early_stopping_patience:
            all_callbacks.append(keras.callbacks.EarlyStopping("val_accuracy", patience=cfg.early_stopping_patience, mode="max"))
        if is_multiworker(strategy):
            prepare_multiworker_fit(net)
        fitted = state["epochs_done"] < total_epochs
        if fitted:
            state["phase"] = "finetune"
            net.fit(ds_train, validation_data=ds_val, epochs=total_epochs, initial_epoch=state["epochs_done"],
                    verbose=0, callbacks=all_callbacks, class_weight=class_weight, shuffle=False)
    timings["train_s"] = time.perf_counter() - t0

    if not chief:  # the chief predicts every image and writes the run; this worker is done
        print(f"{run_id}: worker {strategy.cluster_resolver.task_type} {strategy.cluster_resolver.task_id} finished "
              f"training; the chief writes the run", flush=True)
        return {"run_id": run_id, "status": "worker", "config_hash": config_hash}
    t0 = time.perf_counter()
    best_weights = getattr(all_callbacks[0], "best_weights", None) if fitted else None
    if best_weights is not None and is_multiworker(strategy):
        # A model built under MultiWorkerMirroredStrategy predicts only this worker's shard: predict with a
        # local copy instead, so the chief scores every val/test image.
        best = build_classifier(spec.name, size, "none", cfg.dropout, cfg.augment and not augment_in_data,
                                cfg.freeze_batchnorm, seed, cfg.bn_momentum, cfg.unfreeze)
        best.set_weights(best_weights)
    elif best_weights is not None:
        net.set_weights(best_weights)
        best = net
    else:  # resumed after the best epoch, or nothing left to fit: the checkpoint on disk is the best model
        best = load_classifier(files.model)
    eval_mask = frame["split"].isin(["val", "test"]).to_numpy()
    eval_frame = frame[eval_mask].reset_index(drop=True)
    probs, feats = predict_with_features(best, np.asarray(images[np.flatnonzero(eval_mask)]), cfg.predict_batch_size)
    timings["predict_s"] = time.perf_counter() - t0
    with atomic_path(files.features, ".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, image_id=eval_frame["image_id"].to_numpy().astype(str), features=feats)
    rows = make_rows(run_id, "single", spec.name, spec.family, stain, eval_frame, probs)
    replace_rows(exp_dir, rows, [run_id])

    accuracy = rows.assign(ok=rows["pred"] == rows["label"]).groupby("split")["ok"].mean().to_dict()
    history = pd.DataFrame(state["history"])
    train_rates = history.loc[history["phase"] == "finetune", "images_per_s"] if len(history) else pd.Series(dtype=float)
    info = {
        "run_id": run_id, "status": "complete", "config_hash": config_hash, "resolved_config": resolved,
        "data_fingerprint": fingerprint, "versions": library_versions(), "best_epoch": state["best_epoch"],
        "best_val_accuracy": state["best_val_accuracy"], "epochs_done": state["epochs_done"],
        "val_accuracy": accuracy.get("val"), "test_accuracy": accuracy.get("test"),
        "train_images": int(len(x_train)), "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "train_images_per_s": round(float(train_rates.iloc[1:].mean() if len(train_rates) > 1 else train_rates.mean()), 2)
        if len(train_rates) else None,
        "predict_images_per_s": round(len(eval_frame) / max(timings["predict_s"], 1e-9), 2),
        "model_file": "model.keras", "family": spec.family, "model": spec.name, "stain": stain, "image_size": size,
        "mixed_precision": keras.mixed_precision.global_policy().name == MIXED_POLICY, "replicas": replicas(strategy),
        "strategy": cfg.strategy, "xla": bool(net.jit_compile),
    }
    write_json(info, info_path)
    files.last.unlink(missing_ok=True)  # the resume point is no longer needed; model.keras stays
    print(f"{run_id}: val acc {info['val_accuracy']:.3f}, test acc {info['test_accuracy']:.3f}, best epoch {info['best_epoch']}, "
          f"train {timings['train_s']:.0f}s ({info['train_images_per_s']} img/s)", flush=True)
    return info


def _warmup(net, ds_train, ds_val, cfg: TrainConfig) -> None:
    """Optional head-only epochs before fine-tuning (off in the study's recipe)."""
    import keras

    trainable = {l.name: l.trainable for l in net.layers}
    for layer in net.layers:
        layer.trainable = layer.name.startswith("head_")
    net.compile(optimizer=keras.optimizers.Adam(cfg.lr_head), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    net.fit(ds_train, validation_data=ds_val, epochs=cfg.warmup_epochs, verbose=0)
    for layer in net.layers:
        layer.trainable = trainable[layer.name]
