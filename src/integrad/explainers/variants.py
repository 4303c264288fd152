"""Explainers for the integrated-gradients variants: Blur IG and Guided IG (each optionally with IDGI), Expected
Gradients, GradientSHAP and XRAI."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from .. import arguments
from ..methods import XRAI as CoreXRAI
from ..methods import BlurIntegratedGradients as CoreBlurIntegratedGradients
from ..methods import ExpectedGradients as CoreExpectedGradients
from ..methods import GradientShap as CoreGradientShap
from ..methods import GuidedIntegratedGradients as CoreGuidedIntegratedGradients
from .base import Extractor, TensorOrTuple
from .core import BaselineExplainer, CoreExplainer
from .resolve import check_core_kwargs, resolve_baselines

__all__ = ["BlurIntegratedGradients", "ExpectedGradients", "GradientShap", "GuidedIntegratedGradients", "XRAI"]

#: The IDGI switch as a tunable: IDGI's reduction, or the method's own.
IDGI_TUNABLE = (bool, {"choices": [False, True]})


class BlurIntegratedGradients(CoreExplainer):
    r"""Blur integrated gradients (Xu et al., 2020) as an :class:`~integrad.explainers.Explainer`: integrated
    gradients along a Gaussian scale-space, from the image blurred with ``σ_max`` to the image, with no baseline.

    Computed by :class:`integrad.BlurIntegratedGradients` on (N, C, H, W) images (or by :class:`integrad.IDGI` over it
    with ``idgi=True``).

    Parameters
    ----------
    model : torch.nn.Module
        Called as ``model(*attributed_inputs, *additional_args)``.
    n_steps : int
        Blur levels of the sum.
    max_sigma : float
        The largest blur's standard deviation, in pixels.
    sqrt : bool
        Space the blur levels as saliency's ``sqrt`` option does.
    n_classes, forward_arg_extractor, additional_forward_arg_extractor
        As for :class:`~integrad.explainers.IntegratedGradients`.
    idgi : bool
        Reduce the points with IDGI's important-direction sum instead of the path integral.
    **core_kwargs
        ``grad_step``, ``method``, ``tolerance``, ``internal_batch_size``, ``memory_budget``: passed to the core's
        ``attribute`` (IDGI takes only the last two).

    References
    ----------
    Xu, Venugopalan, Sundararajan. Attribution in Scale and Space. CVPR 2020.
    """

    ATTRIBUTE_KEYS = ("grad_step", "method", "tolerance", "internal_batch_size", "memory_budget")

    def __init__(
        self,
        model: nn.Module,
        n_steps: int = 100,
        max_sigma: float = 50.0,
        sqrt: bool = False,
        n_classes: int | None = None,
        forward_arg_extractor: Extractor | None = None,
        additional_forward_arg_extractor: Extractor | None = None,
        idgi: bool = False,
        **core_kwargs: Any,
    ) -> None:
        super().__init__(model, forward_arg_extractor, additional_forward_arg_extractor)
        self.n_steps = arguments.check_n_steps(n_steps, allow_auto=True)
        self.max_sigma = arguments.check_positive("max_sigma", max_sigma)
        self.sqrt = arguments.check_bool("sqrt", sqrt)
        accepted = ("internal_batch_size", "memory_budget") if idgi else self.ATTRIBUTE_KEYS
        hint = " (IDGI sums over the blur levels: no rule applies)" if idgi else ""
        self._init_core(n_classes, idgi, check_core_kwargs("BlurIntegratedGradients", core_kwargs, accepted, hint))

    def _build_core(self) -> Any:
        return CoreBlurIntegratedGradients(self.model)

    def _method_arguments(self, forward: TensorOrTuple, tensors: tuple[torch.Tensor, ...], baselines: Any) -> dict:
        if baselines is not None:
            raise ValueError("baselines does not apply to Blur IG: its path starts from the blurred inputs")
        return {"n_steps": self.n_steps, "max_sigma": self.max_sigma, "sqrt": self.sqrt}

    def get_tunables(self, inputs: Any = None) -> dict[str, tuple[type, dict[str, Any]]]:
        """``n_steps`` (20–200 by 20), ``max_sigma`` (5–100 pixels by 5) and ``idgi``."""
        return {
            "n_steps": (int, {"low": 20, "high": 200, "step": 20}),
            "max_sigma": (float, {"low": 5.0, "high": 100.0, "step": 5.0}),
            "idgi": IDGI_TUNABLE,
        }


class GuidedIntegratedGradients(BaselineExplainer):
    r"""Guided integrated gradients (Kapishnikov et al., 2021) as an :class:`~integrad.explainers.Explainer`: a path
    from the baseline to the input that moves the features of smallest gradient first.

    Computed by :class:`integrad.GuidedIntegratedGradients` (or :class:`integrad.IDGI` over it with ``idgi=True``).

    Parameters
    ----------
    model : torch.nn.Module
        Called as ``model(*attributed_inputs, *additional_args)``.
    n_steps : int
        Steps of the path (one gradient evaluation of the batch each).
    fraction : float
        Share of the features moved at each step, in (0, 1].
    max_dist : float
        How far (relative L1) the path may stray from the straight line; 0 gives integrated gradients with the
        left Riemann rule.
    baseline_fn
        As for :class:`~integrad.explainers.IntegratedGradients`.
    n_classes, forward_arg_extractor, additional_forward_arg_extractor
        As for :class:`~integrad.explainers.IntegratedGradients`.
    idgi : bool
        Reduce the path's points with IDGI's important-direction sum.
    **core_kwargs
        ``internal_batch_size``, ``memory_budget``: passed to the core's ``attribute``.

    References
    ----------
    Kapishnikov, Venugopalan, Avci, Wedin, Terry, Bolukbasi. Guided Integrated Gradients: an Adaptive Path Method
    for Removing Noise. CVPR 2021.
    """

    def __init__(
        self,
        model: nn.Module,
        n_steps: int = 200,
        fraction: float = 0.25,
        max_dist: float = 0.02,
        baseline_fn: str | Callable[..., torch.Tensor] | torch.Tensor | float | tuple = "zeros",
        n_classes: int | None = None,
        forward_arg_extractor: Extractor | None = None,
        additional_forward_arg_extractor: Extractor | None = None,
        idgi: bool = False,
        **core_kwargs: Any,
    ) -> None:
        super().__init__(model, forward_arg_extractor, additional_forward_arg_extractor)
        self.n_steps = arguments.check_positive_int("n_steps", n_steps, allow_none=False)
        self.fraction = arguments.check_fraction(fraction)
        self.max_dist = arguments.check_max_dist(max_dist)
        self.baseline_fn = baseline_fn
        self._baseline_fns = resolve_baselines(baseline_fn)
        self._init_core(
            n_classes, idgi, check_core_kwargs("GuidedIntegratedGradients", core_kwargs, self.ATTRIBUTE_KEYS)
        )

    def _build_core(self) -> Any:
        return CoreGuidedIntegratedGradients(self.model)

    def _method_arguments(self, forward: TensorOrTuple, tensors: tuple[torch.Tensor, ...], baselines: Any) -> dict:
        if baselines is None:
            baselines = self._baselines(tensors)
            baselines = baselines if isinstance(forward, tuple) else baselines[0]
        return {"baselines": baselines, "n_steps": self.n_steps, "fraction": self.fraction, "max_dist": self.max_dist}

    def get_tunables(self, inputs: Any = None) -> dict[str, tuple[type, dict[str, Any]]]:
        """``n_steps`` (50–300 by 50), ``fraction`` (0.05–1 by 0.05), ``max_dist`` (0–0.1 by 0.01), the baseline
        with its parameters, and ``idgi``."""
        return {
            "n_steps": (int, {"low": 50, "high": 300, "step": 50}),
            "fraction": (float, {"low": 0.05, "high": 1.0, "step": 0.05}),
            "max_dist": (float, {"low": 0.0, "high": 0.1, "step": 0.01}),
            **self._baseline_tunables(self._input_kinds(inputs)),
            "idgi": IDGI_TUNABLE,
        }

    def current_tunables(self) -> dict[str, Any]:
        point = {"n_steps": self.n_steps, "fraction": self.fraction, "max_dist": self.max_dist, "idgi": self.idgi}
        return {**point, **self._current_baseline()}


class ExpectedGradients(CoreExplainer):
    r"""Expected gradients (Erion et al., 2021) as an :class:`~integrad.explainers.Explainer`: integrated gradients
    averaged over a background set of baselines.

    Computed by :class:`integrad.ExpectedGradients`: sampled (``n_steps=None``: each of ``n_samples`` rows per example
    draws a background row and a position) or deterministic (``n_steps`` points against each background row, or
    against ``n_samples`` drawn rows of a larger background).

    Parameters
    ----------
    model : torch.nn.Module
        Called as ``model(*attributed_inputs, *additional_args)``.
    background : Tensor or tuple of Tensor
        ``(M, ...)`` baselines, shaped like the attributed inputs but for the batch.
    n_samples : int
        Rows per example.
    n_steps : int, "auto" or None
        None samples the positions; an int or ``"auto"`` integrates with a rule.
    seed : int
        Seeds the generator of the draws, so that every call draws the same.
    n_classes, forward_arg_extractor, additional_forward_arg_extractor
        As for :class:`~integrad.explainers.IntegratedGradients`.
    **core_kwargs
        ``method``, ``tolerance``, ``internal_batch_size``, ``memory_budget``, and ``multiply_by_inputs`` for the
        core's constructor.

    References
    ----------
    Erion, Janizek, Sturmfels, Lundberg, Lee. Improving performance of deep learning models with axiomatic
    attribution priors and expected gradients. Nature Machine Intelligence 3, 2021.
    """

    CONSTRUCTOR_KEYS = ("multiply_by_inputs",)
    ATTRIBUTE_KEYS = ("method", "tolerance", "internal_batch_size", "memory_budget")

    def __init__(
        self,
        model: nn.Module,
        background: torch.Tensor | tuple[torch.Tensor, ...],
        n_samples: int = 50,
        n_steps: int | str | None = None,
        seed: int = 0,
        n_classes: int | None = None,
        forward_arg_extractor: Extractor | None = None,
        additional_forward_arg_extractor: Extractor | None = None,
        **core_kwargs: Any,
    ) -> None:
        super().__init__(model, forward_arg_extractor, additional_forward_arg_extractor)
        self.background = background
        self.n_samples = arguments.check_positive_int("n_samples", n_samples, allow_none=False)
        self.n_steps = None if n_steps is None else arguments.check_n_steps(n_steps, allow_auto=True)
        if not arguments.is_int(seed) or seed < 0:
            raise ValueError(f"seed must be a non-negative int; got {seed!r}")
        self.seed = int(seed)
        accepted = self.CONSTRUCTOR_KEYS + self.ATTRIBUTE_KEYS
        self._init_core(n_classes, False, check_core_kwargs("ExpectedGradients", core_kwargs, accepted))

    def _build_core(self) -> Any:
        constructor = {k: v for k, v in self.core_kwargs.items() if k in self.CONSTRUCTOR_KEYS}
        return CoreExpectedGradients(self.model, **constructor)

    def _method_arguments(self, forward: TensorOrTuple, tensors: tuple[torch.Tensor, ...], baselines: Any) -> dict:
        generator = torch.Generator(device=tensors[0].device).manual_seed(self.seed)
        background = self.background if baselines is None else baselines
        return {"baselines": background, "n_samples": self.n_samples, "n_steps": self.n_steps, "generator": generator}

    def get_tunables(self, inputs: Any = None) -> dict[str, tuple[type, dict[str, Any]]]:
        """``n_samples`` (10–200 by 10)."""
        return {"n_samples": (int, {"low": 10, "high": 200, "step": 10})}


class GradientShap(CoreExplainer):
    r"""GradientSHAP (Lundberg and Lee, 2017; captum's form) as an :class:`~integrad.explainers.Explainer`: gradients at
    random points between noisy inputs and baselines drawn from a distribution, times the difference.

    Computed by :class:`integrad.GradientShap`, which draws from the global random generators as captum does.

    Parameters
    ----------
    model : torch.nn.Module
        Called as ``model(*attributed_inputs, *additional_args)``.
    background : Tensor or tuple of Tensor
        ``(M, ...)`` baselines the draws pick from.
    n_samples : int
        Draws per example.
    stdevs : float
        Standard deviation of the Gaussian noise added to the inputs.
    n_classes, forward_arg_extractor, additional_forward_arg_extractor
        As for :class:`~integrad.explainers.IntegratedGradients`.
    **core_kwargs
        ``internal_batch_size``, ``memory_budget``, and ``multiply_by_inputs`` for the core's constructor.

    References
    ----------
    Lundberg, Lee. A Unified Approach to Interpreting Model Predictions. NeurIPS 2017.
    """

    CONSTRUCTOR_KEYS = ("multiply_by_inputs",)

    def __init__(
        self,
        model: nn.Module,
        background: torch.Tensor | tuple[torch.Tensor, ...],
        n_samples: int = 5,
        stdevs: float = 0.0,
        n_classes: int | None = None,
        forward_arg_extractor: Extractor | None = None,
        additional_forward_arg_extractor: Extractor | None = None,
        **core_kwargs: Any,
    ) -> None:
        super().__init__(model, forward_arg_extractor, additional_forward_arg_extractor)
        self.background = background
        self.n_samples = arguments.check_positive_int("n_samples", n_samples, allow_none=False)
        self.stdevs = arguments.check_non_negative("stdevs", stdevs)
        accepted = self.CONSTRUCTOR_KEYS + self.ATTRIBUTE_KEYS
        self._init_core(n_classes, False, check_core_kwargs("GradientShap", core_kwargs, accepted))

    def _build_core(self) -> Any:
        constructor = {k: v for k, v in self.core_kwargs.items() if k in self.CONSTRUCTOR_KEYS}
        return CoreGradientShap(self.model, **constructor)

    def _method_arguments(self, forward: TensorOrTuple, tensors: tuple[torch.Tensor, ...], baselines: Any) -> dict:
        background = self.background if baselines is None else baselines
        return {"baselines": background, "n_samples": self.n_samples, "stdevs": self.stdevs}

    def get_tunables(self, inputs: Any = None) -> dict[str, tuple[type, dict[str, Any]]]:
        """``n_samples`` (5–100 by 5) and ``stdevs`` (0–0.5 by 0.05)."""
        return {
            "n_samples": (int, {"low": 5, "high": 100, "step": 5}),
            "stdevs": (float, {"low": 0.0, "high": 0.5, "step": 0.05}),
        }


class XRAI(BaselineExplainer):
    r"""XRAI (Kapishnikov et al., 2019) as an :class:`~integrad.explainers.Explainer`: image regions ranked by how much
    integrated-gradients attribution they gain per area, over Felzenszwalb segments.

    Computed by :class:`integrad.XRAI` on (N, C, H, W) images (scikit-image computes the segments:
    ``pip install "integrad[xrai]"``). The attribution map is ``(N, 1, H, W)``.

    Parameters
    ----------
    model : torch.nn.Module
        Called as ``model(*attributed_inputs, *additional_args)``.
    n_steps : int
        Points of the integrated-gradients maps.
    baseline_fn : optional
        Baselines of the maps (default: each image's own minimum and maximum, as the paper and saliency take them).
    n_classes, forward_arg_extractor, additional_forward_arg_extractor
        As for :class:`~integrad.explainers.IntegratedGradients`.
    **core_kwargs
        ``method``, ``internal_batch_size``, ``memory_budget``, ``area_threshold``, ``min_pixel_diff``,
        ``algorithm``: passed to the core's ``attribute``.

    References
    ----------
    Kapishnikov, Bolukbasi, Viégas, Terry. XRAI: Better Attributions Through Regions. ICCV 2019.
    """

    ATTRIBUTE_KEYS = ("method", "internal_batch_size", "memory_budget", "area_threshold", "min_pixel_diff", "algorithm")

    def __init__(
        self,
        model: nn.Module,
        n_steps: int = 50,
        baseline_fn: Any = None,
        n_classes: int | None = None,
        forward_arg_extractor: Extractor | None = None,
        additional_forward_arg_extractor: Extractor | None = None,
        **core_kwargs: Any,
    ) -> None:
        super().__init__(model, forward_arg_extractor, additional_forward_arg_extractor)
        self.n_steps = arguments.check_positive_int("n_steps", n_steps, allow_none=False)
        self.baseline_fn = baseline_fn
        self._baseline_fns = None if baseline_fn is None else resolve_baselines(baseline_fn)
        self._init_core(n_classes, False, check_core_kwargs("XRAI", core_kwargs, self.ATTRIBUTE_KEYS))

    def _build_core(self) -> Any:
        return CoreXRAI(self.model)

    def _method_arguments(self, forward: TensorOrTuple, tensors: tuple[torch.Tensor, ...], baselines: Any) -> dict:
        if baselines is None and self._baseline_fns is not None:
            baselines = self._baselines(tensors)
            baselines = baselines if isinstance(forward, tuple) else baselines[0]
        return {"baselines": baselines, "n_steps": self.n_steps}

    def get_tunables(self, inputs: Any = None) -> dict[str, tuple[type, dict[str, Any]]]:
        """``n_steps`` (10–100 by 10)."""
        return {"n_steps": (int, {"low": 10, "high": 100, "step": 10})}

    def current_tunables(self) -> dict[str, Any]:
        return {"n_steps": self.n_steps}
