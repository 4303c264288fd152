"""Tests for integrad.viz.integrand: the integrand and the quadrature against closed forms and the model, errors."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import integrad  # noqa: E402
from integrad.viz.integrand import integrand_profile, path_integrand  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_and_close_figures():
    torch.manual_seed(0)
    yield
    plt.close("all")


def _legend_number(ax, prefix):
    for text in ax.get_legend().get_texts():
        label = text.get_text()
        if label.startswith(prefix):
            return float(label.split("=")[-1])
    raise AssertionError(f"no legend entry starting with {prefix!r}")


def _line(ax, gid):
    return next(line for line in ax.lines if line.get_gid() == gid)


def _nodes(ax):
    return next(c for c in ax.collections if c.get_gid() == "rule-nodes")


class _SumOfPowers(torch.nn.Module):
    def __init__(self, power):
        super().__init__()
        self.power = power

    def forward(self, x):
        return (x**self.power).sum(dim=1)


@pytest.mark.parametrize("power", [2, 3])
@pytest.mark.parametrize("method,n_steps", [("gausslegendre", 4), ("riemann_left", 5), ("riemann_trapezoid", 3)])
def test_path_integrand_known_integrand(method, n_steps, power):
    from integrad import IntegratedGradients, rules

    x = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]])
    before = x.clone()
    ig = IntegratedGradients(_SumOfPowers(power))
    ax = path_integrand(ig, x, method=method, n_steps=n_steps, n_dense=11, example=1)
    # Zero baseline: F(αx) = α^p S with S = Σ x_i^p, so g(α) = p α^(p−1) S and F(x) − F(0) = S.
    total = float((x[1].double() ** power).sum())

    def g(alpha):
        return power * np.asarray(alpha) ** (power - 1) * total

    dense = _line(ax, "integrand-dense")
    np.testing.assert_allclose(dense.get_xdata(), np.linspace(0, 1, 11))
    np.testing.assert_allclose(dense.get_ydata(), g(np.linspace(0, 1, 11)), rtol=1e-5, atol=1e-6)

    alphas, weights = rules.alphas_and_weights(method, n_steps)
    nodes = _nodes(ax).get_offsets()
    np.testing.assert_allclose(nodes[:, 0], alphas)
    np.testing.assert_allclose(nodes[:, 1], g(alphas), rtol=1e-5, atol=1e-6)
    sizes = _nodes(ax).get_sizes()
    np.testing.assert_allclose(sizes / sizes.max(), weights / weights.max())

    quadrature = float(np.sum(weights * g(alphas)))
    assert _legend_number(ax, "Σ w·g(α)") == pytest.approx(quadrature, rel=1e-6)
    assert _legend_number(ax, "F(x) − F(x′)") == pytest.approx(total, rel=1e-6)
    assert _legend_number(ax, "delta") == pytest.approx(quadrature - total, rel=1e-2, abs=1e-6)
    n = n_steps
    if method == "gausslegendre":  # exact for polynomials of degree ≤ 2n − 1
        assert quadrature == pytest.approx(total, rel=1e-9)
    elif method == "riemann_left":  # α_k = k/n: Σ_k (1/n) p (k/n)^(p−1) S
        closed_form = {2: (n - 1) / n, 3: (n - 1) * (2 * n - 1) / (2 * n**2)}[power]
        assert quadrature == pytest.approx(total * closed_form, rel=1e-9)
    else:  # trapezoid on 0, ½, 1 with weights ¼, ½, ¼
        closed_form = {2: 1.0, 3: 1.125}[power]
        assert quadrature == pytest.approx(total * closed_form, rel=1e-9)
    assert torch.equal(x, before)


class _SteepSigmoid(torch.nn.Module):
    def forward(self, x):
        z = 12.0 * (x.sum(dim=1) - 1.5)
        return torch.stack([torch.sigmoid(z), -torch.sigmoid(z)], dim=1)


def test_path_integrand_exact_value_comes_from_the_model_endpoints():
    from integrad import IntegratedGradients

    x = torch.tensor([[1.0, 1.2], [0.3, 0.1]], requires_grad=True)
    ig = IntegratedGradients(_SteepSigmoid())
    ax = path_integrand(ig, x, target=0, method="riemann_right", n_steps=3, n_dense=5)
    exact = float(torch.sigmoid(torch.tensor(12.0 * (2.2 - 1.5))) - torch.sigmoid(torch.tensor(-18.0)))
    assert _legend_number(ax, "F(x) − F(x′)") == pytest.approx(exact, rel=1e-6)
    # A trapezoid over the coarse dense curve is far from it: the exact value is not read off the curve.
    dense = _line(ax, "integrand-dense")
    ys, xs = np.asarray(dense.get_ydata()), np.asarray(dense.get_xdata())
    trapezoid = float(np.sum(0.5 * (ys[1:] + ys[:-1]) * np.diff(xs)))
    assert abs(trapezoid - exact) > 0.1 * exact
    # Nodes sit where the rule puts them, and the quadrature is their weighted sum.
    nodes = _nodes(ax).get_offsets()
    np.testing.assert_allclose(nodes[:, 0], [1 / 3, 2 / 3, 1.0])
    assert _legend_number(ax, "Σ w·g(α)") == pytest.approx(nodes[:, 1].mean(), rel=1e-6)
    assert x.grad is None


def test_path_integrand_delta_matches_the_core_convergence_delta():
    from integrad import IntegratedGradients

    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    x = 3 * torch.randn(3, 4)
    ig = IntegratedGradients(model)
    _, delta = ig.attribute(x, target=[0, 2, 1], method="riemann_middle", n_steps=7, return_convergence_delta=True)
    for example in range(3):
        ax = path_integrand(ig, x, target=[0, 2, 1], method="riemann_middle", n_steps=7, n_dense=20, example=example)
        quadrature = _legend_number(ax, "Σ w·g(α)")
        exact = _legend_number(ax, "F(x) − F(x′)")
        assert quadrature - exact == pytest.approx(float(delta[example]), abs=1e-4)


class _TwoInputs(torch.nn.Module):
    def forward(self, a, b, scale):
        first = scale * (a * b).sum(dim=1)
        second = a.sum(dim=1) + (b**2).sum(dim=1)
        return torch.stack([first, second], dim=1)


def test_path_integrand_tuple_inputs_targets_baselines_and_args():
    from integrad import IntegratedGradients

    torch.manual_seed(0)
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    scale = torch.tensor([1.0, 2.0, -0.5])
    b_base = torch.randn(1, 4)
    ig = IntegratedGradients(_TwoInputs())
    e = 1
    ax = path_integrand(
        ig,
        (a, b),
        baselines=(0.0, b_base),
        target=[1, 0, 1],
        additional_forward_args=(scale,),
        method="riemann_middle",
        n_steps=6,
        n_dense=9,
        example=e,
    )
    # Target 0 for example 1: F = s Σ a·b on the path a(α) = α a, b(α) = b' + α (b − b'),
    # so g(α) = s [Σ a b' + 2 α Σ a (b − b')], linear, and F(x) − F(x') = s Σ a b.
    s, ae, be, bb = float(scale[e]), a[e].double(), b[e].double(), b_base[0].double()
    grid = np.linspace(0, 1, 9)
    expected = s * (float((ae * bb).sum()) + 2 * grid * float((ae * (be - bb)).sum()))
    np.testing.assert_allclose(_line(ax, "integrand-dense").get_ydata(), expected, rtol=1e-4, atol=1e-5)
    exact = s * float((ae * be).sum())
    assert _legend_number(ax, "F(x) − F(x′)") == pytest.approx(exact, rel=1e-5, abs=1e-6)
    # The midpoint rule is exact for a linear integrand.
    assert _legend_number(ax, "Σ w·g(α)") == pytest.approx(exact, rel=1e-5, abs=1e-5)

    profile = integrand_profile(
        ig, (a, b), [0.0, 0.5, 1.0], baselines=(0.0, b_base), target=[1, 0, 1], additional_forward_args=(scale,)
    )
    assert profile.shape == (3, 3)
    np.testing.assert_allclose(profile[e], expected[[0, 4, 8]], rtol=1e-4, atol=1e-5)


def test_path_integrand_accepts_an_explainer_and_uses_its_baseline():
    from integrad.explainers import IntegratedGradients as IGExplainer
    from integrad.explainers.baselines import get_baseline_fn

    x = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0], [2.0, 0.0, -1.0]])
    explainer = IGExplainer(_SumOfPowers(2), baseline_fn="mean")
    ax = path_integrand(explainer, x, method="gausslegendre", n_steps=2, n_dense=5, example=1)
    # The "mean" baseline is computed from the whole batch, as explainer.attribute does.
    base = get_baseline_fn("mean")(x)[1].double()
    xe = x[1].double()
    assert _legend_number(ax, "F(x) − F(x′)") == pytest.approx(float((xe**2).sum() - (base**2).sum()), rel=1e-5)
    # g(α) = 2 (x′ + α (x − x′))·(x − x′) is linear: two Gauss–Legendre nodes integrate it exactly.
    grid = np.linspace(0, 1, 5)
    expected = [2 * float(((base + a * (xe - base)) * (xe - base)).sum()) for a in grid]
    np.testing.assert_allclose(_line(ax, "integrand-dense").get_ydata(), expected, rtol=1e-5, atol=1e-6)
    assert _legend_number(ax, "Σ w·g(α)") == pytest.approx(_legend_number(ax, "F(x) − F(x′)"), rel=1e-5)


def test_path_integrand_bad_arguments():
    from integrad import IntegratedGradients

    ig = IntegratedGradients(_SumOfPowers(2))
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="example"):
        path_integrand(ig, x, example=2)
    with pytest.raises(ValueError, match="n_dense"):
        path_integrand(ig, x, n_dense=1)
    with pytest.raises(ValueError, match="n_steps"):
        path_integrand(ig, x, n_steps="auto")
    with pytest.raises(TypeError, match="explainer_or_ig"):
        path_integrand(_SumOfPowers(2), x)
    with pytest.raises(ValueError, match="method"):
        path_integrand(ig, x, method="simpson")


class _WritesIntoItsInput(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x):
        x -= 0.5
        return self.linear(x)


def test_path_integrand_leaves_the_callers_tensors_alone():
    ig = integrad.IntegratedGradients(_WritesIntoItsInput().eval())
    for n in (2, 1):
        x, b = torch.ones(n, 4), torch.zeros(n, 4)
        path_integrand(ig, x, baselines=b, target=0, n_dense=3, n_steps=2)
        assert bool((x == 1).all()) and bool((b == 0).all()), (n, x, b)
    x, b = torch.ones(2, 4), torch.zeros(1, 4)  # a baseline broadcast to the input
    path_integrand(ig, x, baselines=b, target=0, n_dense=3, n_steps=2, example=1)
    assert bool((x == 1).all()) and bool((b == 0).all())


class _LogitsOutput(torch.nn.Module):
    """Returns an object with a .logits tensor, as transformers' models do."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        from types import SimpleNamespace

        return SimpleNamespace(logits=self.inner(x))


def test_path_integrand_reads_logits_outputs():
    torch.manual_seed(3)
    inner = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).eval()
    x = torch.randn(2, 4)
    plain = path_integrand(integrad.IntegratedGradients(inner), x, target=1, n_dense=5, n_steps=4, example=1)
    wrapped = path_integrand(
        integrad.IntegratedGradients(_LogitsOutput(inner)), x, target=1, n_dense=5, n_steps=4, example=1
    )
    for prefix in ("F(x) − F(x′)", "Σ w·g(α)"):
        assert _legend_number(wrapped, prefix) == pytest.approx(_legend_number(plain, prefix), rel=1e-6)
    with torch.no_grad():
        exact = float(inner(x[1:])[0, 1] - inner(torch.zeros(1, 4))[0, 1])
    assert _legend_number(wrapped, "F(x) − F(x′)") == pytest.approx(exact, rel=1e-5)


def test_integrand_profile_uses_the_explainers_baseline():
    from integrad.explainers import IntegratedGradients as IGExplainer

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3).eval()
    x = torch.randn(5, 4) + 3
    explainer = IGExplainer(model, n_steps=8, baseline_fn="mean")
    got = integrand_profile(explainer, x, [0.25, 0.5], target=0)
    expected = integrand_profile(explainer.core, x, [0.25, 0.5], target=0, baselines=x.mean(0, keepdim=True))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    # g is the weight times (x - x'): with the mean baseline it differs from the zeros baseline.
    zeros = integrand_profile(explainer.core, x, [0.25, 0.5], target=0)
    assert not np.allclose(got, zeros)
    # Explicit baselines win over the explainer's.
    np.testing.assert_allclose(integrand_profile(explainer, x, [0.5], target=0, baselines=0.0), zeros[:, 1:])
    with pytest.raises(ValueError, match=r"alphas must lie in \[0, 1\]"):
        integrand_profile(explainer, x, [0.5, 1.5], target=0)
