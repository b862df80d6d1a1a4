"""What every run records about the software that produced it."""

from __future__ import annotations

import importlib.metadata as md
import platform


def library_versions() -> dict[str, str]:
    """Versions of everything that can change a result; recorded in every run.json."""
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in ("numpy", "pandas", "pyarrow", "scikit-learn", "scikit-image", "tensorflow", "keras", "tf-keras-vis"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return versions
