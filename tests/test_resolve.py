"""What the explainers resolve (:mod:`integrad.explainers.resolve`): layers given by name, as a list or as modules, a
forward argument named as a layer (pnpxai's meaning), and targets given as ints, sequences or tensors."""

import pytest
import torch
import torch.nn as nn

import integrad
from integrad.explainers import IntegratedGradients


def test_layer_ig_by_name_equals_the_core(trained, batch):
    x, y = batch
    explainer = IntegratedGradients(trained.model, n_steps=16, layer="features.2")
    got = explainer.attribute(x, y)
    expected = integrad.LayerIntegratedGradients(trained.model, trained.model.features[2]).attribute(
        x, baselines=torch.zeros_like(x), target=y, n_steps=16
    )
    assert got.shape == (len(y), 16, 8, 8)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_layer_list_and_module_forms_equal_the_core(trained, batch):
    x, y = batch
    model = trained.model
    got = IntegratedGradients(model, n_steps=8, layer=["features.0", model.classifier[1]]).attribute(x, y)
    expected = integrad.LayerIntegratedGradients(model, [model.features[0], model.classifier[1]]).attribute(
        x, baselines=torch.zeros_like(x), target=y, n_steps=8
    )
    assert len(got) == 2
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_targets_accept_ints_and_sequences(trained, batch):
    x, y = batch
    explainer = IntegratedGradients(trained.model, n_steps=4)
    torch.testing.assert_close(explainer.attribute(x, y.tolist()), explainer.attribute(x, y), rtol=0, atol=0)
    torch.testing.assert_close(explainer.attribute(x, 3), explainer.attribute(x, torch.full_like(y, 3)), rtol=0, atol=0)


class _TwoArguments(nn.Module):
    def __init__(self):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.image = nn.Linear(4, 3)
            self.tabular = nn.Linear(2, 3)

    def forward(self, pixels, features):
        return torch.tanh(self.image(pixels)) + self.tabular(features) ** 2


@pytest.mark.filterwarnings("ignore:Multiple layers provided")  # captum's note on its list of layers
def test_a_layer_named_by_a_forward_argument_attributes_to_that_argument():
    # pnpxai's meaning: layer=["pixels"] wraps the argument in an identity module (captum's ModelInputWrapper).
    from captum.attr import LayerIntegratedGradients as CaptumLayerIG
    from captum.attr._utils.input_layer_wrapper import ModelInputWrapper

    model = _TwoArguments().double().eval()
    gen = torch.Generator().manual_seed(1)
    pixels, features = (
        torch.randn(5, 4, generator=gen, dtype=torch.float64),
        torch.randn(5, 2, generator=gen, dtype=torch.float64),
    )
    targets = torch.tensor([0, 1, 2, 0, 1])
    explainer = IntegratedGradients(model, n_steps=16, layer=["pixels", "features"], method="riemann_middle")
    got = explainer.attribute((pixels, features), targets)
    wrapped = ModelInputWrapper(model)
    expected = CaptumLayerIG(wrapped, [wrapped.input_maps["pixels"], wrapped.input_maps["features"]]).attribute(
        (pixels, features), target=targets, n_steps=16, method="riemann_middle"
    )
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)
    # An argument mixed with a module of the model, and alone: the input IG of that argument.
    mixed = IntegratedGradients(model, n_steps=16, layer=["features", "image"]).attribute((pixels, features), targets)
    assert mixed[0].shape == features.shape and mixed[1].shape == (5, 3)
    alone = IntegratedGradients(model, n_steps=16, layer="pixels").attribute((pixels, features), targets)
    direct = integrad.IntegratedGradients(model).attribute((pixels, features), target=targets, n_steps=16)
    torch.testing.assert_close(alone, direct[0], rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=r"layer 'pixel' is neither a submodule.*nor an argument of its forward"):
        IntegratedGradients(model, layer=["pixel"])
