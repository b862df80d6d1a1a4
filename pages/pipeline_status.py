"""Pipeline: what ``python -m pipeline run`` (``make demo``) is doing now, from ``pipeline_status.json``.

Every stage (waiting, running, done, failed, skipped), the runs trained out of the total, each running run's epoch
with its ETA, and the last lines of the log. The page refreshes itself every few seconds (a fragment), and the other
pages rerun when a stage or run finishes (``ui.follow_pipeline``), so everything fills in without a reload.
"""

import pandas as pd
import streamlit as st

from dashboard import ui
from dashboard.text import code, plain
from pipeline.artifacts.status import format_seconds, format_when, is_stale, read_status, seconds_since_update
from pipeline.core.errors import PipelineError

REFRESH_SECONDS = 2
# Plain glyphs every system font has (the tables are drawn on a canvas: an emoji without an emoji font is a box)
STATE_ICONS = {"waiting": "○", "running": "▶", "done": "✓", "failed": "✗", "skipped": "–"}

exp = ui.page_start("Pipeline")


def headline(status: dict) -> None:
    state = status.get("state")
    age = seconds_since_update(status)
    if is_stale(status):
        st.warning(f"The pipeline has not updated its status for {format_seconds(age)}: it was probably stopped "
                   f"(killed, or the machine restarted). Run it again to resume: {code(ui.run_command(exp))}",
                   icon=":material/hourglass_disabled:")
    elif state == "running":
        stage = next((s["name"] for s in status.get("stages", []) if s["state"] == "running"), "starting")
        st.info(f"Running: stage **{plain(stage)}**, since {format_when(status.get('started'))} (process "
                f"{int(status.get('pid') or 0)}). This page refreshes itself, and the other pages fill in as stages and "
                "runs finish.", icon=":material/sync:")
    elif state == "finished":
        st.success(f"Finished at {format_when(status.get('updated'))}.", icon=":material/check_circle:")
    elif state == "stopped":
        st.warning(f"Stopped at {format_when(status.get('updated'))} (Ctrl-C). Finished work is kept: "
                   f"{code(ui.run_command(exp))} resumes.", icon=":material/pause_circle:")
    else:
        st.error(f"Failed at {format_when(status.get('updated'))}: {plain(status.get('error') or 'see the log below')}. "
                 f"Fix the cause, then {code(ui.run_command(exp))} resumes.", icon=":material/error:")


def stages_table(status: dict) -> None:
    """One row per stage. ``Seconds`` is the stage's last real duration: a rerun that found it up to date says so in
    the state and keeps the duration of the run that did the work (``pipeline.progress.Board``)."""
    rows = []
    for s in status.get("stages", []):
        fresh = s["state"] == "done" and s.get("up_to_date")
        state = "up to date" if fresh else s["state"]
        rows.append({"stage": s["name"], "state": f"{STATE_ICONS.get(s['state'], '')} {state}", "seconds": s.get("seconds")})
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="pl_stages", column_config={
        "stage": st.column_config.TextColumn("Stage"), "state": st.column_config.TextColumn("State"),
        "seconds": st.column_config.NumberColumn("Seconds", format="%.1f",
                                                 help="Wall time of the stage's last real run (a rerun that finds it "
                                                      "up to date keeps it); empty while unknown")})


def runs_panel(status: dict) -> None:
    runs = status.get("runs") or {}
    total, done = int(runs.get("total") or 0), int(runs.get("done") or 0)
    st.metric("Runs trained", f"{done} / {total}", help="Training runs finished (or already up to date) out of the preset's runs")
    if total:
        st.progress(min(1.0, done / total))
    for run in runs.get("running") or []:
        name = plain(run.get("run", "?"))
        if not run.get("epochs"):
            st.caption(f"{name}: starting (building the model, tracing its graph)")
            continue
        of = run.get("of") or 0
        within = (run.get("seen") or 0) / of if of else 0.0
        overall = ((run["epoch"] - 1) + within) / run["epochs"]
        loss = f", loss {run['loss']:.3f}" if run.get("loss") is not None else ""
        where = f", on {plain(str(run['node']))} {plain(str(run.get('device') or ''))}" if run.get("node") else ""  # Ray/GPU workers
        st.progress(min(1.0, max(0.0, overall)), text=f"{name}: epoch {int(run['epoch'])}/{int(run['epochs'])} "
                    f"({within:.0%} of this epoch{loss}), ETA {format_seconds(run.get('eta_s'))}{where}")


@st.fragment(run_every=REFRESH_SECONDS)
def live() -> None:
    try:
        status = read_status(exp.catalog)
    except PipelineError as exc:
        st.error(plain(str(exc)), icon=":material/broken_image:")
        return
    if status is None:
        st.info(f"No pipeline run recorded for {plain(exp.name)} yet. Start one with {code(ui.run_command(exp))} "
                "(or `make demo` for the SYNTHETIC demo); this page then follows it live.", icon=":material/play_circle:")
        return
    try:
        with st.container(key="pl_headline"):
            headline(status)
        left, right = st.columns([2, 3])
        with left.container(key="pl_stage_table"):
            stages_table(status)
        with right.container(key="pl_runs"):
            runs_panel(status)
        st.subheader("Last lines of the log")
        st.code("\n".join(str(line) for line in status.get("log") or ["(nothing yet)"]), language=None)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:  # valid JSON, foreign content
        st.error(f"{plain(exp.catalog.pipeline_status)} has unexpected content ({type(exc).__name__}); the next "
                 f"{code(ui.run_command(exp))} rewrites it.", icon=":material/broken_image:")


live()
