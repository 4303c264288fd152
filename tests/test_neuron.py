"""NeuronIntegratedGradients: the forward stops at the neuron's layer, and the result equals IG of the neuron computed
by full forward passes in an explicit loop over Gauss–Legendre nodes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from integrad import NeuronIntegratedGradients

from models import (
    Body,
    Counting,
    manual_ig,
    no_hooks_left,
)

#: Tiny models run faster and steadier on one thread (see conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")

N = 24


def neuron_reference(model: nn.Module, layer: nn.Module, pick, x, baseline, use_input=False, n=N):
    """IG of ``pick(layer value)`` with every forward run to the end (a hook only reads the layer's value)."""

    def f(z):
        seen = {}
        if use_input:
            handle = layer.register_forward_pre_hook(lambda m, a: seen.setdefault("v", a[0]))
        else:
            handle = layer.register_forward_hook(lambda m, a, out: seen.setdefault("v", out))
        try:
            model(z)
        finally:
            handle.remove()
        return pick(seen["v"])

    return manual_ig(f, x, baseline, n=n)


@pytest.fixture
def models():
    # Same weights (same seed): ``armed`` raises if the tail runs, ``free`` runs it for the reference.
    return Body(armed=True), Body(armed=False).double()


X = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
BASE = 0.3 * torch.randn(1, 5, generator=torch.Generator().manual_seed(1))


def test_early_exit_tail_never_runs_and_result_matches_full_forward(models):
    armed, free = models
    got = NeuronIntegratedGradients(armed, armed.mid).attribute(X, 2, baselines=BASE, n_steps=N)
    assert armed.tail.calls == 0
    ref = neuron_reference(free, free.mid, lambda v: v[:, 2], X, BASE)
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-6)
    assert no_hooks_left(armed)


def test_early_exit_counted_with_a_forward_hook():
    model = Body(armed=False)
    calls = []
    handle = model.tail.register_forward_hook(lambda m, a, out: calls.append(a[0].shape[0]))
    try:
        NeuronIntegratedGradients(model, model.first).attribute(X, 1, n_steps=N, internal_batch_size=5)
        NeuronIntegratedGradients(model, model.mid).attribute(X, 1, n_steps=N, attribute_to_neuron_input=True)
    finally:
        handle.remove()
    assert calls == [] and model.tail.calls == 0


def test_early_exit_for_a_plain_function_forward(models):
    # forward_func need not be a module: the hook on the layer still ends the pass.
    armed, free = models
    got = NeuronIntegratedGradients(lambda z: armed(z) * 2, armed.mid).attribute(X, 0, n_steps=N)
    assert armed.tail.calls == 0
    ref = neuron_reference(free, free.mid, lambda v: v[:, 0], X, torch.zeros(1, 5))
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "selector,pick",
    [
        (3, lambda v: v[:, 3]),
        (-1, lambda v: v[:, -1]),
        ((4,), lambda v: v[:, 4]),
        ((slice(1, 4),), lambda v: v[:, 1:4].sum(1)),
        ((slice(None, None, 2),), lambda v: v[:, ::2].sum(1)),
        (lambda v: v[:, 0] * v[:, 5], lambda v: v[:, 0] * v[:, 5]),
        (lambda v: v.square().sum(), lambda v: v.square().sum(1)),  # one aggregate: still separates by row
    ],
    ids=["int", "negative", "tuple", "slice", "strided_slice", "callable", "callable_aggregate"],
)
def test_selectors(models, selector, pick):
    armed, free = models
    got = NeuronIntegratedGradients(armed, armed.mid).attribute(X, selector, baselines=BASE, n_steps=N)
    ref = neuron_reference(free, free.mid, pick, X, BASE)
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-6)
    assert armed.tail.calls == 0


class _Conv(nn.Module):
    def __init__(self, armed: bool):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(3)
            self.conv = nn.Conv2d(2, 3, 3, padding=1)
            self.act = nn.Tanh()
            self.rest = nn.Sequential(nn.Flatten(), nn.Linear(3 * 5 * 5, 2))
        self.armed = armed

    def forward(self, x):
        h = self.act(self.conv(x))
        if self.armed:
            raise AssertionError("past the neuron's layer")
        return self.rest(h)


@pytest.mark.parametrize(
    "selector,pick",
    [
        ((1, 2, 3), lambda v: v[:, 1, 2, 3]),
        ((0, slice(1, 3), 2), lambda v: v[:, 0, 1:3, 2].sum(1)),
        ((slice(None), 4, slice(0, 2)), lambda v: v[:, :, 4, 0:2].sum((1, 2))),
    ],
    ids=["three_ints", "int_slice_int", "slice_int_slice"],
)
def test_tuple_selectors_on_a_conv_layer(selector, pick):
    armed, free = _Conv(armed=True), _Conv(armed=False).double()
    x = torch.randn(3, 2, 5, 5, generator=torch.Generator().manual_seed(4))
    got = NeuronIntegratedGradients(armed, armed.act).attribute(x, selector, n_steps=N)
    ref = neuron_reference(free, free.act, pick, x, torch.zeros(1, 2, 5, 5))
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-6)


def test_attribute_to_neuron_input(models):
    armed, free = models
    got = NeuronIntegratedGradients(armed, armed.mid).attribute(
        X, 5, baselines=BASE, n_steps=N, attribute_to_neuron_input=True
    )
    # The input of mid is tanh(first(x)): neuron 5 of it.
    ref = neuron_reference(free, free.mid, lambda v: v[:, 5], X, BASE, use_input=True)
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-6)
    direct = manual_ig(lambda z: torch.tanh(free.first(z))[:, 5], X, BASE, n=N)
    torch.testing.assert_close(got.double(), direct, rtol=1e-4, atol=1e-6)
    assert armed.tail.calls == 0


def test_attribute_to_neuron_input_stops_before_the_layer_runs():
    model = Body(armed=False)
    runs = Counting(model.mid)
    model.mid = runs
    NeuronIntegratedGradients(model, runs).attribute(X, 0, n_steps=N, attribute_to_neuron_input=True)
    # The pre-hook ends the pass as soon as the layer's input is known: the layer itself never computes.
    assert runs.calls == 0


def test_neuron_completeness_and_chunking(models):
    armed, free = models
    nig = NeuronIntegratedGradients(armed, armed.mid)
    got = nig.attribute(X, 1, baselines=BASE, n_steps=64)
    with torch.no_grad():
        diff = (
            free.mid(torch.tanh(free.first(X.double())))[:, 1]
            - free.mid(torch.tanh(free.first(BASE.double().expand_as(X))))[:, 1]
        )
    torch.testing.assert_close(got.double().sum(1), diff, rtol=1e-4, atol=1e-5)
    chunked = nig.attribute(X, 1, baselines=BASE, n_steps=64, internal_batch_size=3)
    torch.testing.assert_close(chunked, got, rtol=1e-5, atol=1e-7)
    assert nig.last_report.chunk_rows == 3 and nig.last_report.rows == 64 * 4


def test_multiply_by_inputs_false(models):
    armed, _ = models
    local = NeuronIntegratedGradients(armed, armed.mid, multiply_by_inputs=False).attribute(
        X, 2, baselines=BASE, n_steps=N
    )
    full = NeuronIntegratedGradients(armed, armed.mid).attribute(X, 2, baselines=BASE, n_steps=N)
    torch.testing.assert_close(local * (X - BASE), full, rtol=1e-5, atol=1e-7)


def test_neuron_has_no_convergence_delta(models):
    armed, _ = models
    assert NeuronIntegratedGradients(armed, armed.mid).has_convergence_delta() is False


class SharedLayer(nn.Module):
    """``head(tanh(shared(tanh(shared(x)))))``: one module run twice in a forward pass."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(5)
        self.shared = nn.Linear(5, 5)
        self.head = nn.Linear(5, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))

    def forward(self, x):
        return self.head(torch.tanh(self.shared(torch.tanh(self.shared(x)))))


@pytest.mark.parametrize("use_input", [False, True])
def test_a_layer_run_twice_gives_the_neuron_of_its_first_call(use_input):
    # The forward stops at the layer's first call, so the neuron is taken there: the output of the first call is
    # linear in x (IG = w_j · (x − x′) exactly), its input is x itself (IG of x_j = (x − x′)_j).
    model = SharedLayer()
    handle = model.head.register_forward_hook(lambda m, a, out: (_ for _ in ()).throw(AssertionError("tail ran")))
    try:
        got = NeuronIntegratedGradients(model, model.shared).attribute(
            X, 2, baselines=BASE, n_steps=4, attribute_to_neuron_input=use_input
        )
    finally:
        handle.remove()
    if use_input:
        expected = torch.zeros_like(X)
        expected[:, 2] = (X - BASE)[:, 2]
    else:
        expected = model.shared.weight.detach()[2] * (X - BASE)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert no_hooks_left(model)
