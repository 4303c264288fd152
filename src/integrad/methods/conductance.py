"""Conductance: the flow of the attribution through a layer (Dhamdhere, Sundararajan, Yan 2019), for a whole layer
and for one neuron's breakdown over the input features."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Literal, overload

import numpy as np
import torch
from torch import Tensor, nn

from .. import arguments
from ..paths import StraightLine
from ..probes import NeuronProbe, TargetProbe, check_layer, check_neuron_selector, scoped_hooks
from ..rules import alphas_and_weights
from .base import (
    LayerConvergenceDelta,
    PathAttribution,
    check_grad_kwargs,
    keeps_model_state,
    model_convergence_delta,
    restore_structure,
)
from .internal_influence import layer_gradient_rows, per_example_sum
from .layer import LayerIntegratedGradients

TensorOrTuple = Tensor | tuple[Tensor, ...]


class LayerConductance(LayerConvergenceDelta, PathAttribution):
    r"""Conductance of every unit of a layer: the layer gradient chained with the layer's change along the input path.

    With ``h(α) = h(x′ + α (x − x′))`` the layer's value along the straight input path, the conductance of unit ``j``
    is ``Cond_j = ∫_0^1 ∂F/∂h_j(h(α)) · dh_j/dα dα``, the part of the change of ``F`` along the path that flows
    through unit ``j``. As captum computes it (and with the same results), the rule's ``n_steps + 1`` positions
    ``α_0 < … < α_n`` are taken as points of a discrete path through the layer's values, and
    ``Cond_j ≈ Σ_{k<n} ∂F/∂h_j(h(α_k)) · (h_j(α_{k+1}) − h_j(α_k))``, the rule's weights unused. The conductances of
    a layer every input flows through add up to about ``F(x) − F(x′)``.

    The layer's values at the ``n_steps + 1`` points are computed first, with each forward pass stopped once the
    layer has run; then the model runs on each of the first ``n_steps`` points with the layer's value replaced by its
    value there, and the gradient is taken with respect to the layer alone.

    Parameters
    ----------
    forward_func : callable
        The model or a function of the inputs.
    layer : torch.nn.Module
        The layer whose units are attributed to.
    device_ids : list of int, optional
        Accepted for compatibility with captum; hooks see the layer wherever it runs.

    References
    ----------
    Dhamdhere, Sundararajan, Yan. How Important Is a Neuron? ICLR 2019. https://arxiv.org/abs/1805.12233
    Shrikumar, Su, Kundaje. Computationally Efficient Measures of Internal Neuron Importance. 2018.
    https://arxiv.org/abs/1807.09946
    """

    def __init__(self, forward_func: Callable, layer: nn.Module, device_ids: list[int] | None = None):
        super().__init__(forward_func, multiply_by_inputs=True)
        check_layer(forward_func, layer)
        self.layer = layer
        self.device_ids = device_ids

    @overload
    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        n_steps: int = 50,
        method: str = "gausslegendre",
        internal_batch_size: int | None = None,
        return_convergence_delta: Literal[False] = False,
        attribute_to_layer_input: bool = False,
        grad_kwargs: dict[str, Any] | None = None,
        *,
        memory_budget: int | str | None = None,
    ) -> TensorOrTuple: ...

    @overload
    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        n_steps: int = 50,
        method: str = "gausslegendre",
        internal_batch_size: int | None = None,
        *,
        return_convergence_delta: Literal[True],
        attribute_to_layer_input: bool = False,
        grad_kwargs: dict[str, Any] | None = None,
        memory_budget: int | str | None = None,
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
        attribute_to_layer_input=False,
        grad_kwargs=None,
        *,
        memory_budget=None,
    ):
        """Conductance of each unit of the layer's output (or input) for the output at ``target``.

        Parameters
        ----------
        inputs, baselines, target, additional_forward_args, method, internal_batch_size, memory_budget
            As in :meth:`integrad.IntegratedGradients.attribute`.
        n_steps : int, default 50
            Segments of the discrete path through the layer's values (it has ``n_steps + 1`` points, at the positions
            of ``method`` with ``n_steps + 1`` points).
        return_convergence_delta : bool, default False
            Also return ``Σ conductances − (F(x) − F(x′))`` per example.
        attribute_to_layer_input : bool, default False
            Attribute to the layer's input instead of its output.
        grad_kwargs : dict, optional
            Keyword arguments of ``torch.autograd.grad``, as captum takes them. ``{"create_graph": True}`` keeps the
            graph of the layer gradients, so that the conductances can be differentiated with respect to the
            parameters after the layer (the layer's values along the path are taken without a graph); it needs no
            ``memory_budget``. The other options change nothing.

        Returns
        -------
        attributions : Tensor or tuple of Tensor
            Shaped like the layer's value (a tuple for a layer whose value is a tuple), in its dtype.
        delta : Tensor
            Only with ``return_convergence_delta=True``: one value per example.
        """
        return_convergence_delta = arguments.check_bool("return_convergence_delta", return_convergence_delta)
        use_input = arguments.check_bool("attribute_to_layer_input", attribute_to_layer_input)
        arguments.check_method(method)
        arguments.check_n_steps(n_steps, "riemann_left")
        path = self._input_path(
            inputs,
            baselines,
            additional_forward_args,
            n_steps=n_steps + 1,  # the rule's points
            method=method,
            internal_batch_size=internal_batch_size,
            memory_budget=memory_budget,
            tolerance=1e-3,
        )
        path.settings = self._with_grad_kwargs(path.settings, grad_kwargs, memory_budget)
        target_t = arguments.normalize_target(target, path.batch, path.inputs[0].device)
        alphas, _ = alphas_and_weights(method, n_steps + 1)
        # Every point but the last is a row; each row's velocity is the layer's step to the example's next point.
        grads, values, is_tuple = layer_gradient_rows(self, self.layer, path, target_t, use_input, alphas, ahead=True)
        self.last_report.steps = torch.full((path.batch,), n_steps, dtype=torch.long)
        sums = per_example_sum(grads, np.ones(n_steps), path.batch)
        attributions = tuple(s.to(v.dtype) for s, v in zip(sums, values))
        if return_convergence_delta:
            self.last_report.delta = model_convergence_delta(
                self.forward_func, attributions, path.start, path.inputs, target, additional_forward_args
            )
        out = restore_structure(attributions, is_tuple)
        return (out, self.last_report.delta) if return_convergence_delta else out

    interpolate = staticmethod(LayerIntegratedGradients.interpolate)


class NeuronConductance(PathAttribution):
    r"""Conductance of a neuron ``n`` of a layer, broken down over the input features.

    ``NC_i = (x_i − x′_i) ∫_0^1 ∂F/∂n(γ(α)) · ∂n/∂x_i(γ(α)) dα ≈ (x_i − x′_i) Σ_k w_k ∂F/∂n(γ(α_k)) ∂n/∂x_i(γ(α_k))``
    along the straight path ``γ(α) = x′ + α (x − x′)``: the part of input ``i``'s integrated gradient that flows
    through the neuron. captum's ``NeuronConductance``, with the same arguments and results (``riemann_trapezoid`` is
    the true trapezoid rule, see :mod:`integrad.rules`).

    Each path point runs the whole model once: the probe is ``stop_grad(∂F/∂n) · n``, whose input gradient is the
    integrand; ``∂F/∂n`` is taken within the pass, before the engine's own backward pass. (The output ``F`` is needed,
    so the forward pass cannot stop at the layer as it does for :class:`integrad.NeuronIntegratedGradients`.)

    For a neuron selector given as a tuple with slices, or as a function, ``n`` and ``∂F/∂n`` are the selection
    applied to the layer's value and to its gradient (summed over a slice), as captum defines it; a selector that
    picks one unit gives the conductance proper.

    Parameters
    ----------
    forward_func : callable
        The model or a function of the inputs.
    layer : torch.nn.Module
        The layer holding the neuron.
    device_ids : list of int, optional
        Accepted for compatibility with captum; hooks see the layer wherever it runs.
    multiply_by_inputs : bool, default True
        Multiply by ``(x − x′)``.

    References
    ----------
    Dhamdhere, Sundararajan, Yan. How Important Is a Neuron? ICLR 2019. https://arxiv.org/abs/1805.12233
    """

    def __init__(
        self,
        forward_func: Callable,
        layer: nn.Module,
        device_ids: list[int] | None = None,
        multiply_by_inputs: bool = True,
    ):
        super().__init__(forward_func, multiply_by_inputs)
        check_layer(forward_func, layer)
        self.layer = layer
        self.device_ids = device_ids

    def has_convergence_delta(self) -> bool:
        return False

    @keeps_model_state
    def attribute(
        self,
        inputs: TensorOrTuple,
        neuron_selector: int | tuple | Callable,
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        n_steps: int | str = 50,
        method: str = "riemann_trapezoid",
        internal_batch_size: int | None = None,
        attribute_to_neuron_input: bool = False,
        grad_kwargs: dict[str, Any] | None = None,
        *,
        memory_budget: int | str | None = None,
        tolerance: float = 1e-3,
    ) -> TensorOrTuple:
        """Conductance of the selected neuron for the output at ``target``, per input feature.

        Parameters
        ----------
        neuron_selector : int, tuple of int/slice, or callable
            As in :meth:`integrad.NeuronIntegratedGradients.attribute`.
        attribute_to_neuron_input : bool, default False
            Select the neuron from the layer's input instead of its output.
        n_steps : int or "auto", default 50
            Path points per example; ``"auto"`` chooses them until the estimated relative L1 error is below
            ``tolerance``.
        method : str, default "riemann_trapezoid"
            The rule (captum's default here).
        grad_kwargs : dict, optional
            Keyword arguments of ``torch.autograd.grad``, as captum takes them. ``create_graph=True`` is refused:
            the probe holds ``∂F/∂n`` fixed while the input gradient is taken, so the result has no graph through
            it. The other options change nothing.

        Notes
        -----
        ``inputs``, ``baselines``, ``target``, ``additional_forward_args``, ``internal_batch_size`` and
        ``memory_budget`` are those of :meth:`integrad.IntegratedGradients.attribute`.

        Returns
        -------
        Tensor or tuple of Tensor
            Shaped like ``inputs``, in their dtypes.
        """
        neuron = NeuronProbe(check_neuron_selector(neuron_selector))
        use_input = arguments.check_bool("attribute_to_neuron_input", attribute_to_neuron_input)
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
        if check_grad_kwargs(grad_kwargs).get("create_graph"):
            raise ValueError(
                "grad_kwargs with create_graph=True is not supported by NeuronConductance: its gradients hold "
                "∂F/∂neuron fixed, and the result would have no graph through it; leave create_graph out"
            )
        target_t = arguments.normalize_target(target, path.batch, path.inputs[0].device)
        probe = _conductance_probe(self.hooked_forward, self.layer, use_input, neuron, target_t, path)
        result = self._integrate(probe, StraightLine(path.start, path.end), path.settings, need_ends=False)
        return restore_structure(self._finish(result, path.dtypes), path.was_tuple)


def _conductance_probe(forward_func, layer, use_input, neuron: NeuronProbe, target_t, path):
    """``stop_grad(∂F/∂n) · n`` per row, from one pass of the whole model that keeps the layer's value."""
    select = TargetProbe(target_t)

    def probe(points: tuple[Tensor, ...], examples: Tensor) -> Tensor:
        extra = arguments.select_rows(path.args, path.per_example, examples)
        with _kept(layer, use_input) as kept:
            output = select(forward_func(*points, *extra), examples)
        value = kept[0]
        parts = value if isinstance(value, tuple) else (value,)
        rows = examples.shape[0]
        if not output.requires_grad:
            return torch.zeros_like(output)
        grads = torch.autograd.grad(output.sum(), parts, retain_graph=True, allow_unused=True)
        grads = tuple(torch.zeros_like(p) if g is None else g for p, g in zip(parts, grads))
        through = neuron(grads if isinstance(value, tuple) else grads[0], rows).detach()
        return through * neuron(value, rows)

    return probe


@contextlib.contextmanager
def _kept(layer: nn.Module, use_input: bool) -> Iterator[list]:
    """Keep the layer's value (output, or input with ``use_input``) of one forward pass, in the graph.

    The model goes on with a copy, so that an operation after the layer that writes into its value in place (an
    in-place ReLU) leaves the kept value, and its gradient, intact.
    """
    kept: list = [None]

    def copy(value: Any) -> Any:
        if isinstance(value, Tensor):
            return value.clone()
        return tuple(copy(v) for v in value) if isinstance(value, tuple) else value

    def keep(value: Any) -> Any:
        if kept[0] is None:
            kept[0] = value
        return copy(value)

    def keep_input(module: nn.Module, args: tuple) -> tuple:
        return (keep(args[0]),) if len(args) == 1 else keep(args)

    def keep_output(module: nn.Module, args: tuple, output: Any) -> Any:
        return keep(output)

    with scoped_hooks([layer], [keep_input if use_input else keep_output], use_input):
        yield kept
    if kept[0] is None:
        raise ValueError(
            f"layer {type(layer).__name__} did not run during forward_func, so its neuron cannot be attributed; pass "
            "a module that the forward pass uses"
        )
