"""The IG integrand along the path, with the quadrature points: the picture that shows why a delta is large.

Along the straight path ``γ(α) = x′ + α (x − x′)`` the integrand is

    g(α) = dF(γ(α))/dα = Σ_i (x_i − x′_i) ∂F/∂x_i (γ(α)),

whose integral over [0, 1] is ``F(x) − F(x′)`` [1]_. A quadrature rule approximates that integral by
``Σ_k w_k g(α_k)``, the sum of the attributions; the convergence delta is the difference. :func:`integrand_profile`
evaluates ``g`` at given positions; :func:`path_integrand` draws it densely together with the rule's nodes, the
quadrature sum and the exact ``F(x) − F(x′)`` from the model's endpoints. Peaks or steps of ``g`` that fall between
the nodes are what makes a delta large.

References
----------
.. [1] M. Sundararajan, A. Taly and Q. Yan, "Axiomatic Attribution for Deep
   Networks", ICML 2017. https://arxiv.org/abs/1703.01365
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .. import rules
from ..arguments import model_output
from ._checks import ArrayLike, as_array, check_finite, check_int
from ._figures import axes_or_new, pyplot

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.axes import Axes

__all__ = ["integrand_profile", "path_integrand"]


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

    ``g(α) = Σ_i (x_i − x′_i) ∂F/∂x_i (x′ + α (x − x′))``; its integral over [0, 1] is ``F(x) − F(x′)``, and an IG
    quadrature rule approximates that integral by ``Σ_k w_k g(α_k)`` (the sum of the attributions) [1]_.

    Parameters
    ----------
    ig : integrad.IntegratedGradients or integrad.explainers.IntegratedGradients
        The core attribution object, whose ``integrand`` method does the work, or an input-space explainer (its
        ``core`` is used).
    inputs : torch.Tensor or tuple of torch.Tensor
        As for the core's ``attribute`` (for an explainer: what its ``forward_arg_extractor`` would return).
    alphas : sequence of float, numpy.ndarray or torch.Tensor
        Path positions, 1-D, each in [0, 1] (0 is the baseline, 1 the input).
    baselines, target, additional_forward_args
        As for the core's ``attribute``. With an explainer and ``baselines=None``, the explainer's ``baseline_fn``
        is applied to ``inputs``, as :func:`path_integrand` does.

    Returns
    -------
    numpy.ndarray
        Float64 array of shape ``(N, K)``: ``g`` for each example at each alpha.

    Raises
    ------
    TypeError
        If ``ig`` has no ``integrand`` method.
    ValueError
        If ``alphas`` is not a non-empty 1-D sequence of numbers in [0, 1].

    References
    ----------
    .. [1] M. Sundararajan, A. Taly and Q. Yan, "Axiomatic Attribution for Deep Networks", ICML 2017.
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
    profile = as_array(values, "integrand")
    if profile.ndim == 1 and profile.shape[0] == grid.shape[0]:
        profile = profile[None, :]
    return profile


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

    The line is ``g(α) = dF/dα`` at ``n_dense`` evenly spaced points of [0, 1]; the markers are ``g`` at the nodes of
    the rule ``integrad.rules.alphas_and_weights(method, n_steps)``, of area proportional to the node's weight. Two
    levels compare the quadrature sum ``Σ_k w_k g(α_k)`` with the exact ``F(x) − F(x′)`` from the model's endpoints,
    also the mean of ``g`` (the path has length 1); their difference is the convergence delta of input-space IG (with
    ``multiply_by_inputs``). Peaks or steps of ``g`` between the nodes are what makes it large.

    Parameters
    ----------
    explainer_or_ig : integrad.IntegratedGradients or integrad.explainers.IntegratedGradients
        An object with ``integrand`` and ``forward_func``, or an input-space explainer (its ``core`` is used).
    inputs : torch.Tensor or tuple of torch.Tensor
        As for the core's ``attribute`` (for an explainer: what its ``forward_arg_extractor`` would return).
    baselines, target, additional_forward_args
        As for the core's ``attribute``; per-example tensors (first dimension ``N``) are cut to the example drawn,
        broadcastable ones used as given. With an explainer and ``baselines=None``, its ``baseline_fn`` is applied
        to the whole batch.
    method, n_steps : str, int
        The rule (a name of ``integrad.rules``, default ``"gausslegendre"``) and its fixed number of nodes (default
        50; ``"auto"`` is not accepted).
    n_dense, example : int
        Points of the dense curve, at least 2 with the endpoints (default 200); the example drawn (default 0).
    ax : matplotlib Axes, optional
        Where to draw; a new figure is created if omitted.

    Returns
    -------
    matplotlib.axes.Axes
        The curve is the line of gid ``"integrand-dense"``, the nodes the collection of gid ``"rule-nodes"``; the
        legend holds the quadrature sum, ``F(x) − F(x′)`` and their difference.

    Raises
    ------
    ValueError
        For a bad ``n_steps``, ``n_dense`` or ``example``, or an output ``target`` does not reduce to one scalar.
    TypeError
        For an ``explainer_or_ig`` without ``integrand``/``forward_func``, or ``inputs`` not tensors.
    """
    core, from_explainer = _resolve_ig(explainer_or_ig)
    n_steps, n_dense = _check_rule_and_curve_sizes(n_steps, n_dense)
    explainer = explainer_or_ig if from_explainer else None
    one = _OneExample.take(inputs, baselines, target, additional_forward_args, example, explainer)
    curve = _IntegrandCurve.evaluate(core, one, method, n_steps, n_dense)
    with axes_or_new(pyplot(), ax, (6.5, 4.0)) as ax:
        _draw_integrand(ax, curve, method, n_steps, one.example)
    return ax


def _check_rule_and_curve_sizes(n_steps: Any, n_dense: Any) -> tuple[int, int]:
    """The number of rule nodes (fixed: ``"auto"`` has no nodes to draw) and of dense points."""
    if isinstance(n_steps, str):
        raise ValueError(f"n_steps must be a positive integer for path_integrand (a fixed rule); got {n_steps!r}")
    return check_int(n_steps, "n_steps", 1), check_int(n_dense, "n_dense", 2)


@dataclass(frozen=True)
class _OneExample:
    """The arguments of ``attribute`` cut down to one example of the batch.

    Only one example is drawn, so only that one is evaluated: the dense grid costs ``n_dense``
    model rows instead of ``N * n_dense``.
    """

    inputs: tuple[torch.Tensor, ...]
    was_tuple: bool
    example: int
    baselines: Any
    target: Any
    additional_forward_args: Any

    @classmethod
    def take(cls, inputs: Any, baselines: Any, target: Any, args: Any, example: Any, explainer: Any) -> _OneExample:
        """Check ``inputs`` and ``example`` and cut the arguments to that example.

        With an ``explainer`` and no ``baselines``, the explainer's baselines are built first, from the whole
        batch: some (``"mean"``) depend on every example.
        """
        tensors, was_tuple = _as_input_tuple(inputs)
        if tensors[0].ndim == 0:
            raise ValueError("inputs must have a leading batch dimension")
        n = int(tensors[0].shape[0])
        example = check_int(example, "example", 0, below=n)
        if baselines is None and explainer is not None:
            baselines = _explainer_baselines(explainer, tensors, was_tuple)
        if isinstance(baselines, tuple):
            one_baselines = tuple(_take_example(b, example, n, ndim=t.ndim) for b, t in zip(baselines, tensors))
        else:
            one_baselines = _take_example(baselines, example, n, ndim=tensors[0].ndim)
        if isinstance(args, tuple):
            one_args: Any = tuple(_take_example(a, example, n) for a in args)
        else:
            one_args = _take_example(args, example, n)
        return cls(
            inputs=tuple(_take_example(t, example, n) for t in tensors),
            was_tuple=was_tuple,
            example=example,
            baselines=one_baselines,
            target=_single_target(target, example, n),
            additional_forward_args=one_args,
        )

    def integrand(self, core: Any, alphas: np.ndarray) -> np.ndarray:
        """``g`` of this example at ``alphas``."""
        return integrand_profile(
            core,
            self.inputs if self.was_tuple else self.inputs[0],
            alphas,
            baselines=self.baselines,
            target=self.target,
            additional_forward_args=self.additional_forward_args,
        )[0]

    def endpoint_difference(self, core: Any) -> float:
        """The exact ``F(x) − F(x′)``, from the model at both ends of the path."""
        extra = _additional_args_tuple(self.additional_forward_args)
        with torch.no_grad():
            # Copies: the slices are views of the caller's tensors, and a model may write into its input.
            point = tuple(t.clone() for t in self.inputs)
            f_input = _target_value(core.forward_func(*point, *extra), self.target, "input")
            start = tuple(t.clone() for t in _baseline_tensors(self.baselines, self.inputs))
            f_baseline = _target_value(core.forward_func(*start, *extra), self.target, "baseline")
        return f_input - f_baseline


@dataclass(frozen=True)
class _IntegrandCurve:
    """``g`` on a dense grid and at the rule's nodes, with the rule's weights and the exact integral."""

    dense_alphas: np.ndarray
    dense_values: np.ndarray
    rule_alphas: np.ndarray
    rule_weights: np.ndarray
    rule_values: np.ndarray
    exact: float

    @property
    def quadrature(self) -> float:
        """The rule's estimate ``Σ_k w_k g(α_k)`` of the integral."""
        return float(np.dot(self.rule_weights, self.rule_values))

    @classmethod
    def evaluate(cls, core: Any, one: _OneExample, method: str, n_steps: int, n_dense: int) -> _IntegrandCurve:
        """``g`` of one example on ``n_dense`` evenly spaced points and at the nodes of the rule."""
        rule_alphas, rule_weights = rules.alphas_and_weights(method, n_steps)
        rule_alphas = np.asarray(rule_alphas, dtype=np.float64)
        dense_alphas = np.linspace(0.0, 1.0, n_dense)
        # One call for both grids: one pass of model evaluations instead of two.
        values = one.integrand(core, np.concatenate([dense_alphas, rule_alphas]))
        return cls(
            dense_alphas=dense_alphas,
            dense_values=values[:n_dense],
            rule_alphas=rule_alphas,
            rule_weights=np.asarray(rule_weights, dtype=np.float64),
            rule_values=values[n_dense:],
            exact=one.endpoint_difference(core),
        )


def _draw_integrand(ax: Axes, curve: _IntegrandCurve, method: str, n_steps: int, example: int) -> None:
    """The dense curve, the nodes sized by weight, and the exact and quadrature levels with their difference."""
    ax.plot(
        curve.dense_alphas,
        curve.dense_values,
        color="C0",
        linewidth=1.5,
        gid="integrand-dense",
        label=f"g(α) = dF/dα ({len(curve.dense_alphas)} points)",
    )
    # Marker area ∝ |weight|: the nodes that count most in the sum are the ones that catch the eye.
    magnitudes = np.abs(curve.rule_weights)
    sizes = 200.0 * magnitudes / magnitudes.max() if magnitudes.max() > 0 else np.full_like(magnitudes, 20.0)
    ax.scatter(
        curve.rule_alphas,
        curve.rule_values,
        s=sizes,
        color="C1",
        edgecolors="black",
        linewidths=0.5,
        zorder=3,
        gid="rule-nodes",
        label=f"{method} nodes, n={n_steps} (area ∝ weight)",
    )
    exact, quadrature = curve.exact, curve.quadrature
    ax.axhline(exact, color="black", linewidth=1.0, gid="exact", label=f"F(x) − F(x′) = {exact:.8g}")
    ax.axhline(
        quadrature, color="C1", linestyle="--", linewidth=1.0, gid="quadrature", label=f"Σ w·g(α) = {quadrature:.8g}"
    )
    # A legend entry without a line: the delta is a number to read, not a level to draw.
    ax.plot([], [], linestyle="none", label=f"delta = {quadrature - exact:.3g}")
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel("α (position along the path from baseline to input)")
    ax.set_ylabel("dF/dα")
    ax.set_title(f"IG integrand, example {example}")
    ax.legend(fontsize="small", loc="best")


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
    return tuple(_baseline_tensor(base, inp) for base, inp in zip(parts, inputs))


def _baseline_tensor(base: Any, inp: torch.Tensor) -> torch.Tensor:
    """One baseline (None, a number or a tensor) at the input's shape, dtype and device."""
    if base is None:
        return torch.zeros_like(inp)
    if isinstance(base, numbers.Real) and not isinstance(base, bool):
        return torch.full_like(inp, float(base))
    if isinstance(base, torch.Tensor):
        try:
            return torch.broadcast_to(base.to(device=inp.device, dtype=inp.dtype), inp.shape)
        except RuntimeError as exc:
            raise ValueError(
                f"baselines of shape {tuple(base.shape)} cannot be broadcast to the input shape {tuple(inp.shape)}"
            ) from exc
    raise TypeError(f"baselines must be None, a number, a tensor, or a tuple of those; got {type(base).__name__}")


def _target_value(output: Any, target: Any, which: str) -> float:
    """The target output of a single-example forward pass, as a float."""
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
    """Path positions as a non-empty 1-D float64 array of finite values in [0, 1]."""
    grid = as_array(alphas, "alphas")
    if grid.ndim != 1 or grid.size == 0:
        raise ValueError(f"alphas must be a non-empty 1-D sequence; got shape {tuple(grid.shape)}")
    check_finite(grid, "alphas")
    if grid.min() < 0.0 or grid.max() > 1.0:
        raise ValueError(
            "alphas must lie in [0, 1] (0 is the baseline, 1 the input); got values from "
            f"{grid.min():g} to {grid.max():g}"
        )
    return grid
