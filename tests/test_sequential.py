"""Sequential integrated gradients, on inputs and in a layer's value.

Two references, both in float64: integrad's own IntegratedGradients / LayerIntegratedGradients run once per position
with the baseline ``x.clone(); baseline[:, i] = x′[:, i]`` keeping slice ``i`` (the definition, as a loop), and
inseq's SequentialIntegratedGradients (captum's float32 step sizes: 1e-7 of each map's largest entry; its trapezoid
result rescaled by ``n/(n − 1)`` to the true trapezoid rule).
"""

from __future__ import annotations

import importlib
import inspect

import pytest
import torch
from torch import nn

from integrad import IntegratedGradients, LayerIntegratedGradients
from integrad.methods.sequential import LayerSequentialIntegratedGradients, SequentialIntegratedGradients

from models import METHODS, assert_close_scaled, randn, seeded


@pytest.fixture
def inseq_sig():
    """inseq's SequentialIntegratedGradients (a test-only reference; only the tests that use it need it)."""
    return importlib.import_module("inseq.attr.feat.ops").SequentialIntegratedGradients


RTOL = 1e-7


class Recurrent(nn.Module):
    """``(batch, length, 4) -> (batch, 3)``: a GRU read to its last state, so positions interact."""

    def __init__(self, n_in: int = 4) -> None:
        super().__init__()
        self.rnn = nn.GRU(n_in, 6, batch_first=True)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.rnn(x)[0][:, -1]))


class Split(nn.Module):
    """Two inputs sharing the sequence axis, joined on the features."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = Recurrent(n_in=5)

    def forward(self, a, b):
        return self.inner(torch.cat([a, b], -1))


class FeaturesFirst(nn.Module):
    """``(batch, 4, length)``: the sequence on the last axis."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x.transpose(1, 2))


class Tokens(nn.Module):
    """Token ids and a mask -> 3 classes: embeddings, a GRU, the masked last state."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(30, 4)
        self.rnn = nn.GRU(4, 6, batch_first=True)
        self.head = nn.Linear(6, 3)

    def from_embeddings(self, e, mask):
        states = self.rnn(e * mask.unsqueeze(-1).to(e.dtype))[0]
        return self.head(torch.tanh(states[:, -1]))

    def forward(self, ids, mask):
        return self.from_embeddings(self.embed(ids), mask)


class FromEmbeddings(nn.Module):
    def __init__(self, tokens: Tokens) -> None:
        super().__init__()
        self.tokens = tokens

    def forward(self, e, mask):
        return self.tokens.from_embeddings(e, mask)


class CountedCalls(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def _one_position_at_a_time(attribute, inputs, baselines, dim: int = 1):
    """The definition as a loop: one attribution per position with only that position at its baseline."""
    single = not isinstance(inputs, tuple)
    inputs, baselines = (inputs,) if single else inputs, (baselines,) if single else baselines
    out = None
    for i in range(inputs[0].shape[dim]):
        moved = []
        for x, b in zip(inputs, baselines):
            start = x.clone()
            start.select(dim, i).copy_(b.expand_as(x).select(dim, i))
            moved.append(start)
        result = attribute(tuple(moved) if not single else moved[0])
        result = (result,) if single else result
        # Shaped like the attributions (a layer's value for the layer variant).
        out = out if out is not None else [torch.zeros_like(r) for r in result]
        for o, r in zip(out, result):
            o.select(dim, i).copy_(r.select(dim, i))
    return out[0] if single else tuple(out)


def _value_at(model, x, target):
    rows = torch.arange(x.shape[0])
    with torch.no_grad():
        return model(x)[rows, target]


def test_the_signature_is_inseqs(inseq_sig):
    """inseq's parameters in inseq's order, then integrad's own, keyword-only."""
    for ours, theirs in (
        (SequentialIntegratedGradients.__init__, inseq_sig.__init__),
        (
            SequentialIntegratedGradients.attribute,
            inseq_sig.attribute,
        ),
    ):
        mine = [p for p in inspect.signature(ours).parameters.values() if p.name != "self"]
        expected = [p for p in inspect.signature(theirs).parameters.values() if p.name != "self"]
        assert [(p.name, p.default) for p in mine[: len(expected)]] == [(p.name, p.default) for p in expected]
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in mine[len(expected) :])


@pytest.mark.parametrize("method", METHODS)
def test_equals_integrated_gradients_one_position_at_a_time(method):
    model = seeded(Recurrent, seed=1)
    x, base = randn(3, 5, 4, seed=2), randn(3, 5, 4, seed=3) * 0.2
    target = [0, 2, 1]
    ig = IntegratedGradients(model)
    expected = _one_position_at_a_time(lambda b: ig.attribute(x, b, target=target, n_steps=12, method=method), x, base)
    got = SequentialIntegratedGradients(model).attribute(x, base, target=target, n_steps=12, method=method)
    assert got.shape == x.shape and got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


def test_local_attribution_tuple_inputs_and_other_sequence_axes():
    model = seeded(Split, seed=4)
    a, b = randn(2, 6, 2, seed=5), randn(2, 6, 3, seed=6)
    base = (randn(1, 6, 2, seed=7), 0.5)
    ig = IntegratedGradients(model, multiply_by_inputs=False)
    expected = _one_position_at_a_time(
        lambda start: ig.attribute((a, b), start, target=1, n_steps=9), (a, b), (base[0], torch.tensor(0.5))
    )
    got = SequentialIntegratedGradients(model, multiply_by_inputs=False).attribute((a, b), base, target=1, n_steps=9)
    assert isinstance(got, tuple)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-14)
    last = seeded(lambda: FeaturesFirst(Recurrent()), seed=8)
    x, start = randn(2, 4, 5, seed=9), randn(2, 4, 5, seed=10)
    ig = IntegratedGradients(last)
    expected = _one_position_at_a_time(lambda s: ig.attribute(x, s, target=0, n_steps=10), x, start, dim=2)
    for dim in (2, -1):
        got = SequentialIntegratedGradients(last).attribute(x, start, target=0, n_steps=10, sequence_dim=dim)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("method", METHODS)
def test_matches_inseq(method, inseq_sig):
    model = seeded(Recurrent, seed=11)
    x, base = randn(3, 4, 4, seed=12), randn(3, 4, 4, seed=13) * 0.3
    for target in (1, [2, 0, 1]):
        ours = SequentialIntegratedGradients(model).attribute(x, base, target=target, n_steps=10, method=method)
        theirs = inseq_sig(model).attribute(x, base, target=target, n_steps=10, method=method)
        factor = 10 / 9 if method == "riemann_trapezoid" else 1.0
        assert_close_scaled(ours, theirs.detach() * factor, RTOL)
    local = SequentialIntegratedGradients(model, multiply_by_inputs=False).attribute(x, target=0, n_steps=7)
    theirs = inseq_sig(model, multiply_by_inputs=False).attribute(x, target=0, n_steps=7, internal_batch_size=6)
    assert_close_scaled(local, theirs.detach(), RTOL)


def test_completeness_holds_per_position():
    model = seeded(Recurrent, seed=14)
    x, base = randn(2, 5, 4, seed=15), randn(2, 5, 4, seed=16)
    target = torch.tensor([2, 1])
    sig = SequentialIntegratedGradients(model)
    got, delta = sig.attribute(x, base, target=target, n_steps=40, return_convergence_delta=True)
    assert delta.shape == (2, 5) and delta.dtype == torch.float64
    for i in range(5):
        start = x.clone()
        start[:, i] = base[:, i]
        change = _value_at(model, x, target) - _value_at(model, start, target)
        torch.testing.assert_close(delta[:, i], got[:, i].sum(-1) - change, rtol=0, atol=1e-13)
        torch.testing.assert_close(got[:, i].sum(-1), change, rtol=0, atol=1e-10)
    # Σ over all positions is not F(x) − F(x′): positions interact, and each is attributed against the others kept.
    total_gap = _value_at(model, x, target) - _value_at(model, base, target)
    assert float((got.sum((1, 2)) - total_gap).abs().max()) > 1e-3
    assert sig.last_report.steps.shape == (2, 5)


def test_all_positions_run_as_one_chunked_evaluation():
    model = CountedCalls(seeded(Recurrent, seed=17))
    x = randn(3, 6, 4, seed=18)
    sig = SequentialIntegratedGradients(model)
    whole = sig.attribute(x, target=0, n_steps=8, internal_batch_size=3 * 6 * 8)
    assert model.calls == 1 and sig.last_report.rows == 3 * 6 * 8
    for options in ({"internal_batch_size": 5}, {"internal_batch_size": 18}, {"memory_budget": "64KiB"}):
        torch.testing.assert_close(sig.attribute(x, target=0, n_steps=8, **options), whole, rtol=1e-13, atol=1e-15)
    automatic = sig.attribute(x, target=0, n_steps="auto", tolerance=1e-9)
    assert sig.last_report.error_estimate.shape == (3, 6)
    assert_close_scaled(automatic, sig.attribute(x, target=0, n_steps=64), 1e-7)


def test_an_example_does_not_depend_on_its_batch():
    model = seeded(Recurrent, seed=19)
    x, base = randn(4, 5, 4, seed=20), randn(4, 5, 4, seed=21)
    target = [0, 1, 2, 0]
    together = SequentialIntegratedGradients(model).attribute(x, base, target=target, n_steps=11)
    for i in range(4):
        alone = SequentialIntegratedGradients(model).attribute(
            x[i : i + 1], base[i : i + 1], target=target[i], n_steps=11
        )
        torch.testing.assert_close(alone, together[i : i + 1], rtol=1e-13, atol=1e-15)


def test_dtype_is_kept_and_the_caller_is_left_alone():
    model = seeded(Recurrent, seed=22, dtype=torch.float32)
    x, base = randn(2, 4, 4, seed=23, dtype=torch.float32), randn(2, 4, 4, seed=24, dtype=torch.float32)
    keep = (x.clone(), base.clone())
    got, delta = SequentialIntegratedGradients(model).attribute(
        x, base, target=1, n_steps=6, return_convergence_delta=True
    )
    assert got.dtype == torch.float32 and delta.dtype == torch.float32
    assert torch.equal(x, keep[0]) and torch.equal(base, keep[1]) and not x.requires_grad
    assert all(p.grad is None for p in model.parameters())


def test_bad_arguments_are_refused_with_the_parameter_named():
    model = seeded(Recurrent)
    x = randn(2, 4, 4)
    sig = SequentialIntegratedGradients(model)
    for dim in (0, 3, -3, 7):
        with pytest.raises(ValueError, match=f"sequence_dim = {dim} is out of range for inputs of shape"):
            sig.attribute(x, target=0, sequence_dim=dim)
    with pytest.raises(TypeError, match="sequence_dim must be an int"):
        sig.attribute(x, target=0, sequence_dim=1.0)
    with pytest.raises(ValueError, match="same length along sequence_dim"):
        SequentialIntegratedGradients(seeded(Split)).attribute((randn(2, 4, 2), randn(2, 3, 3)), target=0)
    with pytest.raises(ValueError, match="no dimension after the batch"):
        sig.attribute(randn(2), target=0)
    with pytest.raises(ValueError, match="n_steps must be"):
        sig.attribute(x, target=0, n_steps=0)
    with pytest.raises(TypeError, match="return_convergence_delta must be True or False"):
        sig.attribute(x, target=0, return_convergence_delta="no")
    tokens = seeded(Tokens)
    ids, mask = torch.randint(1, 30, (2, 5), generator=torch.Generator().manual_seed(0)), torch.ones(2, 5)
    layer_sig = LayerSequentialIntegratedGradients(tokens, tokens.embed)
    with pytest.raises(ValueError, match="sequence_dim = 3 is out of range for the layer's value of shape"):
        layer_sig.attribute(ids, 0, target=0, additional_forward_args=mask, sequence_dim=3)
    with pytest.raises(ValueError, match="layer .* is not a submodule"):
        LayerSequentialIntegratedGradients(tokens, nn.Linear(2, 2))


# --------------------------------------------------------------------------------------------------- layer variant


def _token_batch():
    generator = torch.Generator().manual_seed(25)
    ids = torch.randint(1, 30, (3, 6), generator=generator)
    mask = torch.ones(3, 6)
    mask[2, 4:] = 0
    return ids, mask


@pytest.mark.parametrize("method", ("gausslegendre", "riemann_trapezoid", "riemann_left"))
def test_layer_variant_equals_layer_ig_one_position_at_a_time(method):
    """At an embedding layer, putting token i at the pad id in input space puts position i at the pad embedding."""
    tokens = seeded(Tokens, seed=26)
    ids, mask = _token_batch()
    pad = torch.zeros_like(ids)
    target = [2, 0, 1]
    lig = LayerIntegratedGradients(tokens, tokens.embed)
    expected = _one_position_at_a_time(
        lambda b: lig.attribute(ids, b, target=target, additional_forward_args=mask, n_steps=9, method=method),
        ids,
        pad,
    )
    got, delta = LayerSequentialIntegratedGradients(tokens, tokens.embed).attribute(
        ids, pad, target=target, additional_forward_args=mask, n_steps=9, method=method, return_convergence_delta=True
    )
    assert got.shape == (3, 6, 4) and got.dtype == torch.float64 and delta.shape == (3, 6)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


def test_layer_variant_matches_inseq_on_the_embeddings(inseq_sig):
    tokens = seeded(Tokens, seed=27)
    ids, mask = _token_batch()
    with torch.no_grad():
        embedded, pad = tokens.embed(ids), tokens.embed(torch.zeros_like(ids))
    for target in (0, [1, 2, 0]):
        ours = LayerSequentialIntegratedGradients(tokens, tokens.embed).attribute(
            ids, 0, target=target, additional_forward_args=mask, n_steps=12
        )
        theirs = inseq_sig(FromEmbeddings(tokens)).attribute(
            embedded, pad, target=target, additional_forward_args=mask, n_steps=12
        )
        assert_close_scaled(ours, theirs.detach(), RTOL)


def test_layer_variant_completeness_per_position_and_layer_inputs():
    tokens = seeded(Tokens, seed=28)
    ids, mask = _token_batch()
    rows = torch.arange(3)
    target = torch.tensor([0, 1, 2])
    layer_sig = LayerSequentialIntegratedGradients(tokens, tokens.rnn)
    # The GRU's input is the masked embedding: the sequence is its dim 1, and the baseline the pad ids.
    got, delta = layer_sig.attribute(
        ids,
        0,
        target=target,
        additional_forward_args=mask,
        n_steps=48,
        attribute_to_layer_input=True,
        return_convergence_delta=True,
    )
    with torch.no_grad():
        h = tokens.embed(ids) * mask.unsqueeze(-1)
        h_base = tokens.embed(torch.zeros_like(ids)) * mask.unsqueeze(-1)
        f_x = tokens.head(torch.tanh(tokens.rnn(h)[0][:, -1]))[rows, target]
        for i in range(6):
            start = h.clone()
            start[:, i] = h_base[:, i]
            f_i = tokens.head(torch.tanh(tokens.rnn(start)[0][:, -1]))[rows, target]
            torch.testing.assert_close(delta[:, i], got[:, i].sum(-1) - (f_x - f_i), rtol=0, atol=1e-13)
            torch.testing.assert_close(got[:, i].sum(-1), f_x - f_i, rtol=0, atol=1e-9)
    # The masked positions of the last example do not move (their embedding is zeroed at the input and baseline).
    assert torch.equal(got[2, 4:], torch.zeros_like(got[2, 4:]))


def test_layer_variant_batch_independence_and_the_caller_left_alone():
    tokens = seeded(Tokens, seed=29)
    ids, mask = _token_batch()
    keep = (ids.clone(), mask.clone())
    layer_sig = LayerSequentialIntegratedGradients(tokens, tokens.embed)
    together = layer_sig.attribute(ids, 0, target=[0, 1, 2], additional_forward_args=mask, n_steps=7)
    for i in range(3):
        alone = layer_sig.attribute(
            ids[i : i + 1], 0, target=i, additional_forward_args=mask[i : i + 1], n_steps=7, internal_batch_size=4
        )
        torch.testing.assert_close(alone, together[i : i + 1], rtol=1e-13, atol=1e-15)
    assert torch.equal(ids, keep[0]) and torch.equal(mask, keep[1])
    assert all(p.grad is None for p in tokens.parameters())
