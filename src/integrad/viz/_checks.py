"""Argument checks shared by every picture: arrays, signs, percentiles, numbers, labels and score vectors.

Each check lives here once, so that every drawing function refuses the same bad value with the same message,
which names the parameter and says what it accepts. Nothing here needs matplotlib.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from ..arguments import check_real_in, is_int

ArrayLike = torch.Tensor | np.ndarray | Sequence[float]

SIGNS = ("all", "positive", "negative", "absolute")


def as_array(value: Any, name: str) -> np.ndarray:
    """A float64 copy of a tensor, array or nested sequence of numbers, never sharing the caller's memory."""
    accepted = f"{name} must be a torch.Tensor, numpy.ndarray or sequence of numbers"
    if isinstance(value, torch.Tensor):
        if value.is_complex():
            raise TypeError(f"{name} must be real-valued; got a complex tensor")
        # Convert in torch (numpy has no bfloat16), then copy: for a CPU float64 tensor
        # .to() is a no-op and .numpy() would share the caller's memory.
        return value.detach().to(device="cpu", dtype=torch.float64).numpy().copy()
    if isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"{accepted}; got {type(value).__name__}")
    try:
        array = np.array(value, copy=True)
    except Exception as exc:  # ragged sequences and other oddities
        raise TypeError(f"{accepted}; got {type(value).__name__}") from exc
    if array.dtype.kind == "c":
        raise TypeError(f"{name} must be real-valued; got a complex array")
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{accepted}; got an array of dtype {array.dtype}")
    return array.astype(np.float64, copy=False)


def is_integer_data(value: Any) -> bool:
    """Whether a tensor or array holds integers (an image in 0…255 rather than in [0, 1])."""
    if isinstance(value, torch.Tensor):
        return not (value.is_floating_point() or value.is_complex())
    return isinstance(value, np.ndarray) and value.dtype.kind in "iu"


def check_finite(array: np.ndarray, name: str, allow_empty: bool = False) -> None:
    """Refuse NaN and infinite values, and (unless ``allow_empty``) an empty array."""
    if array.size == 0 and not allow_empty:
        raise ValueError(f"{name} must not be empty; got shape {tuple(array.shape)}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")


def check_sign(sign: Any) -> str:
    """``sign`` as one of :data:`SIGNS`."""
    if not isinstance(sign, str) or sign not in SIGNS:
        raise ValueError(f"sign must be one of {', '.join(repr(s) for s in SIGNS)}; got {sign!r}")
    return sign


def check_percentile(clip_percentile: Any) -> float:
    """``clip_percentile`` as a float in (0, 100]."""
    return check_real_in(
        "clip_percentile", clip_percentile, "a number in (0, 100] (100 = no clipping)", lambda v: 0.0 < v <= 100.0
    )


def check_int(value: Any, name: str, minimum: int, below: int | None = None) -> int:
    """``value`` as an int (not a bool) with ``minimum <= value``, and ``value < below`` when ``below`` is given."""
    accepted = f"an integer >= {minimum}" if below is None else f"an integer in [{minimum}, {below})"
    if not is_int(value) or value < minimum or (below is not None and value >= below):
        raise ValueError(f"{name} must be {accepted}; got {value!r}")
    return int(value)


def check_labels(
    value: Any, name: str, what: str, count: int | None = None, *, at_least: bool = False
) -> list[str] | None:
    """Titles or names: None, or any iterable but a single string, as a list of str.

    ``what`` completes the sentence "``name`` must be a sequence of ...". With ``count``, exactly that many
    labels are needed, or at least that many with ``at_least``.
    """
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ValueError(f"{name} must be a sequence of {what}; got {type(value).__name__} {value!r}")
    labels = [str(label) for label in value]
    if count is not None and (len(labels) < count if at_least else len(labels) != count):
        needed = f"at least {count}" if at_least else str(count)
        raise ValueError(f"{name} must be a sequence of {what}; {needed} needed, got {len(labels)}: {labels!r}")
    return labels


def as_scores(scores: Any, name: str, symbol: str, hint: str = "") -> np.ndarray:
    """One score per token or feature, shape ``(T,)`` or ``(1, T)``, as a float64 vector.

    ``symbol`` names the length in the error (``T``, ``F``); ``hint`` is added to it.
    """
    values = as_array(scores, name)
    if values.ndim == 2 and values.shape[0] == 1:
        values = values[0]
    if values.ndim != 1:
        raise ValueError(f"{name} must have shape ({symbol},) or (1, {symbol}); got {tuple(values.shape)}{hint}")
    return values
