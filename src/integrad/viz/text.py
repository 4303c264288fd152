"""Token attributions as HTML: each token on a background whose colour is the sign and whose opacity the size.

The fragment uses inline styles only, so it can be embedded anywhere (a report, a notebook's
``IPython.display.HTML``); it needs no matplotlib.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._checks import ArrayLike, as_scores, check_finite, check_percentile
from ._figures import sign_rgb
from .images import normalize_attribution

__all__ = ["text_html"]


def text_html(
    tokens: Sequence[str],
    scores: ArrayLike,
    *,
    clip_percentile: float = 100.0,
    title: str | None = None,
) -> str:
    """Render token attributions as a self-contained HTML fragment.

    Each token becomes a ``<span>`` whose background is red for a positive
    score and blue for a negative one, with opacity equal to
    ``|normalize_attribution(scores, "all", clip_percentile)|``, i.e.
    proportional to ``|score|`` up to the clipping limit. The raw score is in
    the span's ``title`` attribute (shown on hover). Tokens are HTML-escaped;
    only inline styles are used, so the fragment can be embedded anywhere
    (e.g. ``IPython.display.HTML``).

    Parameters
    ----------
    tokens : sequence of str
        The tokens, in order.
    scores : torch.Tensor or numpy.ndarray
        One score per token, shape ``(T,)`` or ``(1, T)``. Reduce embedding
        dimensions first, e.g. ``attr.sum(-1)``. Not modified.
    clip_percentile : float, default 100.0
        Percentile of ``|scores|`` that gets full colour; 100 means the largest
        magnitude.
    title : str, optional
        A heading shown above the tokens (escaped).

    Returns
    -------
    str
        The HTML fragment (a ``<div>``).

    Raises
    ------
    TypeError
        If ``tokens`` is a single string or contains non-strings.
    ValueError
        If ``scores`` has the wrong shape, a length different from
        ``tokens``, or non-finite values, or ``clip_percentile`` is outside
        (0, 100].
    """
    _check_tokens(tokens)
    # Checked even without tokens, so that a bad value is refused whatever the input.
    percentile = check_percentile(clip_percentile)
    raw = _token_scores(scores, len(tokens))
    levels = normalize_attribution(raw, "all", percentile) if len(tokens) else raw
    parts = ['<div class="integrad-text" style="font-family: sans-serif; line-height: 2;">']
    if title is not None:
        parts.append(
            f'<div style="font-weight: bold; margin-bottom: 0.3em;">{html.escape(str(title), quote=True)}</div>'
        )
    parts.append(" ".join(_token_span(token, score, level) for token, score, level in zip(tokens, raw, levels)))
    parts.append("</div>")
    return "\n".join(parts)


def _check_tokens(tokens: Any) -> None:
    """Refuse anything but a sequence of strings (a single string would be read as its characters)."""
    if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Sequence):
        raise TypeError(f"tokens must be a sequence of strings (e.g. a list); got {type(tokens).__name__}")
    for token in tokens:
        if not isinstance(token, str):
            raise TypeError(f"tokens must be a sequence of strings; found {type(token).__name__} {token!r}")


def _token_scores(scores: Any, n_tokens: int) -> np.ndarray:
    """The scores as a finite float64 vector, one per token."""
    raw = as_scores(scores, "scores", "T", " (for per-dimension embedding attributions sum the last axis first)")
    if raw.shape[0] != n_tokens:
        raise ValueError(
            f"tokens and scores must have the same length; got {n_tokens} tokens and {raw.shape[0]} scores"
        )
    check_finite(raw, "scores", allow_empty=True)
    return raw


def _token_span(token: str, score: float, level: float) -> str:
    """One token, escaped, on its colour; the raw score is the hover text."""
    red, green, blue = sign_rgb(level)
    return (
        f'<span style="background-color: rgba({red}, {green}, {blue}, {abs(level):.4f}); '
        'padding: 0.1em 0.2em; border-radius: 0.25em; white-space: pre-wrap;" '
        f'title="{float(score):.6g}">{html.escape(token, quote=True)}</span>'
    )
