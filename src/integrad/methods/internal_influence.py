"""Internal Influence: the gradient of the output with respect to a layer, integrated along the input path.

The module also holds what the layer methods built on layer gradients share (internal influence, layer conductance,
layer sequential integrated gradients): the layer's value at given model inputs, computed with the forward stopped
once the layer has run; a path whose rows are given points of a layer's value; and the probe that runs the model
with the layer's value replaced by such a point.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .. import arguments
from ..engine import Chunking, Probe, run_chunked
from ..paths import Path, Points, StraightLine
from ..probes import TargetProbe, check_layer, replaced, run_until
from ..rules import alphas_and_weights
from .base import InputPath, PathAttribution, keeps_model_state, restore_structure
from .layer import LayerIntegratedGradients

RowInputs = Callable[[Tensor], tuple]
"""``row_inputs(rows) -> model inputs``: the model's inputs for a LongTensor of row indices."""


class RowPoints(Path):
    """Path rows that lie at given points: row ``r`` is at ``points[r]``.

    Parameters
    ----------
    points : tuple of Tensor
        One tensor per path tensor, one row per path row (more rows than that with ``ahead``).
    ahead : int, optional
        Each row's velocity is the displacement to the point ``ahead`` rows further on, ``points[r + ahead] −
        points[r]`` (the same example one step later when rows run step by step through a batch of ``ahead``
        examples); the last ``ahead`` points are ends only, not rows. Without it rows have no velocity, and the engine
        sums their gradients alone.
    """

    smooth = False

    def __init__(self, points: Points, ahead: int | None = None):
        rows = points[0].shape[0] - (ahead or 0)
        super().__init__(tuple(p[:rows] for p in points))
        self.points = points
        self.ahead = ahead
        self.velocity_factored = ahead is None

    def rule(self) -> tuple[np.ndarray, np.ndarray]:
        """Each row is evaluated once, at its own point, with weight 1."""
        return np.zeros(1), np.ones(1)

    def at(self, examples: Tensor, alphas: Tensor) -> tuple[Points, Points | None]:
        here = tuple(p.index_select(0, examples) for p in self.points)
        if self.ahead is None:
            return here, None
        there = examples + self.ahead
        return here, tuple(p.index_select(0, there) - z for p, z in zip(self.points, here))


def layer_values(
    forward_func: Callable,
    layer: nn.Module,
    use_input: bool,
    row_inputs: RowInputs,
    examples: Tensor,
    args: tuple,
    per_example: tuple[bool, ...],
    chunking: Chunking,
) -> tuple[tuple[Tensor, ...], bool]:
    """The layer's value (its output, or its input with ``use_input``) at the model inputs of every row.

    ``examples[r]`` is row ``r``'s example (it selects per-example arguments). Each forward pass stops once the layer
    has run: nothing after it is needed. Returns the value's tensors, one row per row, and whether the value is a
    tuple.
    """
    device = examples.device

    def run(part: slice) -> tuple[tuple[Tensor, ...], bool]:
        rows = torch.arange(part.start, part.stop, device=device)
        extra = arguments.select_rows(args, per_example, examples[part])
        value = run_until(forward_func, [layer], use_input, tuple(row_inputs(rows)) + extra)[0]
        return (value if isinstance(value, tuple) else (value,)), isinstance(value, tuple)

    with torch.no_grad():
        chunks = run_chunked(run, examples.shape[0], chunking)
    parts = tuple(torch.cat(p) if len(chunks) > 1 else p[0] for p in zip(*(c[0] for c in chunks)))
    if not all(isinstance(p, Tensor) and p.is_floating_point() for p in parts):
        raise TypeError(
            f"layer {type(layer).__name__} produced a value that is not a floating-point tensor or a tuple of them, "
            "so it has no gradient to attribute with"
        )
    return parts, chunks[0][1]


def replacing_probe(
    forward_func: Callable,
    layer: nn.Module,
    use_input: bool,
    is_tuple: bool,
    row_inputs: RowInputs,
    example_of: Callable[[Tensor], Tensor],
    target: Tensor | None,
    args: tuple,
    per_example: tuple[bool, ...],
) -> Probe:
    """Probe of the output at the target, with the model run on each row's inputs and the layer's value replaced by
    the row's path point: its gradient is ``∂F/∂h`` at that point."""
    select = TargetProbe(target)

    def probe(points: tuple[Tensor, ...], rows: Tensor) -> Tensor:
        examples = example_of(rows)
        extra = arguments.select_rows(args, per_example, examples)
        with replaced([layer], [points if is_tuple else points[0]], use_input):
            return select(forward_func(*row_inputs(rows), *extra), examples)

    return probe


def step_inputs(line: StraightLine, alphas: np.ndarray) -> RowInputs:
    """Model inputs of rows laid out step by step: row ``k·B + b`` is example ``b`` at ``alphas[k]`` on ``line``."""
    batch = line.batch
    positions = torch.tensor(np.asarray(alphas), dtype=line.compute, device=line.device)

    def row_inputs(rows: Tensor) -> tuple:
        points, _ = line.at(rows % batch, positions.index_select(0, torch.div(rows, batch, rounding_mode="floor")))
        return points

    return row_inputs


def layer_gradient_rows(
    attribution: PathAttribution,
    layer: nn.Module,
    path: InputPath,
    target: Tensor | None,
    use_input: bool,
    alphas: np.ndarray,
    ahead: bool = False,
) -> tuple[list[Tensor], tuple[Tensor, ...], bool]:
    """``∂F/∂h`` at the layer's value ``h`` of every row ``k·B + b``: example ``b`` at ``alphas[k]`` on the input
    path; with ``ahead``, times the step of ``h`` to the example's next point, for every point but the last.

    The layer's values at all points come first, from passes stopped once the layer has run; each row then runs the
    whole model on its inputs with the layer's value replaced by its own. Returns the rows' gradients, the layer's
    values and whether the layer's value is a tuple.
    """
    batch = path.batch
    row_inputs = step_inputs(StraightLine(path.start, path.end), alphas)
    examples = torch.arange(batch, device=path.inputs[0].device).repeat(len(alphas))
    forward_func, args, per_example = attribution.hooked_forward, path.args, path.per_example
    values, is_tuple = layer_values(
        forward_func, layer, use_input, row_inputs, examples, args, per_example, path.settings["chunking"]
    )
    probe = replacing_probe(
        forward_func, layer, use_input, is_tuple, row_inputs, lambda rows: rows % batch, target, args, per_example
    )
    rows = RowPoints(values, ahead=batch if ahead else None)
    return attribution._integrate(probe, rows, path.settings, need_ends=False).grads, values, is_tuple


def per_example_sum(grads: list[Tensor], weights: np.ndarray, batch: int) -> list[Tensor]:
    """``Σ_k weights[k] · grads[k·B + b]`` for each example ``b``: the rows' gradients, laid out step by step through
    the batch, summed over the steps."""
    out = []
    for g in grads:
        per_step = g.reshape((len(weights), batch) + tuple(g.shape[1:]))
        w = torch.tensor(np.asarray(weights), dtype=g.dtype, device=g.device).view((-1,) + (1,) * (g.dim()))
        out.append((per_step * w).sum(0))
    return out


class InternalInfluence(PathAttribution):
    r"""Internal influence: ``I(h) = ∫_0^1 ∂F/∂h (x′ + α (x − x′)) dα ≈ Σ_k w_k ∂F/∂h(x′ + α_k (x − x′))``.

    The gradient of the output with respect to a layer's value ``h``, integrated along the straight path of the
    inputs (not multiplied by anything): captum's ``InternalInfluence``, with the same arguments and results
    (``riemann_trapezoid`` is the true trapezoid rule, see :mod:`integrad.rules`).

    The layer's value at every path point is computed first, with each forward pass stopped once the layer has run;
    the model then runs on each path point with the layer's value replaced by that value, and the gradient is taken
    with respect to it alone, so no gradient is computed for the inputs.

    Parameters
    ----------
    forward_func : callable
        The model or a function of the inputs.
    layer : torch.nn.Module
        The layer whose value is attributed to.
    device_ids : list of int, optional
        Accepted for compatibility with captum; hooks see the layer wherever it runs.

    References
    ----------
    Leino, Sen, Datta, Fredrikson, Li. Influence-Directed Explanations for Deep Convolutional Networks. IEEE
    International Test Conference, 2018. https://arxiv.org/abs/1802.03788
    """

    def __init__(self, forward_func: Callable, layer: nn.Module, device_ids: list[int] | None = None):
        super().__init__(forward_func, multiply_by_inputs=False)
        check_layer(forward_func, layer)
        self.layer = layer
        self.device_ids = device_ids

    def has_convergence_delta(self) -> bool:
        return False

    interpolate = staticmethod(LayerIntegratedGradients.interpolate)

    @keeps_model_state
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        n_steps: int = 50,
        method: str = "gausslegendre",
        internal_batch_size: int | None = None,
        attribute_to_layer_input: bool = False,
        grad_kwargs: dict[str, Any] | None = None,
        *,
        memory_budget: int | str | None = None,
    ) -> Tensor | tuple[Tensor, ...]:
        """Integrate the gradient of the output at ``target`` with respect to the layer along the input path.

        Parameters
        ----------
        inputs, baselines, target, additional_forward_args, method, internal_batch_size, memory_budget
            As in :meth:`integrad.IntegratedGradients.attribute`.
        n_steps : int, default 50
            Points of the rule along the input path.
        attribute_to_layer_input : bool, default False
            Take the gradient with respect to the layer's input instead of its output.
        grad_kwargs : dict, optional
            Keyword arguments of ``torch.autograd.grad``, as captum takes them. ``{"create_graph": True}`` keeps the
            graph of the gradients, so that the result can be differentiated with respect to the parameters after the
            layer (the layer's values along the path are taken without a graph); it needs no ``memory_budget``. The
            other options change nothing.

        Returns
        -------
        Tensor or tuple of Tensor
            Shaped like the layer's value (a tuple for a layer whose value is a tuple), in its dtype.
        """
        use_input = arguments.check_bool("attribute_to_layer_input", attribute_to_layer_input)
        arguments.check_method(method)
        arguments.check_n_steps(n_steps, method)
        path = self._input_path(
            inputs,
            baselines,
            additional_forward_args,
            n_steps=n_steps,
            method=method,
            internal_batch_size=internal_batch_size,
            memory_budget=memory_budget,
            tolerance=1e-3,
        )
        path.settings = self._with_grad_kwargs(path.settings, grad_kwargs, memory_budget)
        target_t = arguments.normalize_target(target, path.batch, path.inputs[0].device)
        alphas, weights = alphas_and_weights(method, n_steps)
        grads, values, is_tuple = layer_gradient_rows(self, self.layer, path, target_t, use_input, alphas)
        self.last_report.steps = torch.full((path.batch,), n_steps, dtype=torch.long)
        sums = per_example_sum(grads, weights, path.batch)
        return restore_structure(tuple(s.to(v.dtype) for s, v in zip(sums, values)), is_tuple)
