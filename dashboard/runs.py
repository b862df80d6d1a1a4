"""Run identity for every page: which runs an experiment has, their aliases, colours and tooltips, the run
picker, and ensembles built in the dashboard.

Aliases and colours come from ``pipeline.artifacts.run_names`` (pure), so every picker, title, legend and table
says ``All-10 stacking`` where the run id would be cut off. An ensemble built in the ensemble builder is a
*token*: its pipeline-style run id (``ensemble:soft:v1_b0+v2_b1``), plus ``@0.45`` when its threshold is not
0.5. Any page that receives a token (in the URL or from the saved list) computes its predictions live with the
pipeline's own rules, so a built ensemble can be browsed, compared and linked like a trained run.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import state, ui
from dashboard.text import code, plain
from dashboard.data import Experiment, cached_weights, member_matrices, report_problem, stamp, validation_arrays
from pipeline.artifacts.catalog import ensemble_run_id, is_run_id, parse_run_id
from pipeline.artifacts.predictions import make_rows, member_runs
from pipeline.artifacts.run_names import run_aliases, run_colour, run_description, run_sort_key
from pipeline.core.ensemble import METHODS, combine
from pipeline.core.errors import PipelineError

SAVED_KEY = "saved_ensembles"


@dataclass(frozen=True)
class BuiltEnsemble:
    """An ensemble defined in the dashboard: a rule (soft, hard, weighted), members and a threshold."""

    method: str
    members: tuple[str, ...]
    threshold: float = 0.5

    @property
    def run_id(self) -> str:
        return ensemble_run_id(self.method, self.members)

    @property
    def token(self) -> str:
        return self.run_id if self.threshold == 0.5 else f"{self.run_id}@{self.threshold:g}"

    @staticmethod
    def parse(token: object) -> BuiltEnsemble | None:
        run_id, _, threshold = str(token).partition("@")
        try:
            ref = parse_run_id(run_id)
            value = float(threshold) if threshold else 0.5
        except (PipelineError, ValueError):
            return None
        if ref.kind != "ensemble" or ref.method not in METHODS or not 0 < value < 1:
            return None
        return BuiltEnsemble(ref.method, ref.members, round(value, 4))


@dataclass
class Runs:
    """The runs one page can show, in display order, with their identity."""

    ids: list[str]
    members: list[str]
    built: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    alias: dict[str, str] = field(default_factory=dict)
    colour: dict[str, str] = field(default_factory=dict)
    tip: dict[str, str] = field(default_factory=dict)

    def label(self, run: str) -> str:
        return self.alias.get(run, str(run))

    def md(self, run: str) -> str:
        """The alias escaped for Markdown (aliases are built from parsed ids, but never trust a string twice)."""
        return plain(self.label(run))

    def singles(self) -> list[str]:
        return [r for r in self.ids if r not in self.built and parse_run_id(_run_id(r)).kind == "single"]

    def ensembles(self) -> list[str]:
        return [r for r in self.ids if r not in self.singles()]

    def members_of(self, run: str) -> list[str]:
        """The single runs a run is made of (itself for a single model)."""
        ref = parse_run_id(_run_id(run))
        return [run] if ref.kind == "single" else [m for m in ref.members if m in self.members]


def _run_id(run: str) -> str:
    return str(run).partition("@")[0]


def saved_tokens(exp: Experiment) -> list[str]:
    return list(st.session_state.get(SAVED_KEY, {}).get(exp.name, []))


def save_token(exp: Experiment, token: str) -> None:
    saved = st.session_state.setdefault(SAVED_KEY, {})
    saved[exp.name] = [t for t in saved.get(exp.name, []) if t != token] + [token]


def forget_token(exp: Experiment, token: str) -> None:
    saved = st.session_state.setdefault(SAVED_KEY, {})
    saved[exp.name] = [t for t in saved.get(exp.name, []) if t != token]


_SCANNED: dict[int, tuple[weakref.ref, tuple[str, ...], tuple[str, ...]]] = {}


def _ids_and_members(preds: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Every run id of ``preds`` and its ensemble members: two scans of the whole table (~0.1-0.2 s per render at ten
    times BreakHis), done once per frame object. Pages share the loaded table (``st.cache_resource``) and never edit
    it in place (``tests/test_dashboard.py`` checks), so the same object has the same runs; a weak reference makes
    sure a recycled ``id`` is never taken for the old frame."""
    hit = _SCANNED.get(id(preds))
    if hit is not None and hit[0]() is preds:
        return list(hit[1]), list(hit[2])
    all_ids = [str(r) for r in pd.unique(preds["run_id"])]
    members = member_runs(preds[preds["run_id"].isin([r for r in all_ids if is_run_id(r)])])
    if len(_SCANNED) >= 16:
        _SCANNED.clear()
    _SCANNED[id(preds)] = (weakref.ref(preds), tuple(all_ids), tuple(members))
    return all_ids, members


def identify(preds: pd.DataFrame, extra_tokens: tuple[str, ...] | list[str] = ()) -> Runs:
    """Runs in ``preds`` (run ids the pipeline would not write are skipped and listed) plus built ensembles."""
    all_ids, members = _ids_and_members(preds)
    valid = [r for r in all_ids if is_run_id(r)]
    skipped = [r for r in all_ids if r not in valid]
    built = []
    for token in extra_tokens:
        ens = BuiltEnsemble.parse(token)
        if ens is None or not set(ens.members) <= set(members) or ens.token in built:
            continue
        if ens.threshold == 0.5 and ens.run_id in valid:
            continue  # the pipeline wrote this very ensemble: same rule, same members, same rows
        built.append(ens.token)
    ids = sorted(valid, key=run_sort_key) + built
    aliases = run_aliases(valid + [BuiltEnsemble.parse(t).run_id for t in built], members)
    alias = {r: aliases[r] for r in valid}
    for token in built:
        ens = BuiltEnsemble.parse(token)
        alias[token] = "Built: " + aliases[ens.run_id] + ("" if ens.threshold == 0.5 else f" @{ens.threshold:g}")
    colour = {r: run_colour(_run_id(r), members) for r in ids}
    tip = {r: run_description(_run_id(r)) + ("" if r not in built else f"; built in the dashboard, threshold "
                                                                        f"{BuiltEnsemble.parse(r).threshold:g}") for r in ids}
    return Runs(ids, members, built, skipped, alias, colour, tip)


def experiment_runs(exp: Experiment) -> Runs | None:
    """The runs of one experiment as every page of it names them (from its predictions, else its metrics)."""
    source = exp.predictions()
    if source is None or source.empty:
        source = exp.metrics()
    if source is None or source.empty or not {"run_id", "kind", "stain"} <= set(source.columns):
        return None
    return identify(source)


def display_names(current: Experiment, others: list[Experiment], run_ids: list[str]) -> dict[str, str]:
    """One display name per run across several experiments (the compare page): a run of the current experiment keeps
    the name every other page gives it; a run found only in another experiment gets that experiment's name, with its
    members appended if the name is already taken by a different run."""
    names: dict[str, str] = {}
    for i, exp in enumerate([current, *others]):
        runs = experiment_runs(exp)
        if runs is None:
            continue
        for run, name in runs.alias.items():
            if run in names:
                continue
            taken = name in names.values()
            ref = parse_run_id(run)
            names[run] = f"{name} ({_members_text(ref.members)})" if taken and i and ref.kind == "ensemble" else name
    rest = [r for r in run_ids if r not in names]
    if rest:
        names.update(run_aliases(rest))
    return names


def _members_text(members: tuple[str, ...]) -> str:
    return "+".join(run_aliases(list(members)).values())


def token_label(token: str, runs: Runs) -> str:
    """The alias of a run or of a built ensemble that is not (yet) among ``runs``."""
    if token in runs.alias:
        return runs.alias[token]
    ens = BuiltEnsemble.parse(token)
    if ens is None:
        return str(token)
    return "Built: " + run_aliases([ens.run_id], runs.members)[ens.run_id] + ("" if ens.threshold == 0.5 else f" @{ens.threshold:g}")


def notice_skipped(runs: Runs) -> None:
    """One line naming run ids that are not shown (as plain text: they may be hostile)."""
    if runs.skipped:
        shown = ", ".join(code(r) for r in runs.skipped[:5]) + (" ..." if len(runs.skipped) > 5 else "")
        st.warning(f"{len(runs.skipped)} run id(s) in predictions.parquet are not ones the pipeline writes and are not "
                   f"shown: {shown}", icon=":material/visibility_off:")


def built_rows(exp: Experiment, token: str, members: list[str]) -> pd.DataFrame:
    """Prediction rows (val and test) of a built ensemble, computed with the pipeline's own rules."""
    ens = BuiltEnsemble.parse(token)
    path = exp.catalog.predictions
    arrays = member_matrices(str(path), stamp(path), tuple(members), tuple(exp.eval_splits))
    idx = [members.index(m) for m in ens.members]
    weights = None
    if ens.method == "weighted":
        validation = validation_arrays(exp, members)
        if validation is None:
            raise PipelineError(f"no validation predictions to fit the weights of {token} on")
        weights = cached_weights(validation[0][idx], validation[1]["label"].to_numpy(), ens.members)
    rows = []
    for split in exp.eval_splits:
        probs, meta = arrays[split]
        res = combine(probs[idx], ens.method, ens.threshold, exp.hard_tie_break(), weights)
        rows.append(make_rows(token, "ensemble", ens.method, "built", "none", meta, res.score, pred=res.pred))
    return pd.concat(rows, ignore_index=True)


def load_runs(exp: Experiment, preds: pd.DataFrame, url_tokens: tuple[str, ...] = ()) -> tuple[pd.DataFrame, Runs]:
    """Predictions of every shown run (pipeline runs + saved and linked built ensembles) and their identity."""
    runs = identify(preds, saved_tokens(exp) + [t for t in url_tokens if t])
    frames = [preds[preds["run_id"].isin([r for r in runs.ids if r not in runs.built])]]
    for token in runs.built:
        try:
            frames.append(built_rows(exp, token, runs.members))
        except PipelineError as exc:
            report_problem(f"The built ensemble {token} cannot be computed: {exc}")
            runs.ids.remove(token)
    return pd.concat(frames, ignore_index=True), runs


def run_picker(label: str, runs: Runs, *, key: str, param: str, default: str | None = None, options: list[str] | None = None,
               where=st, on_change=None) -> str | None:
    """A selectbox of runs shown by alias (full description in the tooltip), bound to the URL parameter ``param``."""
    options = options if options is not None else runs.ids
    if not options:
        return None
    current = st.session_state.get(key, default)
    return state.selectbox(label, options, key=key, param=param, default=default, where=where, format_func=runs.label,
                           help=runs.tip.get(current, "") or None, on_change=on_change, explicit=True)


def best_runs(metrics_all: pd.DataFrame, run_ids: list[str], metric: str = "accuracy") -> list[str]:
    """Every run tied for the best ``metric`` (ties are named as ties, never broken silently)."""
    part = metrics_all[metrics_all["run_id"].isin(run_ids)].dropna(subset=[metric])
    if part.empty:
        return []
    best = part[metric].max()
    return part.loc[np.isclose(part[metric], best, rtol=0, atol=1e-12), "run_id"].tolist()


def page_runs(exp: Experiment, what: str, url_tokens: tuple[str, ...] | None = None,
              need_runs: bool = True) -> tuple[pd.DataFrame, Runs]:
    """The preamble of the pages that show runs' predictions: the page stops with its message when the experiment has
    no labels (``what`` needs them) or no predictions; the runs are identified (with the saved and linked built
    ensembles when ``url_tokens`` is given), run ids the pipeline would not write are named once, and, when
    ``need_runs``, a page with no run left says so and stops. Returns (predictions of the shown runs, their identity)."""
    ui.require_labels(exp, what)
    raw = exp.predictions()
    ui.require(exp, raw, "predictions", "predictions.parquet", exp.catalog.predictions)
    preds, runs = (raw, identify(raw)) if url_tokens is None else load_runs(exp, raw, url_tokens)
    notice_skipped(runs)
    if need_runs and not runs.ids:
        st.info("No run ids the pipeline writes are in predictions.parquet.")
        st.stop()
    return preds, runs
