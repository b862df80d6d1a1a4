"""Page state lives in the URL (``st.query_params``), so a view can be shared, bookmarked and reloaded.

The pattern: a widget's value is *seeded* from its query parameter the first time the widget appears on a
page visit, and *published* back after every run (removed when it equals the default, to keep links short).
Streamlit drops a page's widget state when the user leaves the page, so nothing survives a page change
unless it is in the URL: no hidden state (an image list from another page, a stale run).

Widget keys are page-prefixed (``br_run``); query parameter names are short and shared (``run``, ``split``,
``img``), because a URL belongs to one page. Links between pages pass the target page's parameters
(:func:`link_params`), always including the experiment.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import streamlit as st

EXPERIMENT_PARAM = "exp"


def _options_by_text(options: Sequence[Any]) -> dict[str, Any]:
    return {str(o): o for o in options}


def url_value(param: str, default: Any = None, options: Sequence[Any] | None = None, cast: Callable[[str], Any] = str) -> Any:
    """One value from the URL: cast and checked against ``options``; ``default`` when absent or invalid."""
    raw = st.query_params.get(param)
    if raw is None:
        return default
    if options is not None:
        return _options_by_text(options).get(raw, default)
    try:
        return cast(raw)
    except (TypeError, ValueError):
        return default


def url_values(param: str, options: Sequence[Any]) -> list[Any]:
    """Several values from the URL (``?mag=40&mag=100``), kept only when they are valid options."""
    by_text = _options_by_text(options)
    return [by_text[v] for v in st.query_params.get_all(param) if v in by_text]


def seed(key: str, param: str, default: Any, options: Sequence[Any] | None = None, many: bool = False,
         cast: Callable[[str], Any] = str) -> None:
    """Set the widget ``key``'s value from the URL when the widget first appears (or its value became invalid)."""
    if key in st.session_state:
        current = st.session_state[key]
        if options is None:
            return
        valid = set(map(str, options))
        if (all(str(v) in valid for v in current) if many else (current is None or str(current) in valid)):
            return
    if many:
        value = url_values(param, options or []) if param in st.query_params else list(default)
    else:
        value = url_value(param, default, options, cast)
    st.session_state[key] = value


def publish(param: str, value: Any, default: Any) -> None:
    """Write ``value`` to the URL; drop the parameter when it equals the default."""
    if value == default or value is None or (isinstance(value, (list, tuple)) and not value and not default):
        if param in st.query_params:
            del st.query_params[param]
        return
    if isinstance(value, (list, tuple)):
        st.query_params[param] = [str(v) for v in value] or [""]
    else:
        st.query_params[param] = _text(value)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def clear(*params: str) -> None:
    for param in params:
        if param in st.query_params:
            del st.query_params[param]


def set_params(**values: Any) -> None:
    """Non-widget state (the open cell, the selected image) written straight to the URL; None removes it."""
    for param, value in values.items():
        if value is None:
            clear(param)
        else:
            st.query_params[param] = [_text(v) for v in value] if isinstance(value, (list, tuple)) else _text(value)


def as_bool(text: str) -> bool:
    if text in ("1", "true", "True", "yes"):
        return True
    if text in ("0", "false", "False", "no"):
        return False
    raise ValueError(text)


# -- bound widgets -------------------------------------------------------------------------------------------
def selectbox(label: str, options: Sequence[Any], *, key: str, param: str, default: Any = None, where: Any = st,
              explicit: bool = False, **kwargs) -> Any:
    """A selectbox bound to the URL. ``explicit``: keep the value in the URL even when it is the default (run pickers:
    a shared link must name its runs, because the default run depends on the data)."""
    default = default if default in options else (options[0] if options else None)
    seed(key, param, default, options)
    value = where.selectbox(label, options, key=key, **kwargs)
    publish(param, value, object() if explicit else default)
    return value


def radio(label: str, options: Sequence[Any], *, key: str, param: str, default: Any = None, where: Any = st, **kwargs) -> Any:
    default = default if default in options else options[0]
    seed(key, param, default, options)
    value = where.radio(label, options, key=key, **kwargs)
    publish(param, value, default)
    return value


def multiselect(label: str, options: Sequence[Any], *, key: str, param: str, default: Sequence[Any] = (), where: Any = st,
                **kwargs) -> list[Any]:
    """A multiselect bound to the URL; never offers "Select all" (Enter picks the first match, not every match)."""
    default = [d for d in default if d in options]
    seed(key, param, default, options, many=True)
    value = where.multiselect(label, options, key=key, select_all=False, **kwargs)
    publish(param, value, default)
    return value


def toggle(label: str, *, key: str, param: str, default: bool = False, where: Any = st, **kwargs) -> bool:
    seed(key, param, default, cast=as_bool)
    value = where.toggle(label, key=key, **kwargs)
    publish(param, value, default)
    return value


def slider(label: str, lo: float, hi: float, *, key: str, param: str, default: float, step: float, where: Any = st,
           **kwargs) -> float:
    seed(key, param, default, cast=lambda t: min(hi, max(lo, float(t))))
    value = where.slider(label, lo, hi, step=step, key=key, **kwargs)
    publish(param, round(value, 6), default)
    return value


def link_params(exp: str, **values: Any) -> dict[str, Any]:
    """Query parameters of a link to another page: the experiment plus that page's own state."""
    out: dict[str, Any] = {EXPERIMENT_PARAM: exp}
    for param, value in values.items():
        if value is None or value == [] or value == ():
            continue
        out[param] = [_text(v) for v in value] if isinstance(value, (list, tuple)) else _text(value)
    return out
