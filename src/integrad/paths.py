"""Paths: where the points of a path integral lie.

Every method of the family integrates ``Σ_k w_k ∇F(γ(α_k)) ⊙ γ′(α_k)`` along a path ``γ_b : [0, 1] → input space``,
one per example ``b``. A path here answers two questions for the engine: the points ``γ_b(α)`` and velocities
``γ′_b(α)`` of any rows ``(b, α)``, and the same for whole steps of the batch (every example at each of a few α,
row ``k·B + b``), which fixed rules use and which can be built faster.

* :class:`StraightLine` — ``γ(α) = x′ + α (x − x′)``, IG's path. Its velocity is the same everywhere, so the
  engine sums gradients alone and multiplies by ``x − x′`` once (``velocity_factored``).
* :class:`PairedLine` — straight lines between rows of two sets (inputs against a background), one per pair,
  without copies of either set.
* :class:`FunctionPath` — any path given by a function ``fn(alphas) -> (points, velocities)``.
* :class:`DiscretePath` — an explicit sequence of points ``x_0 … x_K``; the displacement ``x_{k+1} − x_k`` of each
  segment takes the place of the velocity, and the rule is the sequence itself (``Σ_k ∇F(x_k) ⊙ (x_{k+1} − x_k)``).

``smooth`` says whether ``n_steps="auto"`` can certify an integral along the path, and ``straight`` whether the
velocity is constant (which lets ``"auto"`` locate the kinks of piecewise-linear models exactly).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

Points = tuple[Tensor, ...]


def compute_dtype(tensors: Points) -> torch.dtype:
    """Path points are formed in float64 when any path tensor is float64, else in float32 (then cast to each
    tensor's own dtype): half-precision inputs get accurate points."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def moved(t: Tensor, device: torch.device, dtype: torch.dtype | None = None) -> Tensor:
    """``t.to(device, dtype)``, skipping the call (and its argument parsing) when ``t`` already is."""
    if t.device == device and (dtype is None or t.dtype == dtype):
        return t
    return t.to(device=device, dtype=dtype)


def part(t: Tensor, first: int, count: int) -> Tensor:
    """``t[first:first + count]``; ``t`` itself when that is all of it (a call of one chunk makes no view)."""
    return t if first == 0 and count == t.shape[0] else t[first : first + count]


class Path:
    """A path per example of a batch: the base of :class:`StraightLine`, :class:`FunctionPath` and
    :class:`DiscretePath`.

    Parameters
    ----------
    like : Tensor or tuple of Tensor
        Tensors shaped like the points of one position of the path (batch first): the inputs, or a layer's values.
    """

    #: ``n_steps="auto"`` can integrate along this path (its integrand is smooth in α, or piecewise smooth).
    smooth: bool = True
    #: The velocity is ``x − x′`` everywhere (the kinks of a piecewise-linear model can be located exactly).
    straight: bool = False
    #: ``at`` and ``at_steps`` return no velocities: the engine sums gradients and the caller multiplies once.
    velocity_factored: bool = False

    def __init__(self, like: Tensor | Points):
        like = as_points(like, "like")
        self.like = like
        self.batch = like[0].shape[0]
        self.device = like[0].device
        self.dtypes = [t.dtype for t in like]
        self.compute = compute_dtype(like)
        #: Bytes of one row's points, all path tensors together.
        self.row_bytes = sum(math.prod(t.shape[1:]) * t.element_size() for t in like)

    def rule(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The path's own positions and weights when it has them (a discrete path), else None."""
        return None

    def ends(self) -> tuple[Points, Points]:
        """``γ(0)`` and ``γ(1)`` of every example."""
        every = torch.arange(self.batch, device=self.device)
        both = torch.tensor([0.0, 1.0], dtype=self.compute, device=self.device).repeat_interleave(self.batch)
        points, _ = self.at(every.repeat(2), both)
        return tuple(p[: self.batch] for p in points), tuple(p[self.batch :] for p in points)

    def at(self, examples: Tensor, alphas: Tensor) -> tuple[Points, Points | None]:
        """Points and velocities of rows ``(examples[r], alphas[r])`` (on the path's device; α in ``compute``)."""
        raise NotImplementedError

    def at_steps(self, alphas: Tensor, buffers: list | None = None) -> tuple[Points, Points | None]:
        """Points and velocities of every example at each of ``alphas``: row ``k·B + b`` is example ``b`` at
        ``alphas[k]``. ``buffers`` (a list, one slot per path tensor) may receive memory to reuse next time."""
        every = torch.arange(self.batch, device=self.device).repeat(alphas.shape[0])
        return self.at(every, alphas.repeat_interleave(self.batch))


class StraightLine(Path):
    r"""``γ_b(α) = x′_b + α (x_b − x′_b)``, with velocity ``x_b − x′_b``.

    Parameters
    ----------
    start, end : Tensor or tuple of Tensor
        ``x′`` and ``x``, one row per example, of the same shapes.
    factored : bool, default True
        Leave the velocity out of each row (the engine sums the gradients alone; the caller multiplies by
        :attr:`velocity` once). False hands every row its velocity, for reductions that mix rows of different
        paths in one sum (a mean over baselines).
    """

    straight = True

    def __init__(self, start: Tensor | Points, end: Tensor | Points, factored: bool = True):
        start, end = as_points(start, "start"), as_points(end, "end")
        super().__init__(start)
        self.start = start
        self.end = end
        self.velocity = tuple(e - s for s, e in zip(start, end))
        self.velocity_factored = factored
        self._steps_inputs: tuple[Points, Points] | None = None

    def ends(self) -> tuple[Points, Points]:
        return self.start, self.end

    def at(self, examples: Tensor, alphas: Tensor) -> tuple[Points, Points | None]:
        points = []
        for s, d in zip(self.start, self.velocity):
            a = alphas.view((-1,) + (1,) * (s.dim() - 1))
            z = torch.addcmul(s.index_select(0, examples).to(a.dtype), a, d.index_select(0, examples).to(a.dtype))
            points.append(z if z.dtype == s.dtype else z.to(s.dtype))
        if self.velocity_factored:
            return tuple(points), None
        return tuple(points), tuple(d.index_select(0, examples) for d in self.velocity)

    def at_steps(self, alphas: Tensor, buffers: list | None = None) -> tuple[Points, Points | None]:
        """Points by broadcasting ``(B, ...)`` against ``(steps, 1, ...)``, written into ``buffers`` where those
        hold enough rows (else new memory is put there), so that repeated calls reuse pages already mapped."""
        if self._steps_inputs is None:
            self._steps_inputs = (
                tuple(moved(s, self.device, self.compute) for s in self.start),
                tuple(moved(d, self.device, self.compute) for d in self.velocity),
            )
        start_c, delta_c = self._steps_inputs
        steps = alphas.shape[0]
        points = []
        for j, (s, d, dt) in enumerate(zip(start_c, delta_c, self.dtypes)):
            a = alphas.view((-1, 1) + (1,) * (s.dim() - 1))
            rows = steps * s.shape[0]
            if s.dtype != dt:  # formed in a wider dtype than the input's, then cast: a new tensor anyway
                points.append(torch.addcmul(s, a, d).reshape((-1,) + s.shape[1:]).to(dt))
                continue
            z = _buffer(buffers, j, (rows,) + s.shape[1:], dt, s.device)
            torch.addcmul(s, a, d, out=z.view((steps,) + s.shape))
            points.append(z)
        if self.velocity_factored:
            return tuple(points), None
        return tuple(points), tuple(d.repeat((steps,) + (1,) * (d.dim() - 1)) for d in self.velocity)


def _buffer(buffers: list | None, j: int, shape: tuple, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A fresh leaf tensor of ``shape`` on the memory of ``buffers[j]`` when that is large enough, else on new memory
    that replaces it."""
    buf = buffers[j] if buffers is not None else None
    rows = shape[0]
    if buf is None or buf.shape[1:] != shape[1:] or buf.shape[0] < rows or buf.dtype != dtype or buf.device != device:
        buf = torch.empty(shape, dtype=dtype, device=device)
        if buffers is not None:
            buffers[j] = buf
    # A new tensor on the buffer's memory: a leaf of its own, whatever the buffer took part in before.
    return part(buf.detach(), 0, rows)


class FunctionPath(Path):
    r"""A path given by a function: ``fn(alphas) -> (points, velocities)``.

    Parameters
    ----------
    fn : callable
        Takes a 1-D float64 tensor of ``K`` positions in [0, 1] (on the inputs' device) and returns
        ``(points, velocities)``, each shaped ``(K, *x.shape)`` — or, for tuple inputs, tuples of those, one per
        input. ``velocities`` is ``dγ/dα`` at the same positions.
    like : Tensor or tuple of Tensor
        The inputs: the shapes, dtypes and device the points must have.
    smooth : bool, default True
        Whether ``n_steps="auto"`` may integrate along the path (False for a piecewise-constant path).

    Notes
    -----
    The engine calls ``fn`` once per chunk of rows, on that chunk's positions. Rows of a fixed rule come in whole
    steps of the batch; rows of ``n_steps="auto"`` may ask different examples for different positions, in which
    case ``fn`` is called on the chunk's distinct positions and each row takes its example's point.
    """

    def __init__(self, fn: Callable[[Tensor], tuple], like: Tensor | Points, smooth: bool = True):
        super().__init__(like)
        if not callable(fn):
            raise TypeError(
                f"path must be a callable fn(alphas) -> (points, velocities) or an integrad.paths.Path; "
                f"got {type(fn).__name__}"
            )
        self.fn = fn
        self.smooth = smooth

    def evaluate(self, alphas: Tensor) -> tuple[Points, Points]:
        """``fn(alphas)`` checked and cast: points and velocities shaped ``(K, *x.shape)`` per path tensor."""
        positions = alphas.to(device=self.device, dtype=torch.float64)
        result = self.fn(positions)
        if not (isinstance(result, tuple) and len(result) == 2):
            raise TypeError(
                "path must return a pair (points, velocities); got "
                f"{type(result).__name__}{f' of length {len(result)}' if isinstance(result, tuple) else ''}"
            )
        k = positions.shape[0]
        return self._checked(result[0], "points", k), self._checked(result[1], "velocities", k)

    def _checked(self, value, what: str, k: int) -> Points:
        many = len(self.like) > 1
        parts = value if isinstance(value, tuple) else (value,)
        if len(parts) != len(self.like) or (many and not isinstance(value, tuple)):
            raise ValueError(
                f"path returned {what} for {len(parts)} input(s); there are {len(self.like)}: return "
                f"{'a tuple with one tensor per input' if many else 'one tensor'}"
            )
        out = []
        for i, (p, x) in enumerate(zip(parts, self.like)):
            expected = (k,) + tuple(x.shape)
            if not isinstance(p, Tensor) or tuple(p.shape) != expected:
                got = f"shape {tuple(p.shape)}" if isinstance(p, Tensor) else type(p).__name__
                where = f"{what}[{i}]" if many else what
                raise ValueError(
                    f"path returned {where} with {got}; expected (K, *input.shape) = {expected} for K = {k} positions"
                )
            out.append(moved(p.detach(), x.device, x.dtype))
        return tuple(out)

    def at(self, examples: Tensor, alphas: Tensor) -> tuple[Points, Points]:
        """Each row's point and velocity. ``fn`` builds its positions' points for the whole batch, so it is given at
        most as many positions at once as leave that no larger than the rows asked for (under a memory budget, the
        chunk's size)."""
        distinct, which = torch.unique(alphas, return_inverse=True)
        examples = examples.to(which.device)
        per_call = max(1, alphas.shape[0] // self.batch)
        if distinct.shape[0] <= per_call:
            points, velocities = self.evaluate(distinct)
            flat = which * self.batch + examples
            return _rows(points, flat), _rows(velocities, flat)
        out: tuple[list[Tensor], list[Tensor]] | None = None
        for first in range(0, distinct.shape[0], per_call):
            points, velocities = self.evaluate(distinct[first : first + per_call])
            mine = ((which >= first) & (which < first + per_call)).nonzero().squeeze(1)
            flat = (which.index_select(0, mine) - first) * self.batch + examples.index_select(0, mine)
            if out is None:
                out = tuple(
                    [p.new_empty((alphas.shape[0],) + p.shape[2:]) for p in part] for part in (points, velocities)
                )
            for kept, part in zip(out, (points, velocities)):
                for o, value in zip(kept, _rows(part, flat)):
                    o.index_copy_(0, mine.to(o.device), value)
        return tuple(out[0]), tuple(out[1])

    def at_steps(self, alphas: Tensor, buffers: list | None = None) -> tuple[Points, Points]:
        points, velocities = self.evaluate(alphas)
        return (
            tuple(p.reshape((-1,) + p.shape[2:]) for p in points),
            tuple(v.reshape((-1,) + v.shape[2:]) for v in velocities),
        )


class DiscretePath(Path):
    r"""A path through explicit points ``x_0 … x_K`` per example: ``Σ_{k<K} ∇F(x_k) ⊙ (x_{k+1} − x_k)``.

    Parameters
    ----------
    points : Tensor or tuple of Tensor
        ``(K + 1, B, ...)``: the points of every example, from the start (``x_0``) to the end (``x_K``).

    Notes
    -----
    The rule is the sequence itself: row ``k`` (weight 1, position ``k / K``) is the gradient at ``x_k`` times the
    segment's displacement. The attributions add up to ``F(x_K) − F(x_0)`` as the segments shrink; the left-point
    sum is exact for a model linear along each segment.
    """

    smooth = False

    def __init__(self, points: Tensor | Points):
        sequence = points if isinstance(points, tuple) else (points,)
        if not sequence or not all(isinstance(p, Tensor) and p.dim() >= 2 for p in sequence):
            raise TypeError("points must be a tensor (or tuple of tensors) shaped (K + 1, batch, ...)")
        if sequence[0].shape[0] < 2 or any(p.shape[:2] != sequence[0].shape[:2] for p in sequence):
            raise ValueError(
                "points must hold at least two positions (K + 1 >= 2) and the same (K + 1, batch) for "
                f"every tensor; got shapes {[tuple(p.shape) for p in sequence]}"
            )
        super().__init__(tuple(p[0] for p in sequence))
        self.sequence = tuple(p.detach() for p in sequence)
        self.segments = sequence[0].shape[0] - 1

    def rule(self) -> tuple[np.ndarray, np.ndarray]:
        k = self.segments
        return np.arange(k, dtype=np.float64) / k, np.ones(k)

    def ends(self) -> tuple[Points, Points]:
        return tuple(p[0] for p in self.sequence), tuple(p[-1] for p in self.sequence)

    def at(self, examples: Tensor, alphas: Tensor) -> tuple[Points, Points]:
        index = torch.round(alphas.to(torch.float64) * self.segments).long().clamp_(0, self.segments - 1)
        batch = self.batch
        here, there = index * batch + examples, (index + 1) * batch + examples
        flat = [p.reshape((-1,) + p.shape[2:]) for p in self.sequence]
        points = tuple(f.index_select(0, here) for f in flat)
        return points, tuple(f.index_select(0, there) - z for f, z in zip(flat, points))


class PairedLine(Path):
    r"""Straight lines between rows of two sets of tensors, one line per pair:
    ``γ_p(α) = s_p + α (e_p − s_p)`` with ``s_p = starts[i][start_rows[i][p]]`` and ``e_p = ends[i][end_rows[p]]``.

    The pairs index into the two sets, so that ``B`` inputs against ``M`` baselines make ``B·M`` lines without
    ``B·M`` copies of either: a chunk gathers the rows it needs.

    Parameters
    ----------
    starts, ends : tuple of Tensor
        One tensor per path tensor: the rows the lines start from (``(M_i, ...)``) and end at (``(N, ...)``).
    start_rows : tuple of LongTensor
        Per path tensor, the start row of every pair (``(P,)``); each tensor may pair its rows its own way.
    end_rows : LongTensor
        The end row of every pair (``(P,)``), shared by the path tensors.
    factored : bool, default True
        Leave the velocity ``e_p − s_p`` out of the rows (the caller multiplies once per pair); False hands every row
        its velocity, for sums that mix rows of different pairs.
    """

    straight = True

    def __init__(
        self, starts: Points, start_rows: tuple[Tensor, ...], ends: Points, end_rows: Tensor, factored: bool = True
    ):
        pairs = int(end_rows.shape[0])
        # Shapes, dtypes and device of the points, without memory per pair.
        super().__init__(tuple(e[:1].expand((pairs,) + tuple(e.shape[1:])) for e in ends))
        self.start_sets = tuple(moved(s.detach(), self.device, x.dtype) for s, x in zip(starts, self.like))
        self.start_rows = tuple(moved(r, self.device) for r in start_rows)
        self.end_sets = tuple(e.detach() for e in ends)
        self.end_rows = moved(end_rows, self.device)
        self.velocity_factored = factored
        self._velocity: Points | None = None

    def _gather(self, pairs: Tensor) -> tuple[Points, Points]:
        starts = tuple(s.index_select(0, r.index_select(0, pairs)) for s, r in zip(self.start_sets, self.start_rows))
        rows = self.end_rows.index_select(0, pairs)
        return starts, tuple(e.index_select(0, rows) for e in self.end_sets)

    @property
    def velocity(self) -> Points:
        """``e_p − s_p`` of every pair, in the compute dtype."""
        if self._velocity is None:
            starts, ends = self.ends()
            self._velocity = tuple(e.to(self.compute) - s.to(self.compute) for s, e in zip(starts, ends))
        return self._velocity

    def ends(self) -> tuple[Points, Points]:
        return self._gather(torch.arange(self.batch, device=self.device))

    def at(self, examples: Tensor, alphas: Tensor) -> tuple[Points, Points | None]:
        starts, ends = self._gather(examples)
        points, velocities = [], []
        for s, e, dtype in zip(starts, ends, self.dtypes):
            s, e = s.to(self.compute), e.to(self.compute)
            d = e - s
            z = torch.addcmul(s, alphas.view((-1,) + (1,) * (s.dim() - 1)).to(self.compute), d)
            points.append(z if z.dtype == dtype else z.to(dtype))
            velocities.append(d)
        return tuple(points), None if self.velocity_factored else tuple(velocities)


def _rows(values: Points, flat: Tensor) -> Points:
    """Rows ``flat`` of ``(K, B, ...)`` tensors, counted position-major (``k · B + b``)."""
    return tuple(v.reshape((-1,) + v.shape[2:]).index_select(0, flat.to(v.device)) for v in values)


def as_points(value: Tensor | Points, name: str) -> Points:
    """One tensor per path input: a tensor as a 1-tuple, a tuple or list of tensors as a tuple."""
    points = (value,) if isinstance(value, Tensor) else tuple(value) if isinstance(value, (tuple, list)) else None
    if not points or not all(isinstance(p, Tensor) for p in points):
        raise TypeError(f"{name} must be a tensor or a tuple of tensors, one per input; got {type(value).__name__}")
    return points
