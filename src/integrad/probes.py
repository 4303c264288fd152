"""Probes: what is differentiated along the path.

A probe turns a model evaluation on a chunk of path rows into one scalar per row: the output at each example's
target, or one neuron of a layer. Layer hooks capture (and optionally stop the forward at) a layer, or replace its
output with interpolated activations. Every hook is removed in ``finally``.

Hooks belong to the call that installs them. One model may serve several attribution calls at once (a thread pool
sharing a model), and a module's hooks run in every forward pass through it, whoever runs the pass: so each hook
acts only in the forward passes run inside its own ``with`` block, in the thread (or asyncio task) that entered it,
and does nothing in any other pass. A forward that runs a layer in threads of its own (``nn.DataParallel`` over
several devices) runs it outside that context, where the hooks do not act.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .arguments import check_output
from .paths import moved


class StopForward(Exception):
    """Raised by a capture hook to end a forward pass early; never escapes this package."""


class TargetProbe:
    """Selects ``output[row, *target[example(row)]]`` by vectorised indexing.

    Parameters
    ----------
    target : Tensor or None
        ``(batch, k)`` LongTensor from :func:`integrad.arguments.normalize_target`, or None for models returning
        one scalar per example.
    """

    def __init__(self, target: Tensor | None):
        self.target = target
        self._flat: Tensor | None = None
        self._shape: tuple[int, ...] | None = None

    def __call__(self, output: Any, examples: Tensor) -> Tensor:
        output = check_output(output, examples.shape[0])
        # (rows, classes) as it is: a reshape would add a step to every backward pass.
        flat_output = output if output.dim() == 2 else output.reshape(output.shape[0], -1)
        if self._shape != tuple(output.shape[1:]):
            self._flat = self._flat_indices(tuple(output.shape[1:]))
            self._flat = None if self._flat is None else self._flat.to(output.device)
            self._shape = tuple(output.shape[1:])
        if self._flat is None:
            return flat_output[:, 0]
        index = self._flat.index_select(0, moved(examples, self._flat.device))
        return flat_output.gather(1, index).squeeze(1)

    def _flat_indices(self, per_example_shape: tuple[int, ...]) -> Tensor | None:
        if self.target is None:
            if any(s != 1 for s in per_example_shape):
                raise ValueError(
                    f"target is required: forward_func returns {per_example_shape} values per example, and only a "
                    "model with one scalar per example can be attributed without target. Pass target=<class index>"
                )
            return None
        k = self.target.shape[1]
        if k != len(per_example_shape):
            raise ValueError(
                f"target has {k} index(es) per example, but the model output has {len(per_example_shape)} dimension(s) "
                f"after the batch (shape per example {per_example_shape}); give one index per output dimension"
            )
        # One synchronising read of the extremes per output dimension (on the CPU, of the values themselves: a
        # batch's targets are few, and reductions cost more than reading them), then a single indexing tensor.
        if self.target.device.type == "cpu":
            columns = list(zip(*self.target.tolist()))
            low, high = [min(c) for c in columns], [max(c) for c in columns]
        else:
            low, high = (v.tolist() for v in torch.aminmax(self.target, dim=0))
        if any(lo < -n or hi >= n for lo, hi, n in zip(low, high, per_example_shape)):
            raise ValueError(
                f"target holds indices from {low} to {high}, outside the model output's per-example shape "
                f"{per_example_shape}"
            )
        sizes = per_example_shape
        wrapped = self.target
        if min(low) < 0:
            wrapped = torch.remainder(wrapped, torch.tensor(sizes, dtype=torch.long, device=wrapped.device))
        if k == 1:
            return wrapped
        strides = [math.prod(sizes[i + 1 :]) for i in range(k)]
        return (wrapped * torch.tensor(strides, dtype=torch.long, device=wrapped.device)).sum(1, keepdim=True)


class NeuronProbe:
    """One neuron (or a summed region, or a user function) of a captured layer tensor, per row."""

    def __init__(self, selector: int | tuple | Callable[[Any], Tensor]):
        self.selector = selector

    def __call__(self, layer_value: Any, rows: int) -> Tensor:
        sel = self.selector
        if callable(sel):
            value = sel(layer_value)
            if not isinstance(value, Tensor):
                raise TypeError(f"neuron_selector returned {type(value).__name__}; it must return a tensor")
            if value.numel() == rows:
                return value.reshape(rows)
            if value.numel() == 1:
                # A single aggregate over the whole chunk: its gradient still separates by row.
                return value.reshape(1).expand(rows) / rows
            raise ValueError(
                f"neuron_selector returned a tensor of shape {tuple(value.shape)}; it must return one scalar per "
                f"example ({rows} here) or a single scalar"
            )
        if not isinstance(layer_value, Tensor):
            raise ValueError(
                "neuron_selector as an int or tuple needs the layer to produce a single tensor; this layer produced "
                f"{type(layer_value).__name__}. Pass a callable selector instead"
            )
        index = (sel,) if not isinstance(sel, tuple) else sel
        if len(index) != layer_value.dim() - 1:
            raise ValueError(
                f"neuron_selector {sel!r} has {len(index)} index(es), but the layer's value has shape "
                f"{tuple(layer_value.shape[1:])} per example; give one int or slice per dimension after the batch"
            )
        for i, (ix, size) in enumerate(zip(index, layer_value.shape[1:])):
            if isinstance(ix, int) and not -size <= ix < size:
                raise ValueError(f"neuron_selector[{i}] = {ix} is out of range for a layer dimension of size {size}")
        picked = layer_value[(slice(None),) + index]
        return picked.reshape(rows, -1).sum(1)


def check_neuron_selector(selector: Any) -> Any:
    if callable(selector):
        return selector
    if isinstance(selector, bool):
        raise TypeError("neuron_selector must be an int, a tuple of ints and slices, or a callable; got a bool")
    if isinstance(selector, int):
        return selector
    if (
        isinstance(selector, tuple)
        and selector
        and all((isinstance(i, int) and not isinstance(i, bool)) or isinstance(i, slice) for i in selector)
    ):
        return selector
    raise TypeError(
        "neuron_selector must be an int (2-D layer output), a tuple of ints and slices (one per dimension after the "
        f"batch), or a callable taking the layer's value; got {selector!r}"
    )


def uncompiled(forward_func: Callable) -> Callable:
    """The eager model or function inside a ``torch.compile`` wrapper (or behind ``model.compile()``); anything else
    as it is.

    Dynamo does not guard its graphs on module hooks, so a graph compiled before a layer hook was added (a model
    that already ran, with dynamic shapes) would run without it. The passes of layer and neuron methods, whose
    hooks replace or read a layer's value, therefore run the eager model; a hook breaks dynamo's graph there
    anyway, so little of the compiled speed is lost.
    """
    if isinstance(forward_func, nn.Module):
        inner = uncompiled_module(forward_func)  # torch.compile(model)
        if inner is forward_func and getattr(forward_func, "_compiled_call_impl", None) is not None:
            return forward_func._call_impl  # model.compile(): the uncompiled call
        return inner
    return getattr(forward_func, "_torchdynamo_orig_callable", forward_func)


def check_layer(forward_func: Any, layer: Any, name: str = "layer") -> None:
    if not isinstance(layer, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module inside the model; got {type(layer).__name__}")
    if not isinstance(forward_func, nn.Module):
        return
    modules = dict(uncompiled_module(forward_func).named_modules(remove_duplicate=False))
    if not any(m is layer for m in modules.values()):
        raise ValueError(
            f"{name} ({type(layer).__name__}) is not a submodule of the model passed as forward_func; pass a module "
            "from model.named_modules()"
        )
    for where, module in modules.items():
        if where and module is not layer and _compiled(module) and any(m is layer for m in module.modules()):
            raise ValueError(
                f"{name} ({type(layer).__name__}) is inside {where!r}, a submodule compiled on its own with "
                "torch.compile: its compiled graphs do not run hooks added after they were traced, so the layer's "
                "value could not be replaced or read. Compile the whole model instead (torch.compile(model)), or "
                "pass the uncompiled model"
            )


def uncompiled_module(model: nn.Module) -> nn.Module:
    """The module inside a ``torch.compile`` wrapper, or ``model``."""
    inner = getattr(model, "_orig_mod", None)
    return inner if isinstance(inner, nn.Module) else model


def _compiled(module: nn.Module) -> bool:
    """Whether calling ``module`` runs a graph compiled by ``torch.compile`` (wrapped, or ``module.compile()``)."""
    return isinstance(getattr(module, "_orig_mod", None), nn.Module) or (
        getattr(module, "_compiled_call_impl", None) is not None
    )


def _layer_value(args: tuple, output: Any, use_input: bool) -> Any:
    if use_input:
        return args[0] if len(args) == 1 else args
    return output


def _copied(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.clone()
    if isinstance(value, tuple):
        return tuple(_copied(v) for v in value)
    return value


#: The owners of the hooks that act in this context's forward passes (a thread's, or an asyncio task's).
_ACTING: contextvars.ContextVar[tuple[object, ...]] = contextvars.ContextVar("integrad_acting_hooks", default=())
#: torch numbers hooks from a class-wide counter that two threads may read at once: a duplicate number would make one
#: hook replace another in a module's table, and removing one remove both. Registrations here take turns.
_REGISTERING = threading.Lock()


@contextlib.contextmanager
def scoped_hooks(layers: Sequence[nn.Module], hooks: Sequence[Callable], use_input: bool) -> Iterator[None]:
    """Install ``hooks[i]`` on ``layers[i]`` for the forward passes run inside the ``with`` block, in this context.

    Forward hooks ``hook(module, args, output)``, or with ``use_input`` forward pre-hooks ``hook(module, args)``;
    what a hook returns replaces the output (the input) as torch's hooks do. A pass run anywhere else (another
    thread, another call's ``with`` block in another task) goes through the same modules and calls the same hooks:
    there they do nothing. Every hook is removed on leaving, however the block ends.
    """
    owner = object()

    def acting_only_here(hook: Callable) -> Callable:
        def gated(*args):
            return hook(*args) if owner in _ACTING.get() else None

        return gated

    handles = []
    acting = _ACTING.set(_ACTING.get() + (owner,))
    try:
        with _REGISTERING:
            for layer, hook in zip(layers, hooks):
                gated = acting_only_here(hook)
                handles.append(
                    layer.register_forward_pre_hook(gated) if use_input else layer.register_forward_hook(gated)
                )
        yield
    finally:
        for h in handles:
            h.remove()
        _ACTING.reset(acting)


@contextlib.contextmanager
def captured(layers: Sequence[nn.Module], use_input: bool, stop: bool) -> Iterator[list]:
    """Record each layer's value (output, or input with ``use_input``) into the yielded list.

    With ``stop=True`` the forward is ended by :class:`StopForward` once every layer has run, because nothing after
    them is needed. The list holds ``None`` for a layer that has not run. Only the forward passes run inside the
    ``with`` block, in this thread, are recorded (see :func:`scoped_hooks`).
    """
    values: list = [None] * len(layers)
    seen = [False] * len(layers)
    # With several layers the forward goes on after the first: what it writes into a recorded value in place (an
    # in-place ReLU after the layer) must not reach the record, so values are copied. A single layer ends the pass.
    keep = _copied if len(layers) > 1 else (lambda v: v)

    def make_hook(i: int):
        def record(value: Any) -> None:
            values[i] = keep(value)
            seen[i] = True
            if stop and all(seen):
                raise StopForward

        if use_input:
            return lambda module, args: record(args[0] if len(args) == 1 else args)
        return lambda module, args, output: record(output)

    with scoped_hooks(layers, [make_hook(i) for i in range(len(layers))], use_input):
        yield values


class RepeatedLayerCall(ValueError):
    """A layer whose value is replaced ran again in the same forward pass, on other inputs."""

    def __init__(self, layer: nn.Module):
        super().__init__(
            f"layer {type(layer).__name__} runs more than once in one forward pass of forward_func, on different "
            "inputs (a shared module or a recurrent cell); a layer attribution replaces the layer's value with "
            "points on a path, and which of its calls is meant is not known. Pass a module that runs once per "
            "forward pass (e.g. wrap the call you mean, or the whole loop, in a module of its own)"
        )


class LayerNotRun(ValueError):
    """A layer whose value is replaced did not run in the forward pass (in the thread that runs the call)."""

    def __init__(self, layers: Sequence[nn.Module]):
        super().__init__(
            f"layer {', '.join(type(m).__name__ for m in layers)} did not run in the forward pass of forward_func, "
            f"so its value could not be replaced by points on the path. {_OWN_THREADS_HINT}"
        )


#: Why a layer may seem not to run although the model uses it.
_OWN_THREADS_HINT = (
    "A forward that runs the layer in threads of its own (nn.DataParallel over several devices) runs it where this "
    "call's hooks do not act: attribute the module inside it (model.module)"
)


@contextlib.contextmanager
def replaced(layers: Sequence[nn.Module], new_values: Sequence[Any], use_input: bool) -> Iterator[None]:
    """Make each layer output ``new_values[i]`` (or receive it as input) during one forward pass.

    A layer may run again in the pass on the very same input tensors (the same value computed twice): it gets the
    same replacement. Run on other inputs, it raises :class:`RepeatedLayerCall`. Only the forward passes run inside
    the ``with`` block, in this thread, see the replacement (see :func:`scoped_hooks`); a block that ends without an
    error and without a layer having run raises :class:`LayerNotRun`, since nothing was replaced.
    """
    first_args: list = [None] * len(layers)

    def make_hook(i: int, value: Any):
        def check(args: tuple) -> None:
            if first_args[i] is None:
                first_args[i] = args
            elif len(args) != len(first_args[i]) or any(a is not b for a, b in zip(args, first_args[i])):
                raise RepeatedLayerCall(layers[i])

        if use_input:

            def pre_hook(module, args):
                check(args)
                return value if isinstance(value, tuple) else (value,)

            return pre_hook

        def hook(module, args, output):
            check(args)
            return value

        return hook

    with scoped_hooks(layers, [make_hook(i, value) for i, value in enumerate(new_values)], use_input):
        yield
    missing = [layer for layer, _, args in zip(layers, new_values, first_args) if args is None]
    if missing:
        raise LayerNotRun(missing)


def run_until(forward_func: Callable, layers: Sequence[nn.Module], use_input: bool, args: tuple) -> list:
    """Run ``forward_func(*args)`` only as far as needed to see every layer; return the layers' values."""
    with captured(layers, use_input, stop=True) as values:
        try:
            forward_func(*args)
        except StopForward:
            pass
    missing = [type(layers[i]).__name__ for i, v in enumerate(values) if v is None]
    if missing:
        raise ValueError(
            f"layer {', '.join(missing)} did not run during forward_func, so it cannot be attributed; pass a module "
            f"that the forward pass uses. {_OWN_THREADS_HINT}"
        )
    return values
