"""GradientShap and LayerGradientShap: captum's numbers after the same seeds, and the formula as a plain loop.

Every comparison runs in float64. The loop reference draws as the class documents (baseline rows with
``np.random.choice`` per input, then the noise with ``torch.normal`` per input, then the positions with
``np.random.uniform``) and takes one ``torch.autograd.grad`` per row.
"""

from __future__ import annotations

import importlib
import inspect

import numpy as np
import pytest
import torch
from torch import nn

from integrad.methods.gradient_shap import GradientShap, LayerGradientShap

captum_attr = importlib.import_module("captum.attr")

TIGHT = 1e-12


def _mlp(seed: int = 0, n_in: int = 5, n_out: int = 3) -> nn.Sequential:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(n_in, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, n_out))
    return net.double().eval()


class TwoInputs(nn.Module):
    """``(a: (B, 3), b: (B, 2, 2), scale: (B, 1)) -> (B, 3)``."""

    def __init__(self):
        super().__init__()
        self.inner = _mlp(1, n_in=7)

    def forward(self, a, b, scale=None):
        out = self.inner(torch.cat([a, b.flatten(1)], 1))
        return out if scale is None else out * scale


class PairLayer(nn.Module):
    """A layer whose value is a tuple of two tensors."""

    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(5, 4), nn.Linear(5, 3)

    def forward(self, x):
        return torch.tanh(self.first(x)), torch.tanh(self.second(x))


class WithPairLayer(nn.Module):
    def __init__(self):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(2)
            self.pair = PairLayer()
            self.head = nn.Linear(7, 3)
        self.double()

    def forward(self, x):
        a, b = self.pair(x)
        return self.head(torch.cat([a, b], 1))


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _seeded(seed: int, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` after seeding both global generators, and a draw from each afterwards (where the call
    left them)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    result = fn(*args, **kwargs)
    return result, (torch.rand(3), np.random.rand(3))


def _relative(a, b) -> float:
    a = a if isinstance(a, tuple) else (a,)
    b = b if isinstance(b, tuple) else (b,)
    scale = max(float(t.abs().max()) for t in b)
    return max(float((p - q).abs().max()) for p, q in zip(a, b)) / max(scale, 1e-300)


def _same_as_captum(seed, ours, theirs, *args, **kwargs):
    """``ours.attribute`` and ``theirs.attribute`` on the same arguments after the same seeds."""
    with_delta = kwargs.get("return_convergence_delta", False)
    (mine, after_mine), (ref, after_ref) = (
        _seeded(seed, ours.attribute, *args, **kwargs),
        _seeded(seed, theirs.attribute, *args, **kwargs),
    )
    if with_delta:
        (mine, mine_delta), (ref, ref_delta) = mine, ref
        assert mine_delta.shape == ref_delta.shape and mine_delta.dtype == ref_delta.dtype
        torch.testing.assert_close(mine_delta, ref_delta, rtol=0, atol=1e-13)
    assert type(mine) is type(ref)
    assert _relative(mine, ref) < TIGHT
    # The global generators are left where captum leaves them.
    assert torch.equal(after_mine[0], after_ref[0]) and np.array_equal(after_mine[1], after_ref[1])
    return mine


@pytest.fixture
def setup():
    return _mlp(), _randn(4, 5, seed=1), _randn(6, 5, seed=2)


def test_the_signatures_are_captums_with_keyword_only_extras():
    pairs = [
        (GradientShap.attribute, captum_attr.GradientShap.attribute),
        (LayerGradientShap.attribute, captum_attr.LayerGradientShap.attribute),
        (GradientShap.__init__, captum_attr.GradientShap.__init__),
        (LayerGradientShap.__init__, captum_attr.LayerGradientShap.__init__),
    ]
    for ours, theirs in pairs:
        mine = list(inspect.signature(ours).parameters.values())
        ref = list(inspect.signature(theirs).parameters.values())
        assert [(p.name, p.default, p.kind) for p in mine[: len(ref)]] == [(p.name, p.default, p.kind) for p in ref]
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in mine[len(ref) :])
    extras = [
        p for p in inspect.signature(GradientShap.attribute).parameters if p in ("internal_batch_size", "memory_budget")
    ]
    assert extras == ["internal_batch_size", "memory_budget"]


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize(
    "options",
    [
        {"n_samples": 5, "target": 1},
        {"n_samples": 9, "stdevs": 0.3, "target": [0, 2, 1, 0]},
        {"n_samples": 3, "stdevs": 0.1, "target": torch.tensor([2, 2, 0, 1])},
    ],
)
def test_gradient_shap_gives_captums_numbers(setup, seed, options):
    model, x, background = setup
    for multiply in (True, False):
        _same_as_captum(
            seed,
            GradientShap(model, multiply),
            captum_attr.GradientShap(model, multiply),
            x,
            background,
            return_convergence_delta=True,
            **options,
        )


@pytest.mark.parametrize("seed", [0, 3])
def test_tuple_inputs_with_extras_callable_and_fixed_baselines_give_captums_numbers(seed):
    model = TwoInputs()
    a, b, scale = _randn(3, 3, seed=4), _randn(3, 2, 2, seed=5), _randn(3, 1, seed=6).abs() + 0.5
    dist_a, dist_b = _randn(5, 3, seed=7), _randn(2, 2, 2, seed=8)
    common = {"target": 2, "additional_forward_args": (scale,), "return_convergence_delta": True}
    cases = [
        ((dist_a, dist_b), {"stdevs": (0.2, 0.05), "n_samples": 4}),
        (lambda: (dist_a, dist_b), {"stdevs": 0.1}),
        (lambda inputs: (inputs[0][:1] * 0 + dist_a[:2].mean(0), dist_b), {"n_samples": 6}),
        ((dist_a, 0.25), {"n_samples": 3, "stdevs": (0.0, 0.4)}),
    ]
    for baselines, options in cases:
        mine = _same_as_captum(
            seed, GradientShap(model), captum_attr.GradientShap(model), (a, b), baselines, **common, **options
        )
        assert isinstance(mine, tuple) and [t.shape for t in mine] == [a.shape, b.shape]


@pytest.mark.parametrize("seed", [0, 5])
def test_layer_gradient_shap_gives_captums_numbers(setup, seed):
    model, x, background = setup
    options = {"n_samples": 6, "stdevs": 0.2, "target": [0, 1, 2, 1], "return_convergence_delta": True}
    for layer, to_input, multiply in [(model[2], False, True), (model[2], True, True), (model[3], False, False)]:
        _same_as_captum(
            seed,
            LayerGradientShap(model, layer, multiply_by_inputs=multiply),
            captum_attr.LayerGradientShap(model, layer, multiply_by_inputs=multiply),
            x,
            background,
            attribute_to_layer_input=to_input,
            **options,
        )


def test_layer_gradient_shap_over_tuple_inputs_and_a_tuple_valued_layer():
    model = TwoInputs()
    a, b = _randn(2, 3, seed=9), _randn(2, 2, 2, seed=10)
    dists = (_randn(4, 3, seed=11), _randn(3, 2, 2, seed=12))
    _same_as_captum(
        2,
        LayerGradientShap(model, model.inner[0]),
        captum_attr.LayerGradientShap(model, model.inner[0]),
        (a, b),
        dists,
        n_samples=5,
        stdevs=0.1,
        target=1,
    )
    paired = WithPairLayer()
    x, background = _randn(3, 5, seed=13), _randn(4, 5, seed=14)
    mine = _same_as_captum(
        4,
        LayerGradientShap(paired, paired.pair),
        captum_attr.LayerGradientShap(paired, paired.pair),
        x,
        background,
        n_samples=4,
        target=0,
        return_convergence_delta=True,
    )
    assert [t.shape for t in mine] == [(3, 4), (3, 3)]


def _loop_gradient_shap(f, inputs, distributions, n, sigmas, multiply=True):
    """The formula row by row, drawing in the documented order from the global generators (seeded by the caller).
    Returns the attributions and the per-row deltas."""
    batch = inputs[0].shape[0]
    pairs = batch * n
    rows = [np.random.choice(d.shape[0], pairs) for d in distributions]
    noisy = [
        x.repeat_interleave(n, 0) + torch.normal(0.0, torch.full((pairs,) + tuple(x.shape[1:]), s))
        for x, s in zip(inputs, sigmas)
    ]
    alphas = np.random.uniform(0.0, 1.0, pairs)
    totals = [torch.zeros_like(x) for x in inputs]
    deltas = []
    for r in range(pairs):
        starts = [d[idx[r]] for d, idx in zip(distributions, rows)]
        ends = [e[r] for e in noisy]
        points = [(s + float(alphas[r]) * (e - s)).unsqueeze(0).requires_grad_() for s, e in zip(starts, ends)]
        grads = torch.autograd.grad(f(r // n, *points), points)
        parts = [g[0] * (e - s) if multiply else g[0] for g, s, e in zip(grads, starts, ends)]
        for total, p in zip(totals, parts):
            total[r // n] += p / n
        with torch.no_grad():
            gap = f(r // n, *[e.unsqueeze(0) for e in ends]) - f(r // n, *[s.unsqueeze(0) for s in starts])
        deltas.append(sum(float(p.sum()) for p in parts) - float(gap))
    return tuple(totals), torch.tensor(deltas, dtype=torch.float64)


def test_gradient_shap_is_the_formula_as_a_plain_loop():
    model = TwoInputs()
    a, b = _randn(3, 3, seed=15), _randn(3, 2, 2, seed=16)
    dists = (_randn(5, 3, seed=17), _randn(4, 2, 2, seed=18))
    target = [0, 2, 1]

    def f(example, pa, pb):
        return model(pa, pb)[0, target[example]]

    for multiply in (True, False):
        (expected, expected_delta), _ = _seeded(11, _loop_gradient_shap, f, (a, b), dists, 6, (0.2, 0.1), multiply)
        (got, delta), _ = _seeded(
            11,
            GradientShap(model, multiply).attribute,
            (a, b),
            dists,
            n_samples=6,
            stdevs=(0.2, 0.1),
            target=target,
            return_convergence_delta=True,
        )
        assert _relative(got, expected) < TIGHT
        torch.testing.assert_close(delta, expected_delta, rtol=0, atol=1e-13)


def test_layer_gradient_shap_is_the_formula_as_a_plain_loop(setup):
    model, x, background = setup
    layer_in = model[:3]

    def f(example, h):
        return model[3:](h)[0, 1]

    # The layer's value is the input of the model's tail: its LayerGradientShap is the tail's GradientShap with
    # the head's values as inputs, at points mapped through the head.
    def expected():
        rows = np.random.choice(background.shape[0], 4 * 5)
        noisy = x.repeat_interleave(5, 0) + torch.normal(0.0, torch.full((20, 5), 0.3))
        alphas = np.random.uniform(0.0, 1.0, 20)
        total = torch.zeros(4, 8, dtype=torch.float64)
        for r in range(20):
            start, end = background[rows[r]], noisy[r]
            h = layer_in((start + float(alphas[r]) * (end - start)).unsqueeze(0)).detach().requires_grad_()
            (g,) = torch.autograd.grad(f(0, h), h)
            with torch.no_grad():
                total[r // 5] += g[0] * (layer_in(end.unsqueeze(0))[0] - layer_in(start.unsqueeze(0))[0]) / 5
        return total

    reference, _ = _seeded(21, expected)
    got, _ = _seeded(21, lambda: LayerGradientShap(model, model[2]).attribute(x, background, 5, 0.3, target=1))
    assert _relative(got, reference) < TIGHT


def test_chunking_does_not_change_the_result(setup):
    model, x, background = setup
    options = {"n_samples": 7, "stdevs": 0.2, "target": 2, "return_convergence_delta": True}
    (whole, delta), _ = _seeded(3, GradientShap(model).attribute, x, background, **options)
    for chunks in ({"internal_batch_size": 1}, {"internal_batch_size": 5}, {"memory_budget": "1MiB"}):
        (again, again_delta), _ = _seeded(3, GradientShap(model).attribute, x, background, **options, **chunks)
        torch.testing.assert_close(again, whole, rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(again_delta, delta, rtol=1e-13, atol=1e-15)
    (layer_whole, _), _ = _seeded(3, lambda: LayerGradientShap(model, model[1]).attribute(x, background, **options))
    (layer_chunked, _), _ = _seeded(
        3, lambda: LayerGradientShap(model, model[1]).attribute(x, background, **options, internal_batch_size=3)
    )
    torch.testing.assert_close(layer_chunked, layer_whole, rtol=1e-13, atol=1e-15)


def test_float32_keeps_its_dtype_and_agrees_with_captum(setup):
    model, x, background = setup
    model32, x32, background32 = _mlp().float(), x.float(), background.float()
    (mine, delta), _ = _seeded(1, lambda: GradientShap(model32).attribute(x32, background32, 4, 0.1, 1, None, True))
    (ref, ref_delta), _ = _seeded(
        1, lambda: captum_attr.GradientShap(model32).attribute(x32, background32, 4, 0.1, 1, None, True)
    )
    assert mine.dtype == torch.float32 and delta.dtype == torch.float32
    assert _relative(mine, ref) < 1e-5
    layer, _ = _seeded(1, lambda: LayerGradientShap(model32, model32[2]).attribute(x32, background32, target=1))
    assert layer.dtype == torch.float32 and layer.shape == (4, 8)


def test_the_callers_tensors_and_model_are_left_alone(setup):
    model, x, background = setup
    kept = [t.clone() for t in (x, background)]
    params = [p.clone() for p in model.parameters()]
    GradientShap(model).attribute(x, background, n_samples=3, stdevs=0.5, target=0)
    LayerGradientShap(model, model[2]).attribute(x, background, n_samples=3, stdevs=0.5, target=0)
    for t, k in zip((x, background), kept):
        assert torch.equal(t, k) and not t.requires_grad
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))
    assert not model._forward_hooks and not model[2]._forward_hooks and not model[2]._forward_pre_hooks


def test_the_report_counts_one_row_per_sample(setup):
    model, x, background = setup
    method = GradientShap(model)
    _, delta = method.attribute(x, background, n_samples=6, target=0, return_convergence_delta=True)
    assert method.last_report.rows == 24 and method.last_report.steps.tolist() == [6] * 4
    assert torch.equal(method.last_report.delta, delta)


def test_bad_input_is_refused_with_the_parameter_named(setup):
    model, x, background = setup
    shap = GradientShap(model)
    with pytest.raises(ValueError, match=r"baselines has shape \(6, 4\); a baseline distribution"):
        shap.attribute(x, background[:, :4], target=0)
    with pytest.raises(TypeError, match="baselines must be a tensor of baseline rows"):
        shap.attribute(x, "zeros", target=0)
    with pytest.raises(ValueError, match="baselines must be"):
        shap.attribute(x, (background, background), target=0)
    with pytest.raises(ValueError, match="n_samples must be a positive int"):
        shap.attribute(x, background, n_samples=0, target=0)
    with pytest.raises(ValueError, match="stdevs must be a non-negative number"):
        shap.attribute(x, background, stdevs=-0.1, target=0)
    with pytest.raises(ValueError, match="stdevs must be .* got a tuple of length 2 for 1 input"):
        shap.attribute(x, background, stdevs=(0.1, 0.2), target=0)
    with pytest.raises(TypeError, match="return_convergence_delta must be True or False"):
        shap.attribute(x, background, target=0, return_convergence_delta="yes")
    with pytest.raises(TypeError, match="multiply_by_inputs must be True or False"):
        GradientShap(model, multiply_by_inputs=None)
    with pytest.raises(TypeError, match="layer must be a torch.nn.Module"):
        LayerGradientShap(model, "linear")
    with pytest.raises(TypeError, match="attribute_to_layer_input must be True or False"):
        LayerGradientShap(model, model[2]).attribute(x, background, target=0, attribute_to_layer_input=1)
    with pytest.raises(ValueError, match="layer .* runs more than once"):
        twice = nn.Sequential(model[0], model[1], model[2], model[1], model[4])
        LayerGradientShap(twice, twice[1]).attribute(x, background, target=0)
