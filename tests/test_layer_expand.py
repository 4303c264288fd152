"""LayerIntegratedGradients with ``expand_at_layer``: the model runs once per example and chunk up to the layer, the
layer hands on the path points, and results equal those of running everything on the expanded rows.

Each model records the number of rows its part before the layer sees, so the tests check both the work saved and
that it is given up, for good, where a value from before the layer needs the expanded rows."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from integrad import LayerIntegratedGradients

from models import (
    manual_layer_ig,
)

#: Tiny models run faster and steadier on one thread (see conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


N = 16


def close(a, b):
    torch.testing.assert_close(a.double(), b.double(), rtol=1e-4, atol=1e-6)


class Recorded(nn.Module):
    """Base: ``self.seen`` lists the batch sizes the part before the layer was called with."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.pre = nn.Sequential(nn.Linear(5, 7), nn.Tanh())
        self.layer = nn.Linear(7, 6)
        self.post = nn.Sequential(nn.Tanh(), nn.Linear(6, 3))
        self.seen: list[int] = []
        self.pre.register_forward_hook(lambda m, a, out: self.seen.append(out.shape[0]))


class Chain(Recorded):
    def forward(self, x):
        return self.post(self.layer(self.pre(x)))


class Skip(Recorded):
    """A value from before the layer is added after it: it needs as many rows as the layer's output."""

    def __init__(self):
        super().__init__()
        self.skip = nn.Linear(7, 6)

    def forward(self, x):
        h = self.pre(x)
        return self.post(self.layer(h) + self.skip(h))


class BatchSizedHead(Recorded):
    """Reshapes after the layer with the batch size of its inputs: with expanded rows only, the output keeps them."""

    def forward(self, x):
        rows = x.shape[0]
        return self.post(self.layer(self.pre(x))).reshape(rows, -1)


class WritesIntoInput(Chain):
    def forward(self, x):
        x.mul_(2.0)
        return super().forward(x)


def reference(model, x, base, target):
    seen = list(model.seen)
    ref = manual_layer_ig(model, [model.layer], (x,), (base,), target, n=N)[0]
    model.seen[:] = seen
    return ref


@pytest.fixture
def data():
    torch.manual_seed(1)
    return torch.randn(3, 5), torch.zeros(3, 5), torch.tensor([0, 2, 1])


def test_part_before_the_layer_runs_on_the_batch_once_per_chunk(data):
    x, base, target = data
    model = Chain()
    lig = LayerIntegratedGradients(model, model.layer)
    got = lig.attribute(x, baselines=base, target=target, n_steps=N, internal_batch_size=4 * 3)
    # The ends (inputs and baselines together), then one call per chunk of 4 steps, each on the 3 examples.
    assert model.seen == [6, 3, 3, 3, 3]
    assert lig.last_report.chunks == 4
    close(got, reference(model, x, base, target))
    model.seen.clear()
    plain = LayerIntegratedGradients(model, model.layer, expand_at_layer=False)
    close(plain.attribute(x, baselines=base, target=target, n_steps=N, internal_batch_size=12), got)
    assert model.seen == [6, 12, 12, 12, 12]
    assert not model.layer._forward_hooks and not model.layer._forward_pre_hooks


def test_layer_input_is_expanded_the_same_way(data):
    x, base, target = data
    model = Chain()
    lig = LayerIntegratedGradients(model, model.layer)
    got = lig.attribute(x, baselines=base, target=target, n_steps=N, attribute_to_layer_input=True)
    assert model.seen[1:] == [3] * (len(model.seen) - 1)
    seen = list(model.seen)
    ref = manual_layer_ig(model, [model.layer], (x,), (base,), target, n=N, use_input=True)[0]
    model.seen[:] = seen
    close(got, ref)


@pytest.mark.parametrize("kind", [Skip, BatchSizedHead], ids=["skip_connection", "batch_sized_head"])
def test_model_needing_expanded_rows_switches_to_them_for_good(data, kind):
    # A value from before the layer fails to broadcast, or the output keeps the batch's rows: the attempt on the 3
    # examples fails once, and every chunk then runs on its expanded rows, in this call and the next.
    x, base, target = data
    model = kind()
    lig = LayerIntegratedGradients(model, model.layer)
    got = lig.attribute(x, baselines=base, target=target, n_steps=N, internal_batch_size=24)
    assert model.seen == [6, 3, 24, 24]
    close(got, reference(model, x, base, target))
    model.seen.clear()
    again = lig.attribute(x, baselines=base, target=target, n_steps=N, internal_batch_size=24)
    assert model.seen == [6, 24, 24]
    close(again, got)
    assert not model.layer._forward_hooks and not model.layer._forward_pre_hooks


def test_one_example_broadcasts_a_value_from_before_the_layer_correctly():
    torch.manual_seed(2)
    x, base, target = torch.randn(1, 5), torch.zeros(1, 5), torch.tensor([1])
    model = Skip()
    lig = LayerIntegratedGradients(model, model.layer)
    got = lig.attribute(x, baselines=base, target=target, n_steps=N)
    assert model.seen[1:] == [1] * (len(model.seen) - 1)
    close(got, reference(model, x, base, target))


def test_model_writing_into_its_inputs_leaves_the_callers_tensors(data):
    x, base, target = data
    model = WritesIntoInput()
    lig = LayerIntegratedGradients(model, model.layer)
    kept_x, kept_base = x.clone(), base.clone()
    got = lig.attribute(x, baselines=base, target=target, n_steps=N)
    assert torch.equal(x, kept_x) and torch.equal(base, kept_base)
    assert model.seen[1:] == [3] * (len(model.seen) - 1)
    close(got, reference(Chain(), 2 * x, 2 * base, target))


def test_expand_at_layer_must_be_a_bool():
    model = Chain()
    with pytest.raises(TypeError, match="expand_at_layer must be True or False"):
        LayerIntegratedGradients(model, model.layer, expand_at_layer="yes")
