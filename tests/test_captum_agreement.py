"""Drop-in agreement with captum (a test-only dependency): same arguments, same results.

Everything runs in float64, where the only difference left is captum's float32 step weights (about 1e-8 relative),
so a tolerance of 1e-7 of each attribution map's largest entry is tight. captum's ``riemann_trapezoid`` weights sum
to ``(n − 1)/n``; integrad's true trapezoid is compared with captum's result rescaled by ``n/(n − 1)``, and its
delta with an independent completeness check.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients as CaptumIG
from captum.attr import LayerIntegratedGradients as CaptumLayerIG
from captum.attr import NeuronIntegratedGradients as CaptumNeuronIG
from captum.attr import NoiseTunnel as CaptumNoiseTunnel
from torch import nn

from integrad import IntegratedGradients, LayerIntegratedGradients, NeuronIntegratedGradients, NoiseTunnel

from models import (
    METHODS,
    GridOutput,
    SmallCNN,
    TextModel,
    ThreeInputs,
    TwoBranches,
    WithExtras,
    assert_close_scaled,
    deadline,
    mlp,
    randn,
    seeded,
)

RTOL = 1e-7


def _rescale(result, method: str, n_steps: int):
    """captum's trapezoid result scaled to the true trapezoid (its weights are short by the factor (n − 1)/n)."""
    if method != "riemann_trapezoid":
        return result
    factor = n_steps / (n_steps - 1)
    if isinstance(result, torch.Tensor):
        return result * factor
    return type(result)(_rescale(r, method, n_steps) for r in result)


def _detach(result):
    if isinstance(result, torch.Tensor):
        return result.detach()
    return type(result)(_detach(r) for r in result)


def _gap(f, inputs, baselines, target=None, extra=()):
    """``F(x) − F(x′)`` at the target, computed directly (independent of both libraries)."""
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    baselines = baselines if isinstance(baselines, tuple) else (baselines,)
    base = tuple(b if isinstance(b, torch.Tensor) else torch.full_like(x, float(b)) for x, b in zip(inputs, baselines))
    base = tuple(b.expand_as(x) for x, b in zip(inputs, base))
    with torch.no_grad():
        out = f(*inputs, *extra) - f(*base, *extra)
    if target is None:
        return out.reshape(out.shape[0])
    rows = torch.arange(out.shape[0])
    if isinstance(target, int):
        return out[rows, target]
    if isinstance(target, list) and isinstance(target[0], tuple):
        return torch.stack([out[(i,) + t] for i, t in enumerate(target)])
    if isinstance(target, tuple):
        return out[(rows,) + tuple(torch.full_like(rows, t) for t in target)]
    return out[rows, torch.as_tensor(target)]


def _total(attr):
    parts = attr if isinstance(attr, (tuple, list)) else (attr,)
    return sum(a.detach().reshape(a.shape[0], -1).sum(1) for a in parts)


def _check_delta(ours, theirs, attr, f, inputs, baselines, target=None, extra=(), method="gausslegendre"):
    """Our delta is ``Σ attributions − (F(x) − F(x′))`` computed here, and captum's (except for the trapezoid)."""
    gap = _gap(f, inputs, baselines, target, extra)
    total = _total(attr)
    scale = float(gap.abs().max()) + float(total.abs().max())
    assert ours.shape == gap.shape
    torch.testing.assert_close(ours, total - gap, rtol=0, atol=1e-13 * scale)
    if method != "riemann_trapezoid":
        torch.testing.assert_close(ours, theirs.detach(), rtol=0, atol=RTOL * scale)


# ------------------------------------------------------------------------------------------ IntegratedGradients


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("target_form", ("list", "tensor"))
def test_mlp_with_per_example_targets(method, target_form):
    model = mlp(seed=1, n_in=5, hidden=8, n_out=3, dtype=torch.float64)
    x, base = randn(4, 5, seed=2), randn(4, 5, seed=3)
    target = [0, 2, 1, 2] if target_form == "list" else torch.tensor([0, 2, 1, 2])
    ours, delta = IntegratedGradients(model).attribute(
        x, base, target=target, method=method, n_steps=17, return_convergence_delta=True
    )
    theirs, their_delta = CaptumIG(model).attribute(
        x, base, target=target, method=method, n_steps=17, return_convergence_delta=True
    )
    assert ours.dtype == torch.float64 and delta.shape == (4,)
    assert_close_scaled(ours, _rescale(theirs, method, 17), RTOL)
    _check_delta(delta, their_delta, ours, model, x, base, list(target), method=method)


@pytest.mark.parametrize("method", METHODS)
def test_cnn_with_a_shared_int_target(method):
    model = seeded(SmallCNN, seed=4)
    x = randn(3, 2, 6, 6, seed=5)
    ours, delta = IntegratedGradients(model).attribute(
        x, target=3, method=method, n_steps=9, return_convergence_delta=True
    )
    theirs, their_delta = CaptumIG(model).attribute(
        x, target=3, method=method, n_steps=9, return_convergence_delta=True
    )
    assert ours.shape == x.shape
    assert_close_scaled(ours, _rescale(theirs, method, 9), RTOL)
    _check_delta(delta, their_delta, ours, model, x, torch.zeros_like(x), 3, method=method)


@pytest.mark.parametrize("method", METHODS)
def test_tuple_inputs_with_scalar_broadcast_and_full_baselines(method):
    model = seeded(ThreeInputs, seed=6)
    inputs = (randn(3, 4, seed=7), randn(3, 2, 3, seed=8), randn(3, 5, seed=9))
    baselines = (0.25, randn(1, 2, 3, seed=10), randn(3, 5, seed=11))
    ours, delta = IntegratedGradients(model).attribute(
        inputs, baselines, target=1, method=method, n_steps=8, return_convergence_delta=True
    )
    theirs, their_delta = CaptumIG(model).attribute(
        inputs, baselines, target=1, method=method, n_steps=8, return_convergence_delta=True
    )
    assert isinstance(ours, tuple) and [a.shape for a in ours] == [x.shape for x in inputs]
    assert_close_scaled(ours, _rescale(_detach(theirs), method, 8), RTOL)
    _check_delta(delta, their_delta, ours, model, inputs, baselines, 1, method=method)


@pytest.mark.parametrize("shape", [(1, 2, 1, 1), (1, 1, 6, 6)])
def test_baselines_with_dimensions_of_size_one_broadcast_as_in_captum(shape):
    # e.g. one value per channel: captum accepts a baseline with first dimension 1 that broadcasts to the input.
    model = seeded(SmallCNN, seed=85)
    x = randn(3, 2, 6, 6, seed=86)
    base = randn(*shape, seed=87)
    ours, delta = IntegratedGradients(model).attribute(x, base, target=2, n_steps=9, return_convergence_delta=True)
    theirs = CaptumIG(model).attribute(x, base, target=2, n_steps=9)
    assert ours.shape == x.shape
    assert_close_scaled(ours, theirs.detach(), RTOL)
    full = base.expand_as(x)
    gap = _gap(model, x, full, target=2)
    torch.testing.assert_close(delta, ours.sum((1, 2, 3)) - gap, rtol=0, atol=1e-12)


@pytest.mark.parametrize("target", [(1, 2), [(0, 1), (2, 3), (1, 0)]])
def test_tuple_targets_on_a_three_dimensional_output(target):
    model = seeded(GridOutput, seed=12)
    x, base = randn(3, 6, seed=13), randn(1, 6, seed=14)
    ours, delta = IntegratedGradients(model).attribute(
        x, base, target=target, n_steps=12, return_convergence_delta=True
    )
    theirs, their_delta = CaptumIG(model).attribute(x, base, target=target, n_steps=12, return_convergence_delta=True)
    assert_close_scaled(ours, theirs, RTOL)
    _check_delta(delta, their_delta, ours, model, x, base, target)


@pytest.mark.parametrize("method", ("gausslegendre", "riemann_right", "riemann_trapezoid"))
def test_additional_forward_args_tensor_per_example_and_non_tensor(method):
    model = seeded(WithExtras, seed=15)
    x = randn(4, 5, seed=16)
    mask = (randn(4, 5, seed=17) > -0.3).to(torch.float64)
    extra = (mask, "double")
    ours, delta = IntegratedGradients(model).attribute(
        x, target=[2, 0, 1, 1], additional_forward_args=extra, method=method, n_steps=10, return_convergence_delta=True
    )
    theirs, their_delta = CaptumIG(model).attribute(
        x, target=[2, 0, 1, 1], additional_forward_args=extra, method=method, n_steps=10, return_convergence_delta=True
    )
    assert_close_scaled(ours, _rescale(theirs, method, 10), RTOL)
    _check_delta(delta, their_delta, ours, model, x, torch.zeros_like(x), [2, 0, 1, 1], extra, method=method)
    # The mask really is per example: masked features get exactly zero attribution.
    assert torch.equal(ours[mask == 0], torch.zeros(int((mask == 0).sum()), dtype=torch.float64))
    # The non-tensor argument really reaches the model.
    single = IntegratedGradients(model).attribute(
        x, target=[2, 0, 1, 1], additional_forward_args=(mask, "single"), method=method, n_steps=10
    )
    torch.testing.assert_close(ours, 2 * single, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("internal_batch_size", (4, 7, 13, 1000))
def test_internal_batch_size_chunks_give_the_same_result(internal_batch_size):
    model = mlp(seed=18, n_in=5, hidden=8, n_out=3, dtype=torch.float64)
    x, base = randn(4, 5, seed=19), randn(4, 5, seed=20)
    ig = IntegratedGradients(model)
    whole = ig.attribute(x, base, target=[1, 0, 2, 1], n_steps=11)
    ours, delta = ig.attribute(
        x, base, target=[1, 0, 2, 1], n_steps=11, internal_batch_size=internal_batch_size, return_convergence_delta=True
    )
    report = ig.last_report
    assert report.chunk_rows <= internal_batch_size
    assert report.rows == 4 * 11
    assert report.chunks == -(-44 // min(internal_batch_size, 44))
    theirs, their_delta = CaptumIG(model).attribute(
        x,
        base,
        target=[1, 0, 2, 1],
        n_steps=11,
        internal_batch_size=max(internal_batch_size, 4),
        return_convergence_delta=True,
    )
    torch.testing.assert_close(ours, whole, rtol=0, atol=1e-15)
    assert_close_scaled(ours, theirs, RTOL)
    _check_delta(delta, their_delta, ours, model, x, base, [1, 0, 2, 1])


@pytest.mark.parametrize("memory_budget", ("64KiB", 20000))
def test_memory_budget_chunks_give_the_same_result(memory_budget):
    model = mlp(hidden=64, seed=18, n_in=5, n_out=3, dtype=torch.float64)
    x, base = randn(6, 5, seed=19), randn(6, 5, seed=20)
    ig = IntegratedGradients(model)
    whole = ig.attribute(x, base, target=1, n_steps=20, internal_batch_size=120)
    with deadline(4, "the call"):
        ours = ig.attribute(x, base, target=1, n_steps=20, memory_budget=memory_budget)
    assert ig.last_report.rows == 120 and ig.last_report.chunks > 1
    torch.testing.assert_close(ours, whole, rtol=0, atol=1e-15)


def test_memory_budget_below_one_rows_activations_finishes_or_says_so():
    """A budget too small even for one path row cannot be met by splitting further: evaluating one row at a time
    (or a ValueError naming memory_budget) are both acceptable; retrying the same row forever is not."""
    model = mlp(hidden=64, seed=18, n_in=5, n_out=3, dtype=torch.float64)
    x = randn(2, 5, seed=19)
    ig = IntegratedGradients(model)
    expected = ig.attribute(x, target=1, n_steps=4)
    with deadline(4, "the call"):
        try:
            with pytest.warns(RuntimeWarning, match="memory_budget=100 bytes is smaller than one path row"):
                ours = ig.attribute(x, target=1, n_steps=4, memory_budget=100)
        except ValueError as error:
            assert "memory_budget" in str(error)
        else:
            torch.testing.assert_close(ours, expected, rtol=0, atol=1e-15)


def test_memory_budget_limits_activations_not_the_models_parameters():
    """The parameters (here 1.3 MB) exist whatever the chunk size; only what grows with the rows is budgeted. One
    row's activations are a few kB, so a 512 KiB budget holds many rows."""
    layer = seeded(lambda: nn.Linear(400, 400), seed=90)
    f = lambda z: torch.tanh(layer(z)).sum(1)  # noqa: E731
    x = randn(4, 400, seed=91)
    ig = IntegratedGradients(f)
    expected = ig.attribute(x, n_steps=8, internal_batch_size=32)
    with deadline(4, "the call"):
        ours = ig.attribute(x, n_steps=8, memory_budget="512KiB")
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-14)
    assert ig.last_report.chunk_rows >= 4


@pytest.mark.parametrize("method", METHODS)
def test_multiply_by_inputs_false_returns_the_path_averaged_gradient(method):
    model = mlp(seed=21, n_in=5, hidden=8, n_out=3, dtype=torch.float64)
    x, base = randn(3, 5, seed=22), randn(3, 5, seed=23)
    local = IntegratedGradients(model, multiply_by_inputs=False)
    assert local.multiplies_by_inputs is False
    ours = local.attribute(x, base, target=0, method=method, n_steps=10)
    theirs = CaptumIG(model, multiply_by_inputs=False).attribute(x, base, target=0, method=method, n_steps=10)
    assert_close_scaled(ours, _rescale(theirs, method, 10), RTOL)
    glob = IntegratedGradients(model).attribute(x, base, target=0, method=method, n_steps=10)
    torch.testing.assert_close(glob, ours * (x - base), rtol=1e-13, atol=1e-16)


@pytest.mark.parametrize("tuple_inputs", (False, True))
def test_compute_convergence_delta_agrees(tuple_inputs):
    if tuple_inputs:
        model = seeded(ThreeInputs, seed=24)
        inputs = (randn(2, 4, seed=25), randn(2, 2, 3, seed=26), randn(2, 5, seed=27))
        baselines = (0.5, randn(1, 2, 3, seed=28), randn(2, 5, seed=29))
    else:
        model = mlp(seed=24, n_in=5, hidden=8, n_out=3, dtype=torch.float64)
        inputs, baselines = randn(2, 5, seed=25), randn(2, 5, seed=26)
    ours_ig, theirs_ig = IntegratedGradients(model), CaptumIG(model)
    attr = ours_ig.attribute(inputs, baselines, target=2, n_steps=6)
    ours = ours_ig.compute_convergence_delta(attr, baselines, inputs, target=2)
    theirs = theirs_ig.compute_convergence_delta(attr, baselines, inputs, target=2)
    expected = _total(attr) - _gap(model, inputs, baselines, 2)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-13)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-13)
    _, returned = ours_ig.attribute(inputs, baselines, target=2, n_steps=6, return_convergence_delta=True)
    torch.testing.assert_close(returned, ours, rtol=0, atol=1e-13)


def test_negative_int_target_counts_from_the_end():
    model = mlp(seed=80, n_in=5, hidden=8, n_out=3, dtype=torch.float64)
    x = randn(3, 5, seed=81)
    ours = IntegratedGradients(model).attribute(x, target=-1, n_steps=10)
    assert_close_scaled(ours, CaptumIG(model).attribute(x, target=-1, n_steps=10), RTOL)
    torch.testing.assert_close(ours, IntegratedGradients(model).attribute(x, target=2, n_steps=10), rtol=0, atol=0)


# ------------------------------------------------------------------------------------ LayerIntegratedGradients


@pytest.mark.parametrize("method", ("gausslegendre", "riemann_middle", "riemann_trapezoid"))
def test_layer_ig_on_a_conv_layer(method):
    model = seeded(SmallCNN, seed=30)
    x, base = randn(3, 2, 6, 6, seed=31), randn(3, 2, 6, 6, seed=32)
    ours, delta = LayerIntegratedGradients(model, model.conv1).attribute(
        x, base, target=[0, 3, 1], method=method, n_steps=10, return_convergence_delta=True
    )
    theirs, their_delta = CaptumLayerIG(model, model.conv1).attribute(
        x, base, target=[0, 3, 1], method=method, n_steps=10, return_convergence_delta=True
    )
    assert ours.shape == (3, 3, 6, 6)
    assert_close_scaled(ours, _rescale(theirs.detach(), method, 10), RTOL)
    _check_delta(delta, their_delta, ours, model, x, base, [0, 3, 1], method=method)


def _text_batch(seed: int, lengths: list[int]):
    """The text model, token ids of 3 sentences padded with id 0 after ``lengths`` tokens, and the attention mask."""
    model = seeded(TextModel, seed=33)
    ids = torch.randint(1, 20, (3, 7), generator=torch.Generator().manual_seed(seed))
    mask = (torch.arange(7) < torch.tensor(lengths).unsqueeze(1)).long()
    return model, ids * mask, mask


def test_layer_ig_on_an_embedding_with_token_ids_and_an_attention_mask():
    model, ids, mask = _text_batch(34, [5, 7, 3])
    pad = torch.zeros_like(ids)
    ours, delta = LayerIntegratedGradients(model, model.embed).attribute(
        ids, pad, target=[0, 2, 1], additional_forward_args=mask, n_steps=20, return_convergence_delta=True
    )
    theirs, their_delta = CaptumLayerIG(model, model.embed).attribute(
        ids, pad, target=[0, 2, 1], additional_forward_args=(mask,), n_steps=20, return_convergence_delta=True
    )
    assert ours.shape == (3, 7, 6) and ours.dtype == torch.float64
    assert_close_scaled(ours, theirs.detach(), RTOL)
    _check_delta(delta, their_delta, ours, model, ids, pad, [0, 2, 1], (mask,))
    # Padded positions have the pad embedding at both ends of the path: exactly zero attribution.
    assert torch.equal(ours[mask == 0], torch.zeros(int((mask == 0).sum()), 6, dtype=torch.float64))


def test_layer_ig_compute_convergence_delta_agrees_on_floats_and_token_ids():
    model, ids, mask = _text_batch(35, [7, 4, 7])
    ours_lig, theirs_lig = LayerIntegratedGradients(model, model.embed), CaptumLayerIG(model, model.embed)
    attr, delta = ours_lig.attribute(
        ids, 0, target=[1, 0, 2], additional_forward_args=mask, n_steps=5, return_convergence_delta=True
    )
    ours = ours_lig.compute_convergence_delta(attr, 0, ids, target=[1, 0, 2], additional_forward_args=mask)
    theirs = theirs_lig.compute_convergence_delta(
        attr, torch.zeros_like(ids), ids, target=[1, 0, 2], additional_forward_args=(mask,)
    )
    torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=0, atol=1e-12)
    torch.testing.assert_close(ours, delta, rtol=0, atol=0)
    # Independent: Σ attributions − (F(x) − F(x′)), with the model run here.
    with torch.no_grad():
        out = lambda v: model(v, mask)[torch.arange(3), torch.tensor([1, 0, 2])]  # noqa: E731
        expected = attr.sum((1, 2)) - (out(ids) - out(torch.zeros_like(ids))).double()
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-12)

    cnn = seeded(SmallCNN, seed=30)
    x, base = randn(3, 2, 6, 6, seed=31), randn(1, 2, 6, 6, seed=32)
    attr = LayerIntegratedGradients(cnn, cnn.conv1).attribute(x, base, target=2, n_steps=4)
    ours = LayerIntegratedGradients(cnn, cnn.conv1).compute_convergence_delta(attr, base, x, target=2)
    theirs = CaptumLayerIG(cnn, cnn.conv1).compute_convergence_delta(attr, base, x, target=2)
    torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=0, atol=1e-12)


def test_layer_ig_compute_convergence_delta_refuses_what_it_cannot_sum():
    model = mlp(hidden=7, seed=35, n_in=5, n_out=3, dtype=torch.float64)
    x = randn(3, 5, seed=36)
    lig = LayerIntegratedGradients(model, [model[0], model[2]])
    attrs = lig.attribute(x, target=1, n_steps=4)
    with pytest.raises(TypeError, match="one layer's attributions.*one element of the list"):
        lig.compute_convergence_delta(attrs, 0.0, x, target=1)
    delta = lig.compute_convergence_delta(attrs[1], 0.0, x, target=1)
    assert delta.shape == (3,)
    with pytest.raises(
        ValueError, match=r"one row per example of end_point \(3\).*attributions\[0\] has shape \(2, 7\)"
    ):
        lig.compute_convergence_delta(attrs[0][:2], 0.0, x, target=1)
    assert not hasattr(NeuronIntegratedGradients(model, model[0]), "compute_convergence_delta")


def test_layer_ig_attributes_to_a_layers_input():
    model = mlp(hidden=7, seed=35, n_in=5, n_out=3, dtype=torch.float64)
    x, base = randn(3, 5, seed=36), randn(3, 5, seed=37)
    ours, delta = LayerIntegratedGradients(model, model[2]).attribute(
        x, base, target=1, attribute_to_layer_input=True, n_steps=15, return_convergence_delta=True
    )
    theirs, their_delta = CaptumLayerIG(model, model[2]).attribute(
        x, base, target=1, attribute_to_layer_input=True, n_steps=15, return_convergence_delta=True
    )
    assert ours.shape == (3, 7)
    assert_close_scaled(ours, theirs.detach(), RTOL)
    _check_delta(delta, their_delta, ours, model, x, base, 1)
    # The input of the last (linear) layer: IG there is exactly W[target] ⊙ (h(x) − h(x′)).
    with torch.no_grad():
        h = lambda v: model[1](model[0](v))  # noqa: E731
        exact = model[2].weight[1] * (h(x) - h(base))
    torch.testing.assert_close(ours, exact, rtol=0, atol=1e-14)


@pytest.mark.filterwarnings("ignore:Multiple layers provided")
def test_layer_ig_on_a_list_of_independent_layers_matches_captums_joint_result():
    model = seeded(TwoBranches, seed=38)
    inputs = (randn(3, 4, seed=39), randn(3, 3, seed=40))
    baselines = (randn(3, 4, seed=41), 0.1)
    ours, delta = LayerIntegratedGradients(model, [model.left, model.right]).attribute(
        inputs, baselines, target=[1, 0, 1], n_steps=14, return_convergence_delta=True
    )
    theirs, their_delta = CaptumLayerIG(model, [model.left, model.right]).attribute(
        inputs, baselines, target=[1, 0, 1], n_steps=14, return_convergence_delta=True
    )
    assert isinstance(ours, list) and len(ours) == 2
    assert ours[0].shape == (3, 5) and ours[1].shape == (3, 5)
    assert_close_scaled(ours, [t.detach() for t in theirs], RTOL)
    # Both layers were moved together, so their attributions together satisfy completeness.
    _check_delta(delta, their_delta, ours, model, inputs, baselines, [1, 0, 1])


@pytest.mark.parametrize("internal_batch_size", (5, 9))
def test_layer_ig_internal_batch_size(internal_batch_size):
    model = seeded(SmallCNN, seed=42)
    x = randn(3, 2, 6, 6, seed=43)
    lig = LayerIntegratedGradients(model, model.conv2)
    ours = lig.attribute(x, target=2, n_steps=7, internal_batch_size=internal_batch_size)
    assert lig.last_report.chunk_rows <= internal_batch_size
    theirs = CaptumLayerIG(model, model.conv2).attribute(
        x, target=2, n_steps=7, internal_batch_size=internal_batch_size
    )
    assert_close_scaled(ours, theirs.detach(), RTOL)


def test_layer_ig_multiply_by_inputs_false():
    model = mlp(seed=44, n_in=5, hidden=8, n_out=3, dtype=torch.float64)
    x = randn(3, 5, seed=45)
    ours = LayerIntegratedGradients(model, model[0], multiply_by_inputs=False).attribute(x, target=2, n_steps=9)
    theirs = CaptumLayerIG(model, model[0], multiply_by_inputs=False).attribute(x, target=2, n_steps=9)
    assert_close_scaled(ours, theirs.detach(), RTOL)


# ----------------------------------------------------------------------------------- NeuronIntegratedGradients


def _neuron_pair(model, layer, inputs, selector, **kw):
    ours = NeuronIntegratedGradients(model, layer).attribute(inputs, selector, **kw)
    theirs = CaptumNeuronIG(model, layer).attribute(inputs, selector, **kw)
    return ours, _detach(theirs)


@pytest.mark.parametrize("method", METHODS)
def test_neuron_ig_int_selector_on_a_linear_layer(method):
    model = mlp(hidden=8, seed=46, n_in=5, n_out=3, dtype=torch.float64)
    x, base = randn(4, 5, seed=47), randn(4, 5, seed=48)
    ours, theirs = _neuron_pair(model, model[0], x, 3, baselines=base, method=method, n_steps=9)
    assert_close_scaled(ours, _rescale(theirs, method, 9), RTOL)
    # The neuron is linear in the inputs: IG is exactly W[3] ⊙ (x − x′), as every rule's weights sum to one.
    torch.testing.assert_close(ours, model[0].weight.detach()[3] * (x - base), rtol=0, atol=1e-14)


def test_neuron_ig_tuple_selector_on_a_conv_layer():
    model = seeded(SmallCNN, seed=49)
    x = randn(3, 2, 6, 6, seed=50)
    ours, theirs = _neuron_pair(model, model.conv2, x, (1, 2, 0), n_steps=12)
    assert ours.shape == x.shape
    assert_close_scaled(ours, theirs, RTOL)


def test_neuron_ig_slice_selector_sums_the_selected_neurons():
    model = seeded(SmallCNN, seed=51)
    x = randn(2, 2, 6, 6, seed=52)
    selector = (slice(1, 3), 1, slice(0, 3))
    ours, theirs = _neuron_pair(model, model.act, x, selector, n_steps=10)
    assert_close_scaled(ours, theirs, RTOL)
    # A slice is the sum of its neurons, and IG is linear in the output.
    parts = sum(
        NeuronIntegratedGradients(model, model.act).attribute(x, (c, 1, w), n_steps=10)
        for c in (1, 2)
        for w in (0, 1, 2)
    )
    torch.testing.assert_close(ours, parts, rtol=0, atol=1e-13)


def test_neuron_ig_callable_selector():
    model = mlp(hidden=8, seed=53, n_in=5, n_out=3, dtype=torch.float64)
    x, base = randn(3, 5, seed=54), randn(3, 5, seed=55)
    selector = lambda out: out[:, 2] * out[:, 5] + out[:, 0]  # noqa: E731
    ours, theirs = _neuron_pair(model, model[1], x, selector, baselines=base, n_steps=16)
    assert_close_scaled(ours, theirs, RTOL)


@pytest.mark.parametrize("method", ("gausslegendre", "riemann_left"))
def test_neuron_ig_attribute_to_neuron_input(method):
    model = mlp(hidden=8, seed=56, n_in=5, n_out=3, dtype=torch.float64)
    x = randn(3, 5, seed=57)
    ours, theirs = _neuron_pair(model, model[2], x, 4, attribute_to_neuron_input=True, method=method, n_steps=11)
    assert_close_scaled(ours, theirs, RTOL)
    # The input of model[2] is the tanh layer's output: the same neuron seen from the other side.
    same = NeuronIntegratedGradients(model, model[1]).attribute(x, 4, method=method, n_steps=11)
    torch.testing.assert_close(ours, same, rtol=0, atol=1e-15)


def test_neuron_ig_tuple_inputs_and_internal_batch_size():
    model = seeded(ThreeInputs, seed=58)
    inputs = (randn(3, 4, seed=59), randn(3, 2, 3, seed=60), randn(3, 5, seed=61))
    baselines = (0.0, randn(1, 2, 3, seed=62), 0.3)
    ours, theirs = _neuron_pair(model, model.head, inputs, 2, baselines=baselines, n_steps=8, internal_batch_size=6)
    assert_close_scaled(ours, theirs, RTOL)


def test_neuron_ig_of_a_neuron_that_sees_one_input_gives_the_others_exact_zeros():
    """captum cannot run this case (autograd rejects the unused inputs); the answer is known exactly."""
    model = seeded(ThreeInputs, seed=58)
    inputs = (randn(3, 4, seed=59), randn(3, 2, 3, seed=60), randn(3, 5, seed=61))
    baselines = (0.0, randn(1, 2, 3, seed=62), 0.3)
    ours = NeuronIntegratedGradients(model, model.c).attribute(
        inputs, 2, baselines=baselines, n_steps=8, internal_batch_size=6
    )
    assert torch.equal(ours[0], torch.zeros_like(ours[0])) and torch.equal(ours[1], torch.zeros_like(ours[1]))
    # model.c is linear: its neuron 2 has IG W[2] ⊙ (x3 − 0.3).
    torch.testing.assert_close(ours[2], model.c.weight.detach()[2] * (inputs[2] - 0.3), rtol=0, atol=1e-14)


# ------------------------------------------------------------------------------------------------- NoiseTunnel


def test_noise_tunnel_with_zero_noise_equals_the_wrapped_method():
    model = mlp(seed=63, n_in=5, hidden=8, n_out=3, dtype=torch.float64)
    x, base = randn(3, 5, seed=64), randn(3, 5, seed=65)
    ig = IntegratedGradients(model)
    plain, plain_delta = ig.attribute(x, base, target=[0, 1, 2], n_steps=10, return_convergence_delta=True)
    nt = NoiseTunnel(ig)
    smooth, deltas = nt.attribute(
        x,
        nt_type="smoothgrad",
        nt_samples=4,
        stdevs=0.0,
        baselines=base,
        target=[0, 1, 2],
        n_steps=10,
        return_convergence_delta=True,
    )
    torch.testing.assert_close(smooth, plain, rtol=1e-14, atol=1e-15)
    assert deltas.shape == (12,)
    # Copies are stacked example-major, as captum stacks them: the 4 copies of example 0 first.
    torch.testing.assert_close(deltas, plain_delta.repeat_interleave(4), rtol=0, atol=1e-14)
    square = nt.attribute(
        x, nt_type="smoothgrad_sq", nt_samples=3, stdevs=0.0, baselines=base, target=[0, 1, 2], n_steps=10
    )
    torch.testing.assert_close(square, plain**2, rtol=1e-13, atol=1e-16)
    var = nt.attribute(x, nt_type="vargrad", nt_samples=3, stdevs=0.0, baselines=base, target=[0, 1, 2], n_steps=10)
    torch.testing.assert_close(var, torch.zeros_like(x), rtol=0, atol=1e-14)
    theirs = CaptumNoiseTunnel(CaptumIG(model)).attribute(
        x, nt_type="smoothgrad", nt_samples=4, stdevs=0.0, baselines=base, target=[0, 1, 2], n_steps=10
    )
    assert_close_scaled(smooth, theirs.detach(), RTOL)


def test_noise_tunnel_with_zero_noise_over_layer_and_neuron_methods():
    model = seeded(SmallCNN, seed=66)
    x = randn(2, 2, 6, 6, seed=67)
    lig = LayerIntegratedGradients(model, model.conv1)
    layer_plain = lig.attribute(x, target=1, n_steps=6)
    layer_nt = NoiseTunnel(lig).attribute(x, nt_samples=3, stdevs=0.0, target=1, n_steps=6)
    torch.testing.assert_close(layer_nt, layer_plain, rtol=1e-13, atol=1e-15)
    nig = NeuronIntegratedGradients(model, model.conv2)
    neuron_plain = nig.attribute(x, (0, 1, 1), n_steps=6)
    neuron_nt = NoiseTunnel(nig).attribute(x, nt_samples=2, stdevs=0.0, neuron_selector=(0, 1, 1), n_steps=6)
    torch.testing.assert_close(neuron_nt, neuron_plain, rtol=1e-13, atol=1e-15)


def test_noise_tunnel_shapes_and_statistics():
    """With the same noise draws, vargrad = smoothgrad_sq − smoothgrad² (variance = E[A²] − E[A]²)."""
    model = seeded(ThreeInputs, seed=68)
    inputs = (randn(3, 4, seed=69), randn(3, 2, 3, seed=70), randn(3, 5, seed=71))
    nt = NoiseTunnel(IntegratedGradients(model))
    results = {}
    for nt_type in ("smoothgrad", "smoothgrad_sq", "vargrad"):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            results[nt_type] = nt.attribute(
                inputs, nt_type=nt_type, nt_samples=5, stdevs=(0.1, 0.2, 0.3), target=0, n_steps=6
            )
        theirs = CaptumNoiseTunnel(CaptumIG(model)).attribute(
            inputs, nt_type=nt_type, nt_samples=5, stdevs=(0.1, 0.2, 0.3), target=0, n_steps=6
        )
        out = results[nt_type]
        assert isinstance(out, tuple) and len(out) == 3
        for o, t, x in zip(out, theirs, inputs):
            assert o.shape == x.shape == t.shape
            assert o.dtype == torch.float64
            assert torch.isfinite(o).all()
    plain = IntegratedGradients(model).attribute(inputs, target=0, n_steps=6)
    for sg, sq, var, p in zip(results["smoothgrad"], results["smoothgrad_sq"], results["vargrad"], plain):
        assert (sq >= 0).all() and (var >= -1e-15).all()
        torch.testing.assert_close(var, sq - sg**2, rtol=0, atol=1e-14)
        # Real noise: the copies differ, so the variance is positive somewhere and the mean moved off the plain IG.
        assert float(var.max()) > 0
        assert not torch.equal(sg, p)


def _both_seeded(seed: int, call):
    """``call()`` after seeding torch's and numpy's global generators, leaving both as they were."""
    state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed)
        try:
            return call()
        finally:
            np.random.set_state(state)


@pytest.mark.parametrize("case", ["float32_delta", "float64_tuple_calls", "drawn_baselines", "layer"])
def test_noise_tunnel_draws_what_captum_draws(case):
    """Same seeds, same noise on the same copies: results (and deltas, in captum's order) agree with captum's."""
    kwargs = dict(n_steps=6)
    if case == "float32_delta":
        model = mlp(seed=72, dtype=torch.float32, n_in=5, hidden=8, n_out=3)
        inputs = randn(4, 5, seed=73, dtype=torch.float32)
        ours, theirs = NoiseTunnel(IntegratedGradients(model)), CaptumNoiseTunnel(CaptumIG(model))
        kwargs.update(
            nt_type="smoothgrad",
            nt_samples=3,
            stdevs=0.5,
            target=[0, 1, 2, 0],
            baselines=0.1,
            return_convergence_delta=True,
        )
        rtol = 1e-5
    elif case == "float64_tuple_calls":
        model = seeded(ThreeInputs, seed=74)
        inputs = (randn(3, 4, seed=75), randn(3, 2, 3, seed=76), randn(3, 5, seed=77))
        ours, theirs = NoiseTunnel(IntegratedGradients(model)), CaptumNoiseTunnel(CaptumIG(model))
        kwargs.update(
            nt_type="vargrad",
            nt_samples=5,
            nt_samples_batch_size=2,
            stdevs=(0.1, 0.2, 0.3),
            target=1,
            baselines=(randn(3, 4, seed=78), 0.0, randn(1, 5, seed=79)),
        )
        rtol = 1e-7
    elif case == "drawn_baselines":
        model = mlp(seed=80, n_in=5, hidden=8, n_out=3, dtype=torch.float64)
        inputs = randn(3, 5, seed=81)
        ours, theirs = NoiseTunnel(IntegratedGradients(model)), CaptumNoiseTunnel(CaptumIG(model))
        kwargs.update(
            nt_type="smoothgrad_sq",
            nt_samples=4,
            stdevs=0.2,
            target=2,
            baselines=randn(6, 5, seed=82),
            draw_baseline_from_distrib=True,
        )
        rtol = 1e-7
    else:
        model = seeded(SmallCNN, seed=83)
        inputs = randn(2, 2, 6, 6, seed=84)
        ours = NoiseTunnel(LayerIntegratedGradients(model, model.conv1))
        theirs = CaptumNoiseTunnel(CaptumLayerIG(model, model.conv1))
        kwargs.update(nt_type="smoothgrad", nt_samples=3, stdevs=0.3, target=[1, 3], return_convergence_delta=True)
        rtol = 1e-7
    got = _both_seeded(5, lambda: ours.attribute(inputs, **kwargs))
    expected = _both_seeded(5, lambda: theirs.attribute(inputs, **kwargs))
    if kwargs.get("return_convergence_delta"):
        (got, got_delta), (expected, expected_delta) = got, expected
        # A delta is a small difference of large sums: its round-off is on the scale of the attributions.
        scale = float(_detach(expected).abs().max())
        torch.testing.assert_close(got_delta, expected_delta.detach(), rtol=0, atol=rtol * scale)
    assert_close_scaled(got, _detach(expected), rtol, case)
    # The noise mattered: another seed gives another result.
    other = _both_seeded(6, lambda: ours.attribute(inputs, **kwargs))
    other = other[0] if kwargs.get("return_convergence_delta") else other
    first = got[0] if isinstance(got, tuple) else got
    assert not torch.allclose(first, other[0] if isinstance(other, tuple) else other)


# ----------------------------------------------------------------------------------------------- autograd mode


def _all_methods(model, x):
    return {
        "ig": lambda: IntegratedGradients(model).attribute(x, target=1, n_steps=8),
        "layer": lambda: LayerIntegratedGradients(model, model[0]).attribute(x, target=1, n_steps=8),
        "neuron": lambda: NeuronIntegratedGradients(model, model[0]).attribute(x, 1, n_steps=8),
        "noise_tunnel": lambda: NoiseTunnel(IntegratedGradients(model)).attribute(
            x, nt_samples=2, stdevs=0.0, target=1, n_steps=8
        ),
        "auto": lambda: IntegratedGradients(model).attribute(x, target=1, n_steps="auto"),
    }


@pytest.mark.parametrize("which", ("ig", "layer", "neuron", "noise_tunnel", "auto"))
def test_attribution_inside_torch_no_grad_works_as_in_captum(which):
    """Explanations are often computed in evaluation code under ``torch.no_grad()``; captum enables gradients
    internally and gives the same result there."""
    model = mlp(seed=82, n_in=5, hidden=8, n_out=3, dtype=torch.float64)
    x = randn(3, 5, seed=83)
    run = _all_methods(model, x)[which]
    expected = run()
    with torch.no_grad():
        ours = run()
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-15)
    if which == "ig":
        with torch.no_grad():
            theirs = CaptumIG(model).attribute(x, target=1, n_steps=8)
        assert_close_scaled(ours, theirs, RTOL)


@pytest.mark.parametrize("which", ("ig", "layer", "neuron", "noise_tunnel", "auto"))
def test_attribution_inside_inference_mode_raises_instead_of_returning_zeros(which):
    """No gradient can be taken in inference mode (captum raises); all-zero attributions would be silently wrong."""
    model = mlp(seed=84, n_in=5, hidden=8, n_out=3, dtype=torch.float64)
    x = randn(3, 5, seed=85)
    with torch.inference_mode(), pytest.raises((RuntimeError, ValueError)):
        _all_methods(model, x)[which]()
