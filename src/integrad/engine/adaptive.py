"""Error-controlled integration (``n_steps="auto"``): one Lobatto–Kronrod panel, then kink reconstruction for
piecewise-linear models or adaptive panels for smooth ones, per example.

The error is measured on each feature's contribution ``∇F(γ(α)) ⊙ γ′(α)``. Along a straight line the velocity
``x − x′`` is the same everywhere, which the piecewise-linear phase relies on; along any other smooth path (a
:class:`~integrad.paths.FunctionPath`) examples that the first two stages do not certify go on with panels.

**First panel.** Every example's path [0, 1] is first evaluated at the 7 nodes of the Kronrod extension of the
4-point Gauss–Lobatto rule (the ends, ±1/√5, ±√(2/3), 0). The Lobatto nodes give a second, lower-order estimate
from the same rows; their difference ``D`` (per feature, multiplied by ``x − x′``) estimates the error, and an
example with ``|D|₁ ≤ tol · |A|₁`` is done: a smooth integrand often stops here. The others get the 13-point
Kronrod extension on [0, 1] (6 more nodes, one in each gap, exact to degree 19; Gander and Gautschi tabulate it),
estimated by its difference from the 7-point rule: a smooth integrand that needs more than 7 points
usually stops there. An example whose estimate fell tenfold or more from 7 to 13 points is analytic-looking and goes
on to the panels below; the rest go on, with all 13 points, to the piecewise-linear phase.

**Piecewise-linear models.** For a network built from ReLU, max-pooling and affine layers, ``F`` along the straight
path is continuous and piecewise linear in α and its gradient ``g`` is piecewise constant; the linear regions are
convex, so when two points lie in one region the whole segment between them does. Equal gradients at both ends
with ``F`` linear between them are taken as the sign of one region. Every other example's points are sorted along
its path and each segment ``[a, b]`` between neighbours, of width ``w``, is classified:

* equal ``g ⊙ (x − x′)`` (to rounding) and ``F(b) − F(a) = s_a w`` (to F's rounding, or √eps of the change),
  with the directional slope ``s = g · (x − x′)``: a linear piece, integrated exactly. F's rounding is taken
  relative to the terms it sums: ``|F|`` and, in a linear region where ``F(z) = g · z + c``, ``|g ⊙ z|₁`` at each
  end (a float32 output of 3e-3 made of terms near 1 is rounded to about 1e-7, not 4e-10);
* different gradients with one kink ``t = a + τ`` explaining the values,
  ``F(b) − F(a) = s_a τ + s_b (w − τ)`` with ``0 ≤ τ ≤ w``: the integral is ``g_a τ + g_b (w − τ)``, exact when
  the segment holds one kink;
* otherwise (no τ in the segment, or equal gradients with a non-linear F): several kinks, or curvature; the
  trapezoid rule is used.

A segment that is not a linear piece is charged the bound ``|(g_b − g_a) ⊙ (x − x′)| w / 2`` (per feature; the
whole contribution ``|g_a ⊙ (x − x′)| w`` when equal end gradients hide a region): nothing at the two ends rules
out further kinks inside. A segment with a solved kink is most likely exact and a wrong one errs in no particular
direction, so these bounds are combined as a root-sum-square per feature; the segments integrated by the trapezoid
rule do err by about their bound, and theirs are added. The sum, in the L1 norm over features and relative to
``|A|₁``, is the example's estimate. While it exceeds the tolerance, segments whose bound exceeds their share of it
(``tol · |A|₁ / √n`` for solved kinks, ``/ n`` for the others, or half the example's worst) are refined: a solved
kink gets points at ``t ± max(10⁻³ w, 2 × the uncertainty of τ from F's rounding)``, which leave two outer
segments that are checked to be linear and a narrow one around the kink whose bound is about a thousandth of the
old one; where the uncertainty leaves no room, and for segments without a solved kink, the segment is bisected
down to ``MIN_WIDTH``. Below that width F's rounding hides what a kink does to F (float32 models reach it at
tolerances near 1e-4), but the gradients still show it: a segment whose gradient jump alone,
``|(g_b − g_a) ⊙ (x − x′)|₁ w / 2``, exceeds its share is bisected on, the gradient at its middle telling which
half holds the kink, down to the width at which that example's points stop changing (``RESOLUTION_ULPS`` units of
rounding of its largest coordinate, over the fastest a coordinate moves). What F alone shows below ``MIN_WIDTH``
(equal gradients with F off the line) is its rounding, and is not refined. When the first refinement shows no
linear piece at all, the example is treated as smooth. This phase keeps the gradients of the points that bound its
segments (a point between two linear pieces is dropped, the pieces being one region); where they would pass half
the memory budget, the examples go on with panels.

**Smooth models.** The remaining examples start again from two Lobatto–Kronrod panels. Panel errors of varying
sign add up like a random walk, so an example's estimate is the root-sum-square over its panels of ``D_p``, per
feature, then the L1 norm. While it exceeds ``tol · |A|₁`` the panels whose own error ``|D_p|₁`` exceeds their
share ``tol · |A|₁ / √P`` (or half the example's worst) are bisected.

Within each phase, all rows of a round (every example, segment and panel) are evaluated together, in
memory-budgeted chunks. An example stops at ``MAX_POINTS`` path points, or when only segments narrower than
``MIN_WIDTH`` (or its own resolution) are left; a RuntimeWarning then says the tolerance was not reached. The
estimate is reported per example in ``last_report.error_estimate`` and the points used in ``last_report.steps``.

**What the end values prove.** The exact attributions add up to ``F(1) − F(0)``, so ``|Σ A − (F(1) − F(0))|``, the
completeness gap, is a lower bound on ``|A − A*|₁``; beyond F's rounding (in the model's least precise dtype), it is
a floor under every estimate, in the first two stages and in the result. A bump between nodes that all see the same
gradient (a saturated unit, a narrow step) shows there, and the example goes on to be refined; each panel is held to
its own gap in the same way. The gap alone is no estimate: per-feature errors of opposite sign cancel in it. An
example whose gradient is not finite somewhere on the path (``sqrt`` at a zero baseline) gets an infinite estimate
and a RuntimeWarning that says so. A model whose output jumps along the path (``sign``, a threshold) has integrated
gradients that cannot add up to the jump: its estimate is the gap, and the warning that the tolerance was not met
says so.

The piecewise-linear phase holds the gradients of its points within half the memory budget: it refines examples in
groups of ``KEPT_GROUP``, each holding at most that fraction of the half (and at most ``MAX_POINTS`` rows). An example
that would hold more goes on with panels, which keep no gradients. The quota does not depend on the batch, so every
decision is taken per example: an example gets the points it would get alone.

References
----------
Kronrod. Nodes and Weights of Quadrature Formulas. Consultants Bureau, 1965.
Gander, Gautschi. Adaptive Quadrature — Revisited. BIT 40 (2000), 84–101.
Piessens, de Doncker-Kapenga, Überhuber, Kahaner. QUADPACK. Springer, 1983.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..paths import Path
from .chunking import Chunking, default_budget
from .evaluate import IntegrationReport, PathIntegral, Probe, RowGradients, Rows, WeightedSum, end_values, evaluate_rows

# The 4-point Gauss–Lobatto rule on [−1, 1] (nodes ±1, ±1/√5) and its 7-point Kronrod extension (adding ±√(2/3), 0),
# as in Gander and Gautschi's adaptive Lobatto quadrature. Both rules sample the panel's end points: a kink close to
# an end cannot hide from them, as it can from Gauss–Kronrod nodes, which stay a few percent of the width inside.
_SQRT_2_3, _SQRT_1_5 = 0.81649658092772603273, 0.44721359549995793928
NODES = np.array([-1.0, -_SQRT_2_3, -_SQRT_1_5, 0.0, _SQRT_1_5, _SQRT_2_3, 1.0])
KRONROD_WEIGHTS = np.array([77.0, 432.0, 625.0, 672.0, 625.0, 432.0, 77.0]) / 1470.0
LOBATTO_WEIGHTS = np.array([1.0, 0.0, 5.0, 0.0, 5.0, 0.0, 1.0]) / 6.0
# The 13-point Kronrod extension of the 7-point rule (exact to degree 19): one new node in each gap, and the weights
# of all 13 (Gander and Gautschi, 2000, to the digits of a 40-digit solution of its moment equations).
_NEW = (0.23638319966214988028, 0.64185334234578130578, 0.94288241569547971906)
EXTRA_NODES = np.array([-_NEW[2], -_NEW[1], -_NEW[0], _NEW[0], _NEW[1], _NEW[2]])
_OLD_WEIGHTS = (0.24261107190140773380, 0.19977340522685852679, 0.15507198733658539625, 0.015827191973480183087)
_NEW_WEIGHTS = (0.22492646533333952702, 0.18882157396018245442, 0.094273840218850045531)
EXTENDED_WEIGHTS_OLD = np.array(
    [
        _OLD_WEIGHTS[3],
        _OLD_WEIGHTS[2],
        _OLD_WEIGHTS[1],
        _OLD_WEIGHTS[0],
        _OLD_WEIGHTS[1],
        _OLD_WEIGHTS[2],
        _OLD_WEIGHTS[3],
    ]
)
EXTENDED_WEIGHTS_NEW = np.array(
    [_NEW_WEIGHTS[2], _NEW_WEIGHTS[1], _NEW_WEIGHTS[0], _NEW_WEIGHTS[0], _NEW_WEIGHTS[1], _NEW_WEIGHTS[2]]
)
POINTS_PER_PANEL = len(NODES)
#: Panels and segments narrower than this are accepted whatever their estimate (bounds the work on a discontinuity),
#: except segments whose gradients jump by more than their share (see RESOLUTION_ULPS).
MIN_WIDTH = 2.0**-16
#: Below MIN_WIDTH, segments whose gradients jump are bisected on down to this many units of rounding of the
#: example's points (relative to their largest coordinate): the width at which the points stop changing.
RESOLUTION_ULPS = 8
#: Most path points one example may use.
MAX_POINTS = 4096
#: Points around a solved kink are placed this fraction of the segment's width either side of it.
BRACKET = 1e-3
#: Points around a solved kink also keep at least this many units of the gradients' rounding (``grad_eps``) from it.
KINK_GRAD_EPS = 16
#: The smallest L1 norm divided by (an attribution of all zeros has no relative error to speak of).
TINY = 1e-300
#: Share of the memory budget the piecewise-linear phase may hold in kept gradients (rows × features).
KEPT_SHARE = 0.5
#: Examples refined together in the piecewise-linear phase. Each may keep gradients for up to this fraction of the
#: share (and at most MAX_POINTS rows), whatever the batch: an example's points never depend on the others.
KEPT_GROUP = 8
#: From 7 to 13 points, an error that falls by this factor or more marks an analytic (smooth) integrand.
SMOOTH_GAIN = 0.1
#: Gradients whose difference (times x − x′) is below this many units of rounding of the larger count as equal.
SAME_GRADIENT_ULPS = 64
#: F's values are trusted to this many units of rounding of the terms that make them up.
F_ROUNDING_ULPS = 8


def integrate_adaptive(probe: Probe, path: Path, tolerance: float, chunking: Chunking, need_ends: bool) -> PathIntegral:
    """Integrate along ``path`` until each example's estimated relative L1 error is below ``tolerance``."""
    run = _Auto(probe, path, tolerance, chunking)
    pending, smooth = run.first_stages()
    if bool(pending.any()):
        if run.piecewise_linear_capable:
            smooth |= run.piecewise_linear(pending)
        else:
            smooth |= pending
    if bool(smooth.any()):
        run.panels(smooth)
    return run.result(need_ends)


@dataclass
class _Rows:
    """Evaluated path rows: their example, position, probe value and gradient contribution (``(rows, D)``)."""

    ex: Tensor
    alpha: Tensor
    F: Tensor
    G: Tensor

    def select(self, keep: Tensor) -> _Rows:
        return _Rows(self.ex[keep], self.alpha[keep], self.F[keep], self.G[keep.to(self.G.device)])

    def join(self, other: _Rows) -> _Rows:
        return _Rows(
            torch.cat([self.ex, other.ex]),
            torch.cat([self.alpha, other.alpha]),
            torch.cat([self.F, other.F]),
            torch.cat([self.G, other.G.to(self.G.dtype)]),
        )


class _Auto:
    """The state of one ``n_steps="auto"`` integration: per example its integral of the gradient contribution
    (``(batch, D)``, flattened over the path tensors), error estimate, |A|₁ and points used."""

    def __init__(self, probe: Probe, path: Path, tolerance: float, chunking: Chunking):
        self.probe, self.path, self.tolerance, self.chunking = probe, path, tolerance, chunking
        self.batch = path.batch
        # The velocity each row's gradient is multiplied by afterwards: x − x′ on a straight line (factored out of
        # the rows), 1 where the rows carry their own.
        self.velocity = path.velocity if path.velocity_factored else tuple(torch.ones_like(x) for x in path.like)
        self.piecewise_linear_capable = path.straight and path.velocity_factored
        self.first: _Rows | None = None
        self.second: _Rows | None = None

    def hold(self, kept: int = 0) -> None:
        """Tell the chunking what this run keeps alive besides the chunks: the first stages' gradients and ``kept``
        bytes more (a refinement's rows, the panels' sums)."""
        for rows in (self.first, self.second):
            if rows is not None:
                kept += rows.G.numel() * rows.G.element_size()
        self.chunking.held = kept

    def row_gradients(self, examples: Tensor, alphas: Tensor, held: int = 0) -> _Rows:
        """Gradients and values at the rows ``(examples, alphas)``, while ``held`` bytes more are kept elsewhere."""
        self.hold(held)
        n = examples.numel()
        rows = Rows(examples, alphas, torch.ones(n, 1, dtype=torch.float64), torch.arange(n), n)
        kept = RowGradients(rows, self.path)
        values = evaluate_rows(self.probe, self.path, rows, kept, self.chunking)
        return _Rows(examples, alphas, values, kept.gradients)

    def first_stages(self) -> tuple[Tensor, Tensor]:
        """The 7-point panel on [0, 1] for every example, then its 13-point extension for those it does not certify.
        Returns the examples still pending (not smooth-looking) and those that go on with panels."""
        batch = self.batch
        examples = torch.arange(batch).repeat_interleave(POINTS_PER_PANEL)
        first = self.row_gradients(examples, torch.from_numpy((NODES + 1) / 2).repeat(batch))
        G = first.G
        self.d = torch.cat([v.reshape(batch, -1) for v in self.velocity], 1).to(G.dtype)
        self.eps = _rounding(self.path, G.dtype)
        self.start = None
        self.min_width = torch.full((batch,), float("inf"), dtype=torch.float64)
        if self.piecewise_linear_capable:
            starts, _ = self.path.ends()
            self.start = torch.cat([s.reshape(batch, -1) for s in starts], 1).to(G.device, G.dtype)
            self.min_width = _resolution(self.start, self.d, self.eps)
        per_example = G.view(batch, POINTS_PER_PANEL, -1)
        rule = torch.from_numpy(np.stack([KRONROD_WEIGHTS, LOBATTO_WEIGHTS]) / 2).to(G.device, G.dtype)
        kron, lob = rule[0] @ per_example, rule[1] @ per_example
        self.first = first
        self.attr_l1 = (kron * self.d).abs().sum(1).double().cpu()
        # F at α = 0 and α = 1 (the first and last nodes): the attributions must add up to their difference, and
        # by how much they miss it is a lower bound on their L1 error (a bump between nodes of equal gradient).
        self.f_ends = first.F.view(batch, POINTS_PER_PANEL)[:, [0, -1]]
        self.error = torch.maximum(
            ((kron - lob) * self.d).abs().sum(1).double().cpu(), _completeness_gap(kron * self.d, self.f_ends, self.eps)
        )
        self.points_used = torch.full((batch,), POINTS_PER_PANEL, dtype=torch.long)
        self.integral = kron
        self.second = None
        pending = ~self._done()
        if not bool(pending.any()):
            return pending, torch.zeros(batch, dtype=torch.bool)
        return self._extension(pending, per_example)

    def _done(self) -> Tensor:
        return (self.error <= self.tolerance * self.attr_l1) | (self.points_used + 2 * POINTS_PER_PANEL > MAX_POINTS)

    def _extension(self, pending: Tensor, per_example: Tensor) -> tuple[Tensor, Tensor]:
        # The 13-point extension on [0, 1]. A smooth integrand that the 7-point difference could not certify usually
        # is here; its estimate is the 7-point rule's error, |K₁₃ − K₇|.
        idx = torch.nonzero(pending).flatten()
        n_extra = len(EXTRA_NODES)
        second = self.row_gradients(
            idx.repeat_interleave(n_extra), torch.from_numpy((EXTRA_NODES + 1) / 2).repeat(idx.numel())
        )
        G = self.first.G
        dev = idx.to(G.device)
        old = torch.from_numpy(EXTENDED_WEIGHTS_OLD / 2).to(G.device, G.dtype)
        new = torch.from_numpy(EXTENDED_WEIGHTS_NEW / 2).to(G.device, G.dtype)
        k13 = old @ per_example[dev] + new @ second.G.to(G.dtype).view(idx.numel(), n_extra, -1)
        first_error = self.error.clone()
        d = self.d[dev]
        self.error[idx] = torch.maximum(
            ((k13 - self.integral[dev]) * d).abs().sum(1).double().cpu(),
            _completeness_gap(k13 * d, self.f_ends[idx], self.eps),
        )
        self.attr_l1[idx] = (k13 * d).abs().sum(1).double().cpu()
        self.integral[dev] = k13
        self.points_used[idx] += n_extra
        self.second = second
        done = self._done()
        # Errors that fell tenfold or more from 7 to 13 points are those of an analytic integrand: such examples go
        # straight to the panels. A piecewise-linear integrand (gradient jumps) improves only like 1/n between them.
        smooth = ~done & (self.error <= SMOOTH_GAIN * first_error)
        return ~done & ~smooth, smooth

    def piecewise_linear(self, pending: Tensor) -> Tensor:
        """Kink reconstruction for the pending examples, ``KEPT_GROUP`` at a time; returns those that go on with
        panels (not piecewise linear, or over their quota of kept gradients)."""
        G = self.first.G
        share = KEPT_SHARE * (self.chunking.budget or default_budget(G.device))
        quota = int(max(1, min(MAX_POINTS, share // (KEPT_GROUP * self.d.shape[1] * G.element_size()))))
        smooth = torch.zeros(self.batch, dtype=torch.bool)
        for group in torch.nonzero(pending).flatten().split(KEPT_GROUP):
            members = torch.zeros(self.batch, dtype=torch.bool)
            members[group] = True
            rows = self.first.select(members.index_select(0, self.first.ex))
            rows = rows.join(self.second.select(members.index_select(0, self.second.ex)))
            smooth |= _Refinement(self, rows, quota).run()
        return smooth

    def panels(self, smooth: Tensor) -> None:
        idx = torch.nonzero(smooth).flatten()
        grads, err, l1, pts = _panels(self, idx, MAX_POINTS - self.points_used)
        flat = torch.cat([g.reshape(self.batch, -1).to(self.integral.dtype) for g in grads], 1)
        self.integral[idx.to(self.integral.device)] = flat[idx.to(flat.device)]
        self.error[idx], self.attr_l1[idx] = err[idx], l1[idx]
        self.points_used += pts

    def result(self, need_ends: bool) -> PathIntegral:
        # Whatever the phase found, the estimate is never below what the completeness gap proves.
        error = torch.maximum(self.error, _completeness_gap(self.integral * self.d, self.f_ends, self.eps))
        estimate = torch.where(self.attr_l1 > 0, error / self.attr_l1.clamp_min(TINY), error)
        finite = torch.isfinite(self.integral).all(1).cpu()
        estimate = torch.where(finite, estimate, torch.full_like(estimate, float("inf")))
        _warn_unmet(finite, estimate, self.tolerance)
        sizes = [x[0].numel() for x in self.path.like]
        grads = [
            part.reshape(x.shape).to(torch.promote_types(x.dtype, torch.float32))
            for part, x in zip(self.integral.split(sizes, 1), self.path.like)
        ]
        f_start = f_end = None
        if need_ends:
            # The first panel's nodes include α = 0 and α = 1: the probe's values there come with its rows.
            first_values = self.first.F[: self.batch * POINTS_PER_PANEL].view(self.batch, POINTS_PER_PANEL).t()
            f_start, f_end = end_values(self.probe, self.path, self.chunking, (NODES + 1) / 2, first_values)
        report = IntegrationReport.of(self.chunking, self.points_used, estimate.float())
        return PathIntegral(grads, f_start, f_end, report, self.path)


def _warn_unmet(finite: Tensor, estimate: Tensor, tolerance: float) -> None:
    if bool((~finite).any()):
        warnings.warn(
            f"n_steps='auto': the gradient is not finite at some path points of {int((~finite).sum())} example(s), so "
            "their attributions are not finite (error_estimate inf). This happens where the model's derivative is "
            "infinite on the path, e.g. sqrt or x**p with p < 1 at a zero baseline: choose a baseline away from that "
            "point, or a rule whose points avoid the ends (a fixed n_steps with method='gausslegendre')",
            RuntimeWarning,
            stacklevel=6,
        )
    elif bool((~(estimate <= tolerance)).any()):
        unmet = ~(estimate <= tolerance)
        warnings.warn(
            f"n_steps='auto' reached its limit of {MAX_POINTS} path points (or pieces of width {MIN_WIDTH:g}, or of "
            "its points' resolution where the gradients still jump) for "
            f"{int(unmet.sum())} example(s) before the estimated error fell below tolerance={tolerance:g}; the "
            f"largest estimate is {float(estimate.max()):.3g} (see last_report.error_estimate)",
            RuntimeWarning,
            stacklevel=6,
        )


def _resolution(start: Tensor, d: Tensor, eps: float) -> Tensor:
    """Per example, the width in α below which its points ``x′ + α (x − x′)`` hardly change:
    ``RESOLUTION_ULPS`` units of rounding of its largest coordinate, over the fastest a coordinate moves."""
    largest = torch.maximum(start.abs().amax(1), (start + d).abs().amax(1)).double().cpu()
    speed = d.abs().amax(1).double().cpu()
    return torch.where(speed > 0, RESOLUTION_ULPS * eps * largest / speed, float("inf"))


def _rounding(path: Path, accumulated: torch.dtype) -> float:
    """Relative rounding of the model's values and gradients: that of the path's least precise dtype (a float16
    model rounds to float16 whatever the gradients are accumulated in)."""
    return max([torch.finfo(accumulated).eps] + [torch.finfo(dt).eps for dt in path.dtypes if dt.is_floating_point])


def _completeness_gap(attributions: Tensor, f_ends: Tensor, eps: float) -> Tensor:
    """``|Σ_i A_i − (F(b) − F(a))|`` beyond F's rounding, per row of ``attributions`` (an example's, or a panel's
    share of them) with ``f_ends`` the probe at the path's two ends (float64, CPU).

    Since the exact attributions add up to ``F(b) − F(a)``, this is a lower bound on ``|A − A*|₁``.
    """
    f_ends = f_ends.to(torch.float64).cpu()
    total = attributions.sum(1).double().cpu()
    gap = (total - (f_ends[:, 1] - f_ends[:, 0])).abs()
    allowance = F_ROUNDING_ULPS * eps * (f_ends.abs().sum(1) + attributions.abs().sum(1).double().cpu())
    return (gap - allowance).clamp_min(0.0)


def _share(
    seg_error: Tensor, seg_ex: Tensor, batch: int, tolerance: float, attr_l1: Tensor, linear: bool = False
) -> Tensor:
    """A piece is refined when its error exceeds its share ``tol · |A|₁ / √n`` of the tolerance (``/ n`` for errors
    that add up), or half the worst of its example (errors of pieces that each look fine add up across features)."""
    counts = torch.bincount(seg_ex, minlength=batch).clamp_min(1).double()
    share = tolerance * attr_l1 / (counts if linear else counts.sqrt())
    worst = torch.zeros(batch, dtype=torch.float64).scatter_reduce(0, seg_ex, seg_error, "amax")
    return torch.minimum(share, worst / 2).index_select(0, seg_ex)


# ------------------------------------------------------------------------------------------ piecewise linear
@dataclass
class _Segments:
    """Neighbouring points of every example: the segments between them, and each one's integral and error bound."""

    a: Tensor  # index of the left point, per segment
    b: Tensor  # index of the right point
    ex: Tensor  # the example
    start: Tensor  # α of the left point
    width: Tensor
    tau: Tensor  # where in the segment the kink is (w/2 where none is solved)
    dtau: Tensor  # the uncertainty of tau from F's rounding
    linear: Tensor  # a linear piece, integrated exactly
    solved: Tensor  # one kink explains the values: integrated exactly if there is only one
    integral: Tensor  # (segments, D)
    bound: Tensor  # (segments, D), per feature
    kink_error: Tensor  # the part of the error the gradients' jump alone accounts for, per segment (L1)


def _segments(rows: _Rows, d: Tensor, eps: float, f_eps: float, start: Tensor | None = None) -> _Segments:
    """Neighbouring points of every example: each segment's integral of the gradient and its error bound.

    Gradients count as equal to ``eps`` (that of the dtype they are accumulated in); F's values are known to
    ``f_eps`` (that of the model's least precise dtype) relative to the terms that make them up: ``|F|`` and, with
    ``start`` (the path's start per example, flattened), ``|g ⊙ z|₁`` at the point ``z``, the size of the terms a
    piecewise-linear F sums (``F(z) = g · z + c`` in a linear region)."""
    ex, alpha, F, G = rows.ex, rows.alpha, rows.F, rows.G
    order = torch.argsort(alpha, stable=True)
    order = order[torch.argsort(ex[order], stable=True)]
    a, b = order[:-1], order[1:]
    keep = ex[a] == ex[b]
    a, b = a[keep], b[keep]
    dev = G.device
    seg_ex = ex[a]
    w = alpha[b] - alpha[a]
    ga, gb = G[a.to(dev)], G[b.to(dev)]
    dd = d[seg_ex.to(dev)]
    sa = (ga * dd).sum(1).double().cpu()
    sb = (gb * dd).sum(1).double().cpu()
    jump = gb - ga
    # Gradients are compared where they count, multiplied by x − x′ (a feature that does not move along the path
    # has no attribution, whatever its gradient does).
    scale = torch.maximum((ga * dd).abs().amax(1), (gb * dd).abs().amax(1))
    same_g = ((jump * dd).abs().amax(1) <= SAME_GRADIENT_ULPS * eps * scale).cpu()
    rise = F[b] - F[a]
    terms = F[a].abs() + F[b].abs() + (sa.abs() + sb.abs()) * w
    if start is not None:
        x0 = start[seg_ex.to(dev)]
        za = x0 + alpha[a].to(dev, G.dtype).unsqueeze(1) * dd
        zb = x0 + alpha[b].to(dev, G.dtype).unsqueeze(1) * dd
        terms = terms + ((ga * za).abs().sum(1) + (gb * zb).abs().sum(1)).double().cpu()
    ftol = F_ROUNDING_ULPS * f_eps * terms
    # Equal gradients with a non-linear F would mean the path left the region and came back. F carries the
    # rounding of its largest intermediate terms, which can exceed its own size: a relative √eps of the segment's
    # change is allowed besides.
    linear = same_g & ((rise - sa * w).abs() <= ftol + f_eps**0.5 * sa.abs() * w)
    # One kink at a + τ: F(b) − F(a) = s_a τ + s_b (w − τ); rounding of F moves τ by up to ftol / |s_a − s_b|.
    ds = sa - sb
    tau = (rise - sb * w) / ds
    dtau = ftol / ds.abs()
    solved = ~same_g & torch.isfinite(tau) & (tau >= -dtau) & (tau <= w + dtau)
    tau = torch.where(solved, torch.minimum(tau.clamp(min=0.0), w), w / 2)
    wa = torch.where(linear, w / 2, tau).to(dev, G.dtype).unsqueeze(1)
    wb = w.to(dev, G.dtype).unsqueeze(1) - wa
    integral = ga * wa + gb * wb
    width = w.to(dev, G.dtype).unsqueeze(1)
    hidden = (same_g & ~linear).to(dev).unsqueeze(1)
    bound = torch.where(hidden, ga.abs() * width, jump.abs() * width / 2) * dd.abs()
    # The attributions of a segment sum to its integral of the slope; where that misses F(b) − F(a), the L1 error
    # is at least the difference (spread over the features in proportion to |x − x′|). This catches what the end
    # gradients cannot show, such as a bump between two points of equal (e.g. saturated, zero) gradient.
    missed = ((rise - (integral * dd).sum(1).double().cpu()).abs() - ftol).clamp_min(0.0).to(dev, G.dtype)
    bound = bound + dd.abs() * (missed / dd.abs().sum(1).clamp_min(torch.finfo(G.dtype).tiny)).unsqueeze(1)
    kink_error = torch.where(hidden, 0.0, jump.abs() * width / 2) * dd.abs()
    kink_error = kink_error.sum(1).double().cpu()
    return _Segments(a, b, seg_ex, alpha[a], w, tau, dtau, linear, solved, integral, bound, kink_error)


class _Refinement:
    """The piecewise-linear phase for a group of examples: segments between their points are classified, and the
    uncertain ones refined, round after round. Fills the run's integral, error, |A|₁ and points used for them."""

    def __init__(self, run: _Auto, rows: _Rows, quota: int):
        self.auto, self.rows, self.quota = run, rows, quota
        batch = run.batch
        self.smooth = torch.zeros(batch, dtype=torch.bool)
        self.members = torch.zeros(batch, dtype=torch.bool)
        self.members[rows.ex] = True
        self.grad_eps = torch.finfo(rows.G.dtype).eps

    def run(self) -> Tensor:
        """Refine until every member converged or left; returns the examples that go on with panels."""
        first = True
        while True:
            seg = _segments(self.rows, self.auto.d, self.grad_eps, self.auto.eps, self.auto.start)
            seg_error, converged = self._record(seg)
            if not first:
                # After the first refinement, an unfinished example without a single linear piece is not piecewise
                # linear.
                found = torch.zeros(self.auto.batch, dtype=torch.long).index_add_(0, seg.ex, seg.linear.long())
                leave = self.members & (found == 0) & ~converged
                self.smooth |= leave
                self.members &= ~leave
            first = False
            # A converged example is finished (its result is written above): its points are dropped below rather
            # than carried, and segmented again, through every later round of the others.
            self.members &= ~converged
            new_ex, new_alpha = self._new_points(seg, seg_error)
            if new_ex.numel() == 0:
                return self.smooth
            new_ex, new_alpha = self._keep_within_quota(seg, new_ex, new_alpha)
            if new_ex.numel() == 0:
                return self.smooth
            fresh = self.auto.row_gradients(new_ex, new_alpha, self.rows.G.numel() * self.rows.G.element_size())
            self.auto.points_used += torch.bincount(new_ex, minlength=self.auto.batch)
            self.rows = self.rows.select(self.keep).join(fresh)
            members = self.members.index_select(0, self.rows.ex)
            if not bool(members.all()):
                self.rows = self.rows.select(members)

    def _record(self, seg: _Segments) -> tuple[Tensor, Tensor]:
        """Write the members' integrals and errors from this round's segments; returns each segment's error and
        which examples converged."""
        run, G, batch = self.auto, self.rows.G, self.auto.batch
        dev = G.device
        seg_dev = seg.ex.to(dev)
        total = torch.zeros((batch, run.d.shape[1]), dtype=G.dtype, device=dev).index_add_(0, seg_dev, seg.integral)
        # A segment with a solved kink is most likely exact, and the rare wrong ones err in random directions:
        # their bounds add like a random walk, per feature. A segment without one is integrated by the trapezoid
        # rule and does err by about its bound: those add up.
        solved = seg.solved.to(dev, G.dtype).unsqueeze(1)
        sq = torch.zeros_like(total).index_add_(0, seg_dev, seg.bound * seg.bound * solved)
        seg_error = seg.bound.sum(1).double().cpu()
        l1 = (total * run.d).abs().sum(1).double().cpu()
        err = sq.sqrt().sum(1).double().cpu() + torch.zeros(batch, dtype=torch.float64).index_add_(
            0, seg.ex, torch.where(seg.solved, 0.0, seg_error)
        )
        rows = self.members.nonzero().flatten()
        run.integral[rows.to(dev)] = total[rows.to(dev)]
        run.error[rows], run.attr_l1[rows] = err[rows], l1[rows]
        return seg_error, err <= run.tolerance * l1

    def _new_points(self, seg: _Segments, seg_error: Tensor) -> tuple[Tensor, Tensor]:
        """Points that refine the segments over their share of the tolerance, and the points kept (``self.keep``)."""
        run, batch = self.auto, self.auto.batch
        l1 = run.attr_l1
        allowed = torch.where(
            seg.solved,
            _share(seg_error, seg.ex, batch, run.tolerance, l1),
            _share(seg_error, seg.ex, batch, run.tolerance, l1, linear=True),
        )
        refine = seg_error > allowed
        refine &= self.members.index_select(0, seg.ex)
        # A solved kink is bracketed by two points just outside the uncertainty of τ. Where the bracket leaves no
        # room (τ too uncertain), and for segments without a solved kink, the segment is bisected, down to MIN_WIDTH.
        # Below it, F's rounding hides what a kink does to F, but the gradients at the ends still differ: where that
        # jump alone accounts for more than the segment's share, it is bisected on, the gradient at the middle
        # telling which half holds the kink, down to the width at which the example's points stop changing.
        w, tau = seg.width, seg.tau
        offset = torch.maximum(
            torch.maximum(BRACKET * w, 2 * seg.dtau), torch.full_like(w, KINK_GRAD_EPS * self.grad_eps)
        )
        # A bracket needs room for both points on either side of τ, and τ's uncertainty, inside the segment.
        bracket = refine & seg.solved & (4 * offset < w)
        left = bracket & (tau >= 2 * offset)
        right = bracket & (w - tau >= 2 * offset)
        by_gradients = (seg.kink_error > allowed) & (w > run.min_width.index_select(0, seg.ex))
        split = refine & ~bracket & ((w > MIN_WIDTH) | by_gradients)
        new_alpha = torch.cat(
            [(seg.start + tau - offset)[left], (seg.start + tau + offset)[right], (seg.start + w / 2)[split]]
        )
        new_ex = torch.cat([seg.ex[left], seg.ex[right], seg.ex[split]])
        # An example whose refinement would pass MAX_POINTS stops where it is.
        self.wanted = torch.bincount(new_ex, minlength=batch)
        over = run.points_used + self.wanted > MAX_POINTS
        if bool(over.any()):
            self.members &= ~over
            keep = ~over.index_select(0, new_ex)
            new_alpha, new_ex = new_alpha[keep], new_ex[keep]
        return new_ex, new_alpha

    def _keep_within_quota(self, seg: _Segments, new_ex: Tensor, new_alpha: Tensor) -> tuple[Tensor, Tensor]:
        # A point between two linear pieces is dropped: the pieces lie in one convex linear region, so the segment
        # joining its neighbours is that region's too, and is recognised as linear in the next round. Points of
        # examples that left (smooth, or out of points) are dropped as well.
        rows = self.rows
        inner = torch.zeros(rows.ex.numel(), dtype=torch.long)
        linear = seg.linear
        inner.index_add_(
            0, torch.cat([seg.a[linear], seg.b[linear]]), torch.ones(2 * int(linear.sum()), dtype=torch.long)
        )
        keep = self.members.index_select(0, rows.ex) & (inner < 2)
        # Kept gradients stay within a share of the memory budget: an example that would hold more than its quota
        # of rows goes on with panels, which keep none.
        full = self.members & (torch.bincount(rows.ex[keep], minlength=self.auto.batch) + self.wanted > self.quota)
        if bool(full.any()):
            self.smooth |= full
            self.members &= ~full
            keep &= ~full.index_select(0, rows.ex)
            fresh = ~full.index_select(0, new_ex)
            new_alpha, new_ex = new_alpha[fresh], new_ex[fresh]
        self.keep = keep
        return new_ex, new_alpha


# ---------------------------------------------------------------------------------------------------- panels
@dataclass
class _Panels:
    """Leaf panels of every example: where they lie, and (per path tensor) their Kronrod integral of the gradient
    contribution and the Kronrod − Lobatto difference of their contribution to the attributions."""

    example: Tensor
    lo: Tensor
    hi: Tensor
    gaps: Tensor
    kron: list[Tensor] | None = None
    diff: list[Tensor] | None = None

    def bisect(self, split: Tensor) -> Tensor:
        """Halve the ``split`` panels: the left half takes the panel's slot, the right half is appended. Returns the
        panels to evaluate next."""
        mid = (self.lo + self.hi) / 2
        right_lo, right_hi, right_ex = mid[split], self.hi[split], self.example[split]
        self.hi = torch.cat([torch.where(split, mid, self.hi), right_hi])
        self.example = torch.cat([self.example, right_ex])
        self.lo = torch.cat([self.lo, right_lo])
        n_right = right_ex.numel()
        self.gaps = torch.cat([self.gaps, self.gaps.new_zeros(n_right)])
        self.kron = [torch.cat([k, k.new_zeros((n_right,) + k.shape[1:])]) for k in self.kron]
        self.diff = [torch.cat([d, d.new_zeros((n_right,) + d.shape[1:])]) for d in self.diff]
        return torch.cat([split, torch.ones(n_right, dtype=torch.bool)])


def _panels(
    run: _Auto, examples: Tensor, budget: Tensor, pieces: int = 2
) -> tuple[list[Tensor], Tensor, Tensor, Tensor]:
    """Adaptive Lobatto–Kronrod panels for the given examples, from ``pieces`` equal ones each, at most ``budget``
    points each. Returns, for the whole batch (zero for the other examples), the integrals of the gradient, the
    error estimates and |A|₁ (absolute), and the points used.

    A panel's error is its Kronrod − Lobatto difference plus its completeness gap: the panel's nodes include its
    ends, and its attributions must add up to ``F(hi) − F(lo)`` (which a bump between nodes of equal gradient
    shows). The gaps are added up over an example's panels."""
    batch = run.batch
    points_used = torch.zeros(batch, dtype=torch.long)
    lo = torch.arange(pieces, dtype=torch.float64).repeat(examples.numel()) / pieces
    panels = _Panels(
        examples.repeat_interleave(pieces),
        lo,
        lo + 1.0 / pieces,
        torch.zeros(examples.numel() * pieces, dtype=torch.float64),
    )
    new = torch.ones(panels.example.numel(), dtype=torch.bool)
    while True:
        idx = torch.nonzero(new).flatten()
        if idx.numel():
            points_used += _evaluate_panels(run, panels, idx)
        grads, error, attr_l1, panel_error = _panel_totals(run, panels)
        done = (error <= run.tolerance * attr_l1) | (points_used + 2 * POINTS_PER_PANEL > budget)
        allowed = _share(panel_error, panels.example, batch, run.tolerance, attr_l1)
        split = (panel_error > allowed) & ~done.index_select(0, panels.example) & (panels.hi - panels.lo > MIN_WIDTH)
        split = _within_points(split, panel_error, panels.example, (budget - points_used) // (2 * POINTS_PER_PANEL))
        if not bool(split.any()):
            return grads, error, attr_l1, points_used
        new = panels.bisect(split)


def _evaluate_panels(run: _Auto, panels: _Panels, idx: Tensor) -> Tensor:
    """Evaluate the panels ``idx`` and store their integrals, differences and gaps; returns the points used per
    example."""
    n_new = idx.numel()
    lo, hi, ex = panels.lo[idx], panels.hi[idx], panels.example[idx]
    half = (hi - lo) / 2
    nodes = torch.from_numpy(NODES)
    rule = torch.from_numpy(np.stack([KRONROD_WEIGHTS, LOBATTO_WEIGHTS], axis=1))
    alphas = ((lo + hi) / 2).repeat_interleave(POINTS_PER_PANEL) + half.repeat_interleave(
        POINTS_PER_PANEL
    ) * nodes.repeat(n_new)
    weights = half.repeat_interleave(POINTS_PER_PANEL).unsqueeze(1) * rule.repeat(n_new, 1)
    rows_example = ex.repeat_interleave(POINTS_PER_PANEL)
    rows = Rows(rows_example, alphas, weights, torch.arange(n_new).repeat_interleave(POINTS_PER_PANEL), n_new)
    reduction = WeightedSum(rows, run.path)
    run.hold(sum(t.numel() * t.element_size() for t in (panels.kron or []) + (panels.diff or [])))
    values = evaluate_rows(run.probe, run.path, rows, reduction, run.chunking)
    sums = reduction.sums
    scales = [v.index_select(0, ex.to(v.device)).to(s.dtype) for s, v in zip(sums, run.velocity)]
    k_new = [s[0] for s in sums]
    d_new = [(s[0] - s[1]) * c for s, c in zip(sums, scales)]
    contribution = torch.cat([(k * c).reshape(n_new, -1) for k, c in zip(k_new, scales)], 1)
    panels.gaps[idx] = _completeness_gap(contribution, values.view(n_new, POINTS_PER_PANEL)[:, [0, -1]], run.eps)
    if panels.kron is None:
        panels.kron, panels.diff = k_new, d_new
    else:
        for parts, fresh in ((panels.kron, k_new), (panels.diff, d_new)):
            for j, f in enumerate(fresh):
                parts[j][idx.to(parts[j].device)] = f
    return torch.bincount(rows_example, minlength=run.batch)


def _panel_totals(run: _Auto, panels: _Panels) -> tuple[list[Tensor], Tensor, Tensor, Tensor]:
    """Per example: the integrals (sum of its panels'), the error estimate and |A|₁; and each panel's error."""
    batch = run.batch
    n_panels = panels.example.numel()
    ex_dev = [panels.example.to(k.device) for k in panels.kron]
    grads = [
        torch.zeros((batch,) + k.shape[1:], dtype=k.dtype, device=k.device).index_add_(0, e, k)
        for k, e in zip(panels.kron, ex_dev)
    ]
    attr_l1 = sum(
        (g * v.to(g.dtype)).reshape(batch, -1).abs().sum(1).double().cpu() for g, v in zip(grads, run.velocity)
    )
    # Panel errors of random sign add like a random walk: root-sum-square over panels, per feature, then L1.
    sq = [
        torch.zeros((batch,) + d.shape[1:], dtype=d.dtype, device=d.device).index_add_(0, e, d * d)
        for d, e in zip(panels.diff, ex_dev)
    ]
    panel_error = sum(d.reshape(n_panels, -1).abs().sum(1).double().cpu() for d in panels.diff) + panels.gaps
    error = sum(q.sqrt().reshape(batch, -1).sum(1).double().cpu() for q in sq) + torch.zeros(
        batch, dtype=torch.float64
    ).index_add_(0, panels.example, panels.gaps)
    return grads, error, attr_l1, panel_error


def _within_points(split: Tensor, panel_error: Tensor, panel_example: Tensor, room: Tensor) -> Tensor:
    """At most ``room[e]`` of example ``e``'s panels marked in ``split`` (each split costs two new panels), those
    with the largest errors, so that no example passes its points."""
    marked = torch.nonzero(split).flatten()
    if marked.numel() == 0:
        return split
    order = marked[torch.argsort(panel_error[marked], descending=True, stable=True)]
    order = order[torch.argsort(panel_example[order], stable=True)]
    owner = panel_example[order]
    rank = torch.arange(order.numel()) - torch.searchsorted(owner, owner)
    kept = torch.zeros_like(split)
    kept[order[rank < room.clamp_min(0).index_select(0, owner)]] = True
    return kept
