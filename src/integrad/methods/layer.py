"""Layer Integrated Gradients: integrate in a layer's activation space."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Literal, overload

import torch
from torch import Tensor, nn

from .. import arguments
from ..engine import is_out_of_memory, run_chunked, writes_into_leaf
from ..paths import StraightLine
from ..probes import (
    LayerNotRun,
    RepeatedLayerCall,
    TargetProbe,
    check_layer,
    replaced,
    run_until,
    scoped_hooks,
)
from .base import LayerConvergenceDelta, PathAttribution, keeps_model_state, output_probe


class LayerIntegratedGradients(LayerConvergenceDelta, PathAttribution):
    r"""Integrated gradients with respect to a layer's activations (or inputs).

    With ``h(x)`` the layer's value, the path runs from ``h(x′)`` to ``h(x)`` in activation space; the model is run
    on the inputs ``x`` with the layer's value replaced by each path point, and
    ``A = (h(x) − h(x′)) ⊙ ∫_0^1 ∂F/∂h (h(x′) + α (h(x) − h(x′))) dα``. Inputs may be integer token ids feeding an
    embedding layer: the path then lies between the embeddings of the input and baseline tokens.

    For a list of layers a list comes back. Layers that do not feed each other are interpolated together, as captum
    does. A layer that feeds another in the list (or is fed by one) is integrated as if it were alone: with both
    replaced, the downstream replacement would cut the upstream layer out of the graph (captum then fails with
    "appears to not have been used in the graph").

    A layer that runs more than once in a forward pass is accepted when every call gets the same input tensors (the
    same value computed again: each call gets the same path point); on different inputs (a shared module, a
    recurrent cell) which value the path replaces is not known, and a ValueError says so.

    Parameters
    ----------
    forward_func : callable
        The model or a function of the inputs.
    layer : torch.nn.Module or list of Module
        Layer(s) to attribute to. A layer's value may be a tensor or a tuple of tensors.
    device_ids : list of int, optional
        Accepted for compatibility with captum.
    multiply_by_inputs : bool, default True
        Multiply by ``h(x) − h(x′)``.
    expand_at_layer : bool, default True
        Run the model on each example once per chunk and expand the rows to path points at the layer, instead of
        running everything before the layer on every path point (see Notes).

    Notes
    -----
    Along the path only the layer's value changes, so whatever the model computes before the layer is the same for
    every path point of an example. With ``expand_at_layer`` a chunk made of whole steps of the batch (``k`` path
    points for each of the ``B`` examples) calls the model on the ``B`` examples, and the layer hands on its ``k·B``
    path points: the work before the layer is done ``k`` times less often. Results are those of running the model on
    the expanded rows, for any model that treats rows independently. A value computed before the layer that meets
    the expanded rows later (an attention mask, a skip connection) is either broadcast correctly (one example, or
    one step per chunk) or fails to broadcast; such a failure, or an output without ``k·B`` rows, switches this
    object to running the whole model on the expanded rows, which is also what ``expand_at_layer=False`` does.
    """

    def __init__(
        self,
        forward_func: Callable,
        layer: nn.Module | Sequence[nn.Module],
        device_ids: list[int] | None = None,
        multiply_by_inputs: bool = True,
        *,
        expand_at_layer: bool = True,
    ):
        super().__init__(forward_func, multiply_by_inputs)
        self._expand = {"enabled": arguments.check_bool("expand_at_layer", expand_at_layer)}
        self._is_list = isinstance(layer, (list, tuple))
        layers = list(layer) if self._is_list else [layer]
        if not layers:
            raise ValueError("layer must be a module or a non-empty list of modules")
        for i, m in enumerate(layers):
            check_layer(forward_func, m, f"layer[{i}]" if self._is_list else "layer")
        self.layer = layer
        self.layers = layers
        self.device_ids = device_ids

    @overload
    def attribute(
        self,
        inputs: Any,
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        n_steps: int | str = 50,
        method: str = "gausslegendre",
        internal_batch_size: int | None = None,
        return_convergence_delta: Literal[False] = False,
        attribute_to_layer_input: bool = False,
        grad_kwargs: dict[str, Any] | None = None,
        *,
        memory_budget: int | str | None = None,
        tolerance: float = 1e-3,
    ) -> Any: ...

    @overload
    def attribute(
        self,
        inputs: Any,
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        n_steps: int | str = 50,
        method: str = "gausslegendre",
        internal_batch_size: int | None = None,
        *,
        return_convergence_delta: Literal[True],
        attribute_to_layer_input: bool = False,
        grad_kwargs: dict[str, Any] | None = None,
        memory_budget: int | str | None = None,
        tolerance: float = 1e-3,
    ) -> tuple[Any, Tensor]: ...

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
        tolerance=1e-3,
    ):
        """Attribute the output at ``target`` to the layer's activations.

        Parameters are those of :meth:`IntegratedGradients.attribute`, except that ``inputs`` may hold integer
        tensors (token ids), baselines are in input space (e.g. pad-token ids), and
        ``attribute_to_layer_input=True`` integrates over the layer's input instead of its output.

        ``grad_kwargs`` (a dict, optional) holds keyword arguments for ``torch.autograd.grad``, as captum takes
        them. ``{"create_graph": True}`` keeps the graph of the path gradients: the attributions can then be
        differentiated with respect to the parameters after the layer (the layer's values at the inputs and
        baselines, the ends of the path, are taken without a graph, as captum takes them); it needs an int
        ``n_steps`` and no ``memory_budget``. ``retain_graph``, ``allow_unused``, ``materialize_grads`` and
        ``only_inputs`` are accepted and change nothing: the gradient of a value the output does not use is zero
        (captum's result with ``materialize_grads=True``).

        Returns
        -------
        attributions : Tensor, tuple of Tensor, or list of those
            Shaped like the layer's value (one entry per layer for a list). With ``return_convergence_delta`` also
            the per-example delta ``Σ attributions − (F(x) − F(x′))`` (for a list of layers, of the first group).
        """
        return_convergence_delta = arguments.check_bool("return_convergence_delta", return_convergence_delta)
        use_input = arguments.check_bool("attribute_to_layer_input", attribute_to_layer_input)
        inputs_t, was_tuple = arguments.normalize_inputs(inputs, need_grad=False)
        settings = self._rule_settings(
            n_steps, method, internal_batch_size, memory_budget, tolerance, inputs_t[0].device
        )
        settings = self._with_grad_kwargs(settings, grad_kwargs, memory_budget)
        batch = inputs_t[0].shape[0]
        base_t = arguments.normalize_baselines(baselines, inputs_t, was_tuple)
        target_t = arguments.normalize_target(target, batch, inputs_t[0].device)
        args, per_example = arguments.normalize_additional_args(additional_forward_args, batch)

        flat, structures = self._layer_ends(inputs_t, base_t, args, per_example, use_input, settings)
        results: list[Any] = [None] * len(self.layers)
        first_delta = None
        # This call's own switch: a concurrent call that turns expanding off does not change how this one's chunks
        # run; what this call finds is kept for later calls.
        expand = dict(self._expand)
        for group in self._groups(inputs_t, args, per_example, use_input):
            end = tuple(p[:batch] for i in group for p in flat[i])
            start = tuple(p[batch:] for i in group for p in flat[i])
            sizes = [len(flat[i]) for i in group]
            group_layers = [self.layers[i] for i in group]

            to_values = functools.partial(_layer_values, group=group, sizes=sizes, structures=structures)

            probe = _layer_probe(
                self.hooked_forward, inputs_t, group_layers, to_values, use_input, target_t, args, per_example, expand
            )
            result = self._integrate(probe, StraightLine(start, end), settings, need_ends=return_convergence_delta)
            attributions = self._finish(result, [p.dtype for p in end])
            if first_delta is None:
                first_delta = result.report.delta
            for i, value in zip(group, to_values(attributions)):
                results[i] = value
        if not expand["enabled"]:
            self._expand["enabled"] = False
        out = results if self._is_list else results[0]
        if return_convergence_delta:
            return out, first_delta
        return out

    def _layer_ends(self, inputs_t, base_t, args, per_example, use_input: bool, settings: dict):
        """The layers' values at the inputs and at the baselines (rows ``:B`` and ``B:``), flattened to tuples of
        tensors, in one forward pass stopped after the last layer; and which values were tuples."""
        batch = inputs_t[0].shape[0]
        both = tuple(torch.cat([x.detach(), b]) for x, b in zip(inputs_t, base_t))
        rows = torch.arange(batch).repeat(2)

        def layer_values(part: slice) -> list:
            extra = arguments.select_rows(args, per_example, rows[part])
            return run_until(self.hooked_forward, self.layers, use_input, tuple(t[part] for t in both) + extra)

        with torch.no_grad():
            values = _concat(run_chunked(layer_values, 2 * batch, settings["chunking"]))
        flat = [v if isinstance(v, tuple) else (v,) for v in values]
        for i, parts in enumerate(flat):
            if not all(isinstance(p, Tensor) and p.is_floating_point() for p in parts):
                raise TypeError(
                    f"layer {type(self.layers[i]).__name__} produced a value that is not a floating-point tensor or a "
                    "tuple of them, so it cannot be interpolated"
                )
        return flat, [isinstance(v, tuple) for v in values]

    @staticmethod
    def interpolate(
        layer_attribution: Tensor, interpolate_dims: int | tuple[int, ...], interpolate_mode: str = "nearest"
    ) -> Tensor:
        """Layer attributions ``(batch, channels, *spatial)`` resized to the spatial size ``interpolate_dims`` (e.g.
        a convolution's attribution map brought to the input image's size), with
        :func:`torch.nn.functional.interpolate` in mode ``interpolate_mode``, as captum's layer methods offer it."""
        if not isinstance(layer_attribution, Tensor) or layer_attribution.dim() < 3:
            raise ValueError(
                "layer_attribution must be a tensor shaped (batch, channels, *spatial) with at least one spatial "
                f"dimension; got {type(layer_attribution).__name__}"
                f"{f' of shape {tuple(layer_attribution.shape)}' if isinstance(layer_attribution, Tensor) else ''}"
            )
        return torch.nn.functional.interpolate(layer_attribution, interpolate_dims, mode=interpolate_mode)

    def _groups(self, inputs_t, args, per_example, use_input) -> list[list[int]]:
        """Layers interpolated together: those not feeding each other; each entangled layer alone."""
        if len(self.layers) == 1:
            return [[0]]
        entangled = _entangled_layers(self.hooked_forward, self.layers, inputs_t, args, per_example, use_input)
        free = [i for i in range(len(self.layers)) if i not in entangled]
        return ([free] if free else []) + [[i] for i in sorted(entangled)]


def _layer_values(points: tuple[Tensor, ...], group: list[int], sizes: list[int], structures: list[bool]) -> list:
    """The layers' values from a flat tuple of path tensors: a tuple for a layer whose value is one."""
    out, pos = [], 0
    for i, n in zip(group, sizes):
        parts = points[pos : pos + n]
        out.append(parts if structures[i] else parts[0])
        pos += n
    return out


def _concat(chunks: list[list]) -> list:
    """Join per-chunk layer values (tensors or tuples of tensors) along the batch."""
    if len(chunks) == 1:
        return chunks[0]
    joined = []
    for parts in zip(*chunks):
        if isinstance(parts[0], tuple):
            joined.append(tuple(torch.cat(p) for p in zip(*parts)))
        else:
            joined.append(torch.cat(parts))
    return joined


#: What a model raises when rows computed before the layer meet the expanded rows after it (shape mismatches).
SHAPE_ERRORS = (RuntimeError, ValueError, IndexError, AssertionError)


def _layer_probe(forward_func, inputs_t, layers, to_values, use_input, target_t, args, per_example, expand):
    """Probe of the model output with the layers' values replaced by path points.

    ``expand["enabled"]`` allows running the model on the batch once per chunk of whole steps and expanding at the
    layer; it is switched off for good (for the call, then on the attribution object) the first time that fails.
    """
    batch = inputs_t[0].shape[0]

    def inputs_for_rows(points, examples):
        return tuple(x.index_select(0, examples.to(x.device)) for x in inputs_t)

    expanded = output_probe(forward_func, inputs_for_rows, target_t, args, per_example)
    select = TargetProbe(target_t)
    every = torch.arange(batch)
    tiles: dict[int, Tensor] = {}

    def is_whole_steps(examples: Tensor) -> bool:
        """Rows ``k·B + b`` are example ``b``, for ``k ≥ 2`` whole steps of the batch."""
        rows = examples.shape[0]
        if rows <= batch or rows % batch:
            return False
        if rows not in tiles:
            tiles[rows] = every.to(examples.device).repeat(rows // batch)
        return bool(torch.equal(examples, tiles[rows]))

    def probe(points: tuple[Tensor, ...], examples: Tensor) -> Tensor:
        values = to_values(points)
        if expand["enabled"] and is_whole_steps(examples):
            try:
                # Copies, as on the expanded path, so that a model writing into its inputs leaves the caller's intact.
                own = tuple(x.clone() for x in inputs_t) + arguments.select_rows(args, per_example, every)
                with replaced(layers, values, use_input):
                    return select(forward_func(*own), examples)
            except SHAPE_ERRORS as error:
                if (
                    is_out_of_memory(error)
                    or isinstance(error, (RepeatedLayerCall, LayerNotRun))
                    or writes_into_leaf(error)
                ):
                    raise
                # The model combines values from before the layer with the expanded rows in a way that needs them
                # expanded too (torch reports such mismatches as these built-in errors): run it on the expanded rows
                # from now on. A model error of any other type propagates as it is.
                expand["enabled"] = False
        with replaced(layers, values, use_input):
            return expanded(points, examples)

    return probe


def _entangled_layers(forward_func, layers, inputs_t, args, per_example, use_input) -> set[int]:
    """Indices of layers whose value depends on, or feeds, another listed layer (checked on one example)."""
    leaves: dict[int, int] = {}
    originals: list[Any] = [None] * len(layers)

    def make_hook(i):
        def cut(value):
            originals[i] = value
            parts = value if isinstance(value, tuple) else (value,)
            fresh = tuple(
                p.detach().requires_grad_() if isinstance(p, Tensor) and p.is_floating_point() else p for p in parts
            )
            for p in fresh:
                if isinstance(p, Tensor) and p.requires_grad:
                    leaves[id(p)] = i
            # Copies of the leaves go on, so that the model may write into them (an in-place ReLU after the layer).
            fresh = tuple(p.clone() if isinstance(p, Tensor) and p.requires_grad else p for p in fresh)
            return fresh if isinstance(value, tuple) else fresh[0]

        if use_input:
            return lambda module, a: (lambda v: v if isinstance(v, tuple) else (v,))(cut(a[0] if len(a) == 1 else a))
        return lambda module, a, output: cut(output)

    one = torch.zeros(1, dtype=torch.long)
    with scoped_hooks(layers, [make_hook(i) for i in range(len(layers))], use_input), torch.enable_grad():
        forward_func(*(x[:1] for x in inputs_t), *arguments.select_rows(args, per_example, one))
    entangled: set[int] = set()
    for j, value in enumerate(originals):
        parts = value if isinstance(value, tuple) else (value,)
        for p in parts:
            for i in _reached_leaves(p, leaves):
                if i != j:
                    entangled.update((i, j))
    return entangled


def _reached_leaves(tensor: Any, leaves: dict[int, int]) -> set[int]:
    if not isinstance(tensor, Tensor) or tensor.grad_fn is None:
        return set()
    found, seen, stack = set(), set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None and id(variable) in leaves:
            found.add(leaves[id(variable)])
        stack.extend(n for n, _ in node.next_functions)
    return found
