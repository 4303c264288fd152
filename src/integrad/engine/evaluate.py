"""The engine: gradients (and values) of a probe at points of a path, in chunks that fit a memory budget, reduced as
the method asks.

For a :class:`~integrad.paths.Path` and a list of path rows (:class:`Rows`: example, position α, weights, bucket),
:func:`evaluate` computes ``∇_z probe(z)`` at every row's point ``z = γ_example(α)``, multiplies it by the row's
velocity ``γ′(α)`` (unless the path factors its velocity out, as the straight line does) and hands each chunk's
rows to a :class:`Reduction`: the weighted sum per bucket that every quadrature rule uses (:class:`WeightedSum`),
every row's gradient kept (:class:`RowGradients`), or a method's own. Rows are evaluated in chunks: a fixed number
of rows (``internal_batch_size``), or as many as a memory budget allows, measured while the chunk runs. An
allocation failure halves the chunk and retries it. One forward and one backward pass run per chunk.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from ..paths import Path, Points, StraightLine, moved, part
from ..rules import alphas_and_weights
from .chunking import ActivationMeter, BudgetExceeded, Chunking, is_out_of_memory, run_chunked, whole_steps

Probe = Callable[[Points, Tensor], Tensor]
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
        Per-example convergence delta ``Σ attributions − (F(γ(1)) − F(γ(0)))`` when it was computed.
    """

    steps: Tensor
    error_estimate: Tensor | None = None
    rows: int = 0
    chunk_rows: int = 0
    chunks: int = 0
    delta: Tensor | None = None

    @classmethod
    def of(cls, chunking: Chunking, steps: Tensor, error_estimate: Tensor | None = None) -> IntegrationReport:
        stats = chunking.stats
        return cls(
            steps=steps,
            error_estimate=error_estimate,
            rows=stats["rows"],
            chunk_rows=stats["chunk_rows"],
            chunks=stats["chunks"],
        )


@dataclass
class Rows:
    """The rows of one evaluation.

    Attributes
    ----------
    examples, alphas : Tensor
        Per row: which example (LongTensor) and where on its path (float64).
    weights : Tensor
        ``(rows, m)`` float64: ``m`` weightings reduced side by side (``m = 2`` for an embedded rule pair).
    buckets : Tensor
        Per row, the accumulator it adds to; ``n_buckets`` of them.
    tile : int, optional
        Set when rows come in whole steps of the batch (row ``k·B + b`` is example ``b`` and bucket ``b``, as fixed
        rules lay them out): chunks of whole steps then build their points by broadcasting and reduce their
        gradients with one matrix product, instead of gathering and scattering rows.
    steps : (Tensor, Tensor), optional
        With ``tile``: the rule per step, ``α`` ``(steps,)`` in the path's compute dtype and weights ``(m, steps)``
        in the accumulation dtype, both on the path's device.
    """

    examples: Tensor
    alphas: Tensor
    weights: Tensor
    buckets: Tensor
    n_buckets: int
    tile: int | None = None
    steps: tuple[Tensor, Tensor] | None = None

    @property
    def total(self) -> int:
        return self.examples.shape[0]


#: The share of the room a chunk retried after going over the budget is sized for.
RETRY_MARGIN = 0.9


def accumulation_dtype(path: Path) -> torch.dtype:
    """Gradients are reduced in float32 at least (half-precision inputs), in float64 for float64 paths."""
    return torch.promote_types(path.compute, torch.float32)


def rule_rows(path: Path, alphas: np.ndarray, weights: np.ndarray, key: tuple | None = None) -> Rows:
    """Rows of a fixed rule, step-major (all examples at ``α_0``, then at ``α_1``, ...) as captum lays them out, so
    that chunks split between steps. ``key`` (a rule's name and size) caches the layout for repeated calls."""
    batch = path.batch
    if key is not None:
        examples, row_alphas, row_weights = _cached_layout(key, batch)
        steps = _cached_steps(key, path.compute, accumulation_dtype(path), path.device)
    else:
        examples, row_alphas, row_weights = _layout(alphas, weights, batch)
        steps = _steps(alphas, weights, path.compute, accumulation_dtype(path), path.device)
    return Rows(examples, row_alphas, row_weights, examples, batch, tile=batch, steps=steps)


def method_rows(path: Path, method: str, n_steps: int) -> Rows:
    """Rows of one of :data:`integrad.rules.METHODS` with ``n_steps`` points per example."""
    alphas, weights = alphas_and_weights(method, n_steps)
    return rule_rows(path, alphas, weights, key=(method, n_steps))


def _layout(alphas: np.ndarray, weights: np.ndarray, batch: int) -> tuple[Tensor, Tensor, Tensor]:
    examples = torch.arange(batch).repeat(len(alphas))
    return (
        examples,
        torch.from_numpy(np.repeat(alphas, batch)),
        torch.from_numpy(np.repeat(np.asarray(weights, dtype=np.float64), batch)).unsqueeze(1),
    )


def _steps(
    alphas: np.ndarray, weights: np.ndarray, compute: torch.dtype, accumulate_in: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor]:
    # Contiguous rows, as the reduction's matrix product wants them (a strided weight vector makes it several times
    # slower).
    return (
        torch.tensor(alphas, dtype=compute, device=device),
        torch.tensor(weights, dtype=accumulate_in, device=device).reshape(1, -1),
    )


@lru_cache(maxsize=8)
def _cached_layout(key: tuple, batch: int) -> tuple[Tensor, Tensor, Tensor]:
    """Cached: repeated calls reuse the rows of a named rule (never written)."""
    return _layout(*alphas_and_weights(*key), batch)


@lru_cache(maxsize=32)
def _cached_steps(
    key: tuple, compute: torch.dtype, accumulate_in: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor]:
    return _steps(*alphas_and_weights(*key), compute, accumulate_in, device)


class Reduction:
    """What :func:`evaluate` does with each chunk's gradients (each row's ``∇probe ⊙ velocity``) and values."""

    def add(self, grads: list[Tensor], values: Tensor, first: int, count: int, tiled: bool) -> None:
        raise NotImplementedError


class WeightedSum(Reduction):
    """``Σ_rows weights[row, j] · gradient`` per bucket: ``sums[i]`` is ``(m, n_buckets, *shape)`` for path tensor
    ``i``, in the accumulation dtype."""

    def __init__(self, rows: Rows, path: Path):
        self.rows = rows
        self.like = path.like
        self.device = path.device
        self.dtype = accumulation_dtype(path)
        self.m = rows.weights.shape[1]
        self._sums: list[Tensor | None] = [None] * len(path.like)
        self._row_weights: Tensor | None = None

    @property
    def sums(self) -> list[Tensor]:
        # A call with no rows has zero sums.
        return [self._zero(x.shape[1:]) if s is None else s for s, x in zip(self._sums, self.like)]

    def _zero(self, shape: torch.Size) -> Tensor:
        return torch.zeros((self.m, self.rows.n_buckets) + tuple(shape), dtype=self.dtype, device=self.device)

    def add(self, grads: list[Tensor], values: Tensor, first: int, count: int, tiled: bool) -> None:
        rows = self.rows
        if tiled:
            # (m, steps) weights times (steps, rows of the batch): every weighting in one matrix product, written
            # into new memory by the first chunk (which saves filling zeros).
            tile = rows.tile
            w = part(rows.steps[1].t(), first // tile, count // tile).t()
            for i, g in enumerate(grads):
                flat = g.reshape(count // tile, -1)
                if self._sums[i] is None:
                    self._sums[i] = torch.mm(w, flat).view((self.m, rows.n_buckets) + g.shape[1:])
                else:
                    self._sums[i].view(self.m, -1).addmm_(w, flat)
            return
        if self._row_weights is None:
            self._row_weights = moved(rows.weights, self.device, self.dtype)
            self._row_buckets = moved(rows.buckets, self.device)
        weights, buckets = self._row_weights[first : first + count], self._row_buckets[first : first + count]
        for i, g in enumerate(grads):
            if self._sums[i] is None:
                self._sums[i] = self._zero(g.shape[1:])
            shape = (count,) + (1,) * (g.dim() - 1)
            for j in range(self.m):
                self._sums[i][j].index_add_(0, buckets, g * weights[:, j].view(shape))


class RowGradients(Reduction):
    """Every row's gradient, flattened and concatenated over the path tensors: ``(rows, D)`` in the accumulation
    dtype."""

    def __init__(self, rows: Rows, path: Path):
        sizes = [int(np.prod(x.shape[1:])) for x in path.like]
        self.columns = np.cumsum([0] + sizes)
        self.gradients = torch.empty(
            (rows.total, int(self.columns[-1])), dtype=accumulation_dtype(path), device=path.device
        )

    def add(self, grads: list[Tensor], values: Tensor, first: int, count: int, tiled: bool) -> None:
        for i, g in enumerate(grads):
            self.gradients[first : first + count, self.columns[i] : self.columns[i + 1]] = g.reshape(count, -1)


def evaluate_rows(
    probe: Probe, path: Path, rows: Rows, reduction: Reduction, chunking: Chunking, keep_values: bool = True
) -> Tensor | None:
    """Run every row's forward and backward pass in chunks and hand the gradients to ``reduction``.

    Returns the probe's value at every row (float64, on the CPU, detached), or None unless ``keep_values``.
    """
    total = rows.total
    acc_dtype = accumulation_dtype(path)
    values = torch.empty(total, dtype=torch.float64, device=path.device) if keep_values else None
    chunk_points = _ChunkPoints(path, rows, chunking)
    # Budget-sized chunks are rounded to whole steps; an explicit internal_batch_size is kept exactly.
    step = rows.tile if chunking.rows is None else None
    chunking.stats["step"] = step
    size = chunking.first_size(total, path.row_bytes, step)
    pos = 0
    while pos < total:
        n = min(size, total - pos)
        tiled = rows.tile is not None and pos % rows.tile == 0 and n % rows.tile == 0
        # Under a budget, chunks are metered until a row's cost is known (the meter's hooks slow a pass down). A
        # single row over the budget cannot be split further: it runs unmetered, with a warning.
        metered = (
            chunking.budget is not None and chunking.row_cost is None and not (n == 1 and chunking.over_budget_row)
        )
        # The meter counts what grows with the chunk besides the points: those it is told of (with their copies).
        points_bytes = n * path.row_bytes * (2 if chunking.copy_points else 1)
        meter = ActivationMeter(chunking.room, rows=n, fixed=points_bytes, device=path.device) if metered else None
        began = time.perf_counter()
        try:
            points, velocities = chunk_points(pos, n, tiled)
            grads, out = _gradients(
                probe, points, part(chunk_points.examples, pos, n), acc_dtype, meter, chunking.copy_points
            )
        except Exception as error:
            size = _retry_size(error, n, chunking, step)
            continue
        chunking.record(n)
        if meter is not None:
            chunking.measured(n, meter.used)
        if velocities is not None:
            grads = [g * moved(v, g.device, g.dtype) for g, v in zip(grads, velocities)]
        if values is not None:
            values[pos : pos + n] = out
        reduction.add(grads, out, pos, n, tiled)
        # This chunk's gradients must not stay alive through the next chunk's passes.
        grads = out = points = velocities = None
        chunking.stats["seconds"] += time.perf_counter() - began
        chunking.stats["metered"] += meter is not None
        pos += n
        if chunking.budget is not None and pos < total:
            # Spread the remaining rows evenly over as many chunks as the measured cost per row requires.
            size = chunking.spread(total - pos, chunking.fits() if chunking.row_cost else n, step)
    return None if values is None else values.cpu()


def _retry_size(error: Exception, n: int, chunking: Chunking, step: int | None) -> int:
    """The chunk size to retry with after ``error``, or ``error`` raised again when a retry cannot help."""
    if isinstance(error, BudgetExceeded):
        if n == 1:
            chunking.warn_single_row(error.used)
        # Scaled to the room the chunk's measured use allows, with a tenth to spare: the next chunk's use varies.
        return whole_steps(chunking.limit(min(n // 2, int(n * chunking.room / error.used * RETRY_MARGIN))), step)
    if n > 1 and is_out_of_memory(error):
        return whole_steps(chunking.out_of_memory(n), step)
    if not chunking.copy_points and writes_into_leaf(error):
        chunking.copy_points = True  # the same chunk again, with copies of its points
        return n
    raise error


class _ChunkPoints:
    """A chunk's points and velocities: by broadcasting for whole steps of the batch, else gathered per row (the
    per-row tensors are moved to the device when a chunk first needs them)."""

    def __init__(self, path: Path, rows: Rows, chunking: Chunking):
        self.path, self.rows, self.chunking = path, rows, chunking
        self.examples = moved(rows.examples, path.device)
        self._alphas: Tensor | None = None

    def __call__(self, first: int, count: int, tiled: bool) -> tuple[Points, Points | None]:
        path, rows = self.path, self.rows
        if tiled:
            buffers = self.chunking.point_buffers
            if buffers is None or len(buffers) != len(path.like):
                buffers = self.chunking.point_buffers = [None] * len(path.like)
            return path.at_steps(part(rows.steps[0], first // rows.tile, count // rows.tile), buffers)
        if self._alphas is None:
            self._alphas = moved(rows.alphas, path.device, path.compute)
        return path.at(self.examples[first : first + count], self._alphas[first : first + count])


def writes_into_leaf(error: BaseException) -> bool:
    """Whether ``error`` is autograd refusing an in-place operation on a tensor that is a leaf requiring gradients."""
    return isinstance(error, RuntimeError) and (
        "leaf Variable that requires grad is being used in an in-place operation" in str(error)
    )


def _gradients(
    probe: Probe,
    points: Points,
    examples: Tensor,
    acc_dtype: torch.dtype,
    meter: ActivationMeter | None,
    copies: bool = False,
) -> tuple[list[Tensor], Tensor]:
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
    grads = (None,) * len(points)
    if out.requires_grad:
        total = out.sum()
        if meter is not None:
            meter.watch(total, points)
        grads = torch.autograd.grad(total, points, allow_unused=True)
    grads = [
        torch.zeros_like(z, dtype=acc_dtype) if g is None else g if g.dtype == acc_dtype else g.to(acc_dtype)
        for z, g in zip(points, grads)
    ]
    if meter is not None:
        meter.gradients(grads)
    return grads, out.detach()


def gradients_at(probe: Probe, points: Points, examples: Tensor, chunking: Chunking) -> tuple[list[Tensor], Tensor]:
    """``∇ probe`` and the probe at given rows, in chunks under ``chunking``.

    ``points`` holds one tensor per probe input, shaped ``(rows, ...)``; ``examples[r]`` is the example row ``r``
    belongs to (it selects targets and per-example arguments). Returns the gradients, shaped like ``points`` in the
    accumulation dtype, and the probe's values (float64, CPU).
    """
    # Rows are the examples of a path that stays at its start: each row's point is its own, in a copy.
    path = StraightLine(points, points)
    n = examples.shape[0]
    every = torch.arange(n)
    rows = Rows(every, torch.zeros(n, dtype=torch.float64), torch.ones(n, 1, dtype=torch.float64), every, n)
    kept = RowGradients(rows, path)
    of_rows = examples.to(path.device)
    values = evaluate_rows(lambda z, r: probe(z, of_rows.index_select(0, r)), path, rows, kept, chunking)
    grads = [
        g.view((n,) + tuple(p.shape[1:])) for g, p in zip(kept.gradients.split(list(np.diff(kept.columns)), 1), points)
    ]
    return grads, values


def probe_values(probe: Probe, points: Points, examples: Tensor, chunking: Chunking) -> Tensor:
    """The probe at given points (row ``r`` of example ``examples[r]``) without gradients, float64 on the CPU."""
    examples = examples.to(points[0].device)

    def run(rows: slice) -> Tensor:
        return probe(tuple(p[rows] for p in points), examples[rows]).to(torch.float64)

    with torch.no_grad():
        # As many rows per forward as the integration used (all of them when nothing ran yet), within its limits.
        parts = run_chunked(run, examples.shape[0], chunking, chunking.stats["chunk_rows"] or None)
    return torch.cat(parts).cpu()


@dataclass
class PathIntegral:
    """``∫_0^1 ∇ probe(γ(α)) ⊙ γ′(α) dα`` per example (without the velocity where the path factors it out), with
    the probe at both ends when asked."""

    grads: list[Tensor]
    f_start: Tensor | None
    f_end: Tensor | None
    report: IntegrationReport
    path: Path
    #: The reduction the rows were handed to.
    reduction: Reduction | None = None


def integrate(
    probe: Probe,
    path: Path,
    method: str,
    n_steps: int,
    chunking: Chunking,
    need_ends: bool,
    reduction: Callable[[Rows, Path], Reduction] | None = None,
) -> PathIntegral:
    """Integrate along ``path`` with a fixed rule: ``method`` with ``n_steps`` points, or the path's own rule.

    ``reduction`` builds the reduction from the rows and the path (default :class:`WeightedSum`); a reduction of
    another kind leaves ``grads`` empty and is returned in :attr:`PathIntegral.reduction`.
    """
    own = path.rule()
    if own is not None:
        alphas, _ = own
        rows = rule_rows(path, *own)
    else:
        alphas, _ = alphas_and_weights(method, n_steps)
        rows = method_rows(path, method, n_steps)
    reducer = (reduction or WeightedSum)(rows, path)
    values = evaluate_rows(probe, path, rows, reducer, chunking, keep_values=need_ends)
    f_start = f_end = None
    if need_ends:
        f_start, f_end = end_values(probe, path, chunking, alphas, values.view(len(alphas), path.batch))
    report = IntegrationReport.of(chunking, torch.full((path.batch,), len(alphas), dtype=torch.long))
    grads = [s[0] for s in reducer.sums] if isinstance(reducer, WeightedSum) else []
    return PathIntegral(grads, f_start, f_end, report, path, reducer)


def end_values(
    probe: Probe, path: Path, chunking: Chunking, alphas: np.ndarray | None = None, values: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Probe at ``γ(0)`` and ``γ(1)``: taken from the rows' own values (``values``, one row per rule point) where the
    rule has those positions, the others evaluated together in one pass without gradients."""
    found = {}
    for end in (0.0, 1.0):
        hit = np.flatnonzero(alphas == end) if alphas is not None else ()
        if len(hit):
            found[end] = values[int(hit[0])]
    missing = [end for end in (0.0, 1.0) if end not in found]
    if missing:
        starts, ends = path.ends()
        chosen = [starts if end == 0.0 else ends for end in missing]
        both = tuple(torch.cat(parts) for parts in zip(*chosen))
        examples = torch.arange(path.batch).repeat(len(missing))
        extra = probe_values(probe, both, examples, chunking).view(len(missing), path.batch)
        found.update(zip(missing, extra))
    return found[0.0], found[1.0]
