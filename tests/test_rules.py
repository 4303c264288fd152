"""Quadrature rules: their points and weights, their degree of exactness, and what reaches the attributions.

Exactness is checked twice: on the rule's arrays (``alphas_and_weights``) and through ``IntegratedGradients`` on a
model whose path integrand is a chosen polynomial, so that a rule applied wrongly inside the engine shows up too.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numpy.polynomial import legendre as npleg
from numpy.polynomial import polynomial as nppoly
from torch import nn

from integrad import IntegratedGradients
from integrad.rules import alphas_and_weights, exact_degree

from models import METHODS, PolynomialPath, assert_close_scaled, mlp, randn, random_polynomial, seeded

# Degree of exactness derived by hand, independently of the library's own table.
EXPECTED_DEGREE = {
    "riemann_left": lambda n: 0,
    "riemann_right": lambda n: 0,
    "riemann_middle": lambda n: 1,
    "riemann_trapezoid": lambda n: 1,
    "gausslegendre": lambda n: 2 * n - 1,
}
STEPS = (1, 2, 3, 4, 7, 16, 50, 100)


def _cases(steps=STEPS):
    return [(m, n) for m in METHODS for n in steps if not (m == "riemann_trapezoid" and n < 2)]


def _exact_integral(a: np.ndarray) -> float:
    return math.fsum(c / (k + 1) for k, c in enumerate(a))


# --------------------------------------------------------------------------------------------------- the arrays


@pytest.mark.parametrize("method,n", _cases())
def test_rule_arrays_are_read_only_float64_with_unit_weight_sum(method, n):
    alphas, weights = alphas_and_weights(method, n)
    for arr in (alphas, weights):
        assert isinstance(arr, np.ndarray)
        assert arr.dtype == np.float64
        assert arr.shape == (n,)
        assert not arr.flags.writeable
        with pytest.raises(ValueError):
            arr[0] = 0.5
    assert math.fsum(weights) == pytest.approx(1.0, abs=1e-14)
    assert np.all(weights > 0)
    assert np.all((alphas >= 0) & (alphas <= 1))
    assert np.all(np.diff(alphas) > 0)
    # The cached arrays came back unchanged after the attempted writes.
    again_a, again_w = alphas_and_weights(method, n)
    np.testing.assert_array_equal(again_a, alphas)
    np.testing.assert_array_equal(again_w, weights)


@pytest.mark.parametrize("n", (1, 2, 5, 50))
def test_riemann_points_and_weights_follow_their_definitions(n):
    k = np.arange(n)
    for method, expected in (
        ("riemann_left", k / n),
        ("riemann_right", (k + 1) / n),
        ("riemann_middle", (k + 0.5) / n),
    ):
        alphas, weights = alphas_and_weights(method, n)
        np.testing.assert_allclose(alphas, expected, rtol=0, atol=1e-15)
        np.testing.assert_allclose(weights, np.full(n, 1.0 / n), rtol=1e-15)


@pytest.mark.parametrize("n", (2, 3, 10, 51))
def test_trapezoid_is_the_true_composite_trapezoid(n):
    alphas, weights = alphas_and_weights("riemann_trapezoid", n)
    h = 1.0 / (n - 1)
    np.testing.assert_allclose(alphas, np.linspace(0.0, 1.0, n), rtol=0, atol=1e-15)
    assert alphas[0] == 0.0 and alphas[-1] == 1.0
    expected = np.full(n, h)
    expected[[0, -1]] = h / 2
    np.testing.assert_allclose(weights, expected, rtol=1e-14)


@pytest.mark.parametrize("n", (1, 2, 3, 6, 13, 40))
def test_gauss_legendre_nodes_are_legendre_roots_with_the_classical_weights(n):
    alphas, weights = alphas_and_weights("gausslegendre", n)
    t = 2.0 * alphas - 1.0
    p_n = npleg.Legendre.basis(n)
    dp_n = p_n.deriv()
    # Nodes: the n roots of P_n mapped to [0, 1]; weights: 2 / ((1 − t²) P_n'(t)²) on [−1, 1], halved on [0, 1].
    np.testing.assert_allclose(p_n(t), 0.0, atol=1e-12)
    np.testing.assert_allclose(weights, 1.0 / ((1.0 - t**2) * dp_n(t) ** 2), rtol=1e-11)
    np.testing.assert_allclose(alphas + alphas[::-1], 1.0, atol=1e-15)


@pytest.mark.parametrize(
    "method,n",
    [
        ("riemann_trapezoid", 1),
        ("gausslegendre", 0),
        ("riemann_left", -3),
        ("riemann_right", 2.5),
        ("gausslegendre", True),
    ],
)
def test_bad_step_counts_are_rejected_naming_n_steps(method, n):
    with pytest.raises(ValueError, match="n_steps"):
        alphas_and_weights(method, n)


def test_unknown_rule_is_rejected_naming_the_accepted_ones():
    with pytest.raises(ValueError, match="method.*gausslegendre"):
        alphas_and_weights("simpson", 10)


# ----------------------------------------------------------------------------------------- degree of exactness


@pytest.mark.parametrize("method,n", _cases((1, 2, 3, 4, 5, 6)))
def test_rule_integrates_polynomials_exactly_up_to_its_degree_and_not_beyond(method, n):
    degree = EXPECTED_DEGREE[method](n)
    assert exact_degree(method, n) == degree
    alphas, weights = alphas_and_weights(method, n)
    rng = np.random.default_rng(1000 * n + METHODS.index(method))
    for d in range(degree + 1):
        for _ in range(3):
            a = random_polynomial(rng, d)
            assert math.fsum(weights * nppoly.polyval(alphas, a)) == pytest.approx(_exact_integral(a), abs=1e-13), d
    # One degree more: the error is the leading coefficient times a nonzero constant of the rule.
    for _ in range(3):
        a = random_polynomial(rng, degree + 1)
        error = math.fsum(weights * nppoly.polyval(alphas, a)) - _exact_integral(a)
        assert abs(error) > 1e-9


def _ig_on_polynomial(method: str, n: int, a: np.ndarray, x: torch.Tensor) -> torch.Tensor:
    return IntegratedGradients(PolynomialPath(a)).attribute(x, method=method, n_steps=n)


@pytest.mark.parametrize("method,n", _cases((1, 2, 3, 4, 5, 6)))
def test_integrated_gradients_inherits_the_rules_exactness(method, n):
    """With ``F' = p`` and ``x = 1`` from a zero baseline, IG's single attribution is the rule applied to ``p``."""
    degree = EXPECTED_DEGREE[method](n)
    alphas, weights = alphas_and_weights(method, n)
    rng = np.random.default_rng(7 + 1000 * n + METHODS.index(method))
    x = torch.tensor([[1.0], [0.5], [-0.75]], dtype=torch.float64)
    model_exact = lambda a, v: sum(c * v ** (k + 1) / (k + 1) for k, c in enumerate(a))  # noqa: E731
    for d in list(range(degree + 1)) + [degree + 1]:
        a = random_polynomial(rng, d)
        attr = _ig_on_polynomial(method, n, a, x)
        assert attr.dtype == torch.float64 and attr.shape == x.shape
        # The engine sums exactly the rule's weighted integrand values.
        rule_sum = math.fsum(weights * nppoly.polyval(alphas, a))
        assert float(attr[0, 0]) == pytest.approx(rule_sum, abs=1e-13)
        exact = torch.tensor([[model_exact(a, float(v))] for v in x[:, 0]], dtype=torch.float64)
        if d <= degree:
            torch.testing.assert_close(attr, exact, rtol=0, atol=1e-12)
        else:
            assert abs(float(attr[0, 0]) - float(exact[0, 0])) > 1e-9


@pytest.mark.parametrize("n", (4, 9))
def test_gauss_legendre_handles_a_high_degree_polynomial_in_a_batch_of_features(n):
    """Several features at once: each feature's attribution is its own exact integral for degree 2n − 1."""
    rng = np.random.default_rng(n)
    a = random_polynomial(rng, 2 * n - 1)
    x = torch.tensor(rng.uniform(-1.2, 1.2, (2, 4)), dtype=torch.float64)
    attr = IntegratedGradients(PolynomialPath(a)).attribute(x, n_steps=n)
    model = PolynomialPath(a)
    exact = torch.stack([torch.stack([model(x[i : i + 1, j : j + 1])[0] for j in range(4)]) for i in range(2)])
    torch.testing.assert_close(attr, exact, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------- trapezoid vs captum's


@pytest.mark.parametrize("n", (2, 5, 50))
def test_true_trapezoid_is_captums_rescaled_by_n_over_n_minus_1_on_a_linear_model(n):
    from captum.attr import IntegratedGradients as CaptumIG

    model = seeded(lambda: nn.Linear(5, 3), seed=11)
    x, base = randn(4, 5, seed=1), randn(4, 5, seed=2)
    target = [0, 2, 1, 2]
    ours, delta = IntegratedGradients(model).attribute(
        x, base, target=target, method="riemann_trapezoid", n_steps=n, return_convergence_delta=True
    )
    theirs, their_delta = CaptumIG(model).attribute(
        x, base, target=target, method="riemann_trapezoid", n_steps=n, return_convergence_delta=True
    )
    # A linear model has a constant gradient: IG is exactly W[target] ⊙ (x − x′), and the true trapezoid gets it.
    exact = model.weight.detach()[target] * (x - base)
    torch.testing.assert_close(ours, exact, rtol=0, atol=1e-14)
    assert float(delta.abs().max()) < 1e-13
    # captum's weights sum to (n − 1)/n, so its attributions are short by exactly that factor.
    assert_close_scaled(ours, theirs.detach() * n / (n - 1), rtol=1e-7)
    gap = (model(x) - model(base)).detach()[torch.arange(4), target]
    # Its delta is the missing 1/n of F(x) − F(x′) (up to its float32 weights).
    torch.testing.assert_close(their_delta, -gap / n, rtol=0, atol=1e-7 * float(gap.abs().max()))


# -------------------------------------------------------------------------------------------------- precision


def test_float64_reaches_full_precision_where_captum_stops_at_float32_weights():
    """``F(x) = Σ exp(x_i)`` from zero: ``IG_i = exp(x_i) − 1`` exactly; 20 Gauss–Legendre points resolve it."""
    from captum.attr import IntegratedGradients as CaptumIG

    f = lambda z: torch.exp(z).sum(1)  # noqa: E731
    x = torch.linspace(-2.0, 2.0, 8, dtype=torch.float64).reshape(2, 4)
    exact = torch.expm1(x)
    ours, delta = IntegratedGradients(f).attribute(x, n_steps=20, return_convergence_delta=True)
    theirs = CaptumIG(f).attribute(x, n_steps=20)
    ours_rel = float(((ours - exact).abs() / exact.abs()).max())
    theirs_rel = float(((theirs - exact).abs() / exact.abs()).max())
    assert ours.dtype == torch.float64
    assert ours_rel < 1e-14
    assert float(delta.abs().max()) < 1e-13
    assert theirs_rel >= 1e-9  # the float32 weights' rounding, not the rule, limits captum
    assert theirs_rel > 1e4 * ours_rel


@pytest.mark.parametrize("method", METHODS)
def test_float32_inputs_give_float32_attributions_close_to_float64(method):
    m64 = mlp(seed=4, n_in=5, hidden=8, n_out=3, dtype=torch.float64)
    m32 = mlp(seed=4, dtype=torch.float32, n_in=5, hidden=8, n_out=3)
    x = randn(3, 5, seed=5)
    a64 = IntegratedGradients(m64).attribute(x, target=1, method=method, n_steps=12)
    a32 = IntegratedGradients(m32).attribute(x.float(), target=1, method=method, n_steps=12)
    assert a32.dtype == torch.float32
    assert_close_scaled(a32, a64, rtol=1e-5)


@pytest.mark.parametrize("dtype,rtol", [(torch.float16, 4e-3), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("method", ("gausslegendre", "riemann_middle"))
def test_half_precision_inputs_come_back_in_their_dtype_and_match_float32(dtype, rtol, method):
    half_model = mlp(seed=6, dtype=dtype, n_in=5, hidden=8, n_out=3)
    # The float32 reference uses the very same (rounded) weights and inputs.
    ref_model = mlp(seed=6, dtype=torch.float32, n_in=5, hidden=8, n_out=3)
    ref_model.load_state_dict({k: v.float() for k, v in half_model.state_dict().items()})
    x = randn(4, 5, seed=7, dtype=dtype)
    attr, delta = IntegratedGradients(half_model).attribute(
        x, target=2, method=method, n_steps=24, return_convergence_delta=True
    )
    ref = IntegratedGradients(ref_model).attribute(x.float(), target=2, method=method, n_steps=24)
    assert attr.dtype == dtype and attr.shape == x.shape
    assert torch.isfinite(attr).all()
    assert_close_scaled(attr, ref, rtol=rtol)
    # Completeness holds to the input dtype's precision, relative to the attributions' size.
    assert delta.shape == (4,)
    assert bool((delta.abs() <= 2 * rtol * attr.float().abs().sum(1)).all())


def test_mixed_precision_tuple_keeps_each_inputs_dtype():
    body = mlp(n_in=6, seed=8, dtype=torch.float32, hidden=8, n_out=3)
    f = lambda a, b: body(torch.cat([a.float(), b.float()], 1))  # noqa: E731
    a16 = randn(3, 2, seed=9, dtype=torch.float16)
    b32 = randn(3, 4, seed=10, dtype=torch.float32)
    out = IntegratedGradients(f).attribute((a16, b32), target=0, n_steps=16)
    ref = IntegratedGradients(f).attribute((a16.float(), b32), target=0, n_steps=16)
    assert out[0].dtype == torch.float16 and out[1].dtype == torch.float32
    assert_close_scaled(out, ref, rtol=4e-3)
