"""The IntegratedGradients explainer on a trained digits CNN: agreement with the core, extractors, configuration,
tunables, model state, error messages; and the support report."""

import pytest
import torch
import torch.nn as nn

import integrad
from integrad.explainers import (
    SUPPORTED_MODULES,
    Attention,
    Convolution,
    Explainer,
    IntegratedGradients,
    Linear,
    check_support,
)
from integrad.explainers.baselines import ConfiguredBaseline, gaussian_blur, get_baseline_fn, invert, mean, token
from integrad.rules import METHODS

from trained import MaskedDigits, digits


@pytest.fixture(scope="module")
def trained():
    return digits()


@pytest.fixture(scope="module")
def batch(trained):
    return trained.test_x[:6], trained.test_y[:6]


def test_the_digits_model_is_trained(trained):
    assert trained.test_accuracy > 0.9


def test_input_ig_equals_the_core(trained, batch):
    x, y = batch
    explainer = IntegratedGradients(trained.model, n_steps=24, baseline_fn="mean", method="riemann_trapezoid")
    got = explainer.attribute(x, y)
    core = integrad.IntegratedGradients(trained.model)
    expected, delta = core.attribute(
        x, baselines=mean(x), target=y, n_steps=24, method="riemann_trapezoid", return_convergence_delta=True
    )
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(explainer.last_delta, delta)
    assert isinstance(explainer.last_report, integrad.IntegrationReport)
    assert explainer.last_report.steps.tolist() == [24] * len(y)


def test_default_explainer_is_zero_baseline_twenty_steps(trained, batch):
    x, y = batch
    got = IntegratedGradients(trained.model).attribute(x, y)
    expected = integrad.IntegratedGradients(trained.model).attribute(
        x, baselines=torch.zeros_like(x), target=y, n_steps=20
    )
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_delta_is_the_completeness_gap(trained, batch):
    x, y = batch
    explainer = IntegratedGradients(trained.model, n_steps=32, baseline_fn="invert")
    attributions = explainer.attribute(x, y)
    with torch.no_grad():
        rows = torch.arange(len(y))
        gap = trained.model(x)[rows, y] - trained.model(invert(x))[rows, y]
    torch.testing.assert_close(explainer.last_delta, attributions.sum(dim=(1, 2, 3)) - gap, atol=1e-5, rtol=1e-5)


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


def test_extractors_read_an_x_mask_label_batch(trained, batch):
    x, y = batch
    model = MaskedDigits(trained.model)
    mask = (torch.arange(64).reshape(1, 1, 8, 8) % 3 != 0).float().expand_as(x)
    explainer = IntegratedGradients(
        model, n_steps=12, forward_arg_extractor=lambda b: b[0], additional_forward_arg_extractor=lambda b: b[1]
    )
    got = explainer.attribute((x, mask, y), y)
    expected = integrad.IntegratedGradients(model).attribute(
        x, baselines=torch.zeros_like(x), target=y, additional_forward_args=(mask,), n_steps=12
    )
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # Masked pixels do not reach the model, so they get no attribution.
    assert torch.all(got[mask == 0] == 0) and got[mask == 1].abs().sum() > 0


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


def test_noise_level_is_smoothgrad_with_range_scaled_stdevs(trained, batch):
    x, y = batch
    explainer = IntegratedGradients(trained.model, n_steps=8, noise_level=0.2, nt_samples=3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        got = explainer.attribute(x, y)
        torch.manual_seed(11)
        expected, deltas = integrad.NoiseTunnel(integrad.IntegratedGradients(trained.model)).attribute(
            x,
            nt_type="smoothgrad",
            nt_samples=3,
            stdevs=0.2 * float(x.max() - x.min()),
            baselines=torch.zeros_like(x),
            target=y,
            n_steps=8,
            return_convergence_delta=True,
        )
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # One call of 3 copies, stacked example-major: each example's 3 deltas are next to each other.
    torch.testing.assert_close(explainer.last_delta, deltas.reshape(len(y), 3).mean(1))
    plain = IntegratedGradients(trained.model, n_steps=8).attribute(x, y)
    assert not torch.allclose(got, plain)


def test_noise_level_delta_is_each_examples_mean_over_its_copies(trained, batch):
    # Copies split over calls of the wrapped method (2, 2, 1): each example's delta is the mean of its own copies'
    # deltas, which are also recomputed here one by one from the same noise.
    x, y = batch
    x, y = x[:3], y[:3]
    explainer = IntegratedGradients(trained.model, n_steps=8, noise_level=0.2, nt_samples=5, nt_samples_batch_size=2)
    sigma = 0.2 * float(x.max() - x.min())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(12)
        explainer.attribute(x, y)
        torch.manual_seed(12)
        copies, examples = [], []
        for s in (2, 2, 1):
            copies.append(x.repeat_interleave(s, 0) + sigma * torch.randn((s * 3,) + x.shape[1:]))
            examples += [i for i in range(3) for _ in range(s)]
    ig = integrad.IntegratedGradients(trained.model)
    per_copy = [
        ig.attribute(c[None], target=int(y[i]), n_steps=8, return_convergence_delta=True)[1]
        for c, i in zip(torch.cat(copies), examples)
    ]
    expected = torch.stack([sum(d for d, i in zip(per_copy, examples) if i == e) / 5 for e in range(3)]).reshape(3)
    torch.testing.assert_close(explainer.last_delta, expected, rtol=1e-4, atol=1e-6)


def test_noise_needs_floating_point_inputs():
    embedding = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(12, 2))
    explainer = IntegratedGradients(embedding, layer="0", noise_level=0.1)
    with pytest.raises(ValueError, match="noise_level > 0 .* floating-point"):
        explainer.attribute(torch.tensor([[1, 2, 3]]), 0)


def test_model_mode_is_left_as_the_user_set_it(trained, batch):
    x, y = batch
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Dropout(0.5), nn.BatchNorm1d(32), nn.Linear(32, 10))
    model.train()
    with pytest.warns(RuntimeWarning, match="training mode"):
        IntegratedGradients(model, n_steps=4).attribute(x, y)
    assert all(module.training for module in model.modules())
    model.eval()
    IntegratedGradients(model, n_steps=4).attribute(x, y)
    assert not any(module.training for module in model.modules())
    # The trained digits model stays in eval mode and its parameters stay frozen.
    IntegratedGradients(trained.model).attribute(x, y)
    assert not trained.model.training and not any(p.requires_grad for p in trained.model.parameters())


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


def test_inputs_are_not_modified(trained, batch):
    x, y = batch
    x_copy, y_copy = x.clone(), y.clone()
    IntegratedGradients(trained.model, baseline_fn="gaussian_blur", n_steps=4).attribute(x, y)
    assert torch.equal(x, x_copy) and torch.equal(y, y_copy) and not x.requires_grad


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


def test_core_kwargs_reach_the_core(trained, batch):
    x, y = batch
    explainer = IntegratedGradients(trained.model, n_steps=12, internal_batch_size=5, multiply_by_inputs=False)
    got = explainer.attribute(x, y)
    expected = integrad.IntegratedGradients(trained.model, multiply_by_inputs=False).attribute(
        x, baselines=torch.zeros_like(x), target=y, n_steps=12, internal_batch_size=5
    )
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert explainer.last_report.chunk_rows <= 5 < explainer.last_report.rows
    budgeted = IntegratedGradients(trained.model, n_steps=12, memory_budget="64MiB", tolerance=1e-2)
    torch.testing.assert_close(budgeted.attribute(x, y), IntegratedGradients(trained.model, n_steps=12).attribute(x, y))


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


def test_auto_steps_pass_the_tolerance_to_the_core(trained, batch):
    x, y = batch
    x, y = x[:3], y[:3]
    explainer = IntegratedGradients(trained.model, n_steps="auto", tolerance=5e-2)
    got = explainer.attribute(x, y)
    expected = integrad.IntegratedGradients(trained.model).attribute(
        x, baselines=torch.zeros_like(x), target=y, n_steps="auto", tolerance=5e-2
    )
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    report = explainer.last_report
    assert report.error_estimate is not None and report.steps.shape == (3,)


def test_get_tunables_structure_for_images(trained, batch):
    x, _ = batch
    explainer = IntegratedGradients(trained.model)
    tunables = explainer.get_tunables(x)
    assert tunables == explainer.get_tunables()  # guessed from the model's first Conv2d
    for name, (kind, space) in tunables.items():
        assert kind in (int, float, str, bool), name
        if kind in (str, bool):
            assert space["choices"], name
        else:
            assert space["low"] <= space["high"], name
    assert tunables["n_steps"][0] is int
    assert tunables["method"] == (str, {"choices": list(METHODS), "when": {"idgi": False}})
    assert tunables["idgi"] == (bool, {"choices": [False, True]})
    assert tunables["baseline_fn"][1]["choices"] == ["zeros", "mean", "invert", "gaussian_blur", "uniform", "gaussian"]
    assert tunables["baseline_fn.gaussian_blur.sigma"][1]["when"] == {"baseline_fn": "gaussian_blur"}
    assert tunables["noise_level"][0] is float and tunables["noise_level"][1]["low"] == 0.0


def test_get_tunables_fit_the_input_kind():
    tabular = IntegratedGradients(nn.Sequential(nn.Linear(4, 2)))
    assert "gaussian_blur" not in tabular.get_tunables(torch.rand(3, 4))["baseline_fn"][1]["choices"]
    tokens = IntegratedGradients(nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(12, 2)), layer="0")
    tunables = tokens.get_tunables()
    assert tunables["baseline_fn"][1]["choices"] == ["zeros", "token"]
    assert "noise_level" not in tunables
    assert tokens.get_tunables(torch.tensor([[1, 2, 3]])) == tunables
    per_input = IntegratedGradients(nn.Linear(4, 2), baseline_fn=("zeros",))
    assert "baseline_fn" not in per_input.get_tunables(torch.rand(2, 4))


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


def test_bad_arguments_name_the_parameter(trained, batch):
    x, y = batch
    model = trained.model
    with pytest.raises(ValueError, match="n_steps must be a positive int or 'auto'"):
        IntegratedGradients(model, n_steps="many")
    with pytest.raises(ValueError, match=r"unknown baseline_fn 'blur'.*gaussian_blur"):
        IntegratedGradients(model, baseline_fn="blur")
    with pytest.raises(TypeError, match="baseline_fn must be a name"):
        IntegratedGradients(model, baseline_fn=[1, 2])
    with pytest.raises(ValueError, match=r"layer 'features.9' is neither a submodule.*did you mean.*features\.[0-4]"):
        IntegratedGradients(model, layer="features.9")
    with pytest.raises(ValueError, match="not a submodule of DigitsCNN"):
        IntegratedGradients(model, layer=nn.Linear(2, 2))
    with pytest.raises(TypeError, match="layer must be None, an nn.Module, a dotted module name"):
        IntegratedGradients(model, layer=3)
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['n_step'\].*internal_batch_size"):
        IntegratedGradients(model, n_step=3)
    with pytest.raises(TypeError, match="attribute_to_layer_input needs a layer"):
        IntegratedGradients(model, attribute_to_layer_input=True)
    with pytest.raises(ValueError, match="method must be one of"):
        IntegratedGradients(model, method="simpson")
    with pytest.raises(ValueError, match="noise_level must be a non-negative"):
        IntegratedGradients(model, noise_level=-0.1)
    with pytest.raises(ValueError, match="n_classes must be a positive int"):
        IntegratedGradients(model, n_classes=0)
    explainer = IntegratedGradients(model, n_steps=2, n_classes=10)
    with pytest.raises(TypeError, match="targets must hold integer class indices"):
        explainer.attribute(x, y.float())
    with pytest.raises(ValueError, match=r"targets must have shape \(N,\) = \(6,\)"):
        explainer.attribute(x, y[:4])
    with pytest.raises(ValueError, match=r"targets must lie in \[0, n_classes\) = \[0, 10\)"):
        explainer.attribute(x, y + 10)
    with pytest.raises(TypeError, match="forward_arg_extractor.* must be a tensor or a tuple of tensors"):
        IntegratedGradients(model, forward_arg_extractor=lambda b: b[2]).attribute((x, y, [1]), y)
    with pytest.raises(TypeError, match="forward_arg_extractor must be a callable"):
        IntegratedGradients(model, forward_arg_extractor="x")


def test_targets_accept_ints_and_sequences(trained, batch):
    x, y = batch
    explainer = IntegratedGradients(trained.model, n_steps=4)
    torch.testing.assert_close(explainer.attribute(x, y.tolist()), explainer.attribute(x, y), rtol=0, atol=0)
    torch.testing.assert_close(explainer.attribute(x, 3), explainer.attribute(x, torch.full_like(y, 3)), rtol=0, atol=0)


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


# ------------------------------------------------------------------------------------------------- support


def test_supported_modules_are_the_three_categories():
    assert IntegratedGradients.SUPPORTED_MODULES == [Linear, Convolution, Attention] == SUPPORTED_MODULES
    assert IntegratedGradients.EXPLANATION_TYPE == "attribution"


def test_support_report_on_linear_conv_and_attention(trained):
    report = check_support(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1)))
    assert report.supported and bool(report) and report.matches["Linear"] == ["0", "2"]
    report = check_support(trained.model)
    assert report.matches["Convolution"] == ["features.0", "features.2"]
    assert report.matches["Linear"] == ["classifier.1"]
    assert "DigitsCNN: supported" in str(report) and "Convolution: 2 module(s)" in str(report)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2)

    assert check_support(Block()).matches["Attention"] == ["attn"]

    class BertSelfAttention(nn.Module):  # recognised by name, as transformers' modules are
        pass

    assert check_support(BertSelfAttention()).matches["Attention"] == [""]
    assert check_support(nn.Conv1d(1, 1, 3)).matches["Convolution"] == [""]


def test_support_report_on_an_unsupported_model():
    report = check_support(nn.Sequential(nn.ReLU(), nn.Tanh()))
    assert not report.supported and not report
    text = str(report)
    assert text.startswith("Sequential: not supported.")
    assert "no Linear, Convolution, Attention module" in text and "Attention: none" in text
    notes = check_support(nn.Sequential(nn.Embedding(5, 2), nn.Linear(2, 1))).notes
    assert any("layer='0'" in note for note in notes)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        check_support(lambda x: x)


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


# ------------------------------------------------------------------------------------------ pnpxai users switching
def test_supported_modules_are_module_classes_as_in_pnpxai():
    modules = [
        nn.Linear(3, 2),
        nn.Conv2d(1, 1, 3),
        nn.ConvTranspose2d(1, 1, 3),
        nn.ConvTranspose1d(1, 1, 3),
        nn.MultiheadAttention(4, 2),
        nn.ReLU(),
    ]
    found = [[isinstance(m, entry) for entry in SUPPORTED_MODULES] for m in modules]
    assert found == [
        [True, False, False],
        [False, True, False],
        [False, True, False],
        [False, True, False],
        [False, False, True],
        [False, False, False],
    ]

    class BertSelfAttention(nn.Module):  # a third-party attention block, recognised by its class name
        pass

    assert isinstance(BertSelfAttention(), Attention) and issubclass(nn.ConvTranspose3d, Convolution)
    assert not isinstance("Linear", Linear) and repr(Linear) == "Linear"
    assert check_support(nn.Sequential(nn.ConvTranspose2d(1, 1, 3))).supported


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
