"""What every explainer resolves once from its configuration: baselines, layers (modules, dotted names or forward
arguments), core keywords; and the targets of a batch."""

from __future__ import annotations

import difflib
import inspect
import numbers
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from .. import arguments
from .baselines import BASELINES, get_baseline_fn


def check_core_kwargs(name: str, core_kwargs: dict[str, Any], accepted: Sequence[str], hint: str = "") -> dict:
    """``core_kwargs`` when every key is one of ``accepted`` and the values pass the library's checks; a TypeError
    naming the unexpected keywords otherwise (``hint`` says why one may be missing)."""
    unknown = sorted(set(core_kwargs) - set(accepted))
    if unknown:
        raise TypeError(
            f"{name} got unexpected keyword argument(s) {unknown}{hint}; accepted core keywords are {sorted(accepted)}"
        )
    if "method" in core_kwargs and core_kwargs["method"] is not None:
        arguments.check_method(core_kwargs["method"])
    if "nt_type" in core_kwargs:
        arguments.check_nt_type(core_kwargs["nt_type"])
    if "nt_samples" in core_kwargs:
        arguments.check_positive_int("nt_samples", core_kwargs["nt_samples"], allow_none=False)
    return dict(core_kwargs)


def resolve_baselines(baseline_fn: Any) -> tuple[Any, ...]:
    specs = baseline_fn if isinstance(baseline_fn, tuple) else (baseline_fn,)
    if not specs:
        raise ValueError("baseline_fn must not be an empty tuple; give one baseline per attributed input")
    resolved = []
    for spec in specs:
        if torch.is_tensor(spec) or (isinstance(spec, numbers.Number) and not isinstance(spec, bool)):
            resolved.append(spec)
        elif isinstance(spec, str) or callable(spec):
            resolved.append(get_baseline_fn(spec))
        else:
            raise TypeError(
                f"baseline_fn must be a name from {sorted(BASELINES)}, a callable fn(inputs) -> Tensor, a tensor, "
                f"a number, or a tuple of these (one per attributed input); got {type(spec).__name__}"
            )
    return tuple(resolved)


def resolve_layers(model: Any, layer: Any) -> tuple[nn.Module | list[nn.Module] | None, Any]:
    """The layer module(s), and the function the layer method runs: the model, or the model with the forward
    arguments named in ``layer`` passed through identity modules (see :class:`ArgumentLayers`)."""
    if layer is None:
        return None, model
    items = list(layer) if isinstance(layer, (list, tuple)) else [layer]
    if not items:
        raise ValueError("layer must be None, a module, a dotted name, or a non-empty list of these; got []")
    named_arguments = [item for item in items if isinstance(item, str) and _is_argument(model, item)]
    forward = ArgumentLayers(model, named_arguments) if named_arguments else model
    resolved = [forward.arguments[item] if item in named_arguments else _resolve_layer(model, item) for item in items]
    return (resolved if isinstance(layer, (list, tuple)) else resolved[0]), forward


def _is_argument(model: Any, name: str) -> bool:
    """Whether ``name`` is a parameter of ``model.forward`` and not a submodule (a submodule's name wins)."""
    if not isinstance(model, nn.Module):
        return False
    try:
        model.get_submodule(name)
        return False
    except AttributeError:
        pass
    return name in inspect.signature(model.forward).parameters


class _Argument(nn.Module):
    """Identity: its output is the forward argument it stands for."""

    def forward(self, value: Any) -> Any:
        return value


class ArgumentLayers(nn.Module):
    """A model whose chosen forward arguments pass through identity modules first.

    A layer method given such a module attributes to the argument itself, by name: ``layer=["input_ids"]`` (pnpxai's
    meaning of a layer given as a forward argument's name). The wrapped model runs unchanged.

    Parameters
    ----------
    model : torch.nn.Module
        The model, called with the arguments bound to its ``forward``'s parameters.
    names : list of str
        The parameters of ``model.forward`` to expose; ``arguments[name]`` is the module standing for each.
    """

    def __init__(self, model: nn.Module, names: Sequence[str]):
        super().__init__()
        self.model = model
        self.arguments = nn.ModuleDict({name: _Argument() for name in names})
        self._signature = inspect.signature(model.forward)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        bound = self._signature.bind(*args, **kwargs)
        for name, module in self.arguments.items():
            if name in bound.arguments:
                bound.arguments[name] = module(bound.arguments[name])
        return self.model(*bound.args, **bound.kwargs)


def layer_by_name(model: nn.Module, name: str) -> nn.Module | None:
    """The submodule called ``name`` (a dotted path, as in ``named_modules``), or None."""
    if not name:
        return None
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def layer_names_hint(model: nn.Module, name: str) -> str:
    """For a ``name`` that is no layer of ``model``: the layer names it is close to, or the top-level ones."""
    names = [n for n, _ in model.named_modules() if n and not n.startswith("_")]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    if close:
        return f"did you mean {close}?"
    return f"top-level modules are {[n for n in names if '.' not in n][:10]}"


def _resolve_layer(model: Any, layer: Any) -> nn.Module:
    if isinstance(layer, str):
        if not isinstance(model, nn.Module):
            raise TypeError(f"layer given by name ({layer!r}) needs model to be an nn.Module")
        found = layer_by_name(model, layer)
        if found is None:
            arguments = list(inspect.signature(model.forward).parameters)
            raise ValueError(
                f"layer {layer!r} is neither a submodule of {type(model).__name__} nor an argument of its forward "
                f"({arguments}); {layer_names_hint(model, layer)}"
            )
        return found
    if isinstance(layer, nn.Module):
        if isinstance(model, nn.Module) and not any(layer is module for module in model.modules()):
            raise ValueError(
                f"layer {type(layer).__name__} is not a submodule of {type(model).__name__}; its activations would "
                "never be computed. Pass a module of the model or its dotted name"
            )
        return layer
    raise TypeError(
        "layer must be None, an nn.Module, a dotted module name or a forward argument's name (str), or a list of "
        f"these; got {type(layer).__name__}"
    )


def check_targets(targets: Any, n: int, n_classes: int | None) -> Any:
    """Targets for ``n`` examples as the explainer takes them (None, an int, or an integer tensor of shape (N,),
    (1,) or ()), with sequences of ints made tensors; TypeError/ValueError naming ``targets`` otherwise."""
    if targets is None:
        return None
    if isinstance(targets, bool):
        raise TypeError("targets must be a LongTensor of shape (N,), an int, a sequence of ints, or None; got a bool")
    if arguments.is_int(targets):
        values = torch.tensor([int(targets)])
        result: Any = int(targets)
    else:
        if isinstance(targets, (list, tuple)):
            if not all(arguments.is_int(t) for t in targets):
                raise TypeError("targets must hold ints, one per example, when given as a sequence")
            targets = torch.tensor(list(targets), dtype=torch.long)
        if not torch.is_tensor(targets):
            raise TypeError(
                f"targets must be a LongTensor of shape (N,), an int, a sequence of ints, or None; "
                f"got {type(targets).__name__}"
            )
        if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
            raise TypeError(f"targets must hold integer class indices, got dtype {targets.dtype}")
        if targets.dim() > 1 or (targets.dim() == 1 and targets.numel() not in (1, n)):
            raise ValueError(f"targets must have shape (N,) = ({n},) or be a scalar, got {tuple(targets.shape)}")
        values = targets.reshape(-1)
        result = targets
    if n_classes is not None and values.numel() and (int(values.min()) < 0 or int(values.max()) >= n_classes):
        raise ValueError(
            f"targets must lie in [0, n_classes) = [0, {n_classes}), got values in "
            f"[{int(values.min())}, {int(values.max())}]"
        )
    return result
