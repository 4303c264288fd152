"""Blur Integrated Gradients (Xu, Venugopalan, Sundararajan 2020): integrated gradients along a blur scale-space."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, overload

import numpy as np
import torch
from torch import Tensor

from .. import arguments
from ..engine import PathIntegral, Reduction
from ..paths import Path, Points
from .base import PathAttribution, keeps_model_state, output_probe, restore_structure

TensorOrTuple = Tensor | tuple[Tensor, ...]

#: Kernel half-widths in standard deviations, as ``scipy.ndimage.gaussian_filter`` truncates them by default.
TRUNCATE = 4.0


def kernel_radius(sigma: float) -> int:
    """Half-width of the truncated Gaussian kernel of standard deviation ``sigma``: ``int(4σ + 0.5)`` taps."""
    return int(TRUNCATE * sigma + 0.5)


def blur_matrices(
    sigmas: Tensor, size: int, derivative: bool = False, radius: int | None = None
) -> tuple[Tensor, Tensor | None]:
    r"""The Gaussian blur of one image axis of length ``size`` as a matrix, one per standard deviation.

    Row ``i`` of the matrix for ``σ`` holds the kernel ``w_j = φ_j / Σ_{|k| ≤ r} φ_k``, ``φ_j = exp(−j² / 2σ²)``,
    centred on pixel ``i`` (``M[i, l] = w_{i−l}`` for ``|i − l| ≤ r``): multiplying an axis by it is a convolution
    with zeros beyond the image, as ``scipy.ndimage.gaussian_filter(mode="constant")`` computes it. Taps that lie
    beyond the image still count in the normaliser. ``σ = 0`` gives the identity.

    Parameters
    ----------
    sigmas : Tensor
        ``(K,)`` standard deviations, at least 0.
    size : int
        Length of the blurred axis.
    derivative : bool
        Also return ``∂M/∂σ = M ⊙ (d² − Σ_j w_j j²) / σ³`` (``d = i − l``) at the same radius.
    radius : int, optional
        Half-width ``r`` of every kernel. Default: scipy's truncation at four standard deviations,
        ``r = int(4σ + 0.5)``, which grows with σ (and is 0, the identity, below σ = 1/8).

    Returns
    -------
    matrices, derivatives : Tensor
        ``(K, size, size)`` float64 each (``derivatives`` is None unless asked for).
    """
    sigmas = sigmas.to(torch.float64)
    radii = torch.floor(TRUNCATE * sigmas + 0.5) if radius is None else torch.full_like(sigmas, float(radius))
    # Below σ = 10⁻³ every tap but the centre is exp(−5·10⁵) = 0 in float64: those kernels are the identity, with a
    # stand-in σ that keeps their (unused) exponents and slopes finite.
    radii = torch.where(sigmas > 1e-3, radii, 0.0)
    safe = torch.where(radii > 0, sigmas, torch.ones_like(sigmas))
    widest = int(radii.max()) if sigmas.numel() else 0
    taps = torch.arange(-widest, widest + 1, dtype=torch.float64, device=sigmas.device)
    inside = taps.abs().unsqueeze(0) <= radii.unsqueeze(1)
    # The exponent as scipy writes it, (−0.5 / σ²) · j², so that both round alike.
    phi = torch.where(inside, torch.exp((-0.5 / (safe * safe)).unsqueeze(1) * taps * taps), 0.0)
    total = phi.sum(1)
    position = torch.arange(size, dtype=torch.float64, device=sigmas.device)
    offsets = position.unsqueeze(1) - position.unsqueeze(0)
    within = offsets.abs().unsqueeze(0) <= radii.view(-1, 1, 1)
    exponent = (-0.5 / (safe * safe)).view(-1, 1, 1) * (offsets * offsets)
    matrices = torch.where(within, torch.exp(exponent), 0.0) / total.view(-1, 1, 1)
    if not derivative:
        return matrices, None
    second_moment = (phi * taps * taps).sum(1) / total
    slope = (offsets * offsets - second_moment.view(-1, 1, 1)) / safe.pow(3).view(-1, 1, 1)
    derivatives = torch.where((radii > 0).view(-1, 1, 1), matrices * slope, 0.0)
    return matrices, derivatives


def gaussian_blur(
    images: Tensor, sigmas: Tensor, derivative: bool = False, radius: int | None = None
) -> tuple[Tensor, Tensor | None]:
    """Blur each row of ``images`` over its last two axes with its own standard deviation.

    Separable: the rows' height axis is multiplied by :func:`blur_matrices` of their σ, then the width axis. Computed
    in the images' dtype (float32 at least).

    Parameters
    ----------
    images : Tensor
        ``(R, ..., H, W)``.
    sigmas : Tensor
        ``(R,)`` standard deviations (float64 for exact kernels).
    derivative : bool
        Also return ``∂ blur / ∂σ`` of every row (the product rule over the two axes).
    radius : int, optional
        Kernel half-width for every σ; default scipy's ``int(4σ + 0.5)``.

    Returns
    -------
    blurred, derivative : Tensor
        Shaped like ``images`` (``derivative`` is None unless asked for).
    """
    dtype = torch.promote_types(images.dtype, torch.float32)
    distinct, which = torch.unique(sigmas.to(device=images.device, dtype=torch.float64), return_inverse=True)
    height, width = images.shape[-2:]
    tall, d_tall = blur_matrices(distinct, height, derivative, radius)
    wide, d_wide = blur_matrices(distinct, width, derivative, radius)

    def per_row(matrices: Tensor) -> Tensor:
        # (R, 1, n, n): one matrix per row, broadcast over the axes between the batch and the image.
        chosen = matrices.to(dtype).index_select(0, which)
        return chosen.view((images.shape[0],) + (1,) * (images.dim() - 3) + chosen.shape[1:])

    x = images.to(dtype)
    rows_h, rows_w = per_row(tall), per_row(wide)
    # The matrices are symmetric: the width axis needs no transpose.
    down = rows_h @ x
    blurred = down @ rows_w
    if not derivative:
        return blurred, None
    return blurred, (per_row(d_tall) @ x) @ rows_w + down @ per_row(d_wide)


def sigma_grid(max_sigma: float, n_steps: int, sqrt: bool) -> np.ndarray:
    """The blur levels ``σ_i`` of a Blur IG sum, ``i = 0 … n_steps``: ``i·σ_max/n`` or, with ``sqrt``,
    ``√(i·σ_max/n)`` (then the blur ends at ``√σ_max``). Formed as Python floats, as the reference implementation
    forms them."""
    levels = [float(i) * max_sigma / float(n_steps) for i in range(n_steps + 1)]
    return np.array([math.sqrt(s) for s in levels] if sqrt else levels, dtype=np.float64)


class GaussianBlurPath(Path):
    r"""``γ_b(α) = blur(x_b, σ(α))`` from the blurred image (``α = 0``) to the image (``α = 1``), with the exact
    velocity ``γ′(α) = σ′(α) ∂ blur / ∂σ``.

    ``σ(α) = (1 − α) σ_max``, or ``√((1 − α) σ_max)`` with ``sqrt``. The blur is :func:`gaussian_blur` of every
    tensor over its last two axes, with the kernel half-width of the path's widest blur, ``r = int(4σ(0) + 0.5)``,
    at every σ.

    Parameters
    ----------
    images : tuple of Tensor
        ``(N, C, H, W)`` tensors: the path's end.
    max_sigma : float
        ``σ_max``.
    sqrt : bool
        Space the blur levels by their squares.

    Notes
    -----
    scipy truncates each kernel at ``int(4σ + 0.5)`` taps, a radius that grows by one wherever ``σ`` crosses
    ``(r + ½) / 4``. A path through those blurs jumps there (by the two new taps, about ``e^{−8}`` of the centre one
    each), and its attributions would add up to ``F(x) − F(γ(0))`` less the model's change across every jump,
    however many points a rule takes: a few parts in 10³ of that difference on small CNNs. With one radius for the
    whole path, γ is smooth in α, the attributions add up to ``F(x) − F(γ(0))`` as the rule converges, and both ends
    are still scipy's blurs (the radius is scipy's at ``σ(0)``; ``σ(1) = 0`` is the image). Between them the blur
    keeps taps beyond 4σ, each below ``e^{−8}`` of the centre tap.
    """

    def __init__(self, images: Points, max_sigma: float, sqrt: bool = False):
        super().__init__(images)
        self.images = images
        self.max_sigma = max_sigma
        self.sqrt = sqrt
        self.radius = kernel_radius(math.sqrt(max_sigma) if sqrt else max_sigma)

    def sigmas(self, alphas: Tensor) -> tuple[Tensor, Tensor]:
        """``σ(α)`` and ``σ′(α)`` in float64."""
        remaining = (1.0 - alphas.to(torch.float64)).clamp(min=0.0)
        if not self.sqrt:
            return remaining * self.max_sigma, torch.full_like(remaining, -self.max_sigma)
        sigma = (remaining * self.max_sigma).sqrt()
        # σ′ is infinite at σ = 0, where ∂ blur / ∂σ vanishes faster (as exp(−1 / 2σ²)): the velocity there is 0.
        return sigma, torch.where(sigma > 0, -self.max_sigma / (2 * sigma.clamp(min=1e-300)), 0.0)

    def at(self, examples: Tensor, alphas: Tensor) -> tuple[Points, Points]:
        sigma, slope = self.sigmas(alphas)
        points, velocities = [], []
        for image in self.images:
            rows = image.index_select(0, examples.to(image.device))
            blurred, change = gaussian_blur(rows, sigma, derivative=True, radius=self.radius)
            scale = slope.to(device=change.device, dtype=change.dtype).view((-1,) + (1,) * (change.dim() - 1))
            points.append(blurred.to(image.dtype))
            velocities.append((change * scale).to(image.dtype))
        return tuple(points), tuple(velocities)


class SigmaGridPath(Path):
    r"""Blur IG's own sum: the blurred images at the levels of :func:`sigma_grid`, with a forward difference for
    the velocity.

    Row ``j = 1 … n`` (position ``j/n``) is the image blurred at ``σ_i``, ``i = n − j``, with the velocity
    ``−(σ_{i+1} − σ_i) · (blur(x, σ_i + h) − blur(x, σ_i)) / h`` and weight 1: the sum
    ``−Σ_{i<n} (σ_{i+1} − σ_i) ∇F(blur(x, σ_i)) ⊙ ∂_h blur(x, σ_i)`` of the paper's reference implementation.
    With ``grad_step=None`` the rows are the levels alone, ``j = 0 … n`` from the most blurred image to the image,
    without velocities (for sums that use each point's gradient and value).

    Parameters
    ----------
    images : tuple of Tensor
        ``(N, C, H, W)`` tensors.
    sigmas : numpy.ndarray
        ``σ_0 = 0 < σ_1 < … < σ_n``.
    grad_step : float or None
        ``h`` of the forward difference; None for the levels without velocities.
    """

    smooth = False

    def __init__(self, images: Points, sigmas: np.ndarray, grad_step: float | None):
        super().__init__(images)
        self.images = images
        self.levels = torch.from_numpy(sigmas)
        self.n = len(sigmas) - 1
        self.grad_step = grad_step
        self.velocity_factored = grad_step is None

    def rule(self) -> tuple[np.ndarray, np.ndarray]:
        first = 0 if self.grad_step is None else 1
        positions = np.arange(first, self.n + 1, dtype=np.float64) / self.n
        return positions, np.ones(len(positions))

    def ends(self) -> tuple[Points, Points]:
        every = torch.arange(self.batch, device=self.device)
        start = self._blurred(every, torch.full((self.batch,), self.n, dtype=torch.long))
        return tuple(s.to(image.dtype) for s, image in zip(start, self.images)), self.images

    def _blurred(self, examples: Tensor, levels: Tensor, shift: float = 0.0) -> Points:
        sigma = self.levels.index_select(0, levels) + shift
        return tuple(gaussian_blur(image.index_select(0, examples.to(image.device)), sigma)[0] for image in self.images)

    def at(self, examples: Tensor, alphas: Tensor) -> tuple[Points, Points | None]:
        # Positions are j/n: the level index comes back exactly by rounding.
        levels = self.n - torch.round(alphas.to(torch.float64).cpu() * self.n).long()
        blurred = self._blurred(examples, levels)
        points = tuple(b.to(image.dtype) for b, image in zip(blurred, self.images))
        if self.grad_step is None:
            return points, None
        h = self.grad_step
        ahead = self._blurred(examples, levels, h)
        spacing = self.levels.index_select(0, (levels + 1).clamp(max=self.n)) - self.levels.index_select(0, levels)
        velocities = []
        for b, a, image in zip(blurred, ahead, self.images):
            scale = (-spacing).to(device=b.device, dtype=b.dtype).view((-1,) + (1,) * (b.dim() - 1))
            velocities.append((scale * ((a - b) / h)).to(image.dtype))
        return points, tuple(velocities)


class BlurIntegratedGradients(PathAttribution):
    r"""Blur Integrated Gradients: integrated gradients from a blurred image to the image, along the blur.

    ``A = ∫_0^1 ∇F(γ(α)) ⊙ γ′(α) dα`` on the path ``γ(α) = blur(x, (1 − α) σ_max)``, a Gaussian blur of the last two
    axes (zero padding, kernels truncated at 4σ as ``scipy.ndimage.gaussian_filter`` truncates them). The
    attributions add up to ``F(x) − F(blur(x, σ_max))`` up to the rule's error (see :class:`GaussianBlurPath` for
    the kernels along the path). Each blur level removes detail finer than about σ, so features are credited at the
    scale where the model notices them, with no baseline image to choose.

    By default (``method=None``) the integral is the paper's own sum: ``n_steps`` levels
    ``σ_i = i σ_max / n`` (or ``√(i σ_max / n)``), each weighted by ``σ_{i+1} − σ_i``, with ``∂ blur / ∂σ`` taken as a
    forward difference over ``grad_step``:
    ``A = −Σ_{i<n} (σ_{i+1} − σ_i) ∇F(blur(x, σ_i)) ⊙ (blur(x, σ_i + h) − blur(x, σ_i)) / h``.
    Any quadrature rule of :mod:`integrad.rules`, or ``n_steps="auto"``, integrates along the path with its exact
    velocity instead.

    Parameters
    ----------
    forward_func : callable
        The model or a function of the images; called as ``forward_func(*images, *additional_forward_args)``.

    References
    ----------
    Xu, Venugopalan, Sundararajan. Attribution in Scale and Space. CVPR 2020. https://arxiv.org/abs/2004.03383
    """

    def __init__(self, forward_func: Callable):
        super().__init__(forward_func, multiply_by_inputs=True)

    @overload
    def attribute(
        self,
        inputs: TensorOrTuple,
        target: Any = None,
        additional_forward_args: Any = None,
        max_sigma: float = 50.0,
        n_steps: int | str = 100,
        grad_step: float = 0.01,
        sqrt: bool = False,
        method: str | None = None,
        internal_batch_size: int | None = None,
        return_convergence_delta: Literal[False] = False,
        *,
        memory_budget: int | str | None = None,
        tolerance: float = 1e-3,
    ) -> TensorOrTuple: ...

    @overload
    def attribute(
        self,
        inputs: TensorOrTuple,
        target: Any = None,
        additional_forward_args: Any = None,
        max_sigma: float = 50.0,
        n_steps: int | str = 100,
        grad_step: float = 0.01,
        sqrt: bool = False,
        method: str | None = None,
        internal_batch_size: int | None = None,
        *,
        return_convergence_delta: Literal[True],
        memory_budget: int | str | None = None,
        tolerance: float = 1e-3,
    ) -> tuple[TensorOrTuple, Tensor]: ...

    @keeps_model_state
    def attribute(
        self,
        inputs,
        target=None,
        additional_forward_args=None,
        max_sigma=50.0,
        n_steps=100,
        grad_step=0.01,
        sqrt=False,
        method=None,
        internal_batch_size=None,
        return_convergence_delta=False,
        *,
        memory_budget=None,
        tolerance=1e-3,
    ):
        """Attribute ``forward_func``'s output at ``target`` to each pixel, along the blur.

        Parameters
        ----------
        inputs : Tensor or tuple of Tensor
            Floating-point images shaped ``(N, C, H, W)``; each is blurred over H and W.
        target, additional_forward_args
            As for :meth:`IntegratedGradients.attribute`.
        max_sigma : float, default 50.0
            Standard deviation (in pixels) of the most blurred image, the path's start.
        n_steps : int or "auto", default 100
            Blur levels (``method=None``) or rule points; ``"auto"`` chooses them per example until the estimated
            relative L1 error is below ``tolerance``, along the exact path.
        grad_step : float, default 0.01
            ``h`` of the forward difference ``∂ blur / ∂σ`` (``method=None`` only).
        sqrt : bool, default False
            Space the blur levels by their squares, ``σ = √(i σ_max / n)``, ending at ``√σ_max``.
        method : str or None, default None
            None for the paper's sum; or a rule of :mod:`integrad.rules` along the exact path.
        internal_batch_size, memory_budget, tolerance
            As for :meth:`IntegratedGradients.attribute`.
        return_convergence_delta : bool, default False
            Also return ``Σ attributions − (F(x) − F(blur(x, σ_max)))`` per example.

        Returns
        -------
        attributions : Tensor or tuple of Tensor
            Same structure, shapes and dtypes as ``inputs``.
        delta : Tensor
            Only with ``return_convergence_delta=True``.
        """
        return_convergence_delta = arguments.check_bool("return_convergence_delta", return_convergence_delta)
        sqrt = arguments.check_bool("sqrt", sqrt)
        grad_step = arguments.check_positive("grad_step", grad_step)
        images, was_tuple, probe, settings = self._prepare(
            inputs,
            target,
            additional_forward_args,
            max_sigma,
            n_steps,
            method,
            internal_batch_size,
            memory_budget,
            tolerance,
        )
        if method is None and settings["n_steps"] != "auto":
            path = SigmaGridPath(images, sigma_grid(float(max_sigma), settings["n_steps"], sqrt), grad_step)
        else:
            path = GaussianBlurPath(images, float(max_sigma), sqrt)
        result = self._integrate(probe, path, settings, need_ends=return_convergence_delta)
        attributions = restore_structure(self._finish(result, [x.dtype for x in images]), was_tuple)
        if return_convergence_delta:
            return attributions, self.last_report.delta
        return attributions

    def _prepare(
        self,
        inputs: Any,
        target: Any,
        additional_forward_args: Any,
        max_sigma: Any,
        n_steps: Any,
        method: Any,
        internal_batch_size: Any,
        memory_budget: Any,
        tolerance: Any,
    ) -> tuple[Points, bool, Callable, dict]:
        """Validated images, the output probe and the rule settings (``method=None`` is the sum of blur levels)."""
        inputs_t, was_tuple = arguments.normalize_inputs(inputs)
        for i, x in enumerate(inputs_t):
            if x.dim() != 4:
                where = f"inputs[{i}]" if was_tuple else "inputs"
                raise ValueError(
                    f"{where} must be images shaped (N, C, H, W), blurred over H and W; got shape {tuple(x.shape)}"
                )
        arguments.check_positive("max_sigma", max_sigma)
        if method is None:
            arguments.check_n_steps(n_steps, "riemann_left", allow_auto=True)
        settings = self._rule_settings(
            n_steps,
            "gausslegendre" if method is None else method,
            internal_batch_size,
            memory_budget,
            tolerance,
            inputs_t[0].device,
        )
        batch = inputs_t[0].shape[0]
        target_t = arguments.normalize_target(target, batch, inputs_t[0].device)
        args, per_example = arguments.normalize_additional_args(additional_forward_args, batch)
        probe = output_probe(self.forward_func, lambda points, examples: points, target_t, args, per_example)
        return tuple(x.detach() for x in inputs_t), was_tuple, probe, settings

    def _reduce_points(
        self,
        reduction: Callable[..., Reduction],
        inputs: TensorOrTuple,
        target: Any = None,
        additional_forward_args: Any = None,
        max_sigma: float = 50.0,
        n_steps: int = 100,
        sqrt: bool = False,
        internal_batch_size: int | None = None,
        memory_budget: int | str | None = None,
    ) -> tuple[PathIntegral, bool]:
        """Hand the gradient and output at every blur level ``σ_n … σ_0`` (most blurred first, ``n_steps + 1``
        points per example, step-major) to ``reduction(rows, path)``; the integral and whether ``inputs`` was a
        tuple come back."""
        sqrt = arguments.check_bool("sqrt", sqrt)
        if n_steps == "auto":
            raise ValueError("n_steps must be an int here: the sum runs over the blur levels of a fixed grid")
        images, was_tuple, probe, settings = self._prepare(
            inputs,
            target,
            additional_forward_args,
            max_sigma,
            n_steps,
            None,
            internal_batch_size,
            memory_budget,
            1e-3,
        )
        path = SigmaGridPath(images, sigma_grid(float(max_sigma), settings["n_steps"], sqrt), None)
        return self._integrate(probe, path, settings, need_ends=False, reduction=reduction), was_tuple
