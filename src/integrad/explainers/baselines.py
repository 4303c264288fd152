"""Baselines for integrated gradients: functions ``fn(inputs, **params) -> baseline``.

Integrated gradients explains ``F(x) − F(x′)``, so the baseline ``x′`` decides which question an attribution
answers. Each function here builds ``x′`` from the batch being explained; it returns a tensor with the shape, dtype
and device of ``inputs`` and never modifies ``inputs``. Each function carries ``TUNABLES``, the search space of its
own parameters in the format of :meth:`integrad.explainers.Explainer.get_tunables`, and ``KINDS``, the input kinds it
fits (see :func:`input_kind`).

======================  =====================================================================================
name                    baseline
======================  =====================================================================================
``zeros``               all zeros (token id 0 for integer inputs)
``mean``                the mean, per example and channel over the spatial dims of 4-D images, otherwise
                        per position/feature over the batch
``invert``              ``max + min − x`` with max and min taken over the same dims as ``mean``
``gaussian_blur``       the input blurred by a separable Gaussian (reflect padding), for 3-D and 4-D inputs
``uniform``             uniform noise in ``[low, high]``, deterministic given ``seed``
``gaussian``            the input plus Gaussian noise of standard deviation ``std``, deterministic given ``seed``
``token``               a constant token id (e.g. a tokenizer's pad or mask id) for integer inputs
======================  =====================================================================================

References
----------
Sundararajan, Taly, Yan. Axiomatic Attribution for Deep Networks. ICML 2017.
Sturmfels, Lundberg, Lee. Visualizing the Impact of Feature Attribution Baselines. Distill, 2020.
Fong, Vedaldi. Interpretable Explanations of Black Boxes by Meaningful Perturbation. ICCV 2017 (blur baselines).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "BASELINES",
    "BaselineFunction",
    "ConfiguredBaseline",
    "baselines_for",
    "gaussian",
    "gaussian_blur",
    "gaussian_kernel1d",
    "get_baseline_fn",
    "input_kind",
    "invert",
    "mean",
    "token",
    "uniform",
    "zeros",
]

BaselineFunction = Callable[..., torch.Tensor]

#: Input kinds, from :func:`input_kind`.
KINDS = ("token", "image", "sequence", "tabular", "other")
_FLOAT_KINDS = ("image", "sequence", "tabular", "other")

#: Registry of built-in baselines by name.
BASELINES: dict[str, BaselineFunction] = {}


def _baseline(kinds: tuple[str, ...], tunables: dict[str, Any] | None = None):
    """Register a built-in baseline under its name, with the input ``KINDS`` it fits and its ``TUNABLES``."""

    def register(fn: BaselineFunction) -> BaselineFunction:
        fn.TUNABLES = tunables or {}
        fn.KINDS = kinds
        BASELINES[fn.__name__] = fn
        return fn

    return register


def input_kind(inputs: torch.Tensor) -> str:
    """Classify an attributed tensor: which baselines fit it.

    Returns ``"token"`` for integer or boolean tensors (ids fed to an embedding), ``"image"`` for 4-D floating
    tensors ``(N, C, H, W)``, ``"sequence"`` for 3-D ``(N, L, D)`` or ``(N, C, L)``, ``"tabular"`` for 2-D
    ``(N, F)`` and ``"other"`` for the rest.
    """
    if not torch.is_tensor(inputs):
        raise TypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
    if not (inputs.is_floating_point() or inputs.is_complex()):
        return "token"
    return {4: "image", 3: "sequence", 2: "tabular"}.get(inputs.dim(), "other")


def _require_float(inputs: torch.Tensor, name: str) -> None:
    if not torch.is_tensor(inputs):
        raise TypeError(f"baseline '{name}' expects a torch.Tensor, got {type(inputs).__name__}")
    if not inputs.is_floating_point():
        raise TypeError(
            f"baseline '{name}' needs floating-point inputs, got dtype {inputs.dtype}; "
            "for token ids use the 'token' or 'zeros' baseline"
        )


def _statistic_dims(inputs: torch.Tensor) -> tuple[int, ...]:
    # Images: a statistic of each example's own channel (its mean colour), so the baseline keeps no spatial
    # structure. Other layouts have no spatial axes to pool, so the statistic is taken across the batch, one value
    # per position/feature.
    if inputs.dim() == 4:
        return (2, 3)
    return (0,)


# ---------------------------------------------------------------------------------------------------- baselines


@_baseline(KINDS)
def zeros(inputs: torch.Tensor) -> torch.Tensor:
    """All-zero baseline, ``x′ = 0`` (the original choice of Sundararajan et al.).

    For integer inputs this is token id 0, which is the pad id of BERT-style vocabularies.

    Parameters
    ----------
    inputs : torch.Tensor
        The attributed batch.

    Returns
    -------
    torch.Tensor
        Zeros like ``inputs``.
    """
    if not torch.is_tensor(inputs):
        raise TypeError(f"baseline 'zeros' expects a torch.Tensor, got {type(inputs).__name__}")
    return torch.zeros_like(inputs)


@_baseline(_FLOAT_KINDS)
def mean(inputs: torch.Tensor) -> torch.Tensor:
    """Mean baseline.

    For 4-D images ``(N, C, H, W)`` each example's baseline is a constant image holding that example's mean per
    channel, ``x′[n, c] = mean_{h,w} x[n, c, h, w]``. For any other layout the baseline is the batch mean per
    position/feature, ``x′[n, ...] = mean_m x[m, ...]``, the same for every example; a batch of one example then
    equals its baseline and receives zero attribution.

    Parameters
    ----------
    inputs : torch.Tensor
        The attributed batch, floating point.

    Returns
    -------
    torch.Tensor
        The baseline, shaped like ``inputs``.
    """
    _require_float(inputs, "mean")
    return inputs.mean(dim=_statistic_dims(inputs), keepdim=True).expand_as(inputs).clone()


@_baseline(_FLOAT_KINDS)
def invert(inputs: torch.Tensor) -> torch.Tensor:
    """Inverted baseline, ``x′ = max + min − x``.

    Max and min are taken per channel over the spatial dims of each example for 4-D images, and per
    position/feature over the batch otherwise (the dims of :func:`mean`). The map is an involution: inverting the
    baseline gives back ``inputs``, because ``max + min − x`` has the same max and min as ``x``.

    Parameters
    ----------
    inputs : torch.Tensor
        The attributed batch, floating point.

    Returns
    -------
    torch.Tensor
        ``max + min − inputs``.
    """
    _require_float(inputs, "invert")
    dims = _statistic_dims(inputs)
    return inputs.amax(dim=dims, keepdim=True) + inputs.amin(dim=dims, keepdim=True) - inputs


def gaussian_kernel1d(
    kernel_size: int, sigma: float, dtype: torch.dtype = torch.float32, device: torch.device | None = None
) -> torch.Tensor:
    """Sampled 1-D Gaussian ``exp(−t² / 2σ²)`` at ``t = −(k−1)/2 … (k−1)/2``, normalised to sum to one.

    Parameters
    ----------
    kernel_size : int
        Odd number of taps ``k ≥ 1``.
    sigma : float
        Standard deviation in pixels, positive.
    dtype, device
        Of the returned kernel.

    Returns
    -------
    torch.Tensor
        Shape ``(kernel_size,)``.
    """
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be an odd positive int, got {kernel_size!r}")
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a positive finite number, got {sigma!r}")
    t = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
    kernel = torch.exp(-(t**2) / (2.0 * float(sigma) ** 2))
    return (kernel / kernel.sum()).to(dtype=dtype, device=device)


@_baseline(("image",), {"sigma": (float, {"low": 0.5, "high": 4.0})})
def gaussian_blur(inputs: torch.Tensor, kernel_size: int | None = None, sigma: float = 1.0) -> torch.Tensor:
    """Blurred-input baseline: the input convolved with a Gaussian over its last two dims.

    The blur is separable (a ``(k, 1)`` then a ``(1, k)`` depthwise convolution) with reflect padding, so the
    baseline has the input's shape and a constant image is its own blur. Accepts 4-D ``(N, C, H, W)`` and 3-D
    ``(N, H, W)`` tensors.

    Parameters
    ----------
    inputs : torch.Tensor
        The attributed batch, floating point, 3-D or 4-D.
    kernel_size : int, optional
        Odd number of taps; default ``2·ceil(3σ) + 1``. Reflect padding needs ``k ≤ 2·min(H, W) − 1``, so larger
        kernels are reduced to the largest odd size that fits.
    sigma : float
        Standard deviation of the Gaussian in pixels.

    Returns
    -------
    torch.Tensor
        The blurred batch.
    """
    _require_float(inputs, "gaussian_blur")
    if inputs.dim() not in (3, 4):
        raise ValueError(
            "baseline 'gaussian_blur' accepts 3-D (N, H, W) or 4-D (N, C, H, W) inputs, "
            f"got shape {tuple(inputs.shape)}"
        )
    if kernel_size is None:
        if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma must be a positive finite number, got {sigma!r}")
        kernel_size = 2 * math.ceil(3 * float(sigma)) + 1
    height, width = inputs.shape[-2:]
    largest = 2 * min(height, width) - 1
    if isinstance(kernel_size, int) and not isinstance(kernel_size, bool) and kernel_size > largest:
        kernel_size = largest
    kernel = gaussian_kernel1d(kernel_size, sigma, dtype=inputs.dtype, device=inputs.device)
    images = inputs if inputs.dim() == 4 else inputs.unsqueeze(1)
    channels = images.shape[1]
    pad = kernel_size // 2
    vertical = kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    horizontal = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    with torch.no_grad():
        blurred = F.conv2d(F.pad(images, (0, 0, pad, pad), mode="reflect"), vertical, groups=channels)
        blurred = F.conv2d(F.pad(blurred, (pad, pad, 0, 0), mode="reflect"), horizontal, groups=channels)
    return blurred if inputs.dim() == 4 else blurred.squeeze(1)


def _generator(seed: int) -> torch.Generator:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    # A private CPU generator keeps the draw independent of the global RNG and of the device.
    return torch.Generator(device="cpu").manual_seed(seed)


@_baseline(_FLOAT_KINDS)
def uniform(inputs: torch.Tensor, low: float | None = None, high: float | None = None, seed: int = 0) -> torch.Tensor:
    """Uniform-noise baseline, ``x′ ~ U(low, high)`` elementwise, independent of the input values.

    Parameters
    ----------
    inputs : torch.Tensor
        The attributed batch, floating point; gives shape, dtype and device.
    low, high : float, optional
        Range of the noise; default the batch's minimum and maximum (the observed valid range).
    seed : int
        Seed of a private generator: the same seed gives the same baseline, and the global RNG is untouched.

    Returns
    -------
    torch.Tensor
        The baseline, shaped like ``inputs``.
    """
    _require_float(inputs, "uniform")
    low = float(inputs.min()) if low is None else float(low)
    high = float(inputs.max()) if high is None else float(high)
    if not high >= low:
        raise ValueError(f"uniform baseline needs low <= high, got low={low}, high={high}")
    draw = torch.rand(inputs.shape, generator=_generator(seed), dtype=torch.float64)
    return (low + (high - low) * draw).to(dtype=inputs.dtype, device=inputs.device)


@_baseline(_FLOAT_KINDS, {"std": (float, {"low": 0.01, "high": 1.0, "log": True})})
def gaussian(inputs: torch.Tensor, std: float = 0.1, seed: int = 0) -> torch.Tensor:
    """Gaussian baseline, ``x′ = x + ε`` with ``ε ~ N(0, std²)`` elementwise (Sturmfels et al., 2020).

    Parameters
    ----------
    inputs : torch.Tensor
        The attributed batch, floating point.
    std : float
        Standard deviation of the noise, in the units of ``inputs``; non-negative.
    seed : int
        Seed of a private generator: the same seed gives the same baseline, and the global RNG is untouched.

    Returns
    -------
    torch.Tensor
        ``inputs`` plus the noise.
    """
    _require_float(inputs, "gaussian")
    if not (isinstance(std, (int, float)) and math.isfinite(std) and std >= 0):
        raise ValueError(f"std must be a non-negative finite number, got {std!r}")
    noise = torch.randn(inputs.shape, generator=_generator(seed), dtype=torch.float64)
    return inputs.detach() + (float(std) * noise).to(dtype=inputs.dtype, device=inputs.device)


@_baseline(("token",))
def token(
    inputs: torch.Tensor | int, token_id: int = 0, keep_ids: Sequence[int] = ()
) -> torch.Tensor | ConfiguredBaseline:
    """Constant-token baseline for integer token ids, ``x′ = token_id`` at every position.

    Use the tokenizer's pad or mask id. Positions holding one of ``keep_ids`` (e.g. the ``[CLS]`` and ``[SEP]``
    ids) keep their token, so the baseline differs from the input only where words are.

    ``token(103)`` — an int in place of the batch — returns the configured baseline
    ``get_baseline_fn("token", token_id=103)``.

    Parameters
    ----------
    inputs : torch.Tensor or int
        Integer token ids ``(N, L)``; or a token id, to configure the baseline.
    token_id : int
        The id filled in.
    keep_ids : sequence of int
        Ids left unchanged.

    Returns
    -------
    torch.Tensor or ConfiguredBaseline
        The baseline ids; or, given an int, the configured baseline function.
    """
    if isinstance(inputs, int) and not isinstance(inputs, bool):
        return ConfiguredBaseline(
            token, {"token_id": inputs, "keep_ids": tuple(keep_ids)} if keep_ids else {"token_id": inputs}
        )
    if not torch.is_tensor(inputs):
        raise TypeError(
            f"baseline 'token' expects a tensor of token ids or an int token id, got {type(inputs).__name__}"
        )
    if inputs.is_floating_point() or inputs.is_complex():
        raise TypeError(
            f"baseline 'token' needs integer token ids, got dtype {inputs.dtype}; "
            "for floating-point inputs use e.g. 'zeros' or 'mean'"
        )
    if isinstance(token_id, bool) or not isinstance(token_id, int):
        raise TypeError(f"token_id must be an int, got {token_id!r}")
    baseline = torch.full_like(inputs, token_id)
    if len(keep_ids):
        keep = torch.isin(inputs, torch.as_tensor(list(keep_ids), dtype=inputs.dtype, device=inputs.device))
        baseline = torch.where(keep, inputs, baseline)
    return baseline


# ------------------------------------------------------------------------------------------------ configuration


class ConfiguredBaseline:
    """A baseline function with fixed parameters: ``ConfiguredBaseline(fn, params)(inputs) == fn(inputs, **params)``.

    Returned by :func:`get_baseline_fn` and by ``token(<id>)``. Two configured baselines are equal when they wrap
    the same function with the same parameters, and ``repr`` shows both, e.g. ``gaussian_blur(sigma=2.0)``.

    Parameters
    ----------
    fn : callable
        ``fn(inputs, **params) -> Tensor``.
    params : dict
        Keyword arguments bound to ``fn``.
    """

    def __init__(self, fn: BaselineFunction, params: dict[str, Any] | None = None):
        self.fn = fn
        self.params = dict(params or {})
        self.name = _name_of(fn)
        self.TUNABLES = getattr(fn, "TUNABLES", {})
        self.KINDS = getattr(fn, "KINDS", KINDS)

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.fn(inputs, **self.params)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ConfiguredBaseline):
            return NotImplemented
        return self.fn is other.fn and self.params == other.params

    def __hash__(self) -> int:
        return hash((id(self.fn), tuple(sorted((k, repr(v)) for k, v in self.params.items()))))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{self.name}({args})"


def configured_params(baseline: ConfiguredBaseline) -> dict[str, Any]:
    """The parameters a configured baseline runs with: the bound ones, and for each of its ``TUNABLES`` that is not
    bound, the function's default (``{"sigma": 1.0}`` for plain ``gaussian_blur``)."""
    params = dict(baseline.params)
    try:
        signature = inspect.signature(baseline.fn).parameters
    except (TypeError, ValueError):
        return params
    for name in baseline.TUNABLES:
        parameter = signature.get(name)
        if name not in params and parameter is not None and parameter.default is not parameter.empty:
            params[name] = parameter.default
    return params


def _name_of(fn: Any) -> str:
    if isinstance(fn, ConfiguredBaseline):
        return fn.name
    for name, registered in BASELINES.items():
        if fn is registered:
            return name
    return getattr(fn, "__name__", type(fn).__name__)


def _check_params(fn: BaselineFunction, params: dict[str, Any], label: str) -> None:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: let the call itself complain
        return
    parameters = list(signature.parameters.values())[1:]  # the first is the batch
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return
    accepted = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise TypeError(
            f"baseline '{label}' got unknown parameter(s) {unknown}; it accepts {accepted if accepted else 'none'}"
        )


def get_baseline_fn(name_or_callable: str | BaselineFunction, **params: Any) -> BaselineFunction:
    """Resolve a baseline by name or callable, optionally binding its parameters.

    Parameters
    ----------
    name_or_callable : str or callable
        A name from :data:`BASELINES` (``zeros``, ``mean``, ``invert``, ``gaussian_blur``, ``uniform``,
        ``gaussian``, ``token``), or a callable ``fn(inputs, **params) -> Tensor``.
    **params
        Parameters of the baseline, e.g. ``get_baseline_fn("token", token_id=103)`` or
        ``get_baseline_fn("gaussian_blur", sigma=2.0)``.

    Returns
    -------
    callable
        ``fn(inputs) -> Tensor``: a :class:`ConfiguredBaseline` for names and for callables with ``params``, the
        callable itself otherwise.

    Raises
    ------
    ValueError
        Unknown name (the message lists the accepted names).
    TypeError
        Neither a string nor a callable, or a parameter the baseline does not accept.
    """
    if isinstance(name_or_callable, str):
        key = name_or_callable.strip().lower()
        if key not in BASELINES:
            raise ValueError(
                f"unknown baseline_fn {name_or_callable!r}; accepted names are {sorted(BASELINES)} "
                "or a callable fn(inputs) -> Tensor"
            )
        fn = BASELINES[key]
        _check_params(fn, params, key)
        return ConfiguredBaseline(fn, params)
    if isinstance(name_or_callable, ConfiguredBaseline):
        if not params:
            return name_or_callable
        merged = {**name_or_callable.params, **params}
        _check_params(name_or_callable.fn, merged, name_or_callable.name)
        return ConfiguredBaseline(name_or_callable.fn, merged)
    if callable(name_or_callable):
        if not params:
            return name_or_callable
        _check_params(name_or_callable, params, _name_of(name_or_callable))
        return ConfiguredBaseline(name_or_callable, params)
    raise TypeError(
        f"baseline_fn must be a name from {sorted(BASELINES)} or a callable fn(inputs) -> Tensor, "
        f"got {type(name_or_callable).__name__}"
    )


def baselines_for(kind: str) -> tuple[str, ...]:
    """Names of the built-in baselines that fit an input kind from :func:`input_kind`.

    Token ids get ``zeros`` and ``token``; images get every floating-point baseline including ``gaussian_blur``;
    other floating-point layouts get all but ``gaussian_blur``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return tuple(name for name, fn in BASELINES.items() if kind in fn.KINDS)
