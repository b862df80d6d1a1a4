"""The study's stacking meta-model on frozen backbones' pooled features.

Architecture as published: concat(features) -> BN -> Dropout .2 -> Dense 128 ReLU -> BN -> Dropout .2
-> Dense 32 ReLU -> BN -> Dropout .2 -> Dense 2 softmax, Adam 1e-3, trained on the validation split,
by default as the study trained it: 40 epochs, batch 16, ReduceLROnPlateau.
Unlike the study, the test split is never used for monitoring: an inner 80/20 split of validation, by
patient and stratified by class (:func:`pipeline.core.splits.inner_holdout`), drives ReduceLROnPlateau and
picks the epoch (best inner-holdout loss), so test stays a true hold-out and no patient sits on both inner
sides. The remaining differences are listed in the README ("Stacking").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.artifacts.features import read_features
from pipeline.core.errors import PipelineError


def load_features(path: Path, image_ids: list[str], rerun: str | None = None) -> np.ndarray:
    """Pooled features of ``image_ids`` (in that order) from a run's ``features.npz``, as float32 for the meta-model
    (read by :func:`pipeline.artifacts.features.read_features`; ``rerun`` is the command its errors name, by
    default the run's ``train --force``)."""
    return read_features(path, image_ids, rerun=rerun).astype(np.float32)


def build_meta_model(n_features: int, seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((n_features,), name="features")
    x = keras.layers.BatchNormalization()(inputs)
    x = keras.layers.Dropout(0.2)(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Dropout(0.2)(x)
    x = keras.layers.Dense(32, activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(2, activation="softmax")(x)
    model = keras.Model(inputs, outputs, name="stacking")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def fit_stacking(val_x: np.ndarray, val_y: np.ndarray, test_x: np.ndarray, epochs: int = 40, seed: int = 0,
                 batch_size: int = 16, reduce_lr: bool = True, patience: int = 0,
                 val_patients: np.ndarray | None = None) -> dict:
    """Train on an inner split of val, select the epoch on the inner hold-out, predict test.

    ``patience`` 0 trains every epoch and restores the best inner-hold-out epoch at the end (the study kept
    the best epoch too, but judged it on test); N > 0 stops after N epochs without improvement.
    ``reduce_lr``: Keras's ``ReduceLROnPlateau`` with its defaults (factor 0.1, patience 10) on the hold-out loss.
    ``val_patients``: each validation image's patient; the inner hold-out is then whole patients (falls back to an
    image split, reported as ``inner_split: "image"``, when there are none or too few).
    """
    import keras

    from pipeline.core.splits import inner_holdout

    val_y = np.asarray(val_y, dtype=np.int32)
    if np.bincount(val_y, minlength=2).min() < 2:
        raise PipelineError("stacking needs at least 2 validation images of each class")
    inner_train, inner_hold, how = inner_holdout(val_y, val_patients, 0.2, seed)
    model = build_meta_model(val_x.shape[1], seed)
    # Keras 3 restores the best weights at the end of training even when it never stops early.
    callbacks = [keras.callbacks.EarlyStopping("val_loss", patience=patience or epochs, restore_best_weights=True)]
    if reduce_lr:
        callbacks.append(keras.callbacks.ReduceLROnPlateau("val_loss"))
    history = model.fit(val_x[inner_train], val_y[inner_train], validation_data=(val_x[inner_hold], val_y[inner_hold]),
                        epochs=epochs, batch_size=batch_size, verbose=0, callbacks=callbacks, shuffle=True)
    best_epoch = int(np.argmin(history.history["val_loss"])) + 1
    return {
        "test_prob": model.predict(test_x, verbose=0)[:, 1],
        "holdout_prob": model.predict(val_x[inner_hold], verbose=0)[:, 1],
        "holdout_index": inner_hold, "train_index": inner_train, "inner_split": how,
        "best_epoch": best_epoch, "epochs_trained": len(history.history["val_loss"]),
        "model": model,  # saved by the ensemble stage so that `predict` re-applies it to new images
    }
