"""Validation and normalisation of every user-facing argument.

All checks live here so that the methods can trust what they receive. Each error names the parameter and the
forms it accepts. Nothing here modifies the caller's tensors: normalised values are new tensors or views.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

#: The quadrature rules ``method=`` accepts (see :mod:`integrad.rules`).
METHOD_NAMES = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")
#: What a noise tunnel returns: the mean of the noisy attributions, the mean of their squares, or their variance.
NT_TYPES = ("smoothgrad", "smoothgrad_sq", "vargrad")
_ACCEPTED_BASELINES = (
    "None (zeros), a number, a tensor shaped like the input or with first dimension 1 (any dimension may be 1: it "
    "broadcasts), or a tuple with one of these per input"
)
_ACCEPTED_TARGETS = (
    "None (the model returns one scalar per example), an int, a 0-d tensor, a tuple of ints (outputs with more "
    "than 2 dimensions), a list of ints or a 1-D tensor with one entry per example, or a list of tuples"
)


def is_int(value: Any) -> bool:
    """An integer (Python's, numpy's or any ``numbers.Integral``) that is not a bool."""
    # Exact types first: an abstract-base-class check costs more than the rest of a small call's validation.
    return type(value) is int or (not isinstance(value, bool) and isinstance(value, numbers.Integral))


def is_real(value: Any) -> bool:
    """A real number (Python's, numpy's or any ``numbers.Real``) that is not a bool."""
    return type(value) in (float, int) or (not isinstance(value, bool) and isinstance(value, numbers.Real))


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"{type(value).__name__} {value!r}" if not isinstance(value, (list, tuple)) else type(value).__name__


def check_method(method: Any) -> str:
    return check_choice("method", method, METHOD_NAMES)


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` when it is one of ``choices``; a ValueError naming ``name`` and listing them otherwise."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {_describe(value)}")
    return value


def check_nt_type(nt_type: Any) -> str:
    return check_choice("nt_type", nt_type, NT_TYPES)


def check_real_in(name: str, value: Any, accepted: str, within: Callable[[float], bool]) -> float:
    """``value`` as a float: a finite real number (not a bool) for which ``within`` holds; else a TypeError (not a
    number) or ValueError naming ``name``, where ``accepted`` completes "``name`` must be ..."."""
    if not is_real(value):
        raise TypeError(f"{name} must be {accepted}; got {value!r}")
    if not math.isfinite(float(value)) or not within(float(value)):
        raise ValueError(f"{name} must be {accepted}; got {value!r}")
    return float(value)


def check_positive(name: str, value: Any) -> float:
    """A finite real number ``> 0`` as a float."""
    return check_real_in(name, value, "a positive finite number", lambda v: v > 0)


def check_fraction(value: Any) -> float:
    """Guided IG's ``fraction``: the share of features moved at once, in (0, 1]."""
    return check_real_in("fraction", value, "a number in (0, 1], the share of features moved at once", _in_0_1)


def check_max_dist(value: Any) -> float:
    """Guided IG's ``max_dist``, in [0, 1]."""
    return check_real_in(
        "max_dist", value, "a number in [0, 1], how far a feature may lead or lag the step", lambda v: 0 <= v <= 1
    )


def _in_0_1(v: float) -> bool:
    return 0 < v <= 1


def check_stdevs(stdevs: Any, count: int) -> tuple[float, ...]:
    """Noise standard deviations: one non-negative number for every input, or a tuple with one per input."""
    accepted = "a non-negative number, or a tuple with one per input"
    values = stdevs if isinstance(stdevs, tuple) else (stdevs,) * count
    if len(values) != count:
        raise ValueError(f"stdevs must be {accepted}; got a tuple of length {len(values)} for {count} input(s)")
    if not all(is_real(v) and math.isfinite(float(v)) and float(v) >= 0 for v in values):
        raise ValueError(f"stdevs must be {accepted}; got {stdevs!r}")
    return tuple(float(v) for v in values)


def check_non_negative(name: str, value: Any) -> float:
    """A finite real number ``>= 0`` as a float; TypeError/ValueError naming ``name`` otherwise."""
    if not is_real(value):
        raise TypeError(f"{name} must be a non-negative number; got {_describe(value)}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative finite number; got {_describe(value)}")
    return float(value)


def check_n_steps(n_steps: Any, method: str = "gausslegendre", allow_auto: bool = False) -> int | str:
    if allow_auto and n_steps == "auto":
        return "auto"
    smallest = 2 if method == "riemann_trapezoid" else 1
    if not is_int(n_steps) or n_steps < smallest:
        accepted = ("a positive int" if smallest == 1 else f"an int >= {smallest}") + (
            " or 'auto'" if allow_auto else ""
        )
        suffix = " (the trapezoid rule needs both end points)" if smallest == 2 else ""
        raise ValueError(f"n_steps must be {accepted}{suffix}; got {_describe(n_steps)}")
    return int(n_steps)


def check_positive_int(name: str, value: Any, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int{' or None' if allow_none else ''}; got {_describe(value)}")
    return int(value)


def check_bool(name: str, value: Any) -> bool:
    """``value`` as a bool: True or False, also numpy's (e.g. from a comparison of numpy values)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {_describe(value)}")
    return bool(value)


def check_tolerance(tolerance: Any) -> float:
    if not is_real(tolerance) or not 0 < float(tolerance) < 1:
        raise ValueError(
            f"tolerance must be a number in (0, 1), the relative L1 error allowed; got {_describe(tolerance)}"
        )
    return float(tolerance)


def normalize_inputs(inputs: Any, *, name: str = "inputs", need_grad: bool = True) -> tuple[tuple[Tensor, ...], bool]:
    """Return ``(tuple_of_tensors, was_tuple)`` after checking types, dtypes and the shared batch size."""
    was_tuple = isinstance(inputs, tuple)
    tensors = inputs if was_tuple else (inputs,)
    if len(tensors) == 0:
        raise ValueError(f"{name} must be a tensor or a non-empty tuple of tensors; got an empty tuple")
    for i, t in enumerate(tensors):
        where = f"{name}[{i}]" if was_tuple else name
        if not isinstance(t, Tensor):
            raise TypeError(f"{where} must be a torch.Tensor (or {name} a tuple of tensors); got {_describe(t)}")
        if t.dim() == 0:
            raise ValueError(f"{where} must have a batch dimension (dim 0 = examples); got a 0-d tensor")
        if need_grad and not (t.is_floating_point() or t.is_complex()):
            raise TypeError(
                f"{where} has dtype {t.dtype}, but gradients need a floating-point input; convert it with .float(), "
                "or attribute to an embedding layer with LayerIntegratedGradients for token ids"
            )
    batch = tensors[0].shape[0]
    sizes = [t.shape[0] for t in tensors]
    if any(s != batch for s in sizes):
        raise ValueError(f"every tensor in {name} must have the same batch size (dim 0); got sizes {sizes}")
    if batch == 0:
        raise ValueError(f"{name} holds no examples (dim 0 has size 0); pass at least one example")
    return tuple(tensors), was_tuple


def normalize_baselines(baselines: Any, inputs: tuple[Tensor, ...], was_tuple: bool) -> tuple[Tensor, ...]:
    """Baselines as one tensor per input, each broadcast (as a view) to the input's shape, dtype and device."""
    if baselines is None:
        return tuple(torch.zeros_like(x) for x in inputs)
    if isinstance(baselines, tuple):
        if len(baselines) != len(inputs):
            raise ValueError(
                f"baselines is a tuple of length {len(baselines)} but there are {len(inputs)} inputs; "
                f"accepted: {_ACCEPTED_BASELINES}"
            )
        items = baselines
    elif len(inputs) > 1 and isinstance(baselines, Tensor) and baselines.dim() > 0:
        raise ValueError(
            f"baselines is a single tensor but there are {len(inputs)} inputs; pass a tuple with one baseline per "
            f"input. Accepted: {_ACCEPTED_BASELINES}"
        )
    else:
        items = (baselines,) * len(inputs)
    out = []
    for i, (b, x) in enumerate(zip(items, inputs)):
        where = f"baselines[{i}]" if was_tuple or isinstance(baselines, tuple) else "baselines"
        if isinstance(b, bool) or not (b is None or isinstance(b, (numbers.Number, Tensor))):
            raise TypeError(
                f"{where} must be a number or a tensor; got {_describe(b)}. Accepted: {_ACCEPTED_BASELINES}"
            )
        if b is None:
            out.append(torch.zeros_like(x))
        elif isinstance(b, numbers.Number) or b.dim() == 0:
            out.append(torch.full_like(x, float(b) if x.is_floating_point() else int(b)))
        else:
            if b.dim() != x.dim() or any(n not in (1, m) for n, m in zip(b.shape, x.shape)):
                raise ValueError(
                    f"{where} has shape {tuple(b.shape)}, which does not fit the input of shape {tuple(x.shape)}: "
                    f"use the input's shape, or first dimension 1 to share one baseline across the batch (any "
                    f"dimension may be 1 to share values along it, as in broadcasting)"
                )
            out.append(b.detach().to(device=x.device, dtype=x.dtype).expand_as(x))
    return tuple(out)


def normalize_target(target: Any, batch: int, device: torch.device) -> Tensor | None:
    """Targets as a ``(batch, k)`` LongTensor of output indices (``k`` = output dims − 1), or None."""
    if target is None:
        return None
    if isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"target must hold integer indices; got a tensor of dtype {target.dtype}")
        t = target.detach()
        if t.dtype != torch.long or t.device != device:
            t = t.to(device=device, dtype=torch.long)
        if t.numel() == 1 and t.dim() <= 1:
            return t.reshape(1, 1).expand(batch, 1).clone()
        if t.dim() == 1 and t.shape[0] == batch:
            return t.reshape(batch, 1)
        if t.dim() == 2 and t.shape[0] == batch:
            return t
        raise ValueError(
            f"target is a tensor of shape {tuple(t.shape)}, but there are {batch} examples. "
            f"Accepted: {_ACCEPTED_TARGETS}"
        )
    if isinstance(target, bool):
        raise TypeError(f"target must not be a bool. Accepted: {_ACCEPTED_TARGETS}")
    if is_int(target):
        return torch.full((batch, 1), int(target), dtype=torch.long, device=device)
    if isinstance(target, tuple):
        if not target or not all(is_int(v) for v in target):
            raise TypeError(f"target given as a tuple must hold ints (one index per output dim); got {target!r}")
        return torch.tensor(target, dtype=torch.long, device=device).reshape(1, -1).expand(batch, -1).clone()
    if isinstance(target, list):
        if len(target) != batch:
            raise ValueError(f"target is a list of length {len(target)}, but there are {batch} examples")
        if all(is_int(v) for v in target):
            return torch.tensor(target, dtype=torch.long, device=device).reshape(batch, 1)
        if all(isinstance(v, tuple) for v in target):
            lengths = {len(v) for v in target}
            if len(lengths) != 1 or not all(isinstance(i, numbers.Integral) for v in target for i in v):
                raise ValueError("target given as a list of tuples needs tuples of ints, all of the same length")
            return torch.tensor(target, dtype=torch.long, device=device)
        raise TypeError(f"target given as a list must hold only ints or only tuples of ints; got {target!r}")
    raise TypeError(f"target must be one of: {_ACCEPTED_TARGETS}; got {_describe(target)}")


def normalize_additional_args(args: Any, batch: int) -> tuple[tuple[Any, ...], tuple[bool, ...]]:
    """``(args_tuple, per_example_flags)``: a tensor with dim 0 equal to the batch is repeated along the path."""
    if args is None:
        return (), ()
    args = args if isinstance(args, tuple) else (args,)
    flags = []
    for i, a in enumerate(args):
        if isinstance(a, Tensor) and a.dim() > 0:
            if a.shape[0] != batch:
                raise ValueError(
                    f"additional_forward_args[{i}] is a tensor of shape {tuple(a.shape)}; a tensor argument must "
                    f"have one row per example (dim 0 = {batch}). Wrap constants that are not per-example in a "
                    "non-tensor object or make them 0-d"
                )
            flags.append(True)
        else:
            flags.append(False)
    return args, tuple(flags)


def select_rows(args: tuple[Any, ...], per_example: Sequence[bool], rows: Tensor) -> tuple[Any, ...]:
    """Additional arguments for a chunk of path rows: per-example tensors indexed by the rows' examples."""
    return tuple(a.index_select(0, rows.to(a.device)) if flag else a for a, flag in zip(args, per_example))


def model_output(output: Any) -> Any:
    """The tensor a model's output stands for: the output itself, or the ``.logits`` tensor of an output object (as
    transformers' models return); anything else unchanged."""
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    return logits if isinstance(logits, Tensor) else output


def check_output(output: Any, rows: int) -> Tensor:
    output = model_output(output)
    if not isinstance(output, Tensor):
        raise TypeError(
            f"forward_func must return a torch.Tensor (one row per example) or an object with a .logits tensor; it "
            f"returned {_describe(output)}. Wrap the model so that it returns the tensor to attribute"
        )
    if output.dim() == 0 or output.shape[0] != rows:
        raise ValueError(
            f"forward_func returned shape {tuple(output.shape)} for a batch of {rows} rows; its output must keep the "
            "batch as dimension 0"
        )
    return output
