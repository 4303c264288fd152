"""The explainers of the integrated-gradients variants (Blur IG, Guided IG, IDGI on or off) agree with their cores,
offer their parameters as tunables, and refuse what does not apply."""

import importlib

import numpy as np
import pytest
import torch

import integrad
from integrad.explainers import IntegratedGradients
from integrad.explainers.variants import XRAI as XRAIExplainer
from integrad.explainers.variants import BlurIntegratedGradients, GuidedIntegratedGradients
from integrad.explainers.variants import ExpectedGradients as ExpectedGradientsExplainer
from integrad.explainers.variants import GradientShap as GradientShapExplainer
from integrad.tune import optimize


@pytest.fixture(scope="module")
def batch(trained):
    return trained.test_x[:4], trained.test_y[:4]


def test_blur_explainer_equals_its_core(trained, batch):
    x, y = batch
    explainer = BlurIntegratedGradients(trained.model, n_steps=12, max_sigma=4.0)
    expected, delta = integrad.BlurIntegratedGradients(trained.model).attribute(
        x, target=y, n_steps=12, max_sigma=4.0, return_convergence_delta=True
    )
    torch.testing.assert_close(explainer.attribute(x, y), expected, rtol=0, atol=0)
    torch.testing.assert_close(explainer.last_delta, delta, rtol=0, atol=0)
    with pytest.raises(ValueError, match="baselines does not apply to Blur IG"):
        explainer.attribute(x, y, baselines=torch.zeros_like(x))


def test_guided_explainer_equals_its_core_and_takes_named_baselines(trained, batch):
    x, y = batch
    explainer = GuidedIntegratedGradients(trained.model, n_steps=16, fraction=0.5, max_dist=0.05, baseline_fn="mean")
    expected = integrad.GuidedIntegratedGradients(trained.model).attribute(
        x, baselines=x.mean(dim=(2, 3), keepdim=True).expand_as(x), target=y, n_steps=16, fraction=0.5, max_dist=0.05
    )
    torch.testing.assert_close(explainer.attribute(x, y), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["ig", "blur", "guided"])
def test_idgi_switch_gives_the_idgi_of_the_core(trained, batch, kind):
    x, y = batch
    model = trained.model
    if kind == "ig":
        explainer, core, kwargs = (
            IntegratedGradients(model, n_steps=10, idgi=True),
            integrad.IntegratedGradients,
            {"baselines": torch.zeros_like(x), "n_steps": 10},
        )
    elif kind == "blur":
        explainer, core, kwargs = (
            BlurIntegratedGradients(model, n_steps=10, max_sigma=3.0, idgi=True),
            (integrad.BlurIntegratedGradients),
            {"n_steps": 10, "max_sigma": 3.0, "sqrt": False},
        )
    else:
        explainer, core, kwargs = (
            GuidedIntegratedGradients(model, n_steps=10, idgi=True),
            (integrad.GuidedIntegratedGradients),
            {"baselines": torch.zeros_like(x), "n_steps": 10, "fraction": 0.25, "max_dist": 0.02},
        )
    expected = integrad.IDGI(core(model)).attribute(x, target=y, **kwargs)
    got = explainer.attribute(x, y)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
    # IDGI is complete: the attributions add up to the output change along the path.
    assert float(explainer.last_delta.abs().max()) < 1e-4


def test_idgi_refuses_what_does_not_apply(trained):
    model = trained.model
    with pytest.raises(ValueError, match="n_steps must be an int, not 'auto'"):
        IntegratedGradients(model, n_steps="auto", idgi=True)
    with pytest.raises(ValueError, match="layer must be None"):
        IntegratedGradients(model, layer="features.0", idgi=True)
    with pytest.raises(ValueError, match="noise_level"):
        IntegratedGradients(model, noise_level=0.1, idgi=True)
    with pytest.raises(ValueError, match=r"\['method'\] do not apply"):
        IntegratedGradients(model, method="riemann_left", idgi=True)
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['grad_step'\].*no rule applies"):
        BlurIntegratedGradients(model, idgi=True, grad_step=0.1)
    with pytest.raises(TypeError, match="idgi must be True or False"):
        GuidedIntegratedGradients(model, idgi="yes")


def test_variants_offer_their_parameters_and_the_tuner_uses_them(trained, batch):
    x, y = batch
    blur = BlurIntegratedGradients(trained.model, n_steps=8, max_sigma=3.0)
    assert set(blur.get_tunables(x)) == {"n_steps", "max_sigma", "idgi"}
    guided = GuidedIntegratedGradients(trained.model, n_steps=8)
    space = guided.get_tunables(x)
    assert {"n_steps", "fraction", "max_dist", "baseline_fn", "idgi"} <= set(space)
    assert guided.current_tunables()["fraction"] == 0.25
    small = {"fraction": space["fraction"], "idgi": space["idgi"]}
    result = optimize(guided, x, y, "complexity", n_trials=3, sampler="random", seed=0, tunables=small)
    assert isinstance(result.explainer, GuidedIntegratedGradients)
    assert result.explainer.fraction == result.params["fraction"] and result.explainer.idgi == result.params["idgi"]


def test_expected_gradients_explainer_equals_its_core_and_repeats_its_draws(trained, batch):
    x, y = batch
    background = trained.test_x[10:16]
    explainer = ExpectedGradientsExplainer(trained.model, background, n_samples=6, seed=3)
    generator = torch.Generator().manual_seed(3)
    expected = integrad.ExpectedGradients(trained.model).attribute(
        x, background, target=y, n_samples=6, generator=generator
    )
    torch.testing.assert_close(explainer.attribute(x, y), expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(explainer.attribute(x, y), expected, rtol=1e-6, atol=1e-7)
    exact = ExpectedGradientsExplainer(trained.model, background, n_steps=16)
    mean_ig = torch.stack(
        [
            integrad.IntegratedGradients(trained.model).attribute(x, b.expand_as(x), target=y, n_steps=16)
            for b in background
        ]
    ).mean(0)
    torch.testing.assert_close(exact.attribute(x, y), mean_ig, rtol=1e-4, atol=1e-6)
    assert set(explainer.get_tunables()) == {"n_samples"}
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        ExpectedGradientsExplainer(trained.model, background, seed=-1)


def test_gradient_shap_explainer_draws_as_its_core(trained, batch):
    x, y = batch
    background = trained.test_x[10:16]
    # It draws as captum does, from torch's and numpy's global generators.
    torch.manual_seed(5)
    np.random.seed(5)
    expected = integrad.GradientShap(trained.model).attribute(x, background, n_samples=4, stdevs=0.1, target=y)
    torch.manual_seed(5)
    np.random.seed(5)
    got = GradientShapExplainer(trained.model, background, n_samples=4, stdevs=0.1).attribute(x, y)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert set(GradientShapExplainer(trained.model, background).get_tunables()) == {"n_samples", "stdevs"}


def test_xrai_explainer_gives_one_map_per_image(trained, batch):
    importlib.import_module("skimage")
    x, y = batch
    explainer = XRAIExplainer(trained.model, n_steps=8)
    got = explainer.attribute(x, y)
    expected = integrad.XRAI(trained.model).attribute(x, target=y, n_steps=8)
    assert got.shape == (x.shape[0], 1) + x.shape[2:]
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_settings_out_of_range_are_refused_when_the_explainer_is_built():
    # The method's own checks, before any data: the explainer does not wait for attribute() to refuse them.
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"fraction must be a number in \(0, 1\]"):
            GuidedIntegratedGradients(model, fraction=bad)
    with pytest.raises(ValueError, match=r"max_dist must be a number in \[0, 1\]"):
        GuidedIntegratedGradients(model, max_dist=3)
    with pytest.raises(ValueError, match="max_sigma must be a positive finite number"):
        BlurIntegratedGradients(model, max_sigma=0)
    with pytest.raises(ValueError, match="stdevs must be a non-negative"):
        GradientShapExplainer(model, torch.zeros(2, 4), stdevs=-1.0)
