"""Error-controlled integration (``n_steps="auto"``): one Lobatto–Kronrod panel, then kink reconstruction for
piecewise-linear models or adaptive panels for smooth ones, per example.

**First panel.** Every example's path [0, 1] is first evaluated at the 7 nodes of the Kronrod extension of the
4-point Gauss–Lobatto rule (the ends, ±1/√5, ±√(2/3), 0). The Lobatto nodes give a second, lower-order estimate
from the same rows; their difference ``D`` (per feature, multiplied by ``x − x′``) estimates the error, and an
example with ``|D|₁ ≤ tol · |A|₁`` is done: a smooth integrand often stops here. The others get the 13-point
Kronrod extension on [0, 1] (6 more nodes, one in each gap, exact to degree 19; the nodes are found by Newton's method
at import), estimated by its difference from the 7-point rule: a smooth integrand that needs more than 7 points
usually stops there. An example whose estimate fell tenfold or more from 7 to 13 points is analytic-looking and goes
on to the panels below; the rest go on, with all 13 points, to the piecewise-linear phase.

**Piecewise-linear models.** For a network built from ReLU, max-pooling and affine layers, ``F`` along the straight
path is continuous and piecewise linear in α and its gradient ``g`` is piecewise constant; the linear regions are
convex, so when two points lie in one region the whole segment between them does. Equal gradients at both ends
with ``F`` linear between them are taken as the sign of one region. Every other example's points are sorted along
its path and each segment ``[a, b]`` between neighbours, of width ``w``, is classified:

* equal ``g ⊙ (x − x′)`` (to rounding) and ``F(b) − F(a) = s_a w`` (to F's rounding, or √eps of the change),
  with the directional slope ``s = g · (x − x′)``: a linear piece, integrated exactly;
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
down to ``MIN_WIDTH``. When the first refinement shows no linear piece at all, the example is treated as smooth.
This phase keeps the gradients of the points that bound its segments (a point between two linear pieces is dropped,
the pieces being one region); where they would pass half the memory budget, the examples go on with panels.

**Smooth models.** The remaining examples start again from two Lobatto–Kronrod panels. Panel errors of varying
sign add up like a random walk, so an example's estimate is the root-sum-square over its panels of ``D_p``, per
feature, then the L1 norm. While it exceeds ``tol · |A|₁`` the panels whose own error ``|D_p|₁`` exceeds their
share ``tol · |A|₁ / √P`` (or half the example's worst) are bisected.

Within each phase, all rows of a round (every example, segment and panel) are evaluated together, in
memory-budgeted chunks. An example stops at ``MAX_POINTS`` path points, or when only segments narrower than
``MIN_WIDTH`` are left; a RuntimeWarning then says the tolerance was not reached. The estimate is reported per
example in ``last_report.error_estimate`` and the points used in ``last_report.steps``.

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

import numpy as np
import torch
from torch import Tensor

from .engine import Chunking, PathIntegral, Probe, accumulate, end_values
from .memory import default_budget

# The 4-point Gauss–Lobatto rule on [−1, 1] (nodes ±1, ±1/√5) and its 7-point Kronrod extension (adding ±√(2/3), 0),
# as in Gander and Gautschi's adaptive Lobatto quadrature. Both rules sample the panel's end points: a kink close to
# an end cannot hide from them, as it can from Gauss–Kronrod nodes, which stay a few percent of the width inside.
_NODES = np.array([-1.0, -np.sqrt(2.0 / 3.0), -1.0 / np.sqrt(5.0), 0.0, 1.0 / np.sqrt(5.0), np.sqrt(2.0 / 3.0), 1.0])


def _kronrod_rule() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Weights from exactness on x^0 .. x^6, solved in float64 (the rule is in fact exact to degree 9).
    powers = np.arange(7)
    vandermonde = _NODES[None, :] ** powers[:, None]
    moments = np.where(powers % 2 == 0, 2.0 / (powers + 1), 0.0)
    kronrod = np.linalg.solve(vandermonde, moments)
    lobatto = np.array([1 / 6, 0.0, 5 / 6, 0.0, 5 / 6, 0.0, 1 / 6])
    return _NODES.copy(), kronrod, lobatto


def _extension_rule(iterations: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 13-point Kronrod extension of the 7-point rule: 6 more nodes, one inside each gap, placed (by Newton's
    method on the three positive ones) so that the interpolatory rule on all 13 is exact to degree 19.

    Returns the 6 new nodes and the 13-point rule's weights on the 7 old nodes and on the 6 new ones.
    """
    from numpy.polynomial import legendre

    half = NODES[NODES >= 0]  # 0, 1/√5, √(2/3), 1

    def rule(new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        positive = np.sort(np.concatenate([half, new]))
        nodes = np.concatenate([-positive[:0:-1], positive])
        # Interpolatory weights (exact to degree 12), from moments in the Legendre basis for conditioning.
        basis = legendre.legvander(nodes, nodes.size - 1).T
        moments = np.zeros(nodes.size)
        moments[0] = 2.0
        return nodes, np.linalg.solve(basis, moments)

    def residual(new: np.ndarray) -> np.ndarray:
        nodes, weights = rule(new)
        values = legendre.legvander(nodes, 18)[:, [14, 16, 18]]  # odd degrees are exact by symmetry
        return weights @ values

    new = (half[:-1] + half[1:]) / 2  # midpoints of the gaps as the first guess
    for _ in range(iterations):
        r = residual(new)
        if np.abs(r).max() < 1e-15:
            break
        jacobian = np.stack([(residual(new + h) - r) / 1e-7 for h in np.eye(3) * 1e-7], axis=1)
        new = new - np.linalg.solve(jacobian, r)
    nodes, weights = rule(new)
    old = np.isin(nodes, NODES)
    return nodes[~old], weights[old], weights[~old]


NODES, KRONROD_WEIGHTS, LOBATTO_WEIGHTS = _kronrod_rule()
POINTS_PER_PANEL = len(NODES)
EXTRA_NODES, EXTENDED_WEIGHTS_OLD, EXTENDED_WEIGHTS_NEW = _extension_rule()
#: Panels and segments narrower than this are accepted whatever their estimate; bounds the work on a discontinuity.
MIN_WIDTH = 2.0**-16
#: Most path points one example may use.
MAX_POINTS = 4096
#: Points around a solved kink are placed this fraction of the segment's width either side of it.
BRACKET = 1e-3
#: Share of the memory budget the piecewise-linear phase may hold in kept gradients (rows × features).
KEPT_SHARE = 0.5
#: Examples refined together in the piecewise-linear phase. Each may keep gradients for up to this fraction of the
#: share (and at most MAX_POINTS rows), whatever the batch: an example's points never depend on the others.
KEPT_GROUP = 8
#: From 7 to 13 points, an error that falls by this factor or more marks an analytic (smooth) integrand.
SMOOTH_GAIN = 0.1


def integrate_adaptive(probe: Probe, start: tuple[Tensor, ...], end: tuple[Tensor, ...], tolerance: float,
                       chunking: Chunking, need_ends: bool) -> PathIntegral:
    batch = start[0].shape[0]
    delta = tuple(e - s for s, e in zip(start, end))
    sizes = [d[0].numel() for d in delta]
    # First panel: the 7 Lobatto–Kronrod nodes on [0, 1], with every row's gradient kept for the segments.
    examples = torch.arange(batch).repeat_interleave(POINTS_PER_PANEL)
    alphas = torch.from_numpy((NODES + 1) / 2).repeat(batch)
    G, F = _row_gradients(probe, start, delta, examples, alphas, chunking)
    d = torch.cat([x.reshape(batch, -1) for x in delta], 1).to(G.dtype)
    rule = torch.from_numpy(np.stack([KRONROD_WEIGHTS, LOBATTO_WEIGHTS]) / 2).to(G.device, G.dtype)
    per_example = G.view(batch, POINTS_PER_PANEL, -1)
    kron, lob = rule[0] @ per_example, rule[1] @ per_example
    attr_l1 = (kron * d).abs().sum(1).double().cpu()
    # F at α = 0 and α = 1 (the first and last nodes): the attributions must add up to their difference, and by how
    # much they miss it is a lower bound on their L1 error (a bump between nodes that all see the same gradient).
    f_ends = F.view(batch, POINTS_PER_PANEL)[:, [0, -1]]
    eps = _rounding(start, G.dtype)
    error = torch.maximum(((kron - lob) * d).abs().sum(1).double().cpu(), _completeness_gap(kron * d, f_ends, eps))
    points_used = torch.full((batch,), POINTS_PER_PANEL, dtype=torch.long)
    integral = kron
    done = (error <= tolerance * attr_l1) | (points_used + 2 * POINTS_PER_PANEL > MAX_POINTS)
    pending = ~done
    if bool(pending.any()):
        # Second stage: the 13-point extension on [0, 1]. A smooth integrand that the 7-point difference could not
        # certify usually is here; its estimate is the 7-point rule's error, |K₁₃ − K₇|.
        idx = torch.nonzero(pending).flatten()
        n_extra = len(EXTRA_NODES)
        ex2 = idx.repeat_interleave(n_extra)
        alpha2 = torch.from_numpy((EXTRA_NODES + 1) / 2).repeat(idx.numel())
        G2, F2 = _row_gradients(probe, start, delta, ex2, alpha2, chunking)
        idx_dev = idx.to(G.device)
        ext = torch.from_numpy(EXTENDED_WEIGHTS_OLD / 2).to(G.device, G.dtype)
        ext_new = torch.from_numpy(EXTENDED_WEIGHTS_NEW / 2).to(G.device, G.dtype)
        k13 = ext @ per_example[idx_dev] + ext_new @ G2.to(G.dtype).view(idx.numel(), n_extra, -1)
        first_error = error.clone()
        error[idx] = torch.maximum(((k13 - kron[idx_dev]) * d[idx_dev]).abs().sum(1).double().cpu(),
                                   _completeness_gap(k13 * d[idx_dev], f_ends[idx], eps))
        attr_l1[idx] = (k13 * d[idx_dev]).abs().sum(1).double().cpu()
        integral[idx_dev] = k13  # (integral is kron: updated last)
        points_used[idx] += n_extra
        done = (error <= tolerance * attr_l1) | (points_used + 2 * POINTS_PER_PANEL > MAX_POINTS)
        # Errors that fell tenfold or more from 7 to 13 points are those of an analytic integrand: such examples go
        # straight to the panels. A piecewise-linear integrand (gradient jumps) improves only like 1/n between them.
        smooth = ~done & (error <= SMOOTH_GAIN * first_error)
        pending = ~done & ~smooth
    else:
        smooth = torch.zeros(batch, dtype=torch.bool)
    if bool(pending.any()):
        share = KEPT_SHARE * (chunking.budget or default_budget(G.device))
        quota = int(max(1, min(MAX_POINTS, share // (KEPT_GROUP * d.shape[1] * G.element_size()))))
        for group in torch.nonzero(pending).flatten().split(KEPT_GROUP):
            members = torch.zeros(batch, dtype=torch.bool)
            members[group] = True
            keep = members.repeat_interleave(POINTS_PER_PANEL)
            keep2 = members.index_select(0, ex2)
            smooth |= _piecewise_linear(probe, start, delta, chunking, tolerance, d, eps, quota,
                                        torch.cat([examples[keep], ex2[keep2]]),
                                        torch.cat([alphas[keep], alpha2[keep2]]), torch.cat([F[keep], F2[keep2]]),
                                        torch.cat([G[keep.to(G.device)], G2.to(G.dtype)[keep2.to(G.device)]]),
                                        integral, error, attr_l1, points_used)
    if bool(smooth.any()):
        idx = torch.nonzero(smooth).flatten()
        grads, err, l1, pts = _panels(probe, start, delta, idx, tolerance, chunking, MAX_POINTS - points_used, eps)
        flat = torch.cat([g.reshape(batch, -1).to(integral.dtype) for g in grads], 1)
        integral[idx.to(integral.device)] = flat[idx.to(flat.device)]
        error[idx], attr_l1[idx] = err[idx], l1[idx]
        points_used += pts
    # Whatever the phase found, the estimate is never below what the completeness gap proves.
    error = torch.maximum(error, _completeness_gap(integral * d, f_ends, eps))
    estimate = torch.where(attr_l1 > 0, error / attr_l1.clamp_min(1e-300), error)
    finite = torch.isfinite(integral).all(1).cpu()
    estimate = torch.where(finite, estimate, torch.full_like(estimate, float("inf")))
    unmet = ~(estimate <= tolerance)
    if bool((~finite).any()):
        warnings.warn(
            f"n_steps='auto': the gradient is not finite at some path points of {int((~finite).sum())} example(s), so "
            "their attributions are not finite (error_estimate inf). This happens where the model's derivative is "
            "infinite on the path, e.g. sqrt or x**p with p < 1 at a zero baseline: choose a baseline away from that "
            "point, or a rule whose points avoid the ends (a fixed n_steps with method='gausslegendre')",
            RuntimeWarning, stacklevel=4,
        )
    elif bool(unmet.any()):
        warnings.warn(
            f"n_steps='auto' reached its limit of {MAX_POINTS} path points (or pieces of width {MIN_WIDTH:g}) for "
            f"{int(unmet.sum())} example(s) before the estimated error fell below tolerance={tolerance:g}; the "
            f"largest estimate is {float(estimate.max()):.3g} (see last_report.error_estimate)",
            RuntimeWarning, stacklevel=4,
        )
    grads = [part.reshape(d.shape).to(torch.promote_types(d.dtype, torch.float32))
             for part, d in zip(integral.split(sizes, 1), delta)]
    # The first panel's nodes include α = 0 and α = 1: the probe's values there come with its rows.
    first_values = F[:batch * POINTS_PER_PANEL].view(batch, POINTS_PER_PANEL).t()
    f_start, f_end = (end_values(probe, start, delta, chunking, (NODES + 1) / 2, first_values) if need_ends
                      else (None, None))
    return PathIntegral(grads, f_start, f_end, chunking.report(points_used, estimate.float()), delta)


def _row_gradients(probe: Probe, start, delta, examples: Tensor, alphas: Tensor, chunking: Chunking
                   ) -> tuple[Tensor, Tensor]:
    """Each row's gradient, flattened and concatenated over the path tensors (``(rows, D)``), and F at each row."""
    n = examples.numel()
    weights = torch.ones(n, 1, dtype=torch.float64)
    sums, values = accumulate(probe, start, delta, examples, alphas, weights, torch.arange(n), n, chunking)
    return torch.cat([s[0].reshape(n, -1) for s in sums], 1), values


def _rounding(start: tuple[Tensor, ...], accumulated: torch.dtype) -> float:
    """Relative rounding of the model's values and gradients: that of the path's least precise dtype (a float16
    model rounds to float16 whatever the gradients are accumulated in)."""
    return max([torch.finfo(accumulated).eps] + [torch.finfo(s.dtype).eps for s in start if s.is_floating_point()])


def _completeness_gap(attributions: Tensor, f_ends: Tensor, eps: float) -> Tensor:
    """``|Σ_i A_i − (F(b) − F(a))|`` beyond F's rounding, per row of ``attributions`` (an example's, or a panel's
    share of them) with ``f_ends`` the probe at the path's two ends (float64, CPU).

    Since the exact attributions add up to ``F(b) − F(a)``, this is a lower bound on ``|A − A*|₁``.
    """
    f_ends = f_ends.to(torch.float64).cpu()
    total = attributions.sum(1).double().cpu()
    gap = (total - (f_ends[:, 1] - f_ends[:, 0])).abs()
    allowance = 8 * eps * (f_ends.abs().sum(1) + attributions.abs().sum(1).double().cpu())
    return (gap - allowance).clamp_min(0.0)


def _share(seg_error: Tensor, seg_ex: Tensor, batch: int, tolerance: float, attr_l1: Tensor,
           linear: bool = False) -> Tensor:
    """A piece is refined when its error exceeds its share ``tol · |A|₁ / √n`` of the tolerance (``/ n`` for errors
    that add up), or half the worst of its example (errors of pieces that each look fine add up across features)."""
    counts = torch.bincount(seg_ex, minlength=batch).clamp_min(1).double()
    share = tolerance * attr_l1 / (counts if linear else counts.sqrt())
    worst = torch.zeros(batch, dtype=torch.float64).scatter_reduce(0, seg_ex, seg_error, "amax")
    return torch.minimum(share, worst / 2).index_select(0, seg_ex)


def _piecewise_linear(probe: Probe, start, delta, chunking: Chunking, tolerance: float, d: Tensor, f_eps: float,
                      quota: int, ex: Tensor, alpha: Tensor, F: Tensor, G: Tensor, integral: Tensor, error: Tensor,
                      attr_l1: Tensor, points_used: Tensor) -> Tensor:
    """Refine the segments of the given examples' points; fills ``integral``, ``error`` and ``attr_l1`` (float64
    L1 norms) and ``points_used`` for them in place. Returns the examples found not to be piecewise linear, and those
    that would keep the gradients of more than ``quota`` rows (they go on with panels)."""
    batch = d.shape[0]
    dev = G.device
    eps = torch.finfo(G.dtype).eps
    smooth = torch.zeros(batch, dtype=torch.bool)
    members = torch.zeros(batch, dtype=torch.bool)
    members[ex] = True
    first = True
    while True:
        a_idx, b_idx, seg_ex, seg_a, w, tau, dtau, linear, solved, seg_integral, bound = _segments(ex, alpha, F, G, d,
                                                                                                  eps, f_eps)
        seg_dev = seg_ex.to(dev)
        total = torch.zeros((batch, d.shape[1]), dtype=G.dtype, device=dev).index_add_(0, seg_dev, seg_integral)
        # A segment with a solved kink is most likely exact, and the rare wrong ones err in random directions:
        # their bounds add like a random walk, per feature. A segment without one is integrated by the trapezoid
        # rule and does err by about its bound: those add up.
        sq = torch.zeros_like(total).index_add_(0, seg_dev, bound * bound * solved.to(dev, G.dtype).unsqueeze(1))
        seg_error = bound.sum(1).double().cpu()
        l1 = (total * d).abs().sum(1).double().cpu()
        err = sq.sqrt().sum(1).double().cpu() + torch.zeros(batch, dtype=torch.float64).index_add_(
            0, seg_ex, torch.where(solved, 0.0, seg_error))
        rows = members.nonzero().flatten()
        integral[rows.to(dev)] = total[rows.to(dev)]
        error[rows], attr_l1[rows] = err[rows], l1[rows]
        converged = err <= tolerance * l1
        if not first:
            # After the first refinement, an unfinished example without a single linear piece is not piecewise
            # linear.
            found = torch.zeros(batch, dtype=torch.long).index_add_(0, seg_ex, linear.long())
            leave = members & (found == 0) & ~converged
            smooth |= leave
            members &= ~leave
        first = False
        # A converged example is finished (its result is written above): its points are dropped below rather than
        # carried, and segmented again, through every later round of the others.
        members &= ~converged
        refine = seg_error > torch.where(solved, _share(seg_error, seg_ex, batch, tolerance, l1),
                                         _share(seg_error, seg_ex, batch, tolerance, l1, linear=True))
        refine &= members.index_select(0, seg_ex)
        # A solved kink is bracketed by two points just outside the uncertainty of τ. Where the bracket leaves no
        # room (τ too uncertain), and for segments without a solved kink, the segment is bisected, down to MIN_WIDTH.
        offset = torch.maximum(torch.maximum(BRACKET * w, 2 * dtau), torch.full_like(w, 16 * eps))
        bracket = refine & solved & (4 * offset < w)
        left = bracket & (tau >= 2 * offset)
        right = bracket & (w - tau >= 2 * offset)
        split = refine & ~bracket & (w > MIN_WIDTH)
        new_alpha = torch.cat([(seg_a + tau - offset)[left], (seg_a + tau + offset)[right], (seg_a + w / 2)[split]])
        new_ex = torch.cat([seg_ex[left], seg_ex[right], seg_ex[split]])
        # An example whose refinement would pass MAX_POINTS stops where it is.
        wanted = torch.bincount(new_ex, minlength=batch)
        over = points_used + wanted > MAX_POINTS
        if bool(over.any()):
            members &= ~over
            keep = ~over.index_select(0, new_ex)
            new_alpha, new_ex = new_alpha[keep], new_ex[keep]
        if new_ex.numel() == 0:
            return smooth
        # A point between two linear pieces is dropped: the pieces lie in one convex linear region, so the segment
        # joining its neighbours is that region's too, and is recognised as linear in the next round. Points of
        # examples that left (smooth, or out of points) are dropped as well.
        inner = torch.zeros(ex.numel(), dtype=torch.long)
        inner.index_add_(0, torch.cat([a_idx[linear], b_idx[linear]]), torch.ones(2 * int(linear.sum()),
                                                                                   dtype=torch.long))
        keep = members.index_select(0, ex) & (inner < 2)
        # Kept gradients stay within a share of the memory budget: an example that would hold more than its quota
        # of rows goes on with panels, which keep none.
        full = members & (torch.bincount(ex[keep], minlength=batch) + wanted > quota)
        if bool(full.any()):
            smooth |= full
            members &= ~full
            keep &= ~full.index_select(0, ex)
            fresh = ~full.index_select(0, new_ex)
            new_alpha, new_ex = new_alpha[fresh], new_ex[fresh]
            if new_ex.numel() == 0:
                return smooth
        g_new, f_new = _row_gradients(probe, start, delta, new_ex, new_alpha, chunking)
        points_used += torch.bincount(new_ex, minlength=batch)
        keep_dev = keep.to(dev)
        ex, alpha, F = torch.cat([ex[keep], new_ex]), torch.cat([alpha[keep], new_alpha]), torch.cat([F[keep], f_new])
        G = torch.cat([G[keep_dev], g_new.to(G.dtype)])
        keep = members.index_select(0, ex)
        if not bool(keep.all()):
            ex, alpha, F, G = ex[keep], alpha[keep], F[keep], G[keep.to(dev)]


def _segments(ex: Tensor, alpha: Tensor, F: Tensor, G: Tensor, d: Tensor, eps: float, f_eps: float):
    """Neighbouring points of every example: each segment's integral of the gradient and its error bound.

    Gradients count as equal to ``eps`` (that of the dtype they are accumulated in); F's values are known to
    ``f_eps`` (that of the model's least precise dtype)."""
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
    same_g = ((jump * dd).abs().amax(1) <= 64 * eps * scale).cpu()
    rise = F[b] - F[a]
    ftol = 8 * f_eps * (F[a].abs() + F[b].abs() + (sa.abs() + sb.abs()) * w)
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
    return a, b, seg_ex, alpha[a], w, tau, dtau, linear, solved, integral, bound


# ---------------------------------------------------------------------------------------------------- panels
def _panels(probe: Probe, start: tuple[Tensor, ...], delta: tuple[Tensor, ...], examples: Tensor, tolerance: float,
            chunking: Chunking, budget: Tensor, eps: float, pieces: int = 2
            ) -> tuple[list[Tensor], Tensor, Tensor, Tensor]:
    """Adaptive Lobatto–Kronrod panels for the given examples, from ``pieces`` equal ones each, at most ``budget``
    points each. Returns, for the whole batch (zero for the other examples), the integrals of the gradient, the
    error estimates and |A|₁ (absolute), and the points used.

    A panel's error is its Kronrod − Lobatto difference plus its completeness gap: the panel's nodes include its
    ends, and its attributions must add up to ``F(hi) − F(lo)`` (which a bump between nodes of equal gradient
    shows). The gaps are added up over an example's panels."""
    batch = start[0].shape[0]
    points_used = torch.zeros(batch, dtype=torch.long)
    # Leaf panels of every example: where they lie, and (per path tensor) their Kronrod integral of the gradient
    # and the Kronrod − Lobatto difference of their contribution to the attributions (multiplied by x − x′).
    panel_example = examples.repeat_interleave(pieces)
    panel_lo = torch.arange(pieces, dtype=torch.float64).repeat(examples.numel()) / pieces
    panel_hi = panel_lo + 1.0 / pieces
    kron: list[Tensor] | None = None
    diff: list[Tensor] | None = None
    gaps = torch.zeros(panel_example.numel(), dtype=torch.float64)
    new = torch.ones(panel_example.numel(), dtype=torch.bool)
    nodes = torch.from_numpy(NODES)
    rule = torch.from_numpy(np.stack([KRONROD_WEIGHTS, LOBATTO_WEIGHTS], axis=1))
    while True:
        idx = torch.nonzero(new).flatten()
        n_new = idx.numel()
        if n_new:
            lo, hi, ex = panel_lo[idx], panel_hi[idx], panel_example[idx]
            half = (hi - lo) / 2
            alphas = ((lo + hi) / 2).repeat_interleave(POINTS_PER_PANEL) + half.repeat_interleave(
                POINTS_PER_PANEL) * nodes.repeat(n_new)
            weights = half.repeat_interleave(POINTS_PER_PANEL).unsqueeze(1) * rule.repeat(n_new, 1)
            rows_example = ex.repeat_interleave(POINTS_PER_PANEL)
            buckets = torch.arange(n_new).repeat_interleave(POINTS_PER_PANEL)
            sums, values = accumulate(probe, start, delta, rows_example, alphas, weights, buckets, n_new, chunking)
            points_used += torch.bincount(rows_example, minlength=batch)
            scales = [d.index_select(0, ex.to(d.device)).to(s.dtype) for s, d in zip(sums, delta)]
            k_new = [s[0] for s in sums]
            d_new = [(s[0] - s[1]) * c for s, c in zip(sums, scales)]
            contribution = torch.cat([(k * c).reshape(n_new, -1) for k, c in zip(k_new, scales)], 1)
            gaps[idx] = _completeness_gap(contribution, values.view(n_new, POINTS_PER_PANEL)[:, [0, -1]], eps)
            if kron is None:
                kron, diff = k_new, d_new
            else:
                for parts, fresh in ((kron, k_new), (diff, d_new)):
                    for j, f in enumerate(fresh):
                        full = parts[j]
                        full[idx.to(full.device)] = f
        n_panels = panel_example.numel()
        ex_dev = [panel_example.to(k.device) for k in kron]
        grads = [torch.zeros((batch,) + k.shape[1:], dtype=k.dtype, device=k.device).index_add_(0, e, k)
                 for k, e in zip(kron, ex_dev)]
        attr_l1 = sum((g * d.to(g.dtype)).reshape(batch, -1).abs().sum(1).double().cpu() for g, d in zip(grads, delta))
        # Panel errors of random sign add like a random walk: root-sum-square over panels, per feature, then L1.
        sq = [torch.zeros((batch,) + d.shape[1:], dtype=d.dtype, device=d.device).index_add_(0, e, d * d)
              for d, e in zip(diff, ex_dev)]
        panel_error = sum(d.reshape(n_panels, -1).abs().sum(1).double().cpu() for d in diff) + gaps
        error = sum(q.sqrt().reshape(batch, -1).sum(1).double().cpu() for q in sq) + torch.zeros(
            batch, dtype=torch.float64).index_add_(0, panel_example, gaps)
        done = (error <= tolerance * attr_l1) | (points_used + 2 * POINTS_PER_PANEL > budget)
        allowed = _share(panel_error, panel_example, batch, tolerance, attr_l1)
        split = (panel_error > allowed) & ~done.index_select(0, panel_example) & (panel_hi - panel_lo > MIN_WIDTH)
        split = _within_points(split, panel_error, panel_example, (budget - points_used) // (2 * POINTS_PER_PANEL))
        if not bool(split.any()):
            return grads, error, attr_l1, points_used
        # Bisect: the left half takes the panel's slot, the right half is appended.
        mid = (panel_lo + panel_hi) / 2
        right_lo, right_hi, right_ex = mid[split], panel_hi[split], panel_example[split]
        panel_hi = torch.where(split, mid, panel_hi)
        panel_example = torch.cat([panel_example, right_ex])
        panel_lo = torch.cat([panel_lo, right_lo])
        panel_hi = torch.cat([panel_hi, right_hi])
        n_right = right_ex.numel()
        gaps = torch.cat([gaps, gaps.new_zeros(n_right)])
        kron = [torch.cat([k, k.new_zeros((n_right,) + k.shape[1:])]) for k in kron]
        diff = [torch.cat([d, d.new_zeros((n_right,) + d.shape[1:])]) for d in diff]
        new = torch.cat([split, torch.ones(n_right, dtype=torch.bool)])


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
