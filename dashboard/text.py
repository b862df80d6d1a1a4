"""Artifact-derived text (run ids, image ids, patient ids, paths, subtype names) shown as plain text.

Streamlit renders Markdown (and its own ``:colour[...]``/``:material/...:`` directives and ``$`` LaTeX) in
``st.markdown``, captions, widget labels and button labels. A run id such as ``v1_b1![r](http://HOST/x.png)``
would make the viewer's browser fetch that URL. Everything that comes from an artifact goes through
:func:`plain` (or :func:`code`) before it reaches a Markdown-rendering element.
"""

from __future__ import annotations

import re

# CommonMark lets every ASCII punctuation character be backslash-escaped; escaping all of them defuses links, images,
# HTML, Streamlit directives (``\\:red\\[``) and LaTeX (``\\$``). GFM's autolink literals (``http://``, ``www.``,
# ``a@b.org``) are found after escapes are resolved, so a word joiner (U+2060, invisible) is put inside each trigger.
_PUNCTUATION = re.compile(r"([!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~])")
_AUTOLINK = re.compile(r"(?i)(:)(?=/)|(@)|(www)(?=\.)")
WORD_JOINER = "\u2060"


def plain(value: object) -> str:
    """``value`` as text that Markdown shows literally (one line): no link, image, HTML or directive survives."""
    text = " ".join(str(value).split())
    text = _AUTOLINK.sub(lambda m: next(g for g in m.groups() if g) + WORD_JOINER, text)
    return _PUNCTUATION.sub(r"\\\1", text)


def code(value: object) -> str:
    """``value`` as an inline code span (shown literally; a backtick inside cannot close the span)."""
    text = " ".join(str(value).split()).replace("`", "'")
    return f"`{text}`"


_ANGLES = str.maketrans({"<": "&lt;", ">": "&gt;"})


def _plotly_plain(value: object) -> object:
    """Strings (alone or in arrays) with ``<``/``>`` as entities: Plotly then shows them instead of rendering tags."""
    if isinstance(value, str):
        return value.translate(_ANGLES)
    if type(value).__name__ == "ndarray" and value.dtype.kind in "biufcmM":
        return value  # numbers hold no markup (a list of 80,000 coordinates cost ~0.1 s to scan per figure)
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ndarray":
        items = list(value)
        if any(isinstance(v, str) and ("<" in v or ">" in v) for v in items):
            return [_plotly_plain(v) for v in items]
    return value


def plain_figure(fig):
    """Every text a Plotly figure shows from data (trace names, legend groups, texts, categories, titles, annotations)
    through the plain path: Plotly renders a subset of HTML, so ``<a href>`` in a run id or folder name would be a live
    link. Hover templates are the page's own markup and are left alone. Returns ``fig`` (changed in place)."""
    for trace in fig.data:
        for attr in ("name", "legendgroup", "text", "hovertext", "x", "y", "labels", "z"):
            if attr in trace and trace[attr] is not None:
                if attr == "z" and trace.type != "heatmap":
                    continue
                new = _plotly_plain(trace[attr])
                if new is not trace[attr]:
                    trace[attr] = new
    layout = fig.layout
    for obj in (layout.title, layout.legend.title, *(layout[a].title for a in layout if a.startswith(("xaxis", "yaxis")))):
        if obj is not None and obj.text:
            obj.text = _plotly_plain(obj.text)
    for axis in (layout[a] for a in layout if a.startswith(("xaxis", "yaxis"))):
        if axis.ticktext:
            axis.ticktext = _plotly_plain(axis.ticktext)
    for note in layout.annotations or ():
        if note.text:
            note.text = _plotly_plain(note.text)
    return fig


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(frame):
    """A copy of ``frame`` whose text cells cannot run as spreadsheet formulas: a cell starting with = + - @ (or a tab
    or carriage return) gets a leading apostrophe, the OWASP advice for CSV injection. Numbers are left as numbers."""
    out = frame.copy()
    for name in out.columns:
        col = out[name]
        if col.dtype == object or str(col.dtype) in ("str", "string", "category"):
            out[name] = col.map(lambda v: "'" + v if isinstance(v, str) and v.startswith(_FORMULA_START) else v)
    return out
