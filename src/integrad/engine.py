"""The engine: weighted sums of probe gradients at points on a straight path, in chunks that fit a memory budget.

For a path from ``start`` to ``end`` (one row per example) and a list of path rows ``(example, α, weights)``, the
engine evaluates ``∇_z probe(z)`` at ``z = start + α (end − start)`` for every row and adds ``weight × gradient`` to
the row's bucket (its example for a fixed rule, its sub-interval for adaptive quadrature). Rows are evaluated in
chunks: a fixed number of rows (``internal_batch_size``), or as many as a memory budget allows, measured while the
chunk runs. An allocation failure halves the chunk and retries it. One forward and one backward run per chunk.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from .memory import ActivationMeter, BudgetExceeded, default_budget, is_out_of_memory, parse_bytes
from .rules import alphas_and_weights

#: The first chunk's points (with their gradients and weighted copy) take at most this fraction of the budget.
FIRST_CHUNK_SHARE = 64
#: A smaller chunk size is kept when it runs at least this much faster per row, timed over this many calls.
SPEED_GAIN = 0.05
SPEED_TRIALS = 3
#: Chunks are not made smaller than this for speed (per-chunk overhead dominates below it).
SPEED_MIN_ROWS = 16
#: The memory of a fixed rule's chunk points is kept for the next call on rows of the same shapes up to this size
#: (it is never more than a chunk's share of the memory budget).
POINTS_KEPT_BYTES = 64 * 2**20

Probe = Callable[[tuple[Tensor, ...], Tensor], Tensor]
"""``probe(points, examples) -> Tensor[rows]``: the scalar differentiated at each path row."""


@dataclass
class IntegrationReport:
    """How an attribution was computed; available as ``method.last_report`` after each ``attribute`` call.

    It describes the call's last integration: for ``NoiseTunnel``, the wrapped method's last call (the last
    ``nt_samples_batch_size`` copies); for ``LayerIntegratedGradients`` on layers that feed each other and are
    integrated one after the other, the last of them (while the delta ``attribute`` returns is the first's).

    Attributes
    ----------
    steps : Tensor
        Path points used for each example (``n_steps`` for a fixed rule; chosen per example with ``"auto"``).
    error_estimate : Tensor or None
        With ``n_steps="auto"``: the estimated relative L1 error ``|A − A*|₁ / |A*|₁`` of each example's
        attributions. None for fixed rules.
    rows : int
        Model rows evaluated with gradients (forward + backward), all chunks together.
    chunk_rows : int
        The largest number of rows evaluated in one forward pass.
    chunks : int
        Forward/backward passes run.
    delta : Tensor or None
        Per-example convergence delta ``Σ attributions − (F(x) − F(x′))`` when it was computed.
    """

    steps: Tensor
    error_estimate: Tensor | None = None
    rows: int = 0
    chunk_rows: int = 0
    chunks: int = 0
    delta: Tensor | None = None


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
    stats: dict = field(default_factory=lambda: {"rows": 0, "chunk_rows": 0, "chunks": 0, "seconds": 0.0,
                                                 "metered": 0, "step": None})

    @classmethod
    def make(cls, internal_batch_size: int | None, memory_budget: int | str | None, device: torch.device) -> "Chunking":
        if internal_batch_size is not None and memory_budget is not None:
            raise ValueError(
                "give either internal_batch_size (rows per forward pass) or memory_budget (bytes), not both"
            )
        if internal_batch_size is not None:
            return cls(rows=internal_batch_size)
        budget = parse_bytes(memory_budget) if memory_budget is not None else default_budget(device)
        return cls(budget=budget)

    def fresh(self) -> "Chunking":
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
        return _whole_steps(self.limit(min(total, self.budget // max(1, FIRST_CHUNK_SHARE * 3 * row_bytes))), step)

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
            "evaluated one at a time, beyond the budget", RuntimeWarning, stacklevel=5,
        )

    def report(self, steps: Tensor, error_estimate: Tensor | None = None) -> IntegrationReport:
        return IntegrationReport(steps=steps, error_estimate=error_estimate, rows=self.stats["rows"],
                                 chunk_rows=self.stats["chunk_rows"], chunks=self.stats["chunks"])

    def record(self, rows: int) -> None:
        self.stats["rows"] += rows
        self.stats["chunks"] += 1
        self.stats["chunk_rows"] = max(self.stats["chunk_rows"], rows)


@dataclass
class RowShapeMemory:
    """What earlier calls learned about path rows of one shape, under one memory budget: their memory cost, the chunk
    size that ran fastest, and the memory of the last call's points.

    Past a size, bigger chunks run slower per row on a CPU: their activations no longer fit the caches, and large
    allocations cost page faults. Once calls run unmetered, the size they ran at is compared with half of it: calls
    alternate between the two until each has run ``SPEED_TRIALS`` times (the very first unmetered call, in a process
    still warming up, is not compared), and the half is kept when its fastest call
    was at least ``SPEED_GAIN`` faster per row than the other's (alternating keeps a trend in the machine's speed,
    such as a process warming up, from favouring either). Halving goes on while it is, down to ``SPEED_MIN_ROWS``
    rows or one step of the batch; at the first size that is not, the best size is kept for good. Only CPU calls
    sized by a budget take part (a CUDA call's wall time is not its kernels' time).
    """

    row_cost: float | None = None
    cap: int | None = None
    best_cap: int | None = None
    candidate: int | None = None
    settled: bool = False
    rates: dict = field(default_factory=dict)
    point_buffers: list | None = None
    #: The cap the current call was given (its chunks may be smaller: rows are spread evenly over them).
    asked: int | None = None
    copy_points: bool = False

    def apply(self, chunking: Chunking) -> None:
        chunking.row_cost = self.row_cost
        chunking.speed_cap = self.asked = self.cap
        chunking.point_buffers, self.point_buffers = self.point_buffers, None
        chunking.copy_points = chunking.copy_points or self.copy_points

    def learn(self, chunking: Chunking, device: torch.device) -> None:
        if chunking.row_cost:
            self.row_cost = chunking.row_cost
        self.copy_points = chunking.copy_points
        # The chunk points' memory is kept for the next call while it is small: a fresh allocation that large is
        # often handed out as new pages, each mapped on first touch, which costs as much as a small model's layer.
        buffers = chunking.point_buffers
        if buffers is not None:
            held = sum(b.numel() * b.element_size() for b in buffers if b is not None)
            if held <= POINTS_KEPT_BYTES:
                self.point_buffers = buffers
            chunking.point_buffers = None
        stats = chunking.stats
        if (self.settled or chunking.budget is None or device.type != "cpu" or stats["metered"]
                or not stats["rows"]):
            return
        step = stats["step"] or 1
        if self.best_cap is None:
            # The size the budget gives is the first best. This call's time is not compared: the first calls of a
            # process (new buffers, pages touched for the first time) are slower, which would favour the half.
            self.best_cap = stats["chunk_rows"]
            self._propose(step)
            return
        size = self.asked
        if size not in (self.best_cap, self.candidate) or stats["rows"] < size:
            return  # a call too small to use the size it was given says nothing about it
        self.rates.setdefault(size, []).append(stats["seconds"] / stats["rows"])
        best, half = self.rates.get(self.best_cap, []), self.rates.get(self.candidate, [])
        if len(best) >= SPEED_TRIALS and len(half) >= SPEED_TRIALS:
            if min(half) < min(best) * (1 - SPEED_GAIN):
                self.best_cap = self.candidate
                self.rates = {}
                self._propose(step)
            else:
                self.settled, self.cap, self.rates = True, self.best_cap, {}
                return
        if not self.settled:
            # The size with fewer timed calls runs next; on a tie, the one that did not just run.
            best, half = self.rates.get(self.best_cap, []), self.rates.get(self.candidate, [])
            fewer = len(half) < len(best) or (len(half) == len(best) and size != self.candidate)
            self.cap = self.candidate if fewer else self.best_cap

    def _propose(self, step: int) -> None:
        """Half the best size as the next candidate, or settle where it would be too small."""
        half = self.best_cap // 2 - (self.best_cap // 2) % step
        if half >= max(step, SPEED_MIN_ROWS):
            self.candidate = self.cap = half
        else:
            self.settled, self.cap, self.candidate = True, self.best_cap, None


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


def moved(t: Tensor, device: torch.device, dtype: torch.dtype | None = None) -> Tensor:
    """``t.to(device, dtype)``, skipping the call (and its argument parsing) when ``t`` already is."""
    if t.device == device and (dtype is None or t.dtype == dtype):
        return t
    return t.to(device=device, dtype=dtype)


def _compute_dtype(start: tuple[Tensor, ...]) -> torch.dtype:
    """Path points are formed in float64 for float64 inputs, else in float32 (then cast to the input's dtype)."""
    return torch.float64 if any(s.dtype == torch.float64 for s in start) else torch.float32


def _point_rows(start: tuple[Tensor, ...], delta: tuple[Tensor, ...], examples: Tensor, alphas: Tensor
                ) -> tuple[Tensor, ...]:
    """``start + α · delta`` for each row; ``examples`` and ``alphas`` already on the device, in compute dtype."""
    points = []
    for s, d in zip(start, delta):
        a = alphas.view((-1,) + (1,) * (s.dim() - 1))
        z = torch.addcmul(s.index_select(0, examples).to(a.dtype), a, d.index_select(0, examples).to(a.dtype))
        points.append(z if z.dtype == s.dtype else z.to(s.dtype))
    return tuple(points)


def _tiled_points(start_c: tuple[Tensor, ...], delta_c: tuple[Tensor, ...], alphas: Tensor,
                  dtypes: list[torch.dtype], chunking: Chunking) -> tuple[Tensor, ...]:
    """Points for whole steps of the batch (row ``k·B + b`` is example ``b`` at ``alphas[k]``), by broadcasting.

    Points in their input's dtype are written into ``chunking.point_buffers`` where those hold enough rows (else
    new ones are made there), so that repeated calls reuse memory whose pages are already mapped.
    """
    points = []
    steps = alphas.shape[0]
    buffers = chunking.point_buffers
    if buffers is not None and len(buffers) != len(start_c):
        buffers = chunking.point_buffers = None
    for j, (s, d, dt) in enumerate(zip(start_c, delta_c, dtypes)):
        a = alphas.view((-1, 1) + (1,) * (s.dim() - 1))
        rows = steps * s.shape[0]
        if s.dtype != dt:  # formed in a wider dtype than the input's, then cast: a new tensor anyway
            z = torch.addcmul(s, a, d).reshape((-1,) + s.shape[1:])
            points.append(z.to(dt))
            continue
        buf = buffers[j] if buffers is not None else None
        if (buf is None or buf.shape[1:] != s.shape[1:] or buf.shape[0] < rows or buf.dtype != dt
                or buf.device != s.device):
            buf = torch.empty((rows,) + s.shape[1:], dtype=dt, device=s.device)
            if buffers is None:
                buffers = chunking.point_buffers = [None] * len(start_c)
            buffers[j] = buf
        # A new tensor on the buffer's memory: a leaf of its own, whatever the buffer took part in before.
        z = _part(buf.detach(), 0, rows)
        torch.addcmul(s, a, d, out=z.view((steps,) + s.shape))  # (B, ...) broadcast against (steps, 1, ...)
        points.append(z)
    return tuple(points)


def accumulate(
    probe: Probe,
    start: tuple[Tensor, ...],
    delta: tuple[Tensor, ...],
    examples: Tensor,
    alphas: Tensor,
    weights: Tensor,
    buckets: Tensor,
    n_buckets: int,
    chunking: Chunking,
    tile: int | None = None,
    keep_values: bool = True,
    steps: tuple[Tensor, Tensor] | None = None,
) -> tuple[list[Tensor], Tensor | None]:
    """``Σ_rows weights[row, j] · ∇ probe`` per bucket, and the probe's value at every row.

    Parameters
    ----------
    probe : callable
        ``probe(points, examples) -> Tensor[rows]`` evaluated with gradients enabled.
    start, delta : tuple of Tensor
        Path origin and direction, one row per example, on one device.
    examples, alphas : Tensor
        Per row: which example (LongTensor) and where on its path (float64).
    weights : Tensor
        ``(rows, m)`` float64: ``m`` weightings accumulated side by side (``m = 2`` for an embedded rule pair).
    buckets : Tensor
        Per row, the accumulator it adds to; ``n_buckets`` of them.
    tile : int, optional
        Set when rows come in whole steps of the batch (``examples = buckets = arange(tile)`` repeated, as fixed
        rules lay them out): chunks of whole steps then build their points by broadcasting and reduce their
        gradients with one matrix product, instead of gathering and scattering rows.
    keep_values : bool, default True
        Return the probe's value at every row; False when the caller has no use for them.
    steps : (Tensor, Tensor), optional
        Required with ``tile``: the rule per step of the batch, as :func:`step_rule` gives it.

    Returns
    -------
    sums : list of Tensor
        One ``(m, n_buckets, *per_example_shape)`` tensor per path tensor, in float32 or wider.
    values : Tensor or None
        The probe at every row, float64, on the CPU, detached (None unless ``keep_values``).
    """
    device = start[0].device
    total = examples.shape[0]
    compute = _compute_dtype(start)
    acc_dtype = torch.promote_types(compute, torch.float32)
    if tile:
        step_alphas, step_weights = steps
    examples = moved(examples, device)
    # Per row, on the device: made when a chunk that is not whole steps first needs them.
    row_alphas = row_weights = row_buckets = None
    dtypes = [s.dtype for s in start]
    start_c = tuple(moved(s, device, compute) for s in start) if tile else ()
    delta_c = tuple(moved(d, device, compute) for d in delta) if tile else ()
    m = weights.shape[1]
    # Made by the first chunk: a whole-steps chunk writes its product into new memory, which saves filling zeros.
    sums: list[Tensor | None] = [None] * len(start)

    def zero_sum(per_example_shape: torch.Size) -> Tensor:
        return torch.zeros((m, n_buckets) + per_example_shape, dtype=acc_dtype, device=device)

    values = torch.empty(total, dtype=torch.float64, device=device) if keep_values else None
    row_bytes = sum(math.prod(s.shape[1:]) * s.element_size() for s in start)
    # Budget-sized chunks are rounded to whole steps; an explicit internal_batch_size is kept exactly.
    step = tile if chunking.rows is None else None
    chunking.stats["step"] = step
    size = chunking.first_size(total, row_bytes, step)
    pos = 0
    while pos < total:
        n = min(size, total - pos)
        rows = slice(pos, pos + n)
        tiled = tile is not None and pos % tile == 0 and n % tile == 0
        # Under a budget, chunks are metered until a row's cost is known (the meter's hooks slow a pass down). A
        # single row over the budget cannot be split further: it runs unmetered, with a warning.
        metered = (chunking.budget is not None and chunking.row_cost is None
                   and not (n == 1 and chunking.over_budget_row))
        meter = ActivationMeter(chunking.budget, rows=n, fixed=3 * n * row_bytes) if metered else None
        began = time.perf_counter()
        try:
            if tiled:
                points = _tiled_points(start_c, delta_c, _part(step_alphas, pos // tile, n // tile), dtypes, chunking)
            else:
                if row_alphas is None:
                    row_alphas, row_weights = moved(alphas, device, compute), moved(weights, device, acc_dtype)
                    row_buckets = moved(buckets, device)
                points = _point_rows(start, delta, examples[rows], row_alphas[rows])
            grads, out = _gradients(probe, points, _part(examples, pos, n), acc_dtype, meter, chunking.copy_points)
            if values is not None:
                values[rows] = out
        except BudgetExceeded as over:
            if n == 1:
                chunking.warn_single_row(over.used)
            size = _whole_steps(chunking.limit(min(n // 2, int(n * chunking.budget / over.used * 0.9))), step)
            continue
        except Exception as error:
            if n > 1 and is_out_of_memory(error):
                size = _whole_steps(chunking.out_of_memory(n), step)
                continue
            if not chunking.copy_points and writes_into_leaf(error):
                chunking.copy_points = True  # the same chunk again, with copies of its points
                continue
            raise
        chunking.record(n)
        if meter is not None:
            chunking.measured(n, meter.estimate)
        for i, g in enumerate(grads):
            acc = sums[i]
            if tiled:
                # (m, steps) weights times (steps, rows of the batch): every weighting in one matrix product.
                w, flat = _part(step_weights.t(), pos // tile, n // tile).t(), g.reshape(n // tile, -1)
                if acc is None:
                    sums[i] = torch.mm(w, flat).view((m, n_buckets) + g.shape[1:])
                else:
                    acc.view(m, -1).addmm_(w, flat)
                continue
            if acc is None:
                acc = sums[i] = zero_sum(g.shape[1:])
            for j in range(m):
                shape = (n,) + (1,) * (g.dim() - 1)
                acc[j].index_add_(0, row_buckets[rows], g * row_weights[rows, j].view(shape))
        chunking.stats["seconds"] += time.perf_counter() - began
        chunking.stats["metered"] += meter is not None
        pos += n
        if chunking.budget is not None and pos < total:
            # Spread the remaining rows evenly over as many chunks as the measured cost per row requires.
            size = chunking.spread(total - pos, chunking.fits() if chunking.row_cost else n, step)
    sums = [zero_sum(s.shape[1:]) if acc is None else acc for acc, s in zip(sums, start)]  # a call with no rows
    return sums, None if values is None else values.cpu()


def _part(t: Tensor, first: int, count: int) -> Tensor:
    """``t[first:first + count]``; ``t`` itself when that is all of it (a call of one chunk makes no view)."""
    return t if first == 0 and count == t.shape[0] else t[first:first + count]


def _whole_steps(size: int, tile: int | None) -> int:
    """Round a chunk size down to whole steps of the batch when it holds at least one."""
    return size - size % tile if tile and size >= tile else size


def writes_into_leaf(error: BaseException) -> bool:
    """Whether ``error`` is autograd refusing an in-place operation on a tensor that is a leaf requiring gradients."""
    return isinstance(error, RuntimeError) and (
        "leaf Variable that requires grad is being used in an in-place operation" in str(error))


def _gradients(probe: Probe, points: tuple[Tensor, ...], examples: Tensor, acc_dtype: torch.dtype,
               meter: ActivationMeter | None, copies: bool = False) -> tuple[list[Tensor], Tensor]:
    if not torch.is_grad_enabled():  # under torch.no_grad(): the gradients are still what is asked for
        with torch.enable_grad():
            return _gradients(probe, points, examples, acc_dtype, meter, copies)
    for z in points:
        z.requires_grad_()
    inputs = tuple(z.clone() for z in points) if copies else points
    if meter is None:
        out = probe(inputs, examples)
    else:
        with meter:
            out = probe(inputs, examples)
    # An output that does not depend on the points (a constant model) has zero gradient.
    grads = torch.autograd.grad(out.sum(), points, allow_unused=True) if out.requires_grad else (None,) * len(points)
    grads = [torch.zeros_like(z, dtype=acc_dtype) if g is None else g if g.dtype == acc_dtype else g.to(acc_dtype)
             for z, g in zip(points, grads)]
    return grads, out.detach()


def probe_values(probe: Probe, start, delta, examples: Tensor, alphas: Tensor, chunking: Chunking) -> Tensor:
    """The probe at path rows without gradients (end points for the convergence delta), float64 on the CPU."""
    device = start[0].device
    examples = examples.to(device)
    alphas = alphas.to(device=device, dtype=_compute_dtype(start))

    def evaluate(rows: slice) -> Tensor:
        return probe(_point_rows(start, delta, examples[rows], alphas[rows]), examples[rows]).to(torch.float64)

    with torch.no_grad():
        # As many rows per forward as the integration used (all of them when nothing ran yet), within its limits.
        parts = run_chunked(evaluate, examples.shape[0], chunking, chunking.stats["chunk_rows"] or None)
    return torch.cat(parts).cpu()


@dataclass
class PathIntegral:
    """``∫_0^1 ∇ probe(start + α (end − start)) dα`` per example, with the probe at both ends when asked."""

    grads: list[Tensor]
    f_start: Tensor | None
    f_end: Tensor | None
    report: IntegrationReport
    #: ``end − start`` per path tensor, where the integration computed it.
    delta: tuple[Tensor, ...] | None = None


def integrate(
    probe: Probe,
    start: tuple[Tensor, ...],
    end: tuple[Tensor, ...],
    method: str,
    n_steps: int,
    chunking: Chunking,
    need_ends: bool,
) -> PathIntegral:
    """Integrate the probe's gradient along the straight path with a fixed rule (``n_steps`` points each)."""
    batch = start[0].shape[0]
    delta = tuple(e - s for s, e in zip(start, end))
    examples, alphas, weights = _fixed_layout(method, n_steps, batch)
    compute = _compute_dtype(start)
    steps = step_rule(method, n_steps, compute, torch.promote_types(compute, torch.float32), start[0].device)
    sums, values = accumulate(probe, start, delta, examples, alphas, weights, examples, batch, chunking, tile=batch,
                              keep_values=need_ends, steps=steps)
    f_start, f_end = (end_values(probe, start, delta, chunking, alphas_and_weights(method, n_steps)[0],
                                 values.view(n_steps, batch)) if need_ends else (None, None))
    report = chunking.report(torch.full((batch,), n_steps, dtype=torch.long))
    return PathIntegral([s[0] for s in sums], f_start, f_end, report, delta)


@lru_cache(maxsize=32)
def step_rule(method: str, n_steps: int, compute: torch.dtype, accumulate_in: torch.dtype, device: torch.device
              ) -> tuple[Tensor, Tensor]:
    """A fixed rule's points ``(n_steps,)`` in ``compute`` and weights ``(1, n_steps)`` in ``accumulate_in``, on
    ``device``: contiguous rows, as the reduction's matrix product wants them (a strided weight vector makes it
    several times slower). Cached: repeated calls reuse them (never written)."""
    alphas, weights = alphas_and_weights(method, n_steps)
    return (torch.tensor(alphas, dtype=compute, device=device),
            torch.tensor(weights, dtype=accumulate_in, device=device).unsqueeze(0))


@lru_cache(maxsize=8)
def _fixed_layout(method: str, n_steps: int, batch: int) -> tuple[Tensor, Tensor, Tensor]:
    """Rows of a fixed rule: example, α and weight per row, step-major (all examples at α_0, then at α_1, ...), as
    captum lays them out, so that chunks split between steps. Cached: repeated calls reuse them (never written)."""
    alphas_np, weights_np = alphas_and_weights(method, n_steps)
    examples = torch.arange(batch).repeat(n_steps)
    alphas = torch.from_numpy(np.repeat(alphas_np, batch))
    weights = torch.from_numpy(np.repeat(weights_np, batch)).unsqueeze(1)
    return examples, alphas, weights


def end_values(probe: Probe, start, delta, chunking: Chunking, alphas_np: np.ndarray | None = None,
               values: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Probe at α = 0 and α = 1: taken from the path's own rows (``values``, one row per rule point) where the
    rule has them, the others evaluated together in one pass without gradients."""
    batch = start[0].shape[0]
    found = {}
    for end_alpha in (0.0, 1.0):
        hit = np.flatnonzero(alphas_np == end_alpha) if alphas_np is not None else ()
        if len(hit):
            found[end_alpha] = values[int(hit[0])]
    missing = [a for a in (0.0, 1.0) if a not in found]
    if missing:
        examples = torch.arange(batch).repeat(len(missing))
        alphas = torch.tensor(missing, dtype=torch.float64).repeat_interleave(batch)
        extra = probe_values(probe, start, delta, examples, alphas, chunking).view(len(missing), batch)
        found.update(zip(missing, extra))
    return found[0.0], found[1.0]
