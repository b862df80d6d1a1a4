"""histocompare dashboard: ``python -m dashboard`` (or ``make dashboard``; ``streamlit run dashboard/app.py`` works too).

A multipage app (``st.navigation``), one file per view in ``pages/``. It only reads artifacts written by
``python -m pipeline``; it never trains, and TensorFlow is never imported. The experiment picker lives here,
so it is shared by every page; each page keeps its own state in the URL (``dashboard/state.py``).
``dashboard/.streamlit/config.toml`` binds the server to 127.0.0.1 wherever it is started from.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run dashboard/app.py` puts dashboard/ on the path, not the project
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from dashboard import nav, ui  # noqa: E402
from dashboard.runs import forget_token, saved_tokens  # noqa: E402
from dashboard.text import plain  # noqa: E402

# "auto": the sidebar starts collapsed on narrow windows (Streamlit's breakpoint), open on wide ones.
st.set_page_config(page_title="histocompare", page_icon=":material/biotech:", layout="wide", initial_sidebar_state="auto")
ui.readable_at_any_width()
ui.loopback_warning()
exp = ui.experiment_picker()
ui.follow_pipeline(exp)
if exp is not None and saved_tokens(exp):
    with st.sidebar.expander("Saved ensembles", expanded=False):
        st.caption("Built in the ensemble builder; every run picker offers them (this browser session only).")
        for token in saved_tokens(exp):
            if st.button(f"✕ {plain(token)}", key=f"forget_{token}", type="tertiary", help="Remove from the pickers"):
                forget_token(exp, token)
                st.rerun()
st.navigation(list(nav.pages().values())).run()
