"""Known-answer tests for integrad.metrics.

The reference model is linear, F(x) = w . x + b, whose Integrated Gradients
attribution is exactly w * (x - x'); it is computed analytically here, so the
metrics are checked against closed-form values independent of any IG code.
"""

import importlib
import math

import numpy as np
import pytest
import torch
from torch import nn

from integrad.metrics import (
    METRICS,
    abpc,
    completeness_error,
    complexity,
    infidelity,
    lerf,
    morf,
    mu_fidelity,
    sensitivity_max,
)

DT = torch.float64


class Linear(nn.Module):
    """F(x) = x.flatten() @ W.T + b with C outputs, or a scalar per example if scalar=True."""

    def __init__(self, d, c=3, scalar=False, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.scalar = scalar
        self.weight = nn.Parameter(torch.randn(1 if scalar else c, d, generator=g, dtype=DT))
        self.bias = nn.Parameter(torch.randn(1 if scalar else c, generator=g, dtype=DT))

    def forward(self, x):
        out = x.flatten(1) @ self.weight.T + self.bias
        return out[:, 0] if self.scalar else out


class TwoClass(nn.Module):
    """Logits (z, -z) with z = w . x + b: the target-0 probability is sigmoid(2 z), monotone in z."""

    def __init__(self, d, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(d, generator=g, dtype=DT))
        self.bias = nn.Parameter(torch.randn((), generator=g, dtype=DT))

    def forward(self, x):
        z = x.flatten(1) @ self.weight + self.bias
        return torch.stack([z, -z], dim=1)


def exact_ig(model, x, targets=None, baseline=0.0):
    """Analytic IG of a Linear model: w_t * (x - x')."""
    w = model.weight.detach()
    w_rows = w[0].expand(x.shape[0], -1) if targets is None else w[targets]
    return w_rows.reshape(x.shape) * (x - baseline)


def data(n=6, d=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=DT)


def rand_like(t, seed=123):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(t.shape, generator=g, dtype=t.dtype)


def flip_area(y):
    """Trapezoid area of a curve sampled at equally spaced fractions 0..1."""
    y = np.asarray(y, dtype=np.float64)
    return float(((y[:-1] + y[1:]) / 2).sum() / (len(y) - 1))


def analytic_morf_lerf(f_x, phi, descending):
    """Linear scalar model, one feature per step: y_k = F(x) - (sum of the first k attributions in order)."""
    order = np.argsort(-phi if descending else phi, kind="stable")
    y = [f_x] + list(f_x - np.cumsum(phi[order]))
    return flip_area(y)


# --------------------------------------------------------------------------- registry


def test_registry_names_and_directions():
    expected = {
        "completeness_error": False,
        "infidelity": False,
        "sensitivity_max": False,
        "mu_fidelity": True,
        "morf": False,
        "lerf": True,
        "abpc": True,
        "complexity": False,
    }
    assert {name: fn.higher_is_better for name, fn in METRICS.items()} == expected
    assert METRICS["morf"] is morf and METRICS["complexity"] is complexity
    for fn in METRICS.values():
        assert isinstance(fn.higher_is_better, bool)
        assert fn.__doc__ and "References" in fn.__doc__


def test_common_options_accepted_by_every_metric():
    model = Linear(4, scalar=True)
    x = data(3, 4)
    phi = exact_ig(model, x)

    class ConstExplainer:
        def attribute(self, inputs, targets):
            return model.weight.detach()[0].expand(inputs.shape[0], -1).clone()

    common = dict(
        baselines=0.0,
        seed=0,
        batch_size=4,
        explainer=ConstExplainer(),
        forward_arg_extractor=None,
        additional_forward_arg_extractor=None,
    )
    for name, fn in METRICS.items():
        score = fn(model, x, phi, None, **common)
        assert score.shape == (3,), name
        assert score.dtype.is_floating_point, name
        assert torch.isfinite(score).all(), name


# --------------------------------------------------------------------------- completeness


def test_completeness_exact_ig_is_zero_and_shift_gives_offset():
    model = Linear(8)
    x = data()
    t = torch.tensor([0, 1, 2, 0, 1, 2])
    base = rand_like(x[0], seed=7)  # per-feature baseline broadcast over the batch
    phi = exact_ig(model, x, t, base)
    assert completeness_error(model, x, phi, t, baselines=base).abs().max() < 1e-12

    offset = torch.tensor([0.5, -2.0, 3.0, 0.0, 1.25, -0.75], dtype=DT)
    shifted = phi + offset[:, None] / x.shape[1]  # spread evenly over the features
    err = completeness_error(model, x, shifted, t, baselines=base)
    torch.testing.assert_close(err, offset.abs(), atol=1e-12, rtol=0)

    # The default baseline is zeros: exact IG against zeros is complete, against `base` it is not.
    phi0 = exact_ig(model, x, t)
    assert completeness_error(model, x, phi0, t).max() < 1e-12
    gap = (model.weight.detach()[t] * base).sum(1).abs()
    torch.testing.assert_close(completeness_error(model, x, phi0, t, baselines=base), gap, atol=1e-12, rtol=0)


def test_completeness_sums_trailing_dimensions_of_layer_attributions():
    # Attributions with an extra trailing dimension (e.g. per embedding unit) are summed per feature.
    model = Linear(5, scalar=True)
    x = data(4, 5)
    phi = exact_ig(model, x)
    split = torch.stack([0.25 * phi, 0.75 * phi], dim=-1)  # (N, D, 2), same totals
    assert completeness_error(model, x, split, None).max() < 1e-12


# --------------------------------------------------------------------------- infidelity


def test_infidelity_exact_ig_zero_random_large():
    model = Linear(8)
    x = data()
    t = torch.tensor([0, 1, 2, 2, 1, 0])
    phi = exact_ig(model, x, t)
    exact = infidelity(model, x, phi, t, seed=0)
    assert exact.max() < 1e-20
    random = infidelity(model, x, rand_like(phi), t, seed=0)
    assert random.min() > 1e-3


def test_infidelity_known_monte_carlo_value_and_normalisation():
    # With eps ~ N(0, s^2): a constant error c on one feature gives E[(c eps_j)^2] = c^2 s^2;
    # tripling phi gives E[(2 eps.phi)^2] = 4 s^2 |phi|^2 and is removed by the optimal beta = 1/3.
    model = Linear(6, scalar=True)
    x = data(3, 6)
    phi = exact_ig(model, x)
    s, c = 0.3, 2.0
    wrong = phi.clone()
    wrong[:, 2] += c
    est = infidelity(model, x, wrong, None, noise_std=s, n_perturbations=4000, seed=1)
    torch.testing.assert_close(est, torch.full((3,), c**2 * s**2, dtype=DT), rtol=0.12, atol=0)

    tripled = 3 * phi
    est = infidelity(model, x, tripled, None, noise_std=s, n_perturbations=4000, seed=2)
    expected = 4 * s**2 * phi.pow(2).sum(1)
    torch.testing.assert_close(est, expected, rtol=0.12, atol=0)
    normalised = infidelity(model, x, tripled, None, noise_std=s, n_perturbations=50, seed=2, normalize=True)
    assert normalised.max() < 1e-20


def test_infidelity_without_input_scaling_uses_plain_noise():
    # For gradient attributions phi = w, I.phi equals F(x) - F(x - I) exactly.
    model = Linear(5, scalar=True)
    x = data(4, 5)
    grad = model.weight.detach()[0].expand(4, -1).clone()
    assert infidelity(model, x, grad, None, multiply_by_inputs=False, seed=0).max() < 1e-20
    # ...while the same phi scored with input-scaled perturbations is wrong by eps.(w - w*x).
    assert infidelity(model, x, grad, None, multiply_by_inputs=True, seed=0).min() > 1e-4


# --------------------------------------------------------------------------- mu-fidelity


def test_mu_fidelity_exact_one_negated_minus_one_random_lower():
    model = Linear(10)
    x = data(5, 10)
    t = torch.tensor([2, 0, 1, 1, 0])
    phi = exact_ig(model, x, t)
    exact = mu_fidelity(model, x, phi, t, seed=0)
    torch.testing.assert_close(exact, torch.ones(5, dtype=DT), atol=1e-9, rtol=0)
    torch.testing.assert_close(mu_fidelity(model, x, -phi, t, seed=0), -torch.ones(5, dtype=DT), atol=1e-9, rtol=0)
    random = mu_fidelity(model, x, rand_like(phi), t, seed=0, subset_size=3)
    assert random.max() < 0.95 and random.mean() < 0.6


def test_mu_fidelity_zero_attribution_scores_zero():
    model = Linear(6, scalar=True)
    x = data(2, 6)
    assert torch.equal(mu_fidelity(model, x, torch.zeros_like(x), None, seed=0), torch.zeros(2, dtype=DT))


# --------------------------------------------------------------------------- pixel flipping


def test_morf_lerf_match_analytic_curves_on_scalar_linear_model():
    d = 7
    model = Linear(d, scalar=True)
    x = data(5, d)
    phi = exact_ig(model, x)
    f_x = model(x).detach().numpy()
    got_morf = morf(model, x, phi, None, n_steps=d)
    got_lerf = lerf(model, x, phi, None, n_steps=d)
    for n in range(5):
        p = phi[n].numpy()
        assert got_morf[n].item() == pytest.approx(analytic_morf_lerf(f_x[n], p, True), abs=1e-12)
        assert got_lerf[n].item() == pytest.approx(analytic_morf_lerf(f_x[n], p, False), abs=1e-12)
    torch.testing.assert_close(abpc(model, x, phi, None, n_steps=d), got_lerf - got_morf)


def test_exact_ig_beats_random_on_flipping_curves():
    d = 12
    model = Linear(d, scalar=True)
    x = data(8, d)
    phi = exact_ig(model, x)
    rnd = rand_like(phi)
    # Removing the top-k attributions minimises a linear model's output at every k, so exact IG is optimal.
    m_exact, m_rnd = morf(model, x, phi, None, n_steps=d), morf(model, x, rnd, None, n_steps=d)
    a_exact, a_rnd = abpc(model, x, phi, None, n_steps=d), abpc(model, x, rnd, None, n_steps=d)
    assert (m_exact <= m_rnd + 1e-12).all() and m_exact.mean() < m_rnd.mean() - 1e-3
    assert (a_exact >= a_rnd - 1e-12).all() and a_exact.mean() > a_rnd.mean() + 1e-3


def test_softmax_probability_curve_for_two_class_logits():
    d = 6
    model = TwoClass(d)
    x = data(4, d)
    t = torch.zeros(4, dtype=torch.long)
    w = model.weight.detach()
    phi = w * x  # IG of the target-0 logit z
    z = (x @ w + model.bias.detach()).numpy()
    expected = []
    for n in range(4):
        order = np.argsort(-phi[n].numpy(), kind="stable")
        zs = [z[n]] + list(z[n] - np.cumsum(phi[n].numpy()[order]))
        expected.append(flip_area(1 / (1 + np.exp(-2 * np.asarray(zs)))))
    auto = morf(model, x, phi, t, n_steps=d)
    torch.testing.assert_close(auto, torch.tensor(expected, dtype=DT), atol=1e-12, rtol=0)
    torch.testing.assert_close(morf(model, x, phi, t, n_steps=d, apply_softmax=True), auto)
    logits = morf(model, x, phi, t, n_steps=d, apply_softmax=False)
    expected_logit = [analytic_morf_lerf(z[n], phi[n].numpy(), True) for n in range(4)]
    torch.testing.assert_close(logits, torch.tensor(expected_logit, dtype=DT), atol=1e-12, rtol=0)


def test_fractional_steps_round_feature_counts():
    # 5 features in 2 steps: 0, round(2.5) = 2 (banker's rounding), then 5 features removed.
    model = Linear(5, scalar=True)
    x = data(3, 5)
    phi = exact_ig(model, x)
    f_x = model(x).detach().numpy()
    got = morf(model, x, phi, None, n_steps=2)
    for n in range(3):
        p = phi[n].numpy()
        top = np.sort(p)[::-1]
        y = [f_x[n], f_x[n] - top[:2].sum(), f_x[n] - top.sum()]
        assert got[n].item() == pytest.approx(flip_area(y), abs=1e-12)


def test_image_pixels_flip_all_channels_together():
    n, c, h, w = 3, 3, 2, 3
    model = Linear(c * h * w, scalar=True)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(n, c, h, w, generator=g, dtype=DT)
    phi = exact_ig(model, x)
    f_x = model(x).detach().numpy()
    pixel_phi = phi.sum(1).reshape(n, h * w).numpy()  # a pixel's drop is its channels' summed attribution
    got = morf(model, x, phi, None, n_steps=h * w)
    for i in range(n):
        assert got[i].item() == pytest.approx(analytic_morf_lerf(f_x[i], pixel_phi[i], True), abs=1e-12)
    pixel_ids = torch.arange(h * w).view(1, 1, h, w)
    torch.testing.assert_close(morf(model, x, phi, None, n_steps=h * w, feature_mask=pixel_ids), got)
    per_element = morf(model, x, phi, None, n_steps=c * h * w, reduce_channels=False)
    flat = phi.reshape(n, -1).numpy()
    for i in range(n):
        assert per_element[i].item() == pytest.approx(analytic_morf_lerf(f_x[i], flat[i], True), abs=1e-12)


def test_flipping_to_custom_baseline():
    d = 5
    model = Linear(d, scalar=True)
    x = data(3, d)
    base = torch.full((d,), 0.5, dtype=DT)
    phi = exact_ig(model, x, baseline=base)
    f_x = model(x).detach().numpy()
    got = lerf(model, x, phi, None, n_steps=d, baselines=base)
    for n in range(3):
        assert got[n].item() == pytest.approx(analytic_morf_lerf(f_x[n], phi[n].numpy(), False), abs=1e-12)


# --------------------------------------------------------------------------- complexity


def test_complexity_known_entropies():
    d = 8
    x = data(4, d)
    one_hot = torch.zeros(4, d, dtype=DT)
    one_hot[torch.arange(4), torch.tensor([0, 3, 7, 2])] = torch.tensor([1.0, -5.0, 0.1, 2.0], dtype=DT)
    uniform = torch.full((4, d), -0.3, dtype=DT)
    two = torch.zeros(4, d, dtype=DT)
    two[:, :2] = torch.tensor([1.0, -1.0], dtype=DT)
    c_one = complexity(None, x, one_hot, None)
    c_uni = complexity(None, x, uniform, None)
    assert torch.equal(c_one, torch.zeros(4, dtype=DT))
    torch.testing.assert_close(c_uni, torch.full((4,), math.log(d), dtype=DT))
    torch.testing.assert_close(complexity(None, x, two, None), torch.full((4,), math.log(2), dtype=DT))
    assert (c_one < c_uni).all()
    # An all-zero attribution ranks nothing: scored like the uniform distribution.
    torch.testing.assert_close(complexity(None, x, torch.zeros_like(x), None), c_uni)


def test_complexity_over_tuple_and_groups():
    x1, x2 = data(2, 3), data(2, 5)
    a1, a2 = torch.ones(2, 3, dtype=DT), torch.ones(2, 5, dtype=DT)
    torch.testing.assert_close(complexity(None, (x1, x2), (a1, a2), None), torch.full((2,), math.log(8), dtype=DT))
    # Grouping 8 equal-mass features into 2 groups of 3 and 5: entropy of (3/8, 5/8).
    masks = (torch.zeros(3, dtype=torch.long), torch.zeros(5, dtype=torch.long))
    p = np.array([3 / 8, 5 / 8])
    expected = float(-(p * np.log(p)).sum())
    # Group ids are local to each input, so the two inputs form two groups.
    got = complexity(None, (x1, x2), (a1, a2), None, feature_mask=masks)
    torch.testing.assert_close(got, torch.full((2,), expected, dtype=DT))


# --------------------------------------------------------------------------- sensitivity


class ConstantGradientExplainer:
    """phi(x) = w_t for every input: a linear model's gradient, constant under perturbation."""

    def __init__(self, model):
        self.model = model
        self.calls = []

    def attribute(self, inputs, targets):
        self.calls.append(inputs.shape[0])
        w = self.model.weight.detach()
        return w[targets].clone() if targets is not None else w[0].expand(inputs.shape[0], -1).clone()


class LinearIGExplainer(ConstantGradientExplainer):
    def attribute(self, inputs, targets):
        return exact_ig(self.model, inputs, targets)


class RandomExplainer:
    def __init__(self, seed=0):
        self.gen = torch.Generator().manual_seed(seed)

    def attribute(self, inputs, targets):
        return torch.randn(inputs.shape, generator=self.gen, dtype=inputs.dtype)


def _gradient_explainer_setup():
    """A linear model, 4 examples, targets, a constant-gradient explainer and its attributions."""
    model = Linear(6)
    x = data(4, 6)
    t = torch.tensor([0, 1, 2, 0])
    explainer = ConstantGradientExplainer(model)
    return model, x, t, explainer, explainer.attribute(x, t)


def test_sensitivity_zero_for_constant_gradient_explainer_positive_for_random():
    model, x, t, grad_explainer, phi = _gradient_explainer_setup()
    grad_explainer.calls.clear()
    score = sensitivity_max(model, x, phi, t, explainer=grad_explainer, n_perturbations=6, batch_size=8, seed=0)
    assert torch.equal(score, torch.zeros(4, dtype=DT))
    # Batched over perturbed copies: 2 perturbations x 4 examples per call, 3 calls for 6 perturbations.
    assert grad_explainer.calls == [8, 8, 8]
    noisy = sensitivity_max(model, x, phi, t, explainer=RandomExplainer(), seed=0)
    assert noisy.min() > 0.5


def test_sensitivity_of_linear_ig_matches_radius_bound():
    # phi(x + delta) - phi(x) = w * delta, so the ratio is |w * delta| / |w * x| <= r |w| / |w * x|;
    # with one feature it is |delta| / |x|, whose maximum over many draws approaches r / |x|.
    model = Linear(5, scalar=True)
    x = data(3, 5)
    explainer = LinearIGExplainer(model)
    phi = exact_ig(model, x)
    r = 0.05
    score = sensitivity_max(model, x, phi, None, explainer=explainer, radius=r, seed=0)
    w = model.weight.detach()[0]
    bound = r * w.norm() / phi.norm(dim=1)
    assert (score > 0).all() and (score <= bound + 1e-12).all()

    model1 = Linear(1, scalar=True)
    x1 = torch.tensor([[2.0], [-0.5]], dtype=DT)
    one = sensitivity_max(
        model1,
        x1,
        exact_ig(model1, x1),
        None,
        explainer=LinearIGExplainer(model1),
        radius=r,
        n_perturbations=400,
        seed=3,
    )
    expected = r / x1.abs()[:, 0]
    assert (one <= expected + 1e-12).all() and (one >= 0.98 * expected).all()
    linf = sensitivity_max(model, x, phi, None, explainer=explainer, radius=r, seed=0, norm="linf")
    assert (linf <= r * w.abs().max() / phi.abs().amax(1) + 1e-12).all()


def test_sensitivity_requires_explainer():
    model = Linear(3, scalar=True)
    x = data(2, 3)
    with pytest.raises(TypeError, match="explainer"):
        sensitivity_max(model, x, x, None)
    with pytest.raises(TypeError, match="explainer must have a callable .attribute"):
        sensitivity_max(model, x, x, None, explainer=object())

    class WrongShape:
        def attribute(self, inputs, targets):
            return torch.zeros(1, 3, dtype=DT)

    with pytest.raises(ValueError, match="explainer.attribute"):
        sensitivity_max(model, x, x, None, explainer=WrongShape(), seed=0)
    with pytest.raises(TypeError, match=r"sensitivity_max adds uniform noise .* floating-point.*int64"):
        sensitivity_max(model, x.long(), x, None, explainer=ConstantGradientExplainer(model), seed=0)


# --------------------------------------------------------------------------- randomness


def _rng_metrics(model, x, phi):
    return {
        "infidelity": lambda **kw: infidelity(model, x, phi, None, n_perturbations=7, **kw),
        "mu_fidelity": lambda **kw: mu_fidelity(model, x, phi + rand_like(phi), None, n_subsets=7, **kw),
        "sensitivity_max": lambda **kw: sensitivity_max(
            model, x, phi, None, explainer=LinearIGExplainer(model), n_perturbations=7, **kw
        ),
    }


def test_determinism_given_seed_and_global_rng_untouched():
    model = Linear(6, scalar=True)
    x = data(4, 6)
    phi = exact_ig(model, x) + 0.1 * rand_like(x)
    runs = _rng_metrics(model, x, phi)
    for name in ("infidelity", "mu_fidelity", "sensitivity_max"):
        fn = runs[name]
        torch.manual_seed(0)
        state = torch.get_rng_state()
        first = fn(seed=5)
        unseeded = fn(seed=None)
        assert torch.equal(torch.get_rng_state(), state), name
        torch.manual_seed(999)  # a different global state must not change seeded results
        assert torch.equal(fn(seed=5), first), name
        assert not torch.equal(fn(seed=6), first), name
        assert unseeded.shape == first.shape


def test_results_do_not_depend_on_batch_size():
    model = Linear(6, scalar=True)
    x = data(4, 6)
    phi = exact_ig(model, x) + 0.1 * rand_like(x)
    runs = _rng_metrics(model, x, phi)
    for name in ("infidelity", "mu_fidelity", "sensitivity_max"):
        whole = runs[name](seed=1)
        for bs in (1, 3, 8, 1000):
            torch.testing.assert_close(runs[name](seed=1, batch_size=bs), whole, atol=1e-12, rtol=0)
    for fn in (morf, lerf, completeness_error):
        torch.testing.assert_close(fn(model, x, phi, None, batch_size=3), fn(model, x, phi, None))


class CountingModel(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.rows = []

    def forward(self, *args):
        self.rows.append(args[0].shape[0])
        return self.inner(*args)


def test_batch_size_bounds_rows_per_forward():
    model = CountingModel(Linear(6, scalar=True))
    x = data(4, 6)
    phi = exact_ig(model.inner, x)
    infidelity(model, x, phi, None, n_perturbations=10, batch_size=9, seed=0)
    assert max(model.rows) <= 9 and sum(model.rows) == 4 + 10 * 4
    model.rows.clear()
    mu_fidelity(model, x, phi, None, n_subsets=10, batch_size=3, seed=0)
    assert max(model.rows) <= 3 and sum(model.rows) == 4 + 10 * 4


def test_sensitivity_batch_size_below_the_batch_bounds_rows_per_explainer_call():
    model, x, t, explainer, phi = _gradient_explainer_setup()
    whole = sensitivity_max(model, x, phi, t, explainer=explainer, n_perturbations=3, seed=0)
    explainer.calls.clear()
    split = sensitivity_max(model, x, phi, t, explainer=explainer, n_perturbations=3, batch_size=3, seed=0)
    assert explainer.calls == [3, 1] * 3
    torch.testing.assert_close(split, whole)


# --------------------------------------------------------------------------- state


def test_model_and_tensors_left_unchanged():
    model = Linear(6, scalar=False)
    model.train()
    model.bias.requires_grad_(False)
    x = data(4, 6).requires_grad_(True)
    x_before = x.detach().clone()
    t = torch.tensor([0, 1, 2, 1])
    phi = exact_ig(model, x.detach(), t)
    phi_before = phi.clone()
    params_before = [p.detach().clone() for p in model.parameters()]
    explainer = ConstantGradientExplainer(model)
    for name, fn in METRICS.items():
        score = fn(model, x, phi, t, seed=0, explainer=explainer)
        assert not score.requires_grad, name
    assert model.training
    assert model.weight.requires_grad and not model.bias.requires_grad
    assert model.weight.grad is None and x.grad is None
    assert x.requires_grad and torch.equal(x.detach(), x_before) and torch.equal(phi, phi_before)
    for p, q in zip(model.parameters(), params_before):
        assert torch.equal(p.detach(), q)


class NormalisedLinear(nn.Module):
    """Linear -> BatchNorm1d -> Linear, in float64."""

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(3)
            self.net = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 3)).double()

    def forward(self, x):
        return self.net(x)


def test_batch_norm_statistics_of_a_model_in_training_mode_are_put_back():
    # Every forward in training mode moves the running statistics: each metric puts them back, and warns that the
    # scores of a model in training mode depend on the batch.
    model = NormalisedLinear().train()
    x = data(4, 6)
    t = torch.tensor([0, 1, 2, 1])
    phi = exact_ig(Linear(6, scalar=False), x, t)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    for name, fn in METRICS.items():
        if name in ("complexity", "sensitivity_max"):
            continue  # these never run the model themselves
        with pytest.warns(RuntimeWarning, match="model is in training mode, where BatchNorm1d"):
            fn(model, x, phi, t, seed=0)
        for n, b in model.named_buffers():
            assert torch.equal(b, buffers[n]), (name, n)
    model(x)
    assert not torch.equal(model.net[1].running_mean, buffers["net.1.running_mean"])


# --------------------------------------------------------------------------- multi-input and extractors


class TwoInput(nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = nn.Parameter(torch.randn(3, generator=g, dtype=DT))
        self.w2 = nn.Parameter(torch.randn(2, 2, generator=g, dtype=DT))

    def forward(self, x1, x2):
        return x1 @ self.w1 + (x2 * self.w2).sum((1, 2)) + 0.5


def test_multi_input_tuple():
    model = TwoInput()
    g = torch.Generator().manual_seed(4)
    x1 = torch.randn(5, 3, generator=g, dtype=DT)
    x2 = torch.randn(5, 2, 2, generator=g, dtype=DT)
    phi = (model.w1.detach() * x1, model.w2.detach() * x2)
    inputs = (x1, x2)
    assert completeness_error(model, inputs, phi, None).max() < 1e-12
    assert infidelity(model, inputs, phi, None, seed=0).max() < 1e-20
    torch.testing.assert_close(mu_fidelity(model, inputs, phi, None, seed=0), torch.ones(5, dtype=DT))
    rnd = (rand_like(x1, 1), rand_like(x2, 2))
    assert infidelity(model, inputs, rnd, None, seed=0).min() > 1e-3
    f_x = model(x1, x2).detach().numpy()
    joint = torch.cat([phi[0], phi[1].flatten(1)], dim=1).numpy()  # features of both inputs ranked together
    got = morf(model, inputs, phi, None, n_steps=7)
    for n in range(5):
        assert got[n].item() == pytest.approx(analytic_morf_lerf(f_x[n], joint[n], True), abs=1e-12)
    base = (torch.zeros(3, dtype=DT), 1.0)
    phi_b = (phi[0], model.w2.detach() * (x2 - 1.0))
    assert completeness_error(model, inputs, phi_b, None, baselines=base).max() < 1e-12


class Gated(nn.Module):
    """Logits (z, -z), z = (w . x1) (1 + |x2|^2): linear in x1, so IG w.r.t. x1 is w * x1 * (1 + |x2|^2)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, generator=torch.Generator().manual_seed(9), dtype=DT))
        self.rows = []

    def gate(self, x2):
        return 1 + x2.pow(2).sum(1)

    def forward(self, x1, x2):
        self.rows.append((x1.shape[0], x2.shape[0]))
        z = (x1 @ self.w) * self.gate(x2)
        return torch.stack([z, -z], 1)


def test_extractor_path_on_batch_with_label():
    model = Gated()
    g = torch.Generator().manual_seed(2)
    x1 = torch.randn(5, 4, generator=g, dtype=DT)
    x2 = torch.randn(5, 3, generator=g, dtype=DT)  # differs per example: rows must stay aligned
    label = torch.tensor([0, 1, 1, 0, 1])
    batch = (x1, x2, label)
    opts = dict(forward_arg_extractor=lambda b: b[0], additional_forward_arg_extractor=lambda b: b[1])
    sign = 1 - 2 * label.to(DT)  # logit of class 1 is -z
    phi = sign[:, None] * model.w.detach() * x1 * model.gate(x2)[:, None]

    assert completeness_error(model, batch, phi, label, **opts).max() < 1e-12
    assert infidelity(model, batch, phi, label, seed=0, batch_size=7, **opts).max() < 1e-20
    torch.testing.assert_close(mu_fidelity(model, batch, phi, label, seed=0, **opts), torch.ones(5, dtype=DT))
    model.rows.clear()
    got = morf(model, batch, phi, label, n_steps=4, apply_softmax=False, **opts)
    assert all(r1 == r2 for r1, r2 in model.rows)
    f_x = (sign * (x1 @ model.w.detach()) * model.gate(x2)).numpy()
    for n in range(5):
        assert got[n].item() == pytest.approx(analytic_morf_lerf(f_x[n], phi[n].numpy(), True), abs=1e-12)
    # A permuted pass-along tensor breaks the identity, proving x2 is routed per example.
    wrong = dict(opts, additional_forward_arg_extractor=lambda b: b[1].flip(0))
    assert infidelity(model, batch, phi, label, seed=0, **wrong).max() > 1e-3

    class BatchExplainer:
        def __init__(self):
            self.seen = []

        def attribute(self, inputs, targets):
            b1, b2, b_label = inputs
            self.seen.append((b1.shape[0], b2.shape[0], b_label.shape[0]))
            s = 1 - 2 * targets.to(DT)
            return s[:, None] * model.w.detach() * model.gate(b2)[:, None]  # gradient w.r.t. x1

    explainer = BatchExplainer()
    grad = explainer.attribute(batch, label)
    explainer.seen.clear()
    score = sensitivity_max(model, batch, grad, label, explainer=explainer, n_perturbations=4, seed=0, **opts)
    assert torch.equal(score, torch.zeros(5, dtype=DT))
    assert explainer.seen == [(20, 20, 20)]

    with pytest.raises(ValueError, match="forward_arg_extractor"):
        sensitivity_max(
            model, batch, grad, label, explainer=explainer, seed=0, forward_arg_extractor=lambda b: b[0] * 1.0
        )


# --------------------------------------------------------------------------- degenerate input


class AnchoredLinearExplainer:
    """phi(z) = w_t * (z - anchor) for a Linear model: exact IG against the baseline ``anchor``."""

    def __init__(self, model, anchor=0.0):
        self.model = model
        self.anchor = anchor

    def attribute(self, inputs, targets):
        return exact_ig(self.model, inputs, targets, self.anchor)


def _entropy(phi):
    """Complexity computed here: entropy of |phi| / sum |phi| per row, log d for an all-zero row."""
    mass = phi.detach().abs().reshape(phi.shape[0], -1).to(torch.float64).numpy()
    out = []
    for row in mass:
        if row.sum() == 0:
            out.append(math.log(row.size))
            continue
        p = row / row.sum()
        p = p[p > 0]
        out.append(float(-(p * np.log(p)).sum()))
    return torch.tensor(out, dtype=phi.dtype)


def _degenerate(case, dtype):
    """(model, inputs, attributions, targets, options for every metric, options per metric) of one degenerate case."""
    g = torch.Generator().manual_seed(11)
    d = 1 if case == "single_feature" else 6
    n = 1 if case == "batch_of_one" else 4
    model = Linear(d, c=3).to(dtype)
    x = torch.randn(n, d, generator=g, dtype=DT).to(dtype)
    t = torch.tensor([0, 2, 1, 0][:n])
    base = 0.0
    per_metric = {}
    if case == "constant_model":
        with torch.no_grad():
            model.weight.zero_()  # F(x) = b: no input matters
    if case == "input_equals_baseline":
        base = torch.full((d,), 0.5, dtype=dtype)
        x = base.expand(n, d).clone()
    phi = exact_ig(model, x, t, base)
    if case in ("zero_attributions", "input_equals_baseline"):
        phi = torch.zeros_like(x)
    if case in ("constant_model", "input_equals_baseline"):
        phi = phi + torch.randn(x.shape, generator=g, dtype=DT).to(dtype)  # any attribution
    if case == "uniform_attributions":
        phi = torch.full_like(x, 0.3)
    if case == "every_subset_all_features":
        per_metric["mu_fidelity"] = {"subset_size": d}
    options = {"baselines": base, "seed": 0, "explainer": AnchoredLinearExplainer(model, base)}
    return model, x, phi, t, options, per_metric


def _documented(case, name, model, x, phi, t, base):
    """The value each metric's documentation gives for a degenerate case, computed here; None where none is."""
    with torch.no_grad():
        f_x = model(x)[torch.arange(x.shape[0]), t]
        f_base = model(torch.zeros_like(x) + base)[torch.arange(x.shape[0]), t]
    zero = torch.zeros(x.shape[0], dtype=x.dtype)
    flat_output = case in ("constant_model", "input_equals_baseline")
    ties = case in ("zero_attributions", "uniform_attributions", "single_feature")
    if name == "completeness_error":
        return (phi.sum(1) - (f_x - f_base)).abs()
    if name == "complexity":
        return _entropy(phi)
    if name == "mu_fidelity" and case != "batch_of_one":
        return zero  # every subset the same set or mass, or an output that does not respond
    if name == "abpc" and (flat_output or ties):
        return zero
    if name in ("morf", "lerf") and flat_output:
        return torch.softmax(model(x).detach(), 1)[torch.arange(x.shape[0]), t]
    return None


DEGENERATE_CASES = (
    "zero_attributions",
    "uniform_attributions",
    "input_equals_baseline",
    "constant_model",
    "single_feature",
    "every_subset_all_features",
    "batch_of_one",
)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("case", DEGENERATE_CASES)
@pytest.mark.parametrize("name", sorted(METRICS))
def test_degenerate_input_gives_a_finite_documented_score(name, case, dtype):
    model, x, phi, t, options, per_metric = _degenerate(case, dtype)
    score = METRICS[name](model, x, phi, t, **options, **per_metric.get(name, {}))
    assert score.shape == (x.shape[0],) and score.dtype == dtype
    assert torch.isfinite(score).all(), score
    expected = _documented(case, name, model, x, phi, t, options["baselines"])
    if expected is not None:
        exact = expected.abs().max() == 0  # a 0 that the documentation promises is exact
        tolerance = 0.0 if exact else 1e-12 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(score, expected, rtol=tolerance, atol=tolerance)


def test_mu_fidelity_of_a_single_feature_or_full_subsets_is_zero_not_a_sign():
    # Every subset is the same set, so the correlation is undefined: 0, where rounding of the centred values used to
    # give +1 or -1 (which the tuner, maximising, rewarded).
    model = Linear(1)
    x = data(5, 1)
    t = torch.tensor([0, 1, 2, 0, 1])
    phi = exact_ig(model, x, t) + rand_like(x)
    assert torch.equal(mu_fidelity(model, x, phi, t, seed=0), torch.zeros(5, dtype=DT))
    model = Linear(6)
    x = data(5, 6)
    phi = exact_ig(model, x, t) + rand_like(x)
    assert torch.equal(mu_fidelity(model, x, phi, t, seed=0, subset_size=6), torch.zeros(5, dtype=DT))
    assert torch.equal(mu_fidelity(model, x, phi, t, seed=0, subset_size=0.99), torch.zeros(5, dtype=DT))
    # One feature fewer than all: the subsets differ, and exact IG of a linear model correlates perfectly.
    exact = mu_fidelity(model, x, exact_ig(model, x, t), t, seed=0, subset_size=5)
    torch.testing.assert_close(exact, torch.ones(5, dtype=DT), atol=1e-9, rtol=0)


def test_mu_fidelity_variation_above_rounding_still_counts():
    # Attributions 1e-9 apart in float64 vary far above rounding (2e-16 relative): the correlation is measured, and
    # a tiny attribution ordered like the output drops correlates perfectly.
    model = Linear(8, scalar=True)
    x = data(3, 8)
    tiny = 1e-9 * exact_ig(model, x)
    torch.testing.assert_close(mu_fidelity(model, x, tiny, None, seed=0), torch.ones(3, dtype=DT), atol=1e-9, rtol=0)
    # An attribution uniform up to rounding does not.
    nearly = torch.full_like(x, 0.1) + 1e-17 * rand_like(x)
    assert torch.equal(mu_fidelity(model, x, nearly, None, seed=0), torch.zeros(3, dtype=DT))


def test_sensitivity_of_zero_attributions_is_the_absolute_change():
    # phi(x) = 0 and phi(x + delta) = w * delta: the relative change is undefined; the score divides by 1 (Captum's
    # convention) and is max |w * delta|, at most r |w|, where it used to be inf.
    model = Linear(5, scalar=True)
    x = data(3, 5)
    explainer = AnchoredLinearExplainer(model, anchor=x[0])
    same = x[0].expand(3, 5).clone()
    zero = torch.zeros_like(same)
    r = 0.05
    score = sensitivity_max(model, same, zero, None, explainer=explainer, radius=r, n_perturbations=200, seed=0)
    bound = r * model.weight.detach()[0].norm()
    assert torch.isfinite(score).all() and (score <= bound).all() and (score >= 0.5 * bound).all()

    class Zeros:
        def attribute(self, inputs, targets):
            return torch.zeros_like(inputs)

    assert torch.equal(sensitivity_max(model, x, zero, None, explainer=Zeros(), seed=0), torch.zeros(3, dtype=DT))


@pytest.mark.parametrize("n_perturbations", [1, 7])
def test_sensitivity_agrees_with_captum_with_and_without_zero_attributions(n_perturbations):
    captum_metrics = importlib.import_module("captum.metrics")
    # Examples 0 and 2 sit on the anchor, so their attribution is zero; 1 and 3 do not.
    model = Linear(5)
    g = torch.Generator().manual_seed(8)
    anchor = torch.randn(5, generator=g, dtype=DT)
    x = torch.stack([anchor, anchor + 1, anchor, anchor - 2])
    t = torch.tensor([0, 1, 2, 1])
    explainer = AnchoredLinearExplainer(model, anchor)
    phi = explainer.attribute(x, t)
    assert phi[0].abs().max() == 0 and phi[1].abs().max() > 0
    r, seed = 0.1, 4
    ours = sensitivity_max(model, x, phi, t, explainer=explainer, radius=r, n_perturbations=n_perturbations, seed=seed)

    def perturb(expanded, radius):
        # The draws sensitivity_max makes: one (N, D) uniform draw per perturbation from a generator seeded with
        # `seed`; Captum repeats every example n_perturbations times in a row, so reorder them to that layout.
        gen = torch.Generator().manual_seed(seed)
        draws = torch.stack([(torch.rand(x.shape, generator=gen, dtype=DT) * 2 - 1) * radius for _ in range(7)])
        return expanded + draws[:n_perturbations].transpose(0, 1).reshape(expanded.shape)

    def explain(inputs, target):
        # Captum hands the clean inputs over as a 1-tuple and expects a tuple back; the perturbed ones as a tensor.
        if isinstance(inputs, tuple):
            return (explainer.attribute(inputs[0], target),)
        return explainer.attribute(inputs, target)

    reference = captum_metrics.sensitivity_max(
        explain,
        x,
        perturb_func=perturb,
        perturb_radius=r,
        n_perturb_samples=n_perturbations,
        target=t,
    )
    torch.testing.assert_close(ours, reference.to(DT), rtol=1e-12, atol=1e-15)


def test_complexity_is_scale_free_and_an_empty_explanation_is_the_worst():
    x = data(3, 6)
    phi = rand_like(x)
    reference = _entropy(phi)
    for scale in (1e-300, 1e-30, 1.0, 1e30, 1e300):
        torch.testing.assert_close(complexity(None, x, phi * scale, None), reference, rtol=1e-12, atol=0)
    tiny = complexity(None, x.float(), (phi * 1e-42).float(), None)  # float32 subnormals
    assert torch.isfinite(tiny).all() and tiny.dtype == torch.float32
    zero = complexity(None, x, torch.zeros_like(x), None)
    torch.testing.assert_close(zero, torch.full((3,), math.log(6), dtype=DT), rtol=1e-15, atol=0)
    assert (zero >= reference).all()
    one = complexity(None, x[:, :1], torch.zeros_like(x[:, :1]), None)
    assert torch.equal(one, torch.zeros(3, dtype=DT))


def test_infidelity_of_zero_attributions_at_the_baseline_is_exactly_zero():
    # x = x': every perturbation x - eps (x - x') is x itself, the output does not move, and zero attributions explain
    # that exactly, with or without the optimal rescaling.
    model = Linear(6)
    base = rand_like(torch.zeros(6, dtype=DT))
    x = base.expand(4, 6).clone()
    t = torch.tensor([0, 1, 2, 0])
    for normalize in (False, True):
        score = infidelity(model, x, torch.zeros_like(x), t, baselines=base, normalize=normalize, seed=0, batch_size=5)
        assert torch.equal(score, torch.zeros(4, dtype=DT))


def test_infidelity_normalisation_survives_extreme_scales():
    # beta * phi does not depend on the scale of phi: the rescaled score is the same for tiny and huge attributions.
    model = Linear(6, scalar=True)
    x = data(3, 6)
    phi = exact_ig(model, x) + 0.3 * rand_like(x)
    reference = infidelity(model, x, phi, None, normalize=True, seed=0)
    for scale in (1e-200, 1e200):
        got = infidelity(model, x, phi * scale, None, normalize=True, seed=0)
        torch.testing.assert_close(got, reference, rtol=1e-10, atol=0)


class NaNModel(nn.Module):
    """A linear model whose output is NaN for every row whose first feature exceeds 50."""

    def __init__(self, d):
        super().__init__()
        self.inner = Linear(d)

    def forward(self, x):
        out = self.inner(x)
        return torch.where(x[:, :1] > 50, torch.full_like(out, math.nan), out)


@pytest.mark.parametrize("name", sorted(set(METRICS) - {"complexity", "sensitivity_max"}))
def test_a_nan_model_output_gives_nan_not_a_plausible_score(name):
    # The output is NaN at examples 1 and 2; example 2 sits on its baseline, where a drop is otherwise taken as 0.
    x = data(4, 6)
    x[1:3, 0] = 100.0
    base = torch.zeros_like(x)
    base[2] = x[2]
    model = NaNModel(6)
    t = torch.tensor([0, 1, 2, 0])
    score = METRICS[name](model, x, rand_like(x), t, baselines=base, seed=0)
    assert torch.isnan(score[1:3]).all(), score
    assert torch.isfinite(score[[0, 3]]).all(), score


def test_a_nan_attribution_gives_nan_for_mu_fidelity_and_complexity():
    model = Linear(6)
    x = data(3, 6)
    t = torch.tensor([0, 1, 2])
    phi = exact_ig(model, x, t)
    phi[1, 2] = math.nan
    for fn in (mu_fidelity, complexity):
        score = fn(model, x, phi, t, seed=0)
        assert torch.isnan(score[1]) and torch.isfinite(score[[0, 2]]).all(), fn.__name__


# --------------------------------------------------------------------------- bad inputs


@pytest.fixture
def setup():
    model = Linear(4)
    x = data(3, 4)
    t = torch.tensor([0, 1, 2])
    return model, x, exact_ig(model, x, t), t


@pytest.mark.parametrize(
    "fn, options, exc, pattern",
    [
        (infidelity, {"nosie_std": 0.1}, TypeError, r"'nosie_std'.*accepted options: noise_std, n_perturbations"),
        (morf, {"n_perturbations": 3}, TypeError, r"'n_perturbations'.*accepted options: n_steps"),
        (infidelity, {"noise_std": -0.1}, ValueError, r"noise_std must be a positive"),
        (infidelity, {"noise_std": 0.0}, ValueError, r"noise_std must be a positive"),
        (infidelity, {"noise_std": "big"}, TypeError, r"infidelity: noise_std must be a positive finite number"),
        (
            infidelity,
            {"n_perturbations": 0},
            ValueError,
            r"infidelity: n_perturbations must be a positive int; got int 0",
        ),
        (infidelity, {"n_perturbations": 2.5}, ValueError, r"n_perturbations must be a positive int; got float 2.5"),
        (infidelity, {"normalize": "yes"}, TypeError, r"infidelity: normalize must be True or False"),
        (infidelity, {"multiply_by_inputs": 1}, TypeError, r"multiply_by_inputs must be True or False"),
        (
            mu_fidelity,
            {"subset_size": 0},
            ValueError,
            r"subset_size must be a fraction in \(0, 1\) or an integer count in \[1, 4\]",
        ),
        (mu_fidelity, {"subset_size": 5}, ValueError, r"subset_size must be .*\[1, 4\]"),
        (mu_fidelity, {"subset_size": 1.0}, ValueError, r"subset_size must be a fraction in \(0, 1\)"),
        (mu_fidelity, {"subset_size": -0.2}, ValueError, r"subset_size"),
        (mu_fidelity, {"subset_size": True}, TypeError, r"subset_size"),
        (mu_fidelity, {"n_subsets": 1}, ValueError, r"mu_fidelity: n_subsets must be an int >= 2"),
        (mu_fidelity, {"n_subsets": 2.0}, ValueError, r"n_subsets must be an int >= 2"),
        (morf, {"n_steps": 0}, ValueError, r"morf: n_steps must be a positive int; got int 0"),
        (lerf, {"n_steps": "auto"}, ValueError, r"lerf: n_steps must be a positive int; got str 'auto'"),
        (morf, {"apply_softmax": 1}, TypeError, r"apply_softmax must be True or False; got int 1 \(or None, which"),
        (morf, {"reduce_channels": None}, TypeError, r"reduce_channels must be True or False"),
        (morf, {"feature_mask": torch.zeros(5, dtype=torch.long)}, ValueError, r"feature_mask must be broadcastable"),
        (morf, {"feature_mask": torch.zeros(4)}, TypeError, r"feature_mask must be None, an integer tensor"),
        (
            morf,
            {"feature_mask": -torch.ones(4, dtype=torch.long)},
            ValueError,
            r"feature_mask group ids must be non-negative",
        ),
        (
            lerf,
            {"baselines": torch.zeros(5)},
            ValueError,
            r"baselines must be broadcastable to the input shape \(3, 4\)",
        ),
        (lerf, {"baselines": (0.0, 1.0)}, ValueError, r"baselines must have one entry per attributed input \(1\)"),
        (lerf, {"baselines": "zeros"}, TypeError, r"baselines must be None \(zeros\), a number"),
        (abpc, {"seed": 1.5}, TypeError, r"abpc: seed must be an int or None"),
        (abpc, {"batch_size": 0}, ValueError, r"abpc: batch_size must be a positive int or None; got int 0"),
        (abpc, {"batch_size": True}, ValueError, r"batch_size must be a positive int or None; got bool"),
        (completeness_error, {"forward_arg_extractor": 3}, TypeError, r"forward_arg_extractor must be a callable"),
        (completeness_error, {"forward_arg_extractor": lambda b: "x"}, TypeError, r"forward_arg_extractor"),
        (sensitivity_max, {}, TypeError, r"requires explainer="),
        (
            sensitivity_max,
            {"explainer": ConstantGradientExplainer(Linear(4)), "norm": "l3"},
            ValueError,
            r"sensitivity_max: norm must be one of l2, l1, linf; got str 'l3'",
        ),
        (
            sensitivity_max,
            {"explainer": ConstantGradientExplainer(Linear(4)), "radius": -1},
            ValueError,
            r"radius must be a positive",
        ),
    ],
)
def test_bad_options(setup, fn, options, exc, pattern):
    model, x, phi, t = setup
    with pytest.raises(exc, match=pattern):
        fn(model, x, phi, t, **options)


def test_bad_shapes_and_targets(setup):
    model, x, phi, t = setup
    with pytest.raises(ValueError, match=r"attributions must have the same shape as the attributed inputs"):
        infidelity(model, x, phi[:, :3], t)
    with pytest.raises(ValueError, match=r"optionally with extra trailing dimensions"):
        morf(model, x, phi[:2], t)
    with pytest.raises(ValueError, match=r"attributions must have one tensor per attributed input \(1\); got 2"):
        mu_fidelity(model, x, (phi, phi), t)
    with pytest.raises(ValueError, match=r"attributions must have the inputs' batch size N = 3"):
        complexity(model, x, phi[:2], t)
    with pytest.raises(TypeError, match=r"attributions must be floating-point"):
        complexity(model, x, phi.long(), t)
    with pytest.raises(ValueError, match=r"every tensor in inputs must have the same batch size \(dim 0\)"):
        completeness_error(model, (x, x[:2]), (phi, phi[:2]), t)
    with pytest.raises(TypeError, match=r"completeness_error: inputs\[0\] must be a torch.Tensor"):
        completeness_error(model, [1, 2], phi, t)
    with pytest.raises(ValueError, match=r"inputs must be a tensor or a non-empty tuple of tensors"):
        completeness_error(model, (), phi, t)
    with pytest.raises(ValueError, match=r"inputs holds no examples"):
        completeness_error(model, x[:0], phi[:0], None)
    with pytest.raises(ValueError, match=r"completeness_error: target is a tensor of shape \(2,\), but there are 3"):
        completeness_error(model, x, phi, t[:2])
    with pytest.raises(ValueError, match=r"target is a list of length 2, but there are 3 examples"):
        completeness_error(model, x, phi, [0, 1])
    with pytest.raises(TypeError, match=r"target must hold integer indices"):
        completeness_error(model, x, phi, t.float())
    with pytest.raises(TypeError, match=r"target must not be a bool"):
        completeness_error(model, x, phi, True)
    with pytest.raises(ValueError, match=r"targets must select one column of \(N, C\) outputs per example"):
        completeness_error(model, x, phi, (0, 1))
    with pytest.raises(ValueError, match=r"targets must be non-negative"):
        completeness_error(model, x, phi, -t)
    with pytest.raises(ValueError, match=r"targets must be class indices in \[0, 2\]"):
        completeness_error(model, x, phi, t + 1)
    with pytest.raises(ValueError, match=r"targets=None needs one scalar output per example.*pass targets"):
        completeness_error(model, x, phi, None)
    scalar = Linear(4, scalar=True)
    with pytest.raises(ValueError, match=r"targets need model outputs of shape \(N, C\)"):
        completeness_error(scalar, x, phi, t)
    with pytest.raises(ValueError, match=r"apply_softmax=True needs targets"):
        morf(scalar, x, phi, None, apply_softmax=True)
    with pytest.raises(TypeError, match=r"model must be callable"):
        infidelity("model", x, phi, t)
    with pytest.raises(TypeError, match=r"model must return a tensor"):
        infidelity(lambda z: z.tolist(), x, phi, t)
    with pytest.raises(TypeError, match=r"infidelity adds Gaussian noise .* floating-point.*int64"):
        infidelity(model, x.long(), phi, t)


def test_targets_in_every_form_the_methods_take_score_alike(setup):
    model, x, phi, _ = setup
    same = torch.ones(3, dtype=torch.long)
    expected = completeness_error(model, x, phi, same)
    for form in (1, torch.tensor(1), torch.tensor([1]), [1, 1, 1], same[:, None], np.int64(1)):
        torch.testing.assert_close(completeness_error(model, x, phi, form), expected, rtol=0, atol=0)
    t = torch.tensor([2, 0, 1])
    torch.testing.assert_close(morf(model, x, phi, [2, 0, 1]), morf(model, x, phi, t), rtol=0, atol=0)


def test_numpy_bools_and_ints_are_accepted_as_options(setup):
    model, x, phi, t = setup
    plain = infidelity(model, x, phi, t, normalize=True, n_perturbations=3, seed=0)
    numpy = infidelity(model, x, phi, t, normalize=np.bool_(True), n_perturbations=np.int64(3), seed=np.int64(0))
    torch.testing.assert_close(numpy, plain, rtol=0, atol=0)


# --------------------------------------------------------------------------- with the library's explainer


def test_library_ig_explainer_agrees_with_analytic_form():
    # The analytic form is the independent check; the library explainer must score identically.
    from integrad.explainers import IntegratedGradients as IGExplainer

    model = Linear(5)
    x = data(4, 5)
    t = torch.tensor([0, 2, 1, 1])
    explainer = IGExplainer(model, n_steps=8)
    phi = explainer.attribute(x, t)
    torch.testing.assert_close(phi, exact_ig(model, x, t), atol=1e-10, rtol=0)
    assert completeness_error(model, x, phi, t).max() < 1e-10
    via_library = sensitivity_max(model, x, phi, t, explainer=explainer, n_perturbations=4, seed=0)
    via_analytic = sensitivity_max(model, x, phi, t, explainer=LinearIGExplainer(model), n_perturbations=4, seed=0)
    torch.testing.assert_close(via_library, via_analytic, atol=1e-9, rtol=0)
    assert (via_library > 0).all()
