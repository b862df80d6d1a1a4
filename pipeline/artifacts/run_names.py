"""Short, readable, unique names and one fixed colour per run and ensemble.

Why: run ids are exact but unreadable once they name ensembles (``ensemble:stacking:v1_b0+v1_b1+...``), and
cutting them off made two different ensembles look identical. Every picker, title, legend and table shows
the alias instead (``V1-B0``, ``V2 soft``, ``All-10 stacking``, ``Best-6 soft``); the full member list
goes in a tooltip. Colours are fixed by the run itself (not by its position in a list), so a run keeps its
colour on every page. Pure functions of the run ids (no Streamlit), so the pipeline can reuse them.
"""

from __future__ import annotations

import colorsys
import hashlib

from pipeline.artifacts.catalog import RunRef, parse_run_id
from pipeline.core.model_specs import MODEL_SPECS

MODEL_ORDER = [spec.short for spec in MODEL_SPECS.values()]
METHOD_LABELS = {"soft": "soft", "hard": "hard", "weighted": "weighted", "stacking": "stacking",
                 "soft-best": "soft", "hard-best": "hard"}
METHOD_NAMES = {"soft": "soft voting (mean probability)", "hard": "hard voting (majority of votes)",
                "weighted": "weighted soft voting (weights fitted on validation)", "stacking": "stacking meta-model",
                "soft-best": "soft voting of the validation-best subset", "hard-best": "hard voting of the validation-best subset"}
# One colour per backbone (Tableau 10, in model order); stain twins are a darker shade of their backbone.
MODEL_COLOURS = dict(zip(MODEL_ORDER, ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
                                       "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"]))
# Ensembles: a hue per member group, a shade per rule.
GROUP_HUES = {"V1": "#1f3d7a", "V2": "#8b1a1a", "All": "#1b6e3a", "Best": "#5b2c83"}
METHOD_SHADE = {"soft": 0.0, "hard": 0.12, "weighted": 0.24, "stacking": -0.1, "soft-best": 0.0, "hard-best": 0.12}


def model_alias(short: str) -> str:
    """``v1_b0`` -> ``V1-B0``, ``v2_s`` -> ``V2-S``."""
    return short.replace("_", "-").upper()


def _members_by_family(members: tuple[str, ...] | list[str]) -> str:
    """``V1 B0·B1 + V2 S`` (members in model order, grouped by family)."""
    groups: dict[str, list[str]] = {}
    for m in sorted(members, key=_model_rank):
        ref = parse_run_id(m)
        family, _, rest = model_alias(ref.model).partition("-")
        groups.setdefault(family, []).append(rest + (f"({ref.stain})" if ref.stain != "none" else ""))
    return " + ".join(f"{fam} {'·'.join(parts)}" for fam, parts in groups.items())


def _model_rank(run_id: str) -> tuple[int, str]:
    ref = parse_run_id(run_id)
    return (MODEL_ORDER.index(ref.model) if ref.model in MODEL_ORDER else 99, run_id)


def _group_name(ref: RunRef, universe: list[str]) -> str:
    members = set(ref.members)
    v1 = {m for m in universe if parse_run_id(m).family == "v1"}
    v2 = {m for m in universe if parse_run_id(m).family == "v2"}
    if ref.method.endswith("-best"):
        return f"Best-{len(members)}"
    if v1 and v2 and members == v1 | v2:
        return f"All-{len(members)}"
    if v1 and members == v1:
        return "V1"
    if v2 and members == v2:
        return "V2"
    return _members_by_family(ref.members)


def run_alias(run_id: str, universe: list[str] | None = None) -> str:
    """The short name of one run. ``universe``: the experiment's ensemble members (names family groups)."""
    ref = parse_run_id(run_id)
    if ref.kind == "single":
        return model_alias(ref.model) + ("" if ref.stain == "none" else f" {ref.stain.capitalize()}")
    return f"{_group_name(ref, list(universe or ref.members))} {METHOD_LABELS.get(ref.method, ref.method)}"


def run_aliases(run_ids: list[str], universe: list[str] | None = None) -> dict[str, str]:
    """Aliases for every run, guaranteed unique (a clash gets the member list, then the run id, appended)."""
    aliases = {r: run_alias(r, universe) for r in run_ids}
    for extra in (lambda r: _members_by_family(parse_run_id(r).members) if parse_run_id(r).kind == "ensemble" else r,
                  lambda r: r):
        counts: dict[str, int] = {}
        for a in aliases.values():
            counts[a] = counts.get(a, 0) + 1
        if all(c == 1 for c in counts.values()):
            break
        aliases = {r: (f"{a} ({extra(r)})" if counts[a] > 1 else a) for r, a in aliases.items()}
    return aliases


def run_description(run_id: str) -> str:
    """A one-line tooltip: what the run is, with every member spelled out."""
    ref = parse_run_id(run_id)
    if ref.kind == "single":
        spec = next((s for s in MODEL_SPECS.values() if s.short == ref.model), None)
        name = spec.name if spec else ref.model
        stain = "" if ref.stain == "none" else f", trained on {ref.stain}-normalized images"
        return f"{name}{stain} (run id {run_id})"
    members = ", ".join(run_alias(m) for m in sorted(ref.members, key=_model_rank))
    return f"{METHOD_NAMES.get(ref.method, ref.method)} of {len(ref.members)} members: {members} (run id {run_id})"


def _shade(hex_colour: str, amount: float) -> str:
    """Lighten (amount > 0) or darken (< 0) a colour in HLS space."""
    r, g, b = (int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5))
    h, lum, s = colorsys.rgb_to_hls(r, g, b)
    lum = min(0.85, max(0.12, lum + amount))
    return "#" + "".join(f"{round(c * 255):02x}" for c in colorsys.hls_to_rgb(h, lum, s))


def run_colour(run_id: str, universe: list[str] | None = None) -> str:
    """The run's fixed colour (the same on every page and in every experiment with the same members)."""
    ref = parse_run_id(run_id)
    if ref.kind == "single":
        base = MODEL_COLOURS.get(ref.model, "#7f7f7f")
        return base if ref.stain == "none" else _shade(base, -0.22)
    group = _group_name(ref, list(universe or ref.members)).split("-")[0]
    if group in GROUP_HUES:
        return _shade(GROUP_HUES[group], METHOD_SHADE.get(ref.method, 0.0))
    digest = int(hashlib.sha256(run_id.encode()).hexdigest()[:6], 16)  # other member sets: a stable dark hue
    r, g, b = colorsys.hls_to_rgb((digest % 360) / 360, 0.35, 0.55)
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def run_sort_key(run_id: str) -> tuple:
    """Singles in model order (stain twins after their base), then ensembles by group and rule."""
    ref = parse_run_id(run_id)
    if ref.kind == "single":
        return (0, MODEL_ORDER.index(ref.model) if ref.model in MODEL_ORDER else 99, ref.stain != "none", run_id)
    families = {parse_run_id(m).family for m in ref.members}
    group = 3 if ref.method.endswith("-best") else (0 if families == {"v1"} else 1 if families == {"v2"} else 2)
    methods = list(METHOD_LABELS)
    return (1, group, -len(ref.members), methods.index(ref.method) if ref.method in methods else 99, run_id)
