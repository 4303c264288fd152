"""Integrated Gradients on the model inputs (Sundararajan, Taly, Yan 2017)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, overload

import numpy as np
import torch
from torch import Tensor

from .. import arguments
from ..engine import Chunking, PathIntegral, Reduction, RowGradients, Rows, evaluate_rows
from ..paths import StraightLine
from .base import (
    InputConvergenceDelta,
    PathAttribution,
    keeps_model_state,
    output_probe,
    restore_structure,
)

TensorOrTuple = Tensor | tuple[Tensor, ...]


class IntegratedGradients(InputConvergenceDelta, PathAttribution):
    r"""Integrated Gradients: ``A_i = (x_i − x′_i) · ∫_0^1 ∂F(x′ + α (x − x′)) / ∂x_i dα``.

    The integral is approximated by ``Σ_k w_k ∂F(x′ + α_k (x − x′))/∂x_i`` with a quadrature rule from
    :mod:`integrad.rules`. A drop-in replacement for ``captum.attr.IntegratedGradients``: the same arguments and
    results, with the true trapezoid rule, float64 quadrature, memory-budgeted chunking and ``n_steps="auto"``.

    Parameters
    ----------
    forward_func : callable
        Model or function; called as ``forward_func(*inputs, *additional_forward_args)``.
    multiply_by_inputs : bool, default True
        Multiply by ``(x − x′)`` (global attribution). With False the result is the path-averaged gradient.

    References
    ----------
    Sundararajan, Taly, Yan. Axiomatic Attribution for Deep Networks. ICML 2017. https://arxiv.org/abs/1703.01365
    """

    @overload
    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        n_steps: int | str = 50,
        method: str = "gausslegendre",
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
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        n_steps: int | str = 50,
        method: str = "gausslegendre",
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
        baselines=None,
        target=None,
        additional_forward_args=None,
        n_steps=50,
        method="gausslegendre",
        internal_batch_size=None,
        return_convergence_delta=False,
        *,
        memory_budget=None,
        tolerance=1e-3,
    ):
        """Attribute ``forward_func``'s output at ``target`` to each input feature.

        Parameters
        ----------
        inputs : Tensor or tuple of Tensor
            Floating-point tensors whose dim 0 is the batch; the same structure and shapes come back.
        baselines : None, number, Tensor or tuple, optional
            Path start ``x′``: None (zeros), a number, a tensor of the input's shape or with first dim 1 (shared by
            the batch; any dim of size 1 broadcasts), or a tuple mixing these, one per input.
        target : int, tuple, Tensor, list or None
            Output index per example: an int or 0-d tensor for all, a tuple for outputs with more than 2 dims, a
            list or 1-D tensor (one per example), or a list of tuples. None for one scalar per example.
        additional_forward_args : any, optional
            Extra arguments after the inputs. A tensor whose dim 0 is the batch is repeated for every path point;
            anything else is passed unchanged. A non-tuple is one argument.
        n_steps : int or "auto", default 50
            Path points per example. ``"auto"`` chooses them per example until the estimated relative L1 error
            ``|A − A*|₁ / |A*|₁`` is below ``tolerance`` (adaptive Gauss–Kronrod; see ``last_report``).
        method : str, default "gausslegendre"
            ``riemann_left``, ``riemann_right``, ``riemann_middle``, ``riemann_trapezoid`` or ``gausslegendre``.
        internal_batch_size : int, optional
            Rows (path points × examples) per forward pass. Default: chosen from ``memory_budget``.
        return_convergence_delta : bool, default False
            Also return ``Σ attributions − (F(x) − F(x′))`` per example.
        memory_budget : int or str, optional
            Bytes a forward/backward chunk may use, e.g. ``"256MiB"``. Default: a quarter of the free memory of the
            inputs' device, capped where bigger chunks stop being faster.
        tolerance : float, default 1e-3
            Relative L1 error target for ``n_steps="auto"``.

        Returns
        -------
        attributions : Tensor or tuple of Tensor
            Same structure, shapes and dtypes as ``inputs``.
        delta : Tensor
            Only with ``return_convergence_delta=True``: one value per example.

        Notes
        -----
        ``self.last_report`` (:class:`integrad.IntegrationReport`) then holds the steps used per example, the error
        estimate (``"auto"``), the rows evaluated and the delta; calls made from several threads at once each find
        their own report there, in their own thread.
        """
        return_convergence_delta = arguments.check_bool("return_convergence_delta", return_convergence_delta)
        path = self._input_path(
            inputs,
            baselines,
            additional_forward_args,
            n_steps=n_steps,
            method=method,
            internal_batch_size=internal_batch_size,
            memory_budget=memory_budget,
            tolerance=tolerance,
        )
        target_t = arguments.normalize_target(target, path.batch, path.inputs[0].device)
        probe = output_probe(self.forward_func, lambda points, examples: points, target_t, path.args, path.per_example)
        result = self._integrate(
            probe, StraightLine(path.start, path.end), path.settings, need_ends=return_convergence_delta
        )
        attributions = restore_structure(self._finish(result, path.dtypes), path.was_tuple)
        if return_convergence_delta:
            return attributions, result.report.delta
        return attributions

    def _reduce_points(
        self,
        reduction: Callable[..., Reduction],
        inputs: TensorOrTuple,
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        n_steps: int = 50,
        internal_batch_size: int | None = None,
        memory_budget: int | str | None = None,
    ) -> tuple[PathIntegral, bool]:
        """Integrated gradients' points ``x′ + (j/N)(x − x′)``, ``j = 0 … N``, handed to ``reduction`` by the engine
        (the trapezoid rule's ``N + 1`` positions; its weights are not used), as IDGI takes them."""
        n_steps = arguments.check_positive_int("n_steps", n_steps, allow_none=False)
        line = self._input_path(
            inputs,
            baselines,
            additional_forward_args,
            n_steps=n_steps + 1,
            method="riemann_trapezoid",
            internal_batch_size=internal_batch_size,
            memory_budget=memory_budget,
            tolerance=1e-3,
        )
        target_t = arguments.normalize_target(target, line.batch, line.inputs[0].device)
        probe = output_probe(self.forward_func, lambda points, examples: points, target_t, line.args, line.per_example)
        # A factored straight line hands the engine's reduction the raw gradients.
        path = StraightLine(line.start, line.end, factored=True)
        return self._integrate(probe, path, line.settings, need_ends=False, reduction=reduction), line.was_tuple

    def integrand(
        self,
        inputs: TensorOrTuple,
        alphas: Any,
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
    ) -> Tensor:
        """The path integrand ``d/dα F(x′ + α (x − x′)) = Σ_i (x_i − x′_i) ∂F/∂x_i`` at each of ``alphas``.

        Its integral over [0, 1] is ``F(x) − F(x′)``; a quadrature rule sums it with its weights, so plotting it
        against the rule's points shows where a large convergence delta comes from (kinks, steep regions).

        Returns
        -------
        Tensor
            ``(batch, len(alphas))``, float64.
        """
        inputs_t, was_tuple = arguments.normalize_inputs(inputs)
        start = arguments.normalize_baselines(baselines, inputs_t, was_tuple)
        batch = inputs_t[0].shape[0]
        target_t = arguments.normalize_target(target, batch, inputs_t[0].device)
        args, per_example = arguments.normalize_additional_args(additional_forward_args, batch)
        alphas_t = torch.tensor(np.asarray(alphas, dtype=np.float64)).flatten()
        if alphas_t.numel() == 0 or bool(((alphas_t < 0) | (alphas_t > 1)).any()):
            raise ValueError("alphas must be a non-empty sequence of path positions in [0, 1]")
        k = alphas_t.numel()
        path = StraightLine(start, tuple(x.detach() for x in inputs_t))
        probe = output_probe(self.forward_func, lambda points, examples: points, target_t, args, per_example)
        n = batch * k
        rows = Rows(
            torch.arange(batch).repeat(k),
            alphas_t.repeat_interleave(batch),
            torch.ones(n, 1, dtype=torch.float64),
            torch.arange(n),
            n,
        )
        kept = RowGradients(rows, path)
        evaluate_rows(probe, path, rows, kept, Chunking.make(None, None, inputs_t[0].device), keep_values=False)
        velocity = torch.cat([d.reshape(batch, -1) for d in path.velocity], 1).to(kept.gradients.dtype)
        total = (kept.gradients.view(k, batch, -1) * velocity).sum(2)
        return total.double().cpu().T.contiguous()
