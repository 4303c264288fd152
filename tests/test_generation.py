"""Attribution of generated text for causal language models, on a small character-level GPT-2 trained here.

References: a loop of LayerIntegratedGradients calls, one per generated token, and the paper's formula as a plain
loop over Gauss–Legendre nodes with ``torch.autograd.grad`` on ``inputs_embeds`` (float64 throughout); the model's
own outputs for completeness; an argmax loop and ``model.generate`` for greedy decoding.
"""

from __future__ import annotations

import copy
import dataclasses
import html.parser
import re

import numpy as np
import pytest
import torch
from torch import nn

from integrad.methods.generation import GenerationAttribution
from integrad.methods.layer import LayerIntegratedGradients

from trained import double_model, held_out_accuracy, tokenizer, trained_model, vocabulary_size

PROMPT = "Return the "


@pytest.fixture(scope="module")
def model64():
    return double_model()


def _prompt_ids() -> torch.Tensor:
    return torch.tensor(tokenizer().encode(PROMPT, add_special_tokens=False))


def _continuation(model, prompt: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy continuation by a plain argmax loop (the test's own)."""
    sequence = prompt.clone()
    with torch.no_grad():
        for _ in range(n):
            logits = model(input_ids=sequence[None]).logits[0, -1]
            sequence = torch.cat([sequence, logits.argmax().reshape(1)])
    return sequence[len(prompt) :]


def _transform(logits: torch.Tensor, score: str) -> torch.Tensor:
    if score == "logit":
        return logits
    if score == "log_probability":
        return torch.log_softmax(logits, -1)
    return torch.softmax(logits, -1)


def _score(model, ids: torch.Tensor, token: int, score: str) -> float:
    with torch.no_grad():
        return float(_transform(model(input_ids=ids[None]).logits[0, -1], score)[token])


def test_the_test_model_predicts_text_far_better_than_chance():
    accuracy, majority = held_out_accuracy(trained_model())
    # Always guessing the most frequent character (the space) scores `majority` (about 0.2); a uniform guess 0.01.
    assert accuracy > 1.5 * majority
    assert accuracy > 20 / vocabulary_size()


@pytest.mark.parametrize("score", ["logit", "log_probability", "probability"])
def test_matches_a_loop_of_layer_integrated_gradients(model64, score):
    prompt = _prompt_ids()
    continuation = _continuation(model64, prompt, 5)
    explainer = GenerationAttribution(model64)
    result = explainer.attribute(prompt, continuation, baseline_token_id=0, n_steps=24, score=score)
    sequence = torch.cat([prompt, continuation])
    n_prompt = len(prompt)

    def last_position(ids):
        return _transform(model64(input_ids=ids).logits[:, -1, :], score)

    layer_ig = LayerIntegratedGradients(last_position, model64.transformer.wte)
    for t, token in enumerate(continuation.tolist()):
        expected, delta = layer_ig.attribute(
            sequence[None, : n_prompt + t], baselines=0, target=token, n_steps=24, return_convergence_delta=True
        )
        torch.testing.assert_close(result.embedding_attributions[t, : n_prompt + t], expected[0], rtol=0, atol=1e-9)
        torch.testing.assert_close(result.token_attributions[t, : n_prompt + t], expected[0].sum(-1), rtol=0, atol=1e-9)
        torch.testing.assert_close(result.deltas[t : t + 1], delta, rtol=0, atol=1e-9)
        assert bool((result.token_attributions[t, n_prompt + t :] == 0).all())
    torch.testing.assert_close(result.prompt_attributions, result.token_attributions[:, :n_prompt], rtol=0, atol=0)


def test_matches_the_formula_as_a_plain_autograd_loop(model64):
    """A_{t,i} = (e_i − e′_i) · Σ_k w_k ∂s_t(e′ + α_k (e − e′)) / ∂e_i, with numpy's Gauss–Legendre nodes."""
    prompt = _prompt_ids()
    continuation = _continuation(model64, prompt, 3)
    result = GenerationAttribution(model64).attribute(prompt, continuation, baseline_token_id=5, n_steps=8)
    nodes, weights = np.polynomial.legendre.leggauss(8)
    embedding = model64.transformer.wte.weight.detach()
    sequence = torch.cat([prompt, continuation])
    for t, token in enumerate(continuation.tolist()):
        real = embedding[sequence[: len(prompt) + t]]
        base = embedding[5].expand_as(real)
        total = torch.zeros_like(real)
        for node, weight in zip(nodes, weights):
            point = (base + (node + 1) / 2 * (real - base)).requires_grad_()
            logit = model64(inputs_embeds=point[None]).logits[0, -1, token]
            (gradient,) = torch.autograd.grad(logit, point)
            total += weight / 2 * gradient
        expected = (total * (real - base)).sum(-1)
        torch.testing.assert_close(result.token_attributions[t, : len(prompt) + t], expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("score", ["logit", "log_probability", "probability"])
def test_completeness_per_generated_token(model64, score):
    prompt = _prompt_ids()
    explainer = GenerationAttribution(model64, tokenizer())
    coarse = explainer.attribute(prompt, max_new_tokens=6, n_steps=32, score=score)
    result = explainer.attribute(prompt, max_new_tokens=6, n_steps=160, score=score)
    sequence = torch.cat([prompt, result.generated_ids])
    baseline = tokenizer().pad_token_id
    assert result.baseline_token_id == baseline
    for t, token in enumerate(result.generated_ids.tolist()):
        prefix = sequence[: len(prompt) + t]
        real = _score(model64, prefix, token, score)
        base = _score(model64, torch.full_like(prefix, baseline), token, score)
        assert float(result.scores[t]) == pytest.approx(real, abs=1e-10)
        assert float(result.baseline_scores[t]) == pytest.approx(base, abs=1e-10)
        total = float(result.token_attributions[t].sum())
        assert float(result.deltas[t]) == pytest.approx(total - (real - base), abs=1e-10)
        # Up to the quadrature error, which shrinks as the rule refines.
        assert abs(total - (real - base)) < 1e-4 * abs(real - base)
    assert float(result.deltas.abs().max()) < 0.01 * float(coarse.deltas.abs().max())


def test_greedy_continuation_is_argmax_decoding():
    model = trained_model()
    prompt = _prompt_ids()
    result = GenerationAttribution(model, tokenizer()).attribute(prompt, max_new_tokens=10, n_steps=4)
    expected = _continuation(model, prompt, 10)
    assert torch.equal(result.generated_ids, expected)
    with torch.no_grad():
        generated = model.generate(
            prompt[None],
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=10,
            do_sample=False,
        )
    assert torch.equal(result.generated_ids, generated[0, len(prompt) :])
    assert result.generated_tokens == [tokenizer().decode([i]) for i in expected.tolist()]
    assert result.prompt_tokens == list(PROMPT)


def test_greedy_decoding_stops_after_the_end_of_sequence_token():
    model = copy.deepcopy(trained_model())
    prompt = _prompt_ids()
    free = _continuation(model, prompt, 8)
    # Make the third generated token the end-of-sequence token (its first occurrence ends the generation).
    stop = int(free[2])
    first = free.tolist().index(stop)
    model.generation_config.eos_token_id = stop
    result = GenerationAttribution(model).attribute(prompt, max_new_tokens=8, n_steps=4)
    assert torch.equal(result.generated_ids, free[: first + 1])
    with torch.no_grad():
        generated = model.generate(
            prompt[None], attention_mask=torch.ones(1, len(prompt), dtype=torch.long), max_new_tokens=8, do_sample=False
        )
    assert torch.equal(result.generated_ids, generated[0, len(prompt) :])


def test_each_position_alone_gives_the_same_row(model64):
    prompt = _prompt_ids()
    explainer = GenerationAttribution(model64)
    together = explainer.attribute(prompt, max_new_tokens=5, baseline_token_id=0, n_steps=8)
    generated = together.generated_ids
    for t in range(len(generated)):
        alone = explainer.attribute(
            torch.cat([prompt, generated[:t]]), generated[t : t + 1], baseline_token_id=0, n_steps=8
        )
        torch.testing.assert_close(
            alone.token_attributions[0], together.token_attributions[t, : len(prompt) + t], rtol=0, atol=1e-10
        )
        torch.testing.assert_close(alone.deltas, together.deltas[t : t + 1], rtol=0, atol=1e-12)
    for rows in (3, 7, 8 * 5):
        again = explainer.attribute(prompt, generated, baseline_token_id=0, n_steps=8, internal_batch_size=rows)
        torch.testing.assert_close(again.token_attributions, together.token_attributions, rtol=0, atol=1e-12)
    budgeted = explainer.attribute(prompt, generated, baseline_token_id=0, n_steps=8, memory_budget="4MiB")
    assert explainer.last_report.chunks > 1
    torch.testing.assert_close(budgeted.token_attributions, together.token_attributions, rtol=0, atol=1e-12)


def test_automatic_step_count_meets_its_tolerance(model64):
    prompt = _prompt_ids()
    explainer = GenerationAttribution(model64)
    reference = explainer.attribute(prompt, max_new_tokens=4, baseline_token_id=0, n_steps=256)
    automatic = explainer.attribute(prompt, max_new_tokens=4, baseline_token_id=0, n_steps="auto", tolerance=1e-4)
    assert bool((explainer.last_report.error_estimate <= 1e-4).all())
    for t in range(4):
        error = (automatic.embedding_attributions[t] - reference.embedding_attributions[t]).abs().sum()
        assert float(error / reference.embedding_attributions[t].abs().sum()) < 1e-3


def test_prompt_forms_and_dtypes():
    model = trained_model()
    explainer = GenerationAttribution(model, tokenizer())
    prompt = _prompt_ids()
    continuation = _continuation(model, prompt, 3)
    from_text = explainer.attribute(PROMPT, tokenizer().decode(continuation.tolist()), n_steps=8)
    from_list = explainer.attribute(prompt.tolist(), continuation.tolist(), n_steps=8)
    from_row = explainer.attribute(prompt[None], continuation[None], n_steps=8)
    for other in (from_list, from_row):
        assert torch.equal(other.prompt_ids, from_text.prompt_ids)
        torch.testing.assert_close(other.token_attributions, from_text.token_attributions, rtol=0, atol=0)
    assert from_text.token_attributions.dtype == torch.float32
    assert from_text.embedding_attributions.shape == (3, len(prompt) + 2, model.config.n_embd)
    as_double = GenerationAttribution(double_model(), tokenizer()).attribute(prompt, continuation, n_steps=8)
    assert as_double.token_attributions.dtype == torch.float64 and as_double.deltas.dtype == torch.float64
    torch.testing.assert_close(
        as_double.token_attributions, from_text.token_attributions.double(), rtol=1e-3, atol=1e-4
    )
    # An explicit embedding layer is the default one.
    explicit = GenerationAttribution(model, tokenizer(), embedding_layer=model.transformer.wte)
    same = explicit.attribute(prompt, continuation, n_steps=8)
    torch.testing.assert_close(same.token_attributions, from_text.token_attributions, rtol=0, atol=0)


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def test_the_model_and_tensors_are_left_as_they_were():
    model = trained_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = _hooks(model)
    prompt = _prompt_ids()
    kept = prompt.clone()
    GenerationAttribution(model, tokenizer()).attribute(prompt, max_new_tokens=4, n_steps=8)
    assert not model.training
    assert _hooks(model) == hooks
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(prompt, kept)

    # In training mode (dropout layers, with p = 0 here) the model stays there, with a warning.
    training = copy.deepcopy(model).train()
    with pytest.warns(RuntimeWarning, match="training mode"):
        GenerationAttribution(training).attribute(prompt, max_new_tokens=2, baseline_token_id=0, n_steps=4)
    assert training.training

    # A model failing in the middle of the integration leaves no hook behind either.
    class Failing(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.calls = inner, 0

        def get_input_embeddings(self):
            return self.inner.get_input_embeddings()

        def forward(self, input_ids, attention_mask):
            self.calls += 1
            if torch.is_grad_enabled():
                raise RuntimeError("failure inside the model")
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)

    failing = Failing(model)
    with pytest.raises(RuntimeError, match="failure inside the model"):
        GenerationAttribution(failing).attribute(prompt, [3, 4], baseline_token_id=0, n_steps=4)
    assert failing.calls > 0 and _hooks(model) == hooks


@pytest.mark.parametrize(
    ("call", "error", "names"),
    [
        (lambda a: a.attribute([3, 200], max_new_tokens=2), ValueError, "prompt"),
        (lambda a: a.attribute([3, -1], max_new_tokens=2), ValueError, "prompt"),
        (lambda a: a.attribute([3, 4], [5, vocabulary_size()]), ValueError, "continuation"),
        (lambda a: a.attribute([3, 4], [5], baseline_token_id=vocabulary_size()), ValueError, "baseline_token_id"),
        (lambda a: a.attribute([3, 4], [5], baseline_token_id=1.0), TypeError, "baseline_token_id"),
        (lambda a: a.attribute([], max_new_tokens=2), ValueError, "prompt"),
        (lambda a: a.attribute(torch.tensor([], dtype=torch.long), max_new_tokens=2), ValueError, "prompt"),
        (lambda a: a.attribute([3, 4], []), ValueError, "continuation"),
        (lambda a: a.attribute([3, 4]), ValueError, "max_new_tokens"),
        (lambda a: a.attribute([3, 4], [5], max_new_tokens=2), ValueError, "max_new_tokens"),
        (lambda a: a.attribute([3, 4], max_new_tokens=0), ValueError, "max_new_tokens"),
        (lambda a: a.attribute(torch.tensor([3.0, 4.0]), max_new_tokens=1), TypeError, "prompt"),
        (lambda a: a.attribute(torch.tensor([[3, 4], [5, 6]]), max_new_tokens=1), ValueError, "prompt"),
        (lambda a: a.attribute([3, True], max_new_tokens=1), TypeError, "prompt"),
        (lambda a: a.attribute([3, 4], [5], score="probit"), ValueError, "score"),
        (lambda a: a.attribute([3, 4], [5], n_steps=0), ValueError, "n_steps"),
        (lambda a: a.attribute([3, 4], [5], method="simpson"), ValueError, "method"),
        (lambda a: a.attribute([3] * 60, max_new_tokens=10), ValueError, "max_new_tokens"),
        (lambda a: a.attribute([3] * 60, [4] * 10), ValueError, "continuation"),
    ],
)
def test_bad_input_is_refused_naming_the_parameter(call, error, names):
    explainer = GenerationAttribution(trained_model())
    with pytest.raises(error, match=names):
        call(explainer)


def test_bad_construction_and_text_without_tokenizer_are_refused():
    model = trained_model()
    with pytest.raises(TypeError, match="prompt is a string"):
        GenerationAttribution(model).attribute("Return", max_new_tokens=1, baseline_token_id=0)
    with pytest.raises(TypeError, match="model"):
        GenerationAttribution(lambda input_ids, attention_mask: None)
    with pytest.raises(ValueError, match="embedding_layer"):
        GenerationAttribution(model, embedding_layer=nn.Embedding(4, 2))

    class Bare(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)

    with pytest.raises(TypeError, match="embedding_layer is required"):
        GenerationAttribution(Bare())
    # Given the layer, such a module works, and the model config supplies no baseline: it must be given.
    bare = GenerationAttribution(Bare(), embedding_layer=model.transformer.wte)
    assert bare.attribute([3, 4], [5], baseline_token_id=0, n_steps=4).token_attributions.shape == (1, 2)
    with pytest.raises(ValueError, match="baseline_token_id is required"):
        bare.attribute([3, 4], [5])


class _Cells(html.parser.HTMLParser):
    """Rows of (tag, attributes, text) of an HTML table."""

    def __init__(self):
        super().__init__()
        self.rows: list[list[tuple[str, dict, str]]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "tr":
            self.rows.append([])
        if tag in ("td", "th"):
            self.rows[-1].append((tag, dict(attrs), ""))

    def handle_data(self, data):
        if self.rows and self.rows[-1] and self.tags and self.tags[-1] in ("td", "th"):
            tag, attrs, text = self.rows[-1][-1]
            self.rows[-1][-1] = (tag, attrs, text + data)

    def handle_endtag(self, tag):
        if self.tags:
            self.tags.pop()


def test_html_heatmap_is_escaped_and_signed():
    result = GenerationAttribution(trained_model(), tokenizer()).attribute(PROMPT, max_new_tokens=3, n_steps=8)
    hostile = ["<script>alert(1)</script>", '" onmouseover="x', "&amp;"] + result.prompt_tokens[3:]
    result = dataclasses.replace(result, prompt_tokens=hostile, generated_tokens=["<b>", " ", "\n"])
    page = result.to_html(title="<i>title</i>")
    assert "<script" not in page and "<b>" not in page and "<i>title" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&amp;amp;" in page

    parsed = _Cells()
    parsed.feed(page)
    header, *rows = parsed.rows
    assert [text for _, _, text in header[1:-1]] == [t.replace(" ", "\u2423") for t in hostile]
    assert [row[0][2] for row in rows] == ["<b>", "\u2423", "\u21b5"]
    values = result.prompt_attributions
    largest = float(values.abs().max())
    for t, row in enumerate(rows):
        cells = row[1:-1]
        assert len(cells) == len(hostile)
        for j, (_, attrs, _) in enumerate(cells):
            value = float(values[t, j])
            assert float(attrs["title"]) == pytest.approx(value, rel=1e-5, abs=1e-30)
            red, opacity = re.search(r"rgba\((\d+), \d+, \d+, ([0-9.]+)\)", attrs["style"]).groups()
            assert (red == "214") == (value >= 0)
            assert float(opacity) == pytest.approx(abs(value) / largest, abs=1e-4)
        assert float(row[-1][2]) == pytest.approx(float(result.deltas[t]), rel=1e-2)

    full = _Cells()
    full.feed(result.to_html(include_generated=True))
    _, *rows = full.rows
    n_prompt = len(hostile)
    for t, row in enumerate(rows):
        cells = row[1:-1]
        assert len(cells) == n_prompt + 2
        assert all(("title" in attrs) == (j < n_prompt + t) for j, (_, attrs, _) in enumerate(cells))

    no_strings = dataclasses.replace(result, prompt_tokens=None, generated_tokens=None)
    plain = _Cells()
    plain.feed(no_strings.to_html())
    assert [text for _, _, text in plain.rows[0][1:-1]] == [str(i) for i in result.prompt_ids.tolist()]
    with pytest.raises(TypeError, match="include_generated"):
        result.to_html(include_generated="yes")
