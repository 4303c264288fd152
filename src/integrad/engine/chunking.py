"""Chunking: how many path rows go into one forward pass, under a row count or a memory budget.

A memory budget is parsed from bytes or a string (``"256MiB"``), or defaults to a share of the device's free memory.
A chunk's memory is the path points, the activations autograd saves for the backward pass, and the gradients the
backward pass makes. The first chunk is measured (:class:`ActivationMeter`): saved tensors as they are saved
(``torch.autograd.graph.saved_tensors_hooks``), so that a chunk that would exceed the budget is stopped during its
forward pass, before the backward pass would have doubled the footprint; the backward pass through hooks on the
graph's nodes. Later chunks are sized from what it held at most. An allocation failure halves the chunk.

The budget bounds the tensors a call allocates. The resident memory of a CPU process follows them when the
allocator hands freed memory back; glibc keeps blocks below its mapping threshold, which it raises up to 32 MiB
as large blocks are freed, and the memory freed at the top of its heap up to twice that, so a process may hold more
(``benchmarks/budget.py`` measures both ways).
"""

from __future__ import annotations

import numbers
import os
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

#: The free memory assumed where neither the device nor ``/proc/meminfo`` says (4 GiB).
ASSUMED_AVAILABLE = 4 * 2**30
#: The least default budget (16 MiB), however little memory is free.
MIN_DEFAULT_BUDGET = 16 * 2**20
#: How many tensors the size of the points' gradients the reduction of a chunk holds at most.
GRADIENT_COPIES = 3

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
    return ASSUMED_AVAILABLE


def default_budget(device: torch.device) -> int:
    """A quarter of the free memory, capped where larger chunks no longer run faster.

    The free memory is read at most once a second per device: calls in a loop must not pay for it each time.
    """
    now = time.monotonic()
    cached = _DEFAULT_BUDGETS.get(device)
    if cached is not None and now - cached[0] < 1.0:
        return cached[1]
    cap = DEFAULT_CAP.get(device.type, DEFAULT_CAP["cpu"])
    budget = max(MIN_DEFAULT_BUDGET, min(_read_available(device) // 4, cap))
    _DEFAULT_BUDGETS[device] = (now, budget)
    return budget


_DEFAULT_BUDGETS: dict[torch.device, tuple[float, int]] = {}


class BudgetExceeded(Exception):
    """Raised during a chunk's forward pass when its saved activations pass the budget."""

    def __init__(self, used: int):
        super().__init__(used)
        self.used = used


class ActivationMeter:
    """The memory of one chunk's forward and backward pass, counted in the bytes of the tensors that grow with it.

    **Forward.** The tensors autograd saves are counted as they are saved, once per storage
    (``torch.autograd.graph.saved_tensors_hooks``); parameters, and views of them such as a transposed weight, are
    not. While the pass runs, the chunk is forecast to need ``fixed + saved + 2 × largest`` (what stays saved, and
    the gradient of the largest activation with its neighbour's, alive together in the backward pass); past
    ``limit`` the pass is stopped with :class:`BudgetExceeded`, before the backward pass would have doubled it.

    **Backward.** Hooks on the nodes of the graph (:meth:`watch`) follow what the backward pass holds: the saved
    tensors not yet released (a node releases what it saved once it has run), and the gradients alive (those a node
    produced, until the node that receives them has run; the gradients of the points stay). Their largest sum is the
    backward pass's peak.

    :attr:`used`, once the pass is over, is what the chunk held at most: ``fixed`` (the points), plus the larger of
    the forward's end (all saved tensors and one activation being made) and the backward's peak, plus the largest
    saved tensor again for what no hook sees (a kernel's workspace, a gradient being summed into another). Three
    copies of the points' gradients (in the accumulation dtype) bound the reduction that follows.

    On a CUDA ``device`` the allocator's own count takes part besides: its high-water mark is read (never reset)
    when the meter is made and once the chunk is over; where the chunk raised it, the chunk's true peak is the new
    mark less what was allocated at the start, workspaces of kernels included, and :attr:`used` is at least that.
    On the CPU the process's resident memory takes its place: what it grew by during the chunk shows what the
    allocator kept besides the tensors (glibc's heaps and arenas keep freed blocks, which the user's process peak
    includes), counted up to ``ALLOCATOR_SHARE_CAP`` times the tensors' bytes (a first call's growth also holds
    one-time costs that later chunks do not repeat).

    Every hook runs outside compiled code (``torch.compiler.disable``): the forward of a compiled model calls the
    pack hook, and dynamo would otherwise trace the meter into the model's graph.
    """

    def __init__(self, limit: int | None, rows: int, fixed: int = 0, device: torch.device | None = None):
        self.limit = limit
        self.rows = rows
        self.fixed = fixed
        self._cuda = device if device is not None and device.type == "cuda" else None
        self._allocated = self._high_water = 0
        if self._cuda is not None:
            self._allocated = torch.cuda.memory_allocated(self._cuda)
            self._high_water = torch.cuda.max_memory_allocated(self._cuda)
        # On the CPU the process's resident memory shows what the allocator kept for the chunk besides its tensors
        # (glibc holds freed blocks in its heaps and arenas): what the user sees of a budget.
        self._resident = resident_bytes() if self._cuda is None else None
        self._raised = 0
        self._resident_grown = 0
        self.saved = 0
        self.largest = 0
        #: Storage (by address) -> [bytes, saved references not yet unpacked by the backward pass].
        self._storages: dict[int, list[int]] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._backward: _BackwardTally | None = None
        self._gradient_bytes = 0

    @property
    def estimate(self) -> int:
        """The forecast of the chunk's peak from its forward pass so far."""
        return self.fixed + self.saved + 2 * self.largest

    @property
    def counted(self) -> int:
        """The bytes of the tensors the chunk held at most, from its whole forward and backward pass."""
        held = self.saved + self.largest
        if self._backward is not None:
            held = max(held, self._backward.peak + self.largest)
        # The reduction holds the points' gradients and up to two temporaries of their size (a cast, a weighted copy).
        return self.fixed + max(held, GRADIENT_COPIES * self._gradient_bytes)

    @property
    def used(self) -> int:
        """What the chunk held at most (see the class docstring): its tensors, or what the device's allocator shows
        it took, where that is more."""
        counted = self.counted
        return max(counted, self._raised, int(min(self._resident_grown, ALLOCATOR_SHARE_CAP * counted)))

    @torch.compiler.disable
    def _pack(self, tensor: Tensor) -> Tensor:
        # Parameters (and views of them, such as a transposed weight) do not grow with the chunk. What does: tensors
        # computed from the path points (they require grad) and per-row bookkeeping such as pooling indices.
        base = tensor if tensor._base is None else tensor._base
        is_parameter = base.is_leaf and base.requires_grad
        grows = tensor.requires_grad or (tensor.dim() > 0 and tensor.shape[0] == self.rows)
        if grows and not is_parameter:
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            entry = self._storages.get(key)
            if entry is not None:
                entry[1] += 1
                return tensor
            size = storage.nbytes()
            self._storages[key] = [size, 1]
            self.saved += size
            self.largest = max(self.largest, size)
            if self.limit is not None and self.estimate > self.limit:
                raise BudgetExceeded(self.estimate)
        return tensor

    @torch.compiler.disable
    def _unpack(self, tensor: Tensor) -> Tensor:
        if self._backward is not None:
            self._backward.unpacked(tensor.untyped_storage().data_ptr(), self._storages)
        return tensor

    def watch(self, output: Tensor, points: tuple[Tensor, ...]) -> None:
        """Follow the backward pass from ``output`` to ``points`` (call after the forward, before the backward)."""
        if output.grad_fn is not None:
            self._backward = _BackwardTally(output.grad_fn, points, self.saved)

    def gradients(self, grads: list[Tensor]) -> None:
        """Record the points' gradients (in the accumulation dtype) that the reduction will take; the chunk's passes
        are over."""
        self._gradient_bytes = sum(g.numel() * g.element_size() for g in grads)
        if self._cuda is not None:
            high_water = torch.cuda.max_memory_allocated(self._cuda)
            if high_water > self._high_water:
                self._raised = high_water - self._allocated
        elif self._resident is not None:
            # The points were made before the meter began; their bytes count as the fixed part. The allocator's
            # share is capped at what the tensors held: a first call's growth also holds one-time costs (lazily
            # loaded kernels, thread pools) that later chunks do not repeat.
            grown = (resident_bytes() or 0) - self._resident
            self._resident_grown = self.fixed + grown

    def __enter__(self) -> ActivationMeter:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


#: On the CPU, the most a chunk's resident memory is taken to exceed what its tensors held, as a multiple of them
#: (glibc's heaps and arenas keep freed blocks; measured up to about 1.9x on a CNN under default settings).
ALLOCATOR_SHARE_CAP = 2.0


def resident_bytes() -> int | None:
    """The process's resident memory in bytes (Linux ``/proc/self/statm``), or None where it cannot be read."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * _PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return None


_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _storage_bytes(tensors) -> int:
    """Bytes of the distinct storages among ``tensors`` (None skipped): views of one storage count once."""
    seen: dict[int, int] = {}
    for t in tensors:
        if t is not None:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


class _BackwardTally:
    """What a backward pass holds, followed through hooks on every node that leads to the points.

    A node runs with the saved tensors not yet released, the gradients still waiting to be consumed and the
    gradients it produces all alive; after it has run, the gradients it received are freed, and so are the saved
    tensors whose last reference it unpacked. Gradients sent to a node that never runs (a parameter's) are freed at
    once; those of the points are kept (they are the result).
    """

    def __init__(self, root, points: tuple[Tensor, ...], saved: int):
        self.saved = saved
        self.alive = 0
        self.peak = saved
        self.pending: dict = {}
        self.released: list[int] = []
        self.runs, self.kept = _nodes_to(root, points)
        for node in self.runs:
            node.register_prehook(self._received(node))
            node.register_hook(self._ran(node))

    def unpacked(self, key: int, storages: dict[int, list[int]]) -> None:
        entry = storages.get(key)
        if entry is not None and entry[1] > 0:
            entry[1] -= 1
            if entry[1] == 0:
                self.released.append(entry[0])

    def _received(self, node):
        @torch.compiler.disable
        def hook(grad_outputs):
            # What arrived (summed, where several nodes sent gradients here) replaces what was sent.
            self.alive += _storage_bytes(grad_outputs) - self.pending.pop(node, 0)

        return hook

    def _ran(self, node):
        @torch.compiler.disable
        def hook(grad_inputs, grad_outputs):
            produced = _storage_bytes(grad_inputs)
            self.peak = max(self.peak, self.saved + self.alive + produced)
            self.alive -= _storage_bytes(grad_outputs)
            for (target, _), g in zip(node.next_functions, grad_inputs):
                if g is not None and target is not None and (target in self.runs or target in self.kept):
                    size = g.untyped_storage().nbytes()
                    self.pending[target] = self.pending.get(target, 0) + size
                    self.alive += size
            self.saved -= sum(self.released)
            self.released.clear()

        return hook


def _nodes_to(root, points: tuple[Tensor, ...]) -> tuple[set, set]:
    """The nodes of the graph under ``root`` from which a point can be reached (those the backward pass runs), and
    the points' own accumulation nodes (where the gradients that are kept arrive)."""
    targets = {id(p) for p in points}
    reaches: dict = {root: False}
    kept: set = set()
    stack = [(root, iter(root.next_functions))]
    while stack:  # depth first: a node is settled once all its children are
        node, children = stack[-1]
        for child, _ in children:
            if child is not None and child not in reaches:
                reaches[child] = False
                stack.append((child, iter(child.next_functions)))
                break
        else:
            stack.pop()
            variable = getattr(node, "variable", None)
            if variable is not None and id(variable) in targets:
                kept.add(node)
                reaches[node] = True
            else:
                reaches[node] = any(c is not None and reaches[c] for c, _ in node.next_functions)
    return {node for node, reached in reaches.items() if reached and node not in kept}, kept


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
    #: Bytes the caller keeps alive through the evaluation besides the chunks (the gradients ``n_steps="auto"``
    #: keeps between rounds): the chunks get what is left of the budget.
    held: int = 0
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

    @property
    def room(self) -> int:
        """The bytes a chunk may take: the budget less what the caller holds, but at least a quarter of it (a caller
        holding more has passed the budget already; chunks of a few rows would only make it slower)."""
        return max(self.budget - self.held, self.budget // 4)

    def first_size(self, total: int, row_bytes: int, step: int | None) -> int:
        if self.rows is not None:
            return self.limit(total)
        if self.row_cost:
            return self.spread(total, self.fits(), step)
        # Nothing is known yet about how much a row's activations take, and a chunk stopped by the meter has
        # already allocated its latest activation: the first chunk's points take at most 1/64 of the budget, and
        # later chunks are sized from what the first one measured.
        return whole_steps(self.limit(min(total, self.room // max(1, FIRST_CHUNK_SHARE * 3 * row_bytes))), step)

    def spread(self, remaining: int, fits: int, step: int | None) -> int:
        """Chunk size that covers ``remaining`` rows evenly in as few chunks of at most ``fits`` rows as possible,
        in whole steps of the batch where a step fits."""
        fits = self.limit(fits)
        even = -(-remaining // -(-remaining // fits))
        if step and even >= step:
            even = -(-even // step) * step if -(-even // step) * step <= fits else even - even % step
        return self.limit(even)

    def fits(self) -> int:
        """Rows whose measured cost fits the budget (what the caller does not hold of it)."""
        return int(self.room / self.row_cost)

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
