"""NoiseTunnel over the IG family, reproduced by seeding the global generators and redrawing the same noise.

Order relied on (checked in ``test_rng_order_is_the_documented_one``, and against captum in test_captum_agreement):
for each call of the wrapped method, with ``s`` copies of each example, NoiseTunnel draws
``torch.randn((s * batch, *x.shape[1:]))`` for each input in order, and (with ``draw_baseline_from_distrib``)
``numpy.random.choice(len(baseline), s * batch)`` once per row count of the baseline tensors. Copies are stacked
example-major: row ``i * s + k`` of a call is copy ``k`` of example ``i``.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from integrad import IntegratedGradients, LayerIntegratedGradients, NeuronIntegratedGradients, NoiseTunnel

from models import (
    TwoInputs,
    deep_mlp,
    manual_ig,
    mlp,
)

#: Tiny models run faster and steadier on one thread (see conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")

N = 16
B, D = 4, 4  # B * D = 16: a chunk of whole samples is a whole number of CPU randn blocks (see the batch test)


@pytest.fixture(scope="module")
def setup():
    model = mlp(n_in=D, hidden=12, n_out=3)
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(0))
    return model, x


def seed(n: int) -> None:
    """Seed both generators NoiseTunnel draws from."""
    torch.manual_seed(n)
    np.random.seed(n)


def calls(samples: int, per_call: int | None) -> list[int]:
    per_call = per_call or samples
    return [per_call] * (samples // per_call) + ([samples % per_call] if samples % per_call else [])


def redraw(
    n: int,
    x: torch.Tensor,
    samples: int,
    per_call: int | None = None,
    stdev: float = 1.0,
    distrib: torch.Tensor | None = None,
):
    """The noisy copies NoiseTunnel makes after ``seed(n)``, with the example of each copy (and the drawn baseline
    rows), in the order it stacks them."""
    seed(n)
    copies, examples, picks = [], [], []
    for s in calls(samples, per_call):
        copies.append(x.repeat_interleave(s, 0) + stdev * torch.randn((s * len(x),) + x.shape[1:]))
        examples.append(torch.arange(len(x)).repeat_interleave(s))
        if distrib is not None:
            picks.append(torch.from_numpy(np.random.choice(len(distrib), s * len(x))))
    return torch.cat(copies), torch.cat(examples), (torch.cat(picks) if picks else None)


def by_example(values: torch.Tensor, examples: torch.Tensor) -> torch.Tensor:
    """Per-copy values grouped as ``(batch, copies, ...)``."""
    batch = int(examples.max()) + 1
    order = torch.argsort(examples, stable=True)
    return values[order].view((batch, -1) + values.shape[1:])


def manual_ig_rows(model, copies, target, baselines=None, scale=None):
    """Float64 reference IG of every copy (row), each with its own target, baseline and scale."""
    baselines = torch.zeros_like(copies) if baselines is None else baselines
    twin = copy.deepcopy(model).double()
    out = []
    for r in range(len(copies)):

        def f(z, r=r):
            return twin(z)[:, target[r]] * (1.0 if scale is None else float(scale[r]))

        out.append(manual_ig(f, copies[r : r + 1], baselines[r : r + 1], n=N))
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------------- no noise
@pytest.mark.parametrize("method", ["ig", "layer", "neuron"])
def test_zero_noise_reduces_to_the_wrapped_method(setup, method):
    model, x = setup
    wrapped, kwargs = {
        "ig": (IntegratedGradients(model), dict(target=1)),
        "layer": (LayerIntegratedGradients(model, model[0]), dict(target=1)),
        "neuron": (NeuronIntegratedGradients(model, model[0]), dict(neuron_selector=3)),
    }[method]
    plain = wrapped.attribute(x, n_steps=N, **kwargs)
    nt = NoiseTunnel(wrapped)
    smooth = nt.attribute(x, nt_type="smoothgrad", nt_samples=3, stdevs=0.0, n_steps=N, **kwargs)
    squared = nt.attribute(x, nt_type="smoothgrad_sq", nt_samples=3, stdevs=0.0, n_steps=N, **kwargs)
    var = nt.attribute(x, nt_type="vargrad", nt_samples=3, stdevs=0.0, n_steps=N, **kwargs)
    torch.testing.assert_close(smooth, plain, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(squared, plain * plain, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(var, torch.zeros_like(plain), rtol=0, atol=1e-6)


def test_vargrad_is_never_negative(setup):
    # A variance cannot be negative; computed as E[A²] − E[A]² it can come out slightly below zero by rounding.
    model, x = setup
    var = NoiseTunnel(IntegratedGradients(model)).attribute(
        x * 37.0, nt_type="vargrad", nt_samples=7, stdevs=0.0, target=2, n_steps=N
    )
    assert float(var.min()) >= 0.0


def test_vargrad_is_accurate_when_the_mean_is_large():
    # Attributions around ±300 varying by ~0.3 between copies: E[A²] − E[A]² in float32 cancels catastrophically
    # (each term ~1e5, their difference ~0.1); the variance of the copies' attributions is well defined regardless.
    w = torch.tensor([10.0, -20.0, 15.0, 30.0])

    def f(z):
        return z @ w + 0.1 * torch.sin(z).sum(1)

    x = torch.tensor([[10.0, 12.0, -9.0, 11.0], [5.0, 7.0, 8.0, -6.0]])
    seed(16)
    var = NoiseTunnel(IntegratedGradients(f)).attribute(x, nt_type="vargrad", nt_samples=8, stdevs=0.01, n_steps=8)
    copies, examples, _ = redraw(16, x, 8, stdev=0.01)
    per_copy = by_example(IntegratedGradients(f).attribute(copies, n_steps=8).double(), examples)
    torch.testing.assert_close(var.double(), per_copy.var(1, unbiased=False), rtol=1e-3, atol=1e-7)


# ---------------------------------------------------------------------------------------------------- with noise
def test_smoothgrad_is_the_mean_of_ig_over_the_same_noisy_copies(setup):
    model, x = setup
    seed(11)
    got = NoiseTunnel(IntegratedGradients(model)).attribute(x, nt_samples=5, stdevs=0.5, target=2, n_steps=N)
    copies, examples, _ = redraw(11, x, 5, stdev=0.5)
    per_copy = by_example(manual_ig_rows(model, copies, [2] * len(copies)), examples)
    torch.testing.assert_close(got.double(), per_copy.mean(1), rtol=1e-4, atol=1e-6)
    # The noise mattered: the mean differs from the noiseless attribution.
    plain = IntegratedGradients(model).attribute(x, target=2, n_steps=N)
    assert float((got - plain).abs().max()) > 1e-3


def test_smoothgrad_sq_and_vargrad_with_noise(setup):
    model, x = setup
    copies, examples, _ = redraw(12, x, 6, stdev=0.3)
    per_copy = by_example(manual_ig_rows(model, copies, [0] * len(copies)), examples)
    nt = NoiseTunnel(IntegratedGradients(model))
    seed(12)
    sq = nt.attribute(x, nt_type="smoothgrad_sq", nt_samples=6, stdevs=0.3, target=0, n_steps=N)
    seed(12)
    var = nt.attribute(x, nt_type="vargrad", nt_samples=6, stdevs=0.3, target=0, n_steps=N)
    torch.testing.assert_close(sq.double(), per_copy.square().mean(1), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(var.double(), per_copy.var(1, unbiased=False), rtol=1e-3, atol=1e-6)


def test_rng_order_is_the_documented_one(setup):
    # Nothing else consumes the global generators: after a call, each is exactly where the redraw leaves it.
    model, x = setup
    distrib = torch.randn(7, D, generator=torch.Generator().manual_seed(17))
    seed(4)
    NoiseTunnel(IntegratedGradients(model)).attribute(
        x,
        nt_samples=3,
        nt_samples_batch_size=2,
        target=0,
        n_steps=4,
        stdevs=0.2,
        baselines=distrib,
        draw_baseline_from_distrib=True,
    )
    after_call = torch.randn(5), np.random.rand(5)
    redraw(4, x, 3, per_call=2, distrib=distrib)
    assert torch.equal(after_call[0], torch.randn(5))
    assert np.array_equal(after_call[1], np.random.rand(5))


def test_nt_samples_batch_size_draws_each_call_for_its_own_copies(setup):
    # Each call stacks its copies example-major and draws their noise: the result depends on how the copies are
    # split into calls (as captum's does), and equals the mean over the copies redrawn call by call.
    model, x = setup
    nt = NoiseTunnel(IntegratedGradients(model))
    results = []
    for per_call in [None, 1, 2, 4, 6, 100]:
        seed(5)
        got = nt.attribute(
            x, nt_type="vargrad", nt_samples=6, nt_samples_batch_size=per_call, stdevs=0.4, target=1, n_steps=N
        )
        copies, examples, _ = redraw(5, x, 6, per_call=min(per_call or 6, 6), stdev=0.4)
        per_copy = by_example(manual_ig_rows(model, copies, [1] * len(copies)), examples)
        torch.testing.assert_close(got.double(), per_copy.var(1, unbiased=False), rtol=1e-3, atol=1e-6)
        results.append(got)
    assert not torch.allclose(results[1], results[0])  # 6 calls of one copy drew other noise than one call of 6


def test_nt_samples_batch_size_matches_chunkwise_redraw_for_any_shape():
    # With 3 × 5 values per sample the chunks do not align with randn's blocks, so chunked and unchunked noise
    # differ; each still equals the mean over the copies drawn chunk by chunk in the documented order.
    model = mlp(n_in=5, hidden=8, n_out=2)
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(1))
    seed(6)
    got = NoiseTunnel(IntegratedGradients(model)).attribute(
        x, nt_samples=5, nt_samples_batch_size=2, stdevs=0.2, target=1, n_steps=N
    )
    copies, examples, _ = redraw(6, x, 5, per_call=2, stdev=0.2)
    expected = by_example(manual_ig_rows(model, copies, [1] * len(copies)), examples).mean(1)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-6)


def test_targets_and_additional_args_expand_per_sample():
    model = TwoInputs()
    g = torch.Generator().manual_seed(2)
    x1, x2 = torch.randn(3, 4, generator=g), torch.randn(3, 2, 3, generator=g)
    scale = torch.tensor([0.5, 2.0, -1.0])
    target = [2, 0, 1]
    seed(7)
    got = NoiseTunnel(IntegratedGradients(model)).attribute(
        (x1, x2),
        nt_samples=3,
        nt_samples_batch_size=2,
        stdevs=(0.1, 0.3),
        target=target,
        additional_forward_args=(scale,),
        n_steps=N,
    )
    # Redraw: per call, input 1's noise then input 2's, copies of each example next to each other.
    seed(7)
    c1, c2, examples = [], [], []
    for s in (2, 1):
        c1.append(x1.repeat_interleave(s, 0) + 0.1 * torch.randn(s * 3, 4))
        c2.append(x2.repeat_interleave(s, 0) + 0.3 * torch.randn(s * 3, 2, 3))
        examples += [i for i in range(3) for _ in range(s)]
    c1, c2 = torch.cat(c1), torch.cat(c2)
    ig = IntegratedGradients(model)
    expected = [torch.zeros_like(x1), torch.zeros_like(x2)]
    for r, i in enumerate(examples):
        a = ig.attribute(
            (c1[r : r + 1], c2[r : r + 1]), target=target[i], additional_forward_args=(scale[i : i + 1],), n_steps=N
        )
        expected[0][i] += a[0][0] / 3
        expected[1][i] += a[1][0] / 3
    assert isinstance(got, tuple) and len(got) == 2
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_draw_baseline_from_distribution(setup):
    model, x = setup
    distrib = torch.randn(5, D, generator=torch.Generator().manual_seed(8))
    seed(9)
    got = NoiseTunnel(IntegratedGradients(model)).attribute(
        x,
        nt_samples=4,
        nt_samples_batch_size=3,
        stdevs=0.1,
        baselines=distrib,
        draw_baseline_from_distrib=True,
        target=1,
        n_steps=N,
    )
    copies, examples, picks = redraw(9, x, 4, per_call=3, stdev=0.1, distrib=distrib)
    assert len(set(picks.tolist())) > 1  # several baselines were actually drawn
    per_copy = by_example(manual_ig_rows(model, copies, [1] * len(copies), baselines=distrib[picks]), examples)
    torch.testing.assert_close(got.double(), per_copy.mean(1), rtol=1e-4, atol=1e-6)


def test_per_example_baselines_are_repeated_per_sample(setup):
    model, x = setup
    base = torch.randn(B, D, generator=torch.Generator().manual_seed(10))
    seed(13)
    got = NoiseTunnel(IntegratedGradients(model)).attribute(
        x, nt_samples=3, stdevs=0.2, baselines=base, target=0, n_steps=N
    )
    copies, examples, _ = redraw(13, x, 3, stdev=0.2)
    per_copy = by_example(manual_ig_rows(model, copies, [0] * len(copies), baselines=base[examples]), examples)
    torch.testing.assert_close(got.double(), per_copy.mean(1), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------------- generator
def test_generator_draws_the_noise_of_the_same_seed(setup):
    """A generator of the call's own, seeded with ``n``, gives the noise the global generator gives after
    ``torch.manual_seed(n)``; the global generators are not used."""
    model, x = setup
    nt = NoiseTunnel(IntegratedGradients(model))
    seed(21)
    expected = nt.attribute(x, nt_samples=5, nt_samples_batch_size=2, stdevs=0.4, target=1, n_steps=N)
    seed(99)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    got = nt.attribute(
        x,
        nt_samples=5,
        nt_samples_batch_size=2,
        stdevs=0.4,
        target=1,
        n_steps=N,
        generator=torch.Generator().manual_seed(21),
    )
    assert torch.equal(got, expected)
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert after[0] == numpy_state[0] and np.array_equal(after[1], numpy_state[1]) and after[2:] == numpy_state[2:]


def test_generator_draws_the_baselines_from_a_distribution(setup):
    """With a generator, the baseline rows are ``torch.randint`` draws from it, after each call's noise; numpy's
    global generator is left alone."""
    model, x = setup
    distrib = torch.randn(6, D, generator=torch.Generator().manual_seed(3))
    numpy_state = np.random.get_state()
    got = NoiseTunnel(IntegratedGradients(model)).attribute(
        x,
        nt_samples=4,
        nt_samples_batch_size=3,
        stdevs=0.2,
        baselines=distrib,
        draw_baseline_from_distrib=True,
        target=0,
        n_steps=N,
        generator=torch.Generator().manual_seed(5),
    )
    assert np.array_equal(np.random.get_state()[1], numpy_state[1])
    g = torch.Generator().manual_seed(5)
    copies, examples, picks = [], [], []
    for s in calls(4, 3):
        copies.append(x.repeat_interleave(s, 0) + 0.2 * torch.randn((s * B, D), generator=g))
        picks.append(torch.randint(len(distrib), (s * B,), generator=g))
        examples.append(torch.arange(B).repeat_interleave(s))
    copies, examples, picks = torch.cat(copies), torch.cat(examples), torch.cat(picks)
    assert len(set(picks.tolist())) > 1
    per_copy = by_example(manual_ig_rows(model, copies, [0] * len(copies), baselines=distrib[picks]), examples)
    torch.testing.assert_close(got.double(), per_copy.mean(1), rtol=1e-4, atol=1e-6)


def test_generator_of_another_type_is_refused(setup):
    model, x = setup
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        NoiseTunnel(IntegratedGradients(model)).attribute(x, target=0, n_steps=4, generator=np.random.default_rng(0))


# ---------------------------------------------------------------------------------------------------- delta
def test_return_convergence_delta_has_one_value_per_copy(setup):
    model, x = setup
    seed(14)
    got, delta = NoiseTunnel(IntegratedGradients(model)).attribute(
        x, nt_samples=5, nt_samples_batch_size=2, stdevs=0.3, target=2, n_steps=N, return_convergence_delta=True
    )
    assert got.shape == x.shape
    assert delta.shape == (5 * B,)
    copies, _, _ = redraw(14, x, 5, per_call=2, stdev=0.3)
    per_copy, expected = IntegratedGradients(model).attribute(
        copies, target=2, n_steps=N, return_convergence_delta=True
    )
    torch.testing.assert_close(delta, expected, rtol=1e-3, atol=1e-6)
    with torch.no_grad():
        direct = per_copy.sum(1) - (model(copies)[:, 2] - model(torch.zeros_like(copies))[:, 2])
    torch.testing.assert_close(delta, direct, rtol=1e-3, atol=1e-5)


def test_delta_with_layer_ig(setup):
    model = deep_mlp(in_dim=D)
    x = setup[1]
    torch.manual_seed(15)
    got, delta = NoiseTunnel(LayerIntegratedGradients(model, model[2])).attribute(
        x, nt_samples=3, stdevs=0.1, target=1, n_steps=N, return_convergence_delta=True
    )
    assert got.shape == (B, 16) and delta.shape == (3 * B,)


# ---------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs,words",
    [
        (dict(nt_type="smooth"), ["nt_type", "smoothgrad", "vargrad"]),
        (dict(nt_type=None), ["nt_type", "smoothgrad_sq"]),
        (dict(nt_samples=0), ["nt_samples", "positive int"]),
        (dict(nt_samples=-2), ["nt_samples", "positive int"]),
        (dict(nt_samples=2.5), ["nt_samples", "positive int"]),
        (dict(nt_samples=True), ["nt_samples", "positive int"]),
        (dict(nt_samples_batch_size=0), ["nt_samples_batch_size", "positive int"]),
        (dict(stdevs=-0.1), ["stdevs", "non-negative"]),
        (dict(stdevs="big"), ["stdevs", "non-negative"]),
        (dict(stdevs=True), ["stdevs", "non-negative"]),
        (dict(stdevs=(0.1, 0.2)), ["stdevs", "tuple of length 2 for 1 input"]),
        (dict(draw_baseline_from_distrib=1), ["draw_baseline_from_distrib"]),
    ],
)
def test_bad_arguments(setup, kwargs, words):
    model, x = setup
    with pytest.raises((ValueError, TypeError)) as info:
        NoiseTunnel(IntegratedGradients(model)).attribute(x, target=0, n_steps=4, **kwargs)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_bad_wrapped_method_and_delta_for_neuron(setup):
    model, x = setup
    with pytest.raises(TypeError, match="attribution_method"):
        NoiseTunnel(model)
    nt = NoiseTunnel(NeuronIntegratedGradients(model, model[0]))
    assert nt.has_convergence_delta() is False
    with pytest.raises(ValueError, match="return_convergence_delta"):
        nt.attribute(x, neuron_selector=0, return_convergence_delta=True)


def test_errors_of_the_wrapped_method_come_through(setup):
    model, x = setup
    with pytest.raises(ValueError, match="n_steps"):
        NoiseTunnel(IntegratedGradients(model)).attribute(x, target=0, n_steps=0)
    with pytest.raises(ValueError, match="target"):
        NoiseTunnel(IntegratedGradients(model)).attribute(x, target=[0, 1])


def test_target_for_a_method_without_target_is_rejected(setup):
    # NeuronIntegratedGradients has no target: passing one through NoiseTunnel must not be dropped silently (the
    # same call without NoiseTunnel raises a TypeError for the unexpected argument).
    model, x = setup
    neuron = NeuronIntegratedGradients(model, model[0])
    with pytest.raises(TypeError):
        neuron.attribute(x, 0, target=1)
    with pytest.raises((TypeError, ValueError), match="target"):
        NoiseTunnel(neuron).attribute(x, neuron_selector=0, target=1, stdevs=0.1, n_steps=4)
