"""The core explainers (:mod:`integrad.explainers.core`): one core method kept across batches while its settings stay,
pnpxai's members (``explainer``, ``device``), baselines built per attributed input, and the tunables' point applied
to (``apply_tunables``) and read from (``current_tunables``) an explainer, with each baseline's own parameters."""

import pytest
import torch
import torch.nn as nn

import integrad
from integrad.explainers import IntegratedGradients
from integrad.explainers.baselines import get_baseline_fn, mean, token


def test_tuple_inputs_take_one_baseline_per_input(trained, batch):
    x, y = batch

    class TwoInputs(nn.Module):
        def __init__(self, cnn):
            super().__init__()
            self.cnn = cnn

        def forward(self, a, b):
            return self.cnn(a * b)

    model = TwoInputs(trained.model)
    other = x.flip(0)
    explainer = IntegratedGradients(model, n_steps=10, baseline_fn=("zeros", mean))
    got = explainer.attribute((x, other), y)
    expected = integrad.IntegratedGradients(model).attribute(
        (x, other), baselines=(torch.zeros_like(x), mean(other)), target=y, n_steps=10
    )
    assert isinstance(got, tuple) and len(got) == 2
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="baseline_fn is a tuple of 2 but 1 input"):
        explainer.attribute(x, y)


def test_pnpxai_members_explainer_device_and_tunables(trained, batch):
    x, y = batch
    explainer = IntegratedGradients(trained.model, n_steps=4)
    assert explainer.explainer is explainer.core
    assert isinstance(explainer.explainer, integrad.IntegratedGradients)
    layered = IntegratedGradients(trained.model, n_steps=4, layer=next(iter(trained.model.children())))
    assert isinstance(layered.explainer, integrad.LayerIntegratedGradients)
    assert explainer.device == next(trained.model.parameters()).device == torch.device("cpu")
    assert IntegratedGradients(lambda z: z.sum(1)).device == torch.device("cpu")
    assert IntegratedGradients.TUNABLES == {} and IntegratedGradients.EXPLANATION_TYPE == "attribution"
    assert explainer.attribute(x, y).shape == x.shape


def test_one_core_serves_every_call_while_its_settings_stay(trained, batch):
    # The core remembers what rows cost (memory, chunk sizes) between batches; it is rebuilt when its settings change.
    x, y = batch
    explainer = IntegratedGradients(trained.model, n_steps=12, memory_budget="64MiB")
    first = explainer.attribute(x, y)
    core = explainer.core
    torch.testing.assert_close(explainer.attribute(x, y), first)
    assert explainer.core is core and core.last_report is explainer.last_report
    local = explainer.set_kwargs(multiply_by_inputs=False)
    assert local.core is not core and not local.core.multiplies_by_inputs and core.multiplies_by_inputs


def test_apply_tunables_builds_baselines_and_keeps_configured_ones(trained):
    explainer = IntegratedGradients(trained.model)
    tuned = explainer.apply_tunables(
        {
            "n_steps": 30,
            "baseline_fn": "gaussian_blur",
            "baseline_fn.gaussian_blur.sigma": 2.0,
            "baseline_fn.gaussian.std": 9.0,
        }
    )
    assert tuned.n_steps == 30 and tuned.baseline_fn == get_baseline_fn("gaussian_blur", sigma=2.0)
    text = IntegratedGradients(nn.Sequential(nn.Embedding(200, 4)), layer="0", baseline_fn=token(103))
    assert text.apply_tunables({"baseline_fn": "token"}).baseline_fn == token(103)
    assert text.current_tunables()["baseline_fn.token.token_id"] == 103
    assert explainer.current_tunables() == {
        "n_steps": 20,
        "noise_level": 0.0,
        "method": "gausslegendre",
        "idgi": False,
        "baseline_fn": "zeros",
    }


def test_a_baseline_parameter_alone_applies_to_the_current_baseline(trained):
    blur = IntegratedGradients(trained.model, baseline_fn="gaussian_blur")
    tuned = blur.apply_tunables({"baseline_fn.gaussian_blur.sigma": 3.0, "n_steps": 30})
    assert tuned.baseline_fn == get_baseline_fn("gaussian_blur", sigma=3.0) and tuned.n_steps == 30
    assert blur.baseline_fn == "gaussian_blur"
    configured = IntegratedGradients(trained.model, baseline_fn=get_baseline_fn("gaussian_blur", kernel_size=3))
    assert configured.apply_tunables({"baseline_fn.gaussian_blur.sigma": 2.0}).baseline_fn == get_baseline_fn(
        "gaussian_blur", kernel_size=3, sigma=2.0
    )
    with pytest.raises(ValueError, match=r"'baseline_fn\.gaussian_blur\.sigma'.*'zeros'"):
        IntegratedGradients(trained.model).apply_tunables({"baseline_fn.gaussian_blur.sigma": 3.0})
    with pytest.raises(ValueError, match=r"'baseline_fn\.gaussian_blur\.sigma'"):
        IntegratedGradients(trained.model, baseline_fn=lambda x: x * 0).apply_tunables(
            {"baseline_fn.gaussian_blur.sigma": 3.0}
        )
    with pytest.raises(ValueError, match=r"'baseline_fn\.sigma'.*baseline_fn\.<name>\.<parameter>"):
        blur.apply_tunables({"baseline_fn.sigma": 3.0})
    # With the baseline choice, parameters of the other baselines are ignored.
    assert blur.apply_tunables({"baseline_fn": "zeros", "baseline_fn.gaussian_blur.sigma": 3.0}).baseline_fn == (
        get_baseline_fn("zeros")
    )


def test_a_baseline_given_as_an_object_takes_its_own_parameters_and_a_callable_takes_none(trained):
    explainer = IntegratedGradients(trained.model)
    made = get_baseline_fn("gaussian_blur", kernel_size=3)
    tuned = explainer.apply_tunables(
        {"baseline_fn": made, "baseline_fn.gaussian_blur.sigma": 2.5, "baseline_fn.uniform.low": 0.2}
    )
    assert tuned.baseline_fn == get_baseline_fn("gaussian_blur", kernel_size=3, sigma=2.5)
    assert made == get_baseline_fn("gaussian_blur", kernel_size=3)
    with pytest.raises(ValueError, match=r"'baseline_fn\.gaussian_blur\.sigma'.*function.*get_baseline_fn"):
        explainer.apply_tunables({"baseline_fn": lambda x: x * 0, "baseline_fn.gaussian_blur.sigma": 2.0})
    with pytest.raises(ValueError, match=r"'baseline_fn\.gaussian_blur\.sigma'.*Tensor"):
        explainer.apply_tunables({"baseline_fn": torch.zeros(1), "baseline_fn.gaussian_blur.sigma": 2.0})
    assert explainer.apply_tunables({"baseline_fn": 0.5}).baseline_fn == 0.5


def test_current_tunables_include_the_baselines_default_parameters(trained):
    blur = IntegratedGradients(trained.model, baseline_fn="gaussian_blur")
    assert blur.current_tunables() == {
        "n_steps": 20,
        "noise_level": 0.0,
        "method": "gausslegendre",
        "baseline_fn": "gaussian_blur",
        "baseline_fn.gaussian_blur.sigma": 1.0,
        "idgi": False,
    }
    noisy = IntegratedGradients(trained.model, baseline_fn=get_baseline_fn("gaussian", seed=3))
    point = noisy.current_tunables()
    assert point["baseline_fn.gaussian.std"] == 0.1 and point["baseline_fn.gaussian.seed"] == 3
    # The point rebuilds an explainer that attributes like this one.
    x = torch.rand(2, 1, 8, 8)
    y = torch.tensor([0, 1])
    for explainer in (blur, noisy):
        rebuilt = IntegratedGradients(trained.model).apply_tunables(explainer.current_tunables())
        torch.testing.assert_close(rebuilt.attribute(x, y), explainer.attribute(x, y), rtol=0, atol=0)
