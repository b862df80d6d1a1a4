"""TensorBoard event files per run, written with TensorFlow alone (scalars only, a few KB per run).

Why not ``keras.callbacks.TensorBoard``/``tf.summary.scalar``: since TensorFlow 2.16 they need the ``tensorboard``
package, which TensorFlow 2.21 no longer installs. ``tf.summary.write`` with the scalars plugin's metadata writes
exactly what ``tf.summary.scalar`` writes (a float32 scalar tensor tagged ``plugin_name: "scalars"``), so
``tensorboard --logdir artifacts/<exp>/runs`` shows the curves when the viewer is installed (it is optional:
``.venv/bin/pip install tensorboard``). Layout as Keras's callback: ``<run>/tensorboard/train`` and
``.../validation``, tags ``epoch_loss``, ``epoch_accuracy``, ``epoch_learning_rate``, so train and val overlay.
"""

from __future__ import annotations

from pathlib import Path

import keras

SCALARS = {"loss": "epoch_loss", "accuracy": "epoch_accuracy"}


def _scalars_metadata() -> bytes:
    from tensorflow.core.framework import summary_pb2

    plugin = summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
    return summary_pb2.SummaryMetadata(plugin_data=plugin).SerializeToString()


class EpochScalars(keras.callbacks.Callback):
    """After every epoch, append loss/accuracy (train and validation) and the learning rate to ``log_dir``."""

    def __init__(self, log_dir: Path | str):
        super().__init__()
        self.log_dir = Path(log_dir)
        self.writers: dict = {}
        self.metadata = _scalars_metadata()

    def _writer(self, name: str):
        import tensorflow as tf

        if name not in self.writers:
            self.writers[name] = tf.summary.create_file_writer(str(self.log_dir / name))
        return self.writers[name]

    def _write(self, split: str, tag: str, value: float, step: int) -> None:
        import tensorflow as tf

        with self._writer(split).as_default():
            tf.summary.write(tag, tf.constant(float(value), tf.float32), step=step, metadata=self.metadata)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        step = epoch + 1  # epochs are 1-based everywhere else (history.parquet, the dashboard)
        for key, tag in SCALARS.items():
            if logs.get(key) is not None:
                self._write("train", tag, logs[key], step)
            if logs.get(f"val_{key}") is not None:
                self._write("validation", tag, logs[f"val_{key}"], step)
        optimizer = getattr(self.model.optimizer, "inner_optimizer", self.model.optimizer)  # mixed precision: the wrapped one
        lr = getattr(optimizer, "learning_rate", None)
        if lr is not None:
            self._write("train", "epoch_learning_rate", float(keras.ops.convert_to_numpy(lr)), step)
        for writer in self.writers.values():
            writer.flush()

    def on_train_end(self, logs=None):
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()
