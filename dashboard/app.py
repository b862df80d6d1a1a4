"""histocompare dashboard: ``streamlit run dashboard/app.py`` (or ``make dashboard``).

A multipage app (``st.navigation``), one file per view in ``pages/``. It only reads artifacts written by
``python -m pipeline``; it never trains, and TensorFlow is never imported.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run dashboard/app.py` puts dashboard/ on the path, not the project
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

st.set_page_config(page_title="histocompare", page_icon=":material/biotech:", layout="wide")

PAGES = [
    st.Page(str(ROOT / "pages" / "overview.py"), title="Overview", icon=":material/dashboard:", default=True),
    st.Page(str(ROOT / "pages" / "confusion.py"), title="Confusion matrices", icon=":material/grid_on:", url_path="confusion"),
    st.Page(str(ROOT / "pages" / "misclassified.py"), title="Misclassified images", icon=":material/image_search:",
            url_path="misclassified"),
    st.Page(str(ROOT / "pages" / "stain_comparison.py"), title="Stain comparison", icon=":material/palette:", url_path="stain"),
    st.Page(str(ROOT / "pages" / "ensemble_builder.py"), title="Ensemble builder", icon=":material/join:", url_path="ensemble"),
    st.Page(str(ROOT / "pages" / "training_curves.py"), title="Training curves", icon=":material/show_chart:", url_path="training"),
    st.Page(str(ROOT / "pages" / "gradcam.py"), title="Grad-CAM", icon=":material/local_fire_department:", url_path="gradcam"),
]

st.navigation(PAGES).run()
