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
