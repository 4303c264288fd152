"""The axioms of integrated gradients (Sundararajan, Taly, Yan 2017) as property tests.

Models are drawn from seeds: their weights come from a private generator, so a failing example is reproduced by its
seed alone. Each property states what holds exactly (dummy features, the sum model) or within a bound derived from
the quadrature rule (completeness on a piecewise-linear model: total variation × largest weight).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from integrad import IntegratedGradients
from integrad.rules import alphas_and_weights

METHODS = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")
AXIOM_SETTINGS = settings(max_examples=25, deadline=None, database=None, derandomize=True)

seeds = st.integers(0, 2**31 - 1)
methods = st.sampled_from(METHODS)
step_counts = st.integers(1, 40)


def _steps(method: str, n: int) -> int:
    return max(n, 2) if method == "riemann_trapezoid" else n


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _normal(gen: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=gen, dtype=torch.float64)


class TwoLayer(nn.Module):
    """``W2 · act(W1 z + b1) + b2`` with explicit float64 weights (so that tests can transform them exactly)."""

    def __init__(self, w1, b1, w2, b2, act=torch.tanh):
        super().__init__()
        self.w1, self.b1, self.w2, self.b2 = (nn.Parameter(t.clone(), requires_grad=False) for t in (w1, b1, w2, b2))
        self.act = act

    def forward(self, z):
        return self.act(z @ self.w1.T + self.b1) @ self.w2.T + self.b2


def two_layer(seed: int, n_in: int = 5, hidden: int = 8, n_out: int = 3, act=torch.tanh) -> TwoLayer:
    g = _gen(seed)
    return TwoLayer(
        _normal(g, hidden, n_in, scale=n_in**-0.5),
        _normal(g, hidden, scale=0.5),
        _normal(g, n_out, hidden, scale=hidden**-0.5),
        _normal(g, n_out),
        act,
    )


def points(seed: int, batch: int = 3, n_in: int = 5, scale: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen(seed + 1)
    return _normal(g, batch, n_in, scale=scale), _normal(g, batch, n_in, scale=scale / 3)


def _scale(*tensors: torch.Tensor) -> float:
    return 1.0 + max(float(t.abs().max()) for t in tensors)


# --------------------------------------------------------------------------------------------------- completeness


@AXIOM_SETTINGS
@given(seed=seeds, target=st.integers(0, 2))
def test_completeness_is_exact_to_rounding_on_a_smooth_model_with_many_gauss_points(seed, target):
    model = two_layer(seed)
    x, base = points(seed)
    attr, delta = IntegratedGradients(model).attribute(
        x, base, target=target, n_steps=64, return_convergence_delta=True
    )
    gap = (model(x) - model(base))[:, target]
    torch.testing.assert_close(attr.sum(1), gap, rtol=0, atol=1e-12 * _scale(attr, gap))
    assert float(delta.abs().max()) <= 1e-12 * _scale(attr, gap)


@AXIOM_SETTINGS
@given(seed=seeds, method=methods, n=step_counts, target=st.integers(0, 2))
def test_completeness_error_on_a_relu_network_is_bounded_by_the_integrands_variation(seed, method, n, target):
    """On a one-hidden-layer ReLU network the integrand ``g(α)`` is piecewise constant; it jumps by
    ``W2[t, j] · (W1_j · (x − x′))`` where unit ``j`` switches. Any rule whose cumulative weight stays within its
    largest weight of ``α`` (all five do) errs by at most ``TV(g) · max_k w_k``."""
    n = _steps(method, n)
    model = two_layer(seed, hidden=12, act=torch.relu)
    x, base = points(seed)
    attr, delta = IntegratedGradients(model).attribute(
        x, base, target=target, method=method, n_steps=n, return_convergence_delta=True
    )
    d = x - base
    pre_start = base @ model.w1.T + model.b1  # pre-activation at α = 0, moving at speed `slope`
    slope = d @ model.w1.T
    kink = -pre_start / slope
    crosses = (slope != 0) & (kink > 0) & (kink < 1)
    variation = ((model.w2[target] * slope).abs() * crosses).sum(1)
    _, weights = alphas_and_weights(method, n)
    bound = variation * float(weights.max()) + 1e-12 * _scale(attr, variation)
    assert bool((delta.abs() <= bound).all()), (delta, bound)


@AXIOM_SETTINGS
@given(seed=seeds, method=methods, n=step_counts)
def test_attributions_sum_to_the_rule_applied_to_the_path_integrand(seed, method, n):
    n = _steps(method, n)
    model = two_layer(seed)
    x, base = points(seed)
    ig = IntegratedGradients(model)
    attr = ig.attribute(x, base, target=1, method=method, n_steps=n)
    alphas, weights = alphas_and_weights(method, n)
    g = ig.integrand(x, alphas, base, target=1)
    assert g.shape == (3, n)
    expected = g @ torch.from_numpy(weights.copy())
    torch.testing.assert_close(attr.sum(1), expected, rtol=0, atol=1e-13 * _scale(attr, g))


# ---------------------------------------------------------------------------------------------------- sensitivity


@AXIOM_SETTINGS
@given(
    seed=seeds,
    feature=st.integers(0, 4),
    value=st.floats(-3, 3),
    reference=st.floats(-3, 3),
    steepness=st.floats(0.1, 3.0),
)
def test_sensitivity_a_feature_that_changes_the_output_gets_nonzero_attribution(
    seed, feature, value, reference, steepness
):
    """``F(x) = tanh(s · x_i + c)`` depends on feature ``i`` only; if ``x_i ≠ x′_i`` then ``F(x) ≠ F(x′)``."""
    if abs(value - reference) < 1e-2:
        value = reference + 0.5
    c = float(torch.randn(1, generator=_gen(seed), dtype=torch.float64))
    f = lambda z: torch.tanh(steepness * z[:, feature] + c)  # noqa: E731
    x, base = points(seed, batch=1)
    x[0, feature], base[0, feature] = value, reference
    attr = IntegratedGradients(f).attribute(x, base, n_steps=48)
    gap = float(f(x) - f(base))
    assert gap != 0
    assert float(attr[0, feature]) != 0
    # It carries the whole change, with its sign; the other features carry nothing.
    assert float(attr[0, feature]) == pytest.approx(gap, rel=1e-6, abs=1e-12)
    others = [i for i in range(5) if i != feature]
    assert torch.equal(attr[0, others], torch.zeros(4, dtype=torch.float64))


# -------------------------------------------------------------------------------------- implementation invariance


@AXIOM_SETTINGS
@given(seed=seeds, method=methods, n=step_counts, relu=st.booleans(), target=st.integers(0, 2))
def test_implementation_invariance_functionally_equal_networks_get_equal_attributions(seed, method, n, relu, target):
    """Network 2 permutes the hidden units, rescales each by a power of two (exact in floating point; ReLU is
    positively homogeneous, and for tanh a unit's sign flip is undone by its output weight), and splits every unit
    into two copies that share its output weight: other weights, another width, the same function."""
    n = _steps(method, n)
    act = torch.relu if relu else torch.tanh
    net1 = two_layer(seed, act=act)
    g = _gen(seed + 7)
    h = net1.w1.shape[0]
    perm = torch.randperm(h, generator=g)
    w1, b1, w2 = net1.w1[perm], net1.b1[perm], net1.w2[:, perm]
    if relu:
        scale = 2.0 ** torch.randint(-3, 4, (h,), generator=g).to(torch.float64)
        w1, b1, w2 = w1 * scale[:, None], b1 * scale, w2 / scale
    else:
        sign = torch.where(torch.rand(h, generator=g) < 0.5, -1.0, 1.0).to(torch.float64)
        w1, b1, w2 = w1 * sign[:, None], b1 * sign, w2 * sign
    net2 = TwoLayer(torch.cat([w1, w1]), torch.cat([b1, b1]), torch.cat([w2, w2], 1) / 2, net1.b2, act)
    x, base = points(seed)
    torch.testing.assert_close(net2(x), net1(x), rtol=0, atol=1e-13)
    a1 = IntegratedGradients(net1).attribute(x, base, target=target, method=method, n_steps=n)
    a2 = IntegratedGradients(net2).attribute(x, base, target=target, method=method, n_steps=n)
    torch.testing.assert_close(a2, a1, rtol=0, atol=1e-12 * _scale(a1))


# ------------------------------------------------------------------------------------------------------ linearity


@AXIOM_SETTINGS
@given(seed=seeds, method=methods, n=step_counts, a=st.floats(-4, 4), b=st.floats(-4, 4))
def test_linearity_ig_of_a_combination_is_the_combination_of_igs(seed, method, n, a, b):
    n = _steps(method, n)
    f, g = two_layer(seed), two_layer(seed + 1, act=torch.relu)
    combo = lambda z: a * f(z) + b * g(z)  # noqa: E731
    x, base = points(seed)
    target = [0, 2, 1]
    ig = lambda model: IntegratedGradients(model).attribute(x, base, target=target, method=method, n_steps=n)  # noqa: E731
    ig_f, ig_g, ig_combo = ig(f), ig(g), ig(combo)
    torch.testing.assert_close(
        ig_combo, a * ig_f + b * ig_g, rtol=0, atol=1e-12 * (1 + abs(a) + abs(b)) * _scale(ig_f, ig_g)
    )


# ------------------------------------------------------------------------------------------ symmetry preservation


@AXIOM_SETTINGS
@given(seed=seeds, method=methods, n=step_counts, pair=st.sampled_from([(0, 1), (1, 4), (2, 3), (0, 4)]))
def test_symmetry_preservation_symmetric_features_with_equal_values_get_equal_attributions(seed, method, n, pair):
    """``F(z) = φ(z) + φ(P z)`` with ``P`` swapping features i and j is symmetric in them."""
    n = _steps(method, n)
    phi = two_layer(seed)
    i, j = pair
    swap = list(range(5))
    swap[i], swap[j] = j, i
    f = lambda z: phi(z) + phi(z[:, swap])  # noqa: E731
    x, base = points(seed)
    x[:, j] = x[:, i]
    base[:, j] = base[:, i]
    attr = IntegratedGradients(f).attribute(x, base, target=2, method=method, n_steps=n)
    torch.testing.assert_close(attr[:, i], attr[:, j], rtol=0, atol=1e-13 * _scale(attr))


# ---------------------------------------------------------------------------------------------------------- dummy


@AXIOM_SETTINGS
@given(
    seed=seeds,
    method=methods,
    n=step_counts,
    ignored=st.sets(st.integers(0, 4), min_size=1, max_size=4),
    zero_weights=st.booleans(),
)
def test_dummy_features_the_model_ignores_get_exactly_zero(seed, method, n, ignored, zero_weights):
    n = _steps(method, n)
    used = [i for i in range(5) if i not in ignored]
    net = two_layer(seed, n_in=5 if zero_weights else len(used))
    if zero_weights:
        # The same model reading every feature, with the ignored features' input weights set to zero.
        net.w1.data[:, sorted(ignored)] = 0.0
        f = net
    else:
        f = lambda z: net(z[:, used])  # noqa: E731
    x, base = points(seed)
    attr = IntegratedGradients(f).attribute(x, base, target=0, method=method, n_steps=n)
    dummies = sorted(ignored)
    assert torch.equal(attr[:, dummies], torch.zeros(3, len(dummies), dtype=torch.float64))
    assert bool((attr[:, used] != 0).any())


# --------------------------------------------------------------------------------------------- closed-form cases


@AXIOM_SETTINGS
@given(seed=seeds, target=st.integers(0, 2), relu=st.booleans())
def test_one_step_of_right_riemann_is_gradient_times_input_difference(seed, target, relu):
    model = two_layer(seed, act=torch.relu if relu else torch.tanh)
    x, base = points(seed)
    probe = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(model(probe)[:, target].sum(), probe)
    attr = IntegratedGradients(model).attribute(x, base, target=target, method="riemann_right", n_steps=1)
    torch.testing.assert_close(attr, grad * (x - base), rtol=0, atol=1e-13 * _scale(grad))
    local = IntegratedGradients(model, multiply_by_inputs=False).attribute(
        x, base, target=target, method="riemann_right", n_steps=1
    )
    torch.testing.assert_close(local, grad, rtol=0, atol=1e-13 * _scale(grad))


@AXIOM_SETTINGS
@given(seed=seeds, method=methods, n=step_counts, scalar_baseline=st.floats(-2, 2))
def test_ig_of_the_sum_model_is_the_input_difference(seed, method, n, scalar_baseline):
    n = _steps(method, n)
    g = _gen(seed)
    x1, x2 = _normal(g, 3, 4, scale=2.0), _normal(g, 3, 2, 3, scale=2.0)
    b1 = _normal(g, 3, 4)
    f = lambda a, b: a.sum(1) + b.sum((1, 2))  # noqa: E731
    a1, a2 = IntegratedGradients(f).attribute((x1, x2), (b1, scalar_baseline), method=method, n_steps=n)
    torch.testing.assert_close(a1, x1 - b1, rtol=0, atol=1e-14 * _scale(x1, b1))
    torch.testing.assert_close(a2, x2 - scalar_baseline, rtol=0, atol=1e-14 * (_scale(x2) + abs(scalar_baseline)))


@AXIOM_SETTINGS
@given(seed=seeds, method=methods, n=step_counts)
def test_each_example_is_attributed_independently_of_the_rest_of_the_batch(seed, method, n):
    n = _steps(method, n)
    model = two_layer(seed, act=torch.relu)
    x, base = points(seed, batch=4)
    target = [2, 0, 1, 0]
    ig = IntegratedGradients(model)
    together = ig.attribute(x, base, target=target, method=method, n_steps=n)
    for k in range(4):
        alone = ig.attribute(x[k : k + 1], base[k : k + 1], target=target[k], method=method, n_steps=n)
        torch.testing.assert_close(together[k : k + 1], alone, rtol=0, atol=1e-14 * _scale(alone))
