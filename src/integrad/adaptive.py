"""Error-controlled integration (``n_steps="auto"``): adaptive Lobatto–Kronrod panels, per example.

Each example's path [0, 1] is covered by panels, starting with one. A panel is evaluated with the 7-point Kronrod
extension of the 4-point Gauss–Lobatto rule; the Lobatto nodes (the panel's ends and ±1/√5) give a second,
lower-order estimate from the same model rows; their difference
``D_p`` (a vector over features, multiplied by ``x − x′``) estimates the panel's error. Panel errors of varying sign
add up like a random walk, so an example's error estimate is the root-sum-square over its panels, per feature, then
the L1 norm over features: ``E = Σ_i (Σ_p D_pi²)^½``. While ``E > tol · |A|₁`` the panels whose own error
``|D_p|₁`` exceeds their share ``tol · |A|₁ / √P`` (or half the example's worst) are bisected. Bisection puts points
where the integrand changes, such as the kinks of a ReLU network; smooth integrands stop after one or two panels.
All examples and panels of a round are evaluated together, in memory-budgeted chunks. An example stops at
``MAX_POINTS`` path points; a RuntimeWarning then says the tolerance was not reached.

The estimate is reported per example in ``last_report.error_estimate`` and the points used in
``last_report.steps``. The completeness delta is not used as the error estimate: per-feature errors of opposite
sign cancel in it.

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


NODES, KRONROD_WEIGHTS, LOBATTO_WEIGHTS = _kronrod_rule()
POINTS_PER_PANEL = len(NODES)
#: Panels narrower than this are accepted whatever their estimate; bounds the work on a discontinuity.
MIN_WIDTH = 2.0**-16
#: Most path points one example may use.
MAX_POINTS = 4096


def integrate_adaptive(probe: Probe, start: tuple[Tensor, ...], end: tuple[Tensor, ...], tolerance: float,
                       chunking: Chunking, need_ends: bool) -> PathIntegral:
    batch = start[0].shape[0]
    delta = tuple(e - s for s, e in zip(start, end))
    points_used = torch.zeros(batch, dtype=torch.long)
    # Leaf panels of every example: where they lie, and (per path tensor) their Kronrod integral of the gradient
    # and the Kronrod − Lobatto difference of their contribution to the attributions (multiplied by x − x′).
    panel_example = torch.arange(batch)
    panel_lo = torch.zeros(batch, dtype=torch.float64)
    panel_hi = torch.ones(batch, dtype=torch.float64)
    kron: list[Tensor] | None = None
    diff: list[Tensor] | None = None
    new = torch.ones(batch, dtype=torch.bool)
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
            sums, _ = accumulate(probe, start, delta, rows_example, alphas, weights, buckets, n_new, chunking)
            points_used += torch.bincount(rows_example, minlength=batch)
            scales = [d.index_select(0, ex.to(d.device)).to(s.dtype) for s, d in zip(sums, delta)]
            k_new = [s[0] for s in sums]
            d_new = [(s[0] - s[1]) * c for s, c in zip(sums, scales)]
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
        error = sum(q.sqrt().reshape(batch, -1).sum(1).double().cpu() for q in sq)
        panel_error = sum(d.reshape(n_panels, -1).abs().sum(1).double().cpu() for d in diff)
        counts = torch.bincount(panel_example, minlength=batch)
        done = (error <= tolerance * attr_l1) | (points_used + 2 * POINTS_PER_PANEL > MAX_POINTS)
        # A panel is split when its own error exceeds its share of the tolerance, or when it is among the worst of
        # an unconverged example whose panels all look fine on their own (their errors add up across features).
        share = tolerance * attr_l1 / counts.clamp_min(1).double().sqrt()
        worst = torch.zeros(batch, dtype=torch.float64).scatter_reduce(0, panel_example, panel_error, "amax")
        allowed = torch.minimum(share, worst / 2).index_select(0, panel_example)
        split = (panel_error > allowed) & ~done.index_select(0, panel_example) & (panel_hi - panel_lo > MIN_WIDTH)
        if not bool(split.any()):
            break
        # Bisect: the left half takes the panel's slot, the right half is appended.
        mid = (panel_lo + panel_hi) / 2
        right_lo, right_hi, right_ex = mid[split], panel_hi[split], panel_example[split]
        panel_hi = torch.where(split, mid, panel_hi)
        panel_example = torch.cat([panel_example, right_ex])
        panel_lo = torch.cat([panel_lo, right_lo])
        panel_hi = torch.cat([panel_hi, right_hi])
        n_right = right_ex.numel()
        kron = [torch.cat([k, k.new_zeros((n_right,) + k.shape[1:])]) for k in kron]
        diff = [torch.cat([d, d.new_zeros((n_right,) + d.shape[1:])]) for d in diff]
        new = torch.cat([split, torch.ones(n_right, dtype=torch.bool)])

    estimate = torch.where(attr_l1 > 0, error / attr_l1.clamp_min(1e-300), error)
    unmet = estimate > tolerance
    if bool(unmet.any()):
        warnings.warn(
            f"n_steps='auto' reached its limit of {MAX_POINTS} path points (or panels of width {MIN_WIDTH:g}) for "
            f"{int(unmet.sum())} example(s) before the estimated error fell below tolerance={tolerance:g}; the "
            f"largest estimate is {float(estimate.max()):.3g} (see last_report.error_estimate)",
            RuntimeWarning, stacklevel=4,
        )
    f_start, f_end = end_values(probe, start, delta, chunking) if need_ends else (None, None)
    return PathIntegral(grads, f_start, f_end, chunking.report(points_used, estimate.float()))
