"""Feature attributions as a horizontal bar chart: the largest ``|score|`` on top, red positive, blue negative."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ._checks import ArrayLike, as_scores, check_finite, check_int, check_labels
from ._figures import axes_or_new, pyplot, sign_rgb

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.axes import Axes

__all__ = ["feature_bars"]


def feature_bars(
    scores: ArrayLike,
    feature_names: Sequence[str] | None = None,
    *,
    top_k: int | None = None,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """Horizontal bar chart of feature attributions, largest ``|score|`` on top.

    Parameters
    ----------
    scores : torch.Tensor or numpy.ndarray
        One attribution per feature, shape ``(F,)`` or ``(1, F)``. Not
        modified.
    feature_names : iterable of str, optional
        One name per feature; default ``"feature 0"``, ``"feature 1"``, ...
        Names and title are shown literally (``$`` does not start
        mathematics).
    top_k : int, optional
        Show only the ``top_k`` features with the largest ``|score|`` (all if
        omitted or larger than ``F``).
    ax : matplotlib Axes, optional
        Where to draw; a new figure is created if omitted.
    title : str, optional
        Axes title.

    Returns
    -------
    matplotlib.axes.Axes
        The axes. Bars are in ``ax.patches`` from top to bottom (stable order
        for ties); positive bars are red, negative blue.

    Raises
    ------
    ValueError
        For scores of the wrong shape, empty or non-finite, a
        ``feature_names`` of the wrong length, or ``top_k`` < 1.
    ImportError
        If matplotlib is not installed.
    """
    values = as_scores(scores, "scores", "F")
    check_finite(values, "scores")
    n_features = values.shape[0]
    names = check_labels(feature_names, "feature_names", "names, one per score", n_features)
    if names is None:
        names = [f"feature {i}" for i in range(n_features)]
    shown = n_features if top_k is None else min(check_int(top_k, "top_k", 1), n_features)
    # A stable sort keeps ties in the order of the features.
    order = np.argsort(-np.abs(values), kind="stable")[:shown]
    plt = pyplot()
    with axes_or_new(plt, ax, (6.0, max(2.0, 0.35 * shown + 1.0))) as ax:
        _draw_bars(ax, values[order], [names[i] for i in order])
        if title is not None:
            ax.set_title(str(title), parse_math=False)
    return ax


def _draw_bars(ax: Axes, values: np.ndarray, labels: list[str]) -> None:
    """One bar per value, the first on top, coloured by sign and labelled literally."""
    positions = np.arange(len(values))
    colours = [tuple(channel / 255 for channel in sign_rgb(value)) for value in values]
    ax.barh(positions, values, color=colours, height=0.7)
    ax.set_yticks(positions)
    ax.set_yticklabels(labels, parse_math=False)
    # Bars are placed at increasing y, so the inverted axis puts rank 0 (largest |score|) at the top.
    ax.invert_yaxis()
    ax.axvline(0.0, color="0.3", linewidth=0.8)
    ax.set_xlabel("attribution")
