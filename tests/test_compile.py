"""Every method on a model wrapped with ``torch.compile`` (inductor, CPU) gives the eager model's attributions.

The engine's memory meter counts what autograd saves through saved-tensor hooks, which the forward pass of a
compiled model calls from inside dynamo's frame evaluation: the meter must run as plain Python there, not be traced
into the model's graph. Layer and neuron methods put forward hooks on a layer inside the compiled model; dynamo does
not guard on hooks registered after a graph was traced (``torch._dynamo.config.skip_nnmodule_hook_guards``), so their
tests start from a fresh dynamo cache, as a model compiled for them would.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch import nn
from torch._dynamo.utils import counters

from integrad.methods.integrated_gradients import IntegratedGradients
from integrad.methods.layer import LayerIntegratedGradients
from integrad.methods.neuron import NeuronIntegratedGradients
from integrad.methods.noise_tunnel import NoiseTunnel
from integrad.methods.path import PathIntegratedGradients
from integrad.paths import StraightLine

#: A fixed rule in one pass, the same under a budget that several metered chunks share, and ``"auto"``.
SETTINGS = [
    {"n_steps": 24},
    {"n_steps": 24, "memory_budget": "48KiB"},
    {"n_steps": "auto", "tolerance": 1e-3},
]


@pytest.fixture(scope="module")
def models():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        eager = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    torch._dynamo.reset()
    compiled = torch.compile(eager)
    yield eager, compiled, x
    torch._dynamo.reset()


def input_ig(model, x, **settings):
    return IntegratedGradients(model).attribute(x, target=1, **settings)


def layer_ig(model, x, **settings):
    inner = getattr(model, "_orig_mod", model)
    return LayerIntegratedGradients(model, inner[2]).attribute(x, target=2, **settings)


def neuron_ig(model, x, **settings):
    inner = getattr(model, "_orig_mod", model)
    return NeuronIntegratedGradients(model, inner[3]).attribute(x, 5, **settings)


def noise_tunnel(model, x, **settings):
    generator = torch.Generator().manual_seed(3)
    tunnel = NoiseTunnel(IntegratedGradients(model))
    return tunnel.attribute(x, nt_samples=3, stdevs=0.1, generator=generator, target=0, **settings)


def path_ig(model, x, **settings):
    line = StraightLine((torch.full_like(x, 0.2),), (x,))
    return PathIntegratedGradients(model).attribute(x, line, target=1, **settings)


METHODS = {
    "IntegratedGradients": (input_ig, False),
    "NoiseTunnel": (noise_tunnel, False),
    "PathIntegratedGradients": (path_ig, False),
    "LayerIntegratedGradients": (layer_ig, True),
    "NeuronIntegratedGradients": (neuron_ig, True),
}


@pytest.mark.parametrize("name", list(METHODS))
def test_compiled_model_gives_the_eager_attributions(models, name):
    eager, compiled, x = models
    attribute, hooks = METHODS[name]
    if hooks:
        torch._dynamo.reset()  # a graph traced by an earlier test, without this method's hooks, would be reused
    for settings in SETTINGS:
        expected = attribute(eager, x, **settings)
        got = attribute(compiled, x, **settings)
        scale = float(expected.abs().max())
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * scale, msg=lambda m, s=settings: f"{s}: {m}")
        assert got.dtype == expected.dtype == x.dtype
        if not hooks:
            # The model ran compiled (a hook graph-breaks the forward, which dynamo may then run eagerly around it).
            assert counters["stats"]["unique_graphs"] > 0


def test_a_budget_on_a_compiled_model_meters_its_chunks_and_holds(models):
    # The first chunk under a budget runs with the meter's saved-tensor hooks; later chunks are sized from what it
    # measured. On a compiled model, the meter sees the tensors the compiled graph saves.
    eager, compiled, x = models
    torch._dynamo.reset()
    ig = LayerIntegratedGradients(compiled, compiled._orig_mod[2])
    got = ig.attribute(x, target=2, n_steps=64, memory_budget="48KiB")
    report = ig.last_report
    assert report.chunks > 1 and report.rows == 64 * x.shape[0]
    expected = LayerIntegratedGradients(eager, eager[2]).attribute(x, target=2, n_steps=64)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    learned = ig._row_shapes.values()[0].row_cost
    assert learned is not None and report.chunk_rows * learned <= 48 * 2**10
