"""One module per pipeline stage: index, demo-data, split, stain, train, ensemble, evaluate, gradcam.

A stage reads its inputs through :mod:`pipeline.artifacts`, computes with :mod:`pipeline.core` and
:mod:`pipeline.ml`, and writes its outputs atomically. The CLI and the runner call stages, never the reverse.
"""
