"""The dashboard's pages, declared once: ``app.py`` navigates with them and pages link to each other with them."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import streamlit as st

PAGES_DIR = Path(__file__).resolve().parent.parent / "pages"
# name -> (file, title, icon, url path)
PAGE_TABLE = {
    "overview": ("overview.py", "Overview", ":material/dashboard:", ""),
    "pipeline": ("pipeline_status.py", "Pipeline", ":material/conveyor_belt:", "pipeline"),
    "confusion": ("confusion.py", "Confusion matrices", ":material/grid_on:", "confusion"),
    "images": ("misclassified.py", "Image browser", ":material/image_search:", "images"),
    "stain": ("stain_comparison.py", "Stain comparison", ":material/palette:", "stain"),
    "ensemble": ("ensemble_builder.py", "Ensemble builder", ":material/join:", "ensemble"),
    "experiments": ("compare_experiments.py", "Compare experiments", ":material/compare_arrows:", "experiments"),
    "training": ("training_curves.py", "Training curves", ":material/show_chart:", "training"),
    "gradcam": ("gradcam.py", "Grad-CAM", ":material/local_fire_department:", "gradcam"),
    "embedding": ("embedding.py", "Embedding map", ":material/scatter_plot:", "embedding"),
}


@cache
def pages() -> dict[str, st.Page]:
    out = {}
    for name, (file, title, icon, url_path) in PAGE_TABLE.items():
        kwargs = {"default": True} if not url_path else {"url_path": url_path}
        out[name] = st.Page(str(PAGES_DIR / file), title=title, icon=icon, **kwargs)
    return out


def page(name: str) -> st.Page:
    return pages()[name]
