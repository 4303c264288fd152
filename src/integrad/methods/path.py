"""Integrated gradients along any path, and the gradients-and-outputs primitive the path methods are built on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, overload

import torch
from torch import Tensor

from .. import arguments
from ..engine import Chunking, gradients_at
from ..paths import FunctionPath, Path
from .base import (
    PathAttribution,
    keeps_model_state,
    output_probe,
    restore_structure,
    restore_training_state,
    training_state_saved,
)

TensorOrTuple = Tensor | tuple[Tensor, ...]


class PathIntegratedGradients(PathAttribution):
    r"""Integrated gradients along a path ``γ`` from ``γ(0)`` to ``γ(1)``:
    ``A = ∫_0^1 ∇F(γ(α)) ⊙ γ′(α) dα ≈ Σ_k w_k ∇F(γ(α_k)) ⊙ γ′(α_k)``.

    The attributions add up to ``F(γ(1)) − F(γ(0))`` (completeness) for any path, up to the rule's error. On the
    straight line ``γ(α) = x′ + α (x − x′)`` this is :class:`IntegratedGradients`; any other path (a blur
    scale-space, a path that avoids a saturated region) is given as a function of the position or as a
    :class:`~integrad.paths.Path`.

    Parameters
    ----------
    forward_func : callable
        The model or a function of the inputs; called as ``forward_func(*points, *additional_forward_args)``.

    References
    ----------
    Sundararajan, Taly, Yan. Axiomatic Attribution for Deep Networks. ICML 2017 (path methods, section 2.1).
    Friedman. Paths and consistency in additive cost sharing. Int. J. Game Theory 32, 2004.
    """

    def __init__(self, forward_func: Callable):
        super().__init__(forward_func, multiply_by_inputs=True)

    @overload
    def attribute(
        self,
        inputs: TensorOrTuple,
        path: Any,
        target: Any = None,
        additional_forward_args: Any = None,
        n_steps: int | str = 50,
        method: str = "gausslegendre",
        internal_batch_size: int | None = None,
        memory_budget: int | str | None = None,
        return_convergence_delta: Literal[False] = False,
        *,
        tolerance: float = 1e-3,
    ) -> TensorOrTuple: ...

    @overload
    def attribute(
        self,
        inputs: TensorOrTuple,
        path: Any,
        target: Any = None,
        additional_forward_args: Any = None,
        n_steps: int | str = 50,
        method: str = "gausslegendre",
        internal_batch_size: int | None = None,
        memory_budget: int | str | None = None,
        *,
        return_convergence_delta: Literal[True],
        tolerance: float = 1e-3,
    ) -> tuple[TensorOrTuple, Tensor]: ...

    @keeps_model_state
    def attribute(
        self,
        inputs,
        path,
        target=None,
        additional_forward_args=None,
        n_steps=50,
        method="gausslegendre",
        internal_batch_size=None,
        memory_budget=None,
        return_convergence_delta=False,
        *,
        tolerance=1e-3,
    ):
        """Attribute ``forward_func``'s output at ``target`` along ``path``.

        Parameters
        ----------
        inputs : Tensor or tuple of Tensor
            The attributed inputs: their structure, shapes and dtypes are those of the path's points and of the
            attributions. The path need not end at them.
        path : callable or integrad.paths.Path
            ``path(alphas) -> (points, velocities)``: ``alphas`` is a 1-D float64 tensor of ``K`` positions in
            [0, 1]; ``points`` and ``velocities`` (``dγ/dα``) are shaped ``(K, *x.shape)``, or tuples of those for
            tuple inputs. A callable is taken as a smooth path (``n_steps="auto"`` integrates along it); wrap one
            that is not, e.g. piecewise constant, as ``FunctionPath(fn, inputs, smooth=False)``, which ``"auto"``
            refuses. Or a :class:`~integrad.paths.Path` built on tensors shaped like the inputs: a
            :class:`~integrad.paths.StraightLine`, a :class:`~integrad.paths.FunctionPath` or a
            :class:`~integrad.paths.DiscretePath` (whose points are its rule: ``n_steps`` and ``method`` are not
            used).
        n_steps : int or "auto", default 50
            Points per example; ``"auto"`` chooses them until the estimated relative L1 error is below
            ``tolerance`` (a smooth path only).
        return_convergence_delta : bool, default False
            Also return ``Σ attributions − (F(γ(1)) − F(γ(0)))`` per example.

        Notes
        -----
        ``target``, ``additional_forward_args``, ``method``, ``internal_batch_size``, ``memory_budget`` and
        ``tolerance`` are those of :meth:`IntegratedGradients.attribute`. The path function is called once per
        chunk, on that chunk's positions.
        """
        return_convergence_delta = arguments.check_bool("return_convergence_delta", return_convergence_delta)
        inputs_t, was_tuple = arguments.normalize_inputs(inputs)
        settings = self._rule_settings(
            n_steps, method, internal_batch_size, memory_budget, tolerance, inputs_t[0].device
        )
        line = _as_path(path, inputs_t)
        batch = inputs_t[0].shape[0]
        target_t = arguments.normalize_target(target, batch, inputs_t[0].device)
        args, per_example = arguments.normalize_additional_args(additional_forward_args, batch)
        probe = output_probe(self.forward_func, lambda points, examples: points, target_t, args, per_example)
        result = self._integrate(probe, line, settings, need_ends=return_convergence_delta)
        attributions = restore_structure(self._finish(result, [x.dtype for x in inputs_t]), was_tuple)
        if return_convergence_delta:
            return attributions, result.report.delta
        return attributions


def _as_path(path: Any, inputs: tuple[Tensor, ...]) -> Path:
    if isinstance(path, Path):
        shapes = [tuple(t.shape) for t in path.like]
        if shapes != [tuple(x.shape) for x in inputs]:
            raise ValueError(
                f"path is built on tensors of shapes {shapes}, but the inputs have shapes "
                f"{[tuple(x.shape) for x in inputs]}; build it on tensors shaped like the inputs"
            )
        return path
    if not callable(path):
        raise TypeError(
            "path must be a callable path(alphas) -> (points, velocities) or an integrad.paths.Path; got "
            f"{type(path).__name__}"
        )
    return FunctionPath(path, inputs)


def gradients_and_outputs(
    forward_func: Callable,
    inputs: TensorOrTuple,
    target: Any = None,
    additional_forward_args: Any = None,
    *,
    internal_batch_size: int | None = None,
    memory_budget: int | str | None = None,
) -> tuple[TensorOrTuple, Tensor]:
    """Gradients of ``forward_func``'s output at ``target`` with respect to ``inputs``, and that output, per row.

    The primitive every path method is made of: each row of ``inputs`` is one point, evaluated in chunks that fit
    ``memory_budget`` (or ``internal_batch_size`` rows), with a halving retry on allocation failures. The caller's
    tensors are not modified, and no graph is kept.

    Returns
    -------
    gradients : Tensor or tuple of Tensor
        Shaped like ``inputs``, in the inputs' dtype (float32 at least).
    outputs : Tensor
        ``(N,)`` float64: the selected output of each row.
    """
    inputs_t, was_tuple = arguments.normalize_inputs(inputs)
    batch = inputs_t[0].shape[0]
    device = inputs_t[0].device
    chunking = Chunking.make(
        arguments.check_positive_int("internal_batch_size", internal_batch_size), memory_budget, device
    )
    target_t = arguments.normalize_target(target, batch, device)
    args, per_example = arguments.normalize_additional_args(additional_forward_args, batch)
    probe = output_probe(forward_func, lambda points, examples: points, target_t, args, per_example)
    saved = training_state_saved(forward_func, "forward_func", stacklevel=2)
    try:
        grads, values = gradients_at(probe, tuple(x.detach() for x in inputs_t), torch.arange(batch), chunking)
    finally:
        restore_training_state(saved)
    return restore_structure(tuple(grads), was_tuple), values
