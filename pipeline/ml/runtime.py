"""TensorFlow start-up without its noise: the CLI's normal output carries no C++/absl start-up lines.

Why a file-descriptor redirect: TensorFlow writes its oneDNN notice, "Could not find cuda drivers" and the
``cuInit`` error from C++ before absl's logging is initialised, so ``TF_CPP_MIN_LOG_LEVEL`` does not reach
them, and on a CPU machine they read like failures to a new user. They are captured while TensorFlow imports
and enumerates its devices, and shown only if that fails (or with ``--verbose``).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile

VERBOSE_ENV = "HISTOCOMPARE_VERBOSE"


def quiet_tensorflow() -> None:
    """Import TensorFlow and initialise its devices with fd 2 captured (a no-op once imported or when verbose)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    verbose = os.environ.get(VERBOSE_ENV) == "1"
    if not verbose:
        # TensorFlow's Python warnings (e.g. "N out of the last N calls ... triggered tf.function retracing" when a
        # worker traces one model after another) are advice for TF developers, not for our users' logs.
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
    if verbose or "tensorflow" in sys.modules:
        import tensorflow  # noqa: F401

        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)
