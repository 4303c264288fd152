"""integrad.probes: what is differentiated (the output at a target, one neuron), and the layer hooks that capture,
stop at, or replace a layer's value, acting only for their own call."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from integrad.arguments import normalize_target
from integrad.probes import (
    NeuronProbe,
    RepeatedLayerCall,
    TargetProbe,
    captured,
    check_layer,
    check_neuron_selector,
    replaced,
    run_until,
    scoped_hooks,
)


def _rows(n):
    return torch.arange(n)


def test_target_probe_selects_each_rows_output_at_its_examples_target():
    out = torch.arange(24.0).view(4, 6)
    probe = TargetProbe(normalize_target([5, 0, -1, 2], 4, out.device))
    # Rows 0..3 are examples 3, 1, 2, 0: each takes its example's target (−1 wraps to the last class).
    examples = torch.tensor([3, 1, 2, 0])
    assert probe(out, examples).tolist() == [2.0, 6.0, 17.0, 23.0]
    grid = torch.arange(2 * 3 * 4.0).view(2, 3, 4)
    assert TargetProbe(normalize_target((2, 1), 2, grid.device))(grid, _rows(2)).tolist() == [9.0, 21.0]
    assert TargetProbe(None)(torch.tensor([[1.5], [2.5]]), _rows(2)).tolist() == [1.5, 2.5]


def test_target_probe_refuses_what_does_not_fit_the_output():
    out = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="target is required"):
        TargetProbe(None)(out, _rows(2))
    with pytest.raises(ValueError, match=r"target holds indices from \[0\] to \[3\], outside"):
        TargetProbe(normalize_target([0, 3], 2, out.device))(out, _rows(2))
    with pytest.raises(ValueError, match="target has 2 index"):
        TargetProbe(normalize_target((0, 1), 2, out.device))(out, _rows(2))
    with pytest.raises(TypeError, match="forward_func must return a torch.Tensor"):
        TargetProbe(None)({"logits": out}, _rows(2))


def test_neuron_probe_selects_sums_or_calls():
    value = torch.arange(2 * 3 * 4.0).view(2, 3, 4)
    assert NeuronProbe((1, 2))(value, 2).tolist() == [6.0, 18.0]
    assert NeuronProbe((slice(0, 2), 0))(value, 2).tolist() == [0.0 + 4.0, 12.0 + 16.0]
    assert NeuronProbe(lambda v: v[:, 0, 0])(value, 2).tolist() == [0.0, 12.0]
    # A single aggregate over the chunk is shared out so that each row's gradient is its own.
    total = NeuronProbe(lambda v: v.sum())(value, 2)
    assert torch.allclose(total.sum(), value.sum())
    with pytest.raises(ValueError, match="has 1 index"):
        NeuronProbe(1)(value, 2)
    with pytest.raises(ValueError, match=r"neuron_selector\[1\] = 9 is out of range"):
        NeuronProbe((0, 9))(value, 2)
    with pytest.raises(ValueError, match="one scalar per example"):
        NeuronProbe(lambda v: v[:, 0])(value, 2)
    with pytest.raises(TypeError, match="must return a tensor"):
        NeuronProbe(lambda v: 3.0)(value, 2)


def test_selectors_and_layers_are_checked_up_front():
    assert check_neuron_selector((1, slice(None))) == (1, slice(None))
    for bad in (True, (1, "a"), 1.5, ()):
        with pytest.raises(TypeError, match="neuron_selector must be"):
            check_neuron_selector(bad)
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="layer must be a torch.nn.Module"):
        check_layer(model, "0")
    with pytest.raises(ValueError, match="not a submodule"):
        check_layer(model, nn.Linear(2, 2))


class _Counting(nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(3, 3), nn.Linear(3, 1)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        hidden = self.first(x)
        self.after = True
        return self.second(torch.relu(hidden))


def test_run_until_stops_the_forward_once_the_layer_has_run():
    model = _Counting()
    model.after = False
    x = torch.randn(2, 3)
    (value,) = run_until(model, [model.first], False, (x,))
    torch.testing.assert_close(value, model.first(x))
    assert model.after is False  # nothing after the layer ran
    (given,) = run_until(model, [model.second], True, (x,))
    torch.testing.assert_close(given, torch.relu(model.first(x)))
    with pytest.raises(ValueError, match="did not run during forward_func"):
        run_until(model, [nn.Linear(3, 3)], False, (x,))


def test_replaced_hands_the_pass_new_values_and_refuses_a_repeated_layer():
    model = _Counting()
    x = torch.randn(2, 3)
    new = torch.ones(2, 3)
    with torch.no_grad(), replaced([model.first], [new], False):
        out = model(x)
    torch.testing.assert_close(out, model.second(torch.relu(new)))

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.shared = nn.Linear(3, 3)

        def forward(self, x):
            return self.shared(self.shared(x)).sum(1)

    twice = Twice()
    with pytest.raises(RepeatedLayerCall, match="runs more than once"), replaced([twice.shared], [new], False):
        twice(x)
    assert not twice.shared._forward_hooks


def test_hooks_act_only_in_their_own_context_and_are_removed_whatever_happens():
    model = _Counting()
    x = torch.randn(2, 3)
    plain = model(x).detach()
    seen_elsewhere = []
    started, finish = threading.Event(), threading.Event()

    def other_thread():
        started.wait()
        seen_elsewhere.append(model(x).detach())
        finish.set()

    worker = threading.Thread(target=other_thread)
    worker.start()
    with torch.no_grad(), replaced([model.first], [torch.zeros(2, 3)], False):
        started.set()
        finish.wait(10)
        model(x)
    worker.join()
    torch.testing.assert_close(seen_elsewhere[0], plain)  # the other thread's pass never saw the replacement
    with pytest.raises(RuntimeError, match="boom"), scoped_hooks([model.first], [lambda *a: None], False):
        raise RuntimeError("boom")
    assert not model.first._forward_hooks and not model.first._forward_pre_hooks
    with captured([model.first, model.second], False, stop=False) as values:
        model(x)
    assert all(v is not None for v in values)
