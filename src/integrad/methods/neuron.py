"""Neuron Integrated Gradients: IG of one neuron (or region) of a layer, with the forward stopped at that layer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from .. import arguments
from ..paths import StraightLine
from ..probes import NeuronProbe, check_layer, check_neuron_selector, run_until
from .base import PathAttribution, keeps_model_state, restore_structure


class NeuronIntegratedGradients(PathAttribution):
    r"""Integrated gradients of a neuron ``n(x)`` of ``layer``: ``A_i = (x_i − x′_i) ∫_0^1 ∂n(x′ + α(x − x′))/∂x_i dα``.

    A neuron's value depends only on the model up to its layer, so every forward pass is stopped as soon as the
    layer has produced its output (or received its input), and the rest of the model never runs. captum's
    ``NeuronIntegratedGradients`` runs the whole model; the attributions are the same. A layer that runs several
    times in one forward pass (a shared module, a recurrent cell) has its neuron taken at its first call, where the
    pass stops; captum takes it at the last call.

    Parameters
    ----------
    forward_func : callable
        The model or a function of the inputs.
    layer : torch.nn.Module
        The layer holding the neuron.
    device_ids : list of int, optional
        Accepted for compatibility with captum, and not used.
    multiply_by_inputs : bool, default True
        Multiply by ``(x − x′)``.
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
        inputs: Tensor | tuple[Tensor, ...],
        neuron_selector: int | tuple | Callable,
        baselines: Any = None,
        additional_forward_args: Any = None,
        n_steps: int | str = 50,
        method: str = "gausslegendre",
        internal_batch_size: int | None = None,
        attribute_to_neuron_input: bool = False,
        *,
        memory_budget: int | str | None = None,
        tolerance: float = 1e-3,
    ) -> Tensor | tuple[Tensor, ...]:
        """Attribute the selected neuron to the inputs.

        Parameters
        ----------
        neuron_selector : int, tuple of int/slice, or callable
            An int for a 2-D layer value; a tuple with one int or slice per dimension after the batch (a slice sums
            the selected neurons); or a callable taking the layer's value and returning one scalar per example.
        attribute_to_neuron_input : bool, default False
            Select the neuron from the layer's input instead of its output.

        Notes
        -----
        Other parameters are those of :meth:`IntegratedGradients.attribute`. Returns attributions shaped like
        ``inputs``.
        """
        selector = NeuronProbe(check_neuron_selector(neuron_selector))
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

        def probe(points: tuple[Tensor, ...], examples: Tensor) -> Tensor:
            extra = arguments.select_rows(path.args, path.per_example, examples)
            value = run_until(self.hooked_forward, [self.layer], use_input, points + extra)[0]
            return selector(value, examples.shape[0])

        result = self._integrate(probe, StraightLine(path.start, path.end), path.settings, need_ends=False)
        return restore_structure(self._finish(result, path.dtypes), path.was_tuple)
