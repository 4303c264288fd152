"""Memory budgets: parsing, the default budget, and measuring what a chunk of path rows keeps alive.

A chunk's memory is dominated by the activations autograd saves for the backward pass. They are counted as they
are saved (``torch.autograd.graph.saved_tensors_hooks``), so a chunk that would exceed the budget is stopped during
its forward pass, before the backward pass would have doubled the footprint.
"""

from __future__ import annotations

import numbers
import re
import time

import torch
from torch import Tensor

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}

#: Beyond these sizes bigger chunks stop buying speed, so the automatic budget is capped there.
DEFAULT_CAP = {"cpu": 256 * 2**20, "cuda": 4 * 2**30}


def parse_bytes(value: int | str, name: str = "memory_budget") -> int:
    """Bytes from an int or a string such as ``"256MiB"``, ``"1.5 GB"`` or ``"512k"`` (k/M/G alone are binary)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number of bytes or a string such as '256MiB'; got a bool")
    if isinstance(value, numbers.Integral):
        amount = int(value)
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", value)
        if not match or match.group(2).lower() not in _UNITS:
            raise ValueError(
                f"{name} must be a number of bytes or a string like '256MiB', '2GB' or '512k'; got {value!r}"
            )
        amount = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    else:
        raise TypeError(f"{name} must be a number of bytes or a string such as '256MiB'; got {type(value).__name__}")
    if amount <= 0:
        raise ValueError(f"{name} must be positive; got {value!r}")
    return amount


def _read_available(device: torch.device) -> int:
    """Free memory of the device holding the inputs (CUDA: driver's free memory; CPU: MemAvailable)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 2**30


def default_budget(device: torch.device) -> int:
    """A quarter of the free memory, capped where larger chunks no longer run faster.

    The free memory is read at most once a second per device: calls in a loop must not pay for it each time.
    """
    now = time.monotonic()
    cached = _DEFAULT_BUDGETS.get(device)
    if cached is not None and now - cached[0] < 1.0:
        return cached[1]
    cap = DEFAULT_CAP.get(device.type, DEFAULT_CAP["cpu"])
    budget = max(16 * 2**20, min(_read_available(device) // 4, cap))
    _DEFAULT_BUDGETS[device] = (now, budget)
    return budget


_DEFAULT_BUDGETS: dict[torch.device, tuple[float, int]] = {}


class BudgetExceeded(Exception):
    """Raised during a chunk's forward pass when its saved activations pass the budget."""

    def __init__(self, used: int):
        super().__init__(used)
        self.used = used


class ActivationMeter:
    """Counts the bytes autograd saves during a forward pass, once per storage, and stops it over ``limit``.

    The estimate of the chunk's peak is ``fixed + saved + 2 × largest`` : what stays saved, plus the gradient of the
    largest activation and its neighbour alive together during the backward pass.
    """

    def __init__(self, limit: int | None, rows: int, fixed: int = 0):
        self.limit = limit
        self.rows = rows
        self.fixed = fixed
        self.saved = 0
        self.largest = 0
        self._storages: set[int] = set()
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)

    @property
    def estimate(self) -> int:
        return self.fixed + self.saved + 2 * self.largest

    def _pack(self, tensor: Tensor) -> Tensor:
        # Parameters (and views of them, such as a transposed weight) do not grow with the chunk. What does: tensors
        # computed from the path points (they require grad) and per-row bookkeeping such as pooling indices.
        base = tensor if tensor._base is None else tensor._base
        is_parameter = base.is_leaf and base.requires_grad
        grows = tensor.requires_grad or (tensor.dim() > 0 and tensor.shape[0] == self.rows)
        if grows and not is_parameter:
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if key not in self._storages:
                self._storages.add(key)
                size = storage.nbytes()
                self.saved += size
                self.largest = max(self.largest, size)
                if self.limit is not None and self.estimate > self.limit:
                    raise BudgetExceeded(self.estimate)
        return tensor

    def __enter__(self) -> "ActivationMeter":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


def _unpack(tensor: Tensor) -> Tensor:
    return tensor


def is_out_of_memory(error: BaseException) -> bool:
    """True for allocation failures (CUDA or CPU), which a smaller chunk may avoid."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    if isinstance(error, (RuntimeError, MemoryError)):
        text = str(error)
        return isinstance(error, MemoryError) or "out of memory" in text or "can't allocate memory" in text
    return False
