"""Quadrature rules on [0, 1]: the points (``alphas``) and weights of the path integral.

Integrated gradients approximates ``∫_0^1 g(α) dα`` by ``Σ_k w_k g(α_k)``. Every rule here is computed in float64
and cached; callers cast the weights to the dtype they accumulate in.

Difference from captum: captum's ``riemann_trapezoid`` uses ``α = linspace(0, 1, n)`` with weights ``1/n`` halved at
both ends, which sum to ``(n − 1)/n`` and shrink every attribution by that factor. Here the trapezoid rule is the
true one, ``w = 1/(n − 1)`` halved at the ends, whose weights sum to one and which integrates linear functions
exactly.

References
----------
Sundararajan, Taly, Yan. Axiomatic Attribution for Deep Networks. ICML 2017.
Davis, Rabinowitz. Methods of Numerical Integration, 2nd ed., 1984 (Gauss–Legendre, trapezoid, midpoint rules).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .arguments import METHOD_NAMES, check_method, check_n_steps

#: The rules accepted by ``method=``.
METHODS = METHOD_NAMES


def exact_degree(method: str, n_steps: int) -> int:
    """Highest polynomial degree that ``method`` with ``n_steps`` points integrates exactly on [0, 1].

    Left and right Riemann sums are exact for constants only, the midpoint and trapezoid rules for linear functions
    (the midpoint rule's error cancels by symmetry), and ``n``-point Gauss–Legendre for degree ``2n − 1``.
    """
    method = check_method(method)
    n_steps = check_n_steps(n_steps, method)
    return {
        "riemann_left": 0,
        "riemann_right": 0,
        "riemann_middle": 1,
        "riemann_trapezoid": 1,
        "gausslegendre": 2 * n_steps - 1,
    }[method]


def alphas_and_weights(method: str, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Points ``α_k`` in [0, 1] and weights ``w_k`` of a quadrature rule, in float64.

    Parameters
    ----------
    method : str
        One of ``riemann_left`` (``α_k = k/n``), ``riemann_right`` (``α_k = (k+1)/n``), ``riemann_middle``
        (``α_k = (k+½)/n``), each with ``w_k = 1/n``; ``riemann_trapezoid`` (``α = linspace(0, 1, n)``,
        ``w = 1/(n−1)`` halved at both ends, ``n ≥ 2``); ``gausslegendre`` (Legendre nodes mapped from [−1, 1]).
    n_steps : int
        Number of points, at least 1 (2 for the trapezoid rule).

    Returns
    -------
    alphas, weights : numpy.ndarray
        Read-only float64 arrays of length ``n_steps``; ``weights.sum() == 1`` up to rounding.
    """
    return _rule(check_method(method), check_n_steps(n_steps, method))


@lru_cache(maxsize=64)
def _rule(method: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    k = np.arange(n, dtype=np.float64)
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
        alphas, weights = 0.5 * (nodes + 1.0), 0.5 * weights
    elif method == "riemann_trapezoid":
        alphas = k / (n - 1)
        weights = np.full(n, 1.0 / (n - 1))
        weights[[0, -1]] *= 0.5
    else:
        offset = {"riemann_left": 0.0, "riemann_middle": 0.5, "riemann_right": 1.0}[method]
        alphas = (k + offset) / n
        weights = np.full(n, 1.0 / n)
    alphas.setflags(write=False)
    weights.setflags(write=False)
    return alphas, weights
