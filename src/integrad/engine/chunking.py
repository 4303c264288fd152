"""Chunking: how many path rows go into one forward pass, under a row count or a memory budget.

A memory budget is parsed from bytes or a string (``"256MiB"``), or defaults to a share of the device's free memory.
A chunk's memory is dominated by the activations autograd saves for the backward pass. They are counted as they
are saved (``torch.autograd.graph.saved_tensors_hooks``), so a chunk that would exceed the budget is stopped during
its forward pass, before the backward pass would have doubled the footprint. An allocation failure halves the chunk.
"""

from __future__ import annotations

import numbers
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "k": 2**10,
    "m": 2**20,
    "g": 2**30,
    "t": 2**40,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}

#: Beyond these sizes bigger chunks stop buying speed, so the automatic budget is capped there.
DEFAULT_CAP = {"cpu": 256 * 2**20, "cuda": 4 * 2**30}


#: The first chunk's points (with their gradients and weighted copy) take at most this fraction of the budget.
FIRST_CHUNK_SHARE = 64


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

    def __enter__(self) -> ActivationMeter:
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


@dataclass
class Chunking:
    """How many path rows go into one forward pass: a fixed count, or what a byte budget allows.

    A size that ran out of memory is never tried again in the same call: it caps every later chunk.
    """

    rows: int | None = None
    budget: int | None = None
    cap: int | None = None
    over_budget_row: bool = False
    #: Bytes per row, measured by this call's first chunk or by an earlier call on rows of the same shapes. Once it
    #: is known, chunks are sized from it and run without the meter.
    row_cost: float | None = None
    #: Rows per chunk beyond which chunks ran slower per row on this device (see :class:`RowShapeMemory`).
    speed_cap: int | None = None
    #: Memory for the points of fixed-rule chunks, one tensor per path input, kept between calls (see
    #: :class:`RowShapeMemory`).
    point_buffers: list | None = None
    #: The probe gets copies of the points: the model writes into them (an in-place operation on its input or on a
    #: replaced layer value), which autograd forbids on the points themselves.
    copy_points: bool = False
    stats: dict = field(
        default_factory=lambda: {"rows": 0, "chunk_rows": 0, "chunks": 0, "seconds": 0.0, "metered": 0, "step": None}
    )

    @classmethod
    def make(cls, internal_batch_size: int | None, memory_budget: int | str | None, device: torch.device) -> Chunking:
        if internal_batch_size is not None and memory_budget is not None:
            raise ValueError(
                "give either internal_batch_size (rows per forward pass) or memory_budget (bytes), not both"
            )
        if internal_batch_size is not None:
            return cls(rows=internal_batch_size)
        budget = parse_bytes(memory_budget) if memory_budget is not None else default_budget(device)
        return cls(budget=budget)

    def fresh(self) -> Chunking:
        """The same settings, memory cap and way of handing points over, with nothing counted yet."""
        return Chunking(rows=self.rows, budget=self.budget, cap=self.cap, copy_points=self.copy_points)

    def limit(self, size: int) -> int:
        for bound in (self.rows, self.cap, self.speed_cap):
            if bound is not None:
                size = min(size, bound)
        return max(1, size)

    def first_size(self, total: int, row_bytes: int, step: int | None) -> int:
        if self.rows is not None:
            return self.limit(total)
        if self.row_cost:
            return self.spread(total, self.fits(), step)
        # Nothing is known yet about how much a row's activations take, and a chunk stopped by the meter has
        # already allocated its latest activation: the first chunk's points take at most 1/64 of the budget, and
        # later chunks are sized from what the first one measured.
        return whole_steps(self.limit(min(total, self.budget // max(1, FIRST_CHUNK_SHARE * 3 * row_bytes))), step)

    def spread(self, remaining: int, fits: int, step: int | None) -> int:
        """Chunk size that covers ``remaining`` rows evenly in as few chunks of at most ``fits`` rows as possible,
        in whole steps of the batch where a step fits."""
        fits = self.limit(fits)
        even = -(-remaining // -(-remaining // fits))
        if step and even >= step:
            even = -(-even // step) * step if -(-even // step) * step <= fits else even - even % step
        return self.limit(even)

    def fits(self) -> int:
        """Rows whose measured cost fits the budget."""
        return int(self.budget / self.row_cost)

    def measured(self, rows: int, used: int) -> None:
        """Record what a chunk of ``rows`` rows was measured to take."""
        self.row_cost = max(self.row_cost or 0.0, used / rows)

    def out_of_memory(self, size: int) -> int:
        self.cap = max(1, size // 2)
        return self.cap

    def warn_single_row(self, used: int) -> None:
        self.over_budget_row = True
        warnings.warn(
            f"memory_budget={self.budget} bytes is smaller than one path row needs (about {used} bytes); rows are "
            "evaluated one at a time, beyond the budget",
            RuntimeWarning,
            stacklevel=5,
        )

    def record(self, rows: int) -> None:
        self.stats["rows"] += rows
        self.stats["chunks"] += 1
        self.stats["chunk_rows"] = max(self.stats["chunk_rows"], rows)


def run_chunked(fn: Callable[[slice], object], total: int, chunking: Chunking, size: int | None = None) -> list:
    """``[fn(rows) for consecutive row slices]`` without gradients, halving the slices on allocation failures."""
    results = []
    size = chunking.limit(size or total)
    pos = 0
    while pos < total:
        n = min(size, total - pos)
        try:
            results.append(fn(slice(pos, pos + n)))
        except Exception as error:
            if n > 1 and is_out_of_memory(error):
                size = chunking.out_of_memory(n)
                continue
            raise
        pos += n
    return results


def whole_steps(size: int, tile: int | None) -> int:
    """Round a chunk size down to whole steps of the batch when it holds at least one."""
    return size - size % tile if tile and size >= tile else size
