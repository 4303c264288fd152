"""XRAI: region attributions built from integrated-gradients maps over an image's segments."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import arguments
from ..paths import StraightLine
from .base import PathAttribution, keeps_model_state, output_probe

#: Felzenszwalb's scale parameter: one segmentation per value, from fine to coarse regions.
FELZENSZWALB_SCALES = (50, 100, 150, 250, 500, 1200)
FELZENSZWALB_SIGMA = 0.8
FELZENSZWALB_MIN_SIZE = 150
#: Images are segmented at this size (the scales above are tuned for it) with values rescaled to [-1, 1].
SEGMENTATION_SIZE = (224, 224)
#: Each segment is dilated by a disk of this radius, so that regions overlap and include their edges.
DILATION_RADIUS = 5
ALGORITHMS = ("full", "fast")

_EXTRA_HINT = "pip install 'integrad[xrai]'"


class XRAI(PathAttribution):
    r"""XRAI: rank an image's regions by their density of integrated-gradients attribution.

    Starting from the empty region, XRAI repeatedly adds the candidate segment ``s`` with the largest gain
    ``mean_{p ∈ s \ R} a(p)`` over the pixels it adds to the region ``R`` selected so far; ``a`` is the
    per-pixel attribution (the maximum over channels of the base attribution map). Every added pixel gets the gain of
    the segment that added it; pixels no segment adds share the mean of ``a`` over them. So the map sums to ``Σ a``,
    and its level sets are the regions in the order of their importance.

    The base attribution defaults to the mean of the integrated gradients from a black and a white baseline (the
    image's own minimum and maximum value, as the paper does); the segments default to Felzenszwalb's graph-based
    segmentation at six scales, each segment dilated (this needs scikit-image: ``pip install 'integrad[xrai]'``).

    Parameters
    ----------
    forward_func : callable
        The model; called as ``forward_func(images, *additional_forward_args)``.

    Notes
    -----
    The greedy selection follows the reference implementation (``saliency.core.XRAI``): a segment that would add
    fewer than ``min_pixel_diff`` new pixels is dropped, ties go to the segment given first, and the selection stops
    once the selected area exceeds ``area_threshold`` of the image. ``"fast"`` ranks the segments once by their own
    density instead, ignoring overlaps. After each call ``last_ranks`` holds, per pixel, the rank of its region
    (1 = most important).

    References
    ----------
    Kapishnikov, Bolukbasi, Viégas, Terry. XRAI: Better Attributions Through Regions. ICCV 2019.
    https://arxiv.org/abs/1906.02825
    Felzenszwalb, Huttenlocher. Efficient Graph-Based Image Segmentation. IJCV 59(2), 2004.
    Sundararajan, Taly, Yan. Axiomatic Attribution for Deep Networks. ICML 2017. https://arxiv.org/abs/1703.01365
    """

    def __init__(self, forward_func: Callable):
        super().__init__(forward_func, multiply_by_inputs=True)
        self.last_ranks: Tensor | None = None

    @keeps_model_state
    def attribute(
        self,
        inputs: Tensor,
        baselines: Any = None,
        target: Any = None,
        segments: Any = None,
        base_attribution: Any = None,
        additional_forward_args: Any = None,
        n_steps: int | str = 50,
        method: str = "gausslegendre",
        internal_batch_size: int | None = None,
        return_convergence_delta: bool = False,
        *,
        memory_budget: int | str | None = None,
        tolerance: float = 1e-3,
        area_threshold: float = 1.0,
        min_pixel_diff: int = 50,
        algorithm: str = "full",
    ):
        """Region attributions of ``forward_func``'s output at ``target`` for a batch of images.

        Parameters
        ----------
        inputs : Tensor
            Images shaped ``(N, C, H, W)``, floating point.
        baselines : None, number, Tensor, or list of those
            The integrated-gradients baselines whose maps are averaged: None for a black and a white image (each
            image's minimum and maximum value); otherwise one baseline or a list of them, each in any form
            :meth:`IntegratedGradients.attribute` accepts for one input.
        target, additional_forward_args
            As in :meth:`IntegratedGradients.attribute`.
        segments : None, list, Tensor or ndarray
            Candidate regions. None computes Felzenszwalb segments (scikit-image). Else a list with one entry per
            image, each a sequence of ``(H, W)`` boolean masks or a boolean ``(S, H, W)`` array; or an integer
            ``(N, H, W)`` label map (each label one segment, in increasing order).
        base_attribution : Tensor or ndarray, optional
            A precomputed attribution map shaped like ``inputs``, used instead of integrated gradients.
        n_steps, method, internal_batch_size, memory_budget, tolerance
            The integrated gradients' rule and chunking (see :meth:`IntegratedGradients.attribute`).
        return_convergence_delta : bool, default False
            Also return, per image, the convergence delta of the averaged integrated gradients,
            ``Σ IG − (F(x) − mean F(x′))`` (not available with ``base_attribution``).
        area_threshold : float, default 1.0
            Stop selecting once this fraction of the image is covered; the rest shares one value.
        min_pixel_diff : int, default 50
            Segments adding fewer new pixels than this are dropped.
        algorithm : {"full", "fast"}, default "full"

        Returns
        -------
        attributions : Tensor
            ``(N, 1, H, W)`` in the inputs' dtype: each pixel's region gain (it broadcasts against the images).
        delta : Tensor
            Only with ``return_convergence_delta=True``: one value per image.
        """
        images = _check_images(inputs)
        return_convergence_delta = arguments.check_bool("return_convergence_delta", return_convergence_delta)
        area_threshold = _check_area(area_threshold)
        min_pixel_diff = arguments.check_positive_int("min_pixel_diff", min_pixel_diff, allow_none=False)
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}; got {algorithm!r}")
        masks = _check_segments(segments, images.shape)
        if masks is None:
            _scikit_image()  # before any integration: the segments need it
        delta = None
        if base_attribution is not None:
            if return_convergence_delta:
                raise ValueError(
                    "return_convergence_delta=True needs the integrated gradients XRAI computes; with base_attribution "
                    "given there is none to check: leave base_attribution out or return_convergence_delta False"
                )
            base = _check_base_attribution(base_attribution, images)
        else:
            base, delta = self._integrated_gradients(
                images,
                baselines,
                target,
                additional_forward_args,
                n_steps,
                method,
                internal_batch_size,
                memory_budget,
                tolerance,
                return_convergence_delta,
            )
        select = xrai_full if algorithm == "full" else xrai_fast
        region_maps, self.last_ranks = _regions(images, base, masks, select, min_pixel_diff, area_threshold)
        attributions = region_maps.unsqueeze(1).to(device=images.device, dtype=images.dtype)
        if return_convergence_delta:
            return attributions, delta
        return attributions

    def _integrated_gradients(
        self,
        images,
        baselines,
        target,
        additional_forward_args,
        n_steps,
        method,
        internal_batch_size,
        memory_budget,
        tolerance,
        want_delta,
    ) -> tuple[Tensor, Tensor | None]:
        """The mean over the baselines of the integrated gradients, all baselines' paths in one integration."""
        settings = self._rule_settings(n_steps, method, internal_batch_size, memory_budget, tolerance, images.device)
        batch = images.shape[0]
        starts = _baseline_images(baselines, images)
        count = len(starts)
        target_t = arguments.normalize_target(target, batch, images.device)
        args, per_example = arguments.normalize_additional_args(additional_forward_args, batch)
        end = images.detach().repeat((count,) + (1,) * (images.dim() - 1))
        path = StraightLine((torch.cat(starts),), (end,))
        example_of = torch.arange(batch).repeat(count).to(images.device)
        plain = output_probe(self.forward_func, lambda points, examples: points, target_t, args, per_example)

        def probe(points, rows):
            return plain(points, example_of.index_select(0, rows.to(example_of.device)))

        result = self._integrate(probe, path, settings, need_ends=want_delta)
        (maps,) = self._finish(result, [images.dtype])
        mean = maps.view((count, batch) + tuple(images.shape[1:])).sum(0) / count
        delta = None
        if want_delta:
            delta = self.last_report.delta.view(count, batch).sum(0) / count
            self.last_report.delta = delta
        return mean, delta


def _regions(
    images: Tensor, base: Tensor, masks: list | None, select: Callable, min_pixel_diff: int, area_threshold: float
) -> tuple[Tensor, Tensor]:
    """Per image, in float64 on the CPU: the region map and the region ranks of the channel-wise maximum of
    ``base``, over the given segments or Felzenszwalb's."""
    per_pixel = base.detach().max(dim=1).values.to("cpu", torch.float64).numpy()
    pictures = images.detach().to("cpu", torch.float64).permute(0, 2, 3, 1).numpy()
    maps, ranks = [], []
    for i in range(images.shape[0]):
        candidates = masks[i] if masks is not None else felzenszwalb_segments(pictures[i])
        region_map, rank = select(per_pixel[i], candidates, min_pixel_diff, area_threshold)
        maps.append(torch.from_numpy(region_map))
        ranks.append(torch.from_numpy(rank))
    return torch.stack(maps), torch.stack(ranks)


def _check_images(inputs: Any) -> Tensor:
    if not isinstance(inputs, Tensor):
        raise TypeError(f"inputs must be a tensor of images shaped (N, C, H, W); got {type(inputs).__name__}")
    (images,), _ = arguments.normalize_inputs(inputs)
    if images.dim() != 4:
        raise ValueError(
            f"inputs must be a batch of images shaped (N, C, H, W); got a {images.dim()}-d tensor of shape "
            f"{tuple(images.shape)}"
        )
    return images


def _check_area(area_threshold: Any) -> float:
    if not arguments.is_real(area_threshold) or not 0 < float(area_threshold) <= 1:
        raise ValueError(f"area_threshold must be a number in (0, 1], a fraction of the image; got {area_threshold!r}")
    return float(area_threshold)


def _check_base_attribution(base_attribution: Any, images: Tensor) -> Tensor:
    if isinstance(base_attribution, np.ndarray):
        base_attribution = torch.from_numpy(base_attribution)
    if not isinstance(base_attribution, Tensor) or not base_attribution.is_floating_point():
        raise TypeError(
            "base_attribution must be a floating-point tensor or ndarray shaped like inputs; got "
            f"{type(base_attribution).__name__}"
        )
    if tuple(base_attribution.shape) != tuple(images.shape):
        raise ValueError(
            f"base_attribution has shape {tuple(base_attribution.shape)}; it must have the shape of inputs, "
            f"{tuple(images.shape)}"
        )
    return base_attribution.detach()


def _baseline_images(baselines: Any, images: Tensor) -> list[Tensor]:
    """Each baseline as a tensor shaped like ``images``: by default each image's minimum and maximum value."""
    if baselines is None:
        flat = images.detach().reshape(images.shape[0], -1)
        shape = (-1,) + (1,) * (images.dim() - 1)
        return [flat.min(1).values.view(shape).expand_as(images), flat.max(1).values.view(shape).expand_as(images)]
    items = list(baselines) if isinstance(baselines, (list, tuple)) else [baselines]
    if not items:
        raise ValueError("baselines must be None, one baseline, or a non-empty list of baselines")
    out = []
    for i, b in enumerate(items):
        try:
            (start,) = arguments.normalize_baselines(b, (images,), False)
        except (TypeError, ValueError) as error:
            where = f"baselines[{i}]" if isinstance(baselines, (list, tuple)) else "baselines"
            raise type(error)(str(error).replace("baselines", where, 1)) from None
        out.append(start)
    return out


def _check_segments(segments: Any, shape: torch.Size) -> list[list[np.ndarray]] | None:
    """Segments as, per image, a list of flat boolean masks; None when they are to be computed."""
    if segments is None:
        return None
    batch, size = shape[0], tuple(shape[2:])
    if isinstance(segments, (Tensor, np.ndarray)) and not _is_bool(segments):
        labels = segments.detach().cpu().numpy() if isinstance(segments, Tensor) else segments
        if not np.issubdtype(labels.dtype, np.integer) or labels.shape != (batch,) + size:
            raise ValueError(
                f"segments given as a label map must be an integer array shaped (N, H, W) = {(batch,) + size}; got "
                f"dtype {labels.dtype} and shape {tuple(labels.shape)}"
            )
        return [[labels[i] == v for v in np.unique(labels[i])] for i in range(batch)]
    if isinstance(segments, (Tensor, np.ndarray)) and segments.ndim == 4:
        segments = list(segments)  # boolean (N, S, H, W): the same number of masks for every image
    if not isinstance(segments, Sequence) or len(segments) != batch:
        raise ValueError(
            f"segments must be None, an integer (N, H, W) label map, or a list with one entry per image ({batch}), "
            "each a sequence of (H, W) boolean masks or a boolean (S, H, W) array; got "
            f"{type(segments).__name__}{f' of length {len(segments)}' if isinstance(segments, Sequence) else ''}"
        )
    out = []
    for i, masks in enumerate(segments):
        parts = list(masks) if not isinstance(masks, (Tensor, np.ndarray)) or masks.ndim == 3 else None
        if not parts:
            raise ValueError(
                f"segments[{i}] must be a non-empty sequence of (H, W) boolean masks or an (S, H, W) array"
            )
        checked = []
        for j, m in enumerate(parts):
            array = m.detach().cpu().numpy() if isinstance(m, Tensor) else np.asarray(m)
            if array.dtype != np.bool_ or array.shape != size:
                raise ValueError(
                    f"segments[{i}][{j}] must be a boolean mask shaped (H, W) = {size}; got dtype {array.dtype} and "
                    f"shape {array.shape}"
                )
            checked.append(array)
        out.append(checked)
    return out


def _is_bool(value: Tensor | np.ndarray) -> bool:
    return value.dtype == torch.bool if isinstance(value, Tensor) else value.dtype == np.bool_


def _scikit_image():
    try:
        from skimage import morphology, segmentation, transform
    except ImportError as error:
        raise ImportError(
            "XRAI computes Felzenszwalb segments with scikit-image, which is not installed: "
            f"{_EXTRA_HINT}, or pass segments= to XRAI.attribute"
        ) from error
    return morphology, segmentation, transform


def felzenszwalb_segments(image: np.ndarray) -> list[np.ndarray]:
    """XRAI's candidate segments of one ``(H, W, C)`` image: Felzenszwalb segmentations at the scales of
    :data:`FELZENSZWALB_SCALES`, computed at :data:`SEGMENTATION_SIZE` on values rescaled to [-1, 1], brought back
    to the image's size, every segment a boolean mask dilated by a disk of :data:`DILATION_RADIUS`."""
    morphology, segmentation, transform = _scikit_image()
    low, high = float(image.min()), float(image.max())
    # A flat image has no edges to segment along: it is one region.
    if high == low:
        return [np.ones(image.shape[:2], dtype=bool)]
    scaled = (image - low) / (high - low) * 2.0 - 1.0
    scaled = transform.resize(
        scaled, SEGMENTATION_SIZE, order=3, mode="constant", preserve_range=True, anti_aliasing=True
    )
    footprint = morphology.disk(DILATION_RADIUS)
    masks = []
    for scale in FELZENSZWALB_SCALES:
        labels = segmentation.felzenszwalb(
            scaled, scale=scale, sigma=FELZENSZWALB_SIGMA, min_size=FELZENSZWALB_MIN_SIZE
        )
        labels = transform.resize(
            labels, image.shape[:2], order=0, preserve_range=True, mode="constant", anti_aliasing=False
        ).astype(int)
        masks.extend(_dilated(labels == v, footprint, morphology) for v in range(labels.min(), labels.max() + 1))
    return masks


def _dilated(mask: np.ndarray, footprint: np.ndarray, morphology) -> np.ndarray:
    """``mask`` dilated by ``footprint``, computed on the mask's bounding box grown by the footprint's radius:
    dilation reaches no further, and a segment is usually a small part of the image."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    out = np.zeros_like(mask)
    if not len(rows):
        return out
    reach = footprint.shape[0] // 2
    top, left = max(rows[0] - reach, 0), max(cols[0] - reach, 0)
    bottom, right = rows[-1] + reach + 1, cols[-1] + reach + 1
    out[top:bottom, left:right] = morphology.dilation(mask[top:bottom, left:right], footprint=footprint)
    return out


def xrai_full(
    attribution: np.ndarray, masks: list[np.ndarray], min_pixel_diff: int = 50, area_threshold: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """XRAI's greedy selection on one ``(H, W)`` attribution map: the region map and each pixel's region rank.

    A segment's gain is recomputed only when the region grows over it (the gain of a segment the region did not
    touch is unchanged); each gain is the mean of the attribution over exactly the pixels the segment would add.
    """
    values = attribution.ravel()
    flat = np.stack([m.ravel() for m in masks])
    output = np.full(values.shape, -np.inf)
    covered = np.zeros(values.shape, dtype=bool)
    new_pixels = flat.sum(1)
    alive = np.ones(len(masks), dtype=bool)
    stale = np.ones(len(masks), dtype=bool)
    gains = np.full(len(masks), -np.inf)
    trace: list[tuple[np.ndarray, float]] = []
    area = 0.0
    while area <= area_threshold:
        alive &= new_pixels >= min_pixel_diff
        candidates = np.flatnonzero(alive)
        if not len(candidates):
            break
        for k in candidates[stale[candidates]]:
            gains[k] = values[flat[k] & ~covered].mean()
            stale[k] = False
        best = candidates[np.argmax(gains[candidates])]
        added = flat[best] & ~covered
        trace.append((added, gains[best]))
        output[added] = gains[best]
        covered |= flat[best]
        area = covered.mean()
        alive[best] = False
        overlap = flat[:, added].sum(1)
        new_pixels -= overlap
        stale |= overlap > 0
    return _finished(values, output, trace, attribution.shape)


def xrai_fast(
    attribution: np.ndarray, masks: list[np.ndarray], min_pixel_diff: int = 50, area_threshold: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """XRAI's fast variant: segments ranked once by their own mean attribution, then added in that order (each
    setting the pixels it adds to their mean). ``area_threshold`` is not used."""
    values = attribution.ravel()
    flat = [m.ravel() for m in masks]
    own = np.array([values[m].mean() if m.any() else -np.inf for m in flat])
    output = np.full(values.shape, -np.inf)
    covered = np.zeros(values.shape, dtype=bool)
    trace: list[tuple[np.ndarray, float]] = []
    for k in np.argsort(-own, kind="stable"):
        added = flat[k] & ~covered
        if added.sum() < min_pixel_diff:
            continue
        gain = values[added].mean()
        trace.append((added, gain))
        output[added] = gain
        covered |= flat[k]
    return _finished(values, output, trace, attribution.shape)


def _finished(
    values: np.ndarray, output: np.ndarray, trace: list[tuple[np.ndarray, float]], shape: tuple
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels no segment added share their mean attribution (so the map sums to the attribution's sum); ranks
    follow the gains, highest first, the unselected pixels last."""
    rest = output == -np.inf
    if rest.any():
        output[rest] = values[rest].mean()
    ranks = np.zeros(values.shape, dtype=np.int64)
    order = sorted(range(len(trace)), key=lambda j: -trace[j][1])
    for rank, j in enumerate(order, start=1):
        ranks[trace[j][0]] = rank
    if rest.any():
        ranks[rest] = len(trace) + 1
    return output.reshape(shape), ranks.reshape(shape)
