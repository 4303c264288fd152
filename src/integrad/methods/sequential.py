"""Sequential Integrated Gradients (Enguehard 2023): one straight path per position of a sequence, along which only
that position moves."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, overload

import torch
from torch import Tensor, nn

from .. import arguments
from ..engine import IntegrationReport
from ..paths import Points, StraightLine
from ..probes import check_layer
from .base import PathAttribution, keeps_model_state, output_probe, restore_structure
from .internal_influence import layer_values, replacing_probe

TensorOrTuple = Tensor | tuple[Tensor, ...]


def check_sequence_dim(sequence_dim: Any, tensors: Points, where: str) -> tuple[list[int], int]:
    """The sequence dimension of each tensor (negative values count from the end) and the sequence's length, the
    same in every tensor."""
    if not arguments.is_int(sequence_dim):
        raise TypeError(
            f"sequence_dim must be an int (the dimension of the sequence's positions); got {sequence_dim!r}"
        )
    dims = []
    for i, t in enumerate(tensors):
        name = f"{where}[{i}]" if len(tensors) > 1 else where
        n = t.dim()
        dim = sequence_dim + n if sequence_dim < 0 else sequence_dim
        if n < 2:
            raise ValueError(
                f"sequence_dim = {sequence_dim} cannot be used: {name} has shape {tuple(t.shape)}, with no dimension "
                "after the batch to hold the sequence"
            )
        if not 1 <= dim < n:
            raise ValueError(
                f"sequence_dim = {sequence_dim} is out of range for {name} of shape {tuple(t.shape)}: it must name a "
                f"dimension after the batch, 1 to {n - 1} (or {-(n - 1)} to -1, counted from the end)"
            )
        dims.append(dim)
    lengths = [t.shape[d] for t, d in zip(tensors, dims)]
    if len(set(lengths)) != 1:
        raise ValueError(
            f"every tensor of {where} must have the same length along sequence_dim = {sequence_dim} (its positions "
            f"move together); got lengths {lengths}"
        )
    return dims, lengths[0]


def _diagonal(length: int, dim: int, ndim: int, device: torch.device) -> Tensor:
    """Boolean mask shaped to broadcast against ``(batch, length, *x.shape[1:])``: True where the line index (dim 1)
    equals the position along the sequence dimension ``dim`` of ``x`` (dim ``dim + 1`` there)."""
    shape = [1, length] + [1] * (ndim - 1)
    shape[dim + 1] = length
    return torch.eye(length, dtype=torch.bool, device=device).view(shape)


def position_lines(start: Points, end: Points, dims: list[int], length: int) -> StraightLine:
    """``batch · length`` straight lines: line ``b·length + i`` runs from ``x_b`` with position ``i`` at its baseline
    to ``x_b``, so that only position ``i`` moves."""
    starts, ends = [], []
    for s, e, dim in zip(start, end, dims):
        rows = (e.shape[0] * length,) + tuple(e.shape[1:])
        at_input = e.unsqueeze(1).expand((e.shape[0], length) + tuple(e.shape[1:]))
        moving = _diagonal(length, dim, e.dim(), e.device)
        starts.append(torch.where(moving, s.unsqueeze(1), at_input).reshape(rows))
        ends.append(at_input.reshape(rows))
    return StraightLine(tuple(starts), tuple(ends))


def keep_positions(attributions: tuple[Tensor, ...], dims: list[int], length: int) -> tuple[Tensor, ...]:
    """Each example's attributions from its ``length`` lines: position ``i`` from line ``i`` (a sum with zeros
    elsewhere, so exact)."""
    out = []
    for a, dim in zip(attributions, dims):
        per_line = a.reshape((a.shape[0] // length, length) + tuple(a.shape[1:]))
        out.append(torch.where(_diagonal(length, dim, a.dim(), a.device), per_line, 0).sum(1))
    return tuple(out)


def per_position(report: IntegrationReport, length: int) -> IntegrationReport:
    """The report's per-line entries (steps, error estimate, delta) laid out ``(batch, positions)``."""
    for name in ("steps", "error_estimate", "delta"):
        value = getattr(report, name)
        if value is not None:
            setattr(report, name, value.reshape(-1, length))
    return report


class SequentialIntegratedGradients(PathAttribution):
    r"""Sequential integrated gradients: integrated gradients of each position of a sequence along its own path.

    For position ``i`` of the sequence axis, the path starts from the input with position ``i`` alone at its baseline,
    ``x^{(i)} = x`` except ``x^{(i)}_{[i]} = x′_{[i]}``, and moves that position to the input while the others stay
    put; the attributions of position ``i`` are those of this path:
    ``A_{[i]} = (x_{[i]} − x′_{[i]}) ⊙ ∫_0^1 ∂F/∂x_{[i]} (x^{(i)} + α (x − x^{(i)})) dα``.
    Completeness holds per position: the attributions of position ``i`` add up to ``F(x) − F(x^{(i)})``.

    All positions' paths of all examples are integrated together, as ``batch · length`` straight lines in one
    chunked evaluation, not one call per position.

    Parameters
    ----------
    forward_func : callable
        Model or function; called as ``forward_func(*inputs, *additional_forward_args)``.
    multiply_by_inputs : bool, default True
        Multiply by ``(x − x′)`` at each position (global attribution); with False, each position's path-averaged
        gradient.

    References
    ----------
    Enguehard. Sequential Integrated Gradients: a simple but effective method for explaining language models.
    Findings of ACL 2023. https://arxiv.org/abs/2305.15853
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
        sequence_dim: int = 1,
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
        sequence_dim: int = 1,
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
        sequence_dim=1,
        memory_budget=None,
        tolerance=1e-3,
    ):
        """Attribute the output at ``target`` to each input feature, position by position.

        Parameters
        ----------
        inputs : Tensor or tuple of Tensor
            Floating-point tensors ``(batch, ...)`` with a sequence axis ``sequence_dim`` of the same length in all;
            position ``i`` of every tensor moves on the same path.
        sequence_dim : int, default 1
            The sequence axis (after the batch; negative values count from the end).
        return_convergence_delta : bool, default False
            Also return, per example and position, ``Σ_{position i} A − (F(x) − F(x^{(i)}))``, shaped
            ``(batch, length)``.

        Notes
        -----
        ``baselines``, ``target``, ``additional_forward_args``, ``n_steps`` (an int or ``"auto"``), ``method``,
        ``internal_batch_size``, ``memory_budget`` and ``tolerance`` are those of
        :meth:`integrad.IntegratedGradients.attribute`; a baseline is used one position at a time.

        Returns
        -------
        attributions : Tensor or tuple of Tensor
            Same structure, shapes and dtypes as ``inputs``.
        delta : Tensor
            Only with ``return_convergence_delta=True``: ``(batch, length)``.
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
        dims, length = check_sequence_dim(sequence_dim, path.inputs, "inputs")
        target_t = arguments.normalize_target(target, path.batch, path.inputs[0].device)
        of_example = output_probe(
            self.forward_func, lambda points, examples: points, target_t, path.args, path.per_example
        )

        def probe(points: tuple[Tensor, ...], lines: Tensor) -> Tensor:
            return of_example(points, torch.div(lines, length, rounding_mode="floor"))

        lines = position_lines(path.start, path.end, dims, length)
        result = self._integrate(probe, lines, path.settings, need_ends=return_convergence_delta)
        attributions = keep_positions(self._finish(result, path.dtypes), dims, length)
        report = per_position(self.last_report, length)
        out = restore_structure(attributions, path.was_tuple)
        return (out, report.delta) if return_convergence_delta else out


class LayerSequentialIntegratedGradients(PathAttribution):
    r"""Sequential integrated gradients in a layer's value, whose sequence axis holds the positions (the embeddings
    of a text model: token ids in, paths in embedding space).

    With ``h = h(x)`` and ``h′ = h(x′)`` the layer's values at the inputs and the baselines, position ``i`` has the
    path from ``h`` with position ``i`` at ``h′_{[i]}`` to ``h``, along which the model runs on the inputs with the
    layer's value replaced by the path's points (as in :class:`integrad.LayerIntegratedGradients`). The attributions
    of position ``i`` are ``(h_{[i]} − h′_{[i]}) ⊙ ∫_0^1 ∂F/∂h_{[i]} dα`` along it, and add up to the change of the
    output along it.

    Parameters
    ----------
    forward_func : callable
        The model or a function of the inputs.
    layer : torch.nn.Module
        The layer whose value holds the sequence (its value may be a tensor or a tuple of tensors with the same
        sequence length).
    device_ids : list of int, optional
        Accepted for compatibility with captum; hooks see the layer wherever it runs.
    multiply_by_inputs : bool, default True
        Multiply by ``h − h′`` at each position.

    References
    ----------
    Enguehard. Sequential Integrated Gradients: a simple but effective method for explaining language models.
    Findings of ACL 2023. https://arxiv.org/abs/2305.15853
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

    @keeps_model_state
    def attribute(
        self,
        inputs: Any,
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        n_steps: int | str = 50,
        method: str = "gausslegendre",
        internal_batch_size: int | None = None,
        return_convergence_delta: bool = False,
        attribute_to_layer_input: bool = False,
        *,
        sequence_dim: int = 1,
        memory_budget: int | str | None = None,
        tolerance: float = 1e-3,
    ) -> Any:
        """Attribute the output at ``target`` to the layer's value, position by position.

        Parameters
        ----------
        inputs : Tensor or tuple of Tensor
            The model's inputs (integer token ids allowed); ``baselines`` are in the same space (pad-token ids).
        sequence_dim : int, default 1
            The sequence axis of the layer's value (after the batch; negative values count from the end).
        attribute_to_layer_input : bool, default False
            Use the layer's input instead of its output.
        return_convergence_delta : bool, default False
            Also return the delta per example and position, ``(batch, length)``.

        Notes
        -----
        The other parameters are those of :meth:`SequentialIntegratedGradients.attribute`.

        Returns
        -------
        attributions : Tensor or tuple of Tensor
            Shaped like the layer's value, in its dtype.
        delta : Tensor
            Only with ``return_convergence_delta=True``: ``(batch, length)``.
        """
        return_convergence_delta = arguments.check_bool("return_convergence_delta", return_convergence_delta)
        use_input = arguments.check_bool("attribute_to_layer_input", attribute_to_layer_input)
        inputs_t, was_tuple = arguments.normalize_inputs(inputs, need_grad=False)
        settings = self._rule_settings(
            n_steps, method, internal_batch_size, memory_budget, tolerance, inputs_t[0].device
        )
        batch = inputs_t[0].shape[0]
        base_t = arguments.normalize_baselines(baselines, inputs_t, was_tuple)
        target_t = arguments.normalize_target(target, batch, inputs_t[0].device)
        args, per_example = arguments.normalize_additional_args(additional_forward_args, batch)

        # The layer's value at the inputs and at the baselines, in one pass stopped once the layer has run.
        both = tuple(torch.cat([x.detach(), b]) for x, b in zip(inputs_t, base_t))
        values, is_tuple = layer_values(
            self.hooked_forward,
            self.layer,
            use_input,
            lambda rows: tuple(t.index_select(0, rows) for t in both),
            torch.arange(batch, device=inputs_t[0].device).repeat(2),
            args,
            per_example,
            settings["chunking"],
        )
        end, start = tuple(v[:batch] for v in values), tuple(v[batch:] for v in values)
        dims, length = check_sequence_dim(sequence_dim, end, "the layer's value")

        def example_of(lines: Tensor) -> Tensor:
            return torch.div(lines, length, rounding_mode="floor")

        probe = replacing_probe(
            self.hooked_forward,
            self.layer,
            use_input,
            is_tuple,
            lambda lines: tuple(x.index_select(0, example_of(lines).to(x.device)) for x in inputs_t),
            example_of,
            target_t,
            args,
            per_example,
        )
        result = self._integrate(
            probe, position_lines(start, end, dims, length), settings, need_ends=return_convergence_delta
        )
        attributions = keep_positions(self._finish(result, [v.dtype for v in end]), dims, length)
        report = per_position(self.last_report, length)
        out = restore_structure(attributions, is_tuple)
        return (out, report.delta) if return_convergence_delta else out
