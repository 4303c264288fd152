"""Expected Gradients: the formula as a plain loop in float64 (both modes), the mean of integrated gradients over the
background, completeness, and shap's GradientExplainer as a Monte-Carlo reference.

The loops draw as the class documents (``torch.randint`` of the background rows, then ``torch.rand`` of the
positions, from the same generator) and take one ``torch.autograd.grad`` per point.
"""

from __future__ import annotations

import copy
import importlib

import numpy as np
import pytest
import torch
from torch import nn

from integrad import IntegratedGradients
from integrad.methods.expected_gradients import ExpectedGradients


def _mlp(seed: int = 0, n_in: int = 5, n_out: int = 3) -> nn.Sequential:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(n_in, 12), nn.Tanh(), nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, n_out))
    return net.double().eval()


class TwoInputs(nn.Module):
    """``(a: (B, 3), b: (B, 2, 2), scale: (B, 1)) -> (B, 3)``."""

    def __init__(self):
        super().__init__()
        self.inner = _mlp(1, n_in=7)

    def forward(self, a, b, scale):
        return self.inner(torch.cat([a, b.flatten(1)], 1)) * scale


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _relative(a, b) -> float:
    a = a if isinstance(a, tuple) else (a,)
    b = b if isinstance(b, tuple) else (b,)
    scale = max(float(t.abs().max()) for t in b)
    return max(float((p - q).abs().max()) for p, q in zip(a, b)) / scale


def _gl(n: int):
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return (nodes + 1) / 2, weights / 2


def _gradient(f, points):
    points = [p.detach().clone().requires_grad_() for p in points]
    return torch.autograd.grad(f(*points), points)


def _loop_ig(f, x, base, n):
    """Integrated gradients of one example from ``base`` to ``x`` (tuples of unbatched tensors), Gauss–Legendre."""
    total = [torch.zeros_like(t) for t in x]
    for a, w in zip(*_gl(n)):
        grads = _gradient(f, [(s + float(a) * (e - s)).unsqueeze(0) for s, e in zip(base, x)])
        total = [t + w * g[0] * (e - s) for t, g, s, e in zip(total, grads, base, x)]
    return total


@pytest.fixture
def setup():
    model = _mlp()
    return model, _randn(4, 5, seed=1), _randn(6, 5, seed=2), [0, 2, 1, 2]


def _per_example(model, target):
    return lambda i: lambda z: model(z)[0, target[i]]


def test_deterministic_mode_is_the_mean_of_integrated_gradients_over_the_background(setup):
    model, x, background, target = setup
    eg = ExpectedGradients(model)
    for method, n_steps in [("gausslegendre", 16), ("riemann_trapezoid", 30), ("riemann_middle", 7)]:
        got = eg.attribute(x, background, target=target, n_steps=n_steps, method=method)
        ig = IntegratedGradients(model)
        expected = (
            sum(
                ig.attribute(x, background[m : m + 1], target=target, n_steps=n_steps, method=method)
                for m in range(background.shape[0])
            )
            / background.shape[0]
        )
        assert _relative(got, expected) < 1e-13
        local = ExpectedGradients(model, multiply_by_inputs=False).attribute(
            x, background, target=target, n_steps=n_steps, method=method
        )
        local_ig = IntegratedGradients(model, multiply_by_inputs=False)
        expected_local = (
            sum(
                local_ig.attribute(x, background[m : m + 1], target=target, n_steps=n_steps, method=method)
                for m in range(background.shape[0])
            )
            / background.shape[0]
        )
        assert _relative(local, expected_local) < 1e-13


def test_deterministic_mode_matches_a_plain_loop_and_is_complete(setup):
    model, x, background, target = setup
    f = _per_example(model, target)
    expected = torch.stack(
        [sum(_loop_ig(f(i), (x[i],), (background[m],), 24)[0] for m in range(6)) / 6 for i in range(x.shape[0])]
    )
    got, delta = ExpectedGradients(model).attribute(
        x, background, target=target, n_steps=24, return_convergence_delta=True
    )
    assert _relative(got, expected) < 1e-12
    # Completeness against the mean gap to the background, computed directly.
    rows = torch.arange(4)
    with torch.no_grad():
        gap = model(x)[rows, target] - torch.stack([model(background)[:, t].mean() for t in target])
    torch.testing.assert_close(got.sum(1), gap, rtol=0, atol=1e-10)
    torch.testing.assert_close(delta, got.sum(1) - gap, rtol=0, atol=1e-13)


def test_random_mode_matches_a_plain_loop_with_the_same_draws(setup):
    model, x, background, target = setup
    f = _per_example(model, target)
    n = 9
    draws = torch.Generator().manual_seed(42)
    rows = torch.randint(6, (4, n), generator=draws)
    alphas = torch.rand((4, n), generator=draws, dtype=torch.float64)
    expected = torch.zeros_like(x)
    expected_local = torch.zeros_like(x)
    for i in range(4):
        for k in range(n):
            start = background[rows[i, k]]
            (g,) = _gradient(f(i), [(start + alphas[i, k] * (x[i] - start)).unsqueeze(0)])
            expected[i] += g[0] * (x[i] - start) / n
            expected_local[i] += g[0] / n
    got = ExpectedGradients(model).attribute(
        x, background, target=target, n_samples=n, generator=torch.Generator().manual_seed(42)
    )
    assert _relative(got, expected) < 1e-13
    local = ExpectedGradients(model, multiply_by_inputs=False).attribute(
        x, background, target=target, n_samples=n, generator=torch.Generator().manual_seed(42)
    )
    assert _relative(local, expected_local) < 1e-13


def test_a_large_background_is_sampled_without_replacement_per_example(setup):
    model, x, _, target = setup
    background = _randn(11, 5, seed=3)
    f = _per_example(model, target)
    keys = torch.rand((4, 11), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    chosen = keys.argsort(1)[:, :4]
    expected = torch.stack(
        [sum(_loop_ig(f(i), (x[i],), (background[m],), 12)[0] for m in chosen[i]) / 4 for i in range(4)]
    )
    eg = ExpectedGradients(model)
    got, delta = eg.attribute(
        x,
        background,
        target=target,
        n_samples=4,
        n_steps=12,
        generator=torch.Generator().manual_seed(5),
        return_convergence_delta=True,
    )
    assert _relative(got, expected) < 1e-12
    rows = torch.arange(4)
    with torch.no_grad():
        gap = model(x)[rows, target] - torch.stack([model(background[chosen[i]])[:, target[i]].mean() for i in rows])
    torch.testing.assert_close(delta, got.sum(1) - gap, rtol=0, atol=1e-12)
    assert eg.last_report.rows == 4 * 4 * 12


def test_tuple_inputs_with_extra_arguments_in_both_modes():
    model = TwoInputs()
    a, b, scale = _randn(3, 3, seed=4), _randn(3, 2, 2, seed=5), _randn(3, 1, seed=6).abs() + 0.5
    background = (_randn(5, 3, seed=7), _randn(5, 2, 2, seed=8))
    target = [0, 2, 1]
    eg = ExpectedGradients(model)
    got = eg.attribute((a, b), background, target=target, additional_forward_args=(scale,), n_steps=20)
    ig = IntegratedGradients(model)
    parts = [
        ig.attribute(
            (a, b),
            (background[0][m : m + 1], background[1][m : m + 1]),
            target=target,
            additional_forward_args=(scale,),
            n_steps=20,
        )
        for m in range(5)
    ]
    expected = tuple(sum(p[i] for p in parts) / 5 for i in range(2))
    assert isinstance(got, tuple) and _relative(got, expected) < 1e-13

    draws = torch.Generator().manual_seed(8)
    rows = torch.randint(5, (3, 4), generator=draws)
    alphas = torch.rand((3, 4), generator=draws, dtype=torch.float64)
    loop = [torch.zeros_like(a), torch.zeros_like(b)]
    for i in range(3):
        for k in range(4):
            starts = [background[0][rows[i, k]], background[1][rows[i, k]]]
            ends = [a[i], b[i]]
            points = [(s + alphas[i, k] * (e - s)).unsqueeze(0) for s, e in zip(starts, ends)]
            grads = _gradient(lambda p, q, i=i: model(p, q, scale[i : i + 1])[0, target[i]], points)
            for total, g, s, e in zip(loop, grads, starts, ends):
                total[i] += g[0] * (e - s) / 4
    sampled = eg.attribute(
        (a, b),
        background,
        target=target,
        additional_forward_args=(scale,),
        n_samples=4,
        generator=torch.Generator().manual_seed(8),
    )
    assert _relative(sampled, tuple(loop)) < 1e-13


def test_deterministic_mode_is_batch_independent_and_random_mode_chunk_independent(setup):
    model, x, background, target = setup
    eg = ExpectedGradients(model)
    together = eg.attribute(x, background, target=target, n_steps=10)
    for i in range(4):
        alone = eg.attribute(x[i : i + 1], background, target=target[i], n_steps=10)
        torch.testing.assert_close(alone[0], together[i], rtol=1e-13, atol=1e-15)
    sampled = eg.attribute(x, background, target=target, n_samples=13, generator=torch.Generator().manual_seed(1))
    for chunks in ({"internal_batch_size": 1}, {"internal_batch_size": 5}, {"memory_budget": "1MiB"}):
        again = eg.attribute(
            x, background, target=target, n_samples=13, generator=torch.Generator().manual_seed(1), **chunks
        )
        torch.testing.assert_close(again, sampled, rtol=1e-13, atol=1e-15)


def test_the_same_seed_gives_the_same_result_and_another_seed_another(setup):
    model, x, background, target = setup
    eg = ExpectedGradients(model)

    def run(seed):
        return eg.attribute(x, background, target=target, n_samples=7, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(3), run(3))
    assert not torch.allclose(run(3), run(4))
    torch.manual_seed(9)
    first = eg.attribute(x, background, target=target, n_samples=7)
    torch.manual_seed(9)
    assert torch.equal(eg.attribute(x, background, target=target, n_samples=7), first)
    many = _randn(20, 5, seed=4)
    picked = [
        eg.attribute(x, many, target=target, n_samples=5, n_steps=4, generator=torch.Generator().manual_seed(2))
        for _ in range(2)
    ]
    assert torch.equal(picked[0], picked[1])


def test_random_mode_converges_to_deterministic_mode(setup):
    model, x, background, target = setup
    eg = ExpectedGradients(model)
    exact = eg.attribute(x, background, target=target, n_steps=32)
    errors = []
    for n in (50, 5000):
        sampled = eg.attribute(x, background, target=target, n_samples=n, generator=torch.Generator().manual_seed(0))
        errors.append(_relative(sampled, exact))
    assert errors[1] < 0.05 and errors[1] < errors[0] / 3


def test_auto_steps_agree_with_a_fine_fixed_rule(setup):
    model, x, background, target = setup
    eg = ExpectedGradients(model)
    fine = eg.attribute(x, background, target=target, n_steps=64)
    automatic = eg.attribute(x, background, target=target, n_steps="auto", tolerance=1e-7)
    assert _relative(automatic, fine) < 1e-6
    assert eg.last_report.steps.shape == (4 * 6,)


def test_shap_gradient_explainer_agrees_within_its_sampling_error():
    shap = importlib.import_module("shap")
    model32 = _mlp(3).float()
    x, background = _randn(2, 5, seed=9).float(), _randn(10, 5, seed=10).float()
    n = 2000
    explainer = shap.GradientExplainer(model32, background, batch_size=500)
    phis, variances = explainer.shap_values(x, nsamples=n, rseed=0, return_variances=True)
    exact = ExpectedGradients(copy.deepcopy(model32).double()).attribute(
        x.double(), background.double(), target=1, n_steps=32
    )
    estimate = np.asarray(phis)[..., 1]
    # shap reports var/√n per feature; the standard error of its mean is √(var/n).
    standard_error = np.sqrt(np.asarray(variances[1]) * np.sqrt(n) / n)
    assert np.all(np.abs(estimate - exact.numpy()) <= 5 * standard_error + 1e-5)
    # The bound is informative: leaving out the (x − x′) factor breaks it.
    local = ExpectedGradients(copy.deepcopy(model32).double(), multiply_by_inputs=False).attribute(
        x.double(), background.double(), target=1, n_steps=32
    )
    assert not np.all(np.abs(estimate - local.numpy()) <= 5 * standard_error + 1e-5)


def test_dtype_is_kept(setup):
    model, x, background, target = setup
    model32 = _mlp().float()
    for kwargs in ({"n_steps": 8}, {"n_samples": 5}):
        got, delta = ExpectedGradients(model32).attribute(
            x.float(), background.float(), target=target, return_convergence_delta=True, **kwargs
        )
        assert got.dtype == torch.float32 and delta.dtype == torch.float32
        reference = ExpectedGradients(model).attribute(
            x, background, target=target, generator=torch.Generator().manual_seed(0), **kwargs
        )
        again = ExpectedGradients(model32).attribute(
            x.float(), background.float(), target=target, generator=torch.Generator().manual_seed(0), **kwargs
        )
        assert _relative(again.double(), reference) < 1e-5


def test_the_callers_tensors_are_left_alone(setup):
    model, x, background, target = setup
    kept = [x.clone(), background.clone()]
    eg = ExpectedGradients(model)
    eg.attribute(x, background, target=target, n_samples=3, return_convergence_delta=True)
    eg.attribute(x, background, target=target, n_steps=3, return_convergence_delta=True)
    for t, k in zip((x, background), kept):
        assert torch.equal(t, k) and not t.requires_grad


def test_bad_input_is_refused_with_the_parameter_named(setup):
    model, x, background, target = setup
    eg = ExpectedGradients(model)
    with pytest.raises(ValueError, match=r"baselines has shape \(6, 4\); background rows .* must be shaped \(M, 5\)"):
        eg.attribute(x, background[:, :4], target=target)
    with pytest.raises(ValueError, match=r"baselines has shape \(5,\)"):
        eg.attribute(x, background[0], target=target)
    with pytest.raises(TypeError, match="baselines must be a tensor of background rows"):
        eg.attribute(x, None, target=target)
    with pytest.raises(ValueError, match="baselines must be a tensor of background rows"):
        eg.attribute(x, (background,), target=target)
    model2 = TwoInputs()
    a, b, scale = _randn(2, 3), _randn(2, 2, 2), torch.ones(2, 1, dtype=torch.float64)
    with pytest.raises(
        ValueError, match=r"baselines must have the same number of rows M in every tensor; got \[4, 3\]"
    ):
        ExpectedGradients(model2).attribute((a, b), (_randn(4, 3), _randn(3, 2, 2)), 0, (scale,))
    with pytest.raises(ValueError, match=r"baselines\[1\] has shape"):
        ExpectedGradients(model2).attribute((a, b), (_randn(4, 3), _randn(4, 4)), 0, (scale,))
    with pytest.raises(ValueError, match="n_samples must be a positive int"):
        eg.attribute(x, background, target=target, n_samples=0)
    with pytest.raises(ValueError, match=r"n_steps must be None \(random positions\), a positive int or 'auto'"):
        eg.attribute(x, background, target=target, n_steps=0)
    with pytest.raises(ValueError, match="method must be one of"):
        eg.attribute(x, background, target=target, n_steps=4, method="simpson")
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None; got int"):
        eg.attribute(x, background, target=target, generator=3)
    with pytest.raises(TypeError, match="return_convergence_delta must be True or False"):
        eg.attribute(x, background, target=target, return_convergence_delta=None)
