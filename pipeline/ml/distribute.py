"""``tf.distribute`` strategies for ``train --strategy default|mirrored|multiworker`` and who may write.

* ``mirrored``: every local GPU; without one, every logical CPU device (one on a plain machine; a test
  configures two logical CPUs before TensorFlow starts to exercise two replicas).
* ``multiworker``: ``MultiWorkerMirroredStrategy`` configured by ``TF_CONFIG``. TensorFlow requires it to be
  created once per process before any other op runs, so it is created first in a run.
* One instance per kind and process: two strategies in one process draw the same collective-op keys, and the
  second run of ``run`` then fails ("Shape mismatch in the collective instance"), so instances are cached.
* Only the chief writes into the experiment (task ``chief``, or ``worker`` 0 when the cluster has no chief):
  every worker trains the same steps, but model, history, state, features and predictions come from one.
"""

from __future__ import annotations

_STRATEGIES: dict = {}


def make_strategy(name: str):
    import tensorflow as tf

    if name not in ("mirrored", "multiworker"):
        return tf.distribute.get_strategy()
    if name not in _STRATEGIES:
        if name == "mirrored":
            devices = [d.name for d in tf.config.list_logical_devices("GPU")] or [d.name for d in tf.config.list_logical_devices("CPU")]
            _STRATEGIES[name] = tf.distribute.MirroredStrategy(devices)
        else:  # reads TF_CONFIG; see README "Several GPUs or machines"
            _STRATEGIES[name] = tf.distribute.MultiWorkerMirroredStrategy()
    return _STRATEGIES[name]


def is_multiworker(strategy) -> bool:
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def is_chief(strategy) -> bool:
    """True for the one process that writes the run's artifacts (every process outside multi-worker training)."""
    if not is_multiworker(strategy):
        return True
    resolver = strategy.cluster_resolver
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    return task_type == "worker" and task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()


def replicas(strategy) -> int:
    return int(strategy.num_replicas_in_sync)


def prepare_multiworker_fit(model) -> None:
    """Let Keras 3's ``Model.fit`` run under ``MultiWorkerMirroredStrategy`` (broken upstream: keras-team/keras#20585).

    Two failures, measured with Keras 3.15.1 / TF 2.21 on two processes on 127.0.0.1, each with a local fix:
    * ``fit`` first reduces one distributed input batch eagerly (``_maybe_symbolic_build``), which fails with
      "Attempt to convert a value (PerReplica...) to a Tensor". Keras skips that step for a model with no
      recorded strategy and builds while tracing instead, so the model forgets the strategy it was built
      under; ``fit`` must then be called inside ``strategy.scope()`` (train_run does).
    * Keras reduces each step's logs across workers with ``strategy.reduce("MEAN", value, axis=0)``, which fails
      on scalar logs ("Invalid reduction dimension 0 for input with 0 dimensions"). The steps return each log
      as a one-element vector instead; the reduction then gives the mean over the replicas, a scalar again.
    Both workers end with identical weights and the same history (tests/test_distribute.py).
    """
    import tensorflow as tf

    def vector_logs(step):
        def wrapped(data):
            return {name: tf.reshape(value, [1]) for name, value in step(data).items()}

        return wrapped

    model._distribute_strategy = None
    model.train_step = vector_logs(model.train_step)
    model.test_step = vector_logs(model.test_step)
