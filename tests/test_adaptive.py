"""``n_steps="auto"``: error-controlled integration, checked against integrals known exactly.

Smooth test functions get a 4096-point Gauss–Legendre reference in float64 (exact to rounding for them); ReLU
models get their integrated gradients in closed form. The relative L1 error ``|A − A*|₁ / |A*|₁`` is what
``tolerance`` and ``last_report.error_estimate`` speak about.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from integrad import IntegratedGradients, LayerIntegratedGradients, NeuronIntegratedGradients

from models import KINK_X, kinked, kinked_ig, mlp, randn, reference_ig, relative_l1

#: Tiny models run faster and steadier on one thread (see conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")

DT = torch.float64


def check_error_control(ig, exact, attributions, tolerance):
    report = ig.last_report
    true = relative_l1(attributions, exact)
    estimate = report.error_estimate.to(DT)
    assert report.error_estimate.shape == (len(exact),)
    # The estimate is an upper bound of the true error, up to a factor of about 2 ...
    assert bool((true <= 2 * estimate + 1e-12).all()), (true, estimate)
    # ... it is met ...
    assert bool((estimate <= tolerance).all()), (estimate, tolerance)
    # ... and the true error is within the tolerance asked for, with the same slack.
    assert bool((true <= 2 * tolerance).all()), (true, tolerance)
    assert report.rows == int(report.steps.sum())


# ---------------------------------------------------------------------------------------------------- smooth
@pytest.fixture(scope="module")
def sines():
    g = torch.Generator().manual_seed(0)
    w = 2.0 * torch.randn(5, 4, generator=g, dtype=DT)

    def f(z):  # F(x) = Σ_j sin(w_j · x), one scalar per example
        return torch.sin(z @ w.T).sum(1)

    x = torch.randn(3, 4, generator=g, dtype=DT)
    baseline = 0.3 * torch.randn(3, 4, generator=g, dtype=DT)
    return f, x, baseline, reference_ig(f, x, baseline)


@pytest.fixture(scope="module")
def tanh_net():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        net = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 3)).to(DT)
    x = 2.0 * torch.randn(4, 6, generator=torch.Generator().manual_seed(5), dtype=DT)
    return net, x, reference_ig(lambda z: net(z)[:, 1], x, torch.zeros_like(x))


@pytest.mark.parametrize("tolerance", [1e-2, 1e-4, 1e-6])
def test_sines_error_is_controlled(sines, tolerance):
    f, x, baseline, exact = sines
    ig = IntegratedGradients(f)
    got = ig.attribute(x, baselines=baseline, n_steps="auto", tolerance=tolerance)
    check_error_control(ig, exact, got, tolerance)


@pytest.mark.parametrize("tolerance", [1e-3, 1e-5])
def test_tanh_net_error_is_controlled(tanh_net, tolerance):
    net, x, exact = tanh_net
    ig = IntegratedGradients(net)
    got = ig.attribute(x, target=1, n_steps="auto", tolerance=tolerance)
    check_error_control(ig, exact, got, tolerance)


def test_the_13_point_extension_is_exact_to_degree_19():
    from integrad.engine import adaptive

    old, new = adaptive.NODES, adaptive.EXTRA_NODES
    nodes = torch.from_numpy(np.concatenate([old, new]))
    weights = torch.from_numpy(np.concatenate([adaptive.EXTENDED_WEIGHTS_OLD, adaptive.EXTENDED_WEIGHTS_NEW]))
    # One new node inside each gap of the 7-point rule, and every weight positive.
    merged = np.sort(np.concatenate([old, new]))
    assert np.isin(merged[1::2], new).all() and np.isin(merged[::2], old).all()
    assert bool((weights > 0).all())
    for k in range(21):
        exact = 2.0 / (k + 1) if k % 2 == 0 else 0.0
        err = abs(float(weights @ nodes**k) - exact)
        if k <= 19:
            assert err < 1e-14, (k, err)
        else:  # and not beyond
            assert err > 1e-9, (k, err)


def test_smooth_example_stops_at_the_13_point_rule_when_7_points_do_not_suffice():
    # exp(4α) along the path: the 7-point difference misses 1e-6, the 13-point rule's does not.
    c = torch.tensor([[4.0]], dtype=DT)

    def f(z):
        return torch.exp(z @ c.T).sum(1)

    x = torch.ones(1, 1, dtype=DT)
    ig = IntegratedGradients(f)
    got = ig.attribute(x, n_steps="auto", tolerance=1e-6)
    assert ig.last_report.steps.tolist() == [13]
    exact = torch.exp(c[0]) - 1  # ∫₀¹ 4 e^{4α} dα · 1
    true = relative_l1(got, exact.view(1, 1))
    assert float(true[0]) <= float(ig.last_report.error_estimate[0]) <= 1e-6


def test_the_reference_is_converged(sines):
    # The 4096-point reference against a 1024-point one: agreement to rounding shows it is exact for these tests.
    f, x, baseline, exact = sines
    torch.testing.assert_close(reference_ig(f, x, baseline, n=1024), exact, rtol=1e-12, atol=1e-12)


def test_smaller_tolerance_uses_more_steps(tanh_net):
    net, x, exact = tanh_net
    steps, errors = [], []
    for tolerance in [1e-2, 1e-4, 1e-6]:
        ig = IntegratedGradients(net)
        got = ig.attribute(x, target=1, n_steps="auto", tolerance=tolerance)
        steps.append(int(ig.last_report.steps.sum()))
        errors.append(float(relative_l1(got, exact).max()))
    assert steps[0] < steps[1] < steps[2], steps
    assert errors[2] <= 2e-6


# ---------------------------------------------------------------------------------------------------- kinks
@pytest.mark.parametrize("tolerance", [1e-2, 1e-3, 1e-4])
def test_relu_kinks_error_is_controlled(tolerance):
    ig = IntegratedGradients(kinked)
    got = ig.attribute(KINK_X, n_steps="auto", tolerance=tolerance)
    check_error_control(ig, kinked_ig(KINK_X), got, tolerance)


def test_steps_differ_per_example_with_difficulty():
    ig = IntegratedGradients(kinked)
    got = ig.attribute(KINK_X, n_steps="auto", tolerance=1e-4)
    steps = ig.last_report.steps
    # The linear example is integrated exactly by the first panel; the kinked one needs points around its kinks,
    # after which its kinks are reconstructed exactly.
    torch.testing.assert_close(got, kinked_ig(KINK_X), rtol=1e-12, atol=1e-12)
    assert int(steps[1]) == 7
    assert int(steps[0]) >= 7 + 5
    assert ig.last_report.rows == int(steps.sum())


def test_steps_are_those_of_each_example_alone():
    # An example's steps do not depend on what it is batched with.
    ig = IntegratedGradients(kinked)
    ig.attribute(KINK_X, n_steps="auto", tolerance=1e-3)
    together = ig.last_report.steps.clone()
    for i in range(len(KINK_X)):
        ig.attribute(KINK_X[i : i + 1], n_steps="auto", tolerance=1e-3)
        assert int(ig.last_report.steps[0]) == int(together[i])


def test_mixed_relu_layer_closed_form():
    # F(x) = Σ_j relu(w_j · x − c_j), c_j > 0. With s_j = w_j · x, the unit j is active on the path αx for
    # α > c_j / s_j (when s_j > c_j), so A = x ⊙ Σ_j w_j max(0, 1 − c_j / s_j) 1[s_j > c_j].
    g = torch.Generator().manual_seed(1)
    w = torch.randn(8, 5, generator=g, dtype=DT)
    c = 0.1 + 0.5 * torch.rand(8, generator=g, dtype=DT)
    x = 2.0 * torch.randn(3, 5, generator=g, dtype=DT)

    def f(z):
        return torch.relu(z @ w.T - c).sum(1)

    s = x @ w.T
    active = torch.where(s > c, 1 - c / s, torch.zeros_like(s))
    exact = x * (active @ w)
    # The closed form is complete: it sums to F(x) − F(0).
    torch.testing.assert_close(exact.sum(1), f(x) - f(torch.zeros_like(x)), rtol=1e-12, atol=1e-12)
    ig = IntegratedGradients(f)
    got = ig.attribute(x, n_steps="auto", tolerance=1e-3)
    check_error_control(ig, exact, got, 1e-3)


def test_auto_is_better_than_a_fixed_rule_with_the_same_points():
    ig = IntegratedGradients(kinked)
    auto = ig.attribute(KINK_X[:1], n_steps="auto", tolerance=1e-4)
    used = int(ig.last_report.steps[0])
    fixed = ig.attribute(KINK_X[:1], n_steps=used)
    exact = kinked_ig(KINK_X[:1])
    assert float(relative_l1(auto, exact)[0]) < float(relative_l1(fixed, exact)[0])


# ---------------------------------------------------------------------------------------------------- delta
def test_delta_with_auto(tanh_net):
    net, x, exact = tanh_net
    ig = IntegratedGradients(net)
    got, delta = ig.attribute(x, target=1, n_steps="auto", tolerance=1e-4, return_convergence_delta=True)
    with torch.no_grad():
        expected = got.sum(1) - (net(x)[:, 1] - net(torch.zeros_like(x))[:, 1])
    assert delta.shape == (len(x),) and delta.dtype == DT
    torch.testing.assert_close(delta, expected, rtol=1e-8, atol=1e-12)
    assert bool((delta.abs() <= 1e-4 * got.abs().sum(1)).all())
    assert torch.equal(ig.last_report.delta, delta)
    # The end points for the delta are evaluated without gradients: they are not counted as rows.
    assert ig.last_report.rows == int(ig.last_report.steps.sum())


def test_delta_with_auto_on_kinks():
    ig = IntegratedGradients(kinked)
    got, delta = ig.attribute(KINK_X, n_steps="auto", tolerance=1e-3, return_convergence_delta=True)
    expected = got.sum(1) - (kinked(KINK_X) - kinked(torch.zeros_like(KINK_X)))
    torch.testing.assert_close(delta, expected, rtol=1e-8, atol=1e-12)


def test_auto_in_float32_matches_float64():
    # float32 inputs: the integration still reaches the tolerance, within float32 resolution.
    ig = IntegratedGradients(lambda z: kinked(z.double()).float())
    got = ig.attribute(KINK_X.float(), n_steps="auto", tolerance=1e-3)
    assert got.dtype == torch.float32
    assert bool((relative_l1(got, kinked_ig(KINK_X)) <= 2e-3).all())


def test_auto_for_layer_and_neuron(tanh_net):
    net, x, _ = tanh_net
    # Layer IG in the space of the first hidden layer's output, against a 4096-point reference there.
    lig = LayerIntegratedGradients(net, net[1])
    got = lig.attribute(x, target=1, n_steps="auto", tolerance=1e-4)
    with torch.no_grad():
        h, h0 = net[1](net[0](x)), net[1](net[0](torch.zeros_like(x)))
    exact = reference_ig(lambda z: net[2:](z)[:, 1], h, h0)
    assert bool((relative_l1(got, exact) <= 2e-4).all())
    assert lig.last_report.rows == int(lig.last_report.steps.sum())
    # Neuron IG of hidden unit 3 of the second tanh.
    nig = NeuronIntegratedGradients(net, net[3])
    got = nig.attribute(x, 3, n_steps="auto", tolerance=1e-4)
    exact = reference_ig(lambda z: net[:4](z)[:, 3], x, torch.zeros_like(x))
    assert bool((relative_l1(got, exact) <= 2e-4).all())


def test_auto_with_two_inputs_controls_the_error_over_both():
    g = torch.Generator().manual_seed(3)
    w1, w2 = torch.randn(4, 3, generator=g, dtype=DT), torch.randn(4, 2, generator=g, dtype=DT)

    def f(a, b):
        return torch.tanh(a @ w1.T + b @ w2.T).pow(2).sum(1)

    a, b = 2 * torch.randn(3, 3, generator=g, dtype=DT), 2 * torch.randn(3, 2, generator=g, dtype=DT)
    exact = reference_ig(lambda z: f(z[..., :3], z[..., 3:]), torch.cat([a, b], 1), torch.zeros(3, 5, dtype=DT))
    ig = IntegratedGradients(f)
    got_a, got_b = ig.attribute((a, b), n_steps="auto", tolerance=1e-5)
    check_error_control(ig, exact, torch.cat([got_a, got_b], 1), 1e-5)


# ------------------------------------------------------------------------------------------ the tolerance met
def _relative_or_absolute_l1(attr: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """``|A − A*|₁ / |A*|₁`` per example (the absolute error where ``A* = 0``)."""
    error = (attr - exact).abs().reshape(attr.shape[0], -1).sum(1)
    return error / exact.abs().reshape(exact.shape[0], -1).sum(1).clamp_min(1e-12) * (error > 0)


@pytest.mark.parametrize("tolerance", (1e-3, 1e-6, 1e-9))
def test_auto_steps_meet_the_tolerance_on_a_smooth_model(tolerance):
    model = mlp(seed=12, n_in=5, hidden=8, n_out=3, dtype=torch.float64)
    x, base = randn(3, 5, seed=13), randn(3, 5, seed=14)
    ig = IntegratedGradients(model)
    reference = ig.attribute(x, base, target=1, n_steps=200)  # converged to rounding for this analytic integrand
    attr, delta = ig.attribute(x, base, target=1, n_steps="auto", tolerance=tolerance, return_convergence_delta=True)
    report = ig.last_report
    assert report.steps.shape == (3,) and report.steps.dtype == torch.long
    assert bool((report.steps >= 1).all()) and int(report.steps.max()) <= 4096
    assert report.error_estimate is not None and bool((report.error_estimate <= tolerance).all())
    assert bool((_relative_or_absolute_l1(attr, reference) <= tolerance).all())
    gap = (model(x) - model(base))[:, 1].detach()
    assert float(delta.abs().max()) <= tolerance * float(gap.abs().max()) + 1e-14


def test_auto_uses_more_points_for_a_tighter_tolerance():
    model = mlp(seed=15, n_in=5, hidden=8, n_out=3, dtype=torch.float64)
    x = randn(2, 5, seed=16)
    ig = IntegratedGradients(model)
    used = []
    for tolerance in (1e-2, 1e-5, 1e-9):
        ig.attribute(x, target=0, n_steps="auto", tolerance=tolerance)
        used.append(int(ig.last_report.steps.sum()))
    assert used[0] <= used[1] <= used[2] and used[0] < used[2]


@pytest.mark.parametrize("kink", (0.35, 0.01, 0.123, 0.99))
def test_auto_steps_meet_the_tolerance_on_a_single_relu_kink(kink):
    """``F(z) = ReLU(z − c)`` from 0 to x: IG = max(x − c, 0) exactly; the integrand is a step at α = c / x.

    Gauss–Kronrod panels never sample their own end points, so a step within a few percent of a panel's end (near
    α = 0 or 1, or near a bisection point such as 1/8) looks constant to both rules of the pair; the panel must not
    then be accepted with an error estimate of zero.
    """
    f = lambda z: torch.relu(z - kink).sum(1)  # noqa: E731
    x = torch.tensor([[1.0], [0.7]], dtype=torch.float64)
    exact = (x - kink).clamp_min(0.0)
    tolerance = 1e-4
    ig = IntegratedGradients(f)
    attr = ig.attribute(x, n_steps="auto", tolerance=tolerance)
    error = _relative_or_absolute_l1(attr, exact)
    assert bool((error <= 10 * tolerance).all()), (
        f"relative error {error.tolist()} with tolerance {tolerance}; "
        f"estimate {ig.last_report.error_estimate.tolist()}, "
        f"steps {ig.last_report.steps.tolist()}"
    )


def _exact_ig_one_hidden_relu(model: nn.Sequential, x: torch.Tensor, base: torch.Tensor, target: int) -> torch.Tensor:
    """Closed-form IG of ``W2 ReLU(W1 z + b1) + b2``: unit j is active on a sub-interval of [0, 1] of known length."""
    w1, b1, w2 = (t.detach() for t in (model[0].weight, model[0].bias, model[2].weight))
    d = x - base
    start, slope = base @ w1.T + b1, d @ w1.T
    root = torch.where(slope != 0, -start / slope, torch.zeros_like(start)).clamp(0.0, 1.0)
    active = torch.where(slope > 0, 1.0 - root, torch.where(slope < 0, root, (start > 0).to(start.dtype)))
    return d * ((active * w2[target]) @ w1)


def test_closed_form_relu_ig_is_what_a_very_fine_rule_converges_to():
    model = mlp(n_in=10, hidden=32, act=nn.ReLU, seed=3, n_out=3, dtype=torch.float64)
    x, base = randn(3, 10, seed=103), randn(3, 10, seed=104)
    exact = _exact_ig_one_hidden_relu(model, x, base, 0)
    fine = IntegratedGradients(model).attribute(x, base, target=0, method="riemann_middle", n_steps=20000)
    assert bool((_relative_or_absolute_l1(fine, exact) < 1e-4).all())


def test_auto_steps_meet_the_tolerance_on_a_relu_network_from_the_zero_baseline():
    """The default baseline with small biases puts a ReLU network's kinks close to α = 0 (unit j switches at
    α = −b_j / (W_j x)): exactly where Gauss–Kronrod panels do not look."""
    model = mlp(n_in=10, hidden=32, act=nn.ReLU, seed=7, n_out=3, dtype=torch.float64)
    with torch.no_grad():
        model[0].bias.mul_(0.01)
    x = randn(4, 10, seed=107)
    base = torch.zeros_like(x)
    exact = _exact_ig_one_hidden_relu(model, x, base, 0)
    tolerance = 1e-4
    ig = IntegratedGradients(model)
    attr = ig.attribute(x, n_steps="auto", tolerance=tolerance, target=0)
    error = _relative_or_absolute_l1(attr, exact)
    assert bool((error <= 10 * tolerance).all()), (
        f"relative error {error.tolist()} with tolerance {tolerance}; "
        f"estimate {ig.last_report.error_estimate.tolist()}, "
        f"steps {ig.last_report.steps.tolist()}"
    )
