"""LayerIntegratedGradients against independent computations: a loop over Gauss–Legendre nodes in which forward
hooks written here replace the layers' values by their points on the straight path."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from integrad import LayerIntegratedGradients

from models import (
    TextClassifier,
    TupleLayerModel,
    TwoBranch,
    deep_mlp,
    layer_values,
    manual_layer_ig,
    no_hooks_left,
)

#: Tiny models run faster and steadier on one thread (see conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


N = 32  # points of both the library's and the reference Gauss–Legendre rule


def close(a, b, rtol=1e-4, atol=1e-6):
    torch.testing.assert_close(a.double(), b.double(), rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------------------- tokens
@pytest.fixture(scope="module")
def text():
    model = TextClassifier()
    ids = torch.tensor([[3, 5, 7, 11, 0, 0], [2, 9, 4, 0, 0, 0], [13, 14, 15, 16, 17, 18]])
    mask = (ids != 0).long()
    return model, ids, mask, torch.zeros_like(ids)


def test_token_ids_into_embedding_with_attention_mask(text):
    model, ids, mask, pad = text
    target = torch.tensor([0, 2, 1])
    lig = LayerIntegratedGradients(model, model.embed)
    got, delta = lig.attribute(
        ids, baselines=pad, target=target, additional_forward_args=(mask,), n_steps=N, return_convergence_delta=True
    )
    assert got.shape == (3, 6, 8) and got.dtype == torch.float32
    ref = manual_layer_ig(model, [model.embed], (ids, mask), (pad, mask), target, n=N)[0]
    close(got, ref)
    # Completeness: with enough steps the delta is small next to the output difference it accounts for.
    with torch.no_grad():
        diff = (model(ids, mask) - model(pad, mask)).gather(1, target.view(-1, 1)).squeeze(1)
    torch.testing.assert_close(delta, got.sum((1, 2)) - diff, rtol=1e-4, atol=1e-6)
    assert bool((delta.abs() <= 1e-4 * diff.abs() + 1e-6).all()), (delta, diff)
    # Masked (padding) positions carry no attribution: the model ignores them.
    assert float(got[mask == 0].abs().max()) == 0.0


def test_token_attribution_independent_of_batch_mates(text):
    model, ids, mask, pad = text
    lig = LayerIntegratedGradients(model, model.embed)
    whole = lig.attribute(ids, baselines=pad, target=1, additional_forward_args=(mask,), n_steps=N)
    one = lig.attribute(ids[1:2], baselines=pad[1:2], target=1, additional_forward_args=(mask[1:2],), n_steps=N)
    close(one[0], whole[1], rtol=1e-5, atol=1e-7)


def test_single_pad_id_baseline_broadcasts(text):
    model, ids, mask, pad = text
    lig = LayerIntegratedGradients(model, model.embed)
    a = lig.attribute(ids, baselines=0, target=2, additional_forward_args=(mask,), n_steps=8)
    b = lig.attribute(ids, baselines=pad[:1], target=2, additional_forward_args=(mask,), n_steps=8)
    c = lig.attribute(ids, baselines=pad, target=2, additional_forward_args=(mask,), n_steps=8)
    close(a, c, rtol=1e-6, atol=1e-8)
    close(b, c, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------------------------------- tuple output
def test_layer_with_tuple_output():
    model = TupleLayerModel()
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    base = torch.full((1, 5), 0.2)
    target = torch.tensor([0, 1, 2, 0])
    lig = LayerIntegratedGradients(model, model.split)
    got, delta = lig.attribute(x, baselines=base, target=target, n_steps=N, return_convergence_delta=True)
    assert isinstance(got, tuple) and len(got) == 2
    ref = manual_layer_ig(model, [model.split], (x,), (base.expand_as(x),), target, n=N)[0]
    for g, r in zip(got, ref):
        assert g.shape == (4, 5)
        close(g, r)
    with torch.no_grad():
        diff = (model(x) - model(base.expand_as(x))).gather(1, target.view(-1, 1)).squeeze(1)
    close(delta, got[0].sum(1) + got[1].sum(1) - diff, atol=1e-5)
    assert bool((delta.abs() < 1e-4).all())


# ---------------------------------------------------------------------------------------------------- layer input
def test_attribute_to_layer_input():
    model = deep_mlp()
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([1, 0, 3])
    lig = LayerIntegratedGradients(model, model[2])
    got = lig.attribute(x, target=target, n_steps=N, attribute_to_layer_input=True)
    assert got.shape == (3, 16)
    ref = manual_layer_ig(model, [model[2]], (x,), (torch.zeros_like(x),), target, n=N, use_input=True)[0]
    close(got, ref)
    # The input of layer 2 is the output of layer 1: the same attributions either way.
    close(LayerIntegratedGradients(model, model[1]).attribute(x, target=target, n_steps=N), got, rtol=1e-5, atol=1e-7)
    # ... and not what the layer's output gives: the flag selects a different space.
    output_side = LayerIntegratedGradients(model, model[2]).attribute(x, target=target, n_steps=N)
    assert float((output_side - got).abs().max()) > 1e-3


# ---------------------------------------------------------------------------------------------------- lists
def test_list_of_independent_layers_is_interpolated_jointly():
    model = TwoBranch()
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(2))
    base = torch.randn(1, 5, generator=torch.Generator().manual_seed(3))
    target = torch.tensor([0, 1, 1, 0])
    lig = LayerIntegratedGradients(model, [model.left, model.right])
    got, delta = lig.attribute(x, baselines=base, target=target, n_steps=N, return_convergence_delta=True)
    assert isinstance(got, list) and len(got) == 2
    joint = manual_layer_ig(model, [model.left, model.right], (x,), (base.expand_as(x),), target, n=N)
    for g, r in zip(got, joint):
        close(g, r)
    # Joint interpolation is complete over both layers together ...
    with torch.no_grad():
        diff = (model(x) - model(base.expand_as(x))).gather(1, target.view(-1, 1)).squeeze(1)
    close(got[0].sum(1) + got[1].sum(1), diff, atol=1e-5)
    close(delta, got[0].sum(1) + got[1].sum(1) - diff, atol=1e-5)
    # ... and differs from interpolating each layer alone (the branches interact), so the test can tell them apart.
    alone = manual_layer_ig(model, [model.left], (x,), (base.expand_as(x),), target, n=N)[0]
    assert float((alone - joint[0]).abs().max()) > 1e-2


def test_list_where_one_layer_feeds_the_next_equals_each_alone():
    model = deep_mlp()
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(4))
    target = 2
    lig = LayerIntegratedGradients(model, [model[0], model[2], model[4]])
    got = lig.attribute(x, target=target, n_steps=N)
    t = torch.full((3,), target)
    for layer, g in zip([model[0], model[2], model[4]], got):
        ref = manual_layer_ig(model, [layer], (x,), (torch.zeros_like(x),), t, n=N)[0]
        close(g, ref)
        close(g, LayerIntegratedGradients(model, layer).attribute(x, target=target, n_steps=N), rtol=1e-5, atol=1e-7)
    assert no_hooks_left(model)


def test_list_where_all_layers_are_entangled():
    # left and right both feed head, so all three are entangled and each is integrated as if alone.
    model = TwoBranch()
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(6))
    t = torch.tensor([1, 0, 1])
    got = LayerIntegratedGradients(model, [model.left, model.head, model.right]).attribute(x, target=t, n_steps=N)
    zeros = (torch.zeros_like(x),)
    for layer, g in zip([model.left, model.head, model.right], got):
        close(g, manual_layer_ig(model, [layer], (x,), zeros, t, n=N)[0])


class _ThreeBranch(nn.Module):
    """Branches a, b, c in parallel; c2 follows c. a and b are independent; c and c2 are entangled."""

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(9)
            self.a, self.b, self.c = nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(4, 3)
            self.c2 = nn.Linear(3, 3)
            self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.a(x)) * torch.tanh(self.b(x)) + torch.tanh(self.c2(torch.tanh(self.c(x)))))


def test_list_with_an_independent_group_and_an_entangled_pair():
    model = _ThreeBranch()
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(10))
    t = torch.tensor([0, 1, 0])
    zeros = (torch.zeros_like(x),)
    got = LayerIntegratedGradients(model, [model.c2, model.a, model.c, model.b]).attribute(x, target=t, n_steps=N)
    joint = manual_layer_ig(model, [model.a, model.b], (x,), zeros, t, n=N)
    close(got[1], joint[0])
    close(got[3], joint[1])
    close(got[0], manual_layer_ig(model, [model.c2], (x,), zeros, t, n=N)[0])
    close(got[2], manual_layer_ig(model, [model.c], (x,), zeros, t, n=N)[0])


# ---------------------------------------------------------------------------------------------------- delta & misc
def test_return_convergence_delta_matches_definition():
    model = deep_mlp()
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(7))
    base = 0.5 * torch.ones(1, 6)
    lig = LayerIntegratedGradients(model, model[1])
    for method, steps in [("gausslegendre", 4), ("riemann_trapezoid", 5), ("riemann_left", 7)]:
        got, delta = lig.attribute(
            x, baselines=base, target=3, n_steps=steps, method=method, return_convergence_delta=True
        )
        with torch.no_grad():
            diff = model(x)[:, 3] - model(base.expand_as(x))[:, 3]
        assert delta.shape == (5,)
        close(delta, got.sum(1) - diff, rtol=1e-5, atol=1e-6)
        assert torch.equal(lig.last_report.delta, delta)
    # Few steps give a visibly nonzero delta, many steps a tiny one: the delta measures the quadrature error.
    _, rough = lig.attribute(
        x, baselines=base, target=3, n_steps=2, method="riemann_left", return_convergence_delta=True
    )
    _, fine = lig.attribute(x, baselines=base, target=3, n_steps=64, return_convergence_delta=True)
    assert float(fine.abs().max()) < 1e-3 * float(rough.abs().max())


def test_multiply_by_inputs_false_is_the_path_average_gradient():
    model = deep_mlp()
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(8))
    local = LayerIntegratedGradients(model, model[2], multiply_by_inputs=False).attribute(x, target=0, n_steps=N)
    full = LayerIntegratedGradients(model, model[2]).attribute(x, target=0, n_steps=N)
    h, h0 = layer_values(model, [model[2]], (x,))[0], layer_values(model, [model[2]], (torch.zeros_like(x),))[0]
    close(local * (h - h0), full, rtol=1e-5, atol=1e-7)


def test_layer_ig_with_multiple_inputs_and_function_forward():
    model = deep_mlp()

    def forward(a, b, scale):
        return model(a + b) * scale.view(-1, 1)

    a, b = torch.randn(3, 6), torch.randn(3, 6)
    scale = torch.tensor([1.0, 2.0, -1.0])
    got = LayerIntegratedGradients(forward, model[2]).attribute(
        (a, b), target=1, additional_forward_args=(scale,), n_steps=N
    )
    ref = manual_layer_ig(
        forward,
        [model[2]],
        (a, b, scale),
        (torch.zeros_like(a), torch.zeros_like(b), scale),
        torch.ones(3, dtype=torch.long),
        n=N,
    )[0]
    close(got, ref)


def test_token_ids_chunked(text):
    model, ids, mask, pad = text
    lig = LayerIntegratedGradients(model, model.embed)
    target = torch.tensor([1, 0, 2])
    whole = lig.attribute(ids, baselines=pad, target=target, additional_forward_args=(mask,), n_steps=N)
    parts = lig.attribute(
        ids, baselines=pad, target=target, additional_forward_args=(mask,), n_steps=N, internal_batch_size=5
    )
    assert lig.last_report.chunk_rows == 5
    close(parts, whole, rtol=1e-5, atol=1e-7)


class _Mix(nn.Module):
    def forward(self, a, b):
        return torch.tanh(a) * b + a


class _TwoArgLayer(nn.Module):
    """A layer called with two positional inputs, each produced by its own module."""

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(11)
            self.p, self.q = nn.Linear(4, 3), nn.Linear(4, 3)
            self.mix = _Mix()
            self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.mix(self.p(x), self.q(x)))


def test_layer_input_with_two_positional_arguments():
    model = _TwoArgLayer()
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(12))
    t = torch.tensor([0, 1, 1])
    got = LayerIntegratedGradients(model, model.mix).attribute(x, target=t, n_steps=N, attribute_to_layer_input=True)
    assert isinstance(got, tuple) and len(got) == 2
    # The inputs of mix are the outputs of p and q: the same as interpolating both of those jointly.
    joint = manual_layer_ig(model, [model.p, model.q], (x,), (torch.zeros_like(x),), t, n=N)
    close(got[0], joint[0])
    close(got[1], joint[1])


class SharedLayer(nn.Module):
    """``head(tanh(shared(tanh(shared(x)))))``: one module run twice in a forward pass."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(6)
        self.shared = nn.Linear(5, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.shared(torch.tanh(self.shared(x)))))


@pytest.mark.parametrize("use_input", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
def test_a_layer_run_twice_in_a_forward_pass_is_an_error(use_input, batch):
    # Which of the two values the path would replace is not known (captum replaces both with the path of the last).
    model = SharedLayer()
    x = torch.randn(batch, 5)
    x_before = x.clone()
    lig = LayerIntegratedGradients(model, model.shared)
    with pytest.raises(
        ValueError,
        match=r"layer Linear runs more than once in one forward pass of forward_func, on different inputs"
        r".*module that runs once",
    ):
        lig.attribute(x, target=1, n_steps=8, attribute_to_layer_input=use_input)
    assert no_hooks_left(model)
    assert torch.equal(x, x_before)
    # The error is not taken for a shape mismatch of the batch-wide forward: that path stays on for other layers.
    assert lig._expand["enabled"]
    # The same model attributed at a layer that runs once works.
    out = LayerIntegratedGradients(model, model.head).attribute(x, target=1, n_steps=8)
    assert out.shape == (batch, 3)


def _conv_net(inplace: bool) -> nn.Sequential:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        return nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1),
            nn.ReLU(inplace=inplace),
            nn.Conv2d(4, 4, 3),
            nn.ReLU(inplace=inplace),
            nn.Flatten(),
            nn.Linear(64, 3),
        ).eval()


@pytest.mark.parametrize("expand", [True, False])
@pytest.mark.parametrize("layer,use_input", [(0, False), (1, True), (2, False)])
def test_a_model_writing_into_the_layers_value_gets_copies(layer, use_input, expand):
    # An in-place ReLU right after the layer (or the layer itself writing into its input) would write into the path
    # points, which autograd forbids (captum fails there); the points are handed over as copies instead, and the
    # result is that of the same model without in-place operations.
    x = torch.randn(3, 2, 6, 6, generator=torch.Generator().manual_seed(12))
    model = _conv_net(inplace=True)
    lig = LayerIntegratedGradients(model, model[layer], expand_at_layer=expand)
    got = lig.attribute(x, target=1, n_steps=8, attribute_to_layer_input=use_input)
    assert lig._expand["enabled"] == expand  # not taken for a shape mismatch of the batch-wide forward
    twin = _conv_net(inplace=False)
    expected = LayerIntegratedGradients(twin, twin[layer]).attribute(
        x, target=1, n_steps=8, attribute_to_layer_input=use_input
    )
    close(got, expected, rtol=1e-5, atol=1e-6)
    assert float(expected.abs().max()) > 1e-3
    # The object keeps handing copies: a second call gives the same result.
    close(lig.attribute(x, target=1, n_steps=8, attribute_to_layer_input=use_input), got, rtol=0, atol=0)
    assert no_hooks_left(model)


def test_layers_recorded_before_an_in_place_operation_keep_their_values():
    # With a list, the forward goes on after the first layer: the in-place ReLU after it must not change the value
    # recorded at the path's ends.
    x = torch.randn(3, 2, 6, 6, generator=torch.Generator().manual_seed(13))
    model, twin = _conv_net(inplace=True), _conv_net(inplace=False)
    got = LayerIntegratedGradients(model, [model[0], model[2]]).attribute(x, target=2, n_steps=8)
    expected = LayerIntegratedGradients(twin, [twin[0], twin[2]]).attribute(x, target=2, n_steps=8)
    for g, e in zip(got, expected):
        close(g, e, rtol=1e-5, atol=1e-6)
