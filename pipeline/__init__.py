"""histocompare batch pipeline: index -> split -> stain -> train -> predict -> ensemble -> evaluate -> gradcam.

Every stage is a plain module with a pure-ish core and a thin CLI wrapper in :mod:`pipeline.cli`.
Stages talk to each other (and to the dashboard) only through parquet files under an experiment
directory, described in ``artifacts/README.md``.
"""

__version__ = "0.1.0"
