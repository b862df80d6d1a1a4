"""The ``histocompare`` console command (``pip install .``).

``histocompare dashboard ...`` serves the dashboard (``python -m dashboard``), ``histocompare demo ...`` is the
launcher behind ``make demo`` (``python -m pipeline.launch``), and every other command is the batch pipeline's
(``python -m pipeline``: index, split, stain, train, run, ...). Presets may be named (``--config demo``) or given as
paths; a path that does not exist here is looked up among the shipped presets (``pipeline/configs/demo.toml``).
"""

from __future__ import annotations

import os
import sys

from histocompare import use_app_root

EXTRA = {
    "dashboard": ("dashboard.__main__", "serve the dashboard on 127.0.0.1 (histocompare dashboard --help)"),
    "demo": ("pipeline.launch", "the dashboard at once, the presets' pipelines behind it (make demo)"),
}


def main(argv: list[str] | None = None) -> int:
    """Dispatch to the dashboard, the launcher or the pipeline CLI; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    use_app_root()
    os.environ.setdefault("HISTOCOMPARE_PROG", "histocompare")
    if argv and argv[0] in EXTRA:
        import importlib

        module = importlib.import_module(EXTRA[argv[0]][0])
        return module.main(argv[1:])
    from pipeline.cli import main as pipeline_main

    code = pipeline_main(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("\nalso:\n" + "\n".join(f"  histocompare {name:<10} {text}" for name, (_, text) in EXTRA.items()))
    return code
