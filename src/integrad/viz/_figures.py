"""matplotlib access, the colour convention and the life of a figure, shared by every picture.

matplotlib is imported only when something is drawn, so that ``import integrad.viz`` works without it; the file
backend Agg is chosen where no window can be shown, unless the user chose a backend. A figure made here is closed
again when drawing into it fails, and :func:`save_figure` writes a PNG and closes the figure, so that no figure is
left open behind the caller's back.

Colour convention, shared by every picture: red is positive attribution (evidence for the target), blue is
negative (evidence against it).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..arguments import check_real_in

INSTALL_HINT = 'pip install "integrad[viz]"'

# Diverging map for signed values (red = positive, blue = negative, white = 0);
# sequential maps for the one-sided modes so that 0 is always the lightest tone.
DEFAULT_CMAPS = {
    "all": "RdBu_r",
    "positive": "Reds",
    "negative": "Blues",
    "absolute": "viridis",
}

POSITIVE_RGB = (214, 39, 40)
NEGATIVE_RGB = (31, 119, 180)


def sign_rgb(value: float) -> tuple[int, int, int]:
    """The colour of a value, 0…255 per channel: red for positive (and zero), blue for negative."""
    return POSITIVE_RGB if value >= 0 else NEGATIVE_RGB


def import_matplotlib(module: str) -> Any:
    """Import a matplotlib module, or say how to install matplotlib."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"integrad.viz needs matplotlib for plotting; install it with: {INSTALL_HINT}") from exc


def pyplot(files_only: bool = False) -> Any:
    """Import ``matplotlib.pyplot`` on demand, choosing the Agg backend where no one else has chosen.

    Agg is chosen on headless Linux, or everywhere with ``files_only`` (callers that only write
    files and never show a window). In either case the backend is left alone once pyplot is
    imported or when the user set ``MPLBACKEND`` (notebooks do): the choice is theirs.
    """
    matplotlib = import_matplotlib("matplotlib")
    headless = (
        sys.platform.startswith("linux") and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY")
    )
    if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND") and (files_only or headless):
        matplotlib.use("Agg")
    return import_matplotlib("matplotlib.pyplot")


@contextlib.contextmanager
def new_figure(plt: Any, rows: int, cols: int, figsize: tuple[float, float], **subplots_options: Any) -> Iterator:
    """Yield ``(figure, axes)`` of a new figure (``axes`` always a 2-D grid); the figure is closed if drawing fails."""
    fig, axes = plt.subplots(rows, cols, figsize=figsize, squeeze=False, **subplots_options)
    try:
        yield fig, axes
    except BaseException:
        plt.close(fig)
        raise


@contextlib.contextmanager
def axes_or_new(plt: Any, ax: Any, figsize: tuple[float, float]) -> Iterator:
    """Yield ``ax``, or the axes of a new figure, which is closed again if drawing fails.

    A figure the caller passed in stays theirs, even when drawing into it fails.
    """
    if ax is not None:
        yield ax
        return
    with new_figure(plt, 1, 1, figsize) as (_, axes):
        yield axes[0, 0]


def figure_of(fig_or_ax: Any) -> Any:
    """The top-level figure of a Figure, SubFigure or Axes (a SubFigure cannot be saved on its own)."""
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure, FigureBase

    if isinstance(fig_or_ax, Axes):
        fig = fig_or_ax.figure
    elif isinstance(fig_or_ax, FigureBase):
        fig = fig_or_ax
    else:
        raise TypeError(f"fig_or_ax must be a matplotlib Figure, SubFigure or Axes; got {type(fig_or_ax).__name__}")
    while not isinstance(fig, Figure):
        fig = fig.figure
    return fig


def save_figure(fig_or_ax: Any, path: str | os.PathLike, dpi: float = 100) -> Path:
    """Write a figure to a PNG file and close it.

    Parameters
    ----------
    fig_or_ax : matplotlib Figure, SubFigure or Axes
        What to save; for an Axes or SubFigure the whole figure is written.
    path : str or os.PathLike
        Destination ending in ``.png``; missing parent directories are
        created.
    dpi : float, default 100
        Resolution, a positive number.

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    TypeError
        If ``fig_or_ax`` is not a matplotlib figure or axes, or ``path`` is not
        a path.
    ValueError
        If ``path`` does not end in ``.png`` or ``dpi`` is not positive.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike; got {type(path).__name__}")
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise ValueError(f"path must end in '.png' (PNG is the format written); got {str(path)!r}")
    resolution = check_real_in("dpi", dpi, "a positive number", lambda v: v > 0.0)
    plt = pyplot()
    fig = figure_of(fig_or_ax)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(target, format="png", dpi=resolution, bbox_inches="tight")
    finally:
        plt.close(fig)
    return target
