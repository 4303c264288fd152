"""Plots and HTML renderings of Integrated Gradients attributions.

This module is the optional ``viz`` extra. Everything that draws needs
matplotlib, which is imported only when a drawing function is called, so
``import integrad.visualize`` works without it (and :func:`text_html` and
:func:`normalize_attribution` need no matplotlib at all)::

    pip install "integrad[viz]"

All functions accept ``torch.Tensor`` or ``numpy.ndarray`` inputs and never
modify them. None of them calls ``plt.show``; figures are returned for the
caller to display or to write with :func:`save_figure`.

Colour convention, shared by every function: red is positive attribution
(evidence for the target), blue is negative (evidence against it).

References
----------
.. [1] M. Sundararajan, A. Taly and Q. Yan, "Axiomatic Attribution for Deep
   Networks", ICML 2017. https://arxiv.org/abs/1703.01365
"""

from __future__ import annotations

import contextlib
import html
import importlib
import math
import numbers
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "normalize_attribution",
    "image_heatmap",
    "image_side_by_side",
    "text_html",
    "feature_bars",
    "integrand_profile",
    "path_integrand",
    "save_figure",
]

ArrayLike = torch.Tensor | np.ndarray | Sequence[float]

SIGNS = ("all", "positive", "negative", "absolute")

# Diverging map for signed values (red = positive, blue = negative, white = 0);
# sequential maps for the one-sided modes so that 0 is always the lightest tone.
_DEFAULT_CMAPS = {
    "all": "RdBu_r",
    "positive": "Reds",
    "negative": "Blues",
    "absolute": "viridis",
}

_POSITIVE_RGB = (214, 39, 40)
_NEGATIVE_RGB = (31, 119, 180)

_INSTALL_HINT = 'pip install "integrad[viz]"'


# ---------------------------------------------------------------------------
# internal utilities
# ---------------------------------------------------------------------------


def _import_matplotlib(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"integrad.visualize needs matplotlib for plotting; install it with: {_INSTALL_HINT}"
        ) from exc


def _pyplot(files_only: bool = False):
    """Import ``matplotlib.pyplot`` on demand, choosing the Agg backend where no one else has chosen.

    Agg is chosen on headless Linux, or everywhere with ``files_only`` (callers that only write
    files and never show a window). In either case the backend is left alone once pyplot is
    imported or when the user set ``MPLBACKEND`` (notebooks do): the choice is theirs.
    """
    matplotlib = _import_matplotlib("matplotlib")
    headless = (
        sys.platform.startswith("linux") and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY")
    )
    if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND") and (files_only or headless):
        matplotlib.use("Agg")
    return _import_matplotlib("matplotlib.pyplot")


@contextlib.contextmanager
def _drawing(plt: Any, ax: Any, figsize: tuple[float, float]):
    """Yield ``ax``, or the axes of a new figure, which is closed again if drawing fails."""
    if ax is not None:
        yield ax
        return
    fig, new_ax = plt.subplots(figsize=figsize)
    try:
        yield new_ax
    except BaseException:
        plt.close(fig)
        raise


def _as_list(value: Any, name: str, what: str) -> list | None:
    """``value`` (None, or any iterable of labels but a single string) as a list."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ValueError(f"{name} must be a sequence of {what}; got {type(value).__name__} {value!r}")
    return list(value)


def _as_array(value: Any, name: str) -> np.ndarray:
    """Return a float64 copy of a tensor / array / nested sequence."""
    accepted = f"{name} must be a torch.Tensor, numpy.ndarray or sequence of numbers"
    if isinstance(value, torch.Tensor):
        if value.is_complex():
            raise TypeError(f"{name} must be real-valued; got a complex tensor")
        # Convert in torch (numpy has no bfloat16), then copy: for a CPU float64 tensor
        # .to() is a no-op and .numpy() would share the caller's memory.
        return value.detach().to(device="cpu", dtype=torch.float64).numpy().copy()
    if isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"{accepted}; got {type(value).__name__}")
    try:
        arr = np.array(value, copy=True)
    except Exception as exc:  # ragged sequences and other oddities
        raise TypeError(f"{accepted}; got {type(value).__name__}") from exc
    if arr.dtype.kind == "c":
        raise TypeError(f"{name} must be real-valued; got a complex array")
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{accepted}; got an array of dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def _check_finite(arr: np.ndarray, name: str) -> None:
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty; got shape {tuple(arr.shape)}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")


def _check_sign(sign: Any) -> str:
    if not isinstance(sign, str) or sign not in SIGNS:
        raise ValueError(f"sign must be one of {', '.join(repr(s) for s in SIGNS)}; got {sign!r}")
    return sign


def _check_percentile(clip_percentile: Any) -> float:
    if (
        isinstance(clip_percentile, bool)
        or not isinstance(clip_percentile, numbers.Real)
        or not math.isfinite(float(clip_percentile))
        or not 0.0 < float(clip_percentile) <= 100.0
    ):
        raise ValueError(f"clip_percentile must be a number in (0, 100] (100 = no clipping); got {clip_percentile!r}")
    return float(clip_percentile)


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def _reduce_channels(arr: np.ndarray) -> np.ndarray:
    """Bring an image attribution to (H, W) by summing over channels."""
    accepted = "(H, W), (C, H, W) or (1, C, H, W)"
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise ValueError(
                f"attribution must have shape {accepted}; got {tuple(arr.shape)} "
                "(a batch of several examples: pass one, e.g. attribution[0])"
            )
        arr = arr[0]
    if arr.ndim == 3:
        # Channels come first. A last axis of 1, 3 or 4 behind a first axis that is no channel
        # count is the (H, W, C) layout of PIL and numpy images: summing the first axis would
        # silently sum the rows, so it is refused rather than guessed.
        if arr.shape[2] in (1, 3, 4) and arr.shape[0] not in (1, 3, 4):
            raise ValueError(
                f"attribution must have shape {accepted} with the channels first; got "
                f"{tuple(arr.shape)}, which looks like (H, W, C): move the channel axis first, "
                "e.g. attribution.permute(2, 0, 1) or np.moveaxis(attribution, -1, 0)"
            )
        arr = arr.sum(axis=0)
    if arr.ndim != 2:
        raise ValueError(f"attribution must have shape {accepted}; got {tuple(arr.shape)}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"attribution must not be empty; got {tuple(arr.shape)}")
    return arr


def _prepare_image(image: Any, hw: tuple[int, int], integer_input: bool) -> np.ndarray:
    """Return image as (H, W) grey or (H, W, 3|4) colour with values in [0, 1]."""
    arr = _as_array(image, "image")
    accepted = "(H, W), (C, H, W), (H, W, C) or (1, C, H, W) with C in {1, 3, 4}"
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3:
        # Channel-first is the torch convention, so it wins when both fit.
        if arr.shape[0] in (1, 3, 4) and tuple(arr.shape[1:]) == hw:
            arr = np.moveaxis(arr, 0, -1)
        elif not (arr.shape[2] in (1, 3, 4) and tuple(arr.shape[:2]) == hw):
            raise ValueError(
                f"image must have shape {accepted} matching the attribution's spatial size {hw}; got {tuple(arr.shape)}"
            )
        if arr.shape[2] == 1:
            arr = arr[..., 0]
    elif arr.ndim != 2:
        raise ValueError(f"image must have shape {accepted}; got {tuple(arr.shape)}")
    if tuple(arr.shape[:2]) != hw:
        raise ValueError(f"image must have the attribution's spatial size {hw}; got {tuple(arr.shape)}")
    _check_finite(arr, "image")
    lo, hi = float(arr.min()), float(arr.max())
    if lo >= 0.0 and hi <= 1.0:
        return arr
    if integer_input and lo >= 0.0 and hi <= 255.0:
        return arr / 255.0
    # Standardised or otherwise unbounded images: stretch for display only.
    if hi > lo:
        return (arr - lo) / (hi - lo)
    return np.zeros_like(arr)


def _is_integer_data(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return not (value.is_floating_point() or value.is_complex())
    return isinstance(value, np.ndarray) and value.dtype.kind in "iu"


def _figure_of(fig_or_ax: Any):
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure, FigureBase

    if isinstance(fig_or_ax, Axes):
        fig = fig_or_ax.figure
    elif isinstance(fig_or_ax, FigureBase):
        fig = fig_or_ax
    else:
        raise TypeError(f"fig_or_ax must be a matplotlib Figure, SubFigure or Axes; got {type(fig_or_ax).__name__}")
    # A SubFigure cannot be saved on its own; walk up to the figure that owns it.
    while not isinstance(fig, Figure):
        fig = fig.figure
    return fig


# ---------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------


def normalize_attribution(attribution: ArrayLike, sign: str = "all", clip_percentile: float = 99.0) -> np.ndarray:
    """Scale attributions to a fixed colour range, clipping outliers.

    The scale ``L`` is the ``clip_percentile``-th percentile (linear
    interpolation, as :func:`numpy.percentile`) of the magnitudes of the values
    the ``sign`` mode shows; every value is divided by ``L`` and magnitudes
    above 1 are clipped to 1. The scale is the same for positive and negative
    values, so in ``"all"`` mode zero maps to 0 and the colour limits are
    symmetric.

    Parameters
    ----------
    attribution : torch.Tensor or numpy.ndarray
        Attribution values of any shape (no reduction is applied; the shape is
        kept). Must be finite and non-empty. Not modified.
    sign : {"all", "positive", "negative", "absolute"}, default "all"
        ``"all"``: signed values, result in [-1, 1]. ``"positive"``: only
        positive values, negative ones become 0, result in [0, 1].
        ``"negative"``: magnitudes of the negative values, positive ones become
        0, result in [0, 1]. ``"absolute"``: ``|value|``, result in [0, 1].
    clip_percentile : float, default 99.0
        Percentile in (0, 100] of the shown magnitudes used as the scale.
        ``100`` scales by the largest magnitude (no clipping). The pool of
        magnitudes is every value for ``"all"`` and ``"absolute"``, and only the
        strictly positive (``"positive"``) or strictly negative
        (``"negative"``) values otherwise, so hidden values do not affect the
        scale.

    Returns
    -------
    numpy.ndarray
        Float64 array with the shape of ``attribution``: in [-1, 1] for
        ``"all"``, in [0, 1] otherwise. All zeros if there is nothing to show.
        If the percentile is 0 (mostly-zero attributions) the largest magnitude
        is used instead, so that non-zero values stay visible.

    Raises
    ------
    ValueError
        For an unknown ``sign``, a ``clip_percentile`` outside (0, 100], or an
        empty or non-finite ``attribution``.
    """
    sign = _check_sign(sign)
    percentile = _check_percentile(clip_percentile)
    values = _as_array(attribution, "attribution")
    _check_finite(values, "attribution")

    if sign == "all":
        shown = values
        pool = np.abs(values).ravel()
    elif sign == "positive":
        shown = np.clip(values, 0.0, None)
        pool = values[values > 0]
    elif sign == "negative":
        shown = np.clip(-values, 0.0, None)
        pool = -values[values < 0]
    else:
        shown = np.abs(values)
        pool = shown.ravel()

    if pool.size == 0:
        return np.zeros_like(values)
    limit = float(np.percentile(pool, percentile))
    if limit <= 0.0:
        limit = float(pool.max())
    if limit <= 0.0:
        return np.zeros_like(values)
    lower = -1.0 if sign == "all" else 0.0
    return np.clip(shown / limit, lower, 1.0)


def image_heatmap(
    attribution: ArrayLike,
    image: ArrayLike | None = None,
    *,
    sign: str = "all",
    clip_percentile: float = 99.0,
    overlay_alpha: float = 0.5,
    cmap: Any = None,
    ax: Axes | None = None,
    title: str | None = None,
    colorbar: bool = True,
) -> Axes:
    """Draw an image attribution as a heatmap, optionally over the image.

    Parameters
    ----------
    attribution : torch.Tensor or numpy.ndarray
        Shape ``(H, W)``, ``(C, H, W)`` or ``(1, C, H, W)``; channels are
        reduced by summing (the sum of the channel attributions is the
        pixel's share of ``F(x) - F(x')``). The channels must come first: a
        3-D attribution whose last axis has 1, 3 or 4 entries and whose first
        axis has none of these is taken for ``(H, W, C)`` and refused. Not
        modified.
    image : torch.Tensor or numpy.ndarray, optional
        The input drawn underneath: ``(H, W)``, ``(C, H, W)``, ``(H, W, C)`` or
        ``(1, C, H, W)`` with ``C`` in {1, 3, 4} and the attribution's spatial
        size. Values in [0, 1] are drawn as they are, integer images in
        [0, 255] are divided by 255, anything else (e.g. a standardised
        tensor) is min-max stretched for display. Not modified.
    sign : {"all", "positive", "negative", "absolute"}, default "all"
        Which values to show; see :func:`normalize_attribution`.
    clip_percentile : float, default 99.0
        Percentile of ``|values|`` used as the colour limit; larger values are
        clipped. See :func:`normalize_attribution`.
    overlay_alpha : float, default 0.5
        Opacity in [0, 1] of the heatmap when ``image`` is given.
    cmap : str or matplotlib Colormap, optional
        Default: diverging ``"RdBu_r"`` (red positive, blue negative) for
        ``"all"``, ``"Reds"``, ``"Blues"`` and ``"viridis"`` for
        ``"positive"``, ``"negative"`` and ``"absolute"``.
    ax : matplotlib Axes, optional
        Where to draw; a new figure is created if omitted.
    title : str, optional
        Axes title, shown literally (``$`` does not start mathematics).
    colorbar : bool, default True
        Add a colour bar of the normalised scale.

    Returns
    -------
    matplotlib.axes.Axes
        The axes; ``ax.images[-1]`` is the heatmap, whose data is
        ``normalize_attribution(channel_sum, sign, clip_percentile)`` and whose
        colour limits are (-1, 1) for ``"all"`` and (0, 1) otherwise.

    Raises
    ------
    ValueError
        For an attribution or image of the wrong shape, an unknown ``sign``,
        ``clip_percentile`` outside (0, 100] or ``overlay_alpha`` outside
        [0, 1]. No figure is left open when an error is raised.
    ImportError
        If matplotlib is not installed.
    """
    sign = _check_sign(sign)
    attr2d = _reduce_channels(_as_array(attribution, "attribution"))
    heat = normalize_attribution(attr2d, sign, clip_percentile)
    if (
        isinstance(overlay_alpha, bool)
        or not isinstance(overlay_alpha, numbers.Real)
        or not 0.0 <= float(overlay_alpha) <= 1.0
    ):
        raise ValueError(f"overlay_alpha must be a number in [0, 1]; got {overlay_alpha!r}")
    background = None
    if image is not None:
        background = _prepare_image(image, tuple(attr2d.shape), _is_integer_data(image))

    plt = _pyplot()
    with _drawing(plt, ax, (4.0, 4.0)) as ax:
        alpha = None
        if background is not None:
            ax.imshow(
                background,
                cmap="gray" if background.ndim == 2 else None,
                vmin=0.0,
                vmax=1.0,
                interpolation="nearest",
            )
            alpha = float(overlay_alpha)
        vmin = -1.0 if sign == "all" else 0.0
        heat_image = ax.imshow(
            heat,
            cmap=cmap if cmap is not None else _DEFAULT_CMAPS[sign],
            vmin=vmin,
            vmax=1.0,
            alpha=alpha,
            interpolation="nearest",
        )
        ax.set_xticks([])
        ax.set_yticks([])
        if colorbar:
            from matplotlib.cm import ScalarMappable

            # A separate opaque mappable: a bar drawn from the overlay would inherit its transparency.
            scale = ScalarMappable(norm=heat_image.norm, cmap=heat_image.get_cmap())
            bar = ax.figure.colorbar(scale, ax=ax, fraction=0.046, pad=0.04)
            bar.set_label("attribution" if sign == "all" else f"{sign} attribution", fontsize="small")
        if title is not None:
            ax.set_title(str(title), parse_math=False)
    return ax


def image_side_by_side(
    image: ArrayLike,
    attributions: Mapping[str, ArrayLike] | Sequence[ArrayLike] | ArrayLike,
    *,
    titles: Sequence[str] | None = None,
    **heatmap_kwargs: Any,
) -> Figure:
    """Show an image followed by one heatmap per attribution, in one row.

    Parameters
    ----------
    image : torch.Tensor or numpy.ndarray
        The input image, in any layout :func:`image_heatmap` accepts for
        ``image``. Not modified.
    attributions : mapping of str to array, sequence of arrays, or one array
        ``{name: attribution}`` (names become panel titles), a list/tuple of
        attributions, or a single tensor/array (one panel). Each is drawn with
        :func:`image_heatmap` and must match the image's spatial size.
    titles : iterable of str, optional
        Panel titles for the attributions (not the image), overriding mapping
        keys; must have one entry per attribution. Titles are shown
        literally (``$`` does not start mathematics).
    **heatmap_kwargs
        Passed to :func:`image_heatmap` (``sign``, ``clip_percentile``,
        ``cmap``, ``colorbar``). ``ax``, ``title`` and ``image`` are set here
        and may not be given, nor ``overlay_alpha``: the heatmaps are drawn
        beside the image, not over it.

    Returns
    -------
    matplotlib.figure.Figure
        One row of ``1 + len(attributions)`` panels.

    Raises
    ------
    ValueError
        For no attributions, a ``titles`` of the wrong length, or any error
        :func:`image_heatmap` raises.
    TypeError
        For ``ax``, ``title``, ``image`` or ``overlay_alpha`` in
        ``heatmap_kwargs``.
    """
    for reserved in ("ax", "title", "image"):
        if reserved in heatmap_kwargs:
            raise TypeError(
                f"image_side_by_side() sets {reserved!r} itself; it cannot be passed through heatmap_kwargs"
            )
    if "overlay_alpha" in heatmap_kwargs:
        raise TypeError(
            "image_side_by_side() draws each heatmap beside the image, not over it, so "
            "overlay_alpha has no effect; leave it out (image_heatmap(attribution, image, "
            "overlay_alpha=...) draws an overlay)"
        )
    if isinstance(attributions, Mapping):
        names = [str(k) for k in attributions.keys()]
        items = list(attributions.values())
    elif isinstance(attributions, (torch.Tensor, np.ndarray)):
        items = [attributions]
        names = ["attribution"]
    elif isinstance(attributions, Sequence) and not isinstance(attributions, (str, bytes)):
        items = list(attributions)
        names = [f"attribution {i + 1}" for i in range(len(items))]
    else:
        raise TypeError(
            "attributions must be a mapping name -> attribution, a sequence of "
            f"attributions or a single tensor/array; got {type(attributions).__name__}"
        )
    if not items:
        raise ValueError("attributions must contain at least one attribution")
    if titles is not None:
        given = _as_list(titles, "titles", f"{len(items)} strings, one per attribution")
        if len(given) != len(items):
            raise ValueError(f"titles must be a sequence of {len(items)} strings, one per attribution; got {given!r}")
        names = [str(t) for t in given]

    # Validate every panel before drawing so that a bad one leaves no figure behind.
    first_hw = tuple(_reduce_channels(_as_array(items[0], "attribution")).shape)
    shown = _prepare_image(image, first_hw, _is_integer_data(image))
    for item in items[1:]:
        hw = tuple(_reduce_channels(_as_array(item, "attribution")).shape)
        if hw != first_hw:
            raise ValueError(f"attributions must all have the image's spatial size {first_hw}; got one of size {hw}")

    plt = _pyplot()
    n = len(items) + 1
    fig, axes = plt.subplots(1, n, figsize=(3.8 * n, 3.4), squeeze=False, layout="constrained")
    axes = axes[0]
    axes[0].imshow(
        shown,
        cmap="gray" if shown.ndim == 2 else None,
        vmin=0.0,
        vmax=1.0,
        interpolation="nearest",
    )
    axes[0].set_xticks([])
    axes[0].set_yticks([])
    axes[0].set_title("input")
    try:
        for panel, item, name in zip(axes[1:], items, names):
            image_heatmap(item, ax=panel, title=name, **heatmap_kwargs)
    except Exception:
        plt.close(fig)
        raise
    return fig


# ---------------------------------------------------------------------------
# text
# ---------------------------------------------------------------------------


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
    if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Sequence):
        raise TypeError(f"tokens must be a sequence of strings (e.g. a list); got {type(tokens).__name__}")
    percentile = _check_percentile(clip_percentile)
    for token in tokens:
        if not isinstance(token, str):
            raise TypeError(f"tokens must be a sequence of strings; found {type(token).__name__} {token!r}")
    raw = _as_array(scores, "scores")
    if raw.ndim == 2 and raw.shape[0] == 1:
        raw = raw[0]
    if raw.ndim != 1:
        raise ValueError(
            f"scores must have shape (T,) or (1, T); got {tuple(raw.shape)} "
            "(for per-dimension embedding attributions sum the last axis first)"
        )
    if raw.shape[0] != len(tokens):
        raise ValueError(
            f"tokens and scores must have the same length; got {len(tokens)} tokens and {raw.shape[0]} scores"
        )
    if not np.all(np.isfinite(raw)):
        raise ValueError("scores contains NaN or infinite values")
    if len(tokens) == 0:
        normalised = raw
    else:
        normalised = normalize_attribution(raw, "all", percentile)

    parts = ['<div class="integrad-text" style="font-family: sans-serif; line-height: 2;">']
    if title is not None:
        parts.append(
            f'<div style="font-weight: bold; margin-bottom: 0.3em;">{html.escape(str(title), quote=True)}</div>'
        )
    spans = []
    for token, score, level in zip(tokens, raw, normalised):
        r, g, b = _POSITIVE_RGB if level >= 0 else _NEGATIVE_RGB
        spans.append(
            f'<span style="background-color: rgba({r}, {g}, {b}, {abs(level):.4f}); '
            'padding: 0.1em 0.2em; border-radius: 0.25em; white-space: pre-wrap;" '
            f'title="{float(score):.6g}">{html.escape(token, quote=True)}</span>'
        )
    parts.append(" ".join(spans))
    parts.append("</div>")
    return "\n".join(parts)


# ---------------------------------------------------------------------------
# tabular
# ---------------------------------------------------------------------------


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
    values = _as_array(scores, "scores")
    if values.ndim == 2 and values.shape[0] == 1:
        values = values[0]
    if values.ndim != 1:
        raise ValueError(f"scores must have shape (F,) or (1, F); got {tuple(values.shape)}")
    _check_finite(values, "scores")
    n = values.shape[0]
    if feature_names is None:
        names = [f"feature {i}" for i in range(n)]
    else:
        given = _as_list(feature_names, "feature_names", f"{n} names, one per score")
        if len(given) != n:
            raise ValueError(f"feature_names must be a sequence of {n} names, one per score; got {given!r}")
        names = [str(name) for name in given]
    k = n if top_k is None else min(_check_int(top_k, "top_k", 1), n)

    order = np.argsort(-np.abs(values), kind="stable")[:k]
    shown = values[order]
    positive = tuple(c / 255 for c in _POSITIVE_RGB)
    negative = tuple(c / 255 for c in _NEGATIVE_RGB)
    colours = [positive if v >= 0 else negative for v in shown]

    plt = _pyplot()
    with _drawing(plt, ax, (6.0, max(2.0, 0.35 * k + 1.0))) as ax:
        positions = np.arange(k)
        ax.barh(positions, shown, color=colours, height=0.7)
        ax.set_yticks(positions)
        ax.set_yticklabels([names[i] for i in order], parse_math=False)
        # Rank 0 (largest |score|) at the top.
        ax.invert_yaxis()
        ax.axvline(0.0, color="0.3", linewidth=0.8)
        ax.set_xlabel("attribution")
        if title is not None:
            ax.set_title(str(title), parse_math=False)
    return ax


# ---------------------------------------------------------------------------
# path integrand
# ---------------------------------------------------------------------------


def _usable_core(obj: Any) -> bool:
    return callable(getattr(obj, "integrand", None)) and callable(getattr(obj, "forward_func", None))


def _resolve_ig(explainer_or_ig: Any, name: str = "explainer_or_ig") -> tuple[Any, bool]:
    """Return ``(core, from_explainer)``: the object with ``integrand`` and ``forward_func``."""
    if _usable_core(explainer_or_ig):
        return explainer_or_ig, False
    # An integrad.explainers explainer builds its core attribution object on demand.
    core = getattr(explainer_or_ig, "core", None)
    if _usable_core(core):
        return core, True
    raise TypeError(
        f"{name} must be an integrad.IntegratedGradients or an input-space "
        "integrad.explainers.IntegratedGradients (an object with integrand() and forward_func, "
        f"or whose .core has them); got {type(explainer_or_ig).__name__}"
    )


def _explainer_baselines(explainer: Any, tensors: tuple[torch.Tensor, ...], was_tuple: bool) -> Any:
    """Baselines the explainer would use for these inputs (built from the whole batch, as it does)."""
    resolve = getattr(explainer, "_baselines", None)
    if resolve is None:
        return None
    out = resolve(tensors)
    return out if was_tuple else out[0]


def _as_input_tuple(inputs: Any) -> tuple[tuple[torch.Tensor, ...], bool]:
    if isinstance(inputs, torch.Tensor):
        return (inputs,), False
    if isinstance(inputs, (tuple, list)) and inputs and all(isinstance(t, torch.Tensor) for t in inputs):
        return tuple(inputs), True
    raise TypeError(f"inputs must be a torch.Tensor or a non-empty tuple of tensors; got {type(inputs).__name__}")


def _take_example(value: Any, example: int, n: int, ndim: int | None = None) -> Any:
    """Slice a per-example tensor to one row; leave broadcastable values alone."""
    if (
        n > 1
        and isinstance(value, torch.Tensor)
        and value.ndim >= 1
        and value.shape[0] == n
        and (ndim is None or value.ndim == ndim)
    ):
        return value[example : example + 1]
    return value


def _single_target(target: Any, example: int, n: int) -> Any:
    """The target of one example, as None, an int or a tuple of ints."""
    if target is None:
        return None
    if isinstance(target, bool):
        raise TypeError("target must be None, an int, a tuple of ints, a list or a tensor; got bool")
    if isinstance(target, numbers.Integral):
        return int(target)
    if isinstance(target, tuple):
        return tuple(int(t) for t in target)
    if isinstance(target, torch.Tensor):
        if target.numel() == 1:
            return int(target.reshape(()).item())
        if target.ndim == 1 and target.shape[0] == n:
            return int(target[example].item())
        if target.ndim == 2 and target.shape[0] == n:
            return tuple(int(v) for v in target[example].tolist())
        raise ValueError(f"target tensor must have one element or shape ({n},) or ({n}, k); got {tuple(target.shape)}")
    if isinstance(target, list):
        if len(target) != n:
            raise ValueError(f"target list must have one entry per example ({n}); got {len(target)}")
        return _single_target(target[example], 0, 1)
    raise TypeError(f"target must be None, an int, a tuple of ints, a list or a tensor; got {type(target).__name__}")


def _baseline_tensors(baselines: Any, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Materialise baselines (None / scalar / tensor, or a tuple of those)."""
    if isinstance(baselines, tuple):
        if len(baselines) != len(inputs):
            raise ValueError(f"baselines must have one entry per input ({len(inputs)}); got {len(baselines)}")
        parts = baselines
    else:
        parts = (baselines,) * len(inputs)
    out = []
    for base, inp in zip(parts, inputs):
        if base is None:
            out.append(torch.zeros_like(inp))
        elif isinstance(base, numbers.Real) and not isinstance(base, bool):
            out.append(torch.full_like(inp, float(base)))
        elif isinstance(base, torch.Tensor):
            try:
                out.append(torch.broadcast_to(base.to(device=inp.device, dtype=inp.dtype), inp.shape))
            except RuntimeError as exc:
                raise ValueError(
                    f"baselines of shape {tuple(base.shape)} cannot be broadcast to the input shape {tuple(inp.shape)}"
                ) from exc
        else:
            raise TypeError(
                f"baselines must be None, a number, a tensor, or a tuple of those; got {type(base).__name__}"
            )
    return tuple(out)


def _target_value(output: Any, target: Any, which: str) -> float:
    """The target output of a single-example forward pass, as a float."""
    from integrad.arguments import model_output

    # The reader the attribution methods use: a tensor, or the .logits of an output object.
    output = model_output(output)
    if not isinstance(output, torch.Tensor):
        try:
            output = torch.as_tensor(output)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(
                "forward_func must return a tensor or an object with a .logits tensor; "
                f"at the {which} it returned {type(output).__name__}"
            ) from exc
    if output.ndim == 0:
        if target is not None:
            raise ValueError(f"forward_func returned a scalar at the {which}, so target must be None; got {target!r}")
        return float(output.item())
    if output.shape[0] != 1:
        raise ValueError(
            f"forward_func must return one row per example; at the {which} it returned "
            f"shape {tuple(output.shape)} for one example"
        )
    row = output[0]
    if target is not None:
        row = row[target]
    if row.numel() != 1:
        raise ValueError(
            f"forward_func output per example has shape {tuple(output.shape[1:])}; pass target to select one scalar"
        )
    return float(row.reshape(()).item())


def _additional_args_tuple(args: Any) -> tuple:
    if args is None:
        return ()
    return args if isinstance(args, tuple) else (args,)


def _check_alphas(alphas: Any) -> np.ndarray:
    arr = _as_array(alphas, "alphas")
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"alphas must be a non-empty 1-D sequence; got shape {tuple(arr.shape)}")
    _check_finite(arr, "alphas")
    if arr.min() < 0.0 or arr.max() > 1.0:
        raise ValueError(
            "alphas must lie in [0, 1] (0 is the baseline, 1 the input); got values from "
            f"{arr.min():g} to {arr.max():g}"
        )
    return arr


def integrand_profile(
    ig: Any,
    inputs: Any,
    alphas: ArrayLike,
    *,
    baselines: Any = None,
    target: Any = None,
    additional_forward_args: Any = None,
) -> np.ndarray:
    """Evaluate the IG path integrand ``g(α) = dF/dα`` at given path positions.

    ``g(α) = Σ_i (x_i − x'_i) ∂F/∂x_i (x' + α (x − x'))``; its integral over
    [0, 1] is ``F(x) − F(x')``, and an IG quadrature rule approximates that
    integral by ``Σ_k w_k g(α_k)`` (the sum of the attributions).

    Parameters
    ----------
    ig : integrad.IntegratedGradients or integrad.explainers.IntegratedGradients
        The core attribution object, whose ``integrand`` method does the
        work, or an input-space explainer (its ``core`` is used).
    inputs : torch.Tensor or tuple of torch.Tensor
        As for the core's ``attribute`` (for an explainer: what its
        ``forward_arg_extractor`` would return). Not modified.
    alphas : sequence of float, numpy.ndarray or torch.Tensor
        Path positions, 1-D, each in [0, 1] (0 is the baseline, 1 the
        input).
    baselines, target, additional_forward_args
        As for the core's ``attribute``. With an explainer and
        ``baselines=None``, the explainer's ``baseline_fn`` is applied to
        ``inputs``, as :func:`path_integrand` does.

    Returns
    -------
    numpy.ndarray
        Float64 array of shape ``(N, K)``: ``g`` for each example at each
        alpha.

    Raises
    ------
    TypeError
        If ``ig`` has no ``integrand`` method.
    ValueError
        If ``alphas`` is not a non-empty 1-D sequence of numbers in [0, 1].
    """
    core, from_explainer = _resolve_ig(ig, "ig")
    grid = _check_alphas(alphas)
    if baselines is None and from_explainer:
        tensors, was_tuple = _as_input_tuple(inputs)
        baselines = _explainer_baselines(ig, tensors, was_tuple)
    values = core.integrand(
        inputs,
        grid,
        baselines=baselines,
        target=target,
        additional_forward_args=additional_forward_args,
    )
    out = _as_array(values, "integrand")
    if out.ndim == 1 and out.shape[0] == grid.shape[0]:
        out = out[None, :]
    return out


def path_integrand(
    explainer_or_ig: Any,
    inputs: Any,
    *,
    baselines: Any = None,
    target: Any = None,
    additional_forward_args: Any = None,
    method: str = "gausslegendre",
    n_steps: int = 50,
    n_dense: int = 200,
    example: int = 0,
    ax: Axes | None = None,
) -> Axes:
    """Plot the IG integrand along the path to see why a convergence delta is large.

    The line is the integrand ``g(α) = dF/dα`` on ``n_dense`` evenly spaced
    points of [0, 1]; the markers are ``g`` at the nodes of the quadrature
    rule (``integrad.rules.alphas_and_weights(method, n_steps)``), with marker
    area proportional to the node's weight. Two horizontal lines compare the
    quadrature sum ``Σ_k w_k g(α_k)`` with the exact ``F(x) − F(x')``, which
    is computed by calling the model at both endpoints. Because the path has
    length 1, ``F(x) − F(x')`` is also the mean of ``g``, so the exact line is
    the level whose area equals the area under the curve. Their difference
    is the convergence delta of input-space IG with ``multiply_by_inputs``.
    Sharp peaks or steps in ``g`` that fall between nodes are what makes the
    delta large.

    Parameters
    ----------
    explainer_or_ig : integrad.IntegratedGradients or integrad.explainers.IntegratedGradients
        The core attribution object, or an input-space explainer (its
        ``core`` is used). The object must provide ``integrand`` and
        ``forward_func``.
    inputs : torch.Tensor or tuple of torch.Tensor
        The attributed inputs, as for the core's ``attribute`` (for an
        explainer: what its ``forward_arg_extractor`` would return). Only
        example ``example`` is evaluated. Not modified.
    baselines, target, additional_forward_args
        As for the core's ``attribute``. Per-example tensors (first dimension
        ``N``) are sliced to the chosen example; broadcastable ones are used as
        given. With an explainer and ``baselines=None``, the explainer's
        ``baseline_fn`` is applied to the whole batch of ``inputs``.
    method : str, default "gausslegendre"
        Quadrature rule name accepted by ``integrad.rules``.
    n_steps : int, default 50
        Number of rule nodes (a fixed count; ``"auto"`` is not accepted).
    n_dense : int, default 200
        Number of points of the dense curve, at least 2 (endpoints included).
    example : int, default 0
        Which example of the batch to draw.
    ax : matplotlib Axes, optional
        Where to draw; a new figure is created if omitted.

    Returns
    -------
    matplotlib.axes.Axes
        The axes. The dense curve is the line with gid ``"integrand-dense"``,
        the nodes are the collection with gid ``"rule-nodes"``; the legend
        holds the quadrature sum, ``F(x) − F(x')`` and their difference.

    Raises
    ------
    ValueError
        For ``n_steps`` or ``n_dense`` that is not a valid integer, an
        ``example`` outside the batch, or a forward output that ``target``
        does not reduce to one scalar per example.
    TypeError
        If ``explainer_or_ig`` has no ``integrand``/``forward_func`` or
        ``inputs`` is not a tensor or tuple of tensors.
    ImportError
        If matplotlib is not installed.

    References
    ----------
    .. [1] M. Sundararajan, A. Taly and Q. Yan, "Axiomatic Attribution for
       Deep Networks", ICML 2017 (completeness and the convergence check).
    """
    from integrad import rules

    core, from_explainer = _resolve_ig(explainer_or_ig)
    if isinstance(n_steps, str):
        raise ValueError(f"n_steps must be a positive integer for path_integrand (a fixed rule); got {n_steps!r}")
    n_steps = _check_int(n_steps, "n_steps", 1)
    n_dense = _check_int(n_dense, "n_dense", 2)
    tensors, was_tuple = _as_input_tuple(inputs)
    if tensors[0].ndim == 0:
        raise ValueError("inputs must have a leading batch dimension")
    n = int(tensors[0].shape[0])
    if isinstance(example, bool) or not isinstance(example, numbers.Integral) or not 0 <= example < n:
        raise ValueError(f"example must be an integer in [0, {n}); got {example!r}")
    example = int(example)
    if baselines is None and from_explainer:
        # Baselines such as "mean" depend on the whole batch, so build them before slicing.
        baselines = _explainer_baselines(explainer_or_ig, tensors, was_tuple)

    # Only one example is drawn, so evaluate only that one: the dense grid costs
    # n_dense model rows instead of N * n_dense.
    one_inputs = tuple(_take_example(t, example, n) for t in tensors)
    if isinstance(baselines, tuple):
        one_baselines = tuple(_take_example(b, example, n, ndim=t.ndim) for b, t in zip(baselines, tensors))
    else:
        one_baselines = _take_example(baselines, example, n, ndim=tensors[0].ndim)
    one_target = _single_target(target, example, n)
    if isinstance(additional_forward_args, tuple):
        one_args: Any = tuple(_take_example(a, example, n) for a in additional_forward_args)
    else:
        one_args = _take_example(additional_forward_args, example, n)
    call_inputs = one_inputs if was_tuple else one_inputs[0]
    kwargs = dict(baselines=one_baselines, target=one_target, additional_forward_args=one_args)

    rule_alphas, rule_weights = rules.alphas_and_weights(method, n_steps)
    rule_alphas = np.asarray(rule_alphas, dtype=np.float64)
    rule_weights = np.asarray(rule_weights, dtype=np.float64)
    dense_alphas = np.linspace(0.0, 1.0, n_dense)
    # One call for both grids: one pass of model evaluations instead of two.
    profile = integrand_profile(core, call_inputs, np.concatenate([dense_alphas, rule_alphas]), **kwargs)[0]
    dense_g, rule_g = profile[:n_dense], profile[n_dense:]
    quadrature = float(np.dot(rule_weights, rule_g))

    extra = _additional_args_tuple(one_args)
    with torch.no_grad():
        # Copies: the slices are views of the caller's tensors, and a model may write into its input.
        point = tuple(t.clone() for t in one_inputs)
        f_x = _target_value(core.forward_func(*point, *extra), one_target, "input")
        start = tuple(t.clone() for t in _baseline_tensors(one_baselines, one_inputs))
        f_base = _target_value(core.forward_func(*start, *extra), one_target, "baseline")
    exact = f_x - f_base

    plt = _pyplot()
    with _drawing(plt, ax, (6.5, 4.0)) as ax:
        _draw_integrand(
            ax,
            dense_alphas,
            dense_g,
            rule_alphas,
            rule_weights,
            rule_g,
            method,
            n_steps,
            n_dense,
            exact,
            quadrature,
            example,
        )
    return ax


def _draw_integrand(
    ax, dense_alphas, dense_g, rule_alphas, rule_weights, rule_g, method, n_steps, n_dense, exact, quadrature, example
) -> None:
    ax.plot(
        dense_alphas,
        dense_g,
        color="C0",
        linewidth=1.5,
        gid="integrand-dense",
        label=f"g(α) = dF/dα ({n_dense} points)",
    )
    w_abs = np.abs(rule_weights)
    sizes = 200.0 * w_abs / w_abs.max() if w_abs.max() > 0 else np.full_like(w_abs, 20.0)
    ax.scatter(
        rule_alphas,
        rule_g,
        s=sizes,
        color="C1",
        edgecolors="black",
        linewidths=0.5,
        zorder=3,
        gid="rule-nodes",
        label=f"{method} nodes, n={n_steps} (area ∝ weight)",
    )
    ax.axhline(exact, color="black", linewidth=1.0, gid="exact", label=f"F(x) − F(x′) = {exact:.8g}")
    ax.axhline(
        quadrature, color="C1", linestyle="--", linewidth=1.0, gid="quadrature", label=f"Σ w·g(α) = {quadrature:.8g}"
    )
    ax.plot([], [], linestyle="none", label=f"delta = {quadrature - exact:.3g}")
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel("α (position along the path from baseline to input)")
    ax.set_ylabel("dF/dα")
    ax.set_title(f"IG integrand, example {example}")
    ax.legend(fontsize="small", loc="best")


# ---------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------


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
    if isinstance(dpi, bool) or not isinstance(dpi, numbers.Real) or not math.isfinite(float(dpi)) or dpi <= 0:
        raise ValueError(f"dpi must be a positive number; got {dpi!r}")
    plt = _pyplot()
    fig = _figure_of(fig_or_ax)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(target, format="png", dpi=float(dpi), bbox_inches="tight")
    finally:
        plt.close(fig)
    return target
