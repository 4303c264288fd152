"""The Explainer base (:mod:`integrad.explainers.base`): the contract a subclass fills in, reading batches with the
extractors, ``set_kwargs`` returning a changed copy, and the configuration ``repr`` shows."""

import pytest
import torch
import torch.nn as nn

from integrad.explainers import Explainer, IntegratedGradients
from integrad.explainers.baselines import ConfiguredBaseline, gaussian_blur, get_baseline_fn


def test_explainer_base_contract():
    with pytest.raises(TypeError):
        Explainer(nn.Linear(2, 2))

    class Gradient(Explainer):
        def attribute(self, inputs, targets=None):
            forward, additional = self._extract_args(inputs)
            forward = forward.detach().requires_grad_(True)
            out = self.model(forward, *(additional or ()))
            return torch.autograd.grad(out[torch.arange(len(out)), targets].sum(), forward)[0]

    model = nn.Linear(3, 2)
    explainer = Gradient(model)
    x = torch.rand(4, 3)
    assert explainer._extract_args(x) == (x, None)
    assert explainer._extract_args((x, x))[0] == (x, x)
    torch.testing.assert_close(explainer.attribute(x, torch.tensor([1, 0, 1, 0])), model.weight[[1, 0, 1, 0]])
    assert explainer.get_tunables() == {} and explainer.EXPLANATION_TYPE == "attribution"
    copy = explainer.set_kwargs(forward_arg_extractor=lambda b: b[0])
    assert copy.model is model and explainer.forward_arg_extractor is None
    with pytest.raises(TypeError, match=r"unknown parameter\(s\) \['n_steps'\]"):
        explainer.set_kwargs(n_steps=3)


def test_set_kwargs_returns_a_changed_copy(trained):
    original = IntegratedGradients(trained.model, n_steps=20, baseline_fn="zeros", method="riemann_middle")
    changed = original.set_kwargs(n_steps=40, baseline_fn="mean", internal_batch_size=16)
    assert changed is not original and changed.model is original.model
    assert (changed.n_steps, changed.baseline_fn) == (40, "mean")
    assert changed.core_kwargs == {"method": "riemann_middle", "internal_batch_size": 16}
    assert (original.n_steps, original.baseline_fn) == (20, "zeros")
    assert original.core_kwargs == {"method": "riemann_middle"}
    assert changed.get_params()["method"] == "riemann_middle"
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['steps'\]"):
        original.set_kwargs(steps=3)
    with pytest.raises(ValueError, match="n_steps must be a positive int"):
        original.set_kwargs(n_steps=0)
    with pytest.raises(TypeError, match="cannot change the model"):
        original.set_kwargs(model=nn.Linear(2, 2))


def test_repr_shows_the_configuration(trained):
    text = repr(
        IntegratedGradients(
            trained.model,
            baseline_fn=get_baseline_fn("gaussian_blur", sigma=2.0),
            layer="features.0",
            method="riemann_left",
        )
    )
    assert text == (
        "IntegratedGradients(n_steps=20, baseline_fn=gaussian_blur(sigma=2.0), layer='features.0', "
        "noise_level=0.0, idgi=False, method='riemann_left')"
    )
    assert isinstance(get_baseline_fn("zeros"), ConfiguredBaseline) and gaussian_blur.TUNABLES
