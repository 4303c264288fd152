"""Image attributions: a fixed colour scale, heatmaps, heatmaps over the image, and an image beside its heatmaps.

:func:`normalize_attribution` maps attributions onto the colour scale (percentile clipping, one scale for both
signs) and needs no matplotlib. :func:`image_heatmap` draws the channel sum of an image attribution, alone or over
the image; :func:`image_side_by_side` draws the image followed by one heatmap per attribution.

The channels are summed because, by completeness, the sum of a pixel's channel attributions is that pixel's share
of ``F(x) − F(x′)`` [1]_.

References
----------
.. [1] M. Sundararajan, A. Taly and Q. Yan, "Axiomatic Attribution for Deep
   Networks", ICML 2017. https://arxiv.org/abs/1703.01365
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..arguments import check_real_in
from ._checks import (
    ArrayLike,
    as_array,
    check_finite,
    check_labels,
    check_percentile,
    check_sign,
    is_integer_data,
)
from ._figures import DEFAULT_CMAPS, axes_or_new, new_figure, pyplot

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["normalize_attribution", "image_heatmap", "image_side_by_side"]

_ATTRIBUTION_LAYOUTS = "(H, W), (C, H, W) or (1, C, H, W)"
_IMAGE_LAYOUTS = "(H, W), (C, H, W), (H, W, C) or (1, C, H, W) with C in {1, 3, 4}"


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
    sign = check_sign(sign)
    percentile = check_percentile(clip_percentile)
    values = as_array(attribution, "attribution")
    check_finite(values, "attribution")
    shown, pool = _shown_and_pool(values, sign)
    if pool.size == 0:
        return np.zeros_like(values)
    limit = float(np.percentile(pool, percentile))
    if limit <= 0.0:
        limit = float(pool.max())
    if limit <= 0.0:
        return np.zeros_like(values)
    lower = -1.0 if sign == "all" else 0.0
    return np.clip(shown / limit, lower, 1.0)


def _shown_and_pool(values: np.ndarray, sign: str) -> tuple[np.ndarray, np.ndarray]:
    """The values the ``sign`` mode shows, and the magnitudes that set its scale.

    The one-sided modes take their scale from their own side only, so that a large value of the hidden sign
    cannot wash out the shown one.
    """
    if sign == "all":
        return values, np.abs(values).ravel()
    if sign == "positive":
        return np.clip(values, 0.0, None), values[values > 0]
    if sign == "negative":
        return np.clip(-values, 0.0, None), -values[values < 0]
    shown = np.abs(values)
    return shown, shown.ravel()


def reduce_channels(attribution: np.ndarray) -> np.ndarray:
    """Bring an image attribution to (H, W) by summing over its channels, which come first."""
    if attribution.ndim == 4:
        if attribution.shape[0] != 1:
            raise ValueError(
                f"attribution must have shape {_ATTRIBUTION_LAYOUTS}; got {tuple(attribution.shape)} "
                "(a batch of several examples: pass one, e.g. attribution[0])"
            )
        attribution = attribution[0]
    if attribution.ndim == 3:
        # A last axis of 1, 3 or 4 behind a first axis that is no channel count is the (H, W, C)
        # layout of PIL and numpy images: summing the first axis would silently sum the rows, so
        # it is refused rather than guessed.
        if attribution.shape[2] in (1, 3, 4) and attribution.shape[0] not in (1, 3, 4):
            raise ValueError(
                f"attribution must have shape {_ATTRIBUTION_LAYOUTS} with the channels first; got "
                f"{tuple(attribution.shape)}, which looks like (H, W, C): move the channel axis first, "
                "e.g. attribution.permute(2, 0, 1) or np.moveaxis(attribution, -1, 0)"
            )
        attribution = attribution.sum(axis=0)
    if attribution.ndim != 2:
        raise ValueError(f"attribution must have shape {_ATTRIBUTION_LAYOUTS}; got {tuple(attribution.shape)}")
    if attribution.shape[0] == 0 or attribution.shape[1] == 0:
        raise ValueError(f"attribution must not be empty; got {tuple(attribution.shape)}")
    return attribution


def spatial_size(attribution: Any) -> tuple[int, int]:
    """``(H, W)`` of an image attribution in any layout :func:`image_heatmap` accepts."""
    return tuple(reduce_channels(as_array(attribution, "attribution")).shape)


def prepare_image(image: Any, size: tuple[int, int], integer_input: bool) -> np.ndarray:
    """The image as (H, W) grey or (H, W, 3|4) colour with values in [0, 1], checked against ``size``."""
    pixels = _channels_last(as_array(image, "image"), size)
    if tuple(pixels.shape[:2]) != size:
        raise ValueError(f"image must have the attribution's spatial size {size}; got {tuple(pixels.shape)}")
    check_finite(pixels, "image")
    low, high = float(pixels.min()), float(pixels.max())
    if low >= 0.0 and high <= 1.0:
        return pixels
    if integer_input and low >= 0.0 and high <= 255.0:
        return pixels / 255.0
    # Standardised or otherwise unbounded images: stretch for display only.
    if high > low:
        return (pixels - low) / (high - low)
    return np.zeros_like(pixels)


def _channels_last(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An image in any accepted layout as (H, W) or (H, W, C), the layout ``imshow`` draws."""
    if pixels.ndim == 4 and pixels.shape[0] == 1:
        pixels = pixels[0]
    if pixels.ndim == 2:
        return pixels
    if pixels.ndim != 3:
        raise ValueError(f"image must have shape {_IMAGE_LAYOUTS}; got {tuple(pixels.shape)}")
    # Channel-first is the torch convention, so it wins when both fit.
    if pixels.shape[0] in (1, 3, 4) and tuple(pixels.shape[1:]) == size:
        pixels = np.moveaxis(pixels, 0, -1)
    elif not (pixels.shape[2] in (1, 3, 4) and tuple(pixels.shape[:2]) == size):
        raise ValueError(
            f"image must have shape {_IMAGE_LAYOUTS} matching the attribution's spatial size {size}; "
            f"got {tuple(pixels.shape)}"
        )
    return pixels[..., 0] if pixels.shape[2] == 1 else pixels


def draw_image(ax: Axes, pixels: np.ndarray, title: str | None = None) -> None:
    """Draw an image prepared by :func:`prepare_image`, without ticks; the title is shown literally."""
    ax.imshow(pixels, cmap="gray" if pixels.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(str(title), parse_math=False)


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
        ``(H, W)``, ``(C, H, W)`` or ``(1, C, H, W)``; the channels, first (a last axis of 1, 3 or 4 behind any other
        first axis is taken for ``(H, W, C)`` and refused), are summed: the pixel's share of ``F(x) − F(x′)``.
    image : torch.Tensor or numpy.ndarray, optional
        Drawn underneath: ``(H, W)``, ``(C, H, W)``, ``(H, W, C)`` or ``(1, C, H, W)`` with ``C`` in {1, 3, 4}, of
        the attribution's spatial size. Values in [0, 1] are drawn as they are, integer images in [0, 255] divided
        by 255, anything else (e.g. a standardised tensor) min-max stretched for display.
    sign, clip_percentile
        Which values to show, and the percentile of their magnitudes used as the colour limit (larger ones are
        clipped); see :func:`normalize_attribution`.
    overlay_alpha : float, default 0.5
        Opacity in [0, 1] of the heatmap when ``image`` is given.
    cmap : str or matplotlib Colormap, optional
        Default: diverging ``"RdBu_r"`` (red positive, blue negative) for ``"all"``; ``"Reds"``, ``"Blues"`` and
        ``"viridis"`` for ``"positive"``, ``"negative"`` and ``"absolute"``.
    ax : matplotlib Axes, optional
        Where to draw; a new figure is created if omitted.
    title : str, optional
        Axes title, shown literally (``$`` does not start mathematics).
    colorbar : bool, default True
        Add a colour bar of the normalised scale.

    Returns
    -------
    matplotlib.axes.Axes
        ``ax.images[-1]`` is the heatmap, of data ``normalize_attribution(channel_sum, sign, clip_percentile)`` and
        colour limits (-1, 1) for ``"all"``, (0, 1) otherwise.

    Raises
    ------
    ValueError
        For an attribution or image of the wrong shape, an unknown ``sign``, ``clip_percentile`` outside (0, 100]
        or ``overlay_alpha`` outside [0, 1]. No figure is left open when an error is raised.
    ImportError
        If matplotlib is not installed.
    """
    sign = check_sign(sign)
    channel_sum = reduce_channels(as_array(attribution, "attribution"))
    heat = normalize_attribution(channel_sum, sign, clip_percentile)
    alpha = check_real_in("overlay_alpha", overlay_alpha, "a number in [0, 1]", lambda v: 0.0 <= v <= 1.0)
    background = None if image is None else prepare_image(image, channel_sum.shape, is_integer_data(image))
    with axes_or_new(pyplot(), ax, (4.0, 4.0)) as ax:
        _draw_heatmap(ax, heat, sign, cmap=cmap, background=background, alpha=alpha, colorbar=colorbar, title=title)
    return ax


def _draw_heatmap(
    ax: Axes,
    heat: np.ndarray,
    sign: str,
    *,
    cmap: Any,
    background: np.ndarray | None,
    alpha: float,
    colorbar: bool,
    title: str | None,
) -> None:
    """The normalised heatmap without ticks, translucent over ``background`` when there is one."""
    if background is not None:
        draw_image(ax, background)
    heat_image = ax.imshow(
        heat,
        cmap=cmap if cmap is not None else DEFAULT_CMAPS[sign],
        vmin=-1.0 if sign == "all" else 0.0,
        vmax=1.0,
        alpha=alpha if background is not None else None,
        interpolation="nearest",
    )
    ax.set_xticks([])
    ax.set_yticks([])
    if colorbar:
        _add_colorbar(ax, heat_image, sign)
    if title is not None:
        ax.set_title(str(title), parse_math=False)


def _add_colorbar(ax: Axes, heat_image: Any, sign: str) -> None:
    """A colour bar of the normalised scale beside ``ax``."""
    from matplotlib.cm import ScalarMappable

    # A separate opaque mappable: a bar drawn from the overlay would inherit its transparency.
    scale = ScalarMappable(norm=heat_image.norm, cmap=heat_image.get_cmap())
    bar = ax.figure.colorbar(scale, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("attribution" if sign == "all" else f"{sign} attribution", fontsize="small")


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
    _check_heatmap_kwargs(heatmap_kwargs)
    items, names = _named_attributions(attributions, titles)
    # Every panel is checked before drawing, so that a bad one leaves no figure behind.
    size = spatial_size(items[0])
    pixels = prepare_image(image, size, is_integer_data(image))
    for item in items[1:]:
        if spatial_size(item) != size:
            raise ValueError(
                f"attributions must all have the image's spatial size {size}; got one of size {spatial_size(item)}"
            )
    plt = pyplot()
    n_panels = len(items) + 1
    with new_figure(plt, 1, n_panels, (3.8 * n_panels, 3.4), layout="constrained") as (fig, axes):
        draw_image(axes[0, 0], pixels, "input")
        for panel, item, name in zip(axes[0, 1:], items, names):
            image_heatmap(item, ax=panel, title=name, **heatmap_kwargs)
    return fig


def _check_heatmap_kwargs(heatmap_kwargs: dict[str, Any]) -> None:
    """Refuse the options of :func:`image_heatmap` that :func:`image_side_by_side` sets or cannot use."""
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


def _named_attributions(attributions: Any, titles: Any) -> tuple[list, list[str]]:
    """The attributions as a list, and one panel title each (``titles`` over mapping keys over defaults)."""
    if isinstance(attributions, Mapping):
        names = [str(key) for key in attributions.keys()]
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
    given = check_labels(titles, "titles", "strings, one per attribution", len(items))
    return items, names if given is None else given
